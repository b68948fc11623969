"""The Dask task runner: a local cluster of 2 worker processes gives the thread runner's results."""

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
METRICS = ("epoch", "train_running_loss", "train_running_acc", "train_eval_acc", "test_loss", "test_acc")


def run_cli(tmp_path: Path, name: str, *extra: str) -> tuple[Path, str]:
    args = ["--dataset", "fake", "--epochs", "2", "--limit-train", "400", "--limit-test", "200", "--seeds", "0", "1",
            "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / name / "out"),
            "--cache-dir", str(tmp_path / name / "cache"), *extra]  # fmt: skip
    proc = subprocess.run([sys.executable, "flows/compare.py", *args], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    return Path(proc.stdout.strip().splitlines()[-1].removeprefix("report: ")), proc.stdout


def history(folder: Path):
    rows = pq.read_table(folder / "per_epoch.parquet").to_pylist()
    return sorted((r["model"], r["seed"], *(r[m] for m in METRICS)) for r in rows)


@pytest.mark.e2e  # a real Dask cluster of worker processes
def test_dask_runner_matches_thread_runner(prefect_harness, tmp_path):
    from flows.compare import compare

    dask_report, dask_log = run_cli(tmp_path, "dask", "--task-runner", "dask", "--verbose")  # Dask's own log too
    # The same parameters on the thread runner (in this process, on the tests' Prefect server).
    thread_report = Path(compare(dataset="fake", epochs=2, limit_train=400, limit_test=200, seeds=[0, 1],
                                 data_dir=str(tmp_path / "data"), out=str(tmp_path / "thread" / "out"),
                                 cache_dir=str(tmp_path / "thread" / "cache")))  # fmt: skip
    assert "distributed.scheduler" in dask_log  # it really ran on a Dask cluster ...
    assert dask_log.count("Prefect: a temporary server for this run") == 1  # ... reporting to this run's one server
    assert "train[dropout=0.25, seed=1]" in dask_log
    assert history(dask_report) == history(thread_report) and len(history(dask_report)) == 4 * 2


def test_dask_address_needs_the_dask_runner(capsys):
    from flows.compare import main

    assert main(["--dask-address", "tcp://127.0.0.1:8786"]) == 2
    assert "needs --task-runner dask" in capsys.readouterr().err


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e  # a real Dask scheduler and worker processes, as the README's scale-out starts them
def test_on_an_existing_scheduler_each_training_lands_on_a_gpu_worker_one_at_a_time(prefect_harness, tmp_path):
    """`dask scheduler`, two `dask worker … --resources GPU=1` and one worker without a GPU, one Prefect server:
    every training runs on a GPU worker, never two at once on one, though each has two threads (the device seam
    names `cpu` for the GPU these workers do not have). What each worker executed is read from its own log."""
    import os

    from distributed import Client
    from prefect.settings import PREFECT_API_URL

    from flows.compare import GPU_WORKER_DEVICE_ENV

    def executions(dask_worker) -> list[tuple[str, float, float]]:
        """(key, start, stop) of each task this worker executed, from its own transition log (its clock); defined
        here so that it travels to the workers by value."""
        began, spans = {}, []
        for entry in dask_worker.state.log:
            if len(entry) == 7:  # (key, start, finish, final state, recommendations, stimulus, time)
                key, start, _, final, _, _, when = entry
                if final == "executing":
                    began[key] = when
                elif start == "executing" and key in began:
                    spans.append((str(key), began.pop(key), when))
        return spans

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    # One Prefect server for the workers and the run, as the README says (here the test session's).
    env = {**os.environ, "PYTHONPATH": str(REPO), GPU_WORKER_DEVICE_ENV: "cpu"}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    dask = [sys.executable, "-m"]
    scheduler = subprocess.Popen([*dask, "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], cwd=REPO, env=env, stderr=subprocess.DEVNULL)  # fmt: skip
    workers = [subprocess.Popen([*dask, "distributed.cli.dask_worker", address, "--nthreads", "2", "--name", name,
                                 "--no-dashboard", *extra], cwd=REPO, env=env, stderr=subprocess.DEVNULL)
               for name, extra in (("gpu-a", ["--resources", "GPU=1"]), ("gpu-b", ["--resources", "GPU=1"]),
                                   ("no-gpu", []))]  # fmt: skip
    try:
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(3, timeout=120)
            args = ["--dataset", "fake", "--epochs", "1", "--limit-train", "200", "--limit-test", "100",
                    "--dropout", "0.1", "0.25", "0.5", "--seeds", "0", "1", "--data-dir", str(tmp_path / "data"),
                    "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--task-runner", "dask",
                    "--dask-address", address]  # fmt: skip
            proc = subprocess.run([sys.executable, "flows/compare.py", *args], cwd=REPO, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)  # fmt: skip
            assert proc.returncode == 0, proc.stdout[-4000:]
            names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
            ran = {names[a]: [s for s in spans if s[0].startswith("train")]
                   for a, spans in client.run(executions).items()}  # fmt: skip
    finally:
        for p in (*workers, scheduler):
            p.terminate()
        for p in (*workers, scheduler):
            p.wait(30)
    assert ran["no-gpu"] == [] and sum(map(len, ran.values())) == 8, ran  # 3 variants and the baseline, 2 seeds
    for spans in ran.values():
        spans.sort(key=lambda s: s[1])
        one_at_a_time = all(a[2] <= b[1] for a, b in zip(spans, spans[1:], strict=False))
        assert one_at_a_time, spans
