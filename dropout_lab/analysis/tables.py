"""The report's tables: Parquet schemas (each column's unit and meaning in its metadata) and their rows."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq

from dropout_lab.config import SETTINGS, TrainConfig, variant_of
from dropout_lab.core.data import CLASSES, DataInfo
from dropout_lab.results import TrainResult

UTC_TS = pa.timestamp("us", tz="UTC")
FRACTION, NATS, SECONDS = "fraction", "nats per image (mean cross-entropy)", "seconds"


def field(name: str, kind: pa.DataType, unit: str | None = None, doc: str | None = None) -> pa.Field:
    """A column; its unit (and what it means, where the name cannot say) in the field metadata."""
    meta = {k: v for k, v in (("unit", unit), ("description", doc)) if v}
    return pa.field(name, kind, metadata=meta or None)


GAP_DOC = "eval-mode train accuracy minus test accuracy, same weights (the generalization gap)"
RUNNING_DOC = "the tutorial's running mean over the epoch in train mode (dropout on); not the gap's train side"
# The running loss is the objective the variant trained on (core/model.py `criterion`), which can differ
# from the plain cross-entropy every evaluation measures.
OBJECTIVE = "training objective per image (the variant's criterion, core/model.py)"
RUNNING_LOSS_DOC = f"the {OBJECTIVE}: {RUNNING_DOC}"
TRAIN_EVAL_DOC = "the epoch's final weights in eval mode on n_train_eval training images (fixed class-balanced subset)"
VAL_DOC = "the epoch's final weights in eval mode on the held-out training images (--val-images; else null)"
# Every table's keys: the variant (its name, whether it is the baseline, each compared setting's value)
# and the seed.
KEYS = [
    field("model", pa.string(), doc="the variant: baseline, dropout=0.25, ..."),
    field("baseline", pa.bool_(), doc="the variant every other one is compared with"),
    *(field(s.field, pa.float64(), s.unit) for s in SETTINGS),
    field("seed", pa.int64()),
]

HISTORY_SCHEMA = pa.schema(
    [
        *KEYS,
        field("epoch", pa.int64()),
        field("train_running_loss", pa.float64(), OBJECTIVE, RUNNING_LOSS_DOC),
        field("train_running_acc", pa.float64(), FRACTION, RUNNING_DOC),
        field("train_eval_loss", pa.float64(), NATS, TRAIN_EVAL_DOC),
        field("train_eval_acc", pa.float64(), FRACTION, TRAIN_EVAL_DOC),
        field("test_loss", pa.float64(), NATS),
        field("test_acc", pa.float64(), FRACTION),
        field("generalization_gap", pa.float64(), FRACTION, GAP_DOC),
        field("val_loss", pa.float64(), NATS, VAL_DOC),
        field("val_acc", pa.float64(), FRACTION, VAL_DOC),
        field("epoch_seconds", pa.float64(), SECONDS),
        field("n_train", pa.int64()),
        field("n_train_eval", pa.int64()),
        field("n_test", pa.int64()),
        field("dataset", pa.string()),
    ]
)
SUMMARY_SCHEMA = pa.schema(
    [
        *KEYS,
        field("final_train_eval_acc", pa.float64(), FRACTION, TRAIN_EVAL_DOC),
        field("final_train_running_acc", pa.float64(), FRACTION, RUNNING_DOC),
        field("final_test_acc", pa.float64(), FRACTION, "the last epoch's evaluation"),
        field(
            "best_test_acc",
            pa.float64(),
            FRACTION,
            "test-selected (optimistic): the best epoch's evaluation, the "
            "epoch chosen on the test set itself; reported, never tested (>= final_test_acc)",
        ),
        field("best_epoch", pa.int64()),
        field("n_val", pa.int64(), doc="training images held out, not trained on (--val-images)"),
        field("val_best_epoch", pa.int64(), doc="the epoch with the best held-out accuracy (--val-images; else null)"),
        field(
            "val_selected_test_acc",
            pa.float64(),
            FRACTION,
            "test accuracy at val_best_epoch: an honest best "
            "epoch, chosen without the test set (null without --val-images)",
        ),
        field("generalization_gap", pa.float64(), FRACTION, GAP_DOC),
        field("final_train_eval_loss", pa.float64(), NATS, TRAIN_EVAL_DOC),
        field("final_train_running_loss", pa.float64(), OBJECTIVE, RUNNING_LOSS_DOC),
        field("final_test_loss", pa.float64(), NATS),
        field("epochs", pa.int64()),
        field("batch_size", pa.int64()),
        field("lr", pa.float64()),
        field(
            "train_seconds",
            pa.float64(),
            SECONDS,
            "this training process's wall time (a resumed training's covers only the epochs it ran)",
        ),
        field(
            "epochs_seconds",
            pa.float64(),
            SECONDS,
            "every epoch's own time, summed over the history: the "
            "training's cost, also when epochs were restored from a checkpoint",
        ),
        field("resumed_from_epoch", pa.int64()),
        field("started_at", UTC_TS),
        field("finished_at", UTC_TS),
        field("device", pa.string()),
        field("precision", pa.string()),
        field("compiled", pa.bool_()),
        field("threads", pa.int64()),
        field("stacked_variants", pa.int64()),
        field("trained_as", pa.string(), "alone | stacked (one computation with the other variants on its device)"),
        field("cuda_graphs", pa.bool_(), "training steps and evaluation replayed as CUDA graphs"),
        field("n_params", pa.int64()),
        field("n_train", pa.int64()),
        field("n_train_eval", pa.int64()),
        field("n_test", pa.int64()),
        field("dataset", pa.string()),
        field("data_verified", pa.bool_()),
        field("data_provenance", pa.string()),
    ]
)
P_DOC = "two-sided p-value"
STATISTICS_SCHEMA = pa.schema(
    [
        *KEYS[:-1],
        field("metric", pa.string()),
        field("unit", pa.string(), doc="unit of mean, std, the intervals and the differences in this row"),
        field("n_seeds", pa.int64()),
        field("mean", pa.float64()),
        field("std", pa.float64(), doc="sample standard deviation over seeds (ddof=1)"),
        field("ci95_low", pa.float64(), doc="95% Student-t interval of the mean"),
        field("ci95_high", pa.float64()),
        field("design", pa.string(), doc="paired (every seed has both arms) or unpaired; primary test follows"),
        field("diff_vs_baseline", pa.float64(), doc="mean(rate) - mean(baseline)"),
        field("paired_n", pa.int64()),
        field("paired_diff_std", pa.float64(), doc="sd of the per-seed differences"),
        field("paired_diff_ci95_low", pa.float64(), doc="95% t-interval of the mean per-seed difference"),
        field("paired_diff_ci95_high", pa.float64()),
        field("paired_t_p_value", pa.float64(), doc=P_DOC + ", paired t-test"),
        field("sign_flip_p_value", pa.float64(), doc=P_DOC + ", sign-flip permutation test of the mean difference"),
        field("sign_flip_exact", pa.bool_(), doc="all 2^n sign patterns enumerated (else Monte Carlo)"),
        field("welch_diff_ci95_low", pa.float64(), doc="95% Welch interval (unpaired)"),
        field("welch_diff_ci95_high", pa.float64()),
        field("welch_p_value", pa.float64(), doc=P_DOC + ", Welch's unpaired t-test"),
        field(
            "holm_p_value",
            pa.float64(),
            doc="the design's primary p-value, Holm-adjusted over the family: every "
            "claim of the verdict (variants x test accuracy and gap), else the variants on this metric",
        ),
        field("holm_family_size", pa.int64()),
        field(
            "decision",
            pa.string(),
            doc="better | worse | equivalent (within the margin) | undecided; test accuracy and gap only",
        ),
        field(
            "decision_ci_low",
            pa.float64(),
            doc="the interval the decision rests on: the looks' repeated "
            "confidence intervals intersected; all claims' hold together at 95%",
        ),
        field("decision_ci_high", pa.float64()),
        field("decision_level", pa.float64(), doc="the last look's interval's nominal two-sided level"),
        field(
            "equivalence_p_value",
            pa.float64(),
            doc=P_DOC + ", two one-sided t-tests against ±margin at the last look (not adjusted; the decision is)",
        ),
        field("margin", pa.float64(), doc="the equivalence margin, in the metric's unit"),
        field("seeds_used", pa.int64(), doc="seeds with both arms at the last look"),
        field("looks", pa.int64(), doc="looks (waves of seeds) the decision saw"),
        field(
            "min_detectable_diff_80_low",
            pa.float64(),
            doc="smallest true difference detected with 80% power at "
            "the claims' level, for the low end of the spread's 95% interval",
        ),
        field("min_detectable_diff_80_high", pa.float64(), doc="the same for the high end"),
        field(
            "seeds_needed_80_low",
            pa.float64(),
            doc="seeds to detect the observed difference with 80% power, for the low end of the spread's 95% interval",
        ),
        field("seeds_needed_80_high", pa.float64(), doc="the same for the high end"),
    ]
)
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


def history_rows(results: list[TrainResult], data: DataInfo) -> list[dict]:
    return [
        {
            **_keys(r.config),
            **{name: h[name] for name in HISTORY_SCHEMA.names if name in h},
            "generalization_gap": h["train_eval_acc"] - h["test_acc"],
            "dataset": data.dataset,
        }
        for r in results
        for h in r.history
    ]


def summary_rows(results: list[TrainResult], data: DataInfo) -> list[dict]:
    """One row per model. Final = the last epoch's evaluation (the very numbers training logged);
    best = the best epoch's, so best >= final always."""
    rows = []
    for r in results:
        last = r.history[-1]
        best = max(r.history, key=lambda h: h["test_acc"])  # first epoch reaching the best
        held_out = [h for h in r.history if h.get("val_acc") is not None]
        val_best = max(held_out, key=lambda h: h["val_acc"]) if held_out else None
        rows.append(
            {
                **_keys(r.config),
                "final_train_eval_acc": last["train_eval_acc"],
                "final_train_running_acc": last["train_running_acc"],
                "final_test_acc": last["test_acc"],
                "best_test_acc": best["test_acc"],
                "best_epoch": best["epoch"],
                "n_val": r.config.val_images,
                "val_best_epoch": val_best["epoch"] if val_best else None,
                "val_selected_test_acc": val_best["test_acc"] if val_best else None,
                "generalization_gap": last["train_eval_acc"] - last["test_acc"],
                "final_train_eval_loss": last["train_eval_loss"],
                "final_train_running_loss": last["train_running_loss"],
                "final_test_loss": last["test_loss"],
                "epochs": r.config.epochs,
                "batch_size": r.config.batch_size,
                "lr": r.config.lr,
                "train_seconds": r.train_seconds,
                "epochs_seconds": sum(h["epoch_seconds"] for h in r.history),
                "resumed_from_epoch": r.resumed_from,
                "started_at": datetime.fromisoformat(r.started_at),
                "finished_at": datetime.fromisoformat(r.finished_at),
                "device": r.config.device,
                "precision": r.config.precision,
                "compiled": r.config.compile,
                "threads": r.threads,
                "stacked_variants": r.stacked_with,
                "trained_as": r.trained_as,
                "cuda_graphs": r.cuda_graphs,
                "n_params": r.n_params,
                "n_train": r.n_train,
                "n_train_eval": r.n_train_eval,
                "n_test": r.n_test,
                "dataset": data.dataset,
                "data_verified": data.verified,
                "data_provenance": data.provenance,
            }
        )
    return rows


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
