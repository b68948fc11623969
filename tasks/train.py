"""The one trainer: the tutorial's recipe on pre-decoded uint8 tensors, resumable per epoch, for
one variant or K variants trained together (tasks/stacked.py) with the same loop.

`fit` is a generator: it yields (variant, record) per variant and finished epoch (the caller
prints/logs it) and writes each variant's checkpoint after each epoch, so a killed run resumes where
it stopped. With the same seed on CPU, a resumed run is bit-identical to an uninterrupted one: the
checkpoint carries the model, Adam's state, the variant's dropout RNG and its batch-order generator.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
from tasks.stacked import Single, StackedNet, stack_adam_state, stacked_input, streams_from_global, unstack_into

log = logging.getLogger(__name__)

# Fault injection for the reliability tests: "EPOCH" or "EPOCH:ATTEMPT" raises in that epoch
# (by default only on attempt 1, so the task's own retry can resume and finish).
FAIL_AT_EPOCH_ENV = "DROPOUT_LAB_FAIL_AT_EPOCH"
# Fields every variant trained together must share (they shape the single computation).
SHARED_FIELDS = ("device", "epochs", "batch_size", "lr", "precision", "compile", "limit_train", "limit_test",
                 "train_eval_images", "eval_batch_size")  # fmt: skip


class InjectedFault(RuntimeError):
    pass


def build(cfg: TrainConfig) -> tuple[Net, torch.optim.Adam]:
    """Seeded model + optimizer: every variant with the same seed starts from the same weights."""
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model = Net(cfg.dropout).to(device, memory_format=torch.channels_last)
    return model, adam(model.parameters(), cfg)


def adam(params, cfg: TrainConfig) -> torch.optim.Adam:
    """The one optimizer set-up, alone or stacked. On CUDA Adam's fused kernel updates all parameters
    in one launch instead of dozens (at batch 32 a GPU step is launch-bound)."""
    return torch.optim.Adam(params, lr=cfg.lr, fused=torch.device(cfg.device).type == "cuda")


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
    model: StackedNet | Single,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    labels: torch.Tensor,
    orders: torch.Tensor,
    batch_size: int,
    dropout_gens: list[torch.Generator] | None = None,
    precision: str = "fp32",
    fail_at: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass in mini-batches, the tutorial's step (Adam on mean cross-entropy), for the model's K
    variants: step i trains variant k on orders[k, i·B:(i+1)·B].

    images (N, 32, 32, 3) uint8, labels (N,), orders (K, M) on the model's device. The loss is the
    sum of the K variants' mean cross-entropies: variant k's gradient is its own loss's gradient.
    Returns per-variant (sum of per-sample losses (K,), number correct (K,)) as device tensors: no
    host sync per step. `fail_at` raises InjectedFault at that sample offset (fault-injection tests).
    """
    device = images.device
    k = len(orders)
    shared = all(torch.equal(orders[0], o) for o in orders[1:])  # one variant, or one seed: same batches
    model.train()
    loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
    correct = torch.zeros(k, dtype=torch.int64, device=device)
    for i in range(0, orders.shape[1], batch_size):
        if fail_at is not None and i >= fail_at:
            raise InjectedFault(f"injected fault at sample {i}")
        idx = orders[:, i : i + batch_size]  # (K, b)
        x = to_input(images[idx[0]]) if shared else stacked_input(images[idx])
        y = labels[idx]  # (K, b)
        with autocast(device, precision):
            logits = model(x, shared, dropout_gens)  # (K, b, 10)
            losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(k, -1).mean(1)
        opt.zero_grad(set_to_none=True)
        scaler.scale(losses.sum()).backward()
        scaler.step(opt)
        scaler.update()
        loss_sum += losses.detach() * y.shape[1]
        correct += (logits.detach().argmax(2) == y).sum(1)
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


@dataclass(eq=False)  # identity: runs are compared as objects
class _Run:
    """One variant between epochs: its own model, optimizer, RNG streams and history."""

    cfg: TrainConfig
    folder: Path
    model: Net
    opt: torch.optim.Adam
    order_gen: torch.Generator  # batch order
    cpu_gen: torch.Generator  # dropout masks on CPU (on CUDA: the CPU stream, unused after init)
    cuda_gen: torch.Generator | None  # dropout masks on CUDA
    done: int  # epochs finished
    resumed_from: int
    history: list[dict]

    @property
    def dropout_gen(self) -> torch.Generator:
        return self.cuda_gen if self.cuda_gen is not None else self.cpu_gen

    def to_global(self) -> None:
        """Alone, the variant's Net draws its dropout masks from the global generators: set them to its streams."""
        torch.set_rng_state(self.cpu_gen.get_state())
        if self.cuda_gen is not None:
            torch.cuda.set_rng_state(self.cuda_gen.get_state(), self.cuda_gen.device)

    def from_global(self) -> None:
        self.cpu_gen.set_state(torch.get_rng_state())
        if self.cuda_gen is not None:
            self.cuda_gen.set_state(torch.cuda.get_rng_state(self.cuda_gen.device))


def _start(cfg: TrainConfig, folder: Path) -> _Run:
    folder.mkdir(parents=True, exist_ok=True)
    model, opt, order_gen, done, history = start_run(cfg, folder)
    cpu_gen, cuda_gen = streams_from_global(cfg.device)  # the stream `start_run` leaves
    return _Run(cfg, folder, model, opt, order_gen, cpu_gen, cuda_gen, done, done, history)


def check_stackable(cfgs: list[TrainConfig]) -> None:
    for field in SHARED_FIELDS:
        values = {getattr(c, field) for c in cfgs}
        if len(values) > 1:
            raise ValueError(f"stacked variants must share {field} (got {sorted(map(str, values))})")


def _together(runs: list[_Run], cfg: TrainConfig, device: torch.device):
    """(model, optimizer) training `runs` together: one variant's own Net and Adam, or K variants
    stacked (their weights and Adam state copied in; `unstack_into` copies them back)."""
    if len(runs) == 1:
        return Single(runs[0].model), runs[0].opt
    stacked = StackedNet([r.model for r in runs]).to(device)
    opt = adam(stacked.parameters(), cfg)
    stack_adam_state(opt, [r.opt for r in runs])
    return stacked, opt


def fit(
    cfgs: list[TrainConfig],
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    checkpoint_dirs: list[str | Path],
    attempt: int = 1,
) -> Iterator[tuple[int, dict]]:
    """Train every variant `cfg.epochs` epochs, each resuming from and checkpointing into its own
    folder; yield (variant index, record) per variant and new epoch.

    Images are (N, 32, 32, 3) uint8 on any device; they are moved to the device once. A record:
    `epoch_record`'s fields and resumed_from. After every epoch the weights are evaluated in eval mode
    on the test set and on `cfg.train_eval_images` training images; the last epoch's evaluation is the
    run's final result. Variants at different epochs (one resumed further than the others) train on
    their own until the others catch up.
    """
    check_stackable(cfgs)
    cfg = cfgs[0]
    device = torch.device(cfg.device)
    runs = [_start(c, Path(f)) for c, f in zip(cfgs, checkpoint_dirs, strict=True)]
    train_x, train_y = train_images.to(device), train_labels.to(device)
    test_x, test_y = test_images.to(device), test_labels.to(device)
    eval_x, eval_y = train_eval_split(train_x, train_y, cfg.train_eval_images)
    n = len(train_y)
    fault_epoch = fault_epoch_for(attempt)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    active, model, opt, forward = [], None, None, None

    for epoch in range(min(r.done for r in runs) + 1, cfg.epochs + 1):
        now = [r for r in runs if r.done < epoch]  # all of them have finished epoch - 1
        if now != active:  # first epoch, or a variant that was ahead joins
            active = now
            model, opt = _together(now, cfg, device)
            # Compiled or not, `model` keeps the parameters that are checkpointed.
            forward = torch.compile(model) if cfg.compile else model
        start = time.perf_counter()
        orders = torch.stack([torch.randperm(n, generator=r.order_gen) for r in now]).to(device)
        fail_at = n // 2 if fault_epoch == epoch else None
        if len(now) == 1:
            now[0].to_global()
        loss_sum, correct = train_steps(forward, opt, scaler, train_x, train_y, orders, cfg.batch_size,
                                        [r.dropout_gen for r in now], cfg.precision, fail_at)  # fmt: skip
        if len(now) == 1:
            now[0].from_global()
        train_evals = evaluate(forward, eval_x, eval_y, cfg.eval_batch_size, cfg.precision)
        tests = evaluate(forward, test_x, test_y, cfg.eval_batch_size, cfg.precision)
        seconds = time.perf_counter() - start
        if len(now) > 1:
            unstack_into(model, opt, [r.model for r in now], [r.opt for r in now])
        for k, run in enumerate(now):
            record = epoch_record(epoch, loss_sum[k], correct[k], n, train_evals[k], tests[k], seconds)
            run.history.append(record)
            run.done = epoch
            rng_cuda = run.cuda_gen.get_state() if run.cuda_gen is not None else None
            save_epoch(run.folder, run.cfg, epoch, run.model, run.opt, run.cpu_gen.get_state(), rng_cuda,
                       run.order_gen, run.history)  # fmt: skip
        for run in now:
            yield runs.index(run), {**run.history[-1], "resumed_from": run.resumed_from}
