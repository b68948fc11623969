"""K variants of `Net` as one batched computation: their weights stacked, one step updates all K.

Why: at batch 32 one small CNN leaves a GPU idle between kernel launches; K stacked models launch
about as many kernels as one, for K times the work. The K convolutions run as one grouped
convolution, the K linear layers as one batched matmul. `Single` gives one Net the same calling
convention, so the one trainer (core/train.py) trains one variant or K with the same loop.

Each variant keeps its own dropout rate, dropout RNG stream, batch order and Adam state, so it
trains as it would alone: the same maths, equal up to floating-point summation order (on CPU the
dropout masks are the very same; tests/test_stacked.py shows it). Between epochs every variant
lives in its own `Net`/`Adam` objects (`stack_adam_state`, `unstack_into`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dropout_lab.core.evaluate import to_input
from dropout_lab.core.model import Net

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
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        # Full float32 on CUDA too: TF32 rounding would differ between the grouped and the plain paths.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        self.eval()
        try:
            together = self(x, shared=True)
            for k, net in enumerate(nets):
                net.eval()
                alone = net(x)
                if together[k].shape != alone.shape or not torch.allclose(together[k], alone, rtol=1e-3, atol=1e-4):
                    raise ValueError("StackedNet does not reproduce Net: Net.forward must run its layers in order")
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
            self.train(was)
            for net, mode in zip(nets, modes, strict=True):
                net.train(mode)


class Single(nn.Module):
    """One `Net` in StackedNet's calling convention, for the one trainer: forward(x, shared, gens)
    returns logits (1, B, 10). Its dropout is Net's own, drawing from the global generator, which
    the trainer sets to the variant's stream (`gens` is not used)."""

    k = 1

    def __init__(self, net: Net) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, shared: bool = True, dropout_gens=None) -> torch.Tensor:
        return self.net(x).unsqueeze(0)


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
    raise ValueError(f"cannot stack {name}: no batched form of {type(first).__name__} in core/stacked.py")


def stack_adam_state(opt: torch.optim.Adam, opts: list[torch.optim.Adam]) -> None:
    """Load the variants' Adam state into the stacked model's optimizer (StackedNet stacks the weights)."""
    states = [o.state_dict()["state"] for o in opts]
    if not states[0]:
        return  # fresh variants: Adam has no state yet
    opt.load_state_dict(
        {
            "state": {i: {key: value.clone() if key == "step" else torch.stack([s[i][key] for s in states])
                          for key, value in states[0][i].items()} for i in states[0]},
            "param_groups": opt.state_dict()["param_groups"],
        }
    )  # fmt: skip


def unstack_into(stacked: StackedNet, opt: torch.optim.Adam, nets: list[Net], opts: list[torch.optim.Adam]) -> None:
    """Copy variant k's slice of the stacked weights and Adam state back into its own objects."""
    state = opt.state_dict()
    for k, (net, own_opt) in enumerate(zip(nets, opts, strict=True)):
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(stacked.param(name)[k])
        # Clones: Adam.load_state_dict keeps the tensors it is given, and these are views into
        # state the stacked optimizer keeps updating in place. The variant keeps its own settings
        # (param_groups: lr, weight decay, ...), never the stack's.
        own_opt.load_state_dict(
            {
                "state": {i: {key: value.clone() if key == "step" else value[k].clone() for key, value in s.items()}
                          for i, s in state["state"].items()},
                "param_groups": own_opt.state_dict()["param_groups"],
            }
        )  # fmt: skip


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


def stacked_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (K, B, 32, 32, 3), variant k's batch in row k → float (B, K·3, 32, 32), channels_last."""
    k, b, h, w, c = images.shape
    return to_input(images.permute(1, 2, 3, 0, 4).reshape(b, h, w, k * c))
