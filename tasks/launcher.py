"""Run `tasks.worker` in a subprocess and stream its per-epoch events back to the caller."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class TrainingFailed(RuntimeError):
    """The worker process failed; `kind` is oom | data | disk | fault | crash | killed | stopped.

    The message is one line; `details` holds the worker's last stderr lines (logged, not shown last)."""

    def __init__(self, message: str, kind: str, details: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details


# Live training processes, so a signal to the flow process can end them (`stop_all`).
_live: set[subprocess.Popen] = set()
_live_lock = threading.RLock()  # re-entrant: stop_all may run in a signal handler
_stopping = threading.Event()


def stop_all() -> int:
    """Stop every training process of this process (SIGTERM; each has saved its last finished epoch)
    and refuse new ones. Returns how many were running. Safe to call from a signal handler."""
    _stopping.set()
    with _live_lock:
        procs = [p for p in _live if p.poll() is None]
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    return len(procs)


def run_worker(job: dict) -> Iterator[dict]:
    """Yield the worker's events ("start", "epoch", "log", ..., "done"); raise TrainingFailed on failure.

    How many run at once per device is the caller's business (the flow: Prefect concurrency limits)."""
    if _stopping.is_set():
        raise TrainingFailed("not started: the run is stopping", "stopped")
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
        )
        with _live_lock:
            _live.add(proc)
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
            with _live_lock:
                _live.discard(proc)
        if code != 0:
            stderr.seek(0)
            tail = "\n".join(stderr.read().strip().splitlines()[-15:])
            if _stopping.is_set():
                raise TrainingFailed("stopped by a signal; finished epochs are kept in checkpoints", "stopped")
            if error:
                raise TrainingFailed((error["message"].splitlines() or ["?"])[0], error["kind"], tail)
            raise TrainingFailed(f"training process exited with code {code}", "killed", tail)
