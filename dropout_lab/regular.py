"""Files the project reads and writes in folders others can write to (the cache, checkpoints, records, locks,
the trust store): only regular files, never through a link. A FIFO planted as a checkpoint would block a
plain `open` for ever, a link to /dev/zero would be read until memory runs out, a link planted as a lock's
pid file would have the pid written through it into whatever it points at. The data folder's files may be
links (a shared copy of CIFAR-10), so there a link is followed, but what it leads to must be a regular file
too (`regular_file(..., follow=True)`)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# A size no file of ours reaches (a checkpoint ~4.4 MB, a data batch ~31 MB): larger is not what it claims.
MOST_BYTES = 512 * 2**20


class NotRegular(OSError):
    """A path that is a link, a FIFO, a device, a folder, or larger than allowed; one line."""


@contextlib.contextmanager
def regular_file(path: str | Path, most: int = MOST_BYTES, follow: bool = False) -> Iterator[BinaryIO]:
    """`path` open for reading if it is a regular file of at most `most` bytes, opened without waiting (a
    FIFO) and, unless `follow`, without following a link at its last component; its type is checked on the
    opened descriptor. NotRegular (one line) otherwise; other OSErrors as `open` raises them."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    except OSError as e:
        if not follow and os.path.islink(path):
            raise NotRegular(f"{path}: a link, not a file (links are not followed here)") from None
        raise e
    kind = os.fstat(fd)
    if not stat.S_ISREG(kind.st_mode):
        os.close(fd)
        raise NotRegular(f"{path}: not a regular file ({_kind(kind.st_mode)})")
    if kind.st_size > most:
        os.close(fd)
        raise NotRegular(f"{path}: {kind.st_size:,} bytes, more than any file of its kind ({most:,})")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as f:
        yield f


def read_regular(path: str | Path, most: int = MOST_BYTES) -> bytes:
    """The bytes of `path`, a regular file (`regular_file`: never through a link)."""
    with regular_file(path, most) as f:
        return f.read(most)


def create_new(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to a file created here and now: whatever was at `path` (a leftover, a planted link) is
    removed first, never written through."""
    Path(path).unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def check_regular_or_absent(path: str | Path) -> None:
    """NotRegular (one line) when something other than a regular file is at `path`; nothing there is fine."""
    try:
        kind = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(kind.st_mode):
        raise NotRegular(f"{path}: not a regular file ({_kind(kind.st_mode)})")


def _kind(mode: int) -> str:
    kinds = {stat.S_ISLNK: "a link", stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a device",
             stat.S_ISBLK: "a device", stat.S_ISSOCK: "a socket"}  # fmt: skip
    return next((name for test, name in kinds.items() if test(mode)), "not a file")
