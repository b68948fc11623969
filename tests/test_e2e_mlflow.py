"""MLflow as its users watch it: a command-line run recording the run history into a real `mlflow server`,
read through MLflow's own client and its UI (marked e2e: a whole command-line run, a server, Chromium)."""

import time

import pytest
from browser import SHOTS, rendered_dom, screenshot
from test_history import stop_and_resume_recording
from test_reliability import args_for, cli, report_of

pytestmark = pytest.mark.e2e


@pytest.fixture()
def mlflow_server(tmp_path):
    """A real `mlflow server` (its own process, SQLite store, artifacts proxied through it) on a free port."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    pytest.importorskip("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "mlflow-server.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.time() < deadline, (tmp_path / "mlflow-server.log").read_text()
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()


def test_a_tracking_server_gets_a_training_experiment_logged_models_and_clean_numbers(tmp_path, monkeypatch,
                                                                                     mlflow_server):  # fmt: skip
    """Against a real `mlflow server`, as its users browse it: a model-training experiment (not the GenAI
    view), each child run's network as a logged model with its signature that loads and predicts, every
    metric a fraction without float noise, MLflow's own git tags (the full commit), the Prefect run's id,
    and nothing MLflow printed raw on the terminal."""
    import mlflow
    import torch

    from dropout_lab.analysis import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "dropout-lab-e2e")  # MLflow's own setting, honoured
    proc = cli(args_for(tmp_path, "--epochs", "2", "--limit-train", "400", "--limit-test", "200", "--log-models"))
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-3000:]
    folder = report_of(output)
    assert "🏃" not in output and "View run" not in output and "mlflow.pytorch" not in output, output[-3000:]
    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("dropout-lab-e2e")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's training view
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.report_folder = '{folder}'")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {"baseline seed 0", "dropout=0.25 seed 0"}
    for name, child in children.items():
        (logged,) = client.search_logged_models([experiment.experiment_id],
                                                filter_string=f"source_run_id = '{child.info.run_id}'")  # fmt: skip
        assert logged.name == name.replace("=", "-").replace(".", "_").replace(" ", "-")  # one name per model
        model = mlflow.pytorch.load_model(f"models:/{logged.model_id}")
        assert tuple(model(torch.zeros(3, 3, 32, 32)).shape) == (3, 10), name
        info = mlflow.models.get_model_info(f"models:/{logged.model_id}")
        assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, 32, 32)
        assert child.data.metrics["final_test_acc"] == parent.data.metrics[
            f"{name.removesuffix(' seed 0').replace('=', '_')}.test_acc"]  # one unit: fractions  # fmt: skip
    for run in runs:
        for key, value in run.data.metrics.items():
            assert value == float(f"{value:.12g}"), (run.info.run_name, key, value)  # no float noise
            if "acc" in key or "gap" in key:  # accuracies, gaps and their differences: fractions
                assert -1 <= value <= 1, (run.info.run_name, key, value)
    commit = parent.data.tags["mlflow.source.git.commit"]
    assert len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)
    assert parent.data.tags["flow_run_id"] and children["baseline seed 0"].data.tags["flow_run_id"]
    page = tracking.run_page(mlflow_server, parent.info.run_id)
    assert page == (f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
                    "?workflowType=machine_learning")  # fmt: skip
    assert __import__("httpx").get(page.split("#")[0], timeout=10).status_code == 200  # the UI answers there

    # The link opens the run as MLflow shows training runs (filed under Runs, not GenAI's Evaluations),
    # and the experiment from there lists the runs.
    training_view = (">Runs<", ">Models<")  # its side bar; GenAI's has Overview, Evaluation runs, Evaluations
    for url, shown in ((page, [parent.info.run_name, "baseline seed 0"]),  # the run and a child run
                       (page.split("/runs/")[0] + tracking.TRAINING_VIEW, [parent.info.run_name])):  # fmt: skip
        dom = rendered_dom(url, tmp_path / "chromium")
        assert all(k in dom for k in (*training_view, *shown)), (url, dom[-2000:])
        assert ">Evaluation runs<" not in dom and ">Evaluations<" not in dom, (url, dom[-2000:])
    experiment_page = url
    screenshot(page, SHOTS / "mlflow-run.png", tmp_path / "chromium")
    screenshot(experiment_page, SHOTS / "mlflow-experiment.png", tmp_path / "chromium")


def test_on_a_server_a_recording_stopped_midway_ends_its_runs_and_the_rerun_completes_them(mlflow_server,
                                                                                            monkeypatch):  # fmt: skip
    """The same stop and rerun as against a SQLite store (tests/test_history.py), through a real server's REST API:
    nothing left RUNNING, one comparison run, one run per model."""
    stop_and_resume_recording(mlflow_server, monkeypatch)
