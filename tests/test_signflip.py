"""The group-sequential sign-flip tests: exact over every sign of one set of magnitudes, their intervals
the inverted tests, their repeated p-values the smallest level making the call."""

import itertools
import math

import numpy as np
import pytest

from dropout_lab.analysis.signflip import crossings, interval, repeated_p, spending


def every_sign(magnitudes: np.ndarray):
    for signs in itertools.product((-1.0, 1.0), repeat=len(magnitudes)):
        yield np.array(signs) * magnitudes


@pytest.mark.parametrize("ends", [(5, 10), (4, 8, 12), (12,)])
def test_over_every_sign_vector_the_tests_reject_at_most_their_spent_level_at_each_look(ends):
    """The guarantee itself, computed rather than simulated: given the magnitudes, each of the 2^n sign
    vectors is equally likely under symmetry, and the share reaching a boundary by look k is at most
    the level spent by then (and uses most of it: the boundaries are not needlessly strict)."""
    magnitudes = np.random.default_rng(len(ends)).gamma(2.0, 1.0, ends[-1])
    spend = spending(ends, ends[-1], 0.2)
    first = np.array([crossings(x, ends, spend) for x in every_sign(magnitudes)])  # (2^n, looks)
    for k in range(len(ends)):
        share = (first[:, : k + 1].any(axis=1)).mean()
        assert share <= spend[k] + 1e-12, (k, share, spend[k])
    assert first.any(axis=1).mean() > 0.5 * spend[-1]


def brute_p(x: np.ndarray, shift: float) -> float:
    """One look, no rounding: the share of sign vectors whose sum of |x - shift| is at least the observed."""
    d = x - shift
    sums = np.array([(s * np.abs(d)).sum() for s in every_sign(np.ones(len(d)))])
    return float((sums >= d.sum() - 1e-12).mean())


def test_one_look_s_interval_is_the_inverted_exact_test():
    x = np.array([0.9, 1.7, -0.3, 2.4, 1.1, 0.2, 1.5, 3.1, 0.8, -0.6])
    spend = [0.05]  # per side: the classic 90% sign-flip interval
    low, high = interval(x, (10,), spend, 0)
    eps = 0.01 * (x.max() - x.min())
    assert brute_p(x, low - eps) <= 0.05 < brute_p(x, low + eps)
    assert brute_p(-x, -high - eps) <= 0.05 < brute_p(-x, -high + eps)
    assert low < x.mean() < high


def test_too_few_seeds_or_no_spread_at_the_level_give_the_whole_line():
    x = np.array([1.0, 2.0, 3.0])  # 2^-3 = 0.125 > 0.025: no sign vector is rare enough
    assert interval(x, (3,), [0.025], 0) == (-math.inf, math.inf)
    assert crossings(np.zeros(8), (8,), [0.5]) == [False]


def test_a_later_look_narrows_and_the_repeated_p_value_is_the_level_at_which_the_call_appears():
    rng = np.random.default_rng(5)
    x = rng.normal(1.0, 1.0, 20)
    ends = (5, 10, 15, 20)
    spend = spending(ends, 20, 0.05 / 6)
    intervals = [interval(x, ends, spend, k) for k in range(4)]
    assert intervals[0] == (-math.inf, math.inf)  # 2^-5 is more than look 1 spends
    assert intervals[-1][1] - intervals[-1][0] < intervals[1][1] - intervals[1][0]
    p = repeated_p(x, ends, 20, 0.5, equivalence=False)
    assert any(any(crossings(s * (x - 0.0), ends, spending(ends, 20, p * 1.01))) for s in (1, -1))
    assert not any(any(crossings(s * x, ends, spending(ends, 20, p / 1.01))) for s in (1, -1))
