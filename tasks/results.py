"""Small, picklable results passed between tasks (paths and numbers, never tensors or modules)."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.config import TrainConfig


@dataclass(frozen=True)
class TrainResult:
    config: TrainConfig
    checkpoint: str  # final epoch checkpoint file
    weights_sha256: str  # of that file: evaluation's cache key follows the actual weights
    history: list  # one dict per epoch: epoch, train_loss, train_acc, test_loss, test_acc, epoch_seconds
    n_params: int
    started_at: str  # ISO-8601 UTC
    finished_at: str
    train_seconds: float  # wall time of the training process
    threads: int  # torch intra-op threads it used (CPU)
    n_train: int  # images it trained on
    n_test: int  # images it was evaluated on each epoch
    resumed_from: int = 0  # epochs restored from a checkpoint instead of trained
    stacked_with: int = 1  # variants trained in the same batched computation (tasks/stacked.py); 1 = alone


@dataclass(frozen=True)
class EvalResult:
    config: TrainConfig
    test_loss: float
    test_acc: float  # fraction 0-1
    per_class_acc: list  # 10 fractions, in CLASSES order
    confusion: list  # (10, 10) counts, [true][predicted]
