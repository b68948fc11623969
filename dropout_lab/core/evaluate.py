"""Evaluation: loss, accuracy, per-class accuracy and the confusion matrix, in one pass."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dropout_lab.config import TrainConfig
from dropout_lab.core.data import CLASSES, DataError, load_split


def to_input(images_nhwc: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) → float (N, 3, 32, 32) in [-1, 1], channels_last in memory.

    Equals torchvision's ToTensor (x/255) then Normalize(0.5, 0.5) ((t-0.5)/0.5) = x/127.5 - 1,
    done per batch on the training device instead of per sample on the CPU.
    """
    return images_nhwc.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def autocast(device: torch.device, precision: str, cache: bool = True):
    """bf16/fp16 autocast on CUDA; a no-op context for fp32. Inside a CUDA-graph capture the cast
    cache must be off (`cache=False`): cached casts would be freed with the capture's tensors."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


@torch.no_grad()
def eval_sums(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    precision: str,
    loss_sum: torch.Tensor,
    confusion: torch.Tensor,
    cache: bool = True,
) -> None:
    """Add each variant's summed cross-entropy to `loss_sum` (K,) float64 and its [true, predicted]
    counts to `confusion` (K, 10, 10) int64, in place. No host sync and fixed shapes throughout, so a
    whole evaluation pass can be captured as one CUDA graph (core/train.py)."""
    device, k, n_classes = images.device, model.k, len(CLASSES)
    flat = confusion.view(-1)
    variant = torch.arange(k, device=device).unsqueeze(1)  # (K, 1)
    for start in range(0, len(labels), batch_size):
        x, y = to_input(images[start : start + batch_size]), labels[start : start + batch_size]
        with autocast(device, precision, cache):
            logits = model(x, shared=True)
        logits = logits.float()  # (K, b, 10)
        loss_sum += F.cross_entropy(logits.flatten(0, 1), y.repeat(k), reduction="none").view(k, -1).sum(1)
        cell = (variant * n_classes + y) * n_classes + logits.argmax(2)  # (K, b): [variant, true, predicted]
        # scatter_add_ rather than bincount: bincount's output size is data-dependent (a host sync).
        flat.scatter_add_(0, cell.flatten(), torch.ones_like(cell.flatten()))


def eval_buffers(k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed (loss_sum (K,), confusion (K, 10, 10)) for `eval_sums`."""
    n = len(CLASSES)
    return torch.zeros(k, dtype=torch.float64, device=device), torch.zeros(k, n, n, dtype=torch.int64, device=device)


def eval_results(loss_sum: torch.Tensor, confusion: torch.Tensor, n: int) -> list[dict]:
    """`eval_sums`' totals over `n` images → one `eval_result` dict per variant."""
    loss_sum, confusion = loss_sum.cpu(), confusion.cpu()
    return [eval_result(float(loss_sum[i]), confusion[i], n) for i in range(len(loss_sum))]


def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000, precision: str = "fp32"
) -> list[dict]:
    """Mean cross-entropy, accuracy (fraction) and the (10, 10) confusion matrix [true, predicted] of
    each of the model's K variants (a StackedNet, or one Net as `dropout_lab.core.stacked.Single`): one dict each.

    `images` (N, 32, 32, 3) uint8 and `labels` (N,) must already be on the model's device.
    """
    model.eval()
    loss_sum, confusion = eval_buffers(model.k, images.device)
    eval_sums(model, images, labels, batch_size, precision, loss_sum, confusion)
    return eval_results(loss_sum, confusion, len(labels))


def eval_result(loss_sum: float, confusion: torch.Tensor, n: int) -> dict:
    """Mean loss, accuracy and the confusion matrix as a list, from the sums over `n` images."""
    return {"loss": loss_sum / n, "acc": float(confusion.trace()) / n, "confusion": confusion.tolist()}


def train_eval_count(n_train: int, size: int) -> int:
    """How many training images the eval-mode pass covers: `size`, or all of them for 0 or more."""
    return n_train if size == 0 or size >= n_train else size


def train_eval_indices(labels: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor | None:
    """Indices of a fixed, seeded, class-balanced subset of `size` training images (sorted), or None
    for all of them (`size` 0 or at least the split's size).

    Balanced: the subset takes every class's 1st (seeded random) image, then every class's 2nd, and
    so on, so the classes differ by at most one image while each has images left. The seed is fixed,
    not the run's: every variant and seed is measured on the very same images (a paired comparison).
    """
    n = len(labels)
    if train_eval_count(n, size) == n:
        return None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = labels.cpu()[perm]
    by_class = torch.argsort(shuffled, stable=True)  # grouped by class, each in shuffled order
    counts = torch.bincount(shuffled)
    first = torch.cumsum(counts, 0) - counts  # where each class starts in `by_class`
    rank = torch.empty(n, dtype=torch.int64)  # position of each image within its class
    rank[by_class] = torch.arange(n) - first[shuffled[by_class]]
    picked = torch.argsort(rank * len(counts) + shuffled, stable=True)[:size]  # rank-major, class-minor
    return perm[picked].sort().values


def train_eval_split(images: torch.Tensor, labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images (and labels) evaluated in eval mode after each epoch: `train_eval_indices`."""
    idx = train_eval_indices(labels, size)
    if idx is None:
        return images, labels
    idx = idx.to(images.device)
    return images[idx], labels[idx]


VAL_SEED = 1  # the held-out images' fixed seed: a subset of its own, not train_eval's (seed 0)


def holdout_split(
    images: torch.Tensor, labels: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(training images, labels, held-out images, labels): `size` training images held out as a
    validation set, fixed and class-balanced like `train_eval_indices` (its own seed), never trained
    on; (images, labels, None, None) for size 0."""
    idx = train_eval_indices(labels, size, seed=VAL_SEED) if size else None
    if idx is None:
        return images, labels, None, None
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[idx] = False
    idx, keep = idx.to(images.device), keep.to(images.device)
    return images[keep], labels[keep], images[idx], labels[idx]


Split = tuple[torch.Tensor, torch.Tensor]  # images (N, 32, 32, 3) uint8, labels (N,) int64


@dataclass(frozen=True)
class RunData:
    """The images of one training, as `run_data` selects them for a config."""

    train: Split  # trained on
    val: Split | None  # held out, never trained on (--val-images), else None
    train_eval: Split  # training images re-evaluated in eval mode each epoch (the gap's train side)
    test: Split


def run_data(root: str | Path, cfg: TrainConfig) -> RunData:
    """The images a training with `cfg` uses, decoded from the batches folder `root`: the first
    `limit_train` training images less the held-out ones, the re-evaluated subset, the first `limit_test`
    test images. The training process and the re-measurement of a cached model (core/verify.py) both
    take them from here. DataError when the hold-out would leave nothing to train on."""
    train_x, train_y = load_split(root, train=True, limit=cfg.limit_train)
    if cfg.val_images and cfg.val_images >= len(train_y):
        raise DataError(f"--val-images {cfg.val_images} leaves nothing to train on: {root} has {len(train_y):,} "
                        "training images")  # fmt: skip
    train_x, train_y, val_x, val_y = holdout_split(train_x, train_y, cfg.val_images)
    test = load_split(root, train=False, limit=cfg.limit_test)
    val = (val_x, val_y) if val_x is not None else None
    return RunData((train_x, train_y), val, train_eval_split(train_x, train_y, cfg.train_eval_images), test)
