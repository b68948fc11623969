"""Each training in a process of its own, from the standard library's process pool
(`concurrent.futures.ProcessPoolExecutor`, one process per training), its events streamed back while it
trains (runtime/training.py is what the process runs).

The processes are forked from multiprocessing's fork server, which has imported torch and the trainer
once: a training starts in milliseconds, not the seconds of torch's import, and the command line starts
the server while Prefect's temporary server starts (`prestart`). The server imports no CUDA, so each
training creates its own CUDA context. In a daemonic process (a Dask worker's, which may not have
children) the training runs in that process itself: with `--nthreads 1` it is the training's own process.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from importlib.machinery import ModuleSpec

from dropout_lab.redact import redact
from dropout_lab.runtime import training

# A retry cannot fix these: the disk is still full, the folder still read-only.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
# What the fork server imports once for every training process it forks. torch._dynamo too: every torch
# optimizer's constructor imports it, 3.4 s of each training process on 2 cores (benchmarks/RESULTS.md).
PRELOAD = ["torch", "torch._dynamo", training.__name__]


class TrainingFailed(RuntimeError):
    """A training process failed; `kind` is oom | data | disk | fault | crash | killed | stopped.

    The message is one line; `details` holds the failure's traceback in the training process (logged,
    not shown last)."""

    def __init__(self, message: str, kind: str, details: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details


_stopping = threading.Event()


def stopping() -> bool:
    """The run is being stopped (a signal or a cancel ended its training processes)."""
    return _stopping.is_set()


def stop_all() -> int:
    """End every training process of this process (SIGTERM; each has saved its last finished epoch) and
    refuse new ones. Returns how many were running. Safe to call from a signal handler."""
    _stopping.set()
    running = multiprocessing.active_children()
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    return len(running)


def before_exit() -> None:
    """Call before `os._exit`: run multiprocessing's exit finalizers, which unlink the process pools'
    semaphores. Skipped, multiprocessing's resource tracker unlinks them after this process has ended
    and prints a warning below the run's last line."""
    from multiprocessing import util

    util._run_finalizers(0)  # what multiprocessing's own atexit hook runs first (no public name)


def _context():
    main = sys.modules["__main__"]
    if getattr(main, "__spec__", None) is None and hasattr(main, "__file__"):
        # A training needs nothing of the script that launched it; multiprocessing would run that script
        # again in every process (Prefect and all: seconds of a 2-core machine; and a script without an
        # `if __name__ == "__main__"` guard would start its work again there). As the module `__main__`,
        # multiprocessing leaves it alone.
        main.__spec__ = ModuleSpec("__main__", None)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def prestart() -> None:
    """Start the fork server now (it imports torch and the trainer), e.g. while Prefect's server starts."""
    from multiprocessing import forkserver

    _context()
    forkserver.ensure_running()


def classify(error: BaseException) -> str:
    """What kind of failure a training's error is; the task retries only what a retry can fix."""
    from dropout_lab.core.data import DataError
    from dropout_lab.core.train import InjectedFault

    if "out of memory" in str(error).lower():  # torch.OutOfMemoryError and allocator messages
        return "oom"
    if (isinstance(error, OSError) and error.errno in DISK_ERRNOS) or "no space left" in str(error).lower():
        return "disk"
    if isinstance(error, DataError):
        return "data"
    if isinstance(error, InjectedFault):
        return "fault"
    return "crash"


def run_training(job: dict) -> Iterator[dict]:
    """Yield a training's events (`start`, `epoch`, `progress`, `log`), then `{"event": "done", "results":
    [...]}`; TrainingFailed (with its kind) when it fails, is killed or the run is being stopped."""
    if _stopping.is_set():
        raise TrainingFailed("not started: the run is stopping", "stopped")
    if multiprocessing.current_process().daemon:
        yield from _in_this_process(job)
        return
    ctx = _context()
    # A pipe the training process alone writes to: a process killed in mid-write leaves no lock held.
    events, writer = ctx.Pipe(duplex=False)
    pid = None
    start = (writer, job["threads"], dict(os.environ), os.getpid())
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=training.start, initargs=start) as pool:
        future = pool.submit(training.train, job)  # the process starts here, with its end of the pipe
        writer.close()
        try:
            while not (future.done() and not events.poll()):
                if events.poll(0.1):
                    event = events.recv()
                    if event["event"] == "pid":
                        pid = event["pid"]
                    else:
                        yield event
        except (EOFError, OSError):
            pass  # killed in mid-write: its exit says why, below
        finally:
            if not future.done() and pid is not None:  # the consumer stopped early (cancelled): end it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        results = _as_training_failure(future.result)
    events.close()
    yield {"event": "done", "results": results}


def _in_this_process(job: dict) -> Iterator[dict]:
    """The training in a thread of this process, its events streamed as they come."""
    events: queue.SimpleQueue = queue.SimpleQueue()
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(training.train(job, events.put))
        except Exception as e:  # re-raised below, in the consumer's thread
            outcome.append(e)
        events.put(None)

    threading.Thread(target=run, name="training", daemon=True).start()
    while (event := events.get()) is not None:
        yield event
    yield {"event": "done", "results": _as_training_failure(lambda: _raise_or_return(outcome[0]))}


def _raise_or_return(value):
    if isinstance(value, BaseException):
        raise value
    return value


def _as_training_failure(call):
    try:
        return call()
    except BrokenProcessPool:
        if _stopping.is_set():
            raise TrainingFailed("stopped by a signal; finished epochs are kept in checkpoints", "stopped") from None
        raise TrainingFailed("the training process was killed (out of memory, or a signal)", "killed") from None
    except Exception as e:
        if _stopping.is_set():
            raise TrainingFailed("stopped by a signal; finished epochs are kept in checkpoints", "stopped") from None
        # The traceback in the training process (the pool sends it as the cause), else this one's.
        details = redact(str(e.__cause__) if e.__cause__ else "".join(traceback.format_exception(e)))
        message = redact((f"{type(e).__name__}: {e}".splitlines() or ["?"])[0])
        raise TrainingFailed(message, classify(e), details) from None
