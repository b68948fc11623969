"""Run `dropout_lab.runtime.worker` in a subprocess and stream its per-epoch events back to the caller."""

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

REPO_ROOT = Path(__file__).resolve().parents[2]


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
# Processes started ahead of their jobs (`prestart`), by (threads, device).
_spares: dict[tuple[int, str], list[subprocess.Popen]] = {}


def stopping() -> bool:
    """The run is being stopped (a signal or a cancel ended its training processes)."""
    return _stopping.is_set()


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


def _spawn(threads: int, device: str, ahead: bool = False) -> subprocess.Popen:
    """A training process that imports torch and creates its CUDA context at once, then waits for its
    job on stdin (`dropout_lab.runtime.worker`); `ahead`: started before its job exists (it says so in its log)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if threads:
        # Set before torch starts in the child, so OpenMP never spins up more threads than asked.
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    stderr = tempfile.TemporaryFile(mode="w+")  # read back only when it fails
    argv = ["--device", device, "--parent", str(os.getpid()), "--ahead", str(int(ahead))]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dropout_lab.runtime.worker", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    proc.stderr_log = stderr
    with _live_lock:
        _live.add(proc)
    return proc


def prestart(processes: list[tuple[int, str]]) -> None:
    """Start training processes, (threads, device) each, before their jobs exist: the command line
    does this while Prefect's temporary server starts, so torch's import and the CUDA context (seconds
    each) are ready when the training tasks come. Unused ones end with `discard_spares`."""
    for threads, device in processes:
        proc = _spawn(threads, device, ahead=True)
        with _live_lock:
            _spares.setdefault((threads, device), []).append(proc)


def first_processes(groups: list[list], threads: int, slots: dict[str, int]) -> list[tuple[int, str]]:
    """(threads, device) of the training processes that start first, for `prestart`: one per group of
    variants, as many per device as it has slots."""
    started: dict[str, int] = {}
    for group in groups:
        device = group[0].device
        started[device] = started.get(device, 0) + 1
    return [(threads, device) for device, n in started.items() for _ in range(min(n, slots[device]))]


def discard_spares() -> None:
    """End the started processes no job took (a cached run trains nothing)."""
    with _live_lock:
        procs = [p for spares in _spares.values() for p in spares]
        _spares.clear()
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        proc.stderr_log.close()
        with _live_lock:
            _live.discard(proc)


def _take(threads: int, device: str) -> subprocess.Popen:
    with _live_lock:
        spares = _spares.get((threads, device), [])
        while spares:
            proc = spares.pop()
            if proc.poll() is None:
                return proc
            _live.discard(proc)  # died before its job (killed, out of memory): start another
            proc.stderr_log.close()
    return _spawn(threads, device)


def worker_job(cfgs: list, data, checkpoint_dirs: list, threads: int, cuda_graphs: str, **more) -> dict:
    """The job a training process reads on stdin (`dropout_lab.runtime.worker.run_job`): its variants, the
    data as the run checked it (a DataInfo: its folder, dataset and measured fingerprint), the training
    code's key, one checkpoint folder per variant, CPU threads and CUDA graphs; `more`: e.g. fresh, attempt."""
    from dropout_lab.keys import TRAIN_CODE, code_hash

    return {"configs": [c.to_dict() for c in cfgs], "data_root": str(data.root), "dataset": data.dataset,
            "data_fingerprint": data.fingerprint, "code": code_hash(TRAIN_CODE),
            "checkpoint_dirs": [str(d) for d in checkpoint_dirs], "threads": threads, "cuda_graphs": cuda_graphs,
            **more}  # fmt: skip


def run_worker(job: dict) -> Iterator[dict]:
    """Yield the worker's events ("start", "epoch", "log", ..., "done"); raise TrainingFailed on failure.

    How many run at once per device is the caller's business (the flow: Prefect concurrency limits)."""
    if _stopping.is_set():
        raise TrainingFailed("not started: the run is stopping", "stopped")
    proc = _take(job.get("threads") or 0, job["configs"][0]["device"])
    error = None
    try:
        try:
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it died before its job came: its exit code and stderr say why, below
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
    proc.stderr_log.seek(0)
    tail = "\n".join(proc.stderr_log.read().strip().splitlines()[-15:])
    proc.stderr_log.close()
    if code != 0:
        if _stopping.is_set():
            raise TrainingFailed("stopped by a signal; finished epochs are kept in checkpoints", "stopped")
        if error:
            raise TrainingFailed((error["message"].splitlines() or ["?"])[0], error["kind"], tail)
        raise TrainingFailed(f"training process exited with code {code}", "killed", tail)
