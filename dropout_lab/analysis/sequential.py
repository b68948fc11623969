"""Decisions that stay valid when seeds are added until the answer is clear (optional stopping), whatever
the shape of the paired differences as long as it is symmetric about their centre.

A group-sequential design: after each wave of seeds ("look" k, with n_k seeds of the at most N), every
comparison's paired differences get a *repeated confidence interval* (Jennison & Turnbull 2000, ch. 9):
the shifts that neither one-sided group-sequential sign-flip test rejects by then (`signflip.py`), each
side spending (α/2)·(n_k/N)² by look k. The intervals of all looks cover the true difference together
with probability ≥ 1 − α, so a claim read off any of them (better, worse, equivalent within a margin) is
wrong with probability ≤ α however the looks were used to decide when to stop: exactly, given the
magnitudes of the differences, when the differences of a seed pair are symmetric about the true one (as
when the variant shifts the result of exchangeable arms). α is split evenly (Bonferroni) over every claim
the verdict makes (each variant × each decided metric), which bounds the family-wise error by 0.05.
`benchmarks/sequential_error.py` measures the error rates under normal, heavy- and light-tailed,
skewed and resampled differences. Each claim's *repeated p-value* is the smallest per-claim level at
which the tests make its call. Pure functions, numpy and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from dropout_lab.analysis import signflip
from dropout_lab.config import seed_waves


def planned_ends(max_seeds: int) -> tuple[int, ...]:
    """Seeds at each planned look of --seeds auto (the end of every wave up to `max_seeds`)."""
    ends, total = [], 0
    for wave in seed_waves(max_seeds):
        total += len(wave)
        ends.append(total)
    return tuple(ends)


@dataclass(frozen=True)
class Look:
    n: int  # seeds with both arms at this look
    mean: float  # mean paired difference (variant - baseline)
    sd: float  # sample sd of the differences
    low: float  # repeated confidence interval
    high: float
    level: float  # 1 - the two-sided level spent by this look

    @property
    def spread(self) -> bool:
        """Its differences show spread: a look without any decides nothing, and more seeds alike would not."""
        return not signflip.no_spread(self.sd, self.mean)


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
    spent: float  # the per-claim level spent over the looks
    sequential: bool = True  # seeds came in waves (repeated intervals); else one look at fixed seeds

    @property
    def seeds_used(self) -> int:
        return self.looks[-1].n if self.looks else 0


def looks_of(diffs: Sequence[float], wave_ends: Sequence[int], max_seeds: int, alpha: float) -> list[Look]:
    """The repeated confidence interval after each wave: `diffs` in seed order, `wave_ends` the number
    of seeds available at each look (increasing), `max_seeds` the planned maximum N, `alpha` the
    per-claim two-sided level spent over the looks. A look whose differences show no spread decides
    nothing (signflip.crossings): its interval is the whole line, so it never narrows the running
    intersection."""
    ends = [n for n in wave_ends if n >= 2]
    if not ends:
        return []
    spend = signflip.spending(ends, max(max_seeds, ends[-1]), alpha)
    d = np.asarray(diffs, dtype=float)
    out = []
    for k, n in enumerate(ends):
        part = d[:n]
        mean, sd = float(part.mean()), float(part.std(ddof=1))
        low, high = signflip.interval(d, ends, spend, k)  # the whole line where the look has no spread
        out.append(Look(n, mean, sd, low, high, 1 - 2 * spend[k]))
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
    if signflip.no_spread(sd, float(d.mean())):
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
                     equivalence: bool) -> float:  # fmt: skip
    """The smallest per-claim level at which the tests make the call: equivalence (inside ±margin) or a
    difference (clear of zero). 1 when no level does (as where no look's differences show spread); three
    significant digits."""
    ends = [n for n in ends if n >= 2]
    if not ends:
        return 1.0
    d = np.asarray(diffs, dtype=float)[: ends[-1]]
    return signflip.repeated_p(d, ends, max(max_seeds, ends[-1]), margin, equivalence)


def decision(diffs: Sequence[float], wave_ends: Sequence[int], max_seeds: int, alpha: float, margin: float,
             higher_is_better: bool, sequential: bool = True, claim: bool = True) -> Decision:  # fmt: skip
    """Everything the report says about one comparison (one variant, one metric) at per-claim level
    `alpha`: `sequential` when seeds came in waves up to `max_seeds`, else one look at seeds fixed in
    advance (the plain sign-flip interval). Not a `claim` (an interval that only describes, e.g. a gap
    change's train side): no repeated p-value."""
    planned = max(max_seeds, max(wave_ends, default=0))
    looks = looks_of(diffs, wave_ends, planned, alpha)
    if not looks:
        return Decision("undecided", math.nan, math.nan, margin, (), math.nan, math.nan, alpha, sequential)
    low, high = _intersection(looks)
    used = list(diffs)[: looks[-1].n]
    call = decide(low, high, margin, higher_is_better)
    repeated = repeated_p_value(diffs, wave_ends, planned, margin, call == "equivalent") if claim else math.nan
    return Decision(call, low, high, margin, tuple(looks), equivalence_p(used, margin), repeated, alpha, sequential)


def summed(a: Decision, b: Decision) -> Decision:
    """The interval of a + b from the claims' intervals on a and b, look by look: wherever both cover, their
    sum covers, so it holds together with the claims at no error of its own (the gap's train side: a seed
    pair's train accuracy difference is its gap difference plus its test accuracy difference). Describes,
    claims nothing; its level alone is at least 1 minus both levels spent."""
    looks = tuple(Look(x.n, x.mean + y.mean, math.nan, x.low + y.low, x.high + y.high, x.level + y.level - 1)
                  for x, y in zip(a.looks, b.looks, strict=True))  # fmt: skip
    low, high = a.low + b.low, a.high + b.high
    return Decision(decide(low, high, a.margin, True), low, high, a.margin, looks, math.nan, math.nan,
                    a.spent + b.spent, a.sequential)  # fmt: skip
