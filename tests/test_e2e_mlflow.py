"""MLflow as its users watch it: a command-line run with `--mlflow`, read through MLflow's own client
while it trains (marked e2e: a whole command-line run, polled from outside)."""

import time

import pytest
from test_reliability import args_for, cli, report_of

pytestmark = pytest.mark.e2e


def test_mlflow_shows_each_model_s_epochs_while_it_trains(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    proc = cli(args_for(tmp_path, "--epochs", "5", "--limit-train", "2000", "--limit-test", "300", "--mlflow"))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    seen_live: dict[str, set[int]] = {}  # child run name -> epochs seen logged, at each look while RUNNING
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
        if not (tmp_path / "out" / "mlflow.db").exists():
            continue
        try:
            experiment = client.get_experiment_by_name("dropout-lab")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
        except Exception:  # the store is being created by the run
            continue
        for run in runs:
            if "mlflow.parentRunId" in run.data.tags and run.info.status == "RUNNING":
                points = len(client.get_metric_history(run.info.run_id, "test_acc"))
                seen_live.setdefault(run.info.run_name, set()).add(points)
    output = proc.stdout.read()
    assert proc.wait() == 0, output[-3000:]
    folder = report_of(output)
    # Both models' child runs existed while training and had epochs in them before they ended.
    assert {"baseline seed 0", "dropout=0.25 seed 0"} <= set(seen_live), seen_live
    assert any(1 <= points < 5 for seen in seen_live.values() for points in seen), seen_live  # part-way: live

    experiment = client.get_experiment_by_name("dropout-lab").experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.report_folder = '{folder}'")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    for child in children:
        history = client.get_metric_history(child.info.run_id, "test_acc")
        assert [m.step for m in history] == [1, 2, 3, 4, 5]
        stamps = [m.timestamp for m in history]
        assert stamps == sorted(stamps) and len(set(stamps)) == 5  # each when its epoch ended
        assert child.info.start_time <= stamps[0] and stamps[-1] <= child.info.end_time
