"""The benchmark scripts run (smoke: generated data, a few steps; the quoted numbers come from real runs)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark  # the training and GPU ones: test_benchmarks_gpu.py
REPO = Path(__file__).resolve().parent.parent


def test_peak_memory_counts_the_whole_process_tree():
    child = "x = bytearray(300_000_000); import time; time.sleep(1.5)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    proc = subprocess.run(
        [sys.executable, "benchmarks/peak_memory.py", "--interval", "0.1", "--", sys.executable, "-c", parent],
        cwd=REPO, stdout=subprocess.PIPE, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout
    summary = next(line for line in proc.stdout.splitlines() if line.startswith("peak memory"))
    rss_gb = float(summary.split("RSS ")[1].split(" GB")[0])
    assert rss_gb >= 0.3, summary  # the grandchild's 300 MB, seen through its parent


def test_verify_cost_times_the_checks_and_finds_the_re_measured_numbers_equal(tiny_cifar):
    proc = subprocess.run(
        [sys.executable, "benchmarks/verify_cost.py", "--data-dir", str(tiny_cifar), "--limit-train", "200",
         "--repeats", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("dropout ")]
    assert len(lines) == 2 and all("images {'train_eval': 0, 'test': 0}, loss max 0.0e+00" in x for x in lines), lines


def test_ab_end_to_end_times_both_checkouts(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/ab_end_to_end.py", "--base", "HEAD", "--data-dir", str(tmp_path / "data"),
         "--fresh-prefect-home", "--", "--dataset", "fake", "--epochs", "1", "--limit-train", "200", "--limit-test",
         "100"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("round 1: base") and lines[1].startswith("round 1: this")
    assert "summary.parquet" in lines[0] and lines[-1].endswith("(an empty PREFECT_HOME each run)")
    assert "ab-end-to-end" not in subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True,
                                                 text=True).stdout  # the temporary worktree is gone  # fmt: skip


def test_history_store_benchmark_lists_with_both_readers_side_by_side():
    argv = ["benchmarks/history_store.py", "--runs", "4", "--writers", "2", "--rounds", "1"]
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = proc.stdout.splitlines()[-4:]
    assert "every one read back (16 models)" in lines[0]
    assert lines[1].startswith("mlflow client") and lines[2].startswith("dropout-lab history")
    assert lines[3].startswith("ratio dropout-lab history / mlflow client: "), lines


def test_cli_latency_times_help_and_refusals_side_by_side():
    proc = subprocess.run([sys.executable, "benchmarks/cli_latency.py", "--rounds", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == [
        "compare.py --help", "compare.py --epochs two", "compare.py --dropout 1.5", "compare.py --lr inf",
        "dropout-lab history --help", "dropout-lab history --history ://x"]  # fmt: skip
    assert all("(0)" in rows[i] for i in (0, 4)) and all("(2)" in rows[i] for i in (1, 2, 3, 5))  # help 0, refusals 2


def test_sequential_error_simulation_prints_every_procedure_on_every_scenario():
    proc = subprocess.run([sys.executable, "benchmarks/sequential_error.py", "--runs", "40"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 9 * 3, proc.stdout + proc.stderr  # header, then three procedures per scenario
    assert {r[1] for r in rows[1:]} == {"ours: sign-flip", "before: Student's t, calibrated",
                                        "naive: 95% CI after each wave"}  # fmt: skip
    shapes = ("t3", "uniform", "symmetrized", "resampled", "exponential")
    assert {r[0].lstrip("| ") for r in rows[1:]} == {"no difference", "at the margin", "observed", "worst case",
                                                     *(f"worst case, {shape}" for shape in shapes)}  # fmt: skip
    assert all(float(r[2].split(" ± ")[0]) <= 80 for r in rows[1:])  # never more than 4 models x 20 seeds


def test_cached_rerun_times_every_task_of_both_runs():
    proc = subprocess.run([sys.executable, "benchmarks/cached_rerun.py", "--seeds", "0", "--limit-train", "200"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[4].strip() for line in proc.stdout.splitlines()
            if line.startswith("| train[")}  # fmt: skip
    assert rows == {"train[baseline, seed=0]": "Cached", "train[dropout=0.25, seed=0]": "Cached"}, proc.stdout
    assert "cached trainings: median" in proc.stdout and "**flow run, end to end**" in proc.stdout


def test_training_start_times_both_preloads_side_by_side():
    proc = subprocess.run([sys.executable, "benchmarks/training_start.py", "--runs", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("without torch._dynamo") and lines[1].startswith("as shipped")
    assert "torch._dynamo" in lines[1] and lines[2].startswith("a tiny training, submitted to done:")
