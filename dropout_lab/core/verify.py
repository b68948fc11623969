"""Numbers that are the weights' own: a trained model's final evaluation is re-measured from its weights
before a result built on a checkpoint is used, unless this user's runs wrote (or already re-measured)
that very file.

The trust boundary (docs/design.md, *What a cached result can claim*): anyone who can write the cache
can write a checkpoint with the project's own writer, identity, checksums and all. What they cannot
do is make its recorded final numbers differ from what its weights measure: a checkpoint whose
SHA-256 this user's runs have not recorded is evaluated again (test, train-eval and held-out images,
as the training evaluated them) and refused when its numbers are not its weights'. The SHA-256s of
checkpoints written or re-measured here are kept outside the cache, per user (`measured_store`), as
Jupyter keeps the signatures of notebooks it trusts, so a run's own checkpoints cost nothing to check.
Not covered: earlier epochs' records (their weights are pruned) and the train-mode running numbers.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from pathlib import Path

import torch

from dropout_lab.config import TrainConfig
from dropout_lab.core.checkpoint import CheckpointError, checked_claim
from dropout_lab.core.claims import claim_key, measured_here, record_measured
from dropout_lab.core.evaluate import RunData, evaluate, run_data
from dropout_lab.core.model import Net
from dropout_lab.core.stacked import Single

log = logging.getLogger(__name__)

EVALUATED = ("train_eval", "test", "val")  # the evaluations every epoch record holds (`{name}_acc`, `{name}_loss`)


def remeasure(model: Net, data: RunData, cfg: TrainConfig) -> dict[str, dict]:
    """The model's evaluation on each image set of its training (`run_data`), as training evaluates it
    after every epoch: eval mode, the config's batch size and precision (on CUDA)."""
    device = next(model.parameters()).device
    precision = cfg.precision if device.type == "cuda" else "fp32"
    sets = {"train_eval": data.train_eval, "test": data.test, "val": data.val}
    with torch.no_grad():
        return {
            name: evaluate(Single(model), x.to(device), y.to(device), cfg.eval_batch_size, precision)[0]
            for name, (x, y) in ((n, s) for n, s in sets.items() if s is not None)
        }


def numbers_problem(history: list[dict], measured: dict[str, dict], n_train: int, same_kernels: bool = True,
                    name: str = "a checkpoint") -> str | None:  # fmt: skip
    """Why a training's records are not what its final weights measure (None: they are). Every epoch
    must count the images the data gives (they are shown in the report); the final evaluation must be
    the weights'. Kernels differ in summation order (stacked vs alone, CPU threads), which can flip an
    image at a near-tie: up to max(2, n/2000) images may differ, n/200 when measured on another device
    or precision; a difference within that is logged, never silently taken."""
    counts = {"n_train": n_train, **{f"n_{split}": sum(map(sum, measured[split]["confusion"]))
                                     for split in ("train_eval", "test") if split in measured}}  # fmt: skip
    for record in history:
        for key, n in counts.items():
            if record.get(key) != n:
                return f"its epoch {record.get('epoch')} claims {key} {record.get(key)}, the data gives {n}"
    record, moved = history[-1], []
    for split in EVALUATED:
        result, acc, loss = measured.get(split), record.get(f"{split}_acc"), record.get(f"{split}_loss")
        if result is None and acc is None:
            continue
        if result is None or acc is None:
            why = "missing" if acc is None else "of images its training did not hold out"
            return f"its {split} evaluation is {why}"
        n = sum(map(sum, result["confusion"]))
        slack = max(2, n // (2000 if same_kernels else 200))
        flipped = round(abs(acc - result["acc"]) * n)
        if flipped > slack:
            return f"its final {split} accuracy {acc:.4f} is not its weights' ({result['acc']:.4f} on {n} images)"
        if not math.isclose(loss, result["loss"], rel_tol=1e-3 if same_kernels else 1e-2, abs_tol=1e-6):
            return f"its final {split} loss {loss:.4f} is not its weights' ({result['loss']:.4f})"
        if flipped:
            moved.append(f"{split} {flipped} of {n} images (allowed {slack})")
    confusion = record.get("test_confusion")
    if "test" in measured and confusion is not None:
        changed = sum(abs(a - b) for ra, rb in zip(confusion, measured["test"]["confusion"], strict=True)
                      for a, b in zip(ra, rb, strict=True))  # fmt: skip
        n = sum(map(sum, measured["test"]["confusion"]))
        if changed > 2 * max(2, n // (2000 if same_kernels else 200)):
            return "its final confusion matrix is not its weights'"
    if moved:
        log.warning("%s re-measured from its weights: its final accuracy differs by a kernel's rounding (%s); "
                    "the recorded numbers are used", name, ", ".join(moved))  # fmt: skip
    return None


_data_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _data(root: str, fingerprint: str, limit_train: int, val_images: int, train_eval_images: int, limit_test: int):
    cfg = TrainConfig(limit_train=limit_train, val_images=val_images, train_eval_images=train_eval_images,
                      limit_test=limit_test)  # fmt: skip
    return run_data(root, cfg)


def cached_result_problem(checkpoint: str, sha256: str, history: list, folder: Path, expected: dict, root: str,
                          cfg: TrainConfig) -> str | None:  # fmt: skip
    """Why a recorded training result cannot be used (None: it can): its checkpoint must be this
    training's final one (`checked_claim`) and, unless this user's runs wrote or measured that file,
    its final numbers must be what its weights measure on the data at `root`. A checkpoint that passes
    is recorded with its claim, so its next check needs neither torch nor a load (claims.known_claim)."""
    try:
        state = checked_claim(checkpoint, sha256, folder, expected, history)
    except CheckpointError as e:
        return str(e)
    claim = claim_key(expected, expected["config"]["epochs"], history)
    if measured_here(sha256):
        record_measured(sha256, claim)
        return None
    device = cfg.device if cfg.device == "cpu" or torch.cuda.is_available() else "cpu"
    model = Net(cfg.dropout).to(device, memory_format=torch.channels_last)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, TypeError) as e:
        return f"{Path(checkpoint).name}: its weights do not fit the model ({str(e).splitlines()[0][:120]})"
    with _data_lock:  # one model at a time: each evaluation uses every core
        data = _data(root, expected["data_fingerprint"], cfg.limit_train, cfg.val_images, cfg.train_eval_images,
                     cfg.limit_test)  # fmt: skip
        measured = remeasure(model, data, cfg)
    problem = numbers_problem(history, measured, len(data.train[1]), device == cfg.device, Path(checkpoint).name)
    if problem is None:
        record_measured(sha256, claim)
    return problem
