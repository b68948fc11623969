"""Crash-safe checkpoints: atomic writes, a magic header and a checksum, safe loading.

File layout: MAGIC (8 bytes) · sha256 of the payload (32 bytes) · payload (torch.save bytes).
A torn write, a flipped bit or a foreign file fails the magic or checksum test instead of
loading garbage. Payloads load with `weights_only=True`, so a crafted file cannot run code.

Every checkpoint records what it is (`identity`, in core/claims.py): the exact config (compared settings,
recipe, the planned epochs, the data sizes), the dataset, the data's measured fingerprint and the training code's
key, beside the epoch it finished. A checkpoint is resumed from, or a cached result built on it is
used, only when that identity is the one asked for (and, for a result, when it is the planned final
epoch); checksums catch accidents, identities catch a checkpoint that is not this training's.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from pathlib import Path

import torch

from dropout_lab.regular import NotRegular, read_regular

log = logging.getLogger(__name__)

MAGIC = b"DLCKPT1\n"
_EPOCH_FILE = re.compile(r"^epoch-(\d{4})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupted, foreign or does not fit the run."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """temp file in the same folder + fsync + rename + fsync of the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, state: dict) -> str:
    """Write `state` atomically; returns the file's SHA-256 (what results and the history name it by)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    blob = MAGIC + hashlib.sha256(payload).digest() + payload
    atomic_write_bytes(path, blob)
    return hashlib.sha256(blob).hexdigest()


def checkpoint_bytes(path: Path) -> bytes:
    """A checkpoint file's bytes; CheckpointError for a FIFO, a link (to /dev/zero, ...), a folder."""
    try:
        return read_regular(path)
    except NotRegular as e:
        raise CheckpointError(str(e)) from None


def load_checkpoint(path: Path) -> dict:
    blob = checkpoint_bytes(path)
    if not blob.startswith(MAGIC):
        raise CheckpointError(f"{path}: bad magic (not a dropout-lab checkpoint, or truncated)")
    digest, payload = blob[len(MAGIC) : len(MAGIC) + 32], blob[len(MAGIC) + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # a valid checksum over an unloadable payload: still unusable
        raise CheckpointError(f"{path}: unreadable payload ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: payload is not a checkpoint dict")
    return state


def identity_problem(found, expected: dict) -> str | None:
    """Why a checkpoint's recorded identity is not `expected` (None: it is), in a few words."""
    if not isinstance(found, dict):
        return "it records no identity (written by an older version)"
    theirs, ours = found.get("config") or {}, expected["config"]
    if theirs != ours:
        differ = [f"{k} {theirs.get(k)!r}, not {v!r}" for k, v in ours.items() if theirs.get(k) != v]
        return f"written for another configuration ({'; '.join(differ)[:160] or 'other fields'})"
    if found.get("dataset") != expected["dataset"]:
        return f"trained on the {found.get('dataset')!r:.40} dataset, not {expected['dataset']!r}"
    if found.get("data_fingerprint") != expected["data_fingerprint"]:
        return "trained on other data (its files' checksums are not this data's)"
    if found.get("code") != expected["code"]:
        return "written by other training code"
    return None


def checked_claim(checkpoint: str, sha256: str, folder: Path, expected: dict, history: list) -> dict:
    """The checkpoint a recorded training result names (its path, SHA-256 and per-epoch metrics), loaded,
    if it is that training's final one: in `folder`, hashing to `sha256`, readable, of the `expected`
    identity, at the planned last epoch, holding that very history. CheckpointError (why not) else."""
    path = Path(checkpoint)
    if path.resolve().parent != Path(folder).resolve():
        raise CheckpointError(f"its checkpoint {checkpoint} is not in {folder}")
    if not path.is_file():
        raise CheckpointError(f"its checkpoint {path.name} is gone")
    if hashlib.sha256(checkpoint_bytes(path)).hexdigest() != sha256:
        raise CheckpointError(f"{path.name} does not have the recorded SHA-256")
    state = load_checkpoint(path)
    problem = identity_problem(state.get("identity"), expected)
    if problem:
        raise CheckpointError(f"{path.name}: {problem}")
    planned = expected["config"]["epochs"]
    if state.get("epoch") != planned or len(history) != planned or history[-1].get("epoch") != planned:
        raise CheckpointError(f"{path.name} is epoch {state.get('epoch')} of {planned}, not the final one")
    if state.get("history") != history:
        raise CheckpointError(f"its metrics are not the ones {path.name} holds")
    return state


def epoch_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every epoch checkpoint in `folder`, newest first."""
    if not Path(folder).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(folder).iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return sorted(found, reverse=True)


def checkpoint_path(folder: Path, epoch: int) -> Path:
    return Path(folder) / f"epoch-{epoch:04d}.pt"


def set_aside(path: Path, reason: str) -> Path:
    """Rename a bad checkpoint to *.corrupt (kept for inspection, never loaded again)."""
    bad = path.with_name(path.name + ".corrupt")
    os.replace(path, bad)
    log.warning("checkpoint %s set aside as %s: %s", path.name, bad.name, reason)
    return bad


def prune(folder: Path, keep: int = 2) -> None:
    """Keep the newest `keep` epoch checkpoints: the latest plus one good fallback."""
    for _, path in epoch_checkpoints(folder)[keep:]:
        path.unlink(missing_ok=True)
