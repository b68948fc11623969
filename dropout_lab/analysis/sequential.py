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
(Armitage, McPherson & Rowe 1969), then used at their nominal level with Student's t on n_k − 1
degrees of freedom, the usual small-sample adjustment; `benchmarks/sequential_error.py` measures the
resulting error rate by simulation. Pure functions, numpy and scipy only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as st

GRID = 801  # points of the numerical integration across the continuation region


def spent(tau: float, alpha: float) -> float:
    """Alpha spent by information fraction tau (O'Brien–Fleming-type Lan–DeMets function)."""
    if tau <= 0:
        return 0.0
    if tau >= 1:
        return alpha
    return float(2 - 2 * st.norm.cdf(st.norm.ppf(1 - alpha / 2) / math.sqrt(tau)))


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
        density = (st.norm.pdf((y[:, None] - x[None, :]) / sd) / sd) @ weights
        x = y
    return tuple(bounds)


def _trapezoid_weights(x: np.ndarray) -> np.ndarray:
    w = np.full(len(x), x[1] - x[0])
    w[0] = w[-1] = (x[1] - x[0]) / 2
    return w


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
    equivalence_p: float  # two one-sided t-tests at the last look (not adjusted: the decision is)

    @property
    def seeds_used(self) -> int:
        return self.looks[-1].n if self.looks else 0


def looks_of(diffs: Sequence[float], wave_ends: Sequence[int], max_seeds: int, alpha: float) -> list[Look]:
    """The repeated confidence interval after each wave: `diffs` in seed order, `wave_ends` the number
    of seeds available at each look (increasing), `max_seeds` the planned maximum N."""
    ends = [n for n in wave_ends if n >= 2]
    if not ends:
        return []
    cs = boundaries([n / max(max_seeds, ends[-1]) for n in ends], alpha)
    d = np.asarray(diffs, dtype=float)
    out = []
    for n, c in zip(ends, cs, strict=True):
        part = d[:n]
        mean, sd = float(part.mean()), float(part.std(ddof=1))
        nominal = float(2 * st.norm.sf(c))  # the look's two-sided nominal level
        half = math.inf if nominal == 0 else float(st.t.isf(nominal / 2, n - 1)) * sd / math.sqrt(n)
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
    nan for fewer than two seeds."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    if sd == 0:
        return 0.0 if abs(d.mean()) < margin else 1.0
    se = sd / math.sqrt(n)
    lower = st.t.sf((d.mean() + margin) / se, n - 1)  # H0: mean <= -margin
    upper = st.t.cdf((d.mean() - margin) / se, n - 1)  # H0: mean >= +margin
    return float(max(lower, upper))


def decision(diffs: Sequence[float], wave_ends: Sequence[int], max_seeds: int, alpha: float, margin: float,
             higher_is_better: bool) -> Decision:  # fmt: skip
    """Everything the report says about one comparison (one variant, one metric)."""
    looks = looks_of(diffs, wave_ends, max_seeds, alpha)
    if not looks:
        return Decision("undecided", math.nan, math.nan, margin, (), math.nan)
    low, high = looks[0].low, looks[0].high
    for look in looks[1:]:  # every look's interval holds together: their intersection does too
        low, high = max(low, look.low), min(high, look.high)
    if low > high:  # disjoint intervals: the coverage failed somewhere; fall back to the last look's
        low, high = looks[-1].low, looks[-1].high
    used = list(diffs)[: looks[-1].n]
    return Decision(decide(low, high, margin, higher_is_better), low, high, margin, tuple(looks),
                    equivalence_p(used, margin))  # fmt: skip
