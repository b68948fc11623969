"""The group-sequential decisions: the repeated intervals are the inverted sign-flip tests at each look,
exact for every design; the decision rules; a look without spread."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as st

from dropout_lab.analysis import signflip
from dropout_lab.analysis.sequential import decide, decision, equivalence_p, looks_of, planned_ends, repeated_p_value
from dropout_lab.config import seed_waves


def test_repeated_intervals_are_each_look_s_inverted_sign_flip_tests_spending_a_t_squared():
    d = np.random.default_rng(1).normal(0.3, 1.0, 20)
    looks = looks_of(d, [5, 10, 20], 20, 0.05)
    spend = [0.025 * (n / 20) ** 2 for n in (5, 10, 20)]
    assert signflip.spending([5, 10, 20], 20, 0.05) == pytest.approx(spend)
    for k, look in enumerate(looks):
        assert (look.low, look.high) == signflip.interval(d, [5, 10, 20], spend, k)
        assert look.level == pytest.approx(1 - 2 * spend[k]) and look.mean == pytest.approx(d[: look.n].mean())
    assert (looks[0].low, looks[0].high) == (-math.inf, math.inf)  # 5 seeds: no sign vector is rare enough
    assert looks[1].high - looks[1].low > looks[-1].high - looks[-1].low  # it narrows


def test_seeds_fixed_in_advance_get_the_plain_sign_flip_interval_at_the_whole_level():
    d = np.random.default_rng(2).normal(1.0, 1.0, 8)
    dec = decision(d, [8], 8, 0.05, 0.5, higher_is_better=True, sequential=False)
    assert (dec.low, dec.high) == signflip.interval(d, [8], [0.025], 0) and dec.spent == 0.05


def test_decide_reads_the_interval_against_zero_and_the_margin():
    assert decide(0.2, 0.8, 1.0, higher_is_better=True) == "equivalent"  # inside ±margin wins
    assert decide(0.2, 1.8, 1.0, higher_is_better=True) == "better"
    assert decide(0.2, 1.8, 1.0, higher_is_better=False) == "worse"  # a wider gap is worse
    assert decide(-1.8, -0.2, 1.0, higher_is_better=False) == "better"
    assert decide(-0.5, 1.5, 1.0, higher_is_better=True) == "undecided"


def test_a_decision_intersects_the_looks_and_reports_seeds_and_tost():
    d = list(np.random.default_rng(3).normal(0.0, 0.4, 10))
    dec = decision(d, [5, 10], 20, 0.05 / 4, 1.0, higher_is_better=True)
    lows, highs = [look.low for look in dec.looks], [look.high for look in dec.looks]
    assert (dec.low, dec.high) == (max(lows), min(highs)) and dec.seeds_used == 10
    tost = max(st.ttest_1samp(d, -1.0, alternative="greater").pvalue, st.ttest_1samp(d, 1.0, alternative="less").pvalue)
    assert dec.equivalence_p == pytest.approx(tost) and equivalence_p(d[:1], 1.0) != equivalence_p(d[:1], 1.0)
    assert decision([0.1], [1], 20, 0.05, 1.0, True).decision == "undecided"  # one seed: nothing to read


def test_seed_waves_are_fives_up_to_the_maximum():
    assert seed_waves(20) == [list(range(i, i + 5)) for i in (0, 5, 10, 15)]
    assert seed_waves(12) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]


@pytest.mark.parametrize("max_seeds", [10, 12])
@pytest.mark.parametrize("claims", [2, 4, 6])
def test_every_design_errs_at_most_its_level_over_every_sign_of_the_differences(max_seeds, claims):
    """The worst case of a claim (a true difference of zero, symmetric differences) computed, not simulated:
    given the differences' magnitudes every sign vector is equally likely, and over all 2^N of them the
    repeated intervals of some look miss zero at most the per-claim level's share of the time, for each
    planned design (--max-seeds, the number of claims); the sign-flip needs no calibration."""
    ends, alpha = planned_ends(max_seeds), 0.05 / claims
    magnitudes = np.random.default_rng(max_seeds + claims).exponential(1.0, max_seeds)
    spend = signflip.spending(ends, max_seeds, alpha)
    signs = itertools.product((-1.0, 1.0), repeat=max_seeds)
    missed = [any(signflip.crossings(x, ends, spend)) or any(signflip.crossings(-x, ends, spend))
              for x in (np.array(s) * magnitudes for s in signs)]  # fmt: skip
    assert 0.5 * alpha < np.mean(missed) <= alpha + 1e-12, (np.mean(missed), alpha)


def test_the_error_benchmark_decides_exactly_as_the_flow_does():
    """benchmarks/sequential_error.py decides each claim from the first look at which its one-sided tests
    reject; on the same draws the flow's own `decision`, look by look (the intervals the tests invert),
    with a rate stopping once both its claims are decided, says the same."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import sequential_error as bench

    rng = np.random.default_rng(3)
    diffs = rng.normal([0.7, -3.3, 0.3, -7.6, -2.2, -11.3], [0.7, 1.3, 0.8, 1.2, 0.7, 1.6], (20, 20, 6))
    diffs = diffs.transpose(0, 2, 1)  # (runs, claims, seeds)
    ends, per_claim = bench.planned_ends(20), 0.05 / 6
    fast = bench.run_signflip(diffs, ends, 1.0)["decided"]
    code = {"undecided": 0, "better": 1, "worse": -1, "equivalent": 2}
    for r in range(len(diffs)):
        for rate in range(3):
            looks: list[int] = []
            for n in ends:
                looks.append(n)
                calls = [decision(diffs[r, 2 * rate + m, :n], looks, 20, per_claim, 1.0, m == 0, claim=False).decision
                         for m in range(2)]  # fmt: skip
                if "undecided" not in calls:
                    break
            for m, call in enumerate(calls):
                # the benchmark codes a decision in better/worse terms: +1 better whatever the metric's direction
                assert code[call] == fast[r, 2 * rate + m], (r, rate, m, call)


def test_a_look_without_spread_decides_nothing_and_never_narrows_the_intersection():
    """The audit's three reproductions (#41): differences that are all equal give a zero-width t-interval,
    which must not decide, nor stay in the running intersection."""
    margin = 0.001  # 0.1 points, as fractions
    zeros = decision([0.0] * 5, [5], 7, 0.05 / 6, margin, higher_is_better=True)
    assert zeros.decision == "undecided" and math.isinf(zeros.low) and math.isinf(zeros.high)
    assert zeros.repeated_p == 1.0 and math.isnan(zeros.equivalence_p)
    two = decision([0.0, 0.0], [2], 2, 0.05, margin, higher_is_better=True, sequential=False)
    assert two.decision == "undecided" and two.repeated_p == 1.0  # not "equivalent, p < 0.0001"
    # Five identical +1-point differences decide nothing; ten seeds averaging -1.5 points are read alone.
    later = list(np.random.default_rng(0).normal(-0.03, 0.004, 5))
    diffs = [0.01] * 5 + later
    dec = decision(diffs, [5, 10], 20, 0.05 / 6, 0.01, higher_is_better=True)
    assert dec.looks[0].low == -math.inf and (dec.low, dec.high) == (dec.looks[1].low, dec.looks[1].high)
    assert dec.decision != "better" and np.mean(diffs) < 0
    # Rounding is not spread: equal differences computed in floating point still decide nothing.
    assert decision([0.1 + 0.2 - 0.3 + 1e-18 * i for i in range(5)], [5], 5, 0.05, 0.01, True).decision == "undecided"


def test_the_verdict_says_why_a_claim_without_spread_is_undecided():
    from dropout_lab.analysis.stats import Comparison, Difference
    from dropout_lab.analysis.verdict import describe

    dec = decision([0.0] * 5, [5], 7, 0.05 / 6, 0.001, higher_is_better=True)
    zero = Difference(0.0, 0.0, 0.0, math.nan)
    text = describe(Comparison("final_test_acc", "paired", 5, zero, None, zero, 1.0, 6, "claims", dec, 0.0, 0.05,
                               (math.nan, math.nan), (math.nan, math.nan)))  # fmt: skip
    assert "undecided after 5 seeds" in text and "no spread" in text and "+0.00 to +0.00" not in text


def test_the_repeated_p_value_like_the_decision_skips_a_look_without_spread():
    # Five equal differences reject at the first look for any level above 2^-5 / (1/4 of a half); the flow's
    # rule gives that look no interval, so the p-value must not count it either.
    diffs = [0.01] * 5 + [-0.03, -0.02, 0.005, -0.025, 0.004]
    dec = decision(diffs, [5, 10], 10, 0.5, 0.001, higher_is_better=True)
    assert dec.looks[0].low == -math.inf and dec.decision == "undecided"  # undecided at level 0.5 ...
    assert repeated_p_value(diffs, [5, 10], 10, 0.001, equivalence=False) > 0.5  # ... so its p-value is above it
