"""Evaluation: loss, accuracy, per-class accuracy and the confusion matrix, in one pass."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from tasks.model import CLASSES


def to_input(images_nhwc: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) → float (N, 3, 32, 32) in [-1, 1], channels_last in memory.

    Equals torchvision's ToTensor (x/255) then Normalize(0.5, 0.5) ((t-0.5)/0.5) = x/127.5 - 1,
    done per batch on the training device instead of per sample on the CPU.
    """
    return images_nhwc.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast on CUDA; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1000,
    precision: str = "fp32",
) -> dict:
    """Mean cross-entropy, accuracy (fraction) and the (10, 10) confusion matrix [true, predicted].

    `images` (N, 32, 32, 3) uint8 and `labels` (N,) must already be on the model's device.
    """
    model.eval()
    device = images.device
    n_classes = len(CLASSES)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(n_classes * n_classes, dtype=torch.int64, device=device)
    for start in range(0, len(labels), batch_size):
        x, y = to_input(images[start : start + batch_size]), labels[start : start + batch_size]
        with autocast(device, precision):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        confusion += torch.bincount(y * n_classes + logits.argmax(1), minlength=n_classes * n_classes)
    return eval_result(float(loss_sum), confusion.view(n_classes, n_classes).cpu(), len(labels))


def eval_result(loss_sum: float, confusion: torch.Tensor, n: int) -> dict:
    """Mean loss, accuracy and the confusion matrix as a list, from the sums over `n` images."""
    return {"loss": loss_sum / n, "acc": float(confusion.trace()) / n, "confusion": confusion.tolist()}


def per_class_accuracy(confusion: list[list[int]]) -> list[float]:
    """Row-normalised diagonal: the fraction of each true class predicted correctly (nan if absent)."""
    out = []
    for i, row in enumerate(confusion):
        total = sum(row)
        out.append(row[i] / total if total else float("nan"))
    return out


def evaluate_checkpoint(checkpoint_file: str, cfg, data_root: str, device: str | None = None) -> dict:
    """Load trained weights and evaluate them on the test split: loss, acc, confusion, per-class acc."""
    from tasks.checkpoint import load_checkpoint
    from tasks.data import load_split
    from tasks.model import Net

    dev = torch.device(device or cfg.device)
    model = Net(cfg.dropout)
    model.load_state_dict(load_checkpoint(checkpoint_file)["model"])
    model = model.to(dev, memory_format=torch.channels_last)
    images, labels = load_split(data_root, train=False, limit=cfg.limit_test)
    result = evaluate(model, images.to(dev), labels.to(dev), cfg.eval_batch_size, cfg.precision)
    return {**result, "per_class_acc": per_class_accuracy(result["confusion"])}
