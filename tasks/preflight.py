"""Checks that can fail a run before any training starts: writable folders and free disk space."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

MB = 1 << 20
# What a run may write: the CIFAR-10 archive plus its extracted copy; checkpoints and cached results;
# one report folder.
NEEDS = {"data": 400 * MB, "cache": 100 * MB, "out": 20 * MB}


def check_writable(path: str | Path, what: str, need_bytes: int = 0) -> None:
    """Create `path` if needed and prove it writable with a real temp file; check free space.

    Raises ValueError with a one-line message. (os.access is not enough: it says yes to root.)
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"{what} {path} is not writable ({e.strerror or e})") from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise ValueError(f"{what} {path} has {free // MB} MB free; this run needs about {need_bytes // MB} MB")


def check_folders(data_dir: str, out: str, cache_dir: str, data_present: bool) -> None:
    check_writable(data_dir, "--data-dir", 0 if data_present else NEEDS["data"])
    check_writable(cache_dir, "--cache-dir", NEEDS["cache"])
    check_writable(out, "--out", NEEDS["out"])
