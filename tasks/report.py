"""The comparison report: Parquet tables, PNG figures and a markdown summary. No prefect here."""

from __future__ import annotations

import base64
import math
import os
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
from tasks.model import CLASSES  # noqa: E402
from tasks.results import EvalResult, TrainResult  # noqa: E402
from tasks.stats import mean_ci, statistics_rows, verdict  # noqa: E402

COLORS = {"baseline": "#d62728"}  # baseline red; dropout variants from a blue ramp
UTC_TS = pa.timestamp("us", tz="UTC")

HISTORY_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("dropout", pa.float64()),
        ("seed", pa.int64()),
        ("epoch", pa.int64()),
        ("train_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("test_loss", pa.float64()),
        ("test_acc", pa.float64()),
        ("generalization_gap", pa.float64()),
        ("epoch_seconds", pa.float64()),
        ("dataset", pa.string()),
    ]
)
SUMMARY_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("dropout", pa.float64()),
        ("seed", pa.int64()),
        ("final_train_acc", pa.float64()),
        ("final_test_acc", pa.float64()),
        ("best_test_acc", pa.float64()),
        ("best_epoch", pa.int64()),
        ("generalization_gap", pa.float64()),
        ("final_train_loss", pa.float64()),
        ("final_test_loss", pa.float64()),
        ("epochs", pa.int64()),
        ("batch_size", pa.int64()),
        ("lr", pa.float64()),
        ("train_seconds", pa.float64()),
        ("resumed_from_epoch", pa.int64()),
        ("started_at", UTC_TS),
        ("finished_at", UTC_TS),
        ("device", pa.string()),
        ("precision", pa.string()),
        ("compiled", pa.bool_()),
        ("threads", pa.int64()),
        ("stacked_variants", pa.int64()),
        ("n_params", pa.int64()),
        ("n_train", pa.int64()),
        ("n_test", pa.int64()),
        ("dataset", pa.string()),
        ("data_verified", pa.bool_()),
        ("data_provenance", pa.string()),
    ]
)
STATISTICS_SCHEMA = pa.schema(
    [
        ("dropout", pa.float64()),
        ("model", pa.string()),
        ("metric", pa.string()),
        ("n_seeds", pa.int64()),
        ("mean", pa.float64()),
        ("std", pa.float64()),
        ("ci95_low", pa.float64()),
        ("ci95_high", pa.float64()),
        ("diff_vs_baseline", pa.float64()),
        ("diff_ci95_low", pa.float64()),
        ("diff_ci95_high", pa.float64()),
        ("welch_p_value", pa.float64()),
    ]
)
PER_CLASS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("dropout", pa.float64()),
        ("seed", pa.int64()),
        ("class_name", pa.string()),
        ("accuracy", pa.float64()),
        ("dataset", pa.string()),
    ]
)


def history_rows(results: list[TrainResult], data: DataInfo) -> list[dict]:
    rows = []
    for r in results:
        for h in r.history:
            rows.append(
                {
                    "model": r.config.label,
                    "dropout": float(r.config.dropout),
                    "seed": r.config.seed,
                    "epoch": h["epoch"],
                    "train_loss": h["train_loss"],
                    "train_acc": h["train_acc"],
                    "test_loss": h["test_loss"],
                    "test_acc": h["test_acc"],
                    "generalization_gap": h["train_acc"] - h["test_acc"],
                    "epoch_seconds": h["epoch_seconds"],
                    "dataset": data.dataset,
                }
            )
    return rows


def summary_rows(results: list[TrainResult], evals: list[EvalResult], data: DataInfo) -> list[dict]:
    rows = []
    for r, e in zip(results, evals, strict=True):
        last = r.history[-1]
        best = max(r.history, key=lambda h: h["test_acc"])  # first epoch reaching the best
        rows.append(
            {
                "model": r.config.label,
                "dropout": float(r.config.dropout),
                "seed": r.config.seed,
                "final_train_acc": last["train_acc"],
                "final_test_acc": e.test_acc,
                "best_test_acc": best["test_acc"],
                "best_epoch": best["epoch"],
                "generalization_gap": last["train_acc"] - e.test_acc,
                "final_train_loss": last["train_loss"],
                "final_test_loss": e.test_loss,
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
                "n_params": r.n_params,
                "n_train": r.n_train,
                "n_test": r.n_test,
                "dataset": data.dataset,
                "data_verified": data.verified,
                "data_provenance": data.provenance,
            }
        )
    return rows


def per_class_rows(evals: list[EvalResult], data: DataInfo) -> list[dict]:
    return [
        {
            "model": e.config.label,
            "dropout": float(e.config.dropout),
            "seed": e.config.seed,
            "class_name": name,
            "accuracy": acc,
            "dataset": data.dataset,
        }
        for e in evals
        for name, acc in zip(CLASSES, e.per_class_acc, strict=True)
    ]


def _color(dropout: float) -> str:
    if dropout == 0:
        return COLORS["baseline"]
    return plt.get_cmap("Blues")(0.45 + 0.5 * min(dropout / 0.5, 1.0))


def _by_rate(items: list, rate_of) -> dict[float, list]:
    groups: dict[float, list] = {}
    for item in items:
        groups.setdefault(rate_of(item), []).append(item)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] == 0, kv[0])))  # baseline last


def _band(ax, x, runs: np.ndarray, color, style: str, label: str) -> None:
    """Mean over seeds (rows of `runs`), with a shaded 95% t-interval when there are 2+ seeds."""
    mean = runs.mean(axis=0)
    ax.plot(x, mean, style, color=color, ms=4, label=label)
    if len(runs) > 1:
        ests = [mean_ci(col) for col in runs.T]
        ax.fill_between(x, [e.ci_low for e in ests], [e.ci_high for e in ests], color=color, alpha=0.18, lw=0)


def plot_comparison(
    results: list[TrainResult], evals: list[EvalResult], summary: list[dict], title: str, path: Path
) -> None:
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

        _band(ax_acc, x, metric("train_acc", 100), color, "--", f"{label} train{n}")
        _band(ax_acc, x, metric("test_acc", 100), color, "-o", f"{label} test{n}")
        _band(ax_loss, x, metric("train_loss"), color, "--", f"{label} train")
        _band(ax_loss, x, metric("test_loss"), color, "-o", f"{label} test")
        _band(ax_gap, x, metric("train_acc", 100) - metric("test_acc", 100), color, "-o", label + n)
    ax_acc.set(title="Accuracy (train dashed, test solid)", xlabel="epoch", ylabel="accuracy (%)")
    ax_loss.set(title="Cross-entropy loss (train dashed, test solid)", xlabel="epoch", ylabel="mean loss")
    ax_gap.set(title="Generalization gap: train − test accuracy", xlabel="epoch", ylabel="points (%)")
    ax_gap.axhline(0, color="grey", lw=0.8)

    eval_groups = _by_rate(evals, lambda e: e.config.dropout)
    width = 0.8 / max(len(eval_groups), 1)
    x = np.arange(len(CLASSES))
    for i, (rate, group) in enumerate(eval_groups.items()):
        per_class = np.array([e.per_class_acc for e in group]) * 100
        acc = np.mean([e.test_acc for e in group])
        ax_cls.bar(x + (i - (len(eval_groups) - 1) / 2) * width, per_class.mean(axis=0), width,
                   color=_color(rate), label=f"{group[0].config.label} ({acc:.1%})")  # fmt: skip
    ax_cls.set_xticks(x, CLASSES, rotation=35, ha="right")
    ax_cls.set(title="Per-class test accuracy (final models, mean over seeds)", ylabel="accuracy (%)", ylim=(0, 100))

    # Outcome vs dropout rate, from the summary rows: mean over seeds, error bars = 95% t-interval
    # (none with one seed).
    by_rate = _by_rate(summary, lambda row: row["dropout"])
    rates = sorted(by_rate)
    finals = {p: [row["final_test_acc"] * 100 for row in by_rate[p]] for p in rates}
    gaps = {p: [row["generalization_gap"] * 100 for row in by_rate[p]] for p in rates}
    for ax, values, what in (
        (ax_rate_acc, finals, "final test accuracy (%)"),
        (ax_rate_gap, gaps, "final gap (points)"),
    ):
        ests = [mean_ci(values[p]) for p in rates]
        err = [
            [e.mean - e.ci_low if e.n > 1 else 0 for e in ests],
            [e.ci_high - e.mean if e.n > 1 else 0 for e in ests],
        ]
        ax.errorbar(rates, [e.mean for e in ests], yerr=err, fmt="o-", color="#1f4e79", capsize=5)
        for p in rates:
            ax.scatter([p] * len(values[p]), values[p], color=_color(p), s=12, alpha=0.6, zorder=3)
        ax.set(title=f"{what.split(' (')[0].capitalize()} vs dropout rate", xlabel="dropout rate p", ylabel=what)
        ax.set_xticks(rates)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    for ax in (ax_acc, ax_loss, ax_gap, ax_cls):
        ax.legend(fontsize=8)
    for ax in (ax_acc, ax_loss, ax_gap):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_samples(images: np.ndarray, labels: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    """5×5 grid of training images (N, 32, 32, 3) uint8 with their class names."""
    fig, axes = plt.subplots(5, 5, figsize=(7, 7.6))
    for ax, img, lab in zip(axes.flat, images[:25], labels[:25], strict=False):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(class_names[int(lab)], fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report_title(results: list[TrainResult], data: DataInfo) -> str:
    cfg = results[0].config
    devices = ", ".join(sorted({r.config.device for r in results}))
    seeds = sorted({r.config.seed for r in results})
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds (mean, 95% bands)"
    return (
        f"Dropout vs baseline — {data.provenance}\n"
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, Adam lr {cfg.lr:g}, {seed_text}, "
        f"device {devices}, {cfg.precision}{', compiled' if cfg.compile else ''}"
    )


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 100:.2f}%"


def _stack_note(row: dict) -> str:
    k = row["stacked_variants"]
    return f" (stack of {k})" if k > 1 else ""


def markdown_summary(summary: list[dict], data: DataInfo, comparison_png: Path | None, run_dir: Path) -> str:
    """Markdown for the Prefect UI: the verdict first, then per-rate statistics, runs and the figure."""
    lines = ["# Dropout vs baseline", ""]
    if data.dataset == "fake":
        lines += ["> **synthetic data — accuracies meaningless** (pipeline smoke run)", ""]
    elif not data.verified:
        lines += ["> **data unverified**: the local CIFAR-10 copy does not match the official md5s", ""]
    lines += [f"**Verdict.** {line}" for line in verdict(summary)] + [""]
    lines += [f"Data: {data.provenance}. Report folder: `{run_dir}`", ""]
    stats = [r for r in statistics_rows(summary) if r["metric"] in ("final_test_acc", "generalization_gap")]
    if any(r["n_seeds"] > 1 for r in stats):
        lines += ["| model | seeds | final test acc (95% CI) | gap, points (95% CI) |", "|---|---|---|---|"]
        for rate in sorted({r["dropout"] for r in stats}):
            acc, gap = (next(r for r in stats if r["dropout"] == rate and r["metric"] == m)
                        for m in ("final_test_acc", "generalization_gap"))  # fmt: skip
            lines.append(
                f"| {acc['model']} | {acc['n_seeds']} | {100 * acc['mean']:.2f}% "
                f"({100 * acc['ci95_low']:.2f}–{100 * acc['ci95_high']:.2f}) | {100 * gap['mean']:.2f} "
                f"({100 * gap['ci95_low']:.2f}–{100 * gap['ci95_high']:.2f}) |"
            )
        lines.append("")
    lines += [
        "| model | seed | final train acc | final test acc | best test acc (epoch) | gap (points) | test loss "
        "| train time | device |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['model']} | {s['seed']} | {_pct(s['final_train_acc'])} | {_pct(s['final_test_acc'])} | "
            f"{_pct(s['best_test_acc'])} ({s['best_epoch']}) | {100 * s['generalization_gap']:.2f} | "
            f"{s['final_test_loss']:.4f} | {s['train_seconds']:.0f} s | {s['device']}{_stack_note(s)} |"
        )
    if comparison_png is not None and comparison_png.is_file():
        encoded = base64.b64encode(comparison_png.read_bytes()).decode()
        lines += ["", f"![comparison](data:image/png;base64,{encoded})"]
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], schema: pa.Schema, path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def write_report(
    run_dir: Path,
    results: list[TrainResult],
    evals: list[EvalResult],
    data: DataInfo,
    samples: tuple[np.ndarray, np.ndarray],
    class_names: list[str],
) -> tuple[Path, str]:
    """Write every report file into a temp folder, then rename it to `run_dir` (never half-written).

    Returns (run_dir, markdown). An existing `run_dir` is replaced.
    """
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.tmp-"))
    try:
        summary = summary_rows(results, evals, data)
        write_table(history_rows(results, data), HISTORY_SCHEMA, tmp / "history.parquet")
        write_table(summary, SUMMARY_SCHEMA, tmp / "summary.parquet")
        write_table(per_class_rows(evals, data), PER_CLASS_SCHEMA, tmp / "per_class.parquet")
        write_table(statistics_rows(summary), STATISTICS_SCHEMA, tmp / "statistics.parquet")
        plot_comparison(results, evals, summary, report_title(results, data), tmp / "comparison.png")
        plot_samples(*samples, class_names, f"Training images — {data.provenance}", tmp / "samples.png")
        markdown = markdown_summary(summary, data, tmp / "comparison.png", run_dir)
        (tmp / "summary.md").write_text(markdown.split("![comparison]")[0] + "![comparison](comparison.png)\n")
        os.chmod(tmp, 0o755)
        # Swap under a lock: two identical runs finishing together must not interleave the swap.
        with FileLock(str(run_dir.parent / f".{run_dir.name}.lock")):
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
