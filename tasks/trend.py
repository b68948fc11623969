"""Looking at the run history (tasks/history.py): a text table and a cross-run figure. No prefect here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.history import run_key
from tasks.report import _by_rate, _color, plt
from tasks.stats import mean_ci

# (header, width, cell) for each column of the table; percentages as points.
COLUMNS = [
    ("recorded (UTC)", 16, lambda r: r["recorded_at"].strftime("%Y-%m-%d %H:%M")),
    ("run", 34, lambda r: r["flow_run_name"] or "(imported)"),
    ("model", 13, lambda r: r["model"]),
    ("rate", 4, lambda r: f"{r['dropout']:g}"),
    ("seed", 4, lambda r: str(r["seed"])),
    ("dataset", 7, lambda r: r["dataset"]),
    ("train", 5, lambda r: str(r["n_train"])),
    ("ep", 3, lambda r: str(r["epochs"])),
    ("test acc", 8, lambda r: f"{100 * r['final_test_acc']:.2f}%"),
    ("gap", 6, lambda r: f"{100 * r['generalization_gap']:+.2f}"),
    ("code", 18, lambda r: r["code_version"]),
]


def format_table(rows: list[dict]) -> str:
    """One line per model per run, oldest first; the gap in points (eval-mode train minus test)."""

    def cell(text: str, width: int) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    lines = ["  ".join(h.ljust(w) for h, w, _ in COLUMNS).rstrip()]
    lines += ["  ".join(cell(get(r), w).ljust(w) for _, w, get in COLUMNS).rstrip() for r in rows]
    return "\n".join(lines)


METRICS = ("final_test_acc", "generalization_gap")


def table_rows(rows: list[dict]) -> list[dict]:
    """The table's cells as records (a Prefect table artifact)."""
    return [{header: get(r) for header, _, get in COLUMNS} for r in rows]


def run_points(rows: list[dict], metric: str) -> dict[float, list[tuple]]:
    """Per rate, one point per run: (recorded_at, mean over its seeds, 95% t-interval low, high, n),
    in points; the interval is nan with one seed."""
    points: dict[float, list[tuple]] = {}
    for rate, items in _by_rate(rows, lambda r: r["dropout"]).items():
        runs: dict[str, list[dict]] = {}
        for row in items:
            runs.setdefault(run_key(row), []).append(row)
        for members in runs.values():
            est = mean_ci([100 * m[metric] for m in members])
            when = min(m["recorded_at"] for m in members)
            points.setdefault(rate, []).append((when, est.mean, est.ci_low, est.ci_high, est.n))
        points[rate].sort()
    return points


def plot_trend(rows: list[dict], path: Path, title: str = "Runs over time") -> None:
    """Final test accuracy and generalization gap per run over time, one line per rate, with each
    run's 95% interval over its seeds as error bars (none with one seed)."""
    with plt.rc_context({"text.parse_math": False, "text.usetex": False}):  # run names are plain text
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
        for ax, metric, what in zip(axes, METRICS, ("final test accuracy (%)", "generalization gap (points)"),
                                    strict=True):  # fmt: skip
            for rate, pts in run_points(rows, metric).items():
                when = [p[0] for p in pts]
                mean, low, high = (np.array([p[i] for p in pts], dtype=float) for i in (1, 2, 3))
                if metric == "final_test_acc":  # an accuracy's interval stays within 0-100%
                    low, high = np.clip(low, 0, 100), np.clip(high, 0, 100)
                err = np.nan_to_num(np.vstack([mean - low, high - mean]))  # one seed: no bar
                label = "baseline" if rate == 0 else f"dropout {rate:g}"
                ax.errorbar(when, mean, yerr=err, fmt="o-", color=_color(rate), capsize=3, ms=4, label=label)
            ax.set_ylabel(what)
            ax.set_xlabel("recorded (UTC)")
            ax.grid(alpha=0.3)
            ax.tick_params(axis="x", labelrotation=30)
        axes[0].legend(fontsize=8)
        fig.suptitle(title)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
