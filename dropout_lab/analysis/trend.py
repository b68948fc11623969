"""Looking at the run history (analysis/history.py): a text table and a cross-run figure. No prefect here.
The table needs nothing heavy; statistics (scipy) and the figure (matplotlib) are imported where used, so
a listing answers at once."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from dropout_lab.analysis.history import run_key
from dropout_lab.config import Variant, counted

# (header, width, cell) for each column of the table; percentages as points. The model's width is its longest
# name's: a cut name hides the value that tells two models apart (`weight_decay=0.…`).
COLUMNS = [
    ("recorded (UTC)", 16, lambda r: r["recorded_at"].strftime("%Y-%m-%d %H:%M")),
    ("run", 34, lambda r: r["flow_run_name"] or f"(imported) {r['experiment']}"),
    ("model", None, lambda r: r["model"]),
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

    columns = [(h, w or max([len(h), *(len(get(r)) for r in rows)]), get) for h, w, get in COLUMNS]
    lines = ["  ".join(h.ljust(w) for h, w, _ in columns).rstrip()]
    lines += ["  ".join(cell(get(r), w).ljust(w) for _, w, get in columns).rstrip() for r in rows]
    return "\n".join(lines)


METRICS = ("final_test_acc", "generalization_gap")


def table_rows(rows: list[dict]) -> list[dict]:
    """The table's cells as records (a Prefect table artifact)."""
    return [{header: get(r) for header, _, get in COLUMNS} for r in rows]


def run_points(rows: list[dict], metric: str) -> dict[Variant, list[tuple]]:
    """Per variant, one point per run: (recorded_at, mean over its seeds, 95% t-interval low, high, n),
    in points; the interval is nan with one seed."""
    from dropout_lab.analysis.stats import by_variant, mean_ci

    points: dict[Variant, list[tuple]] = {}
    for variant, items in by_variant(rows).items():
        runs: dict[str, list[dict]] = {}
        for row in items:
            runs.setdefault(run_key(row), []).append(row)
        for members in runs.values():
            est = mean_ci([100 * m[metric] for m in members])
            when = min(m["recorded_at"] for m in members)
            points.setdefault(variant, []).append((when, est.mean, est.ci_low, est.ci_high, est.n))
        points[variant].sort()
    return points


def compare_table(a: tuple[str, list[dict]], b: tuple[str, list[dict]]) -> str:
    """Two experiments' rows side by side: per variant, each side's seeds, final test accuracy and gap
    (means with 95% t-intervals over seeds, in points), and B minus A (in points)."""
    from dropout_lab.analysis.stats import by_variant, mean_ci

    (name_a, rows_a), (name_b, rows_b) = a, b
    groups = [by_variant(rows_a), by_variant(rows_b)]
    variants = sorted(set(groups[0]) | set(groups[1]), key=Variant.order)

    def est(side: dict, v: Variant, metric: str):
        return mean_ci([100 * r[metric] for r in side.get(v, [])])

    def cell(e) -> str:
        if not e.n:
            return "—"
        return f"{e.mean:6.2f}" + (f" ({e.ci_low:.2f}–{e.ci_high:.2f})" if e.n > 1 else " (one seed)")

    wide = max(len(v.name) for v in [Variant(), *variants])  # `variant` or the longest name, whole
    lines = [f"A: {name_a}", f"B: {name_b}", "",
             f"{'variant':<{wide}} {'seeds A/B':<10} {'test acc A':<24} {'test acc B':<24} {'B-A':>6}  "
             f"{'gap A':<24} {'gap B':<24} {'B-A':>6}"]  # fmt: skip
    for v in variants:
        acc = [est(g, v, "final_test_acc") for g in groups]
        gap = [est(g, v, "generalization_gap") for g in groups]
        seeds = f"{acc[0].n}/{acc[1].n}"
        d_acc = f"{acc[1].mean - acc[0].mean:+6.2f}" if acc[0].n and acc[1].n else "     —"
        d_gap = f"{gap[1].mean - gap[0].mean:+6.2f}" if gap[0].n and gap[1].n else "     —"
        lines.append(f"{v.name:<{wide}} {seeds:<10} {cell(acc[0]):<24} {cell(acc[1]):<24} {d_acc}  "
                     f"{cell(gap[0]):<24} {cell(gap[1]):<24} {d_gap}")  # fmt: skip
    lines.append("points; 95% t-intervals over each side's seeds")
    return "\n".join(lines)


COMPARABLE = ("dataset", "n_train", "n_test", "epochs")  # runs on one line must agree on these


def plot_trend(rows: list[dict], path: Path, title: str = "Runs over time") -> None:
    """Final test accuracy and generalization gap per run over time, one line per rate, with each
    run's 95% interval over its seeds as error bars (none with one seed). Runs on other data or
    epochs are not comparable: each such group gets its own row of panels."""
    from dropout_lab.analysis.figures import plt

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in COMPARABLE), []).append(row)
    with plt.rc_context({"text.parse_math": False, "text.usetex": False}):  # run names are plain text
        fig, axes = plt.subplots(len(groups), 2, figsize=(13, 1 + 4 * len(groups)), squeeze=False,
                                 constrained_layout=True)  # fmt: skip
        for (dataset, n_train, n_test, epochs), panels in zip(sorted(groups), axes, strict=True):
            for ax, metric, what in zip(panels, METRICS, ("final test accuracy (%)", "generalization gap (points)"),
                                        strict=True):  # fmt: skip
                _plot_metric(ax, groups[(dataset, n_train, n_test, epochs)], metric)
                ax.set_ylabel(what)
                ax.set_title(
                    f"{dataset}, {n_train} train / {n_test} test images, {counted(epochs, 'epoch')}", fontsize=9
                )
            panels[0].legend(fontsize=8)
        fig.suptitle(title)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _plot_metric(ax, rows: list[dict], metric: str) -> None:
    import matplotlib.dates as mdates
    import numpy as np

    from dropout_lab.analysis.figures import color

    times = {r["recorded_at"] for r in rows}
    if len(times) == 1:  # one moment: matplotlib would span years around it
        (t,) = times
        ax.set_xlim(t - timedelta(hours=1), t + timedelta(hours=1))
    points = run_points(rows, metric)
    for variant, pts in points.items():
        when = [p[0] for p in pts]
        mean, low, high = (np.array([p[i] for p in pts], dtype=float) for i in (1, 2, 3))
        if metric == "final_test_acc":  # an accuracy's interval stays within 0-100%
            low, high = np.clip(low, 0, 100), np.clip(high, 0, 100)
        err = np.nan_to_num(np.vstack([mean - low, high - mean]))  # one seed: no bar
        ax.errorbar(
            when, mean, yerr=err, fmt="o-", color=color(variant, list(points)), capsize=3, ms=4, label=variant.words
        )
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("recorded (UTC)")
    ax.grid(alpha=0.3)
