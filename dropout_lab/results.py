"""Small, picklable results passed between tasks (paths and numbers, never tensors or modules)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dropout_lab.config import TrainConfig


@dataclass(frozen=True)
class TrainResult:
    """One trained model. Everything the report takes from it is its config (its identity) or its
    history, which its final checkpoint holds (checked before a cached result is used); the rest says
    when and with how many threads it ran."""

    config: TrainConfig
    checkpoint: str  # final epoch checkpoint file
    weights_sha256: str  # of that file: evaluation's cache key follows the actual weights
    history: list  # one dict per epoch, dropout_lab.core.train.epoch_record; the last one is the final evaluation
    n_params: int
    started_at: str  # ISO-8601 UTC
    finished_at: str
    train_seconds: float  # wall time of the training process
    threads: int  # torch intra-op threads it used (CPU)
    resumed_from: int = 0  # epochs restored from a checkpoint instead of trained

    @property
    def final(self) -> dict:
        """The last epoch's record: the final evaluation, the images it used, how it trained."""
        return self.history[-1]

    @property
    def n_train(self) -> int:  # images it trained on
        return self.final["n_train"]

    @property
    def n_train_eval(self) -> int:  # training images evaluated in eval mode each epoch (the gap's train side)
        return self.final["n_train_eval"]

    @property
    def n_test(self) -> int:  # test images it was evaluated on each epoch
        return self.final["n_test"]

    @property
    def stacked_with(self) -> int:  # variants its last epoch trained with as one computation; 1 = alone
        return self.final.get("stacked_with", 1)

    @property
    def trained_as(self) -> str:  # alone | stacked
        return "alone" if self.stacked_with == 1 else "stacked"

    @property
    def cuda_graphs(self) -> bool:  # its last epoch's steps were replayed as CUDA graphs (core/graphs.py)
        return bool(self.final.get("cuda_graphs"))


def results_of(cfgs: list[TrainConfig], results: list[dict], threads: int, resumed_from: list) -> list[TrainResult]:
    """One TrainResult per variant of a training process: its per-variant results and the epoch each
    variant resumed from (None: nothing was left to train)."""
    return [
        TrainResult(
            config=cfg,
            checkpoint=r["checkpoint"],
            weights_sha256=r["weights_sha256"],
            history=r["history"],
            n_params=r["n_params"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
            train_seconds=r["wall_seconds"],
            threads=threads,
            resumed_from=cfg.epochs if resumed is None else resumed,
        )
        for cfg, r, resumed in zip(cfgs, results, resumed_from, strict=True)
    ]


# --- JSON for cached results ----------------------------------------------------------------------
# What tasks return is stored in the cache folder and read back by later runs. Pickle would run any
# code a planted file names; this encoding knows only plain JSON values and the dataclasses below,
# rebuilt field by field, so a cached result can be wrong data but never code.


class CachedError(RuntimeError):
    """A failed task's error as read back from the cache: its type's name and message, as text."""


def _known() -> dict[str, type]:
    from dropout_lab.core.data import DataInfo  # here: dropout_lab.core.data imports torch, not needed to decode

    return {cls.__name__: cls for cls in (TrainConfig, TrainResult, DataInfo)}


def to_jsonable(obj):
    """Tasks' return values → JSON values: dataclasses as {"__dataclass__": name, "fields": {...}},
    tuples as {"__tuple__": [...]}."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if type(obj).__name__ not in _known():
            raise TypeError(f"cannot cache a {type(obj).__name__}: not one of {', '.join(_known())}")
        return {"__dataclass__": type(obj).__name__,
                "fields": {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}  # fmt: skip
    if isinstance(obj, tuple):
        return {"__tuple__": [to_jsonable(v) for v in obj]}
    if isinstance(obj, list):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("cannot cache a dict with non-string keys")
        return {k: to_jsonable(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, BaseException):  # a failed task's error, kept for its state: name and message only
        return {"__error__": type(obj).__name__, "message": str(obj)}
    raise TypeError(f"cannot cache a {type(obj).__name__}")


def from_jsonable(value):
    """The inverse of `to_jsonable`, for the known dataclasses only; ValueError for anything else."""
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__error__" in value:
        return CachedError(f"{value['__error__']}: {value.get('message')}")
    if "__tuple__" in value:
        return tuple(from_jsonable(v) for v in value["__tuple__"])
    if "__dataclass__" in value:
        cls = _known().get(value["__dataclass__"])
        fields = value.get("fields")
        if cls is None or not isinstance(fields, dict):
            raise ValueError(f"refusing cached object {str(value['__dataclass__'])[:80]!r}: not a known result type")
        names = {f.name for f in dataclasses.fields(cls)}
        if set(fields) - names:
            raise ValueError(f"refusing cached {cls.__name__}: unknown fields {sorted(set(fields) - names)}")
        return cls(**{k: from_jsonable(v) for k, v in fields.items()})
    return {k: from_jsonable(v) for k, v in value.items()}
