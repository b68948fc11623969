"""Signals that stop a run in seconds: SIGTERM and SIGINT end the training processes (their finished
epochs are checkpointed), then raise `Stopped` in the main thread: the flow run is reported as
crashed, the temporary server stops after that (at exit), and the CLI's last line names the signal.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from dropout_lab.runtime.processes import stop_all


class Stopped(BaseException):
    """The run was stopped by a signal. A BaseException, like KeyboardInterrupt: nothing retries it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def _stop(signum: int, frame) -> None:
    stop_all()
    raise Stopped(signum)


def stop_training_on_sigterm() -> None:
    """Call first in the flow body. Prefect's SIGTERM handler (installed for the flow run) waits for
    running tasks before reporting; ours runs first and ends the training processes, so it waits
    seconds, not until training is done. Served and worker runs get this too (a cancel is a SIGTERM)."""
    if threading.current_thread() is not threading.main_thread():
        return
    prefect_handler = signal.getsignal(signal.SIGTERM)
    if getattr(prefect_handler, "stops_training", False):
        return

    def handler(signum: int, frame) -> None:
        stop_all()
        if callable(prefect_handler):
            prefect_handler(signum, frame)

    handler.stops_training = True
    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGINT stop the training processes and raise `Stopped` (main thread only).
    Prefect's own SIGTERM handling during a flow run reports the crash, then re-sends the signal to
    this handler."""
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
