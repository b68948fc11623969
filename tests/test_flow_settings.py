"""What a run compares and where it records: the fake dataset, other settings, the run history, data gone."""

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import TypeAdapter

from dropout_lab.analysis import history, tracking
from dropout_lab.analysis.figures import panel_positions
from dropout_lab.cli import history as history_cli
from dropout_lab.config import BASELINE, SETTINGS, Setting, flag, value_text, variant_of
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
    assert all(s == {"Cached"} for n, s in states.items() if not n.startswith("render_report")), states
    assert not [a for a in artifacts if a.type == "table"]  # nothing recorded, nothing new to show
    assert len(client.search_runs([experiment], filter_string=f"tags.report_folder = '{folder}'")) == 3


def example(setting: Setting) -> float | str:
    """A value other than the baseline's that the declaration accepts: a word, or the middle of the bounds."""
    if setting.choices:
        return next(w for w in setting.choices if w != setting.off)
    schema = TypeAdapter(setting.value).json_schema()
    low = schema.get("minimum", schema.get("exclusiveMinimum", 0.0))
    return (low + schema.get("maximum", schema.get("exclusiveMaximum", 1.0))) / 2


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.field for s in SETTINGS])
def test_every_declared_setting_is_compared_end_to_end(prefect_harness, workspace, setting, capsys):
    """A tiny run per declared setting, through every path a setting takes: its task runs, its Parquet key
    column and type, its folder name, its verdict line, its history filter, its figure."""
    value = example(setting)
    variant = variant_of({setting.field: value})
    folder, states, _ = run_flow(workspace, dataset="fake", epochs=1, limit_train=200, limit_test=100,
                                 **{setting.field: [value]})  # fmt: skip
    # Only the named setting is compared (dropout 0.25 only when nothing is named).
    trains = {n for n in states if n.startswith("train[")}
    assert trains == {f"train[{variant.name}, seed=0]", "train[baseline, seed=0]"}
    table = pq.read_table(folder / "summary.parquet")
    assert table.schema.field(setting.field).type == (pa.float64() if setting.numeric else pa.string())
    summary = {r["model"]: r for r in table.to_pylist()}
    assert summary[variant.name][setting.field] == value and not summary[variant.name]["baseline"]
    assert summary["baseline"][setting.field] == setting.off and summary["baseline"]["baseline"]
    assert all(row[s.field] == s.off for row in summary.values() for s in SETTINGS if s is not setting)
    assert folder.name.startswith(f"fake-train200-test100-{setting.tag([value])}-s0-e1-")
    assert f"\n- {variant.words} vs baseline with one seed each" in (folder / "summary.md").read_text()
    assert (folder / "comparison.png").stat().st_size > 10_000
    assert panel_positions([variant, BASELINE])[2] == setting.numeric  # numbers on an axis, words side by side
    uri = os.environ["MLFLOW_TRACKING_URI"]
    rows = workspace / f"history-{setting.field}.parquet"
    assert history_cli.main(["--history", uri, flag(setting.field), value_text(value), "--parquet", str(rows)]) == 0
    assert set(pq.read_table(rows).column("model").to_pylist()) == {variant.name}
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        history_cli.main(["--history", uri, flag(setting.field), "not-a-value"])
    assert refused.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1  # one line


def test_a_variant_combines_settings_beside_each_alone(prefect_harness, workspace):
    folder, states, _ = run_flow(workspace, dataset="fake", epochs=1, limit_train=200, limit_test=100,
                                 augment=["flip-crop"], variant=["dropout=0.25,augment=flip-crop"])  # fmt: skip
    trains = {n for n in states if n.startswith("train[")}
    assert trains == {"train[augment=flip-crop, seed=0]", "train[dropout=0.25, augment=flip-crop, seed=0]",
                      "train[baseline, seed=0]"}  # fmt: skip
    summary = {r["model"]: r for r in pq.read_table(folder / "summary.parquet").to_pylist()}
    both = summary["dropout=0.25, augment=flip-crop"]
    assert (both["dropout"], both["augment"], both["baseline"]) == (0.25, "flip-crop", False)
    md = (folder / "summary.md").read_text()
    assert "- dropout 0.25 and augmentation flip-crop vs baseline with one seed each" in md
    assert "- augmentation flip-crop vs baseline with one seed each" in md
