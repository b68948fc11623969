"""File locks that say who holds them: a run waiting on another run's lock logs it, with the holder's pid.

Also the leftover rule: temp names carry the writer's pid (`.NAME.PID.tmp`, `.NAME.tmp-PID-…`), so
the next run can tell a crashed writer's leftovers from a live one's and delete only those.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from dropout_lab.regular import create_new, read_regular

log = logging.getLogger(__name__)

WAIT_LOG_EVERY_S = 30.0


def _holder(pid_file: Path) -> str:
    try:
        return f"pid {int(read_regular(pid_file, 64).decode().strip())}"
    except (OSError, ValueError):
        return "another process"


@contextmanager
def held(path: str | Path, what: str, timeout_s: float = 3600.0) -> Iterator[None]:
    """Hold the lock at `path` (e.g. `data/.cifar10.lock`). If another process holds it, log one line
    at once (and every WAIT_LOG_EVERY_S) naming it, then wait up to `timeout_s` (TimeoutError)."""
    lock, pid_file = FileLock(str(path)), Path(f"{path}.pid")
    waited, start = False, time.monotonic()
    while True:
        try:
            lock.acquire(timeout=0 if not waited else min(WAIT_LOG_EVERY_S, timeout_s))
            break
        except Timeout:
            elapsed = time.monotonic() - start
            if elapsed >= timeout_s:
                raise TimeoutError(f"gave up after {elapsed:.0f} s waiting for {what} ({path}), held by "
                                   f"{_holder(pid_file)}") from None  # fmt: skip
            log.warning("waiting for %s: %s is held by %s (another run using the same folder)%s", what, path,
                        _holder(pid_file), f", {elapsed:.0f} s so far" if waited else "")  # fmt: skip
            waited = True
    try:
        create_new(pid_file, str(os.getpid()).encode())  # never written through a planted link
        yield
    finally:
        pid_file.unlink(missing_ok=True)
        lock.release()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


# `.NAME.tmp-PID-xyz`, `.NAME.old-PID`, `.extract-PID-xyz`, `.download-PID-xyz`, `.NAME.PID.tmp`
_PID_IN_NAME = re.compile(r"(?:tmp|old|extract|download|gen)-(\d+)(?:-|$)|\.(\d+)\.tmp$")


def remove_dead_leftovers(folder: Path, pattern: str) -> list[Path]:
    """Delete `folder/pattern` entries whose writer's pid (in the name) no longer runs; returns them.
    Entries without a pid in their name are left alone."""
    removed = []
    for path in Path(folder).glob(pattern):
        m = _PID_IN_NAME.search(path.name)
        pid = next((int(g) for g in (m.groups() if m else ()) if g), None)
        if pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.info("removed %d leftover(s) of crashed runs in %s: %s", len(removed), folder,
                 ", ".join(p.name for p in removed))  # fmt: skip
    return removed
