"""The command line's very first step: spawn Prefect's temporary server before anything heavy is
imported, so its start (its own imports, and on a machine's first run the creation of Prefect's
database) overlaps the run's imports instead of following them. flows/lifecycle.py hands the process
to Prefect's `SubprocessASGIServer.start()`, which waits for it, logs, and stops it at exit.

Why not Prefect's own spawn: `SubprocessASGIServer` lives in `prefect.server.api.server`, whose import
alone takes seconds (the server's whole app). So this module repeats its command line
(`_run_uvicorn_command`) and its port range (`find_available_port`), importing only
`prefect.settings`; tests/test_cli.py checks that both are the same, so a Prefect upgrade that
changes them fails a test instead of starting another server.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys

PR_SET_PDEATHSIG = 1
PORTS = range(8000, 9000)  # SubprocessASGIServer._port_range

_early: tuple[int, subprocess.Popen] | None = None  # (port, process) spawned, not yet claimed


def die_with_parent() -> None:  # runs in the forked child, before exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """The server in its own session (a terminal's Ctrl-C reaches the run, not the server, which must
    still record how the run ended) and with a parent-death signal (kill -9 of the run takes it along;
    tied to the spawning thread, so spawn from the main thread)."""
    return subprocess.Popen(args, env=env, start_new_session=True, preexec_fn=die_with_parent)


def server_command(port: int) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of Prefect's temporary server on `port`, as SubprocessASGIServer builds them."""
    import prefect
    from prefect.settings import get_current_settings

    args = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on"]  # fmt: skip
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           **get_current_settings().to_environment_variables(exclude_unset=True)}  # fmt: skip
    return args, env


def free_port() -> int:
    """A port of Prefect's range that nothing listens on (as SubprocessASGIServer picks one)."""
    for _ in range(10):
        port = random.choice(PORTS)
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            with contextlib.suppress(OSError):
                sock.bind(("127.0.0.1", port))
                return port
    raise RuntimeError("no free port for Prefect's temporary server")


def begin(argv: list[str]) -> None:
    """Without PREFECT_API_URL, spawn the temporary server now. Silent: a run refused for its
    parameters prints its one-line error, and the unclaimed server is ended at exit. Nothing is begun
    for `--help` (or an abbreviation of it that argparse accepts): no run follows, and a first server
    on a machine would start creating Prefect's database for nothing."""
    global _early
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or any(a == "-h" or (a.startswith("--h") and "--help".startswith(a)) for a in argv):
        return
    port = free_port()
    _early = port, spawn(*server_command(port))
    atexit.register(_end_unclaimed)


def claim() -> tuple[int, subprocess.Popen] | None:
    """(port, process) of the server begun early, once; None if none was begun."""
    global _early
    early, _early = _early, None
    return early


def _end_unclaimed() -> None:
    """A server that never served this run: a second for SIGTERM, then SIGKILL (mid-start uvicorn
    would otherwise finish starting first, holding the run's output pipe open for seconds)."""
    early = claim()
    if early is not None:
        process = early[1]
        process.terminate()
        try:
            process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
