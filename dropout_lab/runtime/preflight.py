"""Checks that can fail a run before any training starts: its parameters, its devices, where it may
write, writable folders, free space.

Everything here checks first and creates nothing until every check has passed, so a refused run
leaves no empty folders behind. The command line runs these checks before it imports torch or
Prefect's engine; the flow runs them again for a deployment run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dropout_lab.config import (
    DATASET_IMAGES,
    PARAMETERS,
    SETTINGS,
    Design,
    TrainConfig,
    Variant,
    check_train_config,
    compared_variants,
    describe_error,
    design_of,
    flag,
    help_text,
    seed_waves,
    variant_of,
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
    where = (f"parameter {name} ({FLAGS[name]}) {value!r}: a deployment run may only name a folder inside "
             f"{root} (set by serve.py --{name.split('_')[0]}-root or ${ROOT_ENV[name]} where the worker "
             "starts)")  # fmt: skip
    if path.is_absolute() or path.drive:
        raise ValueError(f"{where}; absolute paths are refused")
    if ".." in path.parts:
        raise ValueError(f"{where}; '..' is refused")
    plan_name_lengths(root / path, FLAGS[name])
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"{where}; it leads to {resolved} through a symlink")
    return resolved


def confine_folders(params: dict) -> dict[str, str]:
    """The three folders of a deployment run, confined to their roots (see ROOT_ENV)."""
    return {name: str(confine(name, params[name], deployment_root(name))) for name in ROOT_ENV}


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to look up does not exist
        return False


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not _exists(path) and path != path.parent:
        path = path.parent
    return path


def _name_max(base: Path) -> int:
    try:
        return os.pathconf(base, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def plan_name_lengths(path: str | Path, what: str) -> None:
    """Every name in `path` short enough for its file system; ValueError (one line) otherwise."""
    longest = max((os.fsencode(part) for part in Path(path).absolute().parts), key=len)
    limit = _name_max(_existing_ancestor(Path(path)))
    if len(longest) > limit:
        raise ValueError(f"{what}: a folder name of {len(longest)} bytes is longer than this file system allows "
                         f"({limit} bytes)")  # fmt: skip


def plan_folder(path: str | Path, what: str) -> None:
    """Could `path` be a writable folder? Checks without creating anything; ValueError (one line)."""
    path = Path(path)
    plan_name_lengths(path, what)
    base = _existing_ancestor(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} exists and is not a folder")
    if not base.is_dir():
        raise ValueError(f"{what} {path}: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} is not writable ({base}: permission denied or read-only)")


def check_space(path: str | Path, what: str, need_bytes: int) -> None:
    """Enough free space where `path` is or will be (measured on its nearest existing folder)."""
    free = shutil.disk_usage(_existing_ancestor(Path(path))).free
    if free < need_bytes:
        raise ValueError(f"{what} {path} has {free // MB} MB free; this run needs about {need_bytes // MB} MB")


def make_writable(path: str | Path, what: str) -> list[Path]:
    """Create `path` if needed and prove it writable with a real temp file (os.access says yes to root).
    Returns the folders it created; on failure removes them and raises ValueError (one line)."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]  # outermost first
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        remove_created(missing)
        raise ValueError(f"{what} {path} is not writable ({e.strerror or e})") from None
    return missing


def remove_created(folders: list[Path]) -> None:
    """Remove folders a refused run created (innermost first), if they are still empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            pass


def check_folders(data_dir: str, out: str, cache_dir: str, data_present: bool) -> list[tuple[str, str]]:
    """All three planned and their free space checked, creating nothing; returns (path, flag) pairs
    for `create_folders`."""
    folders = [(data_dir, "--data-dir", 0 if data_present else NEEDS["data"]),
               (cache_dir, "--cache-dir", NEEDS["cache"]), (out, "--out", NEEDS["out"])]  # fmt: skip
    for path, what, _ in folders:
        plan_folder(path, what)
    for path, what, need in folders:
        check_space(path, what, need)
    return [(path, what) for path, what, _ in folders]


def create_folders(folders: list[tuple[str, str]]) -> list[Path]:
    """Create the planned folders and prove them writable; a refusal leaves no folder behind. Returns the
    folders it created."""
    created: list[Path] = []
    try:
        for path, what in folders:
            created += make_writable(path, what)
    except ValueError:
        remove_created(created)
        raise
    return created


# --- the whole run's checks ------------------------------------------------------------------------

# Flow parameters that are not TrainConfig fields of every variant alike: a variant's own settings
# and seed, and the device (resolved per variant).
_PER_VARIANT = {"seed", "device", *(s.field for s in SETTINGS)}


BOUNDS = ("greater_than_equal", "greater_than", "less_than_equal", "less_than")


def parameter_errors(params: dict) -> None:
    """Validate the flow's parameters against their declaration, as Prefect does for a deployment run,
    so the CLI and the UI refuse the same values. Raises ValueError '--flag: must be ...' (one line)."""
    from pydantic import ValidationError, create_model

    declared = PARAMETERS.parameters
    model = create_model("compare_parameters", **{n: (p.annotation, p.default) for n, p in declared.items()})
    try:
        model.model_validate(params)
    except ValidationError as e:
        error, name = e.errors()[0], str(e.errors()[0]["loc"][0])
        # Out of bounds: the declaration says why its bounds are where they are, where that is not plain.
        why = help_text(declared[name].annotation, "bounds") if name in declared and error["type"] in BOUNDS else ""
        raise ValueError(f"{flag(name)}: {describe_error(error)}" + (f": {why}" if why else "")) from None


def what_cannot_be_done(params: dict) -> None:
    """Refuse a run that cannot do what it says, once its parameters are valid: a comparison with no
    variant, images the dataset does not have, a hold-out that leaves nothing to train on. ValueError
    (one line)."""
    if len(compared_variants(params)) < 2:
        given = [f"{flag(s.field)} {' '.join(map(str, values))}" for s in SETTINGS if (values := params.get(s.field))]
        given += [f"--variant {text}" for text in params.get("variant") or ()]
        raise ValueError(f"{', '.join(given) or 'no setting'}: nothing to compare with the baseline (it is always "
                         f"trained); give {' or '.join(flag(s.field) for s in SETTINGS)} a value other than the "
                         "baseline's")  # fmt: skip
    dataset = params["dataset"]
    for name, have in zip(("limit_train", "limit_test"), DATASET_IMAGES[dataset], strict=True):
        if params[name] > have:
            raise ValueError(f"{flag(name)} {params[name]}: the {dataset} dataset has {have:,} "
                             f"{name.removeprefix('limit_')} images")  # fmt: skip
    train = params["limit_train"] or DATASET_IMAGES[dataset][0]
    if params["val_images"] and params["val_images"] >= train:
        raise ValueError(f"--val-images {params['val_images']} leaves nothing to train on: the run takes "
                         f"{train:,} training images of the {dataset} dataset")  # fmt: skip


def resolve_seeds(params: dict) -> list[int] | str:
    """The seeds to train, set into params["seeds"]: the list given, or "auto"; when unset (None), "auto"
    where the run trains on a GPU (a seed costs seconds there) and the tutorial's one seed on CPU."""
    from dropout_lab.runtime.devices import resolve_devices

    if params["seeds"] is None:
        on_gpu = resolve_devices(params["device"], 1)[0].startswith("cuda")
        params["seeds"] = "auto" if on_gpu else [TrainConfig.seed]
    return params["seeds"]


def every_seed(params: dict) -> list[int]:
    """Every seed the run may train: the list, or with auto 0 .. max_seeds - 1."""
    return list(range(params["max_seeds"])) if params["seeds"] == "auto" else list(params["seeds"])


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, decided once by its checks and passed down to the command line and the flow:
    every (variant, seed) it may train, the design its decisions follow, which variants train together in
    each wave of seeds, the CPU threads and concurrent trainings per device, and its folders."""

    params: dict  # the flow's parameters, unset seeds resolved
    configs: list[TrainConfig]  # every (variant, seed) the run may train, in report order
    design: Design  # as planned, before any look
    waves: list[list[list[TrainConfig]]]  # per wave of seeds, the groups that train as one process each
    threads: int  # CPU threads per training process
    slots: dict[str, int]  # training processes at once, per device
    folders: dict[str, str]  # data_dir, out, cache_dir (confined to their roots in a deployment run)
    planned: list[tuple[str, str]]  # the folders to create, (path, flag), once every check has passed
    created: list[Path] = field(default_factory=list)  # those create() made: a run failing at once removes them

    def create(self) -> RunPlan:
        """Create the run's folders: last, after every check (and every remote's probe) has passed, so a
        refusal leaves nothing behind."""
        self.created[:] = create_folders(self.planned)
        return self

    def groups(self, wave: int, training: set[Variant]) -> list[list[TrainConfig]]:
        """The groups of wave `wave` that still train: each cut to the variants in `training` (under
        --seeds auto a variant whose claims are all decided stops)."""
        cut = ([c for c in group if variant_of(c) in training] for group in self.waves[wave])
        return [group for group in cut if group]


def check_parameters(params: dict, deployed: bool = False, create: bool = True) -> RunPlan:
    """Validate everything before any work, creating nothing until all checks pass: parameters, then
    devices, then folders (confined to the worker's roots in a deployment run), then the stores it writes
    to (MLflow, the history); returns the run's plan, its folders created unless `create` is False (the
    command line probes its remotes first, then calls `plan.create()`). Unset seeds are resolved in
    `params` (resolve_seeds). Raises ValueError (one line)."""
    parameter_errors(params)  # first, and before the imports below: a bad value answers at once
    what_cannot_be_done(params)
    resolve_seeds(params)
    plan = _plan(params, deployed)
    return plan.create() if create else plan


# The plan the command line checked, handed to the flow it runs in this process (checked once, not twice).
_handed: list[RunPlan] = []


def hand_over(plan: RunPlan) -> None:
    _handed[:] = [plan]


def handed_over(params: dict) -> RunPlan | None:
    """The plan the command line checked for exactly these parameters, taken once; None otherwise (a
    deployment run, or other parameters), and the flow checks them itself."""
    plan = _handed.pop() if _handed else None
    same = plan is not None and json.dumps(plan.params, sort_keys=True, default=str) == json.dumps(
        params, sort_keys=True, default=str)  # fmt: skip
    return plan if same else None


def check_trust_store() -> None:
    """The list of checkpoints this user's runs measured (core/claims.py) is a regular file or absent: a
    folder or a FIFO there would fail every training of the run. ValueError (one line)."""
    from dropout_lab.core.claims import STORE_ENV, measured_store
    from dropout_lab.regular import NotRegular, check_regular_or_absent

    try:
        check_regular_or_absent(measured_store())
    except NotRegular as e:
        raise ValueError(f"the store of measured checkpoints {e}: move it aside, or name another file in "
                         f"${STORE_ENV}") from None  # fmt: skip


def _plan(params: dict, deployed: bool) -> RunPlan:
    from dropout_lab.analysis.history import store_uri
    from dropout_lab.analysis.tracking import check_store
    from dropout_lab.core.data import ARCHIVE_NAME, FOLDER_NAME
    from dropout_lab.runtime.devices import process_layout, stack_groups, variant_configs

    shared = {f.name for f in dataclasses.fields(TrainConfig)} - _PER_VARIANT
    base = TrainConfig(**{k: params[k] for k in shared if k in params})
    configs = variant_configs(base, compared_variants(params), every_seed(params), params["device"])
    for cfg in configs:
        check_train_config(cfg)  # every variant and seed, and precision vs the resolved device
    seeds = seed_waves(params["max_seeds"]) if params["seeds"] == "auto" else [sorted({c.seed for c in configs})]
    waves = [stack_groups([c for c in configs if c.seed in wave], params["stack"], params["cuda_graphs"])
             for wave in seeds]  # fmt: skip
    threads, slots = process_layout(waves[0])
    folders = confine_folders(params) if deployed else {k: params[k] for k in ROOT_ENV}
    data_dir = Path(folders["data_dir"])
    present = params["dataset"] == "fake" or (data_dir / FOLDER_NAME).is_dir() or (data_dir / ARCHIVE_NAME).is_file()
    planned = check_folders(folders["data_dir"], folders["out"], folders["cache_dir"], data_present=present)
    check_store(store_uri(folders["out"]))  # the run history: the server answers, the database is MLflow's
    check_trust_store()
    return RunPlan(dict(params), configs, design_of(params), waves, threads, slots, folders, planned)
