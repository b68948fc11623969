"""The command line's temporary Prefect server, when no PREFECT_API_URL names one.

It serves what Prefect's own temporary server serves (`prefect.server.api.server.create_app` with
`ephemeral=True`: the API without the UI and background services, under uvicorn) but is spawned
guarded: in its own session, so a terminal's Ctrl-C reaches the run and not the server, which must
still record how the run ended; and with a parent-death signal, so a `kill -9` of the run takes the
server along. Only public interfaces are used: uvicorn's command line, `create_app` and its
documented arguments, and the PREFECT_API_URL setting the run then points at it.

`begin` spawns it before torch and Prefect's engine are imported, so its start (and, on a machine's
first run, the creation of Prefect's database) overlaps the run's imports; `serving` waits until it
answers and points Prefect at it (its settings, and the environment that Dask workers inherit); it
is stopped at exit. It has no UI, so no link to one is printed (Prefect's "View at" line is switched
off with an empty PREFECT_UI_URL); its first line says how to watch runs in a UI instead.
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
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1
PORTS = range(8000, 9000)
PORT_IN_USE = 3  # uvicorn's exit status when it cannot bind its port
REPO = Path(__file__).resolve().parents[2]
# Set for the run's processes once it runs on a temporary server (device slots: tasks/slots.py).
TEMPORARY_SERVER_ENV = "DROPOUT_LAB_TEMPORARY_SERVER"

_server: tuple[int, subprocess.Popen] | None = None  # (port, process)
NOTICE = ("Prefect: a temporary server for this run, without a UI; to watch runs in the UI start one "
          "(`prefect server start`) and export PREFECT_API_URL=http://127.0.0.1:4200/api")  # fmt: skip
# The server's own output (its error log): in a file, not on the run's terminal, where its shutdown
# (services cancelled mid-write when it is stopped) would print tracebacks after the run's last line.
_output = tempfile.TemporaryFile()


def app():  # the uvicorn factory the server process runs
    from prefect.server.api.server import create_app

    return create_app(ephemeral=True, final=True)


def _die_with_parent() -> None:  # runs in the forked child, before exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    for _ in range(20):
        port = random.choice(PORTS)
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            with contextlib.suppress(OSError):
                sock.bind(("127.0.0.1", port))
                return port
    raise RuntimeError("no free port for Prefect's temporary server")


def _spawn() -> tuple[int, subprocess.Popen]:
    """The server on a free port, from the main thread (the parent-death signal follows the spawning thread)."""
    port = _free_port()
    args = [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO), "--factory",
            f"{__name__}:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
            "--lifespan", "on"]  # fmt: skip
    env = {**os.environ, "PREFECT_UI_ENABLED": "0"}
    process = subprocess.Popen(args, env=env, start_new_session=True, preexec_fn=_die_with_parent,
                               stdout=_output, stderr=subprocess.STDOUT)  # fmt: skip
    return port, process


def _last_output_line() -> str:
    _output.flush()
    _output.seek(0)
    lines = [line.strip() for line in _output.read().decode(errors="replace").splitlines() if line.strip()]
    return f": {lines[-1]}" if lines else ""


def configured() -> bool:
    """A server is configured (PREFECT_API_URL, from the environment or Prefect's profile)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def begin() -> None:
    """Spawn the temporary server now, unless a server is configured. Silent; a run that is refused
    afterwards ends it at exit."""
    global _server
    if _server is None and not configured():
        _server = _spawn()
        atexit.register(stop)


def start(timeout_s: float) -> str | None:
    """Wait until the temporary server (begun early, or now) answers; export its URL. Returns it, or
    None when a server is configured. RuntimeError (one line) if it never answers."""
    import httpx

    global _server
    if configured() and _server is None:
        return None
    begin()
    deadline = time.monotonic() + timeout_s
    while True:
        port, process = _server
        url = f"http://127.0.0.1:{port}/api"
        if process.poll() == PORT_IN_USE:  # taken between choosing and binding it: another port
            _server = _spawn()
            continue
        if process.poll() is not None:
            raise RuntimeError(f"Prefect's temporary server exited with status {process.returncode} while starting"
                               f"{_last_output_line()}")  # fmt: skip
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        if time.monotonic() > deadline:
            raise RuntimeError(f"Prefect's temporary server did not answer within {timeout_s:.0f} s")
        time.sleep(0.1)
    print(NOTICE, file=sys.stderr, flush=True)
    os.environ["PREFECT_API_URL"] = url
    os.environ["PREFECT_UI_URL"] = ""  # no UI behind it: Prefect prints no "View at" link (and Dask's workers)
    os.environ[TEMPORARY_SERVER_ENV] = "1"
    return url


@contextlib.contextmanager
def serving(timeout_s: float) -> Iterator[str | None]:
    """Within: Prefect's client talks to the temporary server (`start`), unless a server is configured
    (yields None). Prefect reads its settings once, at import, so the URL is set as a temporary
    setting (Prefect's `temporary_settings`), not only in the environment."""
    url = start(timeout_s)
    if url is None:
        yield None
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_UI_URL: ""}):
        yield url


def stop() -> None:
    """SIGTERM, then SIGKILL after 5 s (a server mid-start would otherwise finish starting first)."""
    global _server
    if _server is None:
        return
    _, process = _server
    _server = None
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
