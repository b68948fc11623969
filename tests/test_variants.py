"""Variants as data: a compared setting other than dropout (weight decay) is its own variant everywhere,
never the baseline: not in the statistics, the verdict, the figures, the stacks or the optimizer."""

import dataclasses
import math

import pytest
import torch

from dropout_lab.analysis.figures import BASELINE_COLOR, color, panel_positions
from dropout_lab.analysis.stats import by_variant, compare_all, statistics_rows
from dropout_lab.analysis.verdict import verdict
from dropout_lab.config import (
    BASELINE,
    SETTINGS,
    TrainConfig,
    Variant,
    compared_variants,
    comparison_words,
    configure,
    variant_of,
)
from dropout_lab.core.checkpoint import epoch_checkpoints, load_checkpoint
from dropout_lab.core.data import load_split
from dropout_lab.core.train import fit
from dropout_lab.naming import experiment_name, flow_run_label, slug
from dropout_lab.runtime.devices import check_stackable, stack_groups, variant_configs

WD = Variant((("weight_decay", 0.0005),))
P25 = Variant((("dropout", 0.25),))
BASE_ACC = [0.70, 0.71, 0.72]


def rows(variant: Variant, accs, gaps) -> list[dict]:
    fixed = {"n_train": 50_000, "n_test": 10_000, "epochs": 8, "dataset": "cifar10", "data_verified": True}
    return [{**fixed, **variant.columns(), "seed": s, "final_test_acc": a, "best_test_acc": a, "generalization_gap": g,
             "final_train_eval_acc": a + g, "final_test_loss": 1 - a, "train_seconds": 60.0, "epochs_seconds": 60.0}
            for s, (a, g) in enumerate(zip(accs, gaps, strict=True))]  # fmt: skip


def three_arms() -> list[dict]:
    return (
        rows(BASELINE, BASE_ACC, [0.15, 0.16, 0.17])
        + rows(WD, [0.69, 0.705, 0.71], [0.10, 0.12, 0.11])
        + rows(P25, [0.715, 0.72, 0.73], [0.08, 0.09, 0.085])
    )


def test_a_weight_decay_variant_is_its_own_variant_and_not_the_baseline():
    off = {s.field: s.off for s in SETTINGS}  # every compared setting has its column, at the baseline's value
    assert WD.columns() == {"model": "weight_decay=0.0005", "baseline": False, **off, "weight_decay": 0.0005}
    assert not WD.is_baseline and variant_of(WD.columns()) == WD and variant_of(BASELINE.columns()) == BASELINE
    # A history row written before weight decay existed has no such column: it is at the baseline's value.
    assert variant_of({"dropout": 0.0}) == BASELINE and variant_of({"dropout": 0.25}) == P25
    assert variant_of({"dropout": 0.25, "weight_decay": None}) == P25  # the column added to an older history
    assert compared_variants({"dropout": [0.25, 0.0], "weight_decay": [0.0005, 0.0]}) == [P25, WD, BASELINE]
    cfg = configure(TrainConfig(), WD, seed=3)
    assert (cfg.dropout, cfg.weight_decay, cfg.seed, cfg.label) == (0.0, 0.0005, 3, "weight_decay=0.0005")


def test_the_statistics_never_pool_a_weight_decay_variant_with_the_baseline():
    data = three_arms()
    assert list(by_variant(data)) == [P25, WD, BASELINE]  # report order: the baseline last
    stats = {(r["model"], r["metric"]): r for r in statistics_rows(data)}
    base, wd = stats["baseline", "final_test_acc"], stats["weight_decay=0.0005", "final_test_acc"]
    assert base["n_seeds"] == 3 and base["mean"] == pytest.approx(sum(BASE_ACC) / 3)  # the baseline's seeds only
    assert base["baseline"] and not wd["baseline"] and wd["weight_decay"] == 0.0005 and wd["dropout"] == 0.0
    assert wd["diff_vs_baseline"] == pytest.approx((0.69 + 0.705 + 0.71 - sum(BASE_ACC)) / 3)
    assert wd["paired_n"] == 3 and wd["holm_family_size"] == 4 and math.isnan(base["paired_t_p_value"])  # 2 x 2 claims
    comparisons = compare_all(data)["generalization_gap"]
    assert set(comparisons) == {P25, WD} and comparisons[WD].family == "claims"
    assert compare_all(data)["final_test_loss"][WD].family == "variants"  # not a claim: across variants
    lines = verdict(data)
    assert any(line.startswith("weight decay 0.0005 vs baseline (3 paired seeds)") for line in lines)
    assert any(line.startswith("dropout 0.25 vs baseline (3 paired seeds)") for line in lines)
    assert "Bonferroni over 4 claims: 2 variants x test accuracy and gap" in " ".join(lines)


def test_figures_never_draw_a_weight_decay_variant_as_the_baseline():
    variants = [P25, WD, BASELINE]
    assert color(BASELINE, variants) == BASELINE_COLOR and color(WD, variants) != BASELINE_COLOR
    assert color(WD, variants) != color(P25, variants)
    positions, label, numeric = panel_positions(variants)  # two settings: side by side, not on one axis
    assert not numeric and label == "variant" and len(set(positions.values())) == 3
    positions, _, numeric = panel_positions([WD, BASELINE])  # one setting: at its values, the baseline at 0
    assert numeric and positions == {WD: 0.0005, BASELINE: 0.0}


def test_names_say_which_settings_were_compared():
    cfgs = variant_configs(TrainConfig(epochs=8), compared_variants({"dropout": [0.25], "weight_decay": [5e-4]}), [0],
                           "cpu")  # fmt: skip
    assert experiment_name(cfgs, "cifar10") == "cifar10-p0.25-wd0.0005-s0-e8"
    params = {"dropout": [0.25], "weight_decay": [5e-4], "seeds": [0], "epochs": 8, "dataset": "cifar10",
              "limit_train": 0, "limit_test": 0}  # fmt: skip
    assert flow_run_label(params) == "p=0.25 wd=0.0005 seeds=0 e8"
    assert flow_run_label({**params, "weight_decay": []}) == "p=0.25 seeds=0 e8"
    # One model with both settings is not the two models with one each: its name joins them.
    both = {**params, "weight_decay": [], "variant": ["dropout=0.25,weight_decay=0.0005"]}
    cfgs = variant_configs(TrainConfig(epochs=8), compared_variants(both), [0], "cpu")
    assert experiment_name(cfgs, "cifar10") == "cifar10-p0.25-p0.25-with-wd0.0005-s0-e8"
    alone = variant_configs(TrainConfig(epochs=8), compared_variants({**both, "dropout": []}), [0], "cpu")
    assert experiment_name(alone, "cifar10") == "cifar10-p0.25-with-wd0.0005-s0-e8"  # the artifact key: not the two's
    assert slug(experiment_name(alone, "cifar10")) != slug(experiment_name(variant_configs(TrainConfig(epochs=8),
        compared_variants(params), [0], "cpu"), "cifar10"))  # fmt: skip
    assert flow_run_label(both) == "p=0.25 p=0.25+wd=0.0005 seeds=0 e8"
    assert comparison_words(compared_variants(both)) == "dropout 0.25; dropout 0.25 and weight decay 0.0005 vs baseline"
    assert comparison_words(compared_variants(params)) == "dropout 0.25; weight decay 0.0005 vs baseline"


def test_stacks_keep_variants_of_different_weight_decay_apart():
    cfgs = variant_configs(TrainConfig(), [P25, WD, BASELINE], [0, 1], "cpu")
    groups = stack_groups(cfgs, "on")
    assert sorted(len(g) for g in groups) == [2, 4]  # the two weight-decay runs apart from the dropout/baseline stack
    assert all({c.weight_decay for c in g} in ({0.0}, {0.0005}) for g in groups)
    with pytest.raises(ValueError, match="must share weight_decay"):
        check_stackable([cfgs[0], cfgs[2]])


def test_a_stack_trains_with_its_own_weight_decay_and_keeps_it_in_every_checkpoint(tiny_cifar, tmp_path):
    root = tiny_cifar / "cifar-10-batches-py"
    splits = (*load_split(root, train=True, limit=64), *load_split(root, train=False, limit=32))
    base = TrainConfig(epochs=1, batch_size=32, train_eval_images=32)
    decayed = [dataclasses.replace(base, dropout=0.0, weight_decay=0.01, seed=s) for s in (0, 1)]
    plain = dataclasses.replace(decayed[0], weight_decay=0.0)
    folders = [tmp_path / "wd0", tmp_path / "wd1"]
    list(fit(decayed, *splits, folders))  # stacked: one computation, one Adam for both
    list(fit([plain], *splits, [tmp_path / "plain"]))
    states = [load_checkpoint(epoch_checkpoints(f)[0][1]) for f in [*folders, tmp_path / "plain"]]
    assert [s["optimizer"]["param_groups"][0]["weight_decay"] for s in states] == [0.01, 0.01, 0.0]
    # The penalty changed what was learned: seed 0 with and without weight decay end apart.
    assert not torch.equal(states[0]["model"]["classifier.2.weight"], states[2]["model"]["classifier.2.weight"])
