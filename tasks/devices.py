"""Which device each variant trains on, which variants share a process, and how many CPU threads it may use."""

from __future__ import annotations

import dataclasses
import os
from typing import get_args

import torch

from tasks.config import Stack, TrainConfig


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_devices(device: str, n_variants: int) -> list[str]:
    """Device per variant. `auto`: one GPU each, round-robin over the GPUs present, else CPU.

    `cuda` also spreads round-robin; `cuda:N` pins all variants to GPU N. Raises ValueError with a
    one-line message for a device that does not exist.
    """
    device = device.strip().lower()
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
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


def variant_configs(base: TrainConfig, rates: list[float], seeds: list[int], device: str) -> list[TrainConfig]:
    """One config per (dropout rate, seed); the baseline (rate 0) is always included.

    Each gets its device (round-robin over GPUs with `auto`/`cuda`)."""
    pairs = [(p, s) for p in sorted({*rates, 0.0}, key=lambda p: (p == 0, p)) for s in sorted(set(seeds))]
    devices = resolve_devices(device, len(pairs))
    return [dataclasses.replace(base, dropout=p, seed=s, device=d) for (p, s), d in zip(pairs, devices, strict=True)]


STACK_MODES = get_args(get_args(Stack)[0])  # declared once, with the flow parameter


def stack_groups(configs: list, mode: str) -> list[list]:
    """Which variants train together as one stacked computation (tasks/stacked.py), in input order.

    `on`: all variants sharing a device; `auto`: those sharing a CUDA device (a GPU at batch 32 is
    launch-bound, so K stacked models cost little more than one; on CPU separate processes are
    faster, see README); `off`: every variant alone.
    """
    if mode not in STACK_MODES:
        raise ValueError(f"stack must be one of {', '.join(STACK_MODES)} (got {mode!r})")
    groups: dict[str, list] = {}
    singles = []
    for cfg in configs:
        if mode == "on" or (mode == "auto" and cfg.device.startswith("cuda")):
            groups.setdefault(cfg.device, []).append(cfg)
        else:
            singles.append([cfg])
    return [*groups.values(), *singles]


def threads_per_variant(devices: list[str]) -> int:
    """Split the cores between the training processes on CPU at once (one per entry of `devices`: a
    variant, or a stack of them), without oversubscription; with more processes than cores, each
    gets one thread and `worker_slots` queues the rest."""
    on_cpu = sum(d == "cpu" for d in devices)
    return max(1, available_cores() // max(on_cpu, 1))


def worker_slots(devices: list[str], threads: int) -> dict[str, int]:
    """How many training processes may run at once per device: the CPU's cores split `threads` each,
    one per GPU (a second one on the same GPU would only queue behind the first)."""
    return {d: (max(1, available_cores() // threads) if d == "cpu" else 1) for d in set(devices)}


def process_plan(groups: list[list[TrainConfig]]) -> tuple[int, dict[str, int]]:
    """(CPU threads per training process, processes allowed at once per device) for these groups,
    one training process each (see `stack_groups`)."""
    devices = [group[0].device for group in groups]
    threads = threads_per_variant(devices)
    return threads, worker_slots(devices, threads)
