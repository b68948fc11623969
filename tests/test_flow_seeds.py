"""Sweeps and seeds through the whole flow: rates x seeds, an added seed, `--seeds auto` in waves."""

import contextlib
import logging
import shutil

import pyarrow.parquet as pq
import pytest

import flows.compare
import tasks.train
from dropout_lab.config import Variant
from flows.compare import next_wave_words
from tests.flow_runs import run_flow


@pytest.fixture(scope="module")
def workspace(tiny_cifar, tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    shutil.copytree(tiny_cifar / "cifar-10-batches-py", root / "data" / "cifar-10-batches-py")
    return root


def test_sweep_over_rates_and_seeds_with_statistics(prefect_harness, workspace):
    from dropout_lab.runtime.devices import available_cores

    folder, states, artifacts = run_flow(workspace, dropout=[0.1, 0.5], seeds=[0, 1], epochs=1)
    trains = {n for n in states if n.startswith("train[")}
    assert len(trains) == 6 and "train[dropout=0.1, seed=1]" in trains and "train[baseline, seed=1]" in trains
    summary = pq.read_table(folder / "summary.parquet").to_pylist()
    assert sorted((r["dropout"], r["seed"]) for r in summary) == [(p, s) for p in (0.0, 0.1, 0.5) for s in (0, 1)]
    assert pq.read_table(folder / "per_epoch.parquet").num_rows == 6
    assert pq.read_table(folder / "per_class.parquet").num_rows == 60
    stats = pq.read_table(folder / "statistics.parquet").to_pylist()
    assert len(stats) == 3 * 4 and all(r["n_seeds"] == 2 for r in stats)
    gap = next(r for r in stats if r["dropout"] == 0.5 and r["metric"] == "generalization_gap")
    base_gap = next(r for r in stats if r["dropout"] == 0.0 and r["metric"] == "generalization_gap")
    assert gap["diff_vs_baseline"] == pytest.approx(gap["mean"] - base_gap["mean"])
    assert 0 <= gap["welch_p_value"] <= 1 and gap["ci95_low"] <= gap["mean"] <= gap["ci95_high"]
    assert gap["design"] == "paired" and gap["paired_n"] == 2 and gap["holm_family_size"] == 4  # 2 rates x 2 claims
    assert gap["decision"] in ("better", "worse", "equivalent", "undecided") and gap["seeds_used"] == 2
    assert 0 <= gap["paired_t_p_value"] <= 1 and gap["sign_flip_p_value"] >= 0.5  # 2 seeds: 2/4 at the least
    md = next(a for a in artifacts if a.key == "dropout-comparison-cifar10-p0-1-0-5-s0-1-e1").data
    assert "\n- dropout 0.1 vs baseline (2 paired seeds)" in md and "\n- dropout 0.5 vs baseline (2 paired seeds)" in md
    assert "Reduced run (" in md  # tiny data: the verdict says it is not a CIFAR-10 answer
    # Never more training processes at once than the cores allow (the rest queue for a slot).
    spans = [(r["started_at"], r["finished_at"]) for r in summary]
    busiest = max(sum(s <= t < f for s, f in spans) for t, _ in spans)
    assert busiest <= max(1, available_cores())


def test_adding_a_seed_trains_only_the_new_pairs(prefect_harness, workspace):
    run_flow(workspace, dropout=[0.1, 0.5], seeds=[0, 1], epochs=1)
    _, states, _ = run_flow(workspace, dropout=[0.1, 0.5], seeds=[0, 1, 2], epochs=1)
    trained = sorted(n for n, s in states.items() if n.startswith("train[") and s == {"Completed"})
    assert trained == ["train[baseline, seed=2]", "train[dropout=0.1, seed=2]", "train[dropout=0.5, seed=2]"]
    assert sum(1 for n, s in states.items() if n.startswith("train[") and s == {"Cached"}) == 6


def test_seeds_auto_trains_waves_until_decided_or_the_budget_and_records_the_decisions(
    prefect_harness, workspace, monkeypatch
):
    """The reduced `--seeds auto` run: waves of 5 seeds up to --max-seeds 6; every claim gets a decision
    column, and the run stops at the first look where all are decided (else at the budget)."""
    args = dict(dataset="fake", epochs=1, limit_train=200, limit_test=100, seeds="auto", max_seeds=6, margin=1.0)
    folder, states, _ = run_flow(workspace, **args)
    stats = pq.read_table(folder / "statistics.parquet").to_pylist()
    claims = [r for r in stats if r["decision"] is not None]
    assert {(r["model"], r["metric"]) for r in claims} == {("dropout=0.25", "final_test_acc"),
                                                           ("dropout=0.25", "generalization_gap")}  # fmt: skip
    assert {r["decision"] for r in claims} <= {"better", "worse", "equivalent", "undecided"}
    used = {r["seeds_used"] for r in claims}
    trained = {n for n in states if n.startswith("train[")}
    if used == {5}:  # decided at the first look: the second wave never trained
        assert "undecided" not in {r["decision"] for r in claims} and len(trained) == 10
    else:
        assert used == {6} and {r["looks"] for r in claims} == {2} and len(trained) == 12
    assert all(r["margin"] == 0.01 for r in claims)
    assert folder.name.startswith("fake-train200-test100-p0.25-sauto6-e1-")
    md = (folder / "summary.md").read_text()
    assert "seeds added in waves until decided (looks at 5" in md and "of at most 6 seeds" in md
    slots = []  # a cached training takes no slot, so a wave of cached trainings says nothing about slots
    monkeypatch.setattr(tasks.train, "device_slot", lambda *a: slots.append(a) or contextlib.nullcontext())
    _, again, _ = run_flow(workspace, **args)  # the same waves, every one cached
    assert all(s == {"Cached"} for n, s in again.items() if n.startswith("train[")) and slots == []


def test_seeds_auto_stops_training_a_variant_once_its_claims_are_decided(prefect_harness, workspace, monkeypatch,
                                                                         caplog):  # fmt: skip
    """After a look, a variant whose claims are all decided trains no more seeds while the baseline and the
    undecided variants go on. (The tiny fake runs decide nothing reliably, so the first look's open claims
    are stood in: only dropout 0.5's test accuracy is open; the second look finds every claim decided.)"""
    half = Variant((("dropout", 0.5),))
    looks = []

    def first_look_leaves_dropout_0_5_open(summary, design, comparisons=None):
        looks.append(design.looks)
        return {half: ["dropout 0.5 test accuracy (-1.00 to +2.00 points)"]} if len(design.looks) == 1 else {}

    monkeypatch.setattr(flows.compare, "open_claims", first_look_leaves_dropout_0_5_open)
    args = dict(dataset="fake", epochs=1, limit_train=200, limit_test=100, dropout=[0.25, 0.5], seeds="auto",
                max_seeds=6)  # fmt: skip
    folder, states, artifacts = run_flow(workspace, **args)
    assert looks == [(5,), (5, 6)]
    # Each look on the run page: its claims' decisions, then what trains next or why the run stopped.
    shown = sorted(a.data for a in artifacts if (a.key or "").startswith("seeds-auto-"))
    assert [text.split("\n")[0] for text in shown] == ["# Look 1: after 5 seeds", "# Look 2: after 6 seeds"], shown
    assert "| dropout 0.5 | test accuracy |" in shown[0] and "| dropout 0.25 | generalization gap |" in shown[0]
    assert "Next: seed 5 of dropout 0.5 and the baseline" in shown[0]
    assert shown[1].rstrip().endswith("Stopped: every claim decided.")
    # Slot waits: at most one line says how many train at a time, not one "waiting" line per training.
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert sum("at a time on cpu" in m and "wait for a slot" in m for m in messages) <= 1, messages
    trained = {n for n in states if n.startswith("train[")}
    assert {n for n in trained if "seed=5" in n} == {"train[dropout=0.5, seed=5]", "train[baseline, seed=5]"}
    assert len(trained) == 17  # 3 x 5 in the first wave, then dropout 0.5 and the baseline
    seeds = {}
    for r in pq.read_table(folder / "summary.parquet").to_pylist():
        seeds.setdefault(r["model"], set()).add(r["seed"])
    assert seeds == {"dropout=0.25": set(range(5)), "dropout=0.5": set(range(6)), "baseline": set(range(6))}
    stats = {(r["model"], r["metric"]): r for r in pq.read_table(folder / "statistics.parquet").to_pylist()}
    assert (stats["dropout=0.25", "final_test_acc"]["seeds_used"], stats["dropout=0.25", "final_test_acc"]["looks"]) \
        == (5, 1)  # fmt: skip
    assert (stats["dropout=0.5", "final_test_acc"]["seeds_used"], stats["dropout=0.5", "final_test_acc"]["looks"]) \
        == (6, 2)  # fmt: skip
    assert stats["dropout=0.25", "final_test_acc"]["design"] == "paired"
    # The first look was the pilot: the run printed what the rest would likely cost, and the report shows
    # that plan beside what the run did.
    assert sum(m.startswith("plan from the first look (5 seeds): about ") for m in messages) == 1, messages
    md = (folder / "summary.md").read_text()
    assert "Plan and outcome: planned from the first look (5 seeds): about " in md
    assert "(at most 18), every claim decided within --max-seeds in " in md and "the run took 17 trainings" in md


def test_the_wave_line_names_what_trains_next_once_a_variant_stopped():
    low, high, baseline = Variant((("dropout", 0.1),)), Variant((("dropout", 0.5),)), Variant()
    compared = {low, high, baseline}
    assert next_wave_words(compared, compared) == ""
    assert next_wave_words({low, baseline}, compared) == " (next waves: dropout 0.1 and the baseline)"
