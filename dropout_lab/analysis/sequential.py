"""Decisions that stay valid when seeds are added until the answer is clear (optional stopping).

A group-sequential design: after each wave of seeds ("look" k, with n_k seeds of the at most N), every
comparison's mean paired difference gets a *repeated confidence interval* (Jennison & Turnbull 2000,
ch. 9), mean ± c_k·s/√n_k, whose boundaries c_k come from a Lan–DeMets alpha-spending function of
O'Brien–Fleming type, α(τ) = 2 − 2Φ(z_{1−α/2}/√τ) at information fraction τ = n_k/N. The intervals of
all looks cover the true difference together with probability ≥ 1 − α, so a claim read off any of them
(better, worse, equivalent within a margin) is wrong with probability ≤ α however the looks were used
to decide when to stop. α is split evenly (Bonferroni) over every claim the verdict makes (each
variant × each decided metric), which bounds the family-wise error by 0.05.

Boundaries are computed for the normal score process by recursive numerical integration
(Armitage, McPherson & Rowe 1969) and used with Student's t on n_k − 1 degrees of freedom. At the
boundaries' own nominal levels that small-sample adjustment errs slightly more often than stated (a
per-claim error of 0.0087 for 0.0083 at looks 5/10/15/20); so the level spent is calibrated by
simulation (`calibrated_spending`): the largest α' whose t-intervals miss a true difference at some
look in at most α of normal runs, the simulation's own error included. `benchmarks/sequential_error.py`
measures the resulting error rates, also under non-normal differences. Each claim's *repeated p-value*
is the smallest per-claim level at which the running intersection of its repeated intervals makes its
call. Pure functions, numpy and scipy only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as st

from dropout_lab.config import seed_waves

GRID = 401  # points of the numerical integration across the continuation region (boundaries to ~5e-6)


def spent(tau: float, alpha: float) -> float:
    """Alpha spent by information fraction tau (O'Brien–Fleming-type Lan–DeMets function)."""
    if tau <= 0:
        return 0.0
    if tau >= 1:
        return alpha
    return float(2 * st.norm.sf(st.norm.isf(alpha / 2) / math.sqrt(tau)))  # sf: no underflow to 0 for tiny alpha


def boundaries(fractions: Sequence[float], alpha: float) -> list[float]:
    """Two-sided boundaries c_k on |Z_k| at increasing information fractions (0, 1], such that under
    no difference the probability of first crossing at look k is spent(tau_k) - spent(tau_{k-1})."""
    return list(_boundaries(tuple(min(1.0, float(t)) for t in fractions), float(alpha)))


@functools.lru_cache(maxsize=1024)  # the same looks recur for every comparison of a run (and simulation)
def _boundaries(taus: tuple[float, ...], alpha: float) -> tuple[float, ...]:
    if any(b <= a for a, b in zip(taus, taus[1:], strict=False)) or not taus or taus[0] <= 0:
        raise ValueError(f"information fractions must increase within (0, 1]: {list(taus)}")
    # Work on the score scale S = Z·√tau (Brownian motion): b_k = c_k·√tau_k.
    first = spent(taus[0], alpha)
    b = st.norm.isf(first / 2) * math.sqrt(taus[0])
    bounds = [b / math.sqrt(taus[0])]
    x = np.linspace(-b, b, GRID)
    density = st.norm.pdf(x, scale=math.sqrt(taus[0]))  # sub-density of S_1 on the continuation region
    used = first
    for prev, tau in zip(taus, taus[1:], strict=False):
        target = spent(tau, alpha) - used
        sd = math.sqrt(tau - prev)
        weights = density * _trapezoid_weights(x)

        def exit_mass(bound: float, x=x, weights=weights, sd=sd) -> float:
            return float(weights @ (st.norm.sf((bound - x) / sd) + st.norm.cdf((-bound - x) / sd)))

        if target <= 0:
            bk = math.inf
        else:
            high = float(np.abs(x).max()) + 40 * sd
            bk = optimize.brentq(lambda v, target=target: exit_mass(v) - target, 0.0, high, xtol=1e-10)
        bounds.append(bk / math.sqrt(tau))
        used += target
        if math.isinf(bk):
            continue
        y = np.linspace(-bk, bk, GRID)
        z = (y[:, None] - x[None, :]) / sd  # the normal kernel in numpy: scipy's pdf costs 10x on 801 x 801
        density = (np.exp(-0.5 * z * z) / (sd * math.sqrt(2 * math.pi))) @ weights
        x = y
    return tuple(bounds)


def _trapezoid_weights(x: np.ndarray) -> np.ndarray:
    w = np.full(len(x), x[1] - x[0])
    w[0] = w[-1] = (x[1] - x[0]) / 2
    return w


def planned_ends(max_seeds: int) -> tuple[int, ...]:
    """Seeds at each planned look of --seeds auto (the end of every wave up to `max_seeds`)."""
    ends, total = [], 0
    for wave in seed_waves(max_seeds):
        total += len(wave)
        ends.append(total)
    return tuple(ends)


CALIBRATION_RUNS = 1_000_000  # normal runs per calibration: the simulated error's SE is ~0.00009 at 0.0083
CALIBRATION_SEED = 20261203  # fixed: the same design always gets the same boundaries
CALIBRATION_SE = 2  # the simulated error plus this many of its standard errors must stay within the level
_CHUNK = 100_000  # runs simulated at once (memory: chunk x max_seeds doubles)


def miss_rate(ends: tuple[int, ...], max_seeds: int, spent: float, t_at: np.ndarray) -> float:
    """Fraction of the simulated runs whose t-interval at some look misses the true difference (0)."""
    cs = boundaries([n / max_seeds for n in ends], spent)
    crit = np.array([st.t.isf(float(st.norm.sf(c)), n - 1) for n, c in zip(ends, cs, strict=True)])
    return float(np.mean((t_at > crit).any(axis=1)))


def null_t(ends: tuple[int, ...], runs: int, seed: int) -> np.ndarray:
    """|mean| / (sd / sqrt(n)) at each look (runs, looks) of `runs` normal runs with a true difference of 0."""
    rng, n, at = np.random.default_rng(seed), np.array(ends, dtype=float), np.array(ends) - 1
    out = []
    for size in [_CHUNK] * (runs // _CHUNK) + [runs % _CHUNK] * bool(runs % _CHUNK):
        x = rng.standard_normal((size, ends[-1]))
        mean = np.cumsum(x, axis=1)[:, at] / n
        sd = np.sqrt(np.maximum(np.cumsum(x * x, axis=1)[:, at] - n * mean * mean, 0) / (n - 1))
        out.append(np.abs(mean) / (sd / np.sqrt(n)))
    return np.concatenate(out)


@functools.lru_cache(maxsize=256)
def calibrated_spending(max_seeds: int, alpha: float) -> float:
    """The level α' to spend (O'Brien–Fleming type over the planned looks of `max_seeds`) so that the
    repeated t-intervals miss a true difference at some look in at most `alpha` of normal runs (the
    worst case of a claim's error: a true difference of zero), the simulation's own error included: its
    miss rate plus CALIBRATION_SE standard errors. One look (seeds fixed in advance): the t-interval is
    exact, α' = α. Simulated once per design (seeds, claims) and process, with a fixed seed (~1 s)."""
    ends = planned_ends(max_seeds)
    if len(ends) < 2:
        return alpha
    t_at = null_t(ends, CALIBRATION_RUNS, CALIBRATION_SEED)
    allowed = alpha - CALIBRATION_SE * math.sqrt(alpha * (1 - alpha) / CALIBRATION_RUNS)
    low, high = alpha / 4, alpha  # miss rate grows with the level spent: bisect on the log scale
    while high / low > 1.001:
        mid = math.sqrt(low * high)
        low, high = (mid, high) if miss_rate(ends, max_seeds, mid, t_at) <= allowed else (low, mid)
    return low


@dataclass(frozen=True)
class Look:
    n: int  # seeds with both arms at this look
    mean: float  # mean paired difference (variant - baseline)
    sd: float  # sample sd of the differences
    low: float  # repeated confidence interval
    high: float
    level: float  # its nominal two-sided level (1 - p_k)


@dataclass(frozen=True)
class Decision:
    """One comparison after the last look: what may be claimed, and on what interval."""

    decision: str  # better | worse | equivalent | undecided
    low: float  # the interval the decision rests on (running intersection of the looks' intervals)
    high: float
    margin: float  # the equivalence margin, in the metric's units
    looks: tuple[Look, ...]
    equivalence_p: float  # two one-sided t-tests at the last look, fixed-sample (ignores the looks)
    repeated_p: float  # the smallest per-claim level at which the repeated intervals make this call
    spent: float  # the level spent for this claim's repeated intervals (calibrated_spending)
    sequential: bool = True  # seeds came in waves (repeated intervals); else one look at fixed seeds

    @property
    def seeds_used(self) -> int:
        return self.looks[-1].n if self.looks else 0


def no_spread(sd: float, mean: float) -> bool:
    """Paired differences without spread (all equal, up to rounding): a t-interval of width zero, which
    says nothing about the next seed's difference."""
    return sd <= 1e-12 + 1e-9 * abs(mean)


def looks_of(diffs: Sequence[float], wave_ends: Sequence[int], max_seeds: int, spent: float) -> list[Look]:
    """The repeated confidence interval after each wave: `diffs` in seed order, `wave_ends` the number
    of seeds available at each look (increasing), `max_seeds` the planned maximum N, `spent` the level
    spent over the looks (`calibrated_spending`). A look whose differences show no spread decides
    nothing: its interval is the whole line, so it never narrows the running intersection."""
    ends = [n for n in wave_ends if n >= 2]
    if not ends:
        return []
    cs = boundaries([n / max(max_seeds, ends[-1]) for n in ends], spent)
    d = np.asarray(diffs, dtype=float)
    out = []
    for n, c in zip(ends, cs, strict=True):
        part = d[:n]
        mean, sd = float(part.mean()), float(part.std(ddof=1))
        nominal = float(2 * st.norm.sf(c))  # the look's two-sided nominal level
        half = (
            math.inf if nominal == 0 or no_spread(sd, mean) else float(st.t.isf(nominal / 2, n - 1)) * sd / math.sqrt(n)
        )
        out.append(Look(n, mean, sd, mean - half, mean + half, 1 - nominal))
    return out


def decide(low: float, high: float, margin: float, higher_is_better: bool) -> str:
    """The claim an interval supports: equivalent (inside ±margin), better or worse (excludes zero),
    else undecided."""
    if -margin < low and high < margin:
        return "equivalent"
    if low > 0:
        return "better" if higher_is_better else "worse"
    if high < 0:
        return "worse" if higher_is_better else "better"
    return "undecided"


def equivalence_p(diffs: Sequence[float], margin: float) -> float:
    """TOST: the larger of the two one-sided paired t-test p-values against -margin and +margin;
    nan for fewer than two seeds or differences without spread."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    if no_spread(sd, float(d.mean())):
        return math.nan  # no spread: the t-test is not defined
    se = sd / math.sqrt(n)
    lower = st.t.sf((d.mean() + margin) / se, n - 1)  # H0: mean <= -margin
    upper = st.t.cdf((d.mean() - margin) / se, n - 1)  # H0: mean >= +margin
    return float(max(lower, upper))


def _intersection(looks: list[Look]) -> tuple[float, float]:
    low, high = looks[0].low, looks[0].high
    for look in looks[1:]:  # every look's interval holds together: their intersection does too
        low, high = max(low, look.low), min(high, look.high)
    if low > high:  # disjoint intervals: the coverage failed somewhere; fall back to the last look's
        low, high = looks[-1].low, looks[-1].high
    return low, high


def repeated_p_value(diffs: Sequence[float], ends: Sequence[int], max_seeds: int, margin: float,
                     equivalence: bool, ratio: float = 1.0) -> float:  # fmt: skip
    """The smallest per-claim level a at which the running intersection of the repeated intervals (level
    `ratio`·a spent, as `calibrated_spending` scales it) makes the call: equivalence (inside ±margin) or
    superiority (clear of zero). 1 when no level does; three significant digits."""
    return _repeated_p(tuple(map(float, diffs)), tuple(ends), max_seeds, margin, equivalence, ratio)


@functools.lru_cache(maxsize=4096)  # a report asks for the same claims' p-values more than once
def _repeated_p(diffs: tuple, ends: tuple, max_seeds: int, margin: float, equivalence: bool, ratio: float) -> float:

    def makes_call(a: float) -> bool:
        looks = looks_of(diffs, ends, max_seeds, min(ratio * a, 0.999))
        if not looks:
            return False
        low, high = _intersection(looks)
        return (-margin < low and high < margin) if equivalence else (low > 0 or high < 0)

    d = np.asarray(diffs, dtype=float)
    ends = [n for n in ends if n >= 2]
    if len(ends) == 1 and ratio == 1.0:  # one look: the t-interval's own p-value, in closed form
        n = ends[0]
        mean, sd = float(d[:n].mean()), float(d[:n].std(ddof=1))
        if no_spread(sd, mean):
            return 1.0  # no level makes a call on differences without spread
        se = sd / math.sqrt(n)
        if equivalence:  # the interval at level 1 - a lies inside ±margin
            return float(min(1.0, 2 * max(st.t.sf((margin - mean) / se, n - 1), st.t.sf((margin + mean) / se, n - 1))))
        return float(2 * st.t.sf(abs(mean) / se, n - 1))
    if not makes_call(0.999):
        return 1.0
    low, high = 1e-12, 0.999
    if makes_call(low):
        return low
    while high / low > 1.001:  # bisect on the log scale: three significant digits
        mid = math.sqrt(low * high)
        low, high = (low, mid) if makes_call(mid) else (mid, high)
    return high


def decision(diffs: Sequence[float], wave_ends: Sequence[int], max_seeds: int, alpha: float, margin: float,
             higher_is_better: bool, sequential: bool = True, claim: bool = True) -> Decision:  # fmt: skip
    """Everything the report says about one comparison (one variant, one metric) at per-claim level
    `alpha`: `sequential` when seeds came in waves up to `max_seeds` (the level spent is calibrated for
    the planned looks), else one look at seeds fixed in advance (an exact t-interval). Not a `claim`
    (an interval that only describes, e.g. a gap change's train side): no repeated p-value."""
    planned = max(max_seeds, max(wave_ends, default=0))
    spent = calibrated_spending(planned, alpha) if sequential else alpha
    looks = looks_of(diffs, wave_ends, planned, spent)
    if not looks:
        return Decision("undecided", math.nan, math.nan, margin, (), math.nan, math.nan, spent, sequential)
    low, high = _intersection(looks)
    used = list(diffs)[: looks[-1].n]
    call = decide(low, high, margin, higher_is_better)
    repeated = repeated_p_value(diffs, wave_ends, planned, margin, call == "equivalent", spent / alpha) \
        if claim else math.nan  # fmt: skip
    return Decision(call, low, high, margin, tuple(looks), equivalence_p(used, margin), repeated, spent, sequential)
