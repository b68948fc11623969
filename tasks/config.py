"""The one configuration object of a training run, and the checks every entry point shares."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a trained model's numbers. Variants are `dataclasses.replace(cfg, ...)`."""

    dropout: float = 0.25  # p of both dropout layers; 0.0 is the baseline (no dropout layers at all)
    epochs: int = 8  # passes over the training set, the tutorial's 8
    batch_size: int = 32  # training mini-batch, the tutorial's 32
    lr: float = 1e-3  # Adam learning rate (Adam's default, as in the tutorial)
    seed: int = 0  # weight init, batch order and dropout masks all derive from it
    device: str = "cpu"  # resolved device for this variant: "cpu", "cuda:0", ...
    precision: str = "fp32"  # fp32 | bf16 | fp16 autocast (bf16/fp16 only on CUDA)
    compile: bool = False  # torch.compile the model (fewer kernel launches on CUDA; slower on CPU)
    limit_train: int = 0  # train on the first N training images; 0 = all 50,000
    limit_test: int = 0  # evaluate on the first N test images; 0 = all 10,000
    # Training images re-evaluated in eval mode (dropout off) after every epoch, for the honest
    # generalization gap: a fixed, seeded, class-balanced subset of this size; 0 = all of them.
    # 10,000 costs ~5 % of the run on CPU, all 50,000 ~25 % (benchmarks/bench_train.py prints both).
    train_eval_images: int = 10_000
    eval_batch_size: int = 256  # evaluation chunk: speed only (256 beats 1000 by 2-3x on CPU: cache)

    @property
    def label(self) -> str:
        """Readable variant name, used in task-run names, logs and reports."""
        return "baseline" if self.dropout == 0 else f"dropout={self.dropout:g}"

    @property
    def run_name(self) -> str:
        """Model and seed: names one training run, e.g. "dropout=0.25, seed=0"."""
        return f"{self.label}, seed={self.seed}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_train_config(cfg: TrainConfig) -> None:
    """Raise ValueError with a one-line, user-facing message for the first bad field."""
    problems = []
    if not isinstance(cfg.epochs, int) or cfg.epochs < 1:
        problems.append(f"epochs must be an integer >= 1 (got {cfg.epochs!r})")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        problems.append(f"batch size must be an integer >= 1 (got {cfg.batch_size!r})")
    if not (cfg.lr > 0):
        problems.append(f"learning rate must be > 0 (got {cfg.lr!r})")
    if not (0 <= cfg.dropout < 1):
        problems.append(f"dropout must satisfy 0 <= p < 1 (got {cfg.dropout!r})")
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        problems.append(f"seed must be an integer >= 0 (got {cfg.seed!r})")
    if cfg.limit_train < 0 or cfg.limit_test < 0:
        problems.append("--limit-train/--limit-test must be >= 0 (0 means all images)")
    if not isinstance(cfg.train_eval_images, int) or cfg.train_eval_images < 0:
        problems.append(f"--train-eval-images must be an integer >= 0, 0 meaning all (got {cfg.train_eval_images!r})")
    if cfg.precision not in PRECISIONS:
        problems.append(f"precision must be one of {', '.join(PRECISIONS)} (got {cfg.precision!r})")
    if cfg.precision != "fp32" and not cfg.device.startswith("cuda"):
        problems.append(f"precision {cfg.precision} needs a CUDA device; use fp32 on {cfg.device}")
    if cfg.eval_batch_size < 1:
        problems.append(f"eval batch size must be >= 1 (got {cfg.eval_batch_size!r})")
    if problems:
        raise ValueError("; ".join(problems))
