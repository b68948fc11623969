"""Names that say what a run compares: experiments, report folders, flow runs, task runs, artifact keys."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from dropout_lab.config import (
    SETTING,
    SETTINGS,
    Design,
    TrainConfig,
    Variant,
    compared_variants,
    value_text,
    values_alone,
    variant_of,
)
from dropout_lab.keys import train_key

MAX_EXPERIMENT = 120  # characters: a report folder's name adds 11 and must stay under 255 bytes


def slug(text: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def seed_list(seeds: list[int]) -> str:
    """`0-4` for a consecutive range, else `0,2,5`."""
    seeds = sorted(set(seeds))
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def _combined(variants, join: str, tag) -> list[str]:
    """Each variant that combines settings, its settings joined: two variants and one that combines them
    never share a name."""
    return [join.join(tag(SETTING[f], v) for f, v in var.settings)
            for var in sorted(variants, key=Variant.order) if len(var.settings) > 1]  # fmt: skip


def _compared(variants) -> list[str]:
    """`p0.25`, `p0.1+0.5`, `p0.25-wd0.0005`, `augment=flip-crop`: each compared setting with its values
    (`p0`: none); a variant that combines settings as `p0.25-with-augment=flip-crop`, which its artifact key
    keeps apart from the two variants' (`slug` makes `_` and `-` alike)."""
    parts = [s.tag(values) for s in SETTINGS if (values := values_alone(variants, s))]
    parts += _combined(variants, "-with-", lambda s, v: s.tag([v]))
    return parts or [f"{SETTINGS[0].short}0"]


def experiment_name(configs: list[TrainConfig], dataset: str, auto: bool = False) -> str:
    """What was compared, without code or data versions: `cifar10-p0.25-s0-e8` (`-sauto20-`: seeds in
    waves until decided, at most 20). Nightly runs of the same experiment share it (their artifacts line
    up under one key). A run on part of the data says so (`-train2000-test500`): a smoke run must not
    read like a CIFAR-10 result."""
    variants = {variant_of(c) for c in configs}
    seeds = sorted({c.seed for c in configs})
    seed_part = "+".join(map(str, seeds)) if len(seeds) <= 3 else f"{len(seeds)}seeds"
    if auto:
        seed_part = f"auto{len(seeds)}"
    cfg = configs[0]
    size = "".join(
        f"-{split}{limit}" for split, limit in (("train", cfg.limit_train), ("test", cfg.limit_test)) if limit
    )
    name = f"{dataset}{size}-{'-'.join(_compared(variants))}-s{seed_part}-e{cfg.epochs}"
    if len(name) > MAX_EXPERIMENT:  # many values: a folder name must stay short; the digest keeps it unique
        name = f"{name[: MAX_EXPERIMENT - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


def run_folder_name(configs: list[TrainConfig], dataset: str, data_fingerprint: str, design: Design) -> str:
    """Deterministic per experiment: every input that changes a number in the report (each model's
    config, the data and the training code through `train_key`, the dataset, and the design: how seeds
    come and the margin). The same inputs reuse (and overwrite) one folder; different ones never share
    one, even when started at the same time. (The parameters that change no number are declared so:
    config.NotInResult.)"""
    keys = [train_key(c, data_fingerprint) for c in configs]
    digest = hashlib.sha256(repr((keys, dataset, design.key())).encode()).hexdigest()
    return f"{experiment_name(configs, dataset, design.sequential)}-{digest[:10]}"


def flow_run_label(params: Mapping) -> str:
    """Flow-run names say what runs: `p=0.25 seeds=0-4 e8`, `p=0.1,0.5 seeds=0 e2 fake train400`; one model
    with two settings `p=0.25+augment=flip-crop`.
    KeyError/TypeError/ValueError for parameters that are not valid yet."""
    variants = compared_variants(params)
    parts = [f"{s.short}={','.join(map(value_text, values))}" for s in SETTINGS
             if (values := values_alone(variants, s))]  # fmt: skip
    parts += _combined(variants, "+", lambda s, v: f"{s.short}={value_text(v)}")
    extra = [params["dataset"]] if params["dataset"] != "cifar10" else []
    extra += [f"{k.split('_')[1]}{params[k]}" for k in ("limit_train", "limit_test") if params[k]]
    seeds = params["seeds"]
    seeds = f"auto{params['max_seeds']}" if seeds == "auto" else "default" if seeds is None else seed_list(seeds)
    return " ".join([*parts, f"seeds={seeds}", f"e{params['epochs']}", *extra])


def group_label(cfgs: list[TrainConfig]) -> str:
    """`dropout=0.25, seed=0`; two together: `dropout=0.25, seed=0 + baseline, seed=0`; more: `6 variants on cuda:0`."""
    if len(cfgs) <= 2:
        return " + ".join(c.run_name for c in cfgs)
    return f"{len(cfgs)} variants on {cfgs[0].device}"
