"""Run `tasks.worker` in a subprocess and stream its per-epoch events back to the caller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class TrainingFailed(RuntimeError):
    """The worker process failed; `kind` is oom | data | fault | crash | killed."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def run_worker(job: dict) -> Iterator[dict]:
    """Yield the worker's events ("start", "epoch", ..., "done"); raise TrainingFailed on failure."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if job.get("threads"):
        # Set before torch starts in the child, so OpenMP never spins up more threads than asked.
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(job["threads"])
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        error = None
        try:
            proc.stdin.write(json.dumps({**job, "parent_pid": os.getpid()}))
            proc.stdin.close()
            for line in proc.stdout:
                if not line.startswith("{"):
                    continue  # stray prints from libraries
                event = json.loads(line)
                if event["event"] == "error":
                    error = event
                else:
                    yield event
        finally:
            if proc.poll() is None and error is None:
                proc.kill()  # the consumer stopped early (e.g. cancelled): do not leave it training
            code = proc.wait()
        if code != 0:
            stderr.seek(0)
            tail = "\n".join(stderr.read().strip().splitlines()[-15:])
            if error:
                raise TrainingFailed(f"{error['message']}\n{tail}", error["kind"])
            raise TrainingFailed(f"training process exited with code {code}\n{tail}", "killed")
