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
