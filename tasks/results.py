"""Small, picklable results passed between tasks (paths and numbers, never tensors or modules)."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.config import TrainConfig


@dataclass(frozen=True)
class TrainResult:
    config: TrainConfig
    checkpoint: str  # final epoch checkpoint file
    weights_sha256: str  # of that file: evaluation's cache key follows the actual weights
    history: list  # one dict per epoch, tasks.train.epoch_record; the last one is the final evaluation
    n_params: int
    started_at: str  # ISO-8601 UTC
    finished_at: str
    train_seconds: float  # wall time of the training process
    threads: int  # torch intra-op threads it used (CPU)
    n_train: int  # images it trained on
    n_train_eval: int  # training images evaluated in eval mode each epoch (the gap's train side)
    n_test: int  # test images it was evaluated on each epoch
    resumed_from: int = 0  # epochs restored from a checkpoint instead of trained
    stacked_with: int = 1  # variants trained in the same batched computation (tasks/stacked.py); 1 = alone
