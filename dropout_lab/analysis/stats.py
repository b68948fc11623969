"""Seed-to-seed statistics of each variant vs the baseline, and the verdict in plain words.

The design is paired: a variant's run and the baseline run with the same seed share initial weights
and batch order, so their results move together. When every seed has both arms, the primary analysis
is on the per-seed differences: mean difference with a Student-t interval, the paired t-test, and an
exact sign-flip (permutation) test as a distribution-free check. Welch's unpaired test stays as a
secondary column (and is the primary one when the seeds do not pair up). With several variants,
p-values are Holm-adjusted across the variants of the sweep, per metric. Power: from the observed
spread of the differences, the smallest difference the run could detect (80% power, two-sided alpha
0.05), and how many seeds would detect the observed one.

Values are fractions (accuracy, gap) or mean cross-entropy (loss); text shows points (x100).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as st

from dropout_lab.config import BASELINE, Variant, family_noun, variant_of

# summary column → (readable name, unit in the tables, scale to the unit shown in text, its name)
METRICS = {
    "final_test_acc": ("test accuracy", "fraction", 100.0, "points"),
    "best_test_acc": ("best test accuracy", "fraction", 100.0, "points"),
    "generalization_gap": ("generalization gap", "fraction", 100.0, "points"),
    "final_test_loss": ("test loss", "nats per image", 1.0, ""),
}
ALPHA = 0.05
POWER = 0.8
EXACT_SIGN_FLIP_MAX_N = 20  # 2^20 sign patterns enumerated exactly; beyond, a seeded Monte Carlo
SIGN_FLIP_SAMPLES = 200_000


@dataclass(frozen=True)
class Estimate:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan for n < 2
    ci_low: float  # 95% t-interval of the mean; nan for n < 2
    ci_high: float


@dataclass(frozen=True)
class Difference:
    diff: float  # mean(variant) - mean(baseline)
    ci_low: float  # 95% interval; nan when it cannot be computed
    ci_high: float
    p_value: float  # two-sided; nan when it cannot be computed


@dataclass(frozen=True)
class Paired:
    n: int  # seeds with both arms
    diffs: tuple  # per-seed differences variant - baseline, in seed order
    sd: float  # sample sd of the differences; nan for n < 2
    t: Difference  # mean difference, its t-interval and the paired t-test p-value
    sign_flip_p: float  # two-sided sign-flip permutation p-value; nan for n < 2
    sign_flip_exact: bool  # every sign pattern enumerated (else a seeded Monte Carlo)


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


def sign_flip_p(diffs: list[float], seed: int = 0) -> tuple[float, bool]:
    """Two-sided permutation p-value of the mean paired difference: under "no effect" each
    difference is as likely to have either sign, so compare |mean| with its value under every
    sign pattern (all 2^n when n <= EXACT_SIGN_FLIP_MAX_N, else SIGN_FLIP_SAMPLES seeded draws).

    Note the floor: with n seeds the smallest possible exact p is 2 / 2^n (0.0625 for 5 seeds).
    Returns (p, exact)."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan, True
    exact = n <= EXACT_SIGN_FLIP_MAX_N
    if exact:
        patterns = (np.arange(2**n)[:, None] >> np.arange(n)) & 1  # (2^n, n) bits
    else:
        patterns = np.random.default_rng(seed).integers(0, 2, (SIGN_FLIP_SAMPLES, n))
    means = np.abs((1 - 2 * patterns) @ d) / n
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, float(np.abs(d).max()))  # ties up to float rounding count as extreme
    return float(np.mean(means >= observed - tolerance)), exact


def paired(a: list[float], b: list[float], level: float = 1 - ALPHA) -> Paired:
    """a[i] - b[i] per seed: mean with its t-interval, paired t-test, sign-flip test."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    flip, exact = sign_flip_p(d.tolist())
    if n < 2:
        diff = float(d.mean()) if n else math.nan
        return Paired(n, tuple(d.tolist()), math.nan, Difference(diff, math.nan, math.nan, math.nan), flip, exact)
    est = mean_ci(d.tolist(), level)
    if est.std == 0:  # every seed moved by the same amount: no spread to test against
        p = 1.0 if est.mean == 0 else 0.0
        return Paired(n, tuple(d.tolist()), 0.0, Difference(est.mean, est.mean, est.mean, p), flip, exact)
    p = float(st.ttest_rel(a, b).pvalue)
    return Paired(n, tuple(d.tolist()), est.std, Difference(est.mean, est.ci_low, est.ci_high, p), flip, exact)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (controls the family-wise error rate); nan entries stay nan and
    do not count towards the family."""
    idx = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    m = len(idx)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def power(effect: float, sd: float, n: int, paired_design: bool = True, alpha: float = ALPHA) -> float:
    """Probability that a two-sided t-test at `alpha` detects a true difference `effect`, with n
    seeds (paired: differences with spread sd; unpaired: n per arm, each with spread sd)."""
    if n < 2 or not sd > 0:
        return math.nan
    df, se = (n - 1, sd / math.sqrt(n)) if paired_design else (2 * n - 2, sd * math.sqrt(2 / n))
    crit = st.t.ppf(1 - alpha / 2, df)
    nc = abs(effect) / se
    if nc - crit > 12:  # power is 1 to double precision
        return 1.0
    upper, lower = st.nct.sf(crit, df, nc), st.nct.cdf(-crit, df, nc)
    # scipy's noncentral t returns nan for some far-tail values (scipy 1.17): the normal
    # approximation of such a tail is as good as exact at that size.
    upper = st.norm.sf(crit - nc) if math.isnan(upper) else upper
    lower = st.norm.cdf(-crit - nc) if math.isnan(lower) else lower
    return float(upper + lower)


def min_detectable(sd: float, n: int, paired_design: bool = True) -> float:
    """Smallest true difference detected with POWER at n seeds (same units as sd); nan if unknown."""
    if n < 2 or not sd > 0:
        return math.nan
    high = sd
    while power(high, sd, n, paired_design) < POWER:
        high *= 2
    return float(optimize.brentq(lambda e: power(e, sd, n, paired_design) - POWER, 0.0, high, xtol=sd * 1e-9))


def seeds_needed(effect: float, sd: float, paired_design: bool = True, most: int = 100_000) -> float:
    """Fewest seeds (per arm) that detect a true difference `effect` with POWER; nan when no number
    would (no difference, or no spread measured), inf beyond `most`."""
    if not sd > 0 or effect == 0 or math.isnan(effect):
        return math.nan
    if power(effect, sd, most, paired_design) < POWER:
        return math.inf
    low, high = 2, most  # power grows with n: bisect for the first n reaching POWER
    if power(effect, sd, low, paired_design) >= POWER:
        return float(low)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if power(effect, sd, mid, paired_design) >= POWER else (mid, high)
    return float(high)


@dataclass(frozen=True)
class Comparison:
    """One variant vs the baseline on one metric: everything the tables and the verdict say."""

    metric: str
    design: str  # "paired" (every seed has both arms) or "unpaired"
    n: int  # seeds with both arms (paired) or the smaller arm (unpaired)
    primary: Difference  # paired t (paired design) or Welch (unpaired)
    paired: Paired | None
    welch: Difference
    primary_p_holm: float  # primary p-value, Holm-adjusted over the sweep's variants
    family_size: int  # variants in that adjustment
    family: str  # what they are: "rates" (dropout rates alone) or "variants"
    min_detectable: float  # at POWER with n seeds, from the observed spread
    seeds_needed: float  # to detect the observed difference with POWER

    @property
    def significant(self) -> bool:
        return self.primary_p_holm < ALPHA


def by_variant(rows: list[dict]) -> dict[Variant, list[dict]]:
    """Rows grouped by their variant, in report order (the baseline last)."""
    groups: dict[Variant, list[dict]] = {}
    for row in rows:
        groups.setdefault(variant_of(row), []).append(row)
    return dict(sorted(groups.items(), key=lambda kv: kv[0].order()))


def compare_variants(summary: list[dict], metric: str) -> dict[Variant, Comparison]:
    """Every variant vs the baseline on `metric`, Holm-adjusted across the variants."""
    groups = by_variant(summary)
    base = {r["seed"]: r[metric] for r in groups.get(BASELINE, [])}
    variants = [v for v in groups if not v.is_baseline]
    partial = {}
    for v in variants:
        runs = {r["seed"]: r[metric] for r in groups[v]}
        w = welch(list(runs.values()), list(base.values()))
        if base and set(runs) == set(base):
            seeds = sorted(runs)
            pr = paired([runs[s] for s in seeds], [base[s] for s in seeds])
            partial[v] = ("paired", pr.n, pr.t, pr, w, pr.sd)
        else:  # the seeds do not pair up: Welch; power from the pooled spread
            sd = math.sqrt((np.var(list(runs.values()), ddof=1) + np.var(list(base.values()), ddof=1)) / 2) \
                if min(len(runs), len(base)) >= 2 else math.nan  # fmt: skip
            partial[v] = ("unpaired", min(len(runs), len(base)), w, None, w, sd)
    adjusted = holm([partial[v][2].p_value for v in variants])
    noun = family_noun(variants)
    out = {}
    for v, p_holm in zip(variants, adjusted, strict=True):
        design, n, primary, pr, w, sd = partial[v]
        is_paired = design == "paired"
        out[v] = Comparison(metric, design, n, primary, pr, w, p_holm, len(variants), noun,
                            min_detectable(sd, n, is_paired), seeds_needed(primary.diff, sd, is_paired))  # fmt: skip
    return out


def statistics_rows(summary: list[dict]) -> list[dict]:
    """One row per (variant, metric): the estimate over seeds, and the comparison with the baseline."""
    groups = by_variant(summary)
    comparisons = {metric: compare_variants(summary, metric) for metric in METRICS}
    rows = []
    for variant, members in groups.items():
        for metric, (_, unit, _, _) in METRICS.items():
            est = mean_ci([r[metric] for r in members])
            c = comparisons[metric].get(variant)
            pr = c.paired if c else None
            rows.append(
                {
                    **variant.columns(),
                    "metric": metric,
                    "unit": unit,
                    "n_seeds": est.n,
                    "mean": est.mean,
                    "std": est.std,
                    "ci95_low": est.ci_low,
                    "ci95_high": est.ci_high,
                    "design": c.design if c else None,
                    "diff_vs_baseline": c.primary.diff if c else math.nan,
                    "paired_n": pr.n if pr else 0,
                    "paired_diff_std": pr.sd if pr else math.nan,
                    "paired_diff_ci95_low": pr.t.ci_low if pr else math.nan,
                    "paired_diff_ci95_high": pr.t.ci_high if pr else math.nan,
                    "paired_t_p_value": pr.t.p_value if pr else math.nan,
                    "sign_flip_p_value": pr.sign_flip_p if pr else math.nan,
                    "sign_flip_exact": pr.sign_flip_exact if pr else None,
                    "welch_diff_ci95_low": c.welch.ci_low if c else math.nan,
                    "welch_diff_ci95_high": c.welch.ci_high if c else math.nan,
                    "welch_p_value": c.welch.p_value if c else math.nan,
                    "holm_p_value": c.primary_p_holm if c else math.nan,
                    "holm_family_size": len(comparisons[metric]) if c else 0,
                    "min_detectable_diff_80": c.min_detectable if c else math.nan,
                    "seeds_needed_80": c.seeds_needed if c else math.nan,
                }
            )
    return rows


# --- the verdict ------------------------------------------------------------------------------------

FULL_DATA = {"n_train": 50_000, "n_test": 10_000, "epochs": 8}
WORDS = {  # metric → (verb for a lower value than the baseline's, a higher one, "both ... and ..." of a change)
    "final_test_acc": ("lowered", "raised", "a gain and a loss"),
    "best_test_acc": ("lowered", "raised", "a gain and a loss"),
    "generalization_gap": ("narrowed", "widened", "a narrower and a wider gap"),
    "final_test_loss": ("lowered", "raised", "a lower and a higher loss"),
}


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _amount(metric: str, value: float, signed: bool = False) -> str:
    _, _, scale, unit = METRICS[metric]
    digits = 2 if scale == 100.0 else 3
    text = f"{value * scale:+.{digits}f}" if signed else f"{abs(value) * scale:.{digits}f}"
    return f"{text} {unit}".rstrip()


def _interval(metric: str, d: Difference) -> str:
    """'-1.2 to +0.4 points'."""
    _, _, scale, unit = METRICS[metric]
    digits = 2 if scale == 100.0 else 3
    return f"{d.ci_low * scale:+.{digits}f} to {d.ci_high * scale:+.{digits}f} {unit}".rstrip()


def _evidence(c: Comparison) -> str:
    test = "paired t-test" if c.design == "paired" else "Welch's t-test, seeds not paired"
    text = f"{test} {_p_text(c.primary.p_value)}"
    if c.family_size > 1:
        text += f", Holm-adjusted over {c.family_size} {c.family} {_p_text(c.primary_p_holm)}"
    return text


def _settle(c: Comparison) -> str:
    size = _amount(c.metric, c.primary.diff)
    if math.isnan(c.seeds_needed):
        return "the observed difference is zero, so no number of seeds would show one"
    if math.isinf(c.seeds_needed):
        return f"a difference of {size} is too small to settle with any practical number of seeds"
    return f"about {c.seeds_needed:.0f} seeds would settle a difference of {size}"


def describe(c: Comparison) -> str:
    """One clause: a significant change with its size and interval, or an explicit 'inconclusive'
    (never 'unchanged': a non-significant test does not show that nothing changed)."""
    name = METRICS[c.metric][0]
    lower, higher, both = WORDS[c.metric]
    if c.primary.diff == 0 and c.primary.ci_low == c.primary.ci_high == 0:  # no spread, no difference
        return f"{name} identical on all {c.n} seeds"
    if c.significant:
        verb = lower if c.primary.diff < 0 else higher
        return (f"{verb} the {name} by {_amount(c.metric, c.primary.diff)} "
                f"(95% CI {_interval(c.metric, c.primary)}; {_evidence(c)})")  # fmt: skip
    if c.primary.ci_low <= 0 <= c.primary.ci_high:
        why = f"the 95% interval {_interval(c.metric, c.primary)} spans both {both}"
    else:  # the unadjusted interval excludes 0, but the Holm-adjusted p does not clear alpha
        why = (f"the 95% interval {_interval(c.metric, c.primary)} excludes zero only before correcting for "
               f"the {c.family_size} {c.family} compared")  # fmt: skip
    return f"{name} inconclusive — {why} ({_evidence(c)}); {_settle(c)}"


def power_line(c: Comparison, variant: Variant) -> str:
    """The run's power on `c.metric`: the smallest difference it could detect, and the seeds the
    observed one would need."""
    seeds = f"{c.n} {c.design} seeds"
    if math.isnan(c.min_detectable):
        return f"Power ({variant.words}, {METRICS[c.metric][0]}): not estimable, the {seeds} show no spread."
    text = (f"Power ({variant.words}, {METRICS[c.metric][0]}): with {seeds}, a true difference of "
            f"{_amount(c.metric, c.min_detectable)} or more is detected 80% of the time (alpha 0.05)")  # fmt: skip
    if not (c.significant or math.isnan(c.seeds_needed) or math.isinf(c.seeds_needed)):
        observed = _amount(c.metric, c.primary.diff, signed=True)
        text += f"; the observed {observed} would need about {c.seeds_needed:.0f} seeds"
    if c.paired is not None and 2 / 2**c.n > ALPHA:
        text += f" (the sign-flip check cannot go below p = {2 / 2**c.n:.3f} with {c.n} seeds)"
    return text + "."


def data_scope(summary: list[dict]) -> tuple[str | None, bool]:
    """(what the run measured when it is not the full default CIFAR-10 run, whether it was reduced:
    other data, fewer images or epochs). (None, False) for the full run on verified data."""
    row = summary[0]
    notes, reduced = [], False
    if row.get("dataset") == "fake":
        notes.append("generated images, not CIFAR-10: accuracies are meaningless")
        reduced = True
    elif row.get("data_verified") is False:
        notes.append("an unverified local copy of CIFAR-10, its md5s not the official ones")
    for split, key in (("training", "n_train"), ("test", "n_test")):
        if row[key] < FULL_DATA[key]:
            notes.append(f"{row[key]:,} of {FULL_DATA[key]:,} {split} images")
            reduced = True
    if row["epochs"] != FULL_DATA["epochs"]:
        notes.append(f"{row['epochs']} epochs instead of the recipe's {FULL_DATA['epochs']}")
        reduced = True
    return ("; ".join(notes) if notes else None), reduced


def verdict(summary: list[dict]) -> list[str]:
    """Plain-language verdict lines computed from the per-seed summary rows."""
    scope, reduced = data_scope(summary)
    lines = []
    if reduced:
        lines.append(f"Reduced run ({scope}): a pipeline check, not an answer for CIFAR-10.")
    elif scope:
        lines.append(f"Data: {scope}.")
    variants = list(by_variant(summary))
    if len(variants) < 2 or BASELINE not in variants:
        return [*lines, "Only one model was trained: there is nothing to compare against."]
    gaps, accs = compare_variants(summary, "generalization_gap"), compare_variants(summary, "final_test_acc")
    for v in variants[:-1]:
        gap, acc = gaps[v], accs[v]
        if gap.n < 2:
            lines.append(
                f"{v.words} vs baseline with one seed each: generalization gap "
                f"{_amount('generalization_gap', gap.primary.diff, signed=True)}, test accuracy "
                f"{_amount('final_test_acc', acc.primary.diff, signed=True)} — a single run per model cannot "
                "separate the variant's effect from seed noise, so no interval or test is given "
                "(use --seeds 0 1 2 3 4)."
            )
            continue
        lines.append(f"{v.words} vs baseline ({gap.n} {gap.design} seeds): {describe(gap)}; {describe(acc)}.")
        lines.append(power_line(acc, v))
    return lines
