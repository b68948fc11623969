"""Seed-to-seed statistics: means with t-intervals, Welch's t-test against the baseline, and the verdict.

One run per model cannot tell dropout's effect from seed noise; with several seeds per rate we
report, for each metric, the mean and its 95% confidence interval (Student's t), and for each rate
the difference of its mean from the baseline's with a 95% Welch interval and Welch's t-test p-value
(unpaired: it does not assume the seeds pair up, which is conservative when they do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

METRICS = {  # summary column → (readable name, scale to "points" for display)
    "final_test_acc": ("test accuracy", 100.0),
    "best_test_acc": ("best test accuracy", 100.0),
    "generalization_gap": ("generalization gap", 100.0),
    "final_test_loss": ("test loss", 1.0),
}
ALPHA = 0.05


@dataclass(frozen=True)
class Estimate:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan for n < 2
    ci_low: float  # 95% t-interval of the mean; nan for n < 2
    ci_high: float


@dataclass(frozen=True)
class Difference:
    diff: float  # mean(rate) - mean(baseline)
    ci_low: float  # 95% Welch interval; nan when either side has < 2 seeds
    ci_high: float
    p_value: float  # Welch's two-sided t-test; nan when it cannot be computed


def mean_ci(values: list[float], level: float = 1 - ALPHA) -> Estimate:
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return Estimate(n, mean, math.nan, math.nan, math.nan)
    sd = float(x.std(ddof=1))
    half = float(st.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Estimate(n, mean, sd, mean - half, mean + half)


def welch(a: list[float], b: list[float], level: float = 1 - ALPHA) -> Difference:
    """mean(a) - mean(b) with Welch's interval and p-value (no equal-variance assumption)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return Difference(diff, math.nan, math.nan, math.nan)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:  # identical values on both sides: no spread to test against
        return Difference(diff, diff, diff, 1.0 if diff == 0 else 0.0)
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = float(st.t.ppf(0.5 + level / 2, dof)) * se
    p = float(st.ttest_ind(x, y, equal_var=False).pvalue)
    return Difference(diff, diff - half, diff + half, p)


def statistics_rows(summary: list[dict]) -> list[dict]:
    """One row per (dropout rate, metric): the estimate, and the difference from the baseline."""
    rates = sorted({r["dropout"] for r in summary})
    by_rate = {p: [r for r in summary if r["dropout"] == p] for p in rates}
    base = by_rate.get(0.0, [])
    rows = []
    for p in rates:
        for metric in METRICS:
            values = [r[metric] for r in by_rate[p]]
            est = mean_ci(values)
            diff = welch(values, [r[metric] for r in base]) if p != 0.0 and base else None
            rows.append(
                {
                    "dropout": p,
                    "model": by_rate[p][0]["model"],
                    "metric": metric,
                    "n_seeds": est.n,
                    "mean": est.mean,
                    "std": est.std,
                    "ci95_low": est.ci_low,
                    "ci95_high": est.ci_high,
                    "diff_vs_baseline": diff.diff if diff else math.nan,
                    "diff_ci95_low": diff.ci_low if diff else math.nan,
                    "diff_ci95_high": diff.ci_high if diff else math.nan,
                    "welch_p_value": diff.p_value if diff else math.nan,
                }
            )
    return rows


def _p_text(p: float) -> str:
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}"


def describe_difference(metric: str, d: Difference) -> str:
    """One clause, e.g. 'cut the generalization gap by 9.1 ± 1.2 points (p < 0.001)'."""
    name, scale = METRICS[metric]
    unit, digits = (" points", 1) if scale == 100.0 else ("", 3)
    if math.isnan(d.ci_low):
        return f"its {name} differs by {d.diff * scale:+.{digits}f}{unit} (one seed: no interval)"
    half = (d.ci_high - d.ci_low) / 2 * scale
    if d.p_value < ALPHA:
        evidence = _p_text(d.p_value)
    else:
        evidence = f"not significant at 5%, {_p_text(d.p_value)}"
    size, signed, pm = f"{abs(d.diff) * scale:.{digits}f}", f"{d.diff * scale:+.{digits}f}", f"{half:.{digits}f}"
    if metric == "generalization_gap":
        if d.p_value < ALPHA:
            direction = "cut" if d.diff < 0 else "widened"
            return f"{direction} the {name} by {size} ± {pm}{unit} ({evidence})"
        return f"left the {name} unchanged within noise ({signed} ± {pm}{unit}, {evidence})"
    return f"its {name} differs by {signed} ± {pm}{unit} ({evidence})"


def verdict(summary: list[dict]) -> list[str]:
    """Plain-language verdict lines computed from the per-seed summary rows."""
    rates = sorted({r["dropout"] for r in summary if r["dropout"] != 0.0})
    base = [r for r in summary if r["dropout"] == 0.0]
    if not rates or not base:
        return ["Only one model was trained: there is nothing to compare against."]
    lines = []
    for p in rates:
        runs = [r for r in summary if r["dropout"] == p]
        gap = welch([r["generalization_gap"] for r in runs], [r["generalization_gap"] for r in base])
        acc = welch([r["final_test_acc"] for r in runs], [r["final_test_acc"] for r in base])
        if min(len(runs), len(base)) < 2:
            lines.append(
                f"dropout {p:g} vs baseline with one seed each: gap {gap.diff * 100:+.1f} points, test accuracy "
                f"{acc.diff * 100:+.1f} points — no confidence interval can be computed from a single run per "
                "model, so this does not separate dropout's effect from seed noise (use --seeds 0 1 2 3 4)."
            )
            continue
        lines.append(
            f"dropout {p:g} {describe_difference('generalization_gap', gap)}; "
            f"{describe_difference('final_test_acc', acc)} ({len(runs)} vs {len(base)} seeds, Welch's t-test)."
        )
    return lines
