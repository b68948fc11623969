"""Statistics against hand-computed values, and the verdict's wording."""

import math

import pytest

from tasks.stats import describe_difference, mean_ci, statistics_rows, verdict, welch


def test_mean_ci_uses_student_t():
    est = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sd sqrt(2.5); t(0.975, 4) = 2.776445105 (tables); half = 2.7764 * 1.5811 / sqrt(5)
    half = 2.776445105 * math.sqrt(2.5) / math.sqrt(5)
    assert est.n == 5 and est.mean == 3.0 and est.std == pytest.approx(math.sqrt(2.5))
    assert est.ci_low == pytest.approx(3 - half, abs=1e-6) and est.ci_high == pytest.approx(3 + half, abs=1e-6)


def test_two_values_use_the_wide_one_degree_of_freedom_quantile():
    est = mean_ci([0.0, 2.0])  # t(0.975, 1) = 12.7062047
    assert est.ci_high - est.mean == pytest.approx(12.7062047 * math.sqrt(2) / math.sqrt(2), rel=1e-6)


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
    assert dof == pytest.approx(5.520, abs=1e-3)  # 2.41667**2 / (0.41667**2 / 3 + 2**2 / 4)
    assert -3.5 / se == pytest.approx(-2.2514, abs=1e-3)
    # two-sided p of |t| = 2.2514: tables give 0.074 at 5 and 0.065 at 6 degrees of freedom
    assert 0.065 < d.p_value < 0.074
    assert d.ci_low < d.diff < d.ci_high and d.ci_low < 0 < d.ci_high  # not significant: CI spans 0


def summary(rate, gaps, accs):
    label = "baseline" if rate == 0 else f"dropout={rate:g}"
    pairs = enumerate(zip(gaps, accs, strict=True))
    return [{"model": label, "dropout": rate, "seed": i, "generalization_gap": g, "final_test_acc": a,
             "best_test_acc": a, "final_test_loss": 1 - a} for i, (g, a) in pairs]  # fmt: skip


def test_verdict_significant_gap_and_insignificant_accuracy():
    rows = summary(0.0, [0.12, 0.13, 0.11, 0.125, 0.115], [0.72, 0.73, 0.71, 0.725, 0.715])
    rows += summary(0.25, [0.02, 0.03, 0.025, 0.035, 0.02], [0.725, 0.715, 0.73, 0.72, 0.718])
    (line,) = verdict(rows)
    assert line.startswith("dropout 0.25 cut the generalization gap by 9.4 ± ")  # 12.0 - 2.6 points
    assert "(p < 0.001)" in line
    assert "its test accuracy differs by +0.2 ± " in line  # 72.16 - 72.00
    assert "not significant at 5%" in line and "(5 vs 5 seeds, Welch's t-test)" in line


def test_verdict_not_significant_gap():
    rows = summary(0.0, [0.10, 0.05, 0.12], [0.70, 0.72, 0.71])
    rows += summary(0.1, [0.09, 0.11, 0.06], [0.70, 0.71, 0.69])
    (line,) = verdict(rows)
    assert "left the generalization gap unchanged within noise" in line and "not significant at 5%" in line


def test_verdict_single_seed_refuses_to_invent_an_interval():
    rows = summary(0.0, [0.12], [0.7]) + summary(0.25, [0.02], [0.72])
    (line,) = verdict(rows)
    assert "one seed each" in line and "no confidence interval can be computed" in line
    assert "±" not in line and "p =" not in line and "p <" not in line


def test_describe_widened_gap():
    d = welch([0.2, 0.21, 0.22], [0.1, 0.11, 0.12])
    assert describe_difference("generalization_gap", d).startswith("widened the generalization gap by 10.0 ± ")


def test_statistics_rows_cover_every_rate_and_metric():
    rows = statistics_rows(summary(0.0, [0.1, 0.2], [0.7, 0.8]) + summary(0.5, [0.0, 0.1], [0.6, 0.7]))
    assert len(rows) == 2 * 4
    base = [r for r in rows if r["dropout"] == 0.0]
    assert all(math.isnan(r["welch_p_value"]) for r in base)
    gap = next(r for r in rows if r["dropout"] == 0.5 and r["metric"] == "generalization_gap")
    assert gap["diff_vs_baseline"] == pytest.approx(-0.1) and gap["n_seeds"] == 2
