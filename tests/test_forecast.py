"""The plan `--seeds auto` prints after its first look (dropout_lab/analysis/plan.py): the design simulated
from the first look's own paired differences, deciding as the flow decides."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dropout_lab.analysis.plan import paired_differences, plan

ANSWER = Path(__file__).resolve().parent.parent / "docs" / "answer" / "summary.parquet"


def first_look(rows: list[dict], seeds: int = 5) -> list[dict]:
    return [r for r in rows if r["seed"] < seeds]


def pilot(effects: dict[str, tuple[float, float]], spread: float, seeds: int = 5) -> list[dict]:
    """Summary rows: a baseline and variants whose (test accuracy, gap) differ by `effects`, with noise."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        rows.append({"model": "baseline", "baseline": True, "seed": seed, "final_test_acc": 0.7,
                     "generalization_gap": 0.1})  # fmt: skip
        for model, (acc, gap) in effects.items():
            noise = rng.normal(0, spread, 2)
            rows.append({"model": model, "baseline": False, "seed": seed, "final_test_acc": 0.7 + acc + noise[0],
                         "generalization_gap": 0.1 + gap + noise[1]})  # fmt: skip
    return rows


def test_the_answer_s_first_look_forecasts_what_the_answer_run_then_did():
    """docs/answer's run: its first five seeds as the pilot. It took 65 trainings and decided every claim;
    the design's own simulation at the measured effects (benchmarks/RESULTS.md) gives 63.4 and 81 %."""
    forecast = plan(first_look(pq.read_table(ANSWER).to_pylist()), max_seeds=20, margin=0.01, wave_seconds=3600)
    assert forecast.seeds == 5 and forecast.most == 80
    assert 50 <= forecast.trainings <= 75 and 0.6 <= forecast.decided <= 1.0, forecast
    assert forecast.seconds_left == pytest.approx((forecast.trainings - 20) * 3600 / 20)
    again = plan(first_look(pq.read_table(ANSWER).to_pylist()), max_seeds=20, margin=0.01, wave_seconds=3600)
    assert again == forecast  # a fixed simulation: the same first look, the same plan


def test_clear_effects_cost_little_and_no_effect_costs_the_budget():
    clear = plan(pilot({"dropout=0.5": (-0.05, -0.1)}, spread=0.002), max_seeds=20, margin=0.01)
    # Decided at the second look: at the first, five seeds' 2^5 sign vectors cannot reach the level it spends.
    assert clear.trainings == pytest.approx(20) and clear.decided == 1.0
    murky = plan(pilot({"dropout=0.1": (0.004, 0.0)}, spread=0.03), max_seeds=20, margin=0.01)
    assert murky.trainings > 35 and murky.decided < 0.5, murky
    assert plan(pilot({"dropout=0.1": (0.004, 0.0)}, spread=0.03), 20, 0.01) == murky  # the same pilot, the same plan


def test_a_claim_without_spread_in_the_pilot_is_forecast_undecided_as_the_run_would_leave_it():
    """Seeds whose differences are all equal (a collapsed model: every seed the same accuracy) decide nothing
    while they stay so. The plan said "every claim decided in 100% of simulated runs" for such a pilot: it
    drew the later seeds with a 1e-6 spread, which the decisions count as spread."""
    for effects in ({"dropout=0.1": (0.0, 0.0)}, {"dropout=0.1": (0.01, 0.01)}):
        flat = plan(pilot(effects, spread=0.0), max_seeds=20, margin=0.01)
        assert flat.decided == 0.0 and flat.trainings == flat.most == 40, flat
    rows = pilot({"dropout=0.5": (-0.05, -0.1)}, spread=0.002)
    for r in rows:  # the gap as measured, test accuracy the baseline's at every seed
        r["final_test_acc"] = 0.7
    one_flat = plan(rows, max_seeds=20, margin=0.01)  # the gap decides; test accuracy never does
    assert one_flat.decided == 0.0 and one_flat.trainings == 40, one_flat


def test_paired_differences_pair_each_variant_with_the_baseline_on_its_seeds():
    rows = pilot({"dropout=0.25": (0.01, -0.02)}, spread=0.0, seeds=3)
    rows = [r for r in rows if not (r["model"] == "baseline" and r["seed"] == 2)]  # seed 2 has no baseline
    diffs = paired_differences(rows)
    assert list(diffs) == ["dropout=0.25"] and diffs["dropout=0.25"].shape == (2, 2)
    assert diffs["dropout=0.25"][:, 0] == pytest.approx([0.01, 0.01]) and diffs["dropout=0.25"][:, 1] == pytest.approx(
        [-0.02, -0.02]
    )


def test_the_plan_in_words():
    words = plan(pilot({"dropout=0.5": (-0.05, -0.1)}, spread=0.002), 20, 0.01, wave_seconds=600).words()
    assert words.startswith("from the first look (5 seeds): about 20 trainings in all (at most 40), every claim ")
    assert "decided within --max-seeds in 100% of simulated runs; about 10 min more at its pace" in words


def test_a_plan_before_the_run_from_seeds_of_its_recipe_already_in_the_history():
    """`--plan`: the answer's recorded seeds as the history, latest record of each model; rows of another recipe
    (other epochs, other data size) or another setting are not its seeds; seeds past --max-seeds are not the
    run's (it raised a ValueError); a model with fewer than two paired seeds gives no plan."""
    from dropout_lab.analysis.plan import before_run, recipe_seeds
    from dropout_lab.config import Variant, variant_of

    rows = pq.read_table(ANSWER).to_pylist()
    variants = {variant_of(r) for r in rows}
    recipe = {"dataset": "cifar10", "epochs": 8, "batch_size": 32, "lr": 0.001}
    stale = [{**r, "final_test_acc": 0.0} for r in rows]  # an older record of the same models: replaced
    other = [{**r, "epochs": 2} for r in rows] + [{**r, "n_train": 10_000} for r in rows]
    other += [{**r, "dropout": 0.0, "weight_decay": 0.0005, "model": "weight_decay=0.0005", "baseline": False}
              for r in rows if r["baseline"]]  # fmt: skip
    mine = recipe_seeds(stale + other + rows, variants, recipe)
    assert sorted(map(id, mine)) == sorted(map(id, rows))  # the latest record of each, nothing else
    words = before_run(mine, 3, max_seeds=20, margin=0.01, slots=2)
    assert words.startswith("from 10 seeds of this recipe already trained: about ") and "at most 80" in words
    trainings = float(words.split("about ")[1].split(" trainings")[0])
    assert 40 <= trainings <= 80, words  # 10 to 20 seeds already in: the rest forecast
    assert "on 2 device slots" in words and " h " in words  # 8-epoch CPU trainings: hours
    budget = before_run(mine, 3, max_seeds=5, margin=0.01, slots=2)  # more seeds recorded than the run would have
    assert budget.startswith("from 5 seeds of this recipe already trained: about 20 trainings in all (at most 20)")
    fewer = [r for r in mine if not (variant_of(r) == Variant((("dropout", 0.5),)) and r["seed"] > 0)]
    assert before_run(fewer, 3, max_seeds=20, margin=0.01, slots=2) is None


def test_plan_prints_the_forecast_and_stops_creating_nothing(tmp_path, capsys, monkeypatch):
    """`python flows/compare.py --seeds auto --plan`: the plan from the seeds the run history holds, one line,
    exit 0, no folder made and nothing trained; without --seeds auto it is refused in one line."""
    from flows.compare import main
    from tests.test_history import model, record

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'o' / 'mlflow.db'}"
    argv = ["--dataset", "fake", "--seeds", "auto", "--plan", "--out", "o", "--data-dir", "d", "--cache-dir", "c"]
    assert main(argv) == 0
    assert "holds no two seeds of this recipe" in capsys.readouterr().out and list(tmp_path.iterdir()) == []
    record(store, [model(0, rate, seed, 0.7 + rate / 10 + seed / 100, 0.1 - rate / 5, dataset="fake")
                   for rate in (0.0, 0.25) for seed in range(3)])  # fmt: skip
    before = sorted(tmp_path.rglob("*"))
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("plan from 3 seeds of this recipe already trained: about ")
    assert sorted(tmp_path.rglob("*")) == before  # nothing made
    assert main(argv[:2] + argv[4:] + ["--seeds", "0"]) == 2
    assert "--plan forecasts a --seeds auto run" in capsys.readouterr().err
