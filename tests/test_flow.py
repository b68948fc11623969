"""The whole flow end to end on tiny data, under one embedded Prefect server."""

import logging
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

import flows.compare
from dropout_lab.analysis import history
from dropout_lab.analysis.tables import PER_CLASS_SCHEMA, PER_EPOCH_SCHEMA, SUMMARY_SCHEMA
from dropout_lab.config import Variant
from flows.compare import compare, next_wave_words

EPOCHS = 2


@pytest.fixture(scope="module")
def workspace(tiny_cifar, tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    shutil.copytree(tiny_cifar / "cifar-10-batches-py", root / "data" / "cifar-10-batches-py")
    return root


def run_flow(ws: Path, **overrides):
    params = dict(data_dir=str(ws / "data"), out=str(ws / "artifacts"), cache_dir=str(ws / "cache"), epochs=EPOCHS)
    state = compare(**{**params, **overrides}, return_state=True)
    assert state.is_completed(), state
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30  # the server records task states from events, a moment after the run
        while True:
            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if all(tr.state is not None for tr in task_runs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    states: dict[str, set[str]] = {}  # task run name → its states (a re-run task appears twice)
    for tr in task_runs:
        states.setdefault(tr.name, set()).add(tr.state.name)
    return Path(state.result()), states, artifacts


@pytest.fixture(scope="module")
def first_run(prefect_harness, workspace):
    return run_flow(workspace)


def test_first_run_writes_a_complete_report(first_run):
    folder, states, _ = first_run
    runs = ("dropout=0.25, seed=0", "baseline, seed=0")
    assert {n for n in states if n.startswith("train")} == {f"train[{run}]" for run in runs}
    assert not any(n.startswith("evaluate") for n in states)  # final = the last epoch's evaluation
    assert all(s == {"Completed"} for s in states.values()), states
    assert sorted(p.name for p in folder.iterdir()) == [
        "comparison.png", "confusion.parquet", "per_class.parquet", "per_epoch.parquet", "samples.png",
        "statistics.parquet", "summary.md", "summary.parquet",
    ]  # fmt: skip
    for name in ("comparison.png", "samples.png"):
        with Image.open(folder / name) as img:
            img.load()
            assert img.size[0] > 400


def test_parquet_schemas_and_contents(first_run):
    folder, _, _ = first_run
    history = pq.read_table(folder / "per_epoch.parquet")
    summary = pq.read_table(folder / "summary.parquet")
    per_class = pq.read_table(folder / "per_class.parquet")
    assert history.schema.equals(PER_EPOCH_SCHEMA) and summary.schema.equals(SUMMARY_SCHEMA)
    assert per_class.schema.equals(PER_CLASS_SCHEMA)
    assert history.num_rows == 2 * EPOCHS and per_class.num_rows == 2 * 10 and summary.num_rows == 2
    h = history.to_pylist()
    assert sorted({(r["model"], r["dropout"]) for r in h}) == [("baseline", 0.0), ("dropout=0.25", 0.25)]
    assert sorted({r["epoch"] for r in h}) == [1, 2]
    rows = {r["model"]: r for r in summary.to_pylist()}
    for r in rows.values():
        assert 0 <= r["final_test_acc"] <= 1 and r["n_params"] == 361_034 and r["n_train"] == 320
        assert r["data_verified"] is False and r["dataset"] == "cifar10" and r["device"] == "cpu"
        assert (r["trained_as"], r["stacked_variants"], r["cuda_graphs"]) == ("alone", 1, False)
        # the gap's train side is the eval-mode pass over the training images, not the running number
        assert r["generalization_gap"] == r["final_train_eval_acc"] - r["final_test_acc"]
        assert r["n_train_eval"] == 320  # the tiny set has fewer images than the subset's size: all of them
        last = [x for x in h if x["model"] == r["model"] and x["epoch"] == EPOCHS][0]
        # one source of truth: final = the last epoch's evaluation, and the best epoch is no worse
        assert (r["final_test_acc"], r["final_test_loss"]) == (last["test_acc"], last["test_loss"])
        assert r["final_train_eval_acc"] == last["train_eval_acc"] == last["generalization_gap"] + last["test_acc"]
        assert r["best_test_acc"] >= r["final_test_acc"]
    confusion = pq.read_table(folder / "confusion.parquet").to_pylist()
    for model in rows:
        cells = [c for c in confusion if c["model"] == model]
        assert len(cells) == 100 and sum(c["count"] for c in cells) == 160
        right = sum(c["count"] for c in cells if c["true_class"] == c["predicted_class"])
        assert right / 160 == rows[model]["final_test_acc"]


def test_the_two_trainings_overlap_in_time(first_run):
    folder, _, _ = first_run
    rows = pq.read_table(folder / "summary.parquet").to_pylist()
    assert max(r["started_at"] for r in rows) < min(r["finished_at"] for r in rows)


def test_markdown_and_table_artifacts(first_run):
    _, _, artifacts = first_run
    by_key = {a.key: a for a in artifacts if a.key}
    md = by_key["dropout-comparison-cifar10-p0-25-s0-e2"]  # keyed by experiment, not by code/data version
    assert md.type == "markdown" and "data:image/png;base64," in md.data and "| baseline |" in md.data
    assert "unverified" in md.data
    assert by_key["dropout-per-epoch-cifar10-p0-25-s0-e2"].type == "table"
    progress = [a for a in artifacts if a.type == "progress"]
    assert len(progress) == 2 and all(float(a.data) == 100.0 for a in progress)


def store_of(ws: Path) -> str:
    return history.store_uri(ws / "artifacts")


def test_second_identical_run_is_fully_cached(first_run, workspace):
    recorded = len(history.read(store_of(workspace)))
    folder, states, artifacts = run_flow(workspace)
    assert folder == first_run[0]
    assert states and all(s == {"Cached"} for s in states.values()), states
    assert not [a for a in artifacts if a.key]  # no second copy of the same report under its key ...
    (link,) = artifacts  # ... but a link to it on this run's page (Prefect stores a link as markdown)
    assert "/artifacts/key/dropout-comparison-cifar10-p0-25-s0-e2" in link.data and len(link.data) < 1000
    assert len(history.read(store_of(workspace))) == recorded  # nothing new trained


def test_a_completed_run_is_recorded_in_the_history(first_run, workspace):
    folder, _, artifacts = first_run
    rows = [r for r in history.read(store_of(workspace)) if r["report_folder"] == str(folder)]
    assert [(r["model"], r["seed"]) for r in rows] == [("dropout=0.25", 0), ("baseline", 0)]
    summary = pq.read_table(folder / "summary.parquet").to_pylist()
    for row, expected in zip(rows, summary, strict=True):
        assert row["final_test_acc"] == expected["final_test_acc"] and row["n_train"] == expected["n_train"]
        assert row["experiment"] == "cifar10-p0.25-s0-e2" and folder.name.endswith(row["experiment_hash"])
        assert row["flow_run_name"] == "p=0.25 seeds=0 e2" and len(row["flow_run_id"]) == 36
        assert row["code_version"] and row["recorded_at"].tzinfo is not None
    shas = {r["weights_sha256"] for r in rows}
    assert len(shas) == 2 and all(len(s) == 64 for s in shas)
    assert len({r["model_key"] for r in rows}) == 2  # keyed on each model's training identity
    runs_table = next(a for a in artifacts if a.key == "dropout-lab-runs")
    assert runs_table.type == "table" and "dropout=0.25" in runs_table.data
    (link,) = [a for a in artifacts if a.type == "markdown" and a.data.startswith("MLflow run")]
    assert "mlflow ui --backend-store-uri sqlite:///" in link.data


def test_flow_runs_are_named_from_their_parameters_and_tagged(first_run, workspace):
    ws = workspace
    folders = dict(data_dir=str(ws / "data"), out=str(ws / "artifacts"), cache_dir=str(ws / "cache"))
    state = compare(**folders, epochs=EPOCHS, dropout=[0.25], seeds=[0], return_state=True)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.name == "p=0.25 seeds=0 e2"
    assert {"dropout-lab", "cifar10", "cpu"} <= set(run.tags)


def test_changing_dropout_retrains_only_the_dropout_model(first_run, workspace):
    folder, states, _ = run_flow(workspace, dropout=[0.5])
    assert states["train[baseline, seed=0]"] == {"Cached"}
    assert states["train[dropout=0.5, seed=0]"] == {"Completed"}
    assert folder != first_run[0]


def test_refresh_recomputes_everything(first_run, workspace):
    folder, states, _ = run_flow(workspace, refresh=True)
    assert all(s == {"Completed"} for s in states.values()), states
    summary = pq.read_table(folder / "summary.parquet").to_pylist()
    assert [r["resumed_from_epoch"] for r in summary] == [0, 0]  # retrained from scratch, not resumed


def test_deleted_report_folder_is_rewritten_whole_from_the_cached_trainings(first_run, workspace):
    out = workspace / "deleted-report"  # this test's own report folder: the first run's stays for the others
    written, _, _ = run_flow(workspace, out=str(out))
    files = {p.name: p.read_bytes() for p in written.iterdir() if p.suffix == ".parquet"}
    shutil.rmtree(written)
    folder, states, _ = run_flow(workspace, out=str(out))
    assert folder == written and all(s == {"Cached"} for n, s in states.items() if n.startswith("train["))
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in first_run[0].iterdir())
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix == ".parquet"} == files  # the same tables


def test_fake_dataset_is_labelled_synthetic_everywhere(prefect_harness, workspace):
    folder, _, artifacts = run_flow(workspace, dataset="fake", epochs=1, limit_train=200, limit_test=100)
    assert "synthetic data — accuracies meaningless" in (folder / "summary.md").read_text()
    # One epoch, one seed: said as a sentence says it, in the text and in the figure's title.
    assert "1 epoch." in (folder / "summary.md").read_text() and "1 epochs" not in (folder / "summary.md").read_text()
    assert set(pq.read_table(folder / "summary.parquet").column("dataset").to_pylist()) == {"fake"}
    md = next(a for a in artifacts if a.key == "dropout-comparison-fake-train200-test100-p0-25-s0-e1")
    assert "synthetic data — accuracies meaningless" in md.data


def test_deleted_checkpoints_are_noticed_and_retrained(first_run, workspace):
    shutil.rmtree(workspace / "cache" / "checkpoints")
    folder, states, _ = run_flow(workspace)
    # the cached results point at missing checkpoints: the tasks forget them and train again
    assert states["train[baseline, seed=0]"] == {"Completed"}
    assert states["train[dropout=0.25, seed=0]"] == {"Completed"}
    assert (folder / "summary.parquet").is_file()


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


def test_deleted_data_is_noticed_and_fetched_again(prefect_harness, tmp_path):
    params = dict(dataset="fake", epochs=1, limit_train=200, limit_test=100, data_dir=str(tmp_path / "data"),
                  out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))  # fmt: skip
    compare(**params)
    shutil.rmtree(tmp_path / "data")
    folder = Path(compare(**params))  # the cached fetch result points at nothing: fetched (generated) again
    assert (tmp_path / "data" / "fake-cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    assert (folder / "summary.parquet").is_file()


def test_stacked_run_matches_and_shares_checkpoints_with_separate_runs(first_run, workspace):
    separate = {r["model"]: r for r in pq.read_table(first_run[0] / "summary.parquet").to_pylist()}
    cache = str(workspace / "stack-cache")
    folder, states, _ = run_flow(workspace, stack="on", cache_dir=cache)
    assert folder == first_run[0]  # the same experiment, so the same report folder (rewritten)
    assert {n for n in states if n.startswith("train[")} == {"train[dropout=0.25, seed=0 + baseline, seed=0]"}
    stacked = {r["model"]: r for r in pq.read_table(folder / "summary.parquet").to_pylist()}
    for model, row in stacked.items():
        assert row["stacked_variants"] == 2 and separate[model]["stacked_variants"] == 1
        assert row["final_train_running_loss"] == pytest.approx(separate[model]["final_train_running_loss"], abs=1e-3)
    assert "cpu (stack of 2)" in (folder / "summary.md").read_text()
    # Unstacked, the same variants find the stack's finished checkpoints: nothing is trained again.
    checkpoints = {p: p.stat().st_mtime_ns for p in Path(cache, "checkpoints").glob("*/epoch-*.pt")}
    assert len(checkpoints) == 2 * 2  # two variants, the last two epochs each
    _, states, _ = run_flow(workspace, stack="off", cache_dir=cache)
    assert {n for n in states if n.startswith("train[")} == {"train[dropout=0.25, seed=0]", "train[baseline, seed=0]"}
    assert {p: p.stat().st_mtime_ns for p in Path(cache, "checkpoints").glob("*/epoch-*.pt")} == checkpoints


def test_project_warnings_reach_the_flow_run_logs(first_run, workspace):
    """The 'unverified data' warning comes from dropout_lab.core.data, not from Prefect's loggers: it must still
    be in the run's logs on the server (what the UI shows), not only on the terminal."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    state = compare(data_dir=str(workspace / "data"), out=str(workspace / "artifacts"),
                    cache_dir=str(workspace / "cache-logs"), epochs=1, return_state=True)  # fmt: skip
    mine = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    for _ in range(30):  # logs reach the server in batches
        with get_client(sync_client=True) as client:
            if any("does not match the official checksums" in log.message for log in client.read_logs(mine)):
                return
        time.sleep(0.5)
    raise AssertionError("the dropout_lab.core.data warning never reached the flow run's logs")


def test_the_history_is_mlflow_s_store_and_a_cached_rerun_records_nothing(prefect_harness, workspace, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = dict(dataset="fake", epochs=1, limit_train=200, limit_test=100, seeds=[3], log_models=True)
    folder, states, artifacts = run_flow(workspace, **args)
    client = mlflow.MlflowClient(store_of(workspace))
    experiment = client.get_experiment_by_name("dropout-lab").experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.report_folder = '{folder}'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    parent = parents[0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"comparison.png", "summary.md"}
    assert "dropout_0.25.test_acc_vs_baseline" in parent.data.metrics  # the chart and compare views have numbers
    assert (
        parent.data.tags["mlflow.source.name"] == "flows/compare.py" and "mlflow.source.git.commit" in parent.data.tags
    )
    child = next(r for r in runs if r.info.run_name == "baseline seed 3")
    assert [m.step for m in client.get_metric_history(child.info.run_id, "test_acc")] == [1]
    assert [m.step for m in client.get_metric_history(child.info.run_id, "generalization_gap")] == [1]
    # MLflow's way: a model-training experiment, each network a logged model named after its model with its
    # signature, the comparison's numbers in the children's unit (fractions), the full commit.
    assert client.get_experiment(experiment).tags["mlflow.experimentKind"] == "custom_model_development"
    (logged,) = client.search_logged_models([experiment], filter_string=f"source_run_id = '{child.info.run_id}'")
    assert logged.name == "baseline-seed-3"
    model = mlflow.pytorch.load_model(f"models:/{logged.model_id}")
    assert tuple(model(__import__("torch").zeros(2, 3, 32, 32)).shape) == (2, 10)
    signature = mlflow.models.get_model_info(f"models:/{logged.model_id}").signature
    assert tuple(signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, 32, 32)
    metrics = parent.data.metrics
    assert all(-1 <= v <= 1 and v == float(f"{v:.12g}") for v in metrics.values()), metrics
    assert abs(metrics["baseline.test_acc"] - client.get_run(child.info.run_id).data.metrics["final_test_acc"]) < 1e-9
    assert len(parent.data.tags["mlflow.source.git.commit"]) == 40
    _, states, artifacts = run_flow(workspace, **args)
    assert all(s == {"Cached"} for s in states.values()), states
    assert not [a for a in artifacts if a.type == "table"]  # nothing recorded, nothing new to show
    assert len(client.search_runs([experiment], filter_string=f"tags.report_folder = '{folder}'")) == 3


def test_weight_decay_is_compared_as_a_variant_of_its_own(prefect_harness, workspace):
    folder, states, artifacts = run_flow(
        workspace, dataset="fake", epochs=1, limit_train=200, limit_test=100, weight_decay=[5e-4]
    )
    trains = {n for n in states if n.startswith("train[")}
    assert trains == {"train[dropout=0.25, seed=0]", "train[weight_decay=0.0005, seed=0]", "train[baseline, seed=0]"}
    summary = {r["model"]: r for r in pq.read_table(folder / "summary.parquet").to_pylist()}
    assert (summary["weight_decay=0.0005"]["baseline"], summary["weight_decay=0.0005"]["dropout"]) == (False, 0.0)
    assert summary["baseline"]["baseline"] and summary["baseline"]["weight_decay"] == 0.0
    assert folder.name.startswith("fake-train200-test100-p0.25-wd0.0005-s0-e1-")
    md = (folder / "summary.md").read_text()
    assert "\n- weight decay 0.0005 vs baseline with one seed each" in md


def test_seeds_auto_trains_waves_until_decided_or_the_budget_and_records_the_decisions(prefect_harness, workspace):
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
    _, again, _ = run_flow(workspace, **args)  # the same waves, every one cached
    assert all(s == {"Cached"} for n, s in again.items() if n.startswith("train["))


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
    # Slot waits: one line per wave says how many train at a time, not one "waiting" line per training.
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert sum("at a time:" in m and "for a slot" in m for m in messages) == 1, messages  # the first wave's
    assert not any("slots of cpu are taken" in m for m in messages)
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


def test_the_wave_line_names_what_trains_next_once_a_variant_stopped():
    low, high, baseline = Variant((("dropout", 0.1),)), Variant((("dropout", 0.5),)), Variant()
    compared = {low, high, baseline}
    assert next_wave_words(compared, compared) == ""
    assert next_wave_words({low, baseline}, compared) == " (next waves: dropout 0.1 and the baseline)"
