"""The report's tables: Parquet schemas (each column's unit and meaning in its metadata) and their rows."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq

from dropout_lab.config import SETTINGS, TrainConfig, variant_of
from dropout_lab.core.data import CLASSES, DataInfo
from dropout_lab.core.records import EPOCH_COLUMNS, FRACTION, NATS, OBJECTIVE, RUNNING, SECONDS, TRAIN_EVAL
from dropout_lab.results import TrainResult

UTC_TS = pa.timestamp("us", tz="UTC")
KINDS = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}
ROLE = b"role"  # "metric": a number MLflow logs as a metric; "param": a setting it logs as a parameter


def field(name: str, kind: pa.DataType, unit: str | None = None, doc: str | None = None, role: str | None = None
          ) -> pa.Field:  # fmt: skip
    """A column; its unit (and what it means, where the name cannot say) in the field metadata, and for
    MLflow whether it is a metric or a parameter."""
    meta = {k: v for k, v in (("unit", unit), ("description", doc), ("role", role)) if v}
    return pa.field(name, kind, metadata=meta or None)


GAP_DOC = "eval-mode train accuracy minus test accuracy, same weights (the generalization gap)"
# Every table's keys: the variant (its name, whether it is the baseline, each compared setting's value)
# and the seed.
KEYS = [
    field("model", pa.string(), doc="the variant: baseline, dropout=0.25, ...", role="param"),
    field("baseline", pa.bool_(), doc="the variant every other one is compared with", role="param"),
    *(field(s.field, pa.float64() if s.numeric else pa.string(), s.unit, role="param") for s in SETTINGS),
    field("seed", pa.int64(), role="param"),
]


def _epoch_field(name: str, kind: type, unit: str | None, doc: str | None) -> pa.Field:
    role = "metric" if kind is float else None
    return field(name, KINDS[kind], unit, doc, role)


# The trainer's epoch record (core/train.py EPOCH_COLUMNS), with the gap it implies and the dataset.
PER_EPOCH_SCHEMA = pa.schema(
    [
        *KEYS,
        *(_epoch_field(*column) for column in EPOCH_COLUMNS),
        field("generalization_gap", pa.float64(), FRACTION, GAP_DOC, role="metric"),
        field("dataset", pa.string()),
    ]
)


def _best(r: TrainResult) -> dict:
    return max(r.history, key=lambda h: h["test_acc"])  # the first epoch reaching the best


def _val_best(r: TrainResult) -> dict | None:
    held_out = [h for h in r.history if h.get("val_acc") is not None]
    return max(held_out, key=lambda h: h["val_acc"]) if held_out else None


def _last(key: str):
    return lambda r, data: r.final[key]


# The per-model summary, each column declared once with how it is read off a result (and the data).
# Final = the last epoch's evaluation (the very numbers training logged); best = the best epoch's, so
# best >= final always.
SUMMARY_COLUMNS = [
    (field("final_train_eval_acc", pa.float64(), FRACTION, TRAIN_EVAL, "metric"), _last("train_eval_acc")),
    (field("final_train_running_acc", pa.float64(), FRACTION, RUNNING, "metric"), _last("train_running_acc")),
    (field("final_test_acc", pa.float64(), FRACTION, "the last epoch's evaluation", "metric"), _last("test_acc")),
    (field("best_test_acc", pa.float64(), FRACTION, "test-selected (optimistic): the best epoch's evaluation, the "
           "epoch chosen on the test set itself; reported, never tested (>= final_test_acc)", "metric"),
     lambda r, d: _best(r)["test_acc"]),
    (field("best_epoch", pa.int64(), role="metric"), lambda r, d: _best(r)["epoch"]),
    (field("n_val", pa.int64(), doc="training images held out, not trained on (--val-images)", role="param"),
     lambda r, d: r.config.val_images),
    (field("val_best_epoch", pa.int64(), doc="the epoch with the best held-out accuracy (--val-images; else null)",
           role="metric"), lambda r, d: (_val_best(r) or {}).get("epoch")),
    (field("val_selected_test_acc", pa.float64(), FRACTION, "test accuracy at val_best_epoch: an honest best epoch, "
           "chosen without the test set (null without --val-images)", "metric"),
     lambda r, d: (_val_best(r) or {}).get("test_acc")),
    (field("generalization_gap", pa.float64(), FRACTION, GAP_DOC, "metric"),
     lambda r, d: r.final["train_eval_acc"] - r.final["test_acc"]),
    (field("final_train_eval_loss", pa.float64(), NATS, TRAIN_EVAL, "metric"), _last("train_eval_loss")),
    (field("final_train_running_loss", pa.float64(), OBJECTIVE, f"the {OBJECTIVE}: {RUNNING}", "metric"),
     _last("train_running_loss")),
    (field("final_test_loss", pa.float64(), NATS, role="metric"), _last("test_loss")),
    (field("epochs", pa.int64(), role="param"), lambda r, d: r.config.epochs),
    (field("batch_size", pa.int64(), role="param"), lambda r, d: r.config.batch_size),
    (field("lr", pa.float64(), role="param"), lambda r, d: r.config.lr),
    (field("train_seconds", pa.float64(), SECONDS, "this training process's wall time (a resumed training's covers "
           "only the epochs it ran)", "metric"), lambda r, d: r.train_seconds),
    (field("epochs_seconds", pa.float64(), SECONDS, "every epoch's own time, summed over the history: the "
           "training's cost, also when epochs were restored from a checkpoint", "metric"),
     lambda r, d: sum(h["epoch_seconds"] for h in r.history)),
    (field("resumed_from_epoch", pa.int64(), role="param"), lambda r, d: r.resumed_from),
    (field("started_at", UTC_TS), lambda r, d: datetime.fromisoformat(r.started_at)),
    (field("finished_at", UTC_TS), lambda r, d: datetime.fromisoformat(r.finished_at)),
    (field("device", pa.string(), role="param"), lambda r, d: r.config.device),
    (field("precision", pa.string(), role="param"), lambda r, d: r.config.precision),
    (field("compiled", pa.bool_(), role="param"), lambda r, d: r.config.compile),
    (field("threads", pa.int64()), lambda r, d: r.threads),
    (field("stacked_variants", pa.int64(), role="param"), lambda r, d: r.stacked_with),
    (field("trained_as", pa.string(), "alone | stacked (one computation with the other variants on its device)"),
     lambda r, d: r.trained_as),
    (field("cuda_graphs", pa.bool_(), "training steps and evaluation replayed as CUDA graphs"),
     lambda r, d: r.cuda_graphs),
    (field("n_params", pa.int64(), role="param"), lambda r, d: r.n_params),
    (field("n_train", pa.int64(), role="param"), lambda r, d: r.n_train),
    (field("n_train_eval", pa.int64(), role="param"), lambda r, d: r.n_train_eval),
    (field("n_test", pa.int64(), role="param"), lambda r, d: r.n_test),
    (field("dataset", pa.string(), role="param"), lambda r, d: d.dataset),
    (field("data_verified", pa.bool_(), role="param"), lambda r, d: d.verified),
    (field("data_provenance", pa.string(), role="param"), lambda r, d: d.provenance),
]  # fmt: skip
SUMMARY_SCHEMA = pa.schema([*KEYS, *(f for f, _ in SUMMARY_COLUMNS)])


def named(schema: pa.Schema, role: str) -> list[str]:
    """The columns of `schema` with this MLflow role ("metric" or "param")."""
    return [f.name for f in schema if (f.metadata or {}).get(ROLE) == role.encode()]


P_DOC = "two-sided p-value"
FIXED = "fixed-sample: it ignores the looks (under --seeds auto not the decision's p-value; see repeated_p_value)"
STATISTICS_SCHEMA = pa.schema(
    [
        *KEYS[:-1],
        field("metric", pa.string()),
        field("unit", pa.string(), doc="unit of mean, std, the intervals and the differences in this row"),
        field("n_seeds", pa.int64()),
        field("mean", pa.float64()),
        field("std", pa.float64(), doc="sample standard deviation over seeds (ddof=1)"),
        field("ci95_low", pa.float64(), doc="95% Student-t interval of the mean (this model's own seeds)"),
        field("ci95_high", pa.float64()),
        field("design", pa.string(), doc="paired (every seed has both arms) or unpaired; primary test follows"),
        field("diff_vs_baseline", pa.float64(), doc="mean paired difference (variant - baseline, the variant's seeds)"),
        field("paired_n", pa.int64()),
        field("paired_diff_std", pa.float64(), doc="sd of the per-seed differences"),
        field("paired_diff_ci95_low", pa.float64(), doc=f"95% t-interval of the mean per-seed difference, {FIXED}"),
        field("paired_diff_ci95_high", pa.float64()),
        field("paired_t_p_value", pa.float64(), doc=f"{P_DOC}, paired t-test, {FIXED}"),
        field("sign_flip_p_value", pa.float64(), doc=f"{P_DOC}, sign-flip permutation test of the mean "
              f"difference, {FIXED}"),
        field("sign_flip_exact", pa.bool_(), doc="all 2^n sign patterns enumerated (else Monte Carlo)"),
        field("welch_diff_ci95_low", pa.float64(), doc=f"95% Welch interval (unpaired), {FIXED}"),
        field("welch_diff_ci95_high", pa.float64()),
        field("welch_p_value", pa.float64(), doc=f"{P_DOC}, Welch's unpaired t-test, {FIXED}"),
        field("holm_p_value", pa.float64(), doc="the primary fixed-sample p-value, Holm-adjusted over the family "
              f"(every claim of the verdict, else the variants on this metric); {FIXED}"),
        field("holm_family_size", pa.int64()),
        field("decision", pa.string(),
              doc="better | worse | equivalent (within the margin) | undecided; test accuracy and gap only"),
        field("repeated_p_value", pa.float64(), doc="the smallest per-claim level at which the running intersection "
              "of the repeated intervals makes this claim's call (superiority: clear of zero, for better, worse "
              "and undecided; equivalence: inside ±margin); valid however the looks were used to stop"),
        field("repeated_p_value_family", pa.float64(), doc="repeated_p_value times the claims (Bonferroni), at most "
              "1: compare it with 0.05"),
        field("claims", pa.int64(), doc="claims in the family (variants x test accuracy and gap)"),
        field("decision_ci_low", pa.float64(), doc="the interval the decision rests on: the looks' repeated "
              "confidence intervals intersected (the inverted sign-flip tests); all claims' hold together at 95% when "
              "each claim's differences are symmetric (train accuracy: the gap's and test accuracy's intervals added, "
              "which holds whenever they do; it describes a gap change, it is not a claim)"),
        field("decision_ci_high", pa.float64()),
        field("decision_level", pa.float64(), doc="1 minus the two-sided level the tests had spent by the last look "
              "(train accuracy: by both claims' tests)"),
        field("spent_alpha", pa.float64(), doc="the per-claim two-sided level spent over all the looks (0.05/claims; "
              "train accuracy: both claims')"),
        field("equivalence_p_value", pa.float64(),
              doc=f"{P_DOC}, two one-sided t-tests against ±margin at the last look, {FIXED}"),
        field("margin", pa.float64(), doc="the equivalence margin, in the metric's unit"),
        field("seeds_used", pa.int64(), doc="seeds with both arms at the last look"),
        field("looks", pa.int64(), doc="looks (waves of seeds) the decision saw"),
        field("power_alpha", pa.float64(), doc="the two-sided level the power columns use: the claim's last look's "
              "boundary (0.05 for the metrics that are not claims)"),
        field("min_detectable_diff_80_low", pa.float64(), doc="smallest true difference detected with 80% power at "
              "power_alpha with these seeds, for the low end of the spread's 95% interval (inf where the claim's "
              "sign-flip test cannot reach power_alpha with so few seeds)"),
        field("min_detectable_diff_80_high", pa.float64(), doc="the same for the high end"),
        field("seeds_needed_80_low", pa.float64(), doc="seeds to detect the observed difference with 80% power at "
              "power_alpha, for the low end of the spread's 95% interval (for a claim, at least the seeds whose 2^n "
              "sign patterns can reach power_alpha)"),
        field("seeds_needed_80_high", pa.float64(), doc="the same for the high end"),
    ]
)  # fmt: skip
PER_CLASS_SCHEMA = pa.schema(
    [*KEYS, field("class_name", pa.string()), field("accuracy", pa.float64(), FRACTION), field("dataset", pa.string())]
)
CONFUSION_SCHEMA = pa.schema(
    [
        *KEYS,
        field("true_class", pa.string()),
        field("predicted_class", pa.string()),
        field("count", pa.int64(), "test images", "the final evaluation's confusion matrix"),
        field("dataset", pa.string()),
    ]
)


def _keys(cfg: TrainConfig) -> dict:
    return {**variant_of(cfg).columns(), "seed": cfg.seed}


def per_epoch_rows(results: list[TrainResult], data: DataInfo) -> list[dict]:
    return [
        {**_keys(r.config), **{name: h.get(name) for name in PER_EPOCH_SCHEMA.names if name in h},
         "generalization_gap": h["train_eval_acc"] - h["test_acc"], "dataset": data.dataset}
        for r in results
        for h in r.history
    ]  # fmt: skip


def summary_rows(results: list[TrainResult], data: DataInfo) -> list[dict]:
    """One row per model, each column as SUMMARY_COLUMNS reads it."""
    return [{**_keys(r.config), **{f.name: get(r, data) for f, get in SUMMARY_COLUMNS}} for r in results]


def per_class_accuracy(confusion: list[list[int]]) -> list[float]:
    """Row-normalised diagonal: the fraction of each true class predicted correctly (nan if absent)."""
    out = []
    for i, row in enumerate(confusion):
        total = sum(row)
        out.append(row[i] / total if total else float("nan"))
    return out


def per_class_rows(results: list[TrainResult], data: DataInfo) -> list[dict]:
    return [
        {**_keys(r.config), "class_name": name, "accuracy": acc, "dataset": data.dataset}
        for r in results
        for name, acc in zip(CLASSES, per_class_accuracy(r.history[-1]["test_confusion"]), strict=True)
    ]


def confusion_rows(results: list[TrainResult], data: DataInfo) -> list[dict]:
    return [
        {**_keys(r.config), "true_class": CLASSES[i], "predicted_class": CLASSES[j], "count": count,
         "dataset": data.dataset}
        for r in results
        for i, row in enumerate(r.history[-1]["test_confusion"])
        for j, count in enumerate(row)
    ]  # fmt: skip


def display_rows(rows: list[dict], schema: pa.Schema) -> list[dict]:
    """Rows as a person reads them (a Prefect table artifact): fractions as percentages with two
    decimals, losses with four, seconds with one, from each column's unit in `schema`."""
    units = {f.name: (f.metadata or {}).get(b"unit", b"").decode() for f in schema}

    def cell(name: str, value):
        if not isinstance(value, float):
            return value
        unit = units.get(name, "")
        if unit == FRACTION:
            return f"{100 * value:.2f}%"
        if unit == SECONDS:
            return round(value, 1)
        return round(value, 4)

    return [{name: cell(name, value) for name, value in row.items()} for row in rows]


def write_table(rows: list[dict], schema: pa.Schema, path) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
