"""MLflow logging (tasks/tracking.py) into a real local MLflow store, read back through MLflow's client."""

from __future__ import annotations

from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")  # the dev extra installs it

from test_history import epoch, model  # noqa: E402

from dropout_lab.analysis import tracking  # noqa: E402
from dropout_lab.config import Variant, variant_of  # noqa: E402


def logged(out: Path, uri: str | None = None):
    client = mlflow.MlflowClient(tracking_uri=uri or tracking.tracking_uri(out))
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return client, experiment, runs


def one_flow_run(run: int) -> tuple[list[dict], list[dict]]:
    runs = [model(run, rate, seed, 0.6 + 0.01 * seed, 0.05) for rate in (0.25, 0.0) for seed in (0, 1)]
    return runs, [epoch(r, n) for r in runs for n in (1, 2, 3)]


def log_flow_run(out: Path, runs: list[dict], epochs: list[dict], files: list[Path]) -> str:
    """One flow run's models logged after the fact, as the flow's finish_mlflow logs cached models: a parent
    (started at the first training's start), a child per model from its recorded rows, the files. The
    parent's id."""
    first = runs[0]
    variants = sorted({variant_of(r) for r in runs}, key=Variant.order)
    parent = tracking.start_parent(
        out,
        first["flow_run_name"],
        {k: str(first[k]) for k in tracking.RUN_TAGS},
        tracking.run_params(runs, variants),
        min(tracking._ms(r, "started_at") for r in runs),
    )
    tracking.log_children_after(out, parent, runs, epochs)
    tracking.finish_parent(out, parent, {}, files, end_ms=max(tracking._ms(r, "finished_at") for r in runs))
    return parent


def test_a_flow_run_is_a_parent_run_with_a_child_per_model(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "artifacts"
    figure = tmp_path / "comparison.png"
    figure.write_bytes(b"\x89PNG fake")
    runs, epochs = one_flow_run(0)
    parent_id = log_flow_run(out, runs, epochs, [figure])
    assert (out / tracking.STORE_FILE).is_file() and (out / tracking.ARTIFACTS_FOLDER).is_dir()

    client, experiment, found = logged(out)
    assert experiment.artifact_location == (out / tracking.ARTIFACTS_FOLDER).resolve().as_uri()
    parent = client.get_run(parent_id)
    assert parent.info.run_name == "p=0.25 night 0" and parent.info.status == "FINISHED"
    assert parent.info.end_time - parent.info.start_time == 5 * 60 * 1000  # the training's span, not logging's
    assert parent.data.params["rates"] == "0.25" and parent.data.params["seeds"] == "0,1"
    assert parent.data.tags["flow_run_id"] == "run-0" and parent.data.tags["experiment_hash"] == "hash0"
    assert [a.path for a in client.list_artifacts(parent_id)] == ["comparison.png"]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert sorted(r.info.run_name for r in children) == [
        "baseline seed 0", "baseline seed 1", "dropout=0.25 seed 0", "dropout=0.25 seed 1"
    ]  # fmt: skip
    child = next(r for r in children if r.info.run_name == "dropout=0.25 seed 1")
    assert child.data.params["dropout"] == "0.25" and child.data.params["seed"] == "1"
    assert child.data.metrics["final_test_acc"] == pytest.approx(0.61)
    assert child.data.tags["weights_sha256"] == "w-0-0.25-1"
    steps = client.get_metric_history(child.info.run_id, "test_acc")
    assert [(m.step, m.value) for m in steps] == [(n, pytest.approx(0.61 * n / 2)) for n in (1, 2, 3)]


def test_later_runs_join_the_same_experiment_and_the_tracking_uri_is_mlflow_s_own(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "artifacts"
    log_flow_run(out, *one_flow_run(0), [])
    log_flow_run(out, *one_flow_run(1), [])
    assert len(logged(out)[2]) == 2 * (1 + 4)

    elsewhere = f"sqlite:///{tmp_path / 'server.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    log_flow_run(out, *one_flow_run(2), [])
    assert len(logged(out, elsewhere)[2]) == 5
    assert tracking.tracking_uri(out) == elsewhere


def test_asking_for_mlflow_without_it_installed_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r'^--mlflow: MLflow is not installed here; pip install -e "\.\[mlflow\]"$'):
        tracking.check_available()
