"""Every remote a run needs is probed before anything is created, by a real operation, under one deadline.

A remote that answers its health check but fails every real request, accepts a connection and never
answers, or names a scheme or driver that cannot work, is refused in one line within PROBE_DEADLINE_S,
instead of minutes of retries after folders were made: the Prefect API (a real read), an MLflow store
(a real read: its experiments), a run history (a connection and its tables), a Dask scheduler (the
handshake). Messages pass through the one redaction (redact.py).
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from dropout_lab.redact import credentials_in, hide, redact

PROBE_DEADLINE_S = 10.0  # every remote's probe, whatever its kind: one answer within this, or a refusal
# After the probe, for the rest of the run: a remote's first failing call ends the run within this, its
# library's own retries included (Prefect's client retries 5 times over ~62 s by default, MLflow's 7 times
# over ~4 minutes: a server that passed the probe and then answers 503 held a run silent that long).
REMOTE_DEADLINE_S = 60.0
REMOTE_RETRIES = 2  # one passing hiccup is still retried
STOP_GRACE_S = 5.0  # a stopped operation's time to end what it began

T = TypeVar("T")


def remote_deadlines() -> None:
    """Bound every remote library's retries by REMOTE_DEADLINE_S, through its own settings: 3 attempts, each
    within (deadline - backoffs) / 3 s (MLflow's backoffs 1 + 2 s; Prefect's 2 + 4 s, up to 20 % jitter);
    a PostgreSQL store connects within 10 s (libpq's PGCONNECT_TIMEOUT). Call before MLflow or Prefect is
    imported (Prefect reads its settings once); a variable the user has set is kept."""
    attempts = REMOTE_RETRIES + 1
    for name, value in {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": REMOTE_RETRIES,
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": 1,
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": 0,
        "MLFLOW_HTTP_REQUEST_TIMEOUT": int((REMOTE_DEADLINE_S - 3) // attempts),
        "PREFECT_CLIENT_MAX_RETRIES": REMOTE_RETRIES,
        "PREFECT_API_REQUEST_TIMEOUT": int((REMOTE_DEADLINE_S - 6 * 1.2) // attempts),
        "PGCONNECT_TIMEOUT": 10,
    }.items():
        os.environ.setdefault(name, str(value))


class ProbeFailed(ValueError):
    """A remote that cannot take this run: one line, credentials redacted."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


def first_line(error: BaseException) -> str:
    """An error's first line, with its type when the message is empty, credentials redacted."""
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return redact(text[0][:300] if text else type(error).__name__)


def within_deadline(what: str, operation: Callable[[], T], deadline_s: float | None = None,
                    address: str = "") -> T:  # fmt: skip
    """`operation()`'s result, run in a daemon thread that may take at most `deadline_s` (a library's own
    timeouts do not cover a peer that accepts and never answers, nor its retries). ProbeFailed naming
    `what` when it raises or runs out of time; the credentials of `address` (the remote's URL) are hidden
    from the library's message even where it quotes them without the URL around them. Default deadline:
    PROBE_DEADLINE_S, read at the call."""
    deadline_s = PROBE_DEADLINE_S if deadline_s is None else deadline_s
    try:
        return until_silent(what, lambda answered: operation(), deadline_s)
    except ProbeFailed:
        raise
    except Exception as e:
        if isinstance(e, TimeoutError) or "timed out" in str(e).lower():  # ours, or a library's own timeout
            raise ProbeFailed(f"{what}: no answer within {deadline_s:.0f} s") from None
        raise ProbeFailed(f"{what}: {hide(first_line(e), credentials_in(address))}") from None


def until_silent(what: str, operation: Callable[[Callable[[], None]], T], silence_s: float = REMOTE_DEADLINE_S) -> T:
    """`operation(answered)`'s result, run in a daemon thread, `answered()` noting each answer of its remote;
    TimeoutError once `silence_s` passed without one. A remote that accepts and never answers (a stopped
    database server: the kernel still acknowledges) holds a call past every library's timeout, while a long
    recording that keeps answering is not cut. A stop of the waiting thread (Ctrl-C, SIGTERM) is raised in
    the operation's too, within STOP_GRACE_S, so that it ends what it began (an MLflow run KILLED)."""
    outcome: list = []
    last = [time.monotonic()]
    done = threading.Event()  # waited on, not join(): an interrupted join marks the thread finished (3.11)

    def answered() -> None:
        last[0] = time.monotonic()

    def attempt() -> None:
        try:
            outcome.append((True, operation(answered)))
        except BaseException as e:  # noqa: BLE001 - raised in the waiting thread
            outcome.append((False, e))
        finally:
            done.set()

    thread = threading.Thread(target=attempt, daemon=True, name=what[:60])
    thread.start()
    try:
        while not done.is_set() and (left := silence_s - (time.monotonic() - last[0])) > 0:
            done.wait(min(left, 1.0))  # short waits: a signal's handler runs between them
    except BaseException as stop:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(type(stop)))
        done.wait(STOP_GRACE_S)
        raise
    if not outcome:
        raise TimeoutError(f"no answer for {silence_s:.0f} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


ASYNC_DRIVERS = ("asyncpg", "aiosqlite", "asyncmy", "aiomysql", "psycopg_async", "aioodbc")


def database_url(text: str, what: str):
    """The SQLAlchemy URL `text` names, checked before any connection: it parses, its port is a number,
    its driver is a synchronous one and installed. ProbeFailed (one line) otherwise."""
    import sqlalchemy as sa

    try:
        url = sa.make_url(text)
        _ = url.port  # a port that is not a number raises here, not at connect time
    except (sa.exc.ArgumentError, ValueError, TypeError) as e:
        raise ProbeFailed(f"{what} {text}: not a database URL ({first_line(e)})") from None
    try:
        dialect = url.get_dialect()  # an unknown database raises here
    except sa.exc.NoSuchModuleError:
        raise ProbeFailed(f"{what} {text}: SQLAlchemy knows no database {url.drivername!r}") from None
    driver = url.get_driver_name() or ""
    if any(driver.startswith(a) for a in ASYNC_DRIVERS):
        raise ProbeFailed(f"{what} {text}: the async driver {driver} cannot be used here; use "
                          f"{url.get_backend_name()}:// (a synchronous driver)")  # fmt: skip
    try:
        dialect.import_dbapi()  # its driver not installed raises here
    except ImportError as e:
        name = getattr(e, "name", None) or first_line(e)
        raise ProbeFailed(f"{what} {text}: needs the {name} package for {url.get_backend_name()}") from None
    return url
