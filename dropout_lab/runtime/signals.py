"""Signals that stop a run in seconds: SIGTERM and SIGINT end the training processes (their finished
epochs are checkpointed), then raise `Stopped` in the main thread: the flow run is reported as
crashed, the temporary server stops after that (at exit), and the CLI's last line names the signal.

A stop that reaches every process at once (a service manager stopping the whole process tree, the
temporary server included) leaves no API to report to, and Prefect's client would retry each report
for a minute (5 retries, 2 to 32 s apart). So a stopped command line watches the API: once it no
longer answers, the run ends at once with its last line (`gone`), as it would have after reporting.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

from dropout_lab.runtime.processes import stop_all


class Stopped(BaseException):
    """The run was stopped by a signal. A BaseException, like KeyboardInterrupt: nothing retries it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


GRACE_S = 2.0  # how long a stopped run reports its end before the API's answer is checked


def api_answers() -> bool:
    """Whether the Prefect API this process reports to answers at all (any HTTP status), within 1 s."""
    url = os.environ.get("PREFECT_API_URL", "")
    if not url:
        return True  # no API of ours: nothing to wait for here
    from dropout_lab.redact import split_credentials

    try:
        urllib.request.urlopen(f"{split_credentials(url)[0].rstrip('/')}/health", timeout=1).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


_gone: list[Callable[[int], None]] = []  # what ends a stopped command line whose API is gone
_watching: list[threading.Thread] = []


def _watch_api(signum: int) -> None:
    """After a stop: once the API no longer answers, the registered `gone(signum)` ends the process."""
    if not _gone or _watching:
        return
    gone = _gone[-1]

    def watch() -> None:
        time.sleep(GRACE_S)
        while api_answers():
            time.sleep(1.0)
        gone(signum)

    _watching.append(threading.Thread(target=watch, name="api-watch", daemon=True))
    _watching[0].start()


def _stop(signum: int, frame) -> None:
    stop_all()
    _watch_api(signum)
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
        _watch_api(signum)  # Prefect's handler reports the crash first: to an API that may be gone
        if callable(prefect_handler):
            prefect_handler(signum, frame)

    handler.stops_training = True
    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def stop_on_signals(gone: Callable[[int], None] | None = None) -> Iterator[None]:
    """Within: SIGTERM and SIGINT stop the training processes and raise `Stopped` (main thread only).
    Prefect's own SIGTERM handling during a flow run reports the crash, then re-sends the signal to
    this handler. `gone(signum)` is called (from another thread: it must end the process) when, after
    a stop, the API no longer answers."""
    if gone is not None:
        _gone.append(gone)
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        if gone is not None:
            _gone.remove(gone)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
