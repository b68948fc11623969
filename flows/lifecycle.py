"""The command line's process lifecycle: a temporary Prefect server that cannot outlive the run, and
signals that stop a run in seconds.

- Prefect's temporary server (no PREFECT_API_URL) is started here, from the main thread, in its own
  session (a terminal's Ctrl-C reaches the run but not the server, which must still record how the
  run ended) and with a parent-death signal (kill -9 of the run takes the server with it). Prefect
  reuses it: `SubprocessASGIServer()` returns one shared instance. The command line spawns it first
  of all (flows/early_server.py), so it boots while the run imports torch and checks its
  parameters; `start_temporary_server` hands that process to Prefect's start().
- SIGTERM and SIGINT end the training processes (their finished epochs are checkpointed), then
  raise `Stopped` in the main thread: the flow run is reported as crashed, the server stops after
  that (Prefect's exit handler), and the CLI's last line names the signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator

from prefect.server.api import server as prefect_server

from flows import early_server
from tasks.launcher import stop_all


class GuardedServer(prefect_server.SubprocessASGIServer):
    """Prefect's temporary server with Prefect's own command line (`early_server.server_command`,
    pinned equal to it by tests/test_cli.py), spawned the guarded way (`early_server.spawn`); its
    start() takes the process the command line began early, if any."""

    early: subprocess.Popen | None = None  # begun by `early_server.begin`, handed over here

    def _run_uvicorn_command(self) -> subprocess.Popen:
        if self.early is not None:  # Prefect's start() takes the process that is already booting
            process, self.early = self.early, None
            return process
        return early_server.spawn(*early_server.server_command(self.port))


def start_temporary_server(timeout_s: int) -> str | None:
    """Without PREFECT_API_URL: start the guarded temporary server (or wait for the one begun early)
    and export its URL (Dask worker processes inherit it). Returns the URL, or None when a server is
    configured."""
    from prefect.settings import PREFECT_API_URL

    from tasks.steps import TEMPORARY_SERVER_ENV

    if PREFECT_API_URL.value():
        return None
    server = GuardedServer()  # Prefect keeps one instance per port argument: this run's
    if not server.running and (early := early_server.claim()) is not None:
        server.port, server.early = early
    server.start(timeout=timeout_s)
    os.environ["PREFECT_API_URL"] = server.api_url
    os.environ[TEMPORARY_SERVER_ENV] = "1"  # device slots: see tasks/steps.py
    return server.api_url


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
