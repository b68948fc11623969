"""Seed-to-seed statistics of each variant vs the baseline, the decisions, and the verdict in plain words.

The design is paired: a variant's run and the baseline run with the same seed share initial weights
and batch order, so their results move together. When every seed has both arms, the analysis is on
the per-seed differences: mean difference with a Student-t interval, the paired t-test, and an exact
sign-flip (permutation) test as a distribution-free check; Welch's unpaired test stays as a secondary
column (and is the primary one when the seeds do not pair up).

The verdict makes two claims per variant, on test accuracy and on the generalization gap, and each
claim is one of four decisions: better, worse, equivalent within ±margin, or undecided. A decision
rests on a repeated confidence interval of the group-sequential design in `sequential.py` (one look
when the seeds were fixed in advance), at a level that bounds the chance of any wrong claim in the
report by 0.05 (Bonferroni over the claims; valid under adding seeds until decided). p-values are
Holm-adjusted over the same family. Power is given only as ranges, from the confidence interval of
the differences' standard deviation.

Values are fractions (accuracy, gap) or mean cross-entropy (loss); text shows points (x100).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as st

from dropout_lab.analysis.sequential import Decision, decision, summed
from dropout_lab.analysis.signflip import no_spread
from dropout_lab.config import BASELINE, Design, Variant, family_noun, variant_of

# summary column → (readable name, unit in the tables, scale to the unit shown in text, its name)
# (The best epoch's test accuracy is not here: its epoch was chosen on the test set, so it is reported,
# labelled optimistic, and never tested.)
METRICS = {
    "final_test_acc": ("test accuracy", "fraction", 100.0, "points"),
    "final_train_eval_acc": ("train accuracy", "fraction", 100.0, "points"),
    "generalization_gap": ("generalization gap", "fraction", 100.0, "points"),
    "final_test_loss": ("test loss", "nats per image", 1.0, ""),
}
# The metrics the verdict makes claims on, and whether a higher value is the better one.
DECIDED = {"final_test_acc": True, "generalization_gap": False}
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
    if no_spread(se, diff):  # identical values on both sides, up to rounding: no spread to test against
        return Difference(diff, diff, diff, _without_spread_p(diff))
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = float(st.t.ppf(0.5 + level / 2, dof)) * se
    # The test from the same se and dof: scipy's ttest_ind recomputes them, and warns of "catastrophic
    # cancellation" onto the user's terminal where one side's seeds are all equal (its variance 0).
    return Difference(diff, diff - half, diff + half, float(2 * st.t.sf(abs(diff) / se, dof)))


def _without_spread_p(mean: float) -> float:
    """A t-test's limit where the differences show no spread: 1 for a mean of 0 (up to rounding: 1 - 0.9 - 0.1
    is not 0), else 0."""
    return 1.0 if no_spread(abs(mean), 0.0) else 0.0


def sign_flip_p(diffs: list[float], seed: int = 0) -> tuple[float, bool]:
    """Two-sided permutation p-value of the mean paired difference: under "no effect" each
    difference is as likely to have either sign, so compare |mean| with its value under every
    sign pattern (all 2^n when n <= EXACT_SIGN_FLIP_MAX_N, else SIGN_FLIP_SAMPLES seeded draws).

    Note the floor: with n seeds the smallest possible exact p is 2 / 2^n (0.0625 for 5 seeds).
    Returns (p, exact)."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    exact = n <= EXACT_SIGN_FLIP_MAX_N
    if n < 2:  # one difference has no distribution to compare with: nan, like the t-test
        return math.nan, exact
    if exact:
        patterns = (np.arange(2**n)[:, None] >> np.arange(n)) & 1  # (2^n, n) bits
    else:
        patterns = np.random.default_rng(seed).integers(0, 2, (SIGN_FLIP_SAMPLES, n))
    means = np.abs((1 - 2 * patterns) @ d) / n
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, float(np.abs(d).max()))  # ties up to float rounding count as extreme
    extreme = int(np.sum(means >= observed - tolerance))
    if exact:
        return extreme / len(means), True
    # Monte Carlo: the observed pattern counts as one of the draws, so p is never 0 (b+1)/(B+1).
    return (extreme + 1) / (len(means) + 1), False


def paired(a: list[float], b: list[float], level: float = 1 - ALPHA) -> Paired:
    """a[i] - b[i] per seed: mean with its t-interval, paired t-test, sign-flip test."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    flip, exact = sign_flip_p(d.tolist())
    if n < 2:
        diff = float(d.mean()) if n else math.nan
        return Paired(n, tuple(d.tolist()), math.nan, Difference(diff, math.nan, math.nan, math.nan), flip, exact)
    est = mean_ci(d.tolist(), level)
    if no_spread(est.std, est.mean):  # every seed moved by the same amount, up to rounding: no spread to test against
        p = _without_spread_p(est.mean)
        return Paired(n, tuple(d.tolist()), 0.0, Difference(est.mean, est.mean, est.mean, p), flip, exact)
    p = float(2 * st.t.sf(abs(est.mean) / (est.std / math.sqrt(n)), n - 1))  # the paired t-test
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


def min_detectable(sd: float, n: int, paired_design: bool = True, alpha: float = ALPHA) -> float:
    """Smallest true difference detected with POWER at n seeds (same units as sd); nan if unknown."""
    if n < 2 or not sd > 0:
        return math.nan
    high = sd
    while power(high, sd, n, paired_design, alpha) < POWER:
        high *= 2
    return float(optimize.brentq(lambda e: power(e, sd, n, paired_design, alpha) - POWER, 0.0, high,
                                 xtol=sd * 1e-9))  # fmt: skip


def seeds_needed(effect: float, sd: float, paired_design: bool = True, most: int = 100_000,
                 alpha: float = ALPHA) -> float:  # fmt: skip
    """Fewest seeds (per arm) that detect a true difference `effect` with POWER; nan when no number
    would (no difference, or no spread measured), inf beyond `most`."""
    if not sd > 0 or effect == 0 or math.isnan(effect):
        return math.nan
    if power(effect, sd, most, paired_design, alpha) < POWER:
        return math.inf
    low, high = 2, most  # power grows with n: bisect for the first n reaching POWER
    if power(effect, sd, low, paired_design, alpha) >= POWER:
        return float(low)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if power(effect, sd, mid, paired_design, alpha) >= POWER else (mid, high)
    return float(high)


def sd_interval(sd: float, n: int, level: float = 1 - ALPHA) -> tuple[float, float]:
    """The chi-square confidence interval of a normal standard deviation estimated as `sd` from n
    values: power computed at an estimated SD is only as sure as this range."""
    if n < 2 or not sd > 0:
        return math.nan, math.nan
    df = n - 1
    return (sd * math.sqrt(df / st.chi2.ppf(0.5 + level / 2, df)),
            sd * math.sqrt(df / st.chi2.ppf(0.5 - level / 2, df)))  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """One variant vs the baseline on one metric: everything the tables and the verdict say."""

    metric: str
    design: str  # "paired" (every seed has both arms) or "unpaired"
    n: int  # seeds with both arms (paired) or the smaller arm (unpaired)
    primary: Difference  # paired t (paired design) or Welch (unpaired)
    paired: Paired | None
    welch: Difference
    primary_p_holm: float  # primary p-value, Holm-adjusted over the family
    family_size: int  # comparisons in that adjustment
    family: str  # what they are: "rates", "variants", or "claims" (variants x decided metrics)
    decision: Decision | None  # the claim's, on the decided metrics with a paired design; on train accuracy
    #   (the gap's train side) the sum of the gap's and test accuracy's (sequential.summed), describing it
    sd: float  # spread the power figures use (paired differences, or the pooled spread)
    power_alpha: float  # the two-sided level power is computed at: the last look's boundary (the claim's)
    min_detectable: tuple[float, float]  # at POWER with n seeds at `power_alpha`, over the SD's 95% interval
    seeds_needed: tuple[float, float]  # to detect the observed difference with POWER, same level and range


def by_variant(rows: list[dict]) -> dict[Variant, list[dict]]:
    """Rows grouped by their variant, in report order (the baseline last)."""
    groups: dict[Variant, list[dict]] = {}
    for row in rows:
        groups.setdefault(variant_of(row), []).append(row)
    return dict(sorted(groups.items(), key=lambda kv: kv[0].order()))


def claim_alpha(summary: list[dict]) -> tuple[float, int]:
    """(alpha per claim, number of claims): ALPHA split over every variant x decided metric."""
    claims = max(1, (len(by_variant(summary)) - 1) * len(DECIDED))
    return ALPHA / claims, claims


def compare_all(summary: list[dict], design: Design = Design()) -> dict[str, dict[Variant, Comparison]]:
    """Every variant vs the baseline on every metric. The decided metrics' p-values are Holm-adjusted
    together (every claim of the verdict), the others per metric across the variants."""
    groups = by_variant(summary)
    variants = [v for v in groups if not v.is_baseline]
    per_claim, claims = claim_alpha(summary)
    partial = {}
    for metric in METRICS:
        base = {r["seed"]: r[metric] for r in groups.get(BASELINE, [])}
        for v in variants:
            runs = {r["seed"]: r[metric] for r in groups[v]}
            w = welch(list(runs.values()), list(base.values()))
            if base and runs and set(runs) <= set(base):  # paired on the variant's seeds (under `--seeds auto` a
                seeds = sorted(runs)  # variant stops when its claims are decided; the baseline trains on)
                pr = paired([runs[s] for s in seeds], [base[s] for s in seeds])
                partial[metric, v] = ("paired", pr.n, pr.t, pr, w, pr.sd)
            else:  # the seeds do not pair up: Welch; power from the pooled spread
                sd = math.sqrt((np.var(list(runs.values()), ddof=1) + np.var(list(base.values()), ddof=1)) / 2) \
                    if min(len(runs), len(base)) >= 2 else math.nan  # fmt: skip
                partial[metric, v] = ("unpaired", min(len(runs), len(base)), w, None, w, sd)
    families = [[(m, v) for m in DECIDED for v in variants]] + [
        [(m, v) for v in variants] for m in METRICS if m not in DECIDED
    ]
    adjusted, family_of = {}, {}
    for family in families:
        for key, p in zip(family, holm([partial[k][2].p_value for k in family]), strict=True):
            adjusted[key], family_of[key] = p, len(family)
    noun = family_noun(variants)
    out: dict[str, dict[Variant, Comparison]] = {m: {} for m in METRICS}
    for (metric, v), (pairing, n, primary, pr, w, sd) in partial.items():
        is_paired = pairing == "paired"
        dec = None
        if metric in DECIDED and is_paired and pr is not None:
            looks = tuple(k for k in design.looks if k <= n) or (n,)  # the looks this variant took part in
            dec = decision(list(pr.diffs), looks, design.max_seeds or looks[-1], per_claim, design.margin,
                           DECIDED[metric], design.sequential)  # fmt: skip
        low_sd, high_sd = sd_interval(sd, n)
        # Power at the level the claim is tested at: its last look's boundary (ALPHA for the others).
        alpha = (1 - dec.looks[-1].level if dec and dec.looks else per_claim) if metric in DECIDED else ALPHA
        detectable = (min_detectable(low_sd, n, is_paired, alpha), min_detectable(high_sd, n, is_paired, alpha))
        last = dec.looks[-1] if dec and dec.looks else None
        needed = (seeds_needed(primary.diff, low_sd, is_paired, alpha=alpha),
                  seeds_needed(primary.diff, high_sd, is_paired, alpha=alpha))  # fmt: skip
        if metric in DECIDED and dec:  # a sign-flip test: n seeds' 2^n sign patterns must reach its level
            if last and not math.isfinite(last.low) and last.spread:
                detectable = (math.inf, math.inf)  # they cannot at this look: it detects nothing
            fewest = math.ceil(math.log2(2 / alpha) - 1e-9)
            needed = tuple(max(k, fewest) if k == k else k for k in needed)
        out[metric][v] = Comparison(
            metric, pairing, n, primary, pr, w, adjusted[metric, v], family_of[metric, v],
            "claims" if metric in DECIDED else noun, dec, sd, alpha, detectable, needed,
        )  # fmt: skip
    for v, train in out["final_train_eval_acc"].items():  # the gap's train side: gap + test, per seed pair
        gap, test = out["generalization_gap"][v].decision, out["final_test_acc"][v].decision
        if gap and test:
            out["final_train_eval_acc"][v] = dataclasses.replace(train, decision=summed(gap, test))
    return out


def statistics_rows(summary: list[dict], design: Design = Design(), comparisons: dict | None = None) -> list[dict]:
    """One row per (variant, metric): the estimate over seeds, and the comparison with the baseline
    (`comparisons`: compare_all's, when already computed)."""
    groups = by_variant(summary)
    comparisons = comparisons or compare_all(summary, design)
    rows = []
    for variant, members in groups.items():
        for metric, (_, unit, _, _) in METRICS.items():
            est = mean_ci([r[metric] for r in members])
            c = comparisons[metric].get(variant)
            pr = c.paired if c else None
            d = c.decision if c else None  # the claim's; train accuracy's interval only describes the gap's
            claim = d if metric in DECIDED else None
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
                    "holm_family_size": c.family_size if c else 0,
                    "decision": claim.decision if claim else None,
                    "repeated_p_value": claim.repeated_p if claim else math.nan,
                    "repeated_p_value_family": min(1.0, claim.repeated_p * c.family_size) if claim else math.nan,
                    "claims": c.family_size if claim else 0,
                    "decision_ci_low": d.low if d else math.nan,
                    "decision_ci_high": d.high if d else math.nan,
                    "decision_level": d.looks[-1].level if d and d.looks else math.nan,
                    "spent_alpha": d.spent if d else math.nan,
                    "equivalence_p_value": claim.equivalence_p if claim else math.nan,
                    "margin": claim.margin if claim else math.nan,
                    "seeds_used": d.seeds_used if d else 0,
                    "looks": len(d.looks) if d else 0,
                    "power_alpha": c.power_alpha if c else math.nan,
                    "min_detectable_diff_80_low": c.min_detectable[0] if c else math.nan,
                    "min_detectable_diff_80_high": c.min_detectable[1] if c else math.nan,
                    "seeds_needed_80_low": c.seeds_needed[0] if c else math.nan,
                    "seeds_needed_80_high": c.seeds_needed[1] if c else math.nan,
                }
            )
    return rows
