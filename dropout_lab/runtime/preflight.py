"""Checks that can fail a run before any training starts: its parameters, its devices, where it may
write, writable folders, free space.

Everything here checks first and creates nothing until every check has passed, so a refused run
leaves no empty folders behind. The command line runs these checks before it imports torch or
Prefect's engine; the flow runs them again for a deployment run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

from dropout_lab.config import (
    PARAMETERS,
    SETTINGS,
    TrainConfig,
    check_train_config,
    compared_variants,
    describe_error,
    flag,
)

MB = 1 << 20
# What a run may write: the CIFAR-10 archive plus its extracted copy; checkpoints and cached results;
# one report folder.
NEEDS = {"data": 400 * MB, "cache": 100 * MB, "out": 20 * MB}

# A deployment run (served or from a work pool) may only write inside folders that whoever starts
# `serve.py` or the worker fixes; its parameters name sub-folders of them. Each falls back to
# DROPOUT_LAB_ROOT, then to the process's working directory.
ROOT_ENV = {"data_dir": "DROPOUT_LAB_DATA_ROOT", "out": "DROPOUT_LAB_OUT_ROOT", "cache_dir": "DROPOUT_LAB_CACHE_ROOT"}
FLAGS = {"data_dir": "--data-dir", "out": "--out", "cache_dir": "--cache-dir"}


ANY_ROOT_ENV = "DROPOUT_LAB_ROOT"


def deployment_root(name: str) -> Path:
    return Path(os.environ.get(ROOT_ENV[name]) or os.environ.get(ANY_ROOT_ENV) or os.getcwd()).resolve()


def confine(name: str, value: str, root: Path) -> Path:
    """`value` as a sub-folder of `root`; ValueError (one line) for an absolute path, `..`, or a
    symlink that leads out. Returns the resolved folder."""
    path = Path(value)
    where = (f"{FLAGS[name]} {value!r}: a deployment run may only name a folder inside {root} (set by "
             f"serve.py --{name.split('_')[0]}-root or ${ROOT_ENV[name]} where the worker starts)")  # fmt: skip
    if path.is_absolute() or path.drive:
        raise ValueError(f"{where}; absolute paths are refused")
    if ".." in path.parts:
        raise ValueError(f"{where}; '..' is refused")
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"{where}; it leads to {resolved} through a symlink")
    return resolved


def confine_folders(params: dict) -> dict[str, str]:
    """The three folders of a deployment run, confined to their roots (see ROOT_ENV)."""
    return {name: str(confine(name, params[name], deployment_root(name))) for name in ROOT_ENV}


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def plan_folder(path: str | Path, what: str) -> None:
    """Could `path` be a writable folder? Checks without creating anything; ValueError (one line)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} exists and is not a folder")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise ValueError(f"{what} {path}: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} is not writable ({base}: permission denied or read-only)")


def check_writable(path: str | Path, what: str, need_bytes: int = 0) -> None:
    """Create `path` if needed and prove it writable with a real temp file; check free space.

    Raises ValueError with a one-line message. (os.access alone is not enough: it says yes to root.)
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"{what} {path} is not writable ({e.strerror or e})") from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise ValueError(f"{what} {path} has {free // MB} MB free; this run needs about {need_bytes // MB} MB")


def check_folders(data_dir: str, out: str, cache_dir: str, data_present: bool) -> None:
    """All three planned first (nothing created if any is refused), then created and proven writable."""
    folders = [(data_dir, "--data-dir", 0 if data_present else NEEDS["data"]),
               (cache_dir, "--cache-dir", NEEDS["cache"]), (out, "--out", NEEDS["out"])]  # fmt: skip
    for path, what, _ in folders:
        plan_folder(path, what)
    for path, what, need in folders:
        check_writable(path, what, need)


# --- the whole run's checks ------------------------------------------------------------------------

# Flow parameters that are not TrainConfig fields of every variant alike: a variant's own settings
# and seed, and the device (resolved per variant).
_PER_VARIANT = {"seed", "device", *(s.field for s in SETTINGS)}


def parameter_errors(params: dict) -> None:
    """Validate the flow's parameters against their declaration, as Prefect does for a deployment run,
    so the CLI and the UI refuse the same values. Raises ValueError '--flag: must be ...' (one line)."""
    from pydantic import ValidationError, create_model

    declared = PARAMETERS.parameters
    model = create_model("compare_parameters", **{n: (p.annotation, p.default) for n, p in declared.items()})
    try:
        model.model_validate(params)
    except ValidationError as e:
        error = e.errors()[0]
        raise ValueError(f"{flag(str(error['loc'][0]))}: {describe_error(error)}") from None


def check_parameters(params: dict, deployed: bool = False) -> tuple[list[TrainConfig], dict[str, str]]:
    """Validate everything before any work, creating nothing until all checks pass: parameters, then
    devices, then folders (confined to the worker's roots in a deployment run). Returns the variant
    configs and the folders to use. Raises ValueError (one line)."""
    from dropout_lab.analysis.tracking import check_available
    from dropout_lab.core.data import ARCHIVE_NAME, FOLDER_NAME
    from dropout_lab.runtime.devices import stack_groups, variant_configs

    parameter_errors(params)
    if params["mlflow"]:
        check_available()
    shared = {f.name for f in dataclasses.fields(TrainConfig)} - _PER_VARIANT
    base = TrainConfig(**{k: params[k] for k in shared if k in params})
    configs = variant_configs(base, compared_variants(params), list(params["seeds"]), params["device"])
    stack_groups(configs, params["stack"], params["cuda_graphs"])  # raises for an unknown mode
    for cfg in configs:
        check_train_config(cfg)  # every variant and seed, and precision vs the resolved device
    folders = confine_folders(params) if deployed else {k: params[k] for k in ROOT_ENV}
    data_dir = Path(folders["data_dir"])
    present = params["dataset"] == "fake" or (data_dir / FOLDER_NAME).is_dir() or (data_dir / ARCHIVE_NAME).is_file()
    check_folders(folders["data_dir"], folders["out"], folders["cache_dir"], data_present=present)
    return configs, folders
