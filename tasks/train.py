"""The training loop: the tutorial's recipe on pre-decoded uint8 tensors, resumable per epoch.

`fit` is a generator: it yields one record per finished epoch (the caller prints/logs it) and
writes a checkpoint after each epoch, so a killed run resumes where it stopped. With the same seed
on CPU, a resumed run is bit-identical to an uninterrupted one: the checkpoint carries the model,
Adam's state, the global RNG (dropout masks) and the batch-order generator.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from tasks.checkpoint import (
    CheckpointError,
    checkpoint_path,
    epoch_checkpoints,
    load_checkpoint,
    prune,
    save_checkpoint,
    set_aside,
)
from tasks.config import TrainConfig
from tasks.evaluate import autocast, evaluate, to_input, train_eval_split
from tasks.model import Net

log = logging.getLogger(__name__)

# Fault injection for the reliability tests: "EPOCH" or "EPOCH:ATTEMPT" raises in that epoch
# (by default only on attempt 1, so the task's own retry can resume and finish).
FAIL_AT_EPOCH_ENV = "DROPOUT_LAB_FAIL_AT_EPOCH"


class InjectedFault(RuntimeError):
    pass


def build(cfg: TrainConfig) -> tuple[Net, torch.optim.Adam]:
    """Seeded model + optimizer: every variant with the same seed starts from the same weights."""
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model = Net(cfg.dropout).to(device, memory_format=torch.channels_last)
    # Same Adam; on CUDA its fused kernel updates all parameters in one launch instead of dozens
    # (at batch 32 a GPU step is launch-bound).
    return model, torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type == "cuda")


def _restore(folder: Path, cfg: TrainConfig, model, opt, order_gen) -> tuple[int, list[dict]] | None:
    """Load the newest good checkpoint into model/opt/RNGs and return (epoch, history).

    Bad checkpoints are set aside; None when nothing usable was found (model/opt may then be
    half-loaded, so the caller rebuilds them).
    """
    for epoch, path in epoch_checkpoints(folder):
        try:
            state = load_checkpoint(path)
            if state.get("config") != cfg.to_dict():
                raise CheckpointError("written for a different configuration")
            try:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                order_gen.set_state(state["rng_order"])
                torch.set_rng_state(state["rng_cpu"])
                if state.get("rng_cuda") is not None and model_device(model).type == "cuda":
                    torch.cuda.set_rng_state(state["rng_cuda"], model_device(model))
            except (KeyError, RuntimeError, ValueError, TypeError) as e:
                raise CheckpointError(f"does not fit this run ({str(e).splitlines()[0]})") from None
        except CheckpointError as e:
            set_aside(path, str(e))
            continue
        log.info("resuming %s from %s (epoch %d done)", cfg.label, path.name, epoch)
        return epoch, list(state["history"])
    return None


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def fault_epoch_for(attempt: int) -> int | None:
    spec = os.environ.get(FAIL_AT_EPOCH_ENV, "")
    if not spec:
        return None
    epoch, _, on_attempt = spec.partition(":")
    return int(epoch) if attempt == int(on_attempt or 1) else None


def train_steps(
    model,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    precision: str = "fp32",
    fail_at: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over `order` in mini-batches: the tutorial's step (Adam on mean cross-entropy).

    images (N, 32, 32, 3) uint8 and labels (N,) on the model's device; order (M,) indices.
    Returns (sum of per-sample losses, number correct) as device tensors: no host sync per step.
    `fail_at` raises InjectedFault at that sample offset (fault-injection tests).
    """
    device = images.device
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for i in range(0, len(order), batch_size):
        if fail_at is not None and i >= fail_at:
            raise InjectedFault(f"injected fault at sample {i}")
        idx = order[i : i + batch_size]
        x, y = to_input(images[idx]), labels[idx]
        with autocast(device, precision):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
    return loss_sum, correct


def start_run(cfg: TrainConfig, folder: Path) -> tuple[Net, torch.optim.Adam, torch.Generator, int, list[dict]]:
    """(model, optimizer, batch-order generator, epochs done, history): fresh or from the newest good checkpoint.

    Dropout masks come from the global generator, seeded in `build` (or restored from the
    checkpoint): the caller trains right after, or copies its state into the variant's own stream.
    Batch order has its own generator: the same for every dropout rate with this seed, which
    makes the comparison paired.
    """
    model, opt = build(cfg)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    restored = _restore(folder, cfg, model, opt, order_gen)
    if restored is None:
        model, opt = build(cfg)
        order_gen = torch.Generator().manual_seed(cfg.seed)
        restored = (0, [])
    return model, opt, order_gen, *restored


def epoch_record(
    epoch: int, loss_sum: float, correct: int, n: int, train_eval: dict, test: dict, seconds: float
) -> dict:
    """One epoch's history entry. Accuracies are fractions, losses mean cross-entropy per image."""
    return {
        "epoch": epoch,
        # The tutorial's numbers: means over the epoch in train mode, i.e. with dropout on (for the
        # dropout models only) and weights still moving. Kept, but they are not the gap's train side.
        "train_running_loss": float(loss_sum) / n,
        "train_running_acc": float(correct) / n,
        # The epoch's final weights in eval mode on (a fixed subset of) the training set: measured
        # like the test set, so train minus test accuracy is the generalization gap for every model.
        "train_eval_loss": train_eval["loss"],
        "train_eval_acc": train_eval["acc"],
        "test_loss": test["loss"],
        "test_acc": test["acc"],
        "test_confusion": test["confusion"],  # [true][predicted] counts
        "epoch_seconds": seconds,
    }


def format_epoch(label: str, epochs: int, r: dict) -> str:
    """The one fixed-format progress line per epoch: the running (train-mode) numbers, then the
    eval-mode train and test numbers, and their difference, the generalization gap."""
    return (
        f"{label:<24} epoch {r['epoch']:>2}/{epochs}  running loss {r['train_running_loss']:.4f} "
        f"acc {r['train_running_acc']:6.2%}  train loss {r['train_eval_loss']:.4f} acc {r['train_eval_acc']:6.2%}"
        f"  test loss {r['test_loss']:.4f} acc {r['test_acc']:6.2%}"
        f"  gap {100 * (r['train_eval_acc'] - r['test_acc']):5.2f}  {r['epoch_seconds']:6.1f}s"
    )


def save_epoch(folder: Path, cfg: TrainConfig, epoch: int, model, opt, rng_cpu, rng_cuda, order_gen, history) -> None:
    """The epoch's checkpoint (model, Adam, the variant's RNG streams, history), then prune old ones."""
    save_checkpoint(
        checkpoint_path(folder, epoch),
        {
            "config": cfg.to_dict(),
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng_cpu": rng_cpu,
            "rng_cuda": rng_cuda,
            "rng_order": order_gen.get_state(),
            "history": history,
        },
    )
    prune(folder)


def fit(
    cfg: TrainConfig,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    checkpoint_dir: str | Path,
    attempt: int = 1,
) -> Iterator[dict]:
    """Train `cfg.epochs` epochs (resuming from `checkpoint_dir`); yield one record per new epoch.

    Images are (N, 32, 32, 3) uint8 on any device; they are moved to cfg.device once.
    A record: `epoch_record`'s fields and resumed_from. After every epoch the weights are evaluated
    in eval mode on the test set and on `cfg.train_eval_images` training images; the last epoch's
    evaluation is the run's final result (no separate re-evaluation in other numerics).
    """
    device = torch.device(cfg.device)
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # One process per variant, so nothing else draws from the global generator (dropout masks).
    model, opt, order_gen, done, history = start_run(cfg, folder)
    # Compiled or not, `model` keeps the parameters: checkpoints store its state_dict.
    forward = torch.compile(model) if cfg.compile else model

    train_x, train_y = train_images.to(device), train_labels.to(device)
    test_x, test_y = test_images.to(device), test_labels.to(device)
    eval_x, eval_y = train_eval_split(train_x, train_y, cfg.train_eval_images)
    n = len(train_y)
    fault_epoch = fault_epoch_for(attempt)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    for epoch in range(done + 1, cfg.epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(n, generator=order_gen).to(device)
        fail_at = n // 2 if fault_epoch == epoch else None
        loss_sum, correct = train_steps(forward, opt, scaler, train_x, train_y, order, cfg.batch_size,
                                        cfg.precision, fail_at)  # fmt: skip
        train_eval = evaluate(forward, eval_x, eval_y, cfg.eval_batch_size, cfg.precision)
        test = evaluate(forward, test_x, test_y, cfg.eval_batch_size, cfg.precision)
        record = epoch_record(epoch, loss_sum, correct, n, train_eval, test, time.perf_counter() - start)
        history.append(record)
        rng_cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        save_epoch(folder, cfg, epoch, model, opt, torch.get_rng_state(), rng_cuda, order_gen, history)
        yield {**record, "resumed_from": done}
