"""CUDA graphs for the one trainer: capturing a step, and undoing the warm-up steps a capture needs
(whether a run uses them: runtime/devices.py `graphs_wanted`).

Why: at batch 32 an eager GPU step is bound by the CPU issuing a hundred kernel launches; replayed as
a CUDA graph the same step is one launch and the GPU becomes the bound (benchmarks/RESULTS.md, *GPU*).
A graph replays the very kernels of its capture on the very tensors it captured, so everything it
reads (weights, Adam state, batch indices, the dropout generators' seed and offset) lives in static
tensors that the trainer refills in place, and a checkpoint restored before the capture is what the
graph trains on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch


def capture(fn: Callable[[], None], generators: list[torch.Generator] = (), pool=None):
    """Record one call of `fn` as a CUDA graph; returns (replay, graph). Kernels do not run while
    capturing: `fn`'s effects happen at each replay. Dropout generators other than the default one
    are registered, so each replay draws fresh masks from their current seed and offset."""
    graph = torch.cuda.CUDAGraph()
    for generator in generators:
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph, pool=pool):
        fn()
    return graph.replay, graph


@contextlib.contextmanager
def side_stream(device: torch.device) -> Iterator[None]:
    """Warm-up before a capture runs on a side stream (as torch.cuda.graph's documentation asks), so
    lazily created state (cuDNN's chosen algorithms, cuBLAS workspaces, Adam's state) exists first."""
    if device.type != "cuda":
        yield
        return
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream(device).wait_stream(stream)


class Snapshot:
    """Weights, Adam state and generator states before warm-up steps, put back in place after them
    (the graph keeps the tensors it captured: nothing may be replaced, only overwritten).

    A fresh Adam has no state until its first step; put back, that state is zeros and step 0, which
    is exactly how Adam initialises it lazily, so warming up leaves no trace in the trained model."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer, generators: list[torch.Generator]):
        self.model, self.opt, self.generators = model, opt, generators
        self.params = [p.detach().clone() for p in model.parameters()]
        self.state = {p: {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters() if p in opt.state}
        self.rng = [g.get_state() for g in generators]

    @torch.no_grad()
    def restore(self) -> None:
        for p, saved in zip(self.model.parameters(), self.params, strict=True):
            p.copy_(saved)
            for key, value in self.opt.state.get(p, {}).items():
                if not torch.is_tensor(value):
                    continue
                if p in self.state:
                    value.copy_(self.state[p][key])
                else:
                    value.zero_()
        for generator, state in zip(self.generators, self.rng, strict=True):
            generator.set_state(state)
