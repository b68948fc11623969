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
        ("n_params", pa.int64()),
        ("n_train", pa.int64()),
        ("n_test", pa.int64()),
        ("dataset", pa.string()),
        ("data_verified", pa.bool_()),
        ("data_provenance", pa.string()),
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


def _color(label: str, dropout: float) -> str:
    return COLORS.get(label) or plt.get_cmap("Blues")(0.45 + 0.5 * min(dropout / 0.5, 1.0))


def plot_comparison(results: list[TrainResult], evals: list[EvalResult], title: str, path: Path) -> None:
    """2×2: accuracy curves, loss curves, generalization gap per epoch, per-class test accuracy."""
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    ax_acc, ax_loss, ax_gap, ax_cls = axes.flat
    for r in results:
        label, color = r.config.label, _color(r.config.label, r.config.dropout)
        ep = [h["epoch"] for h in r.history]
        tr_acc = np.array([h["train_acc"] for h in r.history]) * 100
        te_acc = np.array([h["test_acc"] for h in r.history]) * 100
        ax_acc.plot(ep, tr_acc, "--", color=color, label=f"{label} train")
        ax_acc.plot(ep, te_acc, "-o", color=color, ms=4, label=f"{label} test")
        ax_loss.plot(ep, [h["train_loss"] for h in r.history], "--", color=color, label=f"{label} train")
        ax_loss.plot(ep, [h["test_loss"] for h in r.history], "-o", color=color, ms=4, label=f"{label} test")
        ax_gap.plot(ep, tr_acc - te_acc, "-o", color=color, ms=4, label=label)
    ax_acc.set(title="Accuracy (train dashed, test solid)", xlabel="epoch", ylabel="accuracy (%)")
    ax_loss.set(title="Cross-entropy loss (train dashed, test solid)", xlabel="epoch", ylabel="mean loss")
    ax_gap.set(title="Generalization gap: train − test accuracy", xlabel="epoch", ylabel="points (%)")
    ax_gap.axhline(0, color="grey", lw=0.8)
    width = 0.8 / max(len(evals), 1)
    x = np.arange(len(CLASSES))
    for i, e in enumerate(evals):
        color = _color(e.config.label, e.config.dropout)
        ax_cls.bar(x + (i - (len(evals) - 1) / 2) * width, np.array(e.per_class_acc) * 100, width,
                   color=color, label=f"{e.config.label} ({e.test_acc:.1%})")  # fmt: skip
    ax_cls.set_xticks(x, CLASSES, rotation=35, ha="right")
    ax_cls.set(title="Per-class test accuracy (final model)", ylabel="accuracy (%)", ylim=(0, 100))
    for ax in (ax_acc, ax_loss, ax_gap, ax_cls):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in (ax_acc, ax_loss, ax_gap):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
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
    return (
        f"Dropout vs baseline — {data.provenance}\n"
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, Adam lr {cfg.lr:g}, seed {cfg.seed}, "
        f"device {devices}, {cfg.precision}{', compiled' if cfg.compile else ''}"
    )


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 100:.2f}%"


def markdown_summary(summary: list[dict], data: DataInfo, comparison_png: Path | None, run_dir: Path) -> str:
    """Markdown for the Prefect UI: verdict, summary table and the comparison figure inline."""
    lines = ["# Dropout vs baseline", ""]
    if data.dataset == "fake":
        lines += ["> **synthetic data — accuracies meaningless** (pipeline smoke run)", ""]
    elif not data.verified:
        lines += ["> **data unverified**: the local CIFAR-10 copy does not match the official md5s", ""]
    lines += [f"Data: {data.provenance}. Report folder: `{run_dir}`", ""]
    base = next((s for s in summary if s["dropout"] == 0), None)
    for s in summary:
        if base is not None and s is not base:
            acc_diff = 100 * (s["final_test_acc"] - base["final_test_acc"])
            gap, base_gap = 100 * s["generalization_gap"], 100 * base["generalization_gap"]
            lines.append(
                f"- **{s['model']}** vs baseline: test accuracy {acc_diff:+.2f} points, generalization gap "
                f"{gap:.2f} vs {base_gap:.2f} points, test loss {s['final_test_loss']:.3f} vs "
                f"{base['final_test_loss']:.3f} (one seed each)."
            )
    lines += [
        "",
        "| model | final train acc | final test acc | best test acc (epoch) | gap (points) | test loss "
        "| train time | device |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['model']} | {_pct(s['final_train_acc'])} | {_pct(s['final_test_acc'])} | "
            f"{_pct(s['best_test_acc'])} ({s['best_epoch']}) | {100 * s['generalization_gap']:.2f} | "
            f"{s['final_test_loss']:.4f} | {s['train_seconds']:.0f} s | {s['device']} |"
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
        plot_comparison(results, evals, report_title(results, data), tmp / "comparison.png")
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
