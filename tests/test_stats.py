"""Statistics against scipy, brute force and hand-computed values, and the verdict's wording."""

import itertools
import math
import re

import numpy as np
import pytest
from scipy import stats as st

from dropout_lab.analysis.stats import (
    compare_variants,
    data_scope,
    holm,
    mean_ci,
    min_detectable,
    paired,
    power,
    seeds_needed,
    sign_flip_p,
    statistics_rows,
    verdict,
    welch,
)
from dropout_lab.config import Variant


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
    assert not exact and p < 1e-4  # 2 / 2^25 exactly; sampling finds (almost) none


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


def rows(rate, seeds, gaps, accs, **extra):
    label = "baseline" if rate == 0 else f"dropout={rate:g}"
    base = {"n_train": 50_000, "n_test": 10_000, "epochs": 8, "dataset": "cifar10", "data_verified": True}
    return [{**base, **extra, "model": label, "dropout": rate, "seed": s, "generalization_gap": g,
             "final_test_acc": a, "best_test_acc": a, "final_test_loss": 1 - a}
            for s, g, a in zip(seeds, gaps, accs, strict=True)]  # fmt: skip


BASE_ACC = [0.712, 0.700, 0.725, 0.705, 0.718]


def sweep():
    out = rows(0.0, range(5), [0.12, 0.13, 0.11, 0.125, 0.115], BASE_ACC)
    out += rows(0.25, range(5), [0.02, 0.03, 0.025, 0.035, 0.02], [a + d for a, d in
                zip(BASE_ACC, [0.012, -0.006, 0.009, 0.004, -0.008], strict=True)])  # fmt: skip
    out += rows(0.5, range(5), [-0.01, 0.0, -0.005, 0.002, -0.004], [a - 0.03 + d for a, d in
                zip(BASE_ACC, [0.002, -0.001, 0.001, 0.0, -0.002], strict=True)])  # fmt: skip
    return out


def test_statistics_rows_pair_by_seed_and_holm_adjust_across_rates():
    stats = statistics_rows(sweep())
    assert len(stats) == 3 * 4
    acc = {r["dropout"]: r for r in stats if r["metric"] == "final_test_acc"}
    assert acc[0.0]["design"] is None and math.isnan(acc[0.0]["paired_t_p_value"])
    for rate in (0.25, 0.5):
        r = acc[rate]
        runs = [x["final_test_acc"] for x in sweep() if x["dropout"] == rate]
        assert r["design"] == "paired" and r["paired_n"] == 5 and r["unit"] == "fraction"
        assert r["paired_t_p_value"] == pytest.approx(st.ttest_rel(runs, BASE_ACC).pvalue)
        assert r["welch_p_value"] == pytest.approx(st.ttest_ind(runs, BASE_ACC, equal_var=False).pvalue)
        assert r["sign_flip_p_value"] == pytest.approx(brute_force_sign_flip(np.subtract(runs, BASE_ACC).tolist()))
        assert r["holm_family_size"] == 2
    assert [acc[0.25]["holm_p_value"], acc[0.5]["holm_p_value"]] == pytest.approx(
        holm([acc[0.25]["paired_t_p_value"], acc[0.5]["paired_t_p_value"]])
    )
    loss = next(r for r in stats if r["metric"] == "final_test_loss" and r["dropout"] == 0.25)
    assert loss["unit"] == "nats per image"


def test_unpaired_seeds_fall_back_to_welch():
    data = rows(0.0, [0, 1, 2], [0.1, 0.12, 0.11], [0.70, 0.71, 0.72])
    data += rows(0.5, [3, 4, 5], [0.0, 0.01, 0.02], [0.69, 0.70, 0.71])
    c = compare_variants(data, "final_test_acc")[Variant((("dropout", 0.5),))]
    assert c.design == "unpaired" and c.paired is None and c.primary == welch([0.69, 0.70, 0.71], [0.70, 0.71, 0.72])


def test_verdict_significant_and_inconclusive_wording():
    lines = verdict(sweep())
    line25 = next(x for x in lines if x.startswith("dropout 0.25 vs baseline"))
    assert "(5 paired seeds)" in line25
    assert "narrowed the generalization gap by 9.40 points (95% CI" in line25  # 12.0 - 2.6 points
    assert "test accuracy inconclusive — the 95% interval" in line25 and "spans both a gain and a loss" in line25
    assert "Holm-adjusted over 2 rates" in line25
    assert re.search(r"about \d+ seeds would settle a difference of 0\.22 points", line25)
    assert "unchanged" not in " ".join(lines)
    line50 = next(x for x in lines if x.startswith("dropout 0.5 vs baseline"))
    assert "lowered the test accuracy by 3.00 points" in line50 and "paired t-test p < 0.001" in line50
    power_line = next(x for x in lines if x.startswith("Power (dropout 0.25, test accuracy)"))
    assert "with 5 paired seeds, a true difference of" in power_line
    assert "the sign-flip check cannot go below p = 0.062 with 5 seeds" in power_line


def test_verdict_single_seed_refuses_to_invent_an_interval():
    lines = verdict(rows(0.0, [0], [0.12], [0.7]) + rows(0.25, [0], [0.02], [0.72]))
    (line,) = lines
    assert "one seed each" in line and "no interval or test is given" in line
    assert "p =" not in line and "p <" not in line and "inconclusive" not in line


def test_reduced_runs_say_so_and_full_runs_do_not():
    small = rows(0.0, [0, 1], [0.1, 0.2], [0.7, 0.8], n_train=2000, n_test=500, epochs=2)
    small += rows(0.5, [0, 1], [0.0, 0.1], [0.6, 0.7], n_train=2000, n_test=500, epochs=2)
    first = verdict(small)[0]
    assert first.startswith("Reduced run (") and "not an answer for CIFAR-10" in first
    assert "2,000 of 50,000 training images" in first and "500 of 10,000 test images" in first
    assert "2 epochs instead of the recipe's 8" in first
    assert data_scope(sweep()) == (None, False)
    unverified = [{**r, "data_verified": False} for r in sweep()]
    assert verdict(unverified)[0].startswith("Data: an unverified local copy of CIFAR-10")
    fake = [{**r, "dataset": "fake"} for r in sweep()]
    assert "generated images, not CIFAR-10" in verdict(fake)[0]


def test_verdict_for_seeds_without_spread_says_what_it_saw():
    data = rows(0.0, [0, 1, 2], [0.1, 0.12, 0.11], [0.70, 0.71, 0.72])
    data += rows(0.5, [0, 1, 2], [0.0, 0.02, 0.01], [0.70, 0.71, 0.72])  # accuracy equal on every seed
    lines = verdict(data)
    assert "test accuracy identical on all 3 seeds" in lines[0] and "spans" not in lines[0]
    assert lines[1] == "Power (dropout 0.5, test accuracy): not estimable, the 3 paired seeds show no spread."
