"""Which device each variant trains on, which variants share a process and how (the measured GPU plan),
and how many CPU threads each process may use."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, get_args

from dropout_lab.config import GRAPH_MODES, SETTINGS, Stack, TrainConfig, Variant, configure


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpu_count() -> int:
    """CUDA GPUs here. Without NVIDIA device files there are none, and torch (seconds to import) is
    not needed to say so: the command line refuses a bad device at once on a CPU machine."""
    if not any(Path("/dev").glob("nvidia[0-9]*")) and not Path("/dev/dxg").exists():  # dxg: WSL2
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_devices(device: str, n_variants: int) -> list[str]:
    """Device per variant. `auto`: one GPU each, round-robin over the GPUs present, else CPU.

    `cuda` also spreads round-robin; `cuda:N` pins all variants to GPU N. Raises ValueError with a
    one-line message for a device that does not exist.
    """
    device = device.strip().lower()
    n_gpus = gpu_count() if device != "cpu" else 0
    if device == "cpu":
        return ["cpu"] * n_variants
    if device == "auto":
        return [f"cuda:{i % n_gpus}" for i in range(n_variants)] if n_gpus else ["cpu"] * n_variants
    if device == "cuda" or device.startswith("cuda:"):
        if n_gpus == 0:
            raise ValueError(f"device {device!r} requested but no CUDA GPU is available (use --device cpu or auto)")
        if device == "cuda":
            return [f"cuda:{i % n_gpus}" for i in range(n_variants)]
        index = device.split(":", 1)[1]
        if not index.isdigit() or int(index) >= n_gpus:
            raise ValueError(
                f"device {device!r} does not exist: this machine has {n_gpus} GPU(s), cuda:0..cuda:{n_gpus - 1}"
            )
        return [f"cuda:{int(index)}"] * n_variants
    raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")


def variant_configs(base: TrainConfig, variants: list[Variant], seeds: list[int], device: str) -> list[TrainConfig]:
    """One config per (variant, seed), in report order (compared_variants: the baseline last).

    Each gets its device (round-robin over GPUs with `auto`/`cuda`)."""
    pairs = [(v, s) for v in variants for s in sorted(set(seeds))]
    devices = resolve_devices(device, len(pairs))
    return [configure(base, v, seed=s, device=d) for (v, s), d in zip(pairs, devices, strict=True)]


# --- the rules: which variants may train as one computation, and when steps are CUDA graphs ------------


def stack_shared(cfg: TrainConfig) -> dict[str, Any]:
    """What variants trained as one stacked computation must share: every field but the seed and the
    stackable settings (a new field is shared unless declared otherwise)."""
    per_variant = {"seed", *(s.field for s in SETTINGS if s.stackable)}
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in per_variant}


def stack_key(cfg: TrainConfig) -> tuple:
    """Variants with the same key may train as one stacked computation (`stack_shared`)."""
    return tuple(stack_shared(cfg).values())


def check_stackable(cfgs: list[TrainConfig]) -> None:
    """Variants trained as one computation share every field but their own (`stack_shared`)."""
    shared = [stack_shared(c) for c in cfgs]
    differ = [name for name in shared[0] if len({s[name] for s in shared}) > 1]
    if differ:
        raise ValueError(f"stacked variants must share {', '.join(differ)} (they differ)")


def graphs_wanted(mode: str, device: str, precision: str, compile: bool) -> tuple[bool, str | None]:
    """(capture CUDA graphs?, why not, for a log line): `auto` is on for CUDA whenever a graph can
    hold the step, `on` asks for them (and says why it cannot), `off` never."""
    if mode not in GRAPH_MODES:
        raise ValueError(f"--cuda-graphs must be one of {', '.join(GRAPH_MODES)} (got {mode!r})")
    if mode == "off":
        return False, None
    if not device.startswith("cuda"):
        return False, None if mode == "auto" else f"CUDA graphs need a CUDA device, not {device}"
    if compile:
        # torch.compile brings its own graphs (mode="reduce-overhead"); two capture layers do not nest.
        return False, "--compile trains through torch.compile, not the trainer's own CUDA graphs"
    if precision == "fp16":
        # GradScaler checks for inf/nan on the host every step: a graph cannot hold that sync.
        return False, "fp16's loss scaling syncs with the host every step; bf16 or fp32 capture"
    return True, None


STACK_MODES = get_args(get_args(Stack)[0])  # declared once, with the flow parameter
# The plan `--stack auto` follows on a GPU, per number of variants sharing it, with and without CUDA
# graphs: written by `benchmarks/gpu_plan.py --write` from its side-by-side measurement (benchmarks/RESULTS.md, *GPU*).
PLAN_FILE = Path(__file__).with_name("gpu_plan.json")
PLANS = ("stacked", "processes")
# Training processes at once on one GPU: each holds a CUDA context and its own copy of the data.
GPU_PROCESSES_MAX = 16


def measured_plan(k: int, graphed: bool, table: dict | None = None) -> str:
    """stacked | processes: the fastest measured way to train `k` variants on one GPU (the
    entry for the largest measured K not above k; the smallest measured K below that)."""
    table = table if table is not None else _read_plan(PLAN_FILE)
    fastest = {int(n): plan for n, plan in table["graphs" if graphed else "eager"].items()}
    measured = sorted(fastest)
    return fastest[max([n for n in measured if n <= k], default=measured[0])]


@functools.cache
def _read_plan(path: Path) -> dict:
    """The plan file, read once per process (every group of every run consults it) and checked: ValueError
    (one line naming the file and the field) for anything but {"eager": {K: plan}, "graphs": {K: plan}, ...}
    with K a whole number of at least 2 and plan one of PLANS."""
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable plan ({type(e).__name__}: {e})") from None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: must be a JSON object with 'eager' and 'graphs' (got {type(table).__name__})")
    for kind in ("eager", "graphs"):
        entries = table.get(kind)
        if not isinstance(entries, dict) or not entries:
            raise ValueError(f"{path}: '{kind}' must map numbers of variants to a plan (got {entries!r:.60})")
        for k, plan in entries.items():
            if not (isinstance(k, str) and k.isdigit() and int(k) >= 2) or plan not in PLANS:
                raise ValueError(f"{path}: '{kind}' entry {k!r}: {plan!r:.40} must be one of {', '.join(PLANS)} "
                                 "for a whole number of variants >= 2")  # fmt: skip
    return table


def plan_for(mode: str, device: str, k: int, graphed: bool) -> str:
    """How `k` variants sharing `device` train: `on` stacked, `off` a process each; `auto` the measured
    plan on a GPU, and a process each on CPU (there separate processes beat a stacked computation,
    benchmarks/RESULTS.md)."""
    if mode not in STACK_MODES:
        raise ValueError(f"stack must be one of {', '.join(STACK_MODES)} (got {mode!r})")
    if mode == "auto":
        return measured_plan(k, graphed) if device.startswith("cuda") and k > 1 else "processes"
    return {"on": "stacked", "off": "processes"}[mode]


def stack_groups(configs: list[TrainConfig], mode: str, cuda_graphs: str = "auto") -> list[list[TrainConfig]]:
    """Which variants share one training process, one stacked computation each, in input order: the
    variants that may stack (same device and `stack_key`) unless their plan is a process each."""
    together: dict[tuple, list[TrainConfig]] = {}
    for cfg in configs:
        together.setdefault(stack_key(cfg), []).append(cfg)
    alone = {
        key
        for key, cfgs in together.items()
        if plan_for(mode, cfgs[0].device, len(cfgs), _graphed(cuda_graphs, cfgs[0])) == "processes"
    }
    return [cfgs for key, cfgs in together.items() if key not in alone] + [
        [c] for c in configs if stack_key(c) in alone
    ]


def _graphed(cuda_graphs: str, cfg: TrainConfig) -> bool:
    return graphs_wanted(cuda_graphs, cfg.device, cfg.precision, cfg.compile)[0]


def threads_per_variant(devices: list[str]) -> int:
    """Split the cores between the training processes on CPU at once (one per entry of `devices`: a
    variant, or a stack of them), without oversubscription; with more processes than cores, each
    gets one thread and `worker_slots` queues the rest."""
    on_cpu = sum(d == "cpu" for d in devices)
    return max(1, available_cores() // max(on_cpu, 1))


def worker_slots(devices: list[str], threads: int) -> dict[str, int]:
    """How many training processes may run at once per device: the CPU's cores split `threads` each;
    on a GPU up to GPU_PROCESSES_MAX, which share it concurrently (docs/design.md)."""
    return {d: (max(1, available_cores() // threads) if d == "cpu" else GPU_PROCESSES_MAX) for d in set(devices)}


def process_layout(groups: list[list[TrainConfig]]) -> tuple[int, dict[str, int]]:
    """(CPU threads per training process, processes allowed at once per device) for these groups,
    one training process each (see `stack_groups`)."""
    devices = [group[0].device for group in groups]
    threads = threads_per_variant(devices)
    return threads, worker_slots(devices, threads)
