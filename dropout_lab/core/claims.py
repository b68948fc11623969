"""What a checkpoint is, and which checkpoints this user's runs vouch for, without torch: the flow process
checks its cached trainings without importing torch (~2.7 s on 2 cores) when their checkpoints are
ones it knows.

`identity` is what a trained model is (dropout_lab/core/checkpoint.py stores it in every checkpoint).
The measured store (`measured_store`, per user, outside every cache) lists the SHA-256 of each
checkpoint this user's runs wrote or re-measured, each with its claim: a hash of the identity, epoch and
per-epoch history that checkpoint holds (written by the process that saved those very bytes, or after
they were loaded and checked). A cached result whose checkpoint hashes to a listed SHA-256 with the
claim the result makes is that checkpoint's, as surely as loading it would show; any other goes
through the full check (dropout_lab/core/verify.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from dropout_lab.regular import read_regular

log = logging.getLogger(__name__)

STORE_ENV = "DROPOUT_LAB_MEASURED"  # the file listing the checkpoints this user's runs measured
# What a checkpoint's identity holds beside the config: where its data and code came from.
PROVENANCE = ("dataset", "data_fingerprint", "code")


def identity(config: dict, provenance: dict) -> dict:
    """What a trained model is: its exact config (compared settings, recipe, planned epochs, data sizes),
    the dataset, the data's measured fingerprint and the training code's key (`provenance`)."""
    return {"config": dict(config), **{k: provenance.get(k, "") for k in PROVENANCE}}


def claim_key(expected: dict, epoch: int, history: list) -> str:
    """One hash of what a checkpoint says it is: its identity, its epoch and its per-epoch history."""
    text = json.dumps({"identity": expected, "epoch": epoch, "history": history}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def measured_store() -> Path:
    """$DROPOUT_LAB_MEASURED, else dropout-lab/measured.txt in the user's data folder (XDG): outside
    every cache, so writing a cache does not make its checkpoints trusted."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "dropout-lab" / "measured.txt"


_lock = threading.Lock()
# store path → (its stat when read, the SHA-256s in it, the (SHA-256, claim) pairs in it)
_known: dict[str, tuple[tuple, set[str], set[tuple[str, str]]]] = {}


def _read() -> tuple[set[str], set[tuple[str, str]]]:
    path = measured_store()
    try:
        st = path.stat()
    except OSError:
        return set(), set()
    with _lock:
        stamp, shas, claims = _known.get(str(path), ((), set(), set()))
        if stamp != (st.st_size, st.st_mtime_ns, st.st_ino):
            text = read_regular(path).decode(errors="replace")  # NotRegular: refused before a run (preflight)
            lines = [line.split() for line in text.splitlines()]
            shas = {words[0] for words in lines if words}
            claims = {(words[0], words[1]) for words in lines if len(words) >= 2}
            _known[str(path)] = ((st.st_size, st.st_mtime_ns, st.st_ino), shas, claims)
        return shas, claims


def measured_here(sha256: str) -> bool:
    """Whether this user's runs wrote, or re-measured, the checkpoint file with this SHA-256."""
    return sha256 in _read()[0]


def known_claim(checkpoint: str, sha256: str, folder: Path, expected: dict, history: list) -> bool:
    """Whether a recorded result's checkpoint is one this user's runs vouch for with this very claim:
    in `folder`, hashing to `sha256`, listed with the claim of `expected` at its planned final epoch
    and `history`. False means: check it in full."""
    path = Path(checkpoint)
    if path.resolve().parent != Path(folder).resolve() or not path.is_file():
        return False
    planned = expected["config"]["epochs"]
    claim = (sha256, claim_key(expected, planned, history))
    try:
        return claim in _read()[1] and hashlib.sha256(read_regular(path)).hexdigest() == sha256
    except OSError:
        return False


@functools.cache
def _warn_unwritable(path: str, reason: str) -> None:
    log.warning("cannot record measured checkpoints in %s (%s): checkpoints will be measured again", path, reason)


def record_measured(sha256: str, claim: str = "") -> None:
    """Add a checkpoint's SHA-256 and its claim (`claim_key`) to the store (one appended line:
    concurrent writers do not mix)."""
    path = measured_store()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
        try:
            os.write(fd, f"{sha256} {claim}".rstrip().encode() + b"\n")
        finally:
            os.close(fd)
    except OSError as e:
        _warn_unwritable(str(path), e.strerror or str(e))
