"""The Dask task runner: a local cluster of 2 worker processes gives the thread runner's results."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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


def cluster_environment(prefect_harness) -> dict[str, str]:
    """The scheduler's, workers' and run's environment: one Prefect server for all, as the README says (here
    the test session's), and this checkout importable."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": PREFECT_API_URL.value()}


@contextlib.contextmanager
def dask_cluster(env: dict[str, str], workers) -> Iterator[tuple[str, object]]:
    """`dask scheduler` and one `dask worker` per (name, extra arguments) as processes, as the README's
    scale-out starts them: (address, a client of it) once every worker has joined; all stopped after."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    dask = [sys.executable, "-m"]
    processes = [subprocess.Popen([*dask, "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                                   address.rpartition(":")[2], "--no-dashboard"], cwd=REPO, env=env,
                                  stderr=subprocess.DEVNULL)]  # fmt: skip
    processes += [subprocess.Popen([*dask, "distributed.cli.dask_worker", address, "--nthreads", "2", "--name", name,
                                    "--no-dashboard", *extra], cwd=REPO, env=env, stderr=subprocess.DEVNULL)
                  for name, extra in workers]  # fmt: skip
    try:
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(len(workers), timeout=120)
            yield address, client
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            p.wait(30)


@pytest.mark.e2e  # a real Dask scheduler and worker processes, as the README's scale-out starts them
def test_a_scheduler_killed_mid_run_ends_the_run_in_one_line_within_the_deadline(prefect_harness, tmp_path):
    """kill -9 of the scheduler and its worker while a training runs: one last `error:` line within the deadline
    for a remote after its probe (probe.REMOTE_DEADLINE_S), not a hang."""
    from dropout_lab.probe import REMOTE_DEADLINE_S
    from tasks.slots import slot_name
    from tests.test_prefect_native import set_limit

    env = cluster_environment(prefect_harness)
    with dask_cluster(env, [("w", [])]) as (address, client):
        pids = [*client.run(os.getpid).values(), client.run_on_scheduler(os.getpid)]
        args = ["--dataset", "fake", "--epochs", "20", "--limit-train", "2000", "--limit-test", "200", "--data-dir",
                str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                "--task-runner", "dask", "--dask-address", address]  # fmt: skip
        log = tmp_path / "run.log"
        with log.open("w") as out:
            run = subprocess.Popen([sys.executable, "flows/compare.py", *args], cwd=REPO, env=env, text=True,
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            started = time.monotonic()
            while not list(tmp_path.glob("cache/**/epoch-0001.pt")):  # the first epoch finished on the worker
                assert run.poll() is None and time.monotonic() - started < 300, log.read_text()[-4000:]
                time.sleep(0.2)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            run.wait(REMOTE_DEADLINE_S)
        finally:
            run.kill()
            # The killed training's slot lease: a real server's repossessor frees it within a minute, the tests'
            # ephemeral server runs no such service, and the next test's trainings would wait for it for ever.
            # The limit is recreated on its next use.
            set_limit(slot_name("cpu"), None)
        took = time.monotonic() - killed
    lines = log.read_text().strip().splitlines()
    assert run.returncode == 1 and lines[-1].startswith("error: "), "\n".join(lines[-30:])
    assert took < REMOTE_DEADLINE_S, took


@pytest.mark.e2e  # a real Dask scheduler and worker processes, as the README's scale-out starts them
def test_on_an_existing_scheduler_each_training_lands_on_a_gpu_worker_one_at_a_time(prefect_harness, tmp_path):
    """`dask scheduler`, two `dask worker … --resources GPU=1` and one worker without a GPU, one Prefect server:
    every training runs on a GPU worker, never two at once on one, though each has two threads (the device seam
    names `cpu` for the GPU these workers do not have). What each worker executed is read from its own log."""
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

    env = cluster_environment(prefect_harness)
    env[GPU_WORKER_DEVICE_ENV] = "cpu"
    workers = (("gpu-a", ["--resources", "GPU=1"]), ("gpu-b", ["--resources", "GPU=1"]), ("no-gpu", []))
    with dask_cluster(env, workers) as (address, client):
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
    assert ran["no-gpu"] == [] and sum(map(len, ran.values())) == 8, ran  # 3 variants and the baseline, 2 seeds
    for spans in ran.values():
        spans.sort(key=lambda s: s[1])
        one_at_a_time = all(a[2] <= b[1] for a, b in zip(spans, spans[1:], strict=False))
        assert one_at_a_time, spans
