"""What a run compares and where it records: the fake dataset, other settings, the run history, data gone."""

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dropout_lab.analysis import history, tracking
from flows.compare import compare
from tests.flow_runs import run_flow


@pytest.fixture(scope="module")
def workspace(tiny_cifar, tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    shutil.copytree(tiny_cifar / "cifar-10-batches-py", root / "data" / "cifar-10-batches-py")
    return root


def test_fake_dataset_is_labelled_synthetic_everywhere(prefect_harness, workspace):
    folder, _, artifacts = run_flow(workspace, dataset="fake", epochs=1, limit_train=200, limit_test=100)
    assert "synthetic data — accuracies meaningless" in (folder / "summary.md").read_text()
    # One epoch, one seed: said as a sentence says it, in the text and in the figure's title.
    assert "1 epoch." in (folder / "summary.md").read_text() and "1 epochs" not in (folder / "summary.md").read_text()
    assert set(pq.read_table(folder / "summary.parquet").column("dataset").to_pylist()) == {"fake"}
    md = next(a for a in artifacts if a.key == "dropout-comparison-fake-train200-test100-p0-25-s0-e1")
    assert "synthetic data — accuracies meaningless" in md.data


def test_deleted_data_is_noticed_and_fetched_again(prefect_harness, tmp_path):
    params = dict(dataset="fake", epochs=1, limit_train=200, limit_test=100, data_dir=str(tmp_path / "data"),
                  out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))  # fmt: skip
    compare(**params)
    shutil.rmtree(tmp_path / "data")
    folder = Path(compare(**params))  # the cached fetch result points at nothing: fetched (generated) again
    assert (tmp_path / "data" / "fake-cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    assert (folder / "summary.parquet").is_file()


def test_the_history_is_mlflow_s_store_and_a_cached_rerun_records_nothing(prefect_harness, workspace, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = dict(dataset="fake", epochs=1, limit_train=200, limit_test=100, seeds=[3], log_models=True)
    folder, states, artifacts = run_flow(workspace, **args)
    client = mlflow.MlflowClient(history.store_uri(workspace / "artifacts"))
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
    assert logged.name == "baseline-seed-3" and tracking.logged_model_name({"model": "dropout=0.25", "seed": 0}) == (
        "dropout-0_25-seed-0"
    )
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
