"""Every run parameter declared once, the compared settings, and the configuration of one training.

Each parameter's type, bounds and help live here as an `Annotated` pydantic type, and the flow's
parameters are the signature of `compare_parameters`: the flow (flows/compare.py) takes that
signature, so Prefect's deployment form and its validation, the CLI flags and their help, and
`check_train_config` all derive from these declarations. Nothing here imports torch or Prefect.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError

# Seeds feed torch/numpy generators and int64 Parquet columns: 2^32 - 1 fits all of them.
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class NotInResult:
    """Marks a flow parameter that changes no number of a report (where things go, how they run), with
    the reason. Every other parameter is part of the report folder's key (naming.run_folder_name), and
    tests/test_integrity.py walks every parameter to hold both to it."""

    why: str


def counted(n: int, noun: str) -> str:
    """`1 epoch`, `8 epochs`, `1,000 images`: a count and its noun (given singular) as a sentence says it."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def value_text(value: float | str) -> str:
    """A setting's value as names show it: a word as itself; a number as the shortest text that reads
    back as this very float (0.25, 0.1000001, 1e-05), so two values never print alike; a whole number
    without '.0'."""
    return value if isinstance(value, str) else repr(float(value)).removesuffix(".0")


Epochs = Annotated[int, Field(ge=1, le=1000, description="training epochs")]
BatchSize = Annotated[int, Field(ge=1, le=65536, description="training batch size")]
LearningRate = Annotated[float, Field(gt=0, le=10, allow_inf_nan=False, description="Adam learning rate")]
Rate = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
WeightDecay = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
LabelSmoothing = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
SEEDS_DOC = ("seed(s) for init, batch order and dropout masks, or auto: waves of 5 seeds (0, 1, 2, ...) until every "
             "claim is decided or --max-seeds (default: auto on a GPU, 0 on CPU)")  # fmt: skip
Seeds = Annotated[list[Seed], Field(min_length=1, max_length=256)]
SeedsOrAuto = Annotated[Seeds | Literal["auto"] | None, Field(description=SEEDS_DOC)]
WAVE = 5  # seeds per wave of --seeds auto: the first look needs a few to have a spread at all
MaxSeeds = Annotated[
    int,
    Field(
        ge=WAVE,
        le=256,
        description="with --seeds auto: the most seeds per model (waves of 5 up to it)",
        json_schema_extra={"bounds": f"seeds come in waves of {WAVE}, each wave a look: at least one wave"},
    ),
]
Margin = Annotated[
    float,
    Field(gt=0, le=50, allow_inf_nan=False, description="equivalence margin in points of test accuracy and gap: a "
          "difference shown to lie within ±margin is called equivalent"),
]  # fmt: skip
Device = Annotated[
    str, Field(min_length=1, max_length=16, description="auto | cpu | cuda | cuda:N (auto: one GPU per model "
               "if present, else CPU)"),
]  # fmt: skip
HOW_NOT_WHAT = (
    "how variants train, not what: stacked and graphed steps compute each Net's own maths (tests/"
    "test_stacked.py, tests/test_graphs.py) and share one checkpoint folder per variant"
)
Precision = Annotated[
    Literal["fp32", "bf16", "fp16"], Field(description="fp32 | bf16 | fp16 (bf16/fp16 autocast on CUDA only)")
]
Compile = Annotated[bool, Field(description="torch.compile the model (pays off on CUDA; slower on CPU)")]
Stack = Annotated[
    Literal["auto", "on", "off"],
    Field(description="how variants sharing a device train: auto (the fastest measured plan) | on (one stacked "
          "computation) | off (one process each)"),
    NotInResult(HOW_NOT_WHAT),
]  # fmt: skip
CudaGraphs = Annotated[
    Literal["auto", "on", "off"],
    Field(description="replay each training step and evaluation as a CUDA graph: auto (on CUDA) | on | off; a "
          "capture that fails trains eagerly"),
    NotInResult(HOW_NOT_WHAT),
]  # fmt: skip
GRAPH_MODES = get_args(get_args(CudaGraphs)[0])  # as declared


LimitTrain = Annotated[int, Field(ge=0, le=50_000, description="train on the first N training images (0 = all)")]
LimitTest = Annotated[int, Field(ge=0, le=10_000, description="evaluate on the first N test images (0 = all)")]
TrainEvalImages = Annotated[
    int,
    Field(ge=0, le=50_000, description="training images re-evaluated in eval mode (dropout off) each epoch for "
          "the generalization gap: a fixed class-balanced subset (0 = all)"),
]  # fmt: skip
ValImages = Annotated[
    int,
    Field(ge=0, le=25_000, description="training images held out (a fixed class-balanced subset, not trained on) "
          "to choose the best epoch honestly: the report's val-selected test accuracy (0 = none)"),
]  # fmt: skip
# Each dataset's (training, test) images: what --limit-train, --limit-test and --val-images can take from.
DATASET_IMAGES = {"cifar10": (50_000, 10_000), "fake": (2_000, 500)}
Dataset = Annotated[
    Literal["cifar10", "fake"],
    Field(description="cifar10 | fake (fake: generated images, offline smoke run, accuracies meaningless)"),
]
Refresh = Annotated[
    bool, Field(description="ignore cached results and recompute every task"),
    NotInResult("recomputes the very results a cached run would use"),
]  # fmt: skip
LogModels = Annotated[
    bool, Field(description="also log each model the run history records as an MLflow logged model (its network, "
                "mlflow.pytorch, with its signature; a few seconds per model)"),
    NotInResult("what the run history keeps of each model, not its numbers"),
]  # fmt: skip
Folder = Annotated[str, Field(min_length=1, max_length=4096)]
DataDir = Annotated[
    Folder, Field(description="where CIFAR-10 lives or is downloaded to (reuses cifar-10-batches-py/ or the "
                  ".tar.gz); in a deployment run, a sub-folder of the worker's data root"),
    NotInResult("where the data is found: the data itself is keyed by its files' measured checksums"),
]  # fmt: skip
OutDir = Annotated[
    Folder, Field(description="parent folder of the per-run report folders; in a deployment run, a sub-folder "
                  "of the worker's output root"),
    NotInResult("where the report folders go"),
]  # fmt: skip
CacheDir = Annotated[
    Folder, Field(description="folder for cached task results and checkpoints; in a deployment run, a "
                  "sub-folder of the worker's cache root"),
    NotInResult("where cached results and checkpoints are kept; each is keyed by what it holds"),
]  # fmt: skip


def setting(off: float | str, value: Any, help: str, words: str, short: str, plural: str, unit: str, colormap: str,
            stackable: bool = False, default: float | str | None = None) -> Any:  # fmt: skip
    """A TrainConfig field that a run can compare, declared once: its baseline value (`off`), the type of
    one value (`value`: a bounded number, or a `Literal` of words), its help, how it prints (`words`:
    verdicts and legends; `short`: experiment names; `plural`: a family of its variants; `unit`: its
    Parquet column; `colormap`: its variants in figures) and whether variants that differ in it can train
    as one stacked computation (core/stacked.py batches per-variant dropout only). `default`: a value the
    run compares when no setting is named (dropout's 0.25, the tutorial's). The recipe code that uses the
    field (core/model.py) is the only other place that knows it."""
    meta = Setting("", off, value, help, words, short, plural, unit, colormap, stackable)
    return dataclasses.field(default=off if default is None else default, metadata={"setting": meta})


@dataclass(frozen=True)
class Setting:
    """A compared setting (declared with `setting`): the flow parameter of its name lists the values a run
    compares with the baseline, one variant per value; `--variant` combines settings."""

    field: str  # the TrainConfig field and the flow parameter listing its values
    off: float | str  # the baseline's value
    value: Any  # the declared type of one value
    help: str
    words: str  # in verdicts and legends: "dropout 0.25"
    short: str  # in experiment and flow-run names: "p0.25", "augment=flip-crop"
    plural: str  # a family of this setting's variants alone: "Holm-adjusted over 3 rates"
    unit: str  # of its Parquet column
    colormap: str  # matplotlib colormap of its variants in figures (the baseline is red)
    stackable: bool

    @property
    def choices(self) -> tuple[str, ...]:
        """The words a word setting takes (its `Literal`); () for a number."""
        inner = get_args(self.value)[0] if get_origin(self.value) is Annotated else self.value
        return get_args(inner) if get_origin(inner) is Literal else ()

    @property
    def numeric(self) -> bool:
        return not self.choices

    def parse(self, value: Any) -> float | str:
        """A value as this setting holds it (a history's text, a float from a form): float or word."""
        return float(value) if self.numeric else str(value)

    def rank(self, value: float | str) -> float:
        """Report order: numbers by value, words as declared."""
        return float(value) if self.numeric else float(self.choices.index(value))

    def tag(self, values: list) -> str:
        """`p0.1+0.5`, `augment=flip-crop`: the setting's values in experiment names."""
        return f"{self.short}{'=' * (not self.numeric)}{'+'.join(map(value_text, values))}"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a trained model's numbers. Variants are `dataclasses.replace(cfg, ...)`.
    The compared settings are the fields declared with `setting` (SETTINGS, in this order)."""

    # p of both dropout layers; 0.0: no dropout layers at all
    dropout: float = setting(0.0, Rate, "dropout rate(s) to compare with the baseline (0 <= p < 1)", "dropout", "p",
                             "rates", "probability", "Blues", stackable=True, default=0.25)  # fmt: skip
    epochs: int = 8  # passes over the training set, the tutorial's 8
    batch_size: int = 32  # training mini-batch, the tutorial's 32
    lr: float = 1e-3  # Adam learning rate (Adam's default, as in the tutorial)
    # Adam's L2 penalty (torch.optim.Adam's weight_decay); 0.0: none
    weight_decay: float = setting(0.0, WeightDecay, "weight decay(s) to compare with the baseline: Adam's L2 penalty "
                                  "as torch applies it (0 <= w <= 1)", "weight decay", "wd", "weight decays",
                                  "L2 coefficient", "Greens")  # fmt: skip
    # cross-entropy's label smoothing in the training objective; 0.0: none
    label_smoothing: float = setting(0.0, LabelSmoothing, "label smoothing(s) to compare with the baseline: "
                                     "cross-entropy's label_smoothing in the training objective (0 <= s < 1)",
                                     "label smoothing", "ls", "label smoothings", "fraction", "Purples")  # fmt: skip
    # the training batch's transform (core/model.py `augmentation`); evaluation never augments
    augment: str = setting("none", Literal["none", "flip-crop"], "augmentation(s) to compare with the baseline's "
                           "none: flip-crop (each training image padded by 4 pixels, cropped back to 32x32 at a "
                           "random offset and mirrored half the time, on the device)", "augmentation", "augment",
                           "augmentations", "training-batch transform", "Oranges")  # fmt: skip
    # the optimizer (core/model.py `optimizer`); sgd: SGD with momentum 0.9 at 10 x lr
    optimizer: str = setting("adam", Literal["adam", "sgd"], "optimizer(s) to compare with the baseline's adam (the "
                             "tutorial's): sgd (SGD with momentum 0.9 at 10 x --lr: 0.01 by default)", "optimizer",
                             "optimizer", "optimizers", "torch.optim algorithm", "YlOrBr")  # fmt: skip
    seed: int = 0  # weight init, batch order and dropout masks all derive from it
    device: str = "cpu"  # resolved device for this variant: "cpu", "cuda:0", ...
    precision: str = "fp32"  # fp32 | bf16 | fp16 autocast (bf16/fp16 only on CUDA)
    compile: bool = False  # torch.compile the model
    limit_train: int = 0  # train on the first N training images; 0 = all 50,000
    limit_test: int = 0  # evaluate on the first N test images; 0 = all 10,000
    # Training images re-evaluated in eval mode (dropout off) after every epoch, for the honest
    # generalization gap: a fixed, seeded, class-balanced subset of this size; 0 = all of them.
    train_eval_images: int = 10_000
    # Training images held out as a validation set (not trained on; a fixed class-balanced subset) to
    # choose a best epoch without looking at the test set; 0 = none.
    val_images: int = 0
    eval_batch_size: int = 256  # evaluation chunk: speed only

    @property
    def label(self) -> str:
        """The variant's name, used in task-run names, logs and reports: `baseline`, `dropout=0.25`."""
        return variant_of(self).name

    @property
    def run_name(self) -> str:
        """Variant and seed: names one training run, e.g. "dropout=0.25, seed=0"."""
        return f"{self.label}, seed={self.seed}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- what a run compares ---------------------------------------------------------------------------

SETTINGS: tuple[Setting, ...] = tuple(
    dataclasses.replace(f.metadata["setting"], field=f.name)
    for f in dataclasses.fields(TrainConfig)
    if "setting" in f.metadata
)


@dataclass(frozen=True)
class Variant:
    """One compared model: the settings in which it differs from the baseline (none: the baseline).

    Everything downstream (statistics, report, figures, history, MLflow, stacking) keys on variants,
    never on a setting's value: a variant with weight decay and no dropout is not the baseline."""

    settings: tuple[tuple[str, float | str], ...] = ()  # (field, value), in SETTINGS order

    @property
    def is_baseline(self) -> bool:
        return not self.settings

    @property
    def name(self) -> str:
        """`baseline`, `dropout=0.25`: the `model` column and the task-run names."""
        return ", ".join(f"{field}={value_text(value)}" for field, value in self.settings) or "baseline"

    @property
    def words(self) -> str:
        """`baseline`, `dropout 0.25`: verdicts and legends."""
        words = [f"{SETTING[field].words} {value_text(value)}" for field, value in self.settings]
        return " and ".join(words) or "baseline"

    def columns(self) -> dict:
        """The variant's columns in every table: its name, whether it is the baseline, each setting's value."""
        values = dict(self.settings)
        settings = {s.field: values.get(s.field, s.off) for s in SETTINGS}
        return {"model": self.name, "baseline": self.is_baseline, **settings}

    def order(self) -> tuple:
        """Report order: each setting's variants by value, in SETTINGS order, the baseline last."""
        return (self.is_baseline, [(FIELDS.index(field), SETTING[field].rank(value)) for field, value in self.settings])


SETTING = {s.field: s for s in SETTINGS}
FIELDS = [s.field for s in SETTINGS]
BASELINE = Variant()
DEFAULT = Variant(tuple((f.name, f.default) for f in dataclasses.fields(TrainConfig)
                        if f.name in SETTING and f.default != SETTING[f.name].off))  # fmt: skip


def variant_of(values: TrainConfig | Mapping) -> Variant:
    """The variant of a config, or of a report/history row (a setting's column that a row lacks or holds
    empty, as in a history recorded before that setting existed, is at the baseline's value)."""
    if isinstance(values, Mapping):
        value = {s.field: s.parse(s.off if values.get(s.field) is None else values[s.field]) for s in SETTINGS}
    else:
        value = {s.field: s.parse(getattr(values, s.field)) for s in SETTINGS}
    return Variant(tuple((s.field, value[s.field]) for s in SETTINGS if value[s.field] != s.off))


def parse_variant(text: str) -> Variant:
    """`dropout=0.25,augment=flip-crop` → the variant with those settings (the others at the baseline's).
    ValueError (one line) for a setting that does not exist, a value it does not take, a setting twice."""
    values: dict[str, float | str] = {}
    for part in text.split(","):
        name, sep, value = (s.strip() for s in part.partition("="))
        field = name.replace("-", "_")
        if not sep or field not in SETTING:
            raise ValueError(f"{part.strip()!r} is not SETTING=VALUE of a compared setting ({', '.join(FIELDS)})")
        if field in values:
            raise ValueError(f"{name} given twice in {text!r}")
        s = SETTING[field]
        try:
            values[field] = TypeAdapter(s.value).validate_python(value if s.choices else float(value))
        except (ValueError, ValidationError) as e:
            problem = describe_error(e.errors()[0]) if isinstance(e, ValidationError) else f"not a number ({value!r})"
            raise ValueError(f"{name}: {problem}") from None
    return variant_of(values)


def compared_variants(params: Mapping) -> list[Variant]:
    """The variants a run compares, in report order, the baseline always among them: one per value of each
    setting's flow parameter (a value at the setting's `off` is the baseline) and one per `--variant`;
    when no setting is named at all, each setting's `default` (dropout 0.25)."""
    found = {variant_of({s.field: v}) for s in SETTINGS for v in params.get(s.field) or ()}
    found |= {parse_variant(text) for text in params.get("variant") or ()}
    named = any(params.get(s.field) for s in SETTINGS) or params.get("variant")
    return sorted({*(found if named else {DEFAULT}), BASELINE}, key=Variant.order)


def comparison_words(variants) -> str:
    """What a run compares, for titles: `dropout 0.1, 0.5 vs baseline`, `dropout 0.25; weight decay 0.0005 vs
    baseline` (the compared settings and their values, in SETTINGS order); with a variant that combines
    settings, the variants one by one (`dropout 0.25; augmentation flip-crop; dropout 0.25 and augmentation
    flip-crop vs baseline`): `and` joins the settings of one model only."""
    if any(len(v.settings) > 1 for v in variants):
        return f"{'; '.join(v.words for v in sorted(variants, key=Variant.order) if not v.is_baseline)} vs baseline"
    parts = [
        f"{s.words} {', '.join(map(value_text, values))}" for s in SETTINGS if (values := values_alone(variants, s))
    ]
    return f"{'; '.join(parts) or 'nothing'} vs baseline"


def values_alone(variants, setting: Setting) -> list:
    """The setting's values among the variants that change it alone, in its order (names and titles list
    these per setting; a variant that combines settings is named whole)."""
    return sorted({v for var in variants if len(var.settings) == 1 for f, v in var.settings if f == setting.field},
                  key=setting.rank)  # fmt: skip


def family_noun(variants: list[Variant]) -> str:
    """'rates' when every compared variant varies the same one setting, else 'variants'."""
    fields = {field for v in variants for field, _ in v.settings}
    single = len(fields) == 1 and all(len(v.settings) == 1 for v in variants)
    return SETTING[fields.pop()].plural if single else "variants"


def configure(base: TrainConfig, variant: Variant, **changes: Any) -> TrainConfig:
    """`base` as `variant`: every compared setting at the baseline's value but the variant's own."""
    return dataclasses.replace(base, **{**{s.field: s.off for s in SETTINGS}, **dict(variant.settings), **changes})


def seed_waves(max_seeds: int) -> list[list[int]]:
    """--seeds auto: seeds 0, 1, 2, ... in waves of WAVE, the last one cut at max_seeds."""
    return [list(range(start, min(start + WAVE, max_seeds))) for start in range(0, max_seeds, WAVE)]


@dataclass(frozen=True)
class Design:
    """The statistical design the decisions follow: `looks` = seeds available at each look (empty: one
    look at all seeds, i.e. seeds fixed in advance), `max_seeds` = the planned maximum (0: the seeds
    there are), and the equivalence margin as a fraction."""

    looks: tuple[int, ...] = ()
    max_seeds: int = 0
    margin: float = 0.01
    plan: str = ""  # what the first look forecast (analysis/plan.py), shown beside the outcome

    @property
    def sequential(self) -> bool:
        """Seeds added in waves until decided (`--seeds auto`), rather than fixed in advance."""
        return self.max_seeds > 0

    def key(self) -> tuple:
        """What of the design changes a report's numbers, known before any look: how seeds come (and
        their budget) and the margin. The looks are where the run stopped, decided by the data."""
        return ("waves", self.max_seeds, self.margin) if self.sequential else ("fixed", self.margin)


def design_of(params: Mapping) -> Design:
    """The design a run's parameters ask for, before any look (its looks are added as they happen)."""
    auto = params["seeds"] == "auto"
    return Design((), params["max_seeds"] if auto else 0, params["margin"] / 100)


# --- the flow's parameters -------------------------------------------------------------------------


def _variant_text(text: str) -> str:
    parse_variant(text)  # ValueError: pydantic's one-line refusal, in the CLI, the UI's run and the flow
    return text


Variants = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=400), AfterValidator(_variant_text)]],
    Field(max_length=32, description="variant(s) that combine settings, compared with the baseline like the others: "
          "SETTING=VALUE,... (e.g. dropout=0.25,augment=flip-crop)"),
]  # fmt: skip


def compare_parameters(
    *,
    data_dir: DataDir = "data",
    out: OutDir = "artifacts",
    epochs: Epochs = TrainConfig.epochs,
    batch_size: BatchSize = TrainConfig.batch_size,
    lr: LearningRate = TrainConfig.lr,
    variant: Variants = [],  # noqa: B006
    seeds: SeedsOrAuto = None,
    max_seeds: MaxSeeds = 20,
    margin: Margin = 1.0,
    device: Device = "auto",
    precision: Precision = "fp32",
    compile: Compile = False,
    stack: Stack = "auto",
    cuda_graphs: CudaGraphs = "auto",
    limit_train: LimitTrain = 0,
    limit_test: LimitTest = 0,
    train_eval_images: TrainEvalImages = TrainConfig.train_eval_images,
    val_images: ValImages = TrainConfig.val_images,
    dataset: Dataset = "cifar10",
    refresh: Refresh = False,
    cache_dir: CacheDir = ".dropout-lab",
    log_models: LogModels = False,
) -> None:
    """The parameters of the `compare` flow, declared once: their order, types, bounds, help and defaults
    (each compared setting's list, before `variant`, comes from its declaration: `setting_parameter`)."""


def setting_parameter(s: Setting) -> inspect.Parameter:
    """A compared setting's flow parameter: the values to compare with the baseline, none by default (a
    setting with a `default` is compared at it when no setting is named)."""
    default = dict(DEFAULT.settings).get(s.field)
    also = f"; {value_text(default)} when no setting is named" if default is not None else ""
    kind = Annotated[list[s.value], Field(max_length=32, description=f"{s.help}{also}")]  # type: ignore[valid-type]
    return inspect.Parameter(s.field, inspect.Parameter.KEYWORD_ONLY, default=[], annotation=kind)


# The declaration as Prefect and pydantic need it: annotations as objects, not this module's strings.
_DECLARED = list(inspect.signature(compare_parameters, eval_str=True).parameters.values())
_AT = [p.name for p in _DECLARED].index("variant")
PARAMETERS = inspect.Signature([*_DECLARED[:_AT], *map(setting_parameter, SETTINGS), *_DECLARED[_AT:]])


def help_text(annotation: Any, key: str = "description") -> str:
    """The description declared with a parameter's type (`key="bounds"`: why its bounds are where they are)."""
    found = [getattr(m, "description", None) if key == "description" else (m.json_schema_extra or {}).get(key)
             for m in getattr(annotation, "__metadata__", ()) if hasattr(m, "json_schema_extra")]  # fmt: skip
    found = [f for f in found if f]
    return found[-1] if found else ""


def element_type(annotation: Any) -> Any:
    """`Rates` → `Rate`: the declared type of one value of a list parameter (the annotation itself otherwise)."""
    inner = get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation
    if get_origin(inner) in (Union, UnionType):  # `Seeds | Literal["auto"] | None`: the list's element
        return next((element_type(part) for part in get_args(inner) if element_type(part) is not part), annotation)
    return get_args(inner)[0] if get_origin(inner) is list else annotation


def _field_types() -> dict[str, Any]:
    """TrainConfig field → its declared type: the flow parameter of the same name (a list parameter's
    element for a compared setting), `Seed` for the seed. The device is resolved, not declared."""
    params = {n: p.annotation for n, p in PARAMETERS.parameters.items()}
    types: dict[str, Any] = {"seed": Seed, "eval_batch_size": Annotated[int, Field(ge=1, le=65536)]}
    for f in dataclasses.fields(TrainConfig):
        if f.name in params and f.name != "device":
            types[f.name] = element_type(params[f.name])
    return {f.name: types[f.name] for f in dataclasses.fields(TrainConfig) if f.name in types}


FIELD_TYPES: dict[str, Any] = _field_types()
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
        "value_error": lambda: str(ctx.get("error")),
    }
    phrase = phrases.get(kind, lambda: error["msg"][0].lower() + error["msg"][1:])()
    return f"{phrase} (got {got!r})" if not isinstance(got, (dict, list)) and kind != "value_error" else phrase


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
    if cfg.val_images and cfg.limit_train and cfg.val_images >= cfg.limit_train:
        raise ValueError(f"--val-images {cfg.val_images} leaves nothing to train on of --limit-train "
                         f"{cfg.limit_train} images")  # fmt: skip
    if cfg.precision != "fp32" and not cfg.device.startswith("cuda"):
        raise ValueError(f"--precision {cfg.precision} needs a CUDA device; use fp32 on {cfg.device}")
