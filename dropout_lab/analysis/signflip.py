"""Group-sequential sign-flip tests and the repeated intervals they give: decisions whose error holds
whatever the shape of the paired differences, provided it is symmetric about their centre.

If a variant changes nothing but shifts a seed's result by δ, the two arms of a seed are exchangeable
once δ is taken off: given its magnitude |x_i − δ|, a paired difference is as likely above δ as below,
so every one of the 2^n sign vectors is equally likely. The one-sided test of "centred at or below δ"
rejects at look k when the running sum of the signed magnitudes reaches a boundary b_k, chosen so that
the chance over the random signs of reaching some boundary by look k is at most `spend[k]`; that chance
is computed exactly, by a recursion over the running sum's law with the magnitudes rounded onto a grid
(exact for the rounded statistic, which is still a function of the data that flips with the signs).
The boundaries at a look use the magnitudes seen by then, so seeds can be added until the answer is
clear. The repeated interval at look k holds every δ that neither one-sided test rejects there; the
intervals of all looks cover the true shift together with probability at least 1 − 2·spend[-1].

Pure functions, numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

GRID = 400  # a magnitude of the first look that has one is rounded to 1/GRID of the largest
# Later magnitudes are capped at CAP grid units (a difference 20x the first look's largest counts as 20x): a
# function of the magnitudes alone, so the signs stay free and the test stays exact; the law stays small.
CAP = 20 * GRID
_STEPS = 60  # bisection steps for an interval's end (to ~1e-18 of the data's range)


def spending(ends: Sequence[int], planned: int, alpha: float, rho: float = 2.0) -> list[float]:
    """Level spent per side by each look: (α/2)·(n_k/N)^ρ of the two-sided per-claim level α."""
    return [alpha / 2 * min(1.0, n / planned) ** rho for n in ends]


def no_spread(sd: float, mean: float) -> bool:
    """Paired differences without spread (all equal, up to rounding): a zero-width interval, which says
    nothing about the next seed's difference."""
    return sd <= 1e-12 + 1e-9 * abs(mean)


def sides(x: np.ndarray, ends: Sequence[int], spend: Sequence[float]) -> Iterator[tuple[bool, bool]]:
    """Per look, as the looks come: whether the one-sided sequential sign-flip test of "x is centred at or
    below 0" rejects there (its running sum at or past that look's boundary), and whether the test of "at
    or above 0" does (the sum at or past its negative). A look whose differences show no spread rejects
    nothing. The law of the sum depends on the magnitudes alone, so the two tests share it: the lower test
    on x is the upper one on -x."""
    x = np.asarray(x, dtype=float)
    unit = 0.0
    law = np.ones(1)  # the running sum's chance of each value, paths past an earlier boundary removed
    size = observed = done = 0  # law[i] is the chance of a sum i - size (grid units)
    spent = 0.0
    for n, level in zip(ends, spend, strict=True):
        part = x[done:n]
        if unit == 0.0 and np.abs(x[:n]).max(initial=0.0) > 0:
            unit = float(np.abs(x[:n]).max()) / GRID  # from magnitudes only: the signs stay free
        steps = np.minimum(np.rint(np.abs(part) / unit), CAP) if unit else np.zeros(len(part))
        steps = steps.astype(np.int64)
        observed += int((np.sign(part) * steps).sum())
        grown = steps[steps > 0]
        if len(grown):  # half the chance moves down by m, half up by m, for each new magnitude m
            wide = np.zeros(len(law) + 2 * int(grown.sum()))
            wide[: len(law)] = law
            width = len(law)
            for m in grown:
                wide[2 * m : width + 2 * m] += wide[:width].copy()
                wide[: width + 2 * m] *= 0.5
                width += 2 * m
            law, size = wide, size + int(grown.sum())
        done = n
        tail = np.cumsum(law[::-1])[::-1]  # tail[i]: the chance of a sum at or above i - size
        within = np.flatnonzero(tail <= level - spent + 1e-15)
        if len(within) == 0:
            yield False, False
            continue
        bound = int(within[0])
        spent += float(tail[bound])
        seen = x[:n]
        spread = not no_spread(float(seen.std(ddof=1)), float(seen.mean()))
        yield spread and observed + size >= bound, spread and size - observed >= bound
        law[bound:] = 0.0  # paths that crossed here are not there at the next look


def crossings(x: np.ndarray, ends: Sequence[int], spend: Sequence[float]) -> list[bool]:
    """Per look, whether the one-sided test of "x is centred at or below 0" rejects there (`sides`)."""
    return [upper for upper, _ in sides(x, ends, spend)]


def _lower_end(x: np.ndarray, ends: Sequence[int], spend: Sequence[float], k: int) -> float:
    """The largest δ that the test of "centred at or below δ" rejects at look k (−inf when none is)."""
    n = ends[k]
    low, high = float(x[:n].min()), float(x[:n].max())
    width = max(high - low, abs(high), 1e-12)
    rejected, kept = low - width, high  # at `kept` every sign is negative: no boundary is reached
    if not crossings(x - rejected, ends[: k + 1], spend[: k + 1])[k]:
        return -math.inf
    for _ in range(_STEPS):
        mid = (rejected + kept) / 2
        if mid in (rejected, kept):
            break
        if crossings(x - mid, ends[: k + 1], spend[: k + 1])[k]:
            rejected = mid
        else:
            kept = mid
    return rejected


def interval(x: Sequence[float], ends: Sequence[int], spend: Sequence[float], k: int) -> tuple[float, float]:
    """The repeated interval at look k (0-based): every shift neither one-sided test rejects there."""
    d = np.asarray(x, dtype=float)
    return _lower_end(d, ends, spend, k), -_lower_end(-d, ends, spend, k)


def first_rejection(x: np.ndarray, ends: Sequence[int], spend: Sequence[float], side: int = 0) -> int:
    """The first look (0-based) at which a one-sided test rejects, len(ends) if none: of "x is centred at
    or below 0" (side 0), "at or above 0" (side 1), or either (side -1). Stops at that look."""
    hits = (any(pair) if side < 0 else pair[side] for pair in sides(x, ends, spend))
    return next((k for k, hit in enumerate(hits) if hit), len(ends))


def equivalence_look(x: np.ndarray, ends: Sequence[int], spend: Sequence[float], margin: float) -> int:
    """The first look (0-based) by which the tests of ±margin have both rejected, len(ends) if none."""
    return max(first_rejection(x + margin, ends, spend), first_rejection(x - margin, ends, spend, side=1))


def decided_at(x: np.ndarray, ends: Sequence[int], spend: Sequence[float], margin: float) -> int:
    """The look (0-based) at which the flow first makes a call on the differences `x`, len(ends) if none:
    a difference (a one-sided test of 0 rejects) or equivalence."""
    return min(first_rejection(x, ends, spend, side=-1), equivalence_look(x, ends, spend, margin))


def repeated_p(x: Sequence[float], ends: Sequence[int], planned: int, margin: float, equivalence: bool,
               rho: float = 2.0) -> float:  # fmt: skip
    """The smallest two-sided per-claim level at which the tests make the call: a difference (one side
    rejects 0) or equivalence (the lower test rejects +margin and the upper −margin). 1 when no level
    does; three significant digits."""
    d = np.asarray(x, dtype=float)

    def makes_call(a: float) -> bool:
        spend = spending(ends, planned, a, rho)
        look = equivalence_look(d, ends, spend, margin) if equivalence else first_rejection(d, ends, spend, side=-1)
        return look < len(ends)

    if not makes_call(1.0):
        return 1.0
    low, high = 1e-12, 1.0
    if makes_call(low):
        return low
    while high / low > 1.001:  # bisect on the log scale
        mid = math.sqrt(low * high)
        low, high = (low, mid) if makes_call(mid) else (mid, high)
    return high
