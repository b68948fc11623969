"""Crash-safe checkpoints: atomic writes, a magic header and a checksum, safe loading.

File layout: MAGIC (8 bytes) · sha256 of the payload (32 bytes) · payload (torch.save bytes).
A torn write, a flipped bit or a foreign file fails the magic or checksum test instead of
loading garbage. Payloads load with `weights_only=True`, so a crafted file cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from pathlib import Path

import torch

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


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).digest() + payload)


def load_checkpoint(path: Path) -> dict:
    blob = Path(path).read_bytes()
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


def claim_problem(checkpoint: str, sha256: str, folder: Path, config: dict, history: list) -> str | None:
    """Why a recorded training result (its final checkpoint's path and SHA-256, its config and
    per-epoch metrics) is not what `folder` holds (None: it is): the checkpoint must lie in `folder`,
    hash to `sha256`, load, and carry that very config and history."""
    path = Path(checkpoint)
    if path.resolve().parent != Path(folder).resolve():
        return f"its checkpoint {checkpoint} is not in {folder}"
    if not path.is_file():
        return f"its checkpoint {path.name} is gone"
    if hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        return f"{path.name} does not have the recorded SHA-256"
    try:
        state = load_checkpoint(path)
    except CheckpointError as e:
        return str(e)
    if state.get("config") != config:
        return f"{path.name} was written for another configuration"
    if state.get("history") != history:
        return f"its metrics are not the ones {path.name} holds"
    return None


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
