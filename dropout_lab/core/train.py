"""The one trainer: the tutorial's recipe on pre-decoded uint8 tensors, resumable per epoch, for
one variant or K variants trained together (core/stacked.py) with the same loop, each step and
evaluation pass replayed as a CUDA graph on CUDA (core/graphs.py) or run eagerly.

`fit` is a generator: it yields (variant, record) per variant and finished epoch (the caller
prints/logs it) and writes each variant's checkpoint after each epoch, so a killed run resumes where
it stopped. With the same seed on CPU, a resumed run is bit-identical to an uninterrupted one: the
checkpoint carries the model, Adam's state, the variant's dropout RNG, its batch-order generator and
its augmentation stream.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from dropout_lab.config import TrainConfig
from dropout_lab.core import graphs
from dropout_lab.core.checkpoint import (
    CheckpointError,
    checkpoint_bytes,
    checkpoint_path,
    epoch_checkpoints,
    identity_problem,
    load_checkpoint,
    prune,
    save_checkpoint,
    set_aside,
)
from dropout_lab.core.claims import claim_key, identity, measured_here, record_measured
from dropout_lab.core.evaluate import (
    RunData,
    autocast,
    eval_buffers,
    eval_results,
    eval_sums,
    evaluate,
    to_input,
    train_eval_split,
)
from dropout_lab.core.model import Net, augment_stream, augmentation, criterion, optimizer
from dropout_lab.core.records import epoch_record
from dropout_lab.core.stacked import (
    Single,
    StackedNet,
    stack_adam_state,
    stacked_input,
    streams_from_global,
    unstack_into,
)
from dropout_lab.core.verify import numbers_problem, remeasure

log = logging.getLogger(__name__)

# Fault injection for the reliability tests: "EPOCH" or "EPOCH:ATTEMPT" raises in that epoch
# (by default only on attempt 1, so the task's own retry can resume and finish).
FAIL_AT_EPOCH_ENV = "DROPOUT_LAB_FAIL_AT_EPOCH"


class InjectedFault(RuntimeError):
    pass


def build(cfg: TrainConfig) -> tuple[Net, torch.optim.Adam]:
    """Seeded model + optimizer: every variant with the same seed starts from the same weights."""
    torch.manual_seed(cfg.seed)
    model = Net(cfg.dropout).to(torch.device(cfg.device), memory_format=torch.channels_last)
    return model, optimizer(model.parameters(), cfg)


def _restore(
    folder: Path, cfg: TrainConfig, expected: dict, model, opt, order_gen, aug_gen, check
) -> tuple[int, list[dict]] | None:
    """Load the newest good checkpoint into model/opt/RNGs and return (epoch, history).

    Good: readable, of the `expected` identity, an epoch of this run's plan with its history, and passing
    `check(path, model, state)` (its numbers are its weights'). Others are set aside, one logged line
    each; None when nothing usable was found (model/opt may then be half-loaded, so the caller rebuilds them).
    """
    for epoch, path in epoch_checkpoints(folder):
        try:
            state = load_checkpoint(path)
            problem = identity_problem(state.get("identity"), expected)
            if problem:
                raise CheckpointError(problem)
            if state.get("epoch") != epoch or not 1 <= epoch <= cfg.epochs or len(state.get("history", [])) != epoch:
                raise CheckpointError(f"holds epoch {state.get('epoch')!r} of a {cfg.epochs}-epoch training")
            try:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                order_gen.set_state(state["rng_order"])
                aug_gen.set_state(state["rng_augment"])
                torch.set_rng_state(state["rng_cpu"])
                if state.get("rng_cuda") is not None and model_device(model).type == "cuda":
                    torch.cuda.set_rng_state(state["rng_cuda"], model_device(model))
            except (KeyError, RuntimeError, ValueError, TypeError) as e:
                raise CheckpointError(f"does not fit this run ({str(e).splitlines()[0]})") from None
            problem = check(path, model, state)
            if problem:
                raise CheckpointError(problem)
        except CheckpointError as e:
            set_aside(path, str(e))
            continue
        log.info("resuming %s from %s (epoch %d done)", cfg.label, path.name, epoch)
        return epoch, list(state["history"])
    return None


def numbers_check(cfg: TrainConfig, data: RunData):
    """`_restore`'s check: a checkpoint this user's runs did not write must hold its weights' own final
    numbers (core/verify.py); one they wrote costs nothing."""

    def check(path: Path, model, state: dict) -> str | None:
        if measured_here(hashlib.sha256(checkpoint_bytes(path)).hexdigest()):
            return None
        return numbers_problem(state["history"], remeasure(model, data, cfg), len(data.train[1]), name=path.name)

    return check


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def fault_epoch_for(attempt: int) -> int | None:
    spec = os.environ.get(FAIL_AT_EPOCH_ENV, "")
    if not spec:
        return None
    epoch, _, on_attempt = spec.partition(":")
    return int(epoch) if attempt == int(on_attempt or 1) else None


def start_run(
    cfg: TrainConfig, folder: Path, expected: dict, check
) -> tuple[Net, torch.optim.Adam, torch.Generator, torch.Generator, int, list[dict]]:
    """(model, optimizer, batch-order generator, augmentation stream, epochs done, history): fresh or from
    the newest good checkpoint of the `expected` identity (`_restore`).

    Dropout masks come from the global generator, seeded in `build` (or restored from the
    checkpoint): the caller trains right after, or copies its state into the variant's own stream.
    Batch order has its own generator: the same for every dropout rate with this seed, which
    makes the comparison paired.
    """
    model, opt = build(cfg)
    order_gen, aug_gen = torch.Generator().manual_seed(cfg.seed), augment_stream(cfg)
    restored = _restore(folder, cfg, expected, model, opt, order_gen, aug_gen, check)
    if restored is None:
        model, opt = build(cfg)
        order_gen, aug_gen = torch.Generator().manual_seed(cfg.seed), augment_stream(cfg)
        restored = (0, [])
    return model, opt, order_gen, aug_gen, *restored


def save_epoch(folder: Path, cfg: TrainConfig, expected: dict, epoch: int, model, opt, rng_cpu, rng_cuda, order_gen,
               aug_gen, history) -> None:  # fmt: skip
    """The epoch's checkpoint (its identity, model, Adam, the variant's RNG streams, history), recorded as
    measured here (its numbers are this process's own measurements); then prune old ones."""
    sha256 = save_checkpoint(
        checkpoint_path(folder, epoch),
        {
            "identity": expected,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng_cpu": rng_cpu,
            "rng_cuda": rng_cuda,
            "rng_order": order_gen.get_state(),
            "rng_augment": aug_gen.get_state(),
            "history": history,
        },
    )
    record_measured(sha256, claim_key(expected, epoch, history))
    prune(folder)


@dataclass(eq=False)  # identity: runs are compared as objects
class _Run:
    """One variant between epochs: its own model, optimizer, RNG streams and history."""

    cfg: TrainConfig
    folder: Path
    identity: dict  # what it is (core/checkpoint.py `identity`): every checkpoint of it records this
    model: Net
    opt: torch.optim.Adam
    order_gen: torch.Generator  # batch order
    aug_gen: torch.Generator  # augmentation draws, on the device
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


def _start(cfg: TrainConfig, folder: Path, provenance: dict, data: RunData) -> _Run:
    folder.mkdir(parents=True, exist_ok=True)
    expected = identity(cfg.to_dict(), provenance)
    model, opt, order_gen, aug_gen, done, history = start_run(cfg, folder, expected, numbers_check(cfg, data))
    cpu_gen, cuda_gen = streams_from_global(cfg.device)  # the stream `start_run` leaves
    return _Run(cfg, folder, expected, model, opt, order_gen, aug_gen, cpu_gen, cuda_gen, done, done, history)


# Warm-up steps before a capture (torch.cuda.graph's documentation uses 3); undone by `Snapshot`.
WARMUP_STEPS = 3


class Unit:
    """Variants that take each step as one computation, with the recipe's objects built: one variant's own
    Net (`Single`) or a StackedNet of several, its optimizer, the training criterion, the loss scaler and
    the dropout generators, and the data step with each variant's augmentation stream (`aug_gens`; fresh
    streams when not given); with CUDA graphs, its step and its two evaluation passes captured. `fit`
    trains through it, and so do the tests and benchmarks (`train_pass`).

    One step reads its batch indices from a static (K, M) copy of the epoch's batch order at a
    position counter that lives on the device, so a replay needs no host-side input at all."""

    def __init__(self, nets: list[Net], opts: list[torch.optim.Optimizer], gens: list[torch.Generator],
                 cfg: TrainConfig, graphed: bool = False, aug_gens: list[torch.Generator] = ()) -> None:  # fmt: skip
        self.nets, self.opts, self.cfg = nets, opts, cfg
        # Variants that differ in it train apart (config: augment is not stackable), so one transform.
        self.augment = augmentation(cfg)
        self.aug_gens = list(aug_gens) or [augment_stream(cfg) for _ in nets]
        self.device = device = torch.device(cfg.device)
        if len(nets) == 1:
            # Alone in its process, a variant trains as its own Net, whose dropout draws from the
            # global generator (set to the variant's stream around each epoch by `fit`).
            self.model, self.opt = Single(nets[0]), opts[0]
            self.gens = None
            self.snapshot_gens = [torch.cuda.default_generators[_index(device)] if device.type == "cuda"
                                  else torch.default_generator]  # fmt: skip
        else:
            self.model = StackedNet(nets).to(device)
            self.opt = optimizer(self.model.parameters(), cfg)
            stack_adam_state(self.opt, opts)
            self.gens = self.snapshot_gens = list(gens)
        if self.augment is not None:  # a capture's warm-up steps draw from them too
            self.snapshot_gens = [*self.snapshot_gens, *self.aug_gens]
        self.criterion = criterion(cfg)  # variants that differ in it train apart (config.Setting.stackable)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        # Compiled or not, `model` keeps the parameters that are checkpointed.
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.k = len(nets)
        self.shared: bool | None = None  # every variant on one batch order (one seed): decided at the first pass
        self.graphed = graphed
        self.replay_step = self.static_orders = None
        self.capture_seconds = 0.0
        self.replay_eval: dict[str, object] = {}
        self.loss_sum = torch.zeros(self.k, dtype=torch.float64, device=device)
        self.correct = torch.zeros(self.k, dtype=torch.int64, device=device)
        self.pos = torch.zeros((), dtype=torch.int64, device=device)

    def stacked(self) -> bool:
        return isinstance(self.model, StackedNet)

    def begin(self, orders: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Start a pass over `orders` (K, M) (device); the first graphed pass captures the step."""
        self.orders, self.images, self.labels = orders, images, labels
        if self.shared is None:  # one batch for all: one order, and no per-variant augmentation
            self.shared = all(torch.equal(orders[0], o) for o in orders[1:]) and (self.augment is None or self.k == 1)
        self.model.train()
        if self.graphed and self.static_orders is None and orders.shape[1] >= self.cfg.batch_size:
            self.static_orders = orders.clone()
            self.cols = torch.arange(self.cfg.batch_size, device=self.device)
            self.replay_step = self._capture(self._graph_step, training=True)
        if self.replay_step is not None:
            self.static_orders.copy_(orders)
        self.pos.zero_()
        self.loss_sum.zero_()
        self.correct.zero_()

    def _step(self, idx: torch.Tensor, cache: bool = True) -> None:
        """The tutorial's step (Adam on the mean training objective) for the K variants at once: variant k
        trains on images[idx[k]] (idx (K, b)). The loss is the sum of the K variants' means, so variant
        k's gradient is its own loss's gradient. Adds each variant's summed objective and number correct
        to `loss_sum`/`correct` (K,) in place: no host sync, so a CUDA graph can hold it (`cache=False`
        inside a capture)."""
        k = len(idx)
        if self.augment is None:
            x = to_input(self.images[idx[0]]) if self.shared else stacked_input(self.images[idx])
        else:  # each variant's batch through the data step, with its own stream: as it trains alone
            batch = torch.stack([self.augment(self.images[i], g) for i, g in zip(idx, self.aug_gens, strict=True)])
            x = to_input(batch[0]) if self.shared else stacked_input(batch)
        y = self.labels[idx]  # (K, b)
        with autocast(self.device, self.cfg.precision, cache):
            logits = self.forward(x, self.shared, self.gens)  # (K, b, 10)
            losses = self.criterion(logits.flatten(0, 1), y.flatten()).view(k, -1).mean(1)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(losses.sum()).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.loss_sum += losses.detach() * y.shape[1]
        self.correct += (logits.detach().argmax(2) == y).sum(1)

    def _graph_step(self) -> None:
        idx = self.static_orders.index_select(1, self.pos + self.cols)  # (K, B): this step's batch
        self._step(idx, cache=False)
        self.pos += self.cfg.batch_size

    def _capture(self, fn, training: bool):
        """Capture `fn` as a graph after warm-up calls (training steps: undone by `Snapshot`); on
        failure log one line, leave everything as before and go on eagerly (returns None)."""
        snapshot = graphs.Snapshot(self.model, self.opt, self.snapshot_gens) if training else None
        started = time.perf_counter()
        try:
            with graphs.side_stream(self.device):
                for _ in range(WARMUP_STEPS):
                    fn()
            if training:
                self.opt.zero_grad(set_to_none=True)  # backward allocates .grad inside the graph's pool
            # Capturing runs no kernel: the state the warm-up changed is put back once, below.
            return graphs.capture(fn, [*(self.gens or []), *(self.aug_gens if self.augment else [])])[0]
        except Exception as e:  # a capture that fails costs speed, never the run
            log.warning("CUDA graph capture failed, training eagerly: %s",
                        (str(e).strip().splitlines() or [type(e).__name__])[0])  # fmt: skip
            self.graphed = False
            return None
        finally:
            if training:
                snapshot.restore()
                self.pos.zero_()
            self.capture_seconds += time.perf_counter() - started

    def step(self, i: int) -> None:
        """Step i of the pass (i·B < M): one replay, or the eager step."""
        if self.replay_step is not None:
            self.replay_step()
        else:
            b = self.cfg.batch_size
            self._step(self.orders[:, i * b : (i + 1) * b])

    def last(self, start: int) -> None:
        """The pass's last, smaller batch (M not a multiple of B), eagerly: a graph has fixed shapes."""
        self._step(self.orders[:, start:])

    def train_pass(self, orders: torch.Tensor, images: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """One pass in mini-batches: step i trains variant k on orders[k, i·B:(i+1)·B], then the smaller
        last batch. images (N, 32, 32, 3) uint8 and labels (N,) on the device, orders (K, M). Returns
        per-variant (summed training objective (K,), number correct (K,)) as device tensors."""
        for _ in _train_epoch(self, orders, images, labels, None):
            pass
        return self.loss_sum, self.correct

    def evaluate(self, name: str, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
        """Eval-mode loss, accuracy and confusion per variant on a fixed image set (one replay when graphed)."""
        self.model.eval()
        cfg = self.cfg
        if self.graphed and name not in self.replay_eval:
            sums = eval_buffers(self.k, self.device)

            def pass_() -> None:
                sums[0].zero_()
                sums[1].zero_()
                eval_sums(self.forward, images, labels, cfg.eval_batch_size, cfg.precision, *sums, cache=False)

            replay = self._capture(pass_, training=False)
            self.replay_eval[name] = (replay, sums) if replay is not None else None
        graphed = self.replay_eval.get(name)
        if graphed is None:
            return evaluate(self.forward, images, labels, cfg.eval_batch_size, cfg.precision)
        replay, sums = graphed
        replay()
        return eval_results(*sums, len(labels))

    def finish(self) -> None:
        """Copy a stack's weights and Adam state back into each variant's own Net and optimizer."""
        if self.stacked():
            unstack_into(self.model, self.opt, self.nets, self.opts)


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


PROGRESS_STEPS = 10  # progress reports per epoch (fit(progress=True)): every 10 % of its steps


def _train_epoch(unit: Unit, orders: torch.Tensor, images, labels, fail_at: int | None) -> Iterator[float]:
    """One epoch of the unit's variants on `orders` (K, M): step by step, then the last, smaller batch;
    yields the fraction of the epoch's steps done each time another tenth is (a host-side count: no sync)."""
    n, b = orders.shape[1], unit.cfg.batch_size
    steps = n // b + (1 if n % b else 0)
    marks = {max(1, round(steps * j / PROGRESS_STEPS)) for j in range(1, PROGRESS_STEPS)}
    unit.begin(orders, images, labels)
    for i in range(n // b):
        if fail_at is not None and i * b >= fail_at:
            raise InjectedFault(f"injected fault at sample {i * b}")
        unit.step(i)
        if i + 1 in marks:
            yield (i + 1) / steps
    if n % b:
        unit.last(n - n % b)


def fit(
    cfgs: list[TrainConfig],
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    checkpoint_dirs: list[str | Path],
    attempt: int = 1,
    graphed: bool = False,
    progress: bool = False,
    val_images: torch.Tensor | None = None,
    val_labels: torch.Tensor | None = None,
    provenance: dict | None = None,
) -> Iterator[tuple[int, dict]]:
    """Train every variant `cfg.epochs` epochs, each resuming from and checkpointing into its own
    folder; yield (variant index, record) per variant and new epoch (with `progress`, also
    (variant index, {"progress": fraction of the epoch's steps, "epoch": e}) every tenth of an epoch).

    Images are (N, 32, 32, 3) uint8 on any device; they are moved to the device once. A record:
    `epoch_record`'s fields and resumed_from. After every epoch the weights are evaluated in eval mode
    on the test set, on `cfg.train_eval_images` training images and on the held-out images when given
    (`val_images`, never trained on: the worker holds them out); the last epoch's evaluation is the
    run's final result. Variants at different epochs (one resumed further than the others) train on
    their own until the others catch up. Several variants train as one StackedNet (the caller checked
    that they may: runtime/devices.py `check_stackable`); `graphed` replays each step and evaluation as
    CUDA graphs (core/graphs.py; whether to: runtime/devices.py `graphs_wanted`), falling back to eager
    steps. `provenance` (dataset, data fingerprint, training code's key) completes each variant's
    identity, which its checkpoints record and which a checkpoint must have to be resumed from.
    """
    cfg = cfgs[0]
    device = torch.device(cfg.device)
    train_x, train_y = train_images.to(device), train_labels.to(device)
    test_x, test_y = test_images.to(device), test_labels.to(device)
    eval_x, eval_y = train_eval_split(train_x, train_y, cfg.train_eval_images)
    val = (val_images.to(device), val_labels.to(device)) if val_images is not None else None
    data = RunData((train_x, train_y), val, (eval_x, eval_y), (test_x, test_y))
    runs = [_start(c, Path(f), provenance or {}, data) for c, f in zip(cfgs, checkpoint_dirs, strict=True)]
    n = len(train_y)
    fault_epoch = fault_epoch_for(attempt)
    active: list[_Run] = []
    unit, told_capture = None, False

    for epoch in range(min(r.done for r in runs) + 1, cfg.epochs + 1):
        now = [r for r in runs if r.done < epoch]  # all of them have finished epoch - 1
        if now != active:  # first epoch, or a variant that was ahead joins
            active = now
            unit = Unit(
                [r.model for r in now],
                [r.opt for r in now],
                [r.dropout_gen for r in now],
                cfg,
                graphed,
                [r.aug_gen for r in now],
            )
        start = time.perf_counter()
        orders = torch.stack([torch.randperm(n, generator=r.order_gen) for r in now]).to(device)
        fail_at = n // 2 if fault_epoch == epoch else None
        alone = now[0] if not unit.stacked() else None  # its Net's dropout draws from the global generator
        if alone is not None:
            alone.to_global()
        for fraction in _train_epoch(unit, orders, train_x, train_y, fail_at):
            if progress:
                for run in active:
                    yield runs.index(run), {"progress": fraction, "epoch": epoch}
        if alone is not None:
            alone.from_global()
        train_evals, tests = unit.evaluate("train_eval", eval_x, eval_y), unit.evaluate("test", test_x, test_y)
        vals = unit.evaluate("val", *val) if val is not None else [None] * len(active)
        seconds = time.perf_counter() - start
        if not told_capture and unit.replay_step is not None:
            told_capture = True
            log.info("CUDA graphs: captured in %.1f s, warm-up included", unit.capture_seconds)
        unit.finish()
        loss_sum, correct = unit.loss_sum.cpu(), unit.correct.cpu()
        for k, run in enumerate(active):
            record = epoch_record(epoch, loss_sum[k], correct[k], n, train_evals[k], tests[k], seconds, vals[k],
                                  unit.k, unit.replay_step is not None)  # fmt: skip
            run.history.append(record)
            run.done = epoch
            rng_cuda = run.cuda_gen.get_state() if run.cuda_gen is not None else None
            save_epoch(run.folder, run.cfg, run.identity, epoch, run.model, run.opt, run.cpu_gen.get_state(),
                       rng_cuda, run.order_gen, run.aug_gen, run.history)  # fmt: skip
        for run in active:
            yield runs.index(run), {**run.history[-1], "resumed_from": run.resumed_from}
