"""The whole flow end to end on tiny data, under one embedded Prefect server."""

import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from prefect.client.orchestration import get_client

from dropout_lab.analysis import history
from dropout_lab.analysis.tables import PER_CLASS_SCHEMA, PER_EPOCH_SCHEMA, SUMMARY_SCHEMA
from flows.compare import compare
from tests.flow_runs import EPOCHS, run_flow


@pytest.fixture(scope="module")
def workspace(tiny_cifar, tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    shutil.copytree(tiny_cifar / "cifar-10-batches-py", root / "data" / "cifar-10-batches-py")
    return root


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
        "comparison.png", "confusion.parquet", "decisions.png", "per_class.parquet", "per_epoch.parquet",
        "samples.png", "statistics.parquet", "summary.md", "summary.parquet",
    ]  # fmt: skip
    for name in ("comparison.png", "decisions.png", "samples.png"):
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


def test_the_two_trainings_overlap_in_time(prefect_harness, prefect_slots, workspace):
    # Trainings of a few seconds: on this test server (SQLite) one slot acquisition in a flow may meet a 503
    # that Prefect's client retries after a fixed 2 s (benchmarks/RESULTS.md), longer than two epochs here.
    folder, _, _ = run_flow(workspace, epochs=10, out=str(workspace / "overlap"), cache_dir=str(workspace / "c10"))
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
    assert states.pop(next(n for n in states if n.startswith("render_report"))) == {"Completed"}  # never cached
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


def test_deleted_checkpoints_are_noticed_and_retrained(first_run, workspace):
    shutil.rmtree(workspace / "cache" / "checkpoints")
    folder, states, _ = run_flow(workspace)
    # the cached results point at missing checkpoints: the tasks forget them and train again
    assert states["train[baseline, seed=0]"] == {"Completed"}
    assert states["train[dropout=0.25, seed=0]"] == {"Completed"}
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
