"""The one configuration object of a training run, and each run parameter declared once.

Every parameter's type, bounds and help live here, as `Annotated` pydantic types: the flow's
signature (hence Prefect's deployment form and its validation), the CLI flags and help
(flows/compare.py), and `check_train_config` all derive from these declarations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError

# Seeds feed torch/numpy generators and int64 Parquet columns: 2^32 - 1 fits all of them.
SEED_MAX = 2**32 - 1

Epochs = Annotated[int, Field(ge=1, le=1000, description="training epochs")]
BatchSize = Annotated[int, Field(ge=1, le=65536, description="training batch size")]
LearningRate = Annotated[float, Field(gt=0, le=10, allow_inf_nan=False, description="Adam learning rate")]
Rate = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
Rates = Annotated[
    list[Rate],
    Field(min_length=1, max_length=32, description="dropout rate(s) to compare with the baseline "
          "(0 <= p < 1; the baseline p=0 is always trained)"),
]  # fmt: skip
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Seeds = Annotated[
    list[Seed],
    Field(min_length=1, max_length=256, description="seed(s) for init, batch order and dropout masks; "
          "several give confidence intervals"),
]  # fmt: skip
Device = Annotated[
    str, Field(min_length=1, max_length=16, description="auto | cpu | cuda | cuda:N (auto: one GPU per model "
               "if present, else CPU)"),
]  # fmt: skip
Precision = Annotated[
    Literal["fp32", "bf16", "fp16"], Field(description="fp32 | bf16 | fp16 (bf16/fp16 autocast on CUDA only)")
]
Compile = Annotated[bool, Field(description="torch.compile the model (pays off on CUDA; slower on CPU)")]
Stack = Annotated[
    Literal["auto", "on", "streams", "off"],
    Field(description="how variants sharing a device train: auto (the fastest measured plan) | on (one stacked "
          "computation) | streams (one process, one CUDA graph each on its own stream) | off (one process each)"),
]  # fmt: skip
CudaGraphs = Annotated[
    Literal["auto", "on", "off"],
    Field(description="replay each training step and evaluation as a CUDA graph: auto (on CUDA) | on | off; a "
          "capture that fails trains eagerly"),
]  # fmt: skip
LimitTrain = Annotated[int, Field(ge=0, le=50_000, description="train on the first N training images (0 = all)")]
LimitTest = Annotated[int, Field(ge=0, le=10_000, description="evaluate on the first N test images (0 = all)")]
TrainEvalImages = Annotated[
    int,
    Field(ge=0, le=50_000, description="training images re-evaluated in eval mode (dropout off) each epoch for "
          "the generalization gap: a fixed class-balanced subset (0 = all)"),
]  # fmt: skip
Dataset = Annotated[
    Literal["cifar10", "fake"],
    Field(description="cifar10 | fake (fake: generated images, offline smoke run, accuracies meaningless)"),
]
Refresh = Annotated[bool, Field(description="ignore cached results and recompute every task")]
Mlflow = Annotated[
    bool, Field(description="also log each trained model to MLflow (needs the mlflow extra): to "
                "MLFLOW_TRACKING_URI if set, else to OUT/mlflow.db")
]  # fmt: skip
Folder = Annotated[str, Field(min_length=1, max_length=4096)]
DataDir = Annotated[
    Folder, Field(description="where CIFAR-10 lives or is downloaded to (reuses cifar-10-batches-py/ or the "
                  ".tar.gz); in a deployment run, a sub-folder of the worker's data root")
]  # fmt: skip
OutDir = Annotated[
    Folder, Field(description="parent folder of the per-run report folders; in a deployment run, a sub-folder "
                  "of the worker's output root")
]  # fmt: skip
CacheDir = Annotated[
    Folder, Field(description="folder for cached task results and checkpoints; in a deployment run, a "
                  "sub-folder of the worker's cache root")
]  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a trained model's numbers. Variants are `dataclasses.replace(cfg, ...)`."""

    dropout: float = 0.25  # p of both dropout layers; 0.0 is the baseline (no dropout layers at all)
    epochs: int = 8  # passes over the training set, the tutorial's 8
    batch_size: int = 32  # training mini-batch, the tutorial's 32
    lr: float = 1e-3  # Adam learning rate (Adam's default, as in the tutorial)
    seed: int = 0  # weight init, batch order and dropout masks all derive from it
    device: str = "cpu"  # resolved device for this variant: "cpu", "cuda:0", ...
    precision: str = "fp32"  # fp32 | bf16 | fp16 autocast (bf16/fp16 only on CUDA)
    compile: bool = False  # torch.compile the model (fewer kernel launches on CUDA; slower on CPU)
    limit_train: int = 0  # train on the first N training images; 0 = all 50,000
    limit_test: int = 0  # evaluate on the first N test images; 0 = all 10,000
    # Training images re-evaluated in eval mode (dropout off) after every epoch, for the honest
    # generalization gap: a fixed, seeded, class-balanced subset of this size; 0 = all of them.
    # 10,000 costs ~5 % of the run on CPU, all 50,000 ~25 % (benchmarks/bench_train.py prints both).
    train_eval_images: int = 10_000
    eval_batch_size: int = 256  # evaluation chunk: speed only (256 beats 1000 by 2-3x on CPU: cache)

    @property
    def label(self) -> str:
        """Readable variant name, used in task-run names, logs and reports."""
        return "baseline" if self.dropout == 0 else f"dropout={self.dropout:g}"

    @property
    def run_name(self) -> str:
        """Model and seed: names one training run, e.g. "dropout=0.25, seed=0"."""
        return f"{self.label}, seed={self.seed}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# TrainConfig field → its declared type (the flow parameter of the same name, or its element).
FIELD_TYPES: dict[str, Any] = {
    "dropout": Rate,
    "epochs": Epochs,
    "batch_size": BatchSize,
    "lr": LearningRate,
    "seed": Seed,
    "precision": Precision,
    "compile": Compile,
    "limit_train": LimitTrain,
    "limit_test": LimitTest,
    "train_eval_images": TrainEvalImages,
    "eval_batch_size": Annotated[int, Field(ge=1, le=65536)],
}
_ADAPTERS = {name: TypeAdapter(kind) for name, kind in FIELD_TYPES.items()}


def describe_error(error: dict) -> str:
    """One pydantic error → a short phrase: 'must be <= 1000 (got 100000)'."""
    ctx, kind, got = error.get("ctx") or {}, error["type"], error.get("input")
    phrases = {
        "greater_than_equal": lambda: f"must be >= {ctx.get('ge')}",
        "greater_than": lambda: f"must be > {ctx.get('gt')}",
        "less_than_equal": lambda: f"must be <= {ctx.get('le')}",
        "less_than": lambda: f"must be < {ctx.get('lt')}",
        "finite_number": lambda: "must be a finite number",
        "literal_error": lambda: f"must be one of {ctx.get('expected')}",
        "too_short": lambda: "needs at least one value",
        "too_long": lambda: f"takes at most {ctx.get('max_length')} values",
        "string_too_short": lambda: "must not be empty",
        "string_too_long": lambda: f"must be at most {ctx.get('max_length')} characters",
    }
    phrase = phrases.get(kind, lambda: error["msg"][0].lower() + error["msg"][1:])()
    return f"{phrase} (got {got!r})" if not isinstance(got, (dict, list)) else phrase


def flag(name: str) -> str:
    """The CLI flag of a parameter or TrainConfig field (a config's seed comes from --seeds)."""
    return {"seed": "--seeds"}.get(name, "--" + name.replace("_", "-"))


def check_value(name: str, value: Any) -> Any:
    """Validate one TrainConfig field against its declaration (strict: 3.0 is not an epoch count).

    Raises ValueError '--name: must be ...' (one line)."""
    try:
        return _ADAPTERS[name].validate_python(value, strict=True)
    except ValidationError as e:
        raise ValueError(f"{flag(name)}: {describe_error(e.errors()[0])}") from None


def check_train_config(cfg: TrainConfig) -> None:
    """Raise ValueError with a one-line, user-facing message for the first bad field."""
    for name in FIELD_TYPES:
        check_value(name, getattr(cfg, name))
    if cfg.precision != "fp32" and not cfg.device.startswith("cuda"):
        raise ValueError(f"--precision {cfg.precision} needs a CUDA device; use fp32 on {cfg.device}")
