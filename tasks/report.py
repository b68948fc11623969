"""The comparison report: Parquet tables, PNG figures and a markdown summary. No prefect here."""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from filelock import FileLock  # noqa: E402

from tasks.data import DataInfo  # noqa: E402
from tasks.evaluate import per_class_accuracy  # noqa: E402
from tasks.locks import remove_dead_leftovers  # noqa: E402
from tasks.model import CLASSES  # noqa: E402
from tasks.results import TrainResult  # noqa: E402
from tasks.stats import mean_ci, statistics_rows, verdict  # noqa: E402

COLORS = {"baseline": "#d62728"}  # baseline red; dropout variants from a blue ramp
UTC_TS = pa.timestamp("us", tz="UTC")
FRACTION, NATS, SECONDS = "fraction", "nats per image (mean cross-entropy)", "seconds"


def field(name: str, kind: pa.DataType, unit: str | None = None, doc: str | None = None) -> pa.Field:
    """A column; its unit (and what it means, where the name cannot say) in the field metadata."""
    meta = {k: v for k, v in (("unit", unit), ("description", doc)) if v}
    return pa.field(name, kind, metadata=meta or None)


GAP_DOC = "eval-mode train accuracy minus test accuracy, same weights (the generalization gap)"
RUNNING_DOC = "the tutorial's running mean over the epoch in train mode (dropout on); not the gap's train side"
TRAIN_EVAL_DOC = "the epoch's final weights in eval mode on n_train_eval training images (fixed class-balanced subset)"
KEYS = [field("model", pa.string()), field("dropout", pa.float64(), "probability"), field("seed", pa.int64())]

HISTORY_SCHEMA = pa.schema(
    [
        *KEYS,
        field("epoch", pa.int64()),
        field("train_running_loss", pa.float64(), NATS, RUNNING_DOC),
        field("train_running_acc", pa.float64(), FRACTION, RUNNING_DOC),
        field("train_eval_loss", pa.float64(), NATS, TRAIN_EVAL_DOC),
        field("train_eval_acc", pa.float64(), FRACTION, TRAIN_EVAL_DOC),
        field("test_loss", pa.float64(), NATS),
        field("test_acc", pa.float64(), FRACTION),
        field("generalization_gap", pa.float64(), FRACTION, GAP_DOC),
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
        field("best_test_acc", pa.float64(), FRACTION, "the best epoch's evaluation (>= final_test_acc)"),
        field("best_epoch", pa.int64()),
        field("generalization_gap", pa.float64(), FRACTION, GAP_DOC),
        field("final_train_eval_loss", pa.float64(), NATS, TRAIN_EVAL_DOC),
        field("final_train_running_loss", pa.float64(), NATS, RUNNING_DOC),
        field("final_test_loss", pa.float64(), NATS),
        field("epochs", pa.int64()),
        field("batch_size", pa.int64()),
        field("lr", pa.float64()),
        field("train_seconds", pa.float64(), SECONDS),
        field("resumed_from_epoch", pa.int64()),
        field("started_at", UTC_TS),
        field("finished_at", UTC_TS),
        field("device", pa.string()),
        field("precision", pa.string()),
        field("compiled", pa.bool_()),
        field("threads", pa.int64()),
        field("stacked_variants", pa.int64()),
        field("trained_as", pa.string(), "alone | stacked | streams (side by side on CUDA streams, one process)"),
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
        field("dropout", pa.float64(), "probability"),
        field("model", pa.string()),
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
        field("holm_p_value", pa.float64(), doc="the design's primary p-value, Holm-adjusted over the rates"),
        field("holm_family_size", pa.int64()),
        field("min_detectable_diff_80", pa.float64(), doc="smallest true difference detected with 80% power"),
        field("seeds_needed_80", pa.float64(), doc="seeds to detect the observed difference with 80% power"),
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


def _keys(cfg) -> dict:
    return {"model": cfg.label, "dropout": float(cfg.dropout), "seed": cfg.seed}


def history_rows(results: list[TrainResult], data: DataInfo) -> list[dict]:
    return [
        {
            **_keys(r.config),
            **{name: h[name] for name in HISTORY_SCHEMA.names if name in h},
            "generalization_gap": h["train_eval_acc"] - h["test_acc"],
            "n_train": r.n_train,
            "n_train_eval": r.n_train_eval,
            "n_test": r.n_test,
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
        rows.append(
            {
                **_keys(r.config),
                "final_train_eval_acc": last["train_eval_acc"],
                "final_train_running_acc": last["train_running_acc"],
                "final_test_acc": last["test_acc"],
                "best_test_acc": best["test_acc"],
                "best_epoch": best["epoch"],
                "generalization_gap": last["train_eval_acc"] - last["test_acc"],
                "final_train_eval_loss": last["train_eval_loss"],
                "final_train_running_loss": last["train_running_loss"],
                "final_test_loss": last["test_loss"],
                "epochs": r.config.epochs,
                "batch_size": r.config.batch_size,
                "lr": r.config.lr,
                "train_seconds": r.train_seconds,
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


def _color(dropout: float) -> str:
    if dropout == 0:
        return COLORS["baseline"]
    return plt.get_cmap("Blues")(0.45 + 0.5 * min(dropout / 0.5, 1.0))


def _by_rate(items: list, rate_of) -> dict[float, list]:
    groups: dict[float, list] = {}
    for item in items:
        groups.setdefault(rate_of(item), []).append(item)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] == 0, kv[0])))  # baseline last


def _band(ax, x, runs: np.ndarray, color, style: str, label: str, clip=(0.0, 100.0), **line) -> None:
    """Mean over seeds (rows of `runs`), with a shaded 95% t-interval when there are 2+ seeds,
    clipped to the quantity's possible range (an accuracy band never dips below 0%)."""
    mean = runs.mean(axis=0)
    ax.plot(x, mean, style, color=color, ms=4, label=label, **line)
    if len(runs) > 1:
        ests = [mean_ci(col) for col in runs.T]
        low, high = (np.clip([getattr(e, end) for e in ests], *clip) for end in ("ci_low", "ci_high"))
        ax.fill_between(x, low, high, color=color, alpha=0.18, lw=0)


MIN_RATE_AXIS_SPAN = 10.0  # points: a rate panel never zooms in tighter than this (seed noise is ~1-2 points)


def _rate_axis_limits(values: list[float], clip: tuple[float, float], include_zero: bool) -> tuple[float, float]:
    """y-limits for a rate panel: the data with a margin, at least MIN_RATE_AXIS_SPAN tall (so a
    1-point difference looks like one), zero included for differences, within `clip`."""
    low, high = min(values), max(values)
    if include_zero:
        low, high = min(low, 0.0), max(high, 0.0)
    margin = max((MIN_RATE_AXIS_SPAN - (high - low)) / 2, 0.1 * (high - low))
    low, high = low - margin, high + margin
    if low < clip[0]:
        low, high = clip[0], max(high, clip[0] + MIN_RATE_AXIS_SPAN)
    if high > clip[1]:
        low, high = min(low, clip[1] - MIN_RATE_AXIS_SPAN), clip[1]
    return low, high


def plot_rate_panel(ax, summary: list[dict], metric: str, what: str, clip=(0.0, 100.0), include_zero=False) -> None:
    """`metric` (in points) against the dropout rate: every seed as a dot, the mean with its 95%
    t-interval; a line joins the rates only when there are at least 3 of them."""
    by_rate = _by_rate(summary, lambda row: row["dropout"])
    rates = sorted(by_rate)
    values = {p: [row[metric] * 100 for row in by_rate[p]] for p in rates}
    ests = [mean_ci(values[p]) for p in rates]
    nudge = 0.02 * max(max(rates) - min(rates), 0.25)  # seeds' dots just left of their mean and CI
    for p in rates:
        ax.scatter([p - nudge] * len(values[p]), values[p], color=_color(p), s=14, alpha=0.7, zorder=3)
    has_ci = [e.n > 1 for e in ests]
    err = [[e.mean - e.ci_low if ok else 0 for e, ok in zip(ests, has_ci, strict=True)],
           [e.ci_high - e.mean if ok else 0 for e, ok in zip(ests, has_ci, strict=True)]]  # fmt: skip
    ax.errorbar(rates, [e.mean for e in ests], yerr=err, fmt="D", ms=5, color="#1f4e79", capsize=5,
                ls="-" if len(rates) >= 3 else "none", label="mean, 95% CI over seeds")  # fmt: skip
    shown = [v for p in rates for v in values[p]] + [e.ci_low for e in ests if e.n > 1] + \
        [e.ci_high for e in ests if e.n > 1]  # fmt: skip
    ax.set_ylim(*_rate_axis_limits(shown, clip, include_zero))
    if include_zero:
        ax.axhline(0, color="grey", lw=0.8)
    if not any(has_ci):
        ax.text(0.5, 0.03, "one seed per rate: no interval", transform=ax.transAxes, ha="center", fontsize=9)
    ax.set(title=f"{what.split(' (')[0].capitalize()} vs dropout rate", xlabel="dropout rate p", ylabel=what)
    ax.set_xticks(rates)
    ax.set_xlim(min(rates) - 0.05, max(rates) + 0.05)


def plot_comparison(results: list[TrainResult], summary: list[dict], title: str, path: Path) -> None:
    """Curves (mean over seeds, 95% bands), gap per epoch, per-class accuracy, and outcome vs dropout rate."""
    fig, axes = plt.subplots(2, 3, figsize=(20, 10.5))
    ax_acc, ax_loss, ax_gap, ax_cls, ax_rate_acc, ax_rate_gap = axes.flat
    groups = _by_rate(results, lambda r: r.config.dropout)
    for rate, runs in groups.items():
        label, color = runs[0].config.label, _color(rate)
        n = f" (n={len(runs)})" if len(runs) > 1 else ""
        epochs = min(len(r.history) for r in runs)
        x = np.arange(1, epochs + 1)

        def metric(key: str, scale: float = 1.0, runs=runs, epochs=epochs) -> np.ndarray:
            return np.array([[h[key] * scale for h in r.history[:epochs]] for r in runs])

        _band(ax_acc, x, metric("train_eval_acc", 100), color, "--", f"{label} train{n}")
        _band(ax_acc, x, metric("test_acc", 100), color, "-o", f"{label} test{n}")
        if rate > 0:  # with dropout on, the running number sits below the eval-mode one
            _band(ax_acc, x, metric("train_running_acc", 100), color, ":", f"{label} running (dropout on)", lw=1)
        _band(ax_loss, x, metric("train_eval_loss"), color, "--", f"{label} train", clip=(0, np.inf))
        _band(ax_loss, x, metric("test_loss"), color, "-o", f"{label} test", clip=(0, np.inf))
        gap = metric("train_eval_acc", 100) - metric("test_acc", 100)
        _band(ax_gap, x, gap, color, "-o", label + n, clip=(-100, 100))
    ax_acc.set(title="Accuracy: train (eval mode) dashed, test solid, running dotted", xlabel="epoch",
               ylabel="accuracy (%)")  # fmt: skip
    ax_loss.set(title="Cross-entropy: train (eval mode) dashed, test solid", xlabel="epoch", ylabel="mean loss")
    ax_gap.set(title="Generalization gap: train (eval mode) − test accuracy", xlabel="epoch", ylabel="points")
    ax_gap.axhline(0, color="grey", lw=0.8)

    width = 0.8 / max(len(groups), 1)
    x = np.arange(len(CLASSES))
    for i, (rate, runs) in enumerate(groups.items()):
        per_class = np.array([per_class_accuracy(r.history[-1]["test_confusion"]) for r in runs]) * 100
        acc = np.mean([r.history[-1]["test_acc"] for r in runs])
        ax_cls.bar(x + (i - (len(groups) - 1) / 2) * width, per_class.mean(axis=0), width,
                   color=_color(rate), label=f"{runs[0].config.label} ({acc:.1%})")  # fmt: skip
    ax_cls.set_xticks(x, CLASSES, rotation=35, ha="right")
    ax_cls.set(title="Per-class test accuracy (final models, mean over seeds)", ylabel="accuracy (%)", ylim=(0, 100))

    plot_rate_panel(ax_rate_acc, summary, "final_test_acc", "final test accuracy (%)")
    plot_rate_panel(ax_rate_gap, summary, "generalization_gap", "final gap (points)", (-100, 100), True)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    for ax in (ax_acc, ax_loss, ax_gap, ax_cls, ax_rate_acc):
        ax.legend(fontsize=8)
    for ax in (ax_acc, ax_loss, ax_gap):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_samples(images: np.ndarray, labels: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    """5×5 grid of training images (N, 32, 32, 3) uint8 with their class names: one mosaic in one
    axes (25 titled axes and a tight layout draw about ten times slower; README, *Cold start*)."""
    images, labels = images[:25], labels[:25]
    rows, side, gap, label = 5, images.shape[1], 3, 9  # pixels: image, gap between, label band above
    cell_h, cell_w = label + side + gap, side + gap
    mosaic = np.full((rows * cell_h, rows * cell_w, 3), 255, dtype=np.uint8)  # white, like the figure
    height = 7 * mosaic.shape[0] / mosaic.shape[1]  # inches, for 7 wide; plus a band for the title
    fig = plt.figure(figsize=(7, height + 0.4))
    ax = fig.add_axes((0, 0, 1, height / (height + 0.4)))
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        top, left = (i // rows) * cell_h + label, (i % rows) * cell_w + gap // 2
        mosaic[top : top + side, left : left + side] = img
        ax.text(left + side / 2, top - 2, class_names[int(lab)], ha="center", va="bottom", fontsize=9)
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report_title(results: list[TrainResult], data: DataInfo) -> str:
    """Figure title: the data's provenance and the data actually used, the recipe, seeds, device."""
    cfg, r = results[0].config, results[0]
    devices = ", ".join(sorted({r.config.device for r in results}))
    seeds = sorted({r.config.seed for r in results})
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds (mean, 95% bands)"
    return (
        f"Dropout vs baseline — {data.provenance}\n"
        f"{r.n_train:,} train images ({r.n_train_eval:,} re-evaluated for the gap) / {r.n_test:,} test images, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, Adam lr {cfg.lr:g}, {seed_text}, "
        f"device {devices}, {cfg.precision}{', compiled' if cfg.compile else ''}"
    )


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 100:.2f}%"


def _p(x: float) -> str:
    return "n/a" if math.isnan(x) else ("< 0.001" if x < 0.001 else f"{x:.3f}")


def _stack_note(row: dict) -> str:
    k = row["stacked_variants"]
    notes = [f"stack of {k}" if k > 1 else "", "side by side" if row.get("trained_as") == "streams" else "",
             "CUDA graphs" if row.get("cuda_graphs") else ""]  # fmt: skip
    return f" ({', '.join(filter(None, notes))})" if any(notes) else ""


def _statistics_tables(stats: list[dict]) -> list[str]:
    """Per model: means with 95% intervals; per rate: the difference from the baseline and its tests."""
    shown = ("final_test_acc", "generalization_gap")
    rows = {(r["dropout"], r["metric"]): r for r in stats if r["metric"] in shown}
    rates = sorted({rate for rate, _ in rows})
    lines = ["| model | seeds | final test acc (95% CI) | gap, points (95% CI) |", "|---|---|---|---|"]
    for rate in rates:
        acc, gap = rows[rate, "final_test_acc"], rows[rate, "generalization_gap"]
        lines.append(
            f"| {acc['model']} | {acc['n_seeds']} | {100 * acc['mean']:.2f}% "
            f"({100 * acc['ci95_low']:.2f}–{100 * acc['ci95_high']:.2f}) | {100 * gap['mean']:.2f} "
            f"({100 * gap['ci95_low']:.2f}–{100 * gap['ci95_high']:.2f}) |"
        )
    lines += ["", "| vs baseline | metric | design | difference, points (95% CI) | paired t p | sign-flip p | "
              "Welch p | Holm p | detectable at 80% power |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for rate in rates:
        for metric in shown:
            r = rows[rate, metric]
            if r["design"] is None:
                continue
            low, high = (r["paired_diff_ci95_low"], r["paired_diff_ci95_high"]) if r["design"] == "paired" \
                else (r["welch_diff_ci95_low"], r["welch_diff_ci95_high"])  # fmt: skip
            lines.append(
                f"| {r['model']} | {metric.replace('_', ' ')} | {r['design']} | {100 * r['diff_vs_baseline']:+.2f} "
                f"({100 * low:+.2f} to {100 * high:+.2f}) | {_p(r['paired_t_p_value'])} | "
                f"{_p(r['sign_flip_p_value'])} | {_p(r['welch_p_value'])} | {_p(r['holm_p_value'])} | "
                f"{100 * r['min_detectable_diff_80']:.2f} |"
            )
    return [*lines, ""]


def code_span(text: str) -> str:
    """`text` as a markdown code span nothing inside can end or escape: control characters shown
    escaped (a newline cannot start a block), a backtick fence longer than any backtick run inside.
    Markdown and HTML inside a code span are shown literally."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", shown)), default=0) + 1)
    pad = " " if shown[:1] in ("`", " ") or shown[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"


def markdown_summary(summary: list[dict], data: DataInfo, comparison_png: Path | None, run_dir: Path) -> str:
    """Markdown for the Prefect UI: the verdict first, then per-rate statistics, runs and the figure."""
    lines = ["# Dropout vs baseline", ""]
    if data.dataset == "fake":
        lines += ["> **synthetic data — accuracies meaningless** (pipeline smoke run)", ""]
    elif not data.verified:
        lines += ["> **data unverified**: the local CIFAR-10 copy does not match the official md5s", ""]
    lines += ["**Verdict**", "", *(f"- {line}" for line in verdict(summary)), ""]
    first = summary[0]
    lines += [
        f"Data: {data.provenance}; {first['n_train']:,} training images, {first['n_test']:,} test images, "
        f"{first['epochs']} epochs. The generalization gap is train accuracy measured like test accuracy (eval "
        f"mode, dropout off, the final weights) on {first['n_train_eval']:,} training images minus test accuracy; "
        "'running' is the tutorial's mean over the epoch with dropout on. Report folder: "
        f"{code_span(str(run_dir))}",
        "",
    ]
    stats = statistics_rows(summary)
    if any(r["n_seeds"] > 1 for r in stats):
        lines += _statistics_tables(stats)
    lines += [
        "| model | seed | train acc (eval mode) | train acc (running) | final test acc | best test acc (epoch) "
        "| gap (points) | test loss | train time | device |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['model']} | {s['seed']} | {_pct(s['final_train_eval_acc'])} | {_pct(s['final_train_running_acc'])} "
            f"| {_pct(s['final_test_acc'])} | {_pct(s['best_test_acc'])} ({s['best_epoch']}) | "
            f"{100 * s['generalization_gap']:.2f} | {s['final_test_loss']:.4f} | {s['train_seconds']:.0f} s | "
            f"{s['device']}{_stack_note(s)} |"
        )
    if comparison_png is not None and comparison_png.is_file():
        encoded = base64.b64encode(comparison_png.read_bytes()).decode()
        lines += ["", f"![comparison](data:image/png;base64,{encoded})"]
    return "\n".join(lines) + "\n"


def report_order(results) -> list[TrainResult]:
    """Models in the report's order: dropout rates ascending, the baseline last; seeds ascending."""
    return sorted(results, key=lambda t: (t.config.dropout == 0, t.config.dropout, t.config.seed))


def write_table(rows: list[dict], schema: pa.Schema, path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def write_report(
    run_dir: Path,
    results: list[TrainResult],
    data: DataInfo,
    samples: tuple[np.ndarray, np.ndarray],
    class_names: list[str],
) -> tuple[Path, str]:
    """Write every report file into a temp folder, then rename it to `run_dir` (never half-written).

    Returns (run_dir, markdown). An existing `run_dir` is replaced.
    """
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the temp name lets a later run tell a crashed writer's leftovers from a live one's.
    tmp = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.tmp-{os.getpid()}-"))
    try:
        summary = summary_rows(results, data)
        write_table(history_rows(results, data), HISTORY_SCHEMA, tmp / "history.parquet")
        write_table(summary, SUMMARY_SCHEMA, tmp / "summary.parquet")
        write_table(per_class_rows(results, data), PER_CLASS_SCHEMA, tmp / "per_class.parquet")
        write_table(confusion_rows(results, data), CONFUSION_SCHEMA, tmp / "confusion.parquet")
        write_table(statistics_rows(summary), STATISTICS_SCHEMA, tmp / "statistics.parquet")
        # Class names come from the data's batches.meta: plain text, never mathtext ('$...$').
        with plt.rc_context({"text.parse_math": False, "text.usetex": False}):
            plot_comparison(results, summary, report_title(results, data), tmp / "comparison.png")
            plot_samples(*samples, class_names, f"Training images — {data.provenance}", tmp / "samples.png")
        markdown = markdown_summary(summary, data, tmp / "comparison.png", run_dir)
        (tmp / "summary.md").write_text(markdown.split("![comparison]")[0] + "![comparison](comparison.png)\n")
        os.chmod(tmp, 0o755)
        # Swap under a lock: two identical runs finishing together must not interleave the swap.
        with FileLock(str(run_dir.parent / f".{run_dir.name}.lock")):
            remove_dead_leftovers(run_dir.parent, f".{run_dir.name}.*-*")
            if run_dir.exists():
                old = run_dir.with_name(f".{run_dir.name}.old-{os.getpid()}")
                os.replace(run_dir, old)
                os.replace(tmp, run_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir, markdown
