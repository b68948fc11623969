"""Statistics against scipy, brute force and hand-computed values."""

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats as st

from dropout_lab.analysis import signflip
from dropout_lab.analysis.stats import (
    SIGN_FLIP_SAMPLES,
    claim_alpha,
    compare_all,
    holm,
    mean_ci,
    min_detectable,
    paired,
    power,
    seeds_needed,
    sign_flip_p,
    statistics_rows,
    welch,
)
from dropout_lab.analysis.verdict import verdict
from dropout_lab.config import Design, Variant
from tests.summaries import BASE_ACC, rows, sweep


def test_mean_ci_uses_student_t():
    est = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sd sqrt(2.5); t(0.975, 4) = 2.776445105 (tables); half = 2.7764 * 1.5811 / sqrt(5)
    half = 2.776445105 * math.sqrt(2.5) / math.sqrt(5)
    assert est.n == 5 and est.mean == 3.0 and est.std == pytest.approx(math.sqrt(2.5))
    assert est.ci_low == pytest.approx(3 - half, abs=1e-6) and est.ci_high == pytest.approx(3 + half, abs=1e-6)


def test_single_value_has_no_interval():
    est = mean_ci([0.7])
    assert est.mean == 0.7 and math.isnan(est.std) and math.isnan(est.ci_low)


def test_welch_matches_hand_computation():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    d = welch(a, b)
    va, vb = (5 / 3) / 4, 10.0 / 5  # sample variances / n
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 4)
    assert d.diff == -3.5
    assert dof == pytest.approx(5.520, abs=1e-3)
    assert -3.5 / se == pytest.approx(-2.2514, abs=1e-3)
    assert 0.065 < d.p_value < 0.074  # tables: 0.074 at 5 and 0.065 at 6 degrees of freedom
    assert d.ci_low < 0 < d.ci_high


A = [0.721, 0.715, 0.733, 0.709, 0.726, 0.718]
B = [0.712, 0.713, 0.722, 0.705, 0.716, 0.716]


def test_paired_equals_scipy_ttest_rel_and_a_t_interval_of_the_differences():
    p = paired(A, B)
    ref = st.ttest_rel(A, B)
    d = np.subtract(A, B)
    assert p.n == 6 and p.t.diff == pytest.approx(d.mean())
    assert p.t.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    low, high = st.t.interval(0.95, 5, loc=d.mean(), scale=d.std(ddof=1) / math.sqrt(6))
    assert (p.t.ci_low, p.t.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert p.sd == pytest.approx(d.std(ddof=1))
    # the pairing is why it matters: the same numbers unpaired are far from significant
    assert p.t.p_value < 0.05 < welch(A, B).p_value


def brute_force_sign_flip(diffs):
    observed = abs(sum(diffs) / len(diffs))
    extreme = total = 0
    for signs in itertools.product((1, -1), repeat=len(diffs)):
        total += 1
        extreme += abs(sum(s * d for s, d in zip(signs, diffs, strict=True)) / len(diffs)) >= observed - 1e-12
    return extreme / total


@pytest.mark.parametrize(
    "diffs", [[0.9, 0.4, 1.3, -0.2, 0.8, 0.5, 1.1], [1.0, -1.0, 2.0], [0.3, 0.3, 0.3, 0.3, 0.3], [0.0, 0.0]]
)
def test_sign_flip_p_equals_brute_force_enumeration(diffs):
    p, exact = sign_flip_p(diffs)
    assert exact and p == pytest.approx(brute_force_sign_flip(diffs), abs=1e-15)


def test_sign_flip_floor_with_five_seeds_and_monte_carlo_beyond_twenty():
    assert sign_flip_p([1, 2, 3, 4, 5]) == (2 / 32, True)  # all positive: only +all and -all are as extreme
    p, exact = sign_flip_p([1.0] * 25)
    # 2 / 2^25 exactly; a Monte Carlo p counts the observed pattern as a draw: (b + 1) / (B + 1), never 0
    assert not exact and p == pytest.approx(1 / (SIGN_FLIP_SAMPLES + 1), rel=0.5) and p > 0


def test_one_seed_has_no_sign_flip_p_as_it_has_no_t_test():
    p = paired([0.7], [0.6])
    assert math.isnan(p.sign_flip_p) and math.isnan(p.t.p_value)
    assert math.isnan(sign_flip_p([0.1])[0])


def test_holm_on_a_known_example():
    # sorted 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04, raised to 0.06 to stay monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.02, math.nan])
    assert out[0] == 0.02 and math.isnan(out[1])  # nan is not part of the family


def test_power_matches_a_textbook_value_and_min_detectable_inverts_it():
    # paired t-test, n = 10, effect = 1 sd: power 0.803 (G*Power / R's power.t.test type="paired")
    assert power(1.0, 1.0, 10) == pytest.approx(0.8031, abs=1e-3)
    mde = min_detectable(1.0, 10)
    assert power(mde, 1.0, 10) == pytest.approx(0.8, abs=1e-6) and mde == pytest.approx(0.996, abs=1e-3)
    n = seeds_needed(0.5, 1.0)
    assert power(0.5, 1.0, int(n)) >= 0.8 > power(0.5, 1.0, int(n) - 1) and n == 34  # R: n = 33.4 -> 34
    assert math.isnan(seeds_needed(0.0, 1.0))


def test_statistics_rows_pair_by_seed_and_holm_adjust_over_every_claim():
    stats = statistics_rows(sweep())
    assert len(stats) == 3 * 4
    acc = {r["dropout"]: r for r in stats if r["metric"] == "final_test_acc"}
    gap = {r["dropout"]: r for r in stats if r["metric"] == "generalization_gap"}
    assert acc[0.0]["design"] is None and math.isnan(acc[0.0]["paired_t_p_value"])
    for rate in (0.25, 0.5):
        r = acc[rate]
        runs = [x["final_test_acc"] for x in sweep() if x["dropout"] == rate]
        assert r["design"] == "paired" and r["paired_n"] == 10 and r["unit"] == "fraction"
        assert r["paired_t_p_value"] == pytest.approx(st.ttest_rel(runs, BASE_ACC).pvalue)
        assert r["welch_p_value"] == pytest.approx(st.ttest_ind(runs, BASE_ACC, equal_var=False).pvalue)
        assert r["sign_flip_p_value"] == pytest.approx(brute_force_sign_flip(np.subtract(runs, BASE_ACC).tolist()))
        assert r["holm_family_size"] == 4  # 2 rates x (test accuracy, gap): every claim the verdict makes
        assert r["margin"] == 0.01 and r["seeds_used"] == 10 and r["looks"] == 1
    family = [acc[0.25], acc[0.5], gap[0.25], gap[0.5]]
    assert [r["holm_p_value"] for r in family] == pytest.approx(holm([r["paired_t_p_value"] for r in family]))
    assert {r["decision"] for r in stats if r["metric"] not in ("final_test_acc", "generalization_gap")} == {None}
    assert "best_test_acc" not in {r["metric"] for r in stats}  # test-selected: reported, never tested
    loss = next(r for r in stats if r["metric"] == "final_test_loss" and r["dropout"] == 0.25)
    assert loss["unit"] == "nats per image"


def test_a_decision_is_a_bonferroni_sign_flip_interval_when_seeds_were_fixed():
    """One look: the interval is the inverted sign-flip test at 1 - 0.05/claims, and the decision reads it
    against zero and the margin."""
    stats = statistics_rows(sweep())
    r = next(x for x in stats if x["metric"] == "final_test_acc" and x["dropout"] == 0.5)
    runs = [x["final_test_acc"] for x in sweep() if x["dropout"] == 0.5]
    d = np.subtract(runs, BASE_ACC)
    per_claim, claims = claim_alpha(sweep())
    assert claims == 4 and per_claim == pytest.approx(0.0125)
    low, high = signflip.interval(d, [10], [per_claim / 2], 0)
    assert (r["decision_ci_low"], r["decision_ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert r["decision"] == "worse" and high < 0  # lower test accuracy: worse
    g = next(x for x in stats if x["metric"] == "generalization_gap" and x["dropout"] == 0.5)
    assert g["decision"] == "better" and g["decision_ci_high"] < 0  # a narrower gap: better
    tost = max(
        st.ttest_1samp(d, -0.01, alternative="greater").pvalue, st.ttest_1samp(d, 0.01, alternative="less").pvalue
    )
    assert r["equivalence_p_value"] == pytest.approx(tost)


def test_equivalent_needs_the_whole_interval_inside_the_margin():
    base = [0.700, 0.712, 0.705, 0.718, 0.709, 0.703, 0.711, 0.707]
    near = [b + d for b, d in zip(base, [0.001, -0.002, 0.0015, -0.001, 0.0005, 0.002, -0.0015, 0.0], strict=True)]
    data = rows(0.0, range(8), [0.1] * 8, base) + rows(0.1, range(8), [0.1] * 8, near)
    acc = compare_all(data)["final_test_acc"][Variant((("dropout", 0.1),))]
    assert acc.decision.decision == "equivalent" and -0.01 < acc.decision.low < acc.decision.high < 0.01
    wide = compare_all(data, Design(margin=0.001))["final_test_acc"][Variant((("dropout", 0.1),))]
    assert wide.decision.decision == "undecided"  # the same interval against a 0.1-point margin
    assert "equivalent within ±1.00 points" in " ".join(verdict(data))  # the verdict's word for it


def test_power_is_a_range_over_the_spread_s_interval_and_contains_the_point_value():
    c = compare_all(sweep())["final_test_acc"][Variant((("dropout", 0.25),))]
    low, high = c.min_detectable
    point = min_detectable(c.sd, c.n, alpha=claim_alpha(sweep())[0])
    assert low < point < high
    chi = st.chi2.ppf([0.975, 0.025], 9)
    assert low == pytest.approx(min_detectable(c.sd * math.sqrt(9 / chi[0]), 10, alpha=0.0125))


def test_a_variant_that_stopped_early_is_paired_on_its_own_seeds_at_the_looks_it_took_part_in():
    """Under --seeds auto a variant whose claims are decided trains no more seeds while the baseline and
    the undecided variants go on: its comparison pairs the seeds it has, and its decision is the one it
    had when it stopped."""
    rng = np.random.default_rng(7)
    acc = 0.71 + 0.006 * rng.standard_normal(15)
    gap = 0.12 + 0.005 * rng.standard_normal(15)
    data = rows(0.0, range(15), gap, acc)
    data += rows(0.25, range(15), gap - 0.03 + 0.005 * rng.standard_normal(15), acc + 0.004 * rng.standard_normal(15))
    # dropout 0.5: differences large and steady enough to be decided at the second look (the first, five
    # seeds, cannot decide: 2^-5 is more than it spends)
    data += rows(0.5, range(10), gap[:10] - 0.1 + 0.0002 * rng.standard_normal(10),
                 acc[:10] - 0.05 + 0.0002 * rng.standard_normal(10))  # fmt: skip
    half = Variant((("dropout", 0.5),))
    later = compare_all(data, Design((5, 10, 15), 20))
    at_stop = compare_all([r for r in data if r["seed"] < 10], Design((5, 10), 20))
    for metric in ("final_test_acc", "generalization_gap"):
        c = later[metric][half]
        assert c.design == "paired" and c.n == 10 and [look.n for look in c.decision.looks] == [5, 10]
        assert c.decision == at_stop[metric][half].decision and c.decision.decision in ("better", "worse")
        going = later[metric][Variant((("dropout", 0.25),))]
        assert going.n == 15 and [look.n for look in going.decision.looks] == [5, 10, 15]
    rows_ = {(r["dropout"], r["metric"]): r for r in statistics_rows(data, Design((5, 10, 15), 20))}
    assert (rows_[0.5, "final_test_acc"]["seeds_used"], rows_[0.5, "final_test_acc"]["looks"]) == (10, 2)
    assert (rows_[0.25, "final_test_acc"]["seeds_used"], rows_[0.25, "final_test_acc"]["looks"]) == (15, 3)


def test_unpaired_seeds_fall_back_to_welch():
    data = rows(0.0, [0, 1, 2], [0.1, 0.12, 0.11], [0.70, 0.71, 0.72])
    data += rows(0.5, [3, 4, 5], [0.0, 0.01, 0.02], [0.69, 0.70, 0.71])
    c = compare_all(data)["final_test_acc"][Variant((("dropout", 0.5),))]
    assert c.design == "unpaired" and c.paired is None and c.primary == welch([0.69, 0.70, 0.71], [0.70, 0.71, 0.72])


def test_a_run_whose_baseline_seeds_all_score_alike_is_analysed_without_a_warning():
    """The fake dataset's collapsed models: the baseline's three seeds all at 9.00 % test accuracy, the variant's
    not. scipy's Welch test warned of "catastrophic cancellation" onto the run's terminal; the same test from
    the same standard error and degrees of freedom says nothing and gives scipy's p-value."""
    data = rows(0.0, [0, 1, 2], [0.0467, 0.0467, 0.0411], [0.09, 0.09, 0.09])
    data += rows(0.25, [0, 1, 2], [0.0467, 0.0467, 0.0133], [0.09, 0.09, 0.10])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare_all(data)
        statistics_rows(data)
        w = welch([0.09, 0.09, 0.10], [0.09, 0.09, 0.09])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert w.p_value == pytest.approx(st.ttest_ind([0.09, 0.09, 0.10], [0.09] * 3, equal_var=False).pvalue)


def test_differences_equal_up_to_rounding_have_no_spread_in_the_fixed_sample_check_either():
    """Gaps are differences of accuracies, so a setting that shifts every seed alike gives paired differences
    equal only up to float rounding: the paired t-test read that rounding as a spread (a p-value of rounding
    noise, a t-interval of width 1e-16) where the decisions see none (signflip.no_spread)."""
    base = [0.7, 0.3, 0.9, 0.1]
    shifted = [b + 1 / 3 for b in base]
    d = np.subtract(shifted, base)
    assert d.std(ddof=1) > 0  # rounding
    p = paired(shifted, base)
    assert p.sd == 0 and p.t.ci_low == p.t.ci_high == p.t.diff and p.t.p_value == 0.0
    assert paired(base, base).t.p_value == 1.0
    # No difference at all, up to rounding (some seeds 0, some one unit in the last place): no difference found.
    same = [b + 0.1 - 0.1 for b in [0.7, 0.3, 0.9, 0.1, 0.45, 0.65]]
    assert 0 < np.subtract(same, [0.7, 0.3, 0.9, 0.1, 0.45, 0.65]).std(ddof=1) < 1e-15
    assert paired(same, [0.7, 0.3, 0.9, 0.1, 0.45, 0.65]).t.p_value == 1.0
    assert welch([0.2, 0.2], [0.5 - 0.3, 0.6 - 0.4]).p_value == 1.0  # 0.2 and 0.19999999999999998
