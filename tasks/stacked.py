"""Train K variants as one batched computation: their weights stacked, one step updates all K.

Why: at batch 32 one small CNN leaves a GPU idle between kernel launches; K stacked models launch
about as many kernels as one, for K times the work. The K convolutions run as one grouped
convolution, the K linear layers as one batched matmul.

Each variant keeps its own dropout rate, dropout RNG stream, batch order and Adam state, so it
trains as it would alone: the same maths, equal up to floating-point summation order (on CPU the
dropout masks are the very same; tests/test_stacked.py shows it). Between epochs every variant
lives in its own `Net`/`Adam` objects, so checkpoints use the single trainer's format: a stacked
run resumes alone and vice versa, and variants at different epochs (one resumed further than the
others) train on their own until the others catch up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tasks.config import TrainConfig
from tasks.evaluate import autocast, eval_result, to_input, train_eval_split
from tasks.model import CLASSES, Net
from tasks.train import InjectedFault, epoch_record, fault_epoch_for, save_epoch, start_run

# Fields every variant of one stack must share (they shape the single computation).
SHARED_FIELDS = ("device", "epochs", "batch_size", "lr", "precision", "compile", "limit_train", "limit_test",
                 "train_eval_images", "eval_batch_size")  # fmt: skip
# Layers that act on (B, K·C, H, W) or (K, B, F) as they are: no weights, nothing per variant.
AS_IS = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU)


class StackedNet(nn.Module):
    """K copies of `Net` as one module, built from Net itself: its layers, in the order its forward
    runs them (a sequence of leaf modules, checked on construction), each turned into its batched
    form. Changing `Net` changes this; a layer type it cannot batch is refused (ValueError), and a
    Net whose forward is not its layers in order fails the construction check.

    Parameter i is (K, *shape of Net's parameter i). forward takes either one batch shared by all
    variants, x (B, 3, 32, 32), or one batch per variant side by side in the channels,
    x (B, K·3, 32, 32) with variant k in channels 3k..3k+2; it returns logits (K, B, 10).
    """

    def __init__(self, nets: list[Net]) -> None:
        super().__init__()
        self.names = [name for name, _ in nets[0].named_parameters()]  # Net's order: Adam state follows it
        singles = [dict(net.named_parameters()) for net in nets]
        self.stacked = nn.ParameterList(
            [nn.Parameter(torch.stack([s[name].detach() for s in singles]).clone()) for name in self.names]
        )
        leaves = [[(n, m) for n, m in net.named_modules() if not list(m.children())] for net in nets]
        self.plan = [_batched(name, [layers[i][1] for layers in leaves]) for i, (name, _) in enumerate(leaves[0])]
        self.rates = [max((rates[k] for kind, _, _, rates in self.plan if kind == "dropout"), default=0.0)
                      for k in range(len(nets))]  # fmt: skip
        self._check_against(nets)

    @property
    def k(self) -> int:
        return self.stacked[0].shape[0]

    def param(self, name: str) -> torch.Tensor:
        return self.stacked[self.names.index(name)]

    def forward(self, x: torch.Tensor, shared: bool, dropout_gens: list[torch.Generator] | None = None):
        h, per_variant = x, not shared  # (B, C, H, W) shared by all, or (B, K·C, H, W)
        for kind, name, module, rates in self.plan:
            if kind == "conv":
                w, b = self.param(f"{name}.weight"), self.param(f"{name}.bias")  # (K, Cout, Cin, kh, kw), (K, Cout)
                # A shared input meets all K filters banks in one dense conv (K·Cout outputs);
                # otherwise group k convolves only variant k's channels.
                groups = self.k if per_variant else 1
                h = F.conv2d(h, w.flatten(0, 1), b.flatten(), module.stride, module.padding, module.dilation, groups)
                per_variant = True
            elif kind == "flatten":
                if not per_variant:
                    h = h.repeat(1, self.k, *([1] * (h.dim() - 2)))
                # (B, K·C, H, W) → (K, B, C·H·W): variant k's features flattened in Net's (C, H, W) order.
                h = h.reshape(h.shape[0], self.k, -1).transpose(0, 1)
                per_variant = True
            elif kind == "linear":
                w, b = self.param(f"{name}.weight"), self.param(f"{name}.bias")  # (K, out, in), (K, out)
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            elif kind == "dropout":
                h = self._dropout(h, rates, dropout_gens)
            elif kind == "as_is":
                h = module(h)
        return h

    def _dropout(self, h: torch.Tensor, rates: list[float], gens: list[torch.Generator] | None) -> torch.Tensor:
        """Each variant's rate and stream. On CPU this draws exactly what `nn.Dropout` draws from
        the global generator (bernoulli(1-p) noise of the same shape, scaled by 1/(1-p))."""
        if not self.training or not any(rates):
            return h
        # (K, B, F); rows of p=0 variants stay 1. float32 even under bf16/fp16 autocast, so the
        # 1/(1-p) scale is not rounded (as in nn.Dropout, which scales in float).
        noise = torch.ones(h.shape, dtype=torch.float32, device=h.device)
        for k, p in enumerate(rates):
            if p > 0:
                noise[k].bernoulli_(1 - p, generator=gens[k]).div_(1 - p)
        return h * noise

    @torch.no_grad()
    def _check_against(self, nets: list[Net]) -> None:
        """The batched layers compute what each Net computes (eval mode, two fixed inputs; a local
        generator, so no global random state is consumed)."""
        device = self.stacked[0].device
        x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
        modes = [net.training for net in nets]
        was = self.training
        self.eval()
        try:
            together = self(x, shared=True)
            for k, net in enumerate(nets):
                net.eval()
                alone = net(x)
                if together[k].shape != alone.shape or not torch.allclose(together[k], alone, rtol=1e-3, atol=1e-4):
                    raise ValueError("StackedNet does not reproduce Net: Net.forward must run its layers in order")
        finally:
            self.train(was)
            for net, mode in zip(nets, modes, strict=True):
                net.train(mode)


def _batched(name: str, modules: list[nn.Module]) -> tuple[str, str, nn.Module, list[float]]:
    """(kind, layer name, module, per-variant dropout rates) for the layer at one position of every Net."""
    first = modules[0]
    if any(isinstance(m, nn.Dropout) for m in modules):
        if not all(isinstance(m, nn.Dropout | nn.Identity) for m in modules):
            raise ValueError(f"cannot stack {name}: dropout in some variants, {type(first).__name__} in others")
        return "dropout", name, first, [m.p if isinstance(m, nn.Dropout) else 0.0 for m in modules]
    if any(type(m) is not type(first) for m in modules):
        raise ValueError(f"cannot stack {name}: the variants' layers differ")
    if isinstance(first, nn.Conv2d) and first.groups == 1 and first.bias is not None:
        return "conv", name, first, []
    if isinstance(first, nn.Linear) and first.bias is not None:
        return "linear", name, first, []
    if isinstance(first, nn.Flatten) and first.start_dim == 1:
        return "flatten", name, first, []
    if isinstance(first, nn.Identity):
        return "skip", name, first, []
    if isinstance(first, AS_IS):
        return "as_is", name, first, []
    raise ValueError(f"cannot stack {name}: no batched form of {type(first).__name__} in tasks/stacked.py")


def stack_adam_state(opt: torch.optim.Adam, runs: list[_Run]) -> None:
    """Load the variants' Adam state into the stacked model's optimizer (StackedNet stacks the weights)."""
    states = [r.opt.state_dict()["state"] for r in runs]
    if not states[0]:
        return  # fresh variants: Adam has no state yet
    opt.load_state_dict(
        {
            "state": {i: {key: value.clone() if key == "step" else torch.stack([s[i][key] for s in states])
                          for key, value in states[0][i].items()} for i in states[0]},
            "param_groups": opt.state_dict()["param_groups"],
        }
    )  # fmt: skip


def unstack_into(stacked: StackedNet, opt: torch.optim.Adam, runs: list[_Run]) -> None:
    """Copy variant k's slice of the stacked weights and Adam state back into its own objects."""
    state = opt.state_dict()
    for k, run in enumerate(runs):
        with torch.no_grad():
            for name, p in run.model.named_parameters():
                p.copy_(stacked.param(name)[k])
        # Clones: Adam.load_state_dict keeps the tensors it is given, and these are views into
        # state the stacked optimizer keeps updating in place.
        run.opt.load_state_dict(
            {
                "state": {i: {key: value.clone() if key == "step" else value[k].clone() for key, value in s.items()}
                          for i, s in state["state"].items()},
                "param_groups": state["param_groups"],
            }
        )  # fmt: skip


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


def streams_from_global(device: str | torch.device) -> tuple[torch.Generator, torch.Generator | None]:
    """(CPU, CUDA or None) generators continuing from the global ones' current state.

    Called right after `build` (or a checkpoint restore), they are the stream a variant training
    alone would draw its dropout masks from."""
    device = torch.device(device)
    cpu_gen = torch.Generator()
    cpu_gen.set_state(torch.get_rng_state())
    if device.type != "cuda":
        return cpu_gen, None
    cuda_gen = torch.Generator(device=device)
    cuda_gen.set_state(torch.cuda.get_rng_state(device))
    return cpu_gen, cuda_gen


def _start(cfg: TrainConfig, folder: Path) -> _Run:
    folder.mkdir(parents=True, exist_ok=True)
    model, opt, order_gen, done, history = start_run(cfg, folder)
    cpu_gen, cuda_gen = streams_from_global(cfg.device)
    return _Run(cfg, folder, model, opt, order_gen, cpu_gen, cuda_gen, done, done, history)


def stacked_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (K, B, 32, 32, 3), variant k's batch in row k → float (B, K·3, 32, 32), channels_last."""
    k, b, h, w, c = images.shape
    return to_input(images.permute(1, 2, 3, 0, 4).reshape(b, h, w, k * c))


def train_steps_stacked(
    model: StackedNet,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    labels: torch.Tensor,
    orders: torch.Tensor,
    batch_size: int,
    dropout_gens: list[torch.Generator],
    precision: str = "fp32",
    fail_at: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass for all K variants: step i trains variant k on orders[k, i·B:(i+1)·B].

    images (N, 32, 32, 3) uint8, labels (N,), orders (K, M) on the model's device. The loss is the
    sum of the K variants' mean cross-entropies: variant k's gradient is its own loss's gradient.
    Returns per-variant (sum of per-sample losses (K,), number correct (K,)); no host sync per step.
    """
    device = images.device
    k = len(orders)
    shared = all(torch.equal(orders[0], o) for o in orders[1:])  # same seed: same batches
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


@torch.inference_mode()
def evaluate_stacked(
    model: StackedNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256, precision: str = "fp32"
) -> list[dict]:
    """`tasks.evaluate.evaluate` for all K variants at once: one dict (loss, acc, confusion) each."""
    model.eval()
    device, k, n_classes = images.device, model.k, len(CLASSES)
    loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
    confusion = torch.zeros(k * n_classes * n_classes, dtype=torch.int64, device=device)
    variant = torch.arange(k, device=device).unsqueeze(1)  # (K, 1)
    for start in range(0, len(labels), batch_size):
        x, y = to_input(images[start : start + batch_size]), labels[start : start + batch_size]
        with autocast(device, precision):
            logits = model(x, shared=True)
        logits = logits.float()  # (K, b, 10)
        loss_sum += F.cross_entropy(logits.flatten(0, 1), y.repeat(k), reduction="none").view(k, -1).sum(1)
        cell = (variant * n_classes + y) * n_classes + logits.argmax(2)  # (K, b): [variant, true, predicted]
        confusion += torch.bincount(cell.flatten(), minlength=k * n_classes * n_classes)
    confusion = confusion.view(k, n_classes, n_classes).cpu()
    return [eval_result(float(loss_sum[i]), confusion[i], len(labels)) for i in range(k)]


def check_stackable(cfgs: list[TrainConfig]) -> None:
    for field in SHARED_FIELDS:
        values = {getattr(c, field) for c in cfgs}
        if len(values) > 1:
            raise ValueError(f"stacked variants must share {field} (got {sorted(map(str, values))})")


def fit_stacked(
    cfgs: list[TrainConfig],
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    checkpoint_dirs: list[str | Path],
    attempt: int = 1,
) -> Iterator[tuple[int, dict]]:
    """`tasks.train.fit` for several variants at once: yield (variant index, record) per variant and
    new epoch; each variant resumes from, and checkpoints into, its own folder."""
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
    active, stacked, opt, forward = [], None, None, None

    for epoch in range(min(r.done for r in runs) + 1, cfg.epochs + 1):
        now = [r for r in runs if r.done < epoch]  # all of them have finished epoch - 1
        if now != active:  # first epoch, or a variant that was ahead joins: restack
            active = now
            stacked = StackedNet([r.model for r in now]).to(device)
            opt = torch.optim.Adam(stacked.parameters(), lr=cfg.lr, fused=device.type == "cuda")
            stack_adam_state(opt, now)
            forward = torch.compile(stacked) if cfg.compile else stacked
        start = time.perf_counter()
        orders = torch.stack([torch.randperm(n, generator=r.order_gen) for r in now]).to(device)
        fail_at = n // 2 if fault_epoch == epoch else None
        loss_sum, correct = train_steps_stacked(forward, opt, scaler, train_x, train_y, orders, cfg.batch_size,
                                                [r.dropout_gen for r in now], cfg.precision, fail_at)  # fmt: skip
        train_evals = evaluate_stacked(forward, eval_x, eval_y, cfg.eval_batch_size, cfg.precision)
        tests = evaluate_stacked(forward, test_x, test_y, cfg.eval_batch_size, cfg.precision)
        seconds = time.perf_counter() - start
        unstack_into(stacked, opt, now)
        for k, run in enumerate(now):
            record = epoch_record(epoch, loss_sum[k], correct[k], n, train_evals[k], tests[k], seconds)
            run.history.append(record)
            run.done = epoch
            rng_cuda = run.cuda_gen.get_state() if run.cuda_gen is not None else None
            save_epoch(run.folder, run.cfg, epoch, run.model, run.opt, run.cpu_gen.get_state(), rng_cuda,
                       run.order_gen, run.history)  # fmt: skip
        for run in now:
            yield runs.index(run), {**run.history[-1], "resumed_from": run.resumed_from}
