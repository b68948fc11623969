"""The verdict's words: each claim in its decision's own word, where a gap change came from, what a run
with one seed or reduced data can and cannot say, and the open claims that drive --seeds auto."""

import math
import re

from dropout_lab.analysis.stats import DECIDED, compare_all, statistics_rows
from dropout_lab.analysis.verdict import data_scope, look_markdown, open_claims, verdict
from dropout_lab.config import Design, Variant
from tests.summaries import BASE_ACC, rows, sweep


def test_open_claims_name_the_undecided_claims_by_variant_and_leave_decided_variants_out():
    found = open_claims(sweep(), Design())
    assert list(found) == [Variant((("dropout", 0.25),))]  # dropout 0.5: worse and better, both decided
    assert found[Variant((("dropout", 0.25),))] == ["dropout 0.25 test accuracy (-0.70 to +1.05 points)"]


def test_a_first_look_too_small_for_its_level_says_so_not_minus_infinity():
    """Five of 20 seeds: no sign pattern is rare enough for the level the first look spends."""
    five = [r for r in sweep() if r["seed"] < 5]
    found = open_claims(five, Design((5,), 20))
    assert found[Variant((("dropout", 0.25),))] == ["dropout 0.25 test accuracy (no interval yet)",
                                                   "dropout 0.25 generalization gap (no interval yet)"]  # fmt: skip
    assert "inf" not in " ".join(" ".join(v) for v in found.values())


def test_a_look_without_spread_says_so_not_that_its_interval_is_yet_to_come():
    """Ten seeds whose differences are all 0 (a collapsed model): more such seeds decide nothing, so the look
    says "no spread", where it said "no interval yet" (the run's log line, its run page's look table)."""
    flat = [{**r, "final_test_acc": 0.5, "final_train_eval_acc": 0.6, "generalization_gap": 0.1} for r in sweep()]
    design = Design((5, 10), 10)
    found = open_claims(flat, design)[Variant((("dropout", 0.25),))]
    assert found == [
        f"dropout 0.25 {claim} (no interval: no spread)" for claim in ("test accuracy", "generalization gap")
    ]
    table = look_markdown(design, compare_all(flat, design), None, [], budget_reached=True)
    assert "| dropout 0.25 | test accuracy | undecided | no interval: no spread | 10 |" in table, table


def test_no_power_where_the_sign_flip_test_cannot_reach_the_claim_s_level():
    """Seven seeds, four claims: 2^7 sign patterns cannot reach the two-sided 0.0125 a claim is tested at, so
    the decision detects no difference, however large. The power line gave a detectable difference (the t
    test's) beside "the sign-flip check cannot go below p = 0.250"; the table a range instead of "none"."""
    seven = [r for r in sweep() if r["seed"] < 7]
    power = next(x for x in verdict(seven) if x.startswith("Power (dropout 0.25, test accuracy)"))
    assert power == ("Power (dropout 0.25, test accuracy): none at the last look's level (two-sided 0.012): the 7 "
                     "paired seeds' 2^7 sign patterns cannot reach it, whatever the difference.")  # fmt: skip
    rows = statistics_rows(seven)
    assert {r["min_detectable_diff_80_low"] for r in rows if r["metric"] in DECIDED and r["model"] != "baseline"} == {
        math.inf
    }
    eight = [r for r in sweep() if r["seed"] < 8]  # 1/2^8 per side is within 0.00625: a difference is detectable
    assert "a true difference detected 80% of the time" in " ".join(verdict(eight))
    # Nor do fewer than 8 seeds detect the observed differences: the t test's power said 3 for the clear ones.
    needed = [r["seeds_needed_80_low"] for r in statistics_rows(sweep()) if r["metric"] in DECIDED]
    assert min(k for k in needed if k == k) == 8, needed


def test_verdict_speaks_in_decisions_and_says_where_the_gap_change_came_from():
    lines = verdict(sweep())
    line25 = next(x for x in lines if x.startswith("dropout 0.25 vs baseline"))
    assert "(10 paired seeds)" in line25
    assert "generalization gap better — narrowed by 9.40 points (" in line25  # 12.0 - 2.6 points
    # the gap narrowed because the training images were fit less, not because test accuracy rose much; the
    # train side on the sum of the two claims' intervals (a pair's train difference is its gap difference plus
    # its test difference, so the sum holds whenever they do: inside the family, not beside it), an undecided
    # test accuracy only "changed by"
    stats = {r["metric"]: r for r in statistics_rows(sweep()) if r["model"] == "dropout=0.25"}
    gap, acc, train = (stats[m] for m in ("generalization_gap", "final_test_acc", "final_train_eval_acc"))
    low, high = gap["decision_ci_low"] + acc["decision_ci_low"], gap["decision_ci_high"] + acc["decision_ci_high"]
    assert (train["decision_ci_low"], train["decision_ci_high"]) == (low, high) and high < 0
    assert f"the model fit the training images 9.18 points less ({100 * low:.2f} to {100 * high:.2f} points, the " \
           "sum of the two claims' intervals)" in line25  # fmt: skip
    assert "while test accuracy changed by +0.22 points (-0.70 to +1.05 points, 98.75% CI)" in line25
    assert re.search(r"test accuracy undecided after 10 seeds: changed by \+0.22 points \(-[\d.]+ to \+[\d.]+ points, "
                     r"98.75% CI: neither clear of zero nor inside ±1.00 points; p 0.43 for a difference, 1.00 over "
                     r"4 claims\)", line25)  # fmt: skip
    for word in ("inconclusive", "significant", "unchanged", "would settle", "t-test", "Holm", "95% CI"):
        assert word not in " ".join(lines[:-1])
    line50 = next(x for x in lines if x.startswith("dropout 0.5 vs baseline"))
    assert "test accuracy worse — lowered by 3.00 points (" in line50 and "while test accuracy fell 3.00" in line50
    assert "p 0.002 for a difference, 0.0078 over 4 claims" in line50  # 2 / 2^10: every sign alike
    assert "not shown to exceed" not in line50  # -3.15 to -2.85: clear of the -1-point margin too
    power_line = next(x for x in lines if x.startswith("Power (dropout 0.25, test accuracy)"))
    assert re.search(r"with 10 paired seeds, a true difference detected 80% of the time at the last look's level "
                     r"\(two-sided 0.012\) is [\d.]+ to [\d.]+ points", power_line)  # fmt: skip
    assert lines[-1].startswith("Decisions: better / worse / equivalent within ±1.00 points / undecided")
    assert (
        "Bonferroni over 4 claims: 2 rates x test accuracy and gap, so together they hold at >= 95% however the "
        "stopping went, if each claim's seed differences are symmetric about their mean" in lines[-1]
    )
    assert "seeds fixed in advance: one look, sign-flip tests" in lines[-1]
    assert "fixed-sample p-values, shown apart, ignore the looks" in lines[-1]
    # The claims' scope, where the verdict is: this recipe, these test images, seeds the only variation.
    assert "They are about this recipe on these" in lines[-1] and "seeds the only source of variation" in lines[-1]


def test_a_decided_change_whose_interval_crosses_the_margin_says_so():
    base = [0.701, 0.706, 0.703, 0.708, 0.704, 0.707, 0.702, 0.705]
    shift = [0.003, 0.013, 0.005, 0.011, 0.006, 0.010, 0.004, 0.012]  # +0.8 points: clear of 0, not of the margin
    data = rows(0.0, range(8), [0.1] * 8, base) + rows(
        0.1, range(8), [0.1] * 8, [a + d for a, d in zip(base, shift, strict=True)]
    )
    (line,) = [x for x in verdict(data) if x.startswith("dropout 0.1 vs baseline")]
    assert "test accuracy better — raised by 0.80 points (" in line and ", not shown to exceed ±1.00 points" in line


def test_verdict_single_seed_refuses_to_invent_an_interval_and_gives_the_command_for_an_answer():
    lines = verdict(rows(0.0, [0], [0.12], [0.7]) + rows(0.25, [0], [0.02], [0.72]))
    first, line = lines
    assert first.startswith("One seed per model cannot answer the question. For an answer: "
                            "`python flows/compare.py --seeds auto` trains 5 to 20 seeds")  # fmt: skip
    assert "about 5–20 min here (this run's training took 1.0 min)" in first
    assert "one seed each" in line and "no interval, no decision" in line
    assert "p =" not in line and "p <" not in line and "undecided" not in line


def test_reduced_runs_say_so_and_full_runs_do_not():
    small = rows(0.0, [0, 1], [0.1, 0.2], [0.7, 0.8], n_train=2000, n_test=500, epochs=2)
    small += rows(0.5, [0, 1], [0.0, 0.1], [0.6, 0.7], n_train=2000, n_test=500, epochs=2)
    first = verdict(small)[0]
    assert first.startswith("Reduced run (") and "not an answer for CIFAR-10" in first
    assert "2,000 of 50,000 training images" in first and "500 of 10,000 test images" in first
    assert "2 epochs instead of the recipe's 8" in first
    one = [{**r, "epochs": 1} for r in small]
    assert "1 epoch instead of the recipe's 8" in verdict(one)[0]  # counts read as sentences: 1 epoch, 2 epochs
    assert data_scope(sweep()) == (None, False)
    unverified = [{**r, "data_verified": False} for r in sweep()]
    assert verdict(unverified)[0].startswith("Data: an unverified local copy of CIFAR-10")
    fake = [{**r, "dataset": "fake"} for r in sweep()]
    assert "generated images, not CIFAR-10" in verdict(fake)[0]


def test_verdict_for_seeds_without_spread_says_what_it_saw():
    data = rows(0.0, [0, 1, 2], [0.1, 0.12, 0.11], [0.70, 0.71, 0.72])
    data += rows(0.5, [0, 1, 2], [0.0, 0.02, 0.01], [0.70, 0.71, 0.72])  # accuracy equal on every seed
    lines = verdict(data)
    # Equal differences on every seed decide nothing (#41): no zero-width interval, no "equivalent".
    assert "test accuracy undecided after 3 seeds: changed by +0.00 points (no interval: the paired differences " \
        "show no spread" in lines[0]  # fmt: skip
    assert "equivalent" not in lines[0] and "+0.00 to +0.00" not in lines[0]
    assert lines[1] == "Power (dropout 0.5, test accuracy): not estimable, the 3 paired seeds show no spread."


def test_a_train_side_whose_interval_spans_zero_is_not_called_more_or_less():
    """A gap narrowed by 2 points because test accuracy rose about 2 (a spread of ±1.5 points) while training
    accuracy stayed put: the train side's interval (the two claims' summed) spans zero, so the verdict says
    it 'changed by', not that the model fit the training images less."""
    noise = [0.015, -0.012, 0.01, -0.015, 0.012, -0.01, 0.014, -0.013, 0.011, -0.014]
    gaps = [0.12 + 0.001 * (i % 3) for i in range(10)]
    out = rows(0.0, range(10), gaps, BASE_ACC) + rows(
        0.25,
        range(10),
        [g - 0.02 + e / 10 for g, e in zip(gaps, noise[::-1], strict=True)],
        [a + 0.02 + e for a, e in zip(BASE_ACC, noise, strict=True)],
    )
    line = next(x for x in verdict(out) if x.startswith("dropout 0.25 vs baseline"))
    assert "generalization gap better — narrowed by 2.00 points" in line, line
    assert re.search(r": training accuracy changed by [+-]\d\.\d\d points \(-[\d.]+ to \+[\d.]+ points, the sum of "
                     r"the two claims' intervals\) while test accuracy", line), line  # fmt: skip
    assert "fit the training images" not in line
