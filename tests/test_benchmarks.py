"""The benchmark scripts run (smoke: generated data, a few steps; the quoted numbers come from real runs)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dropout_lab.runtime.devices import PLANS, measured_plan

pytestmark = pytest.mark.benchmark
REPO = Path(__file__).resolve().parent.parent


def test_bench_train_smoke_run_writes_every_row(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_train.py", "--steps", "5", "--eval-images", "64", "--k-sweep", "1,2",
         "--settings", "fp32", "--out", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "speed-up of the full comparison vs the tutorial loop" in proc.stdout and "(fp32: 20 warm-up" in proc.stdout
    assert "of which the eval-mode pass over 10,000 training images per epoch: +" in proc.stdout
    (table,) = tmp_path.glob("bench-*.csv")
    loops = [row["loop"] for row in csv.DictReader(table.open())]
    assert loops[:2] == ["reference (tutorial loop)", "project, one process, all cores"]
    assert "k-sweep stacked K=2" in loops and loops.count("k-sweep processes K=2") == 2


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


def test_time_training_runs_the_flows_training_stage(tiny_cifar):
    proc = subprocess.run(
        [sys.executable, "benchmarks/time_training.py", "--data-dir", str(tiny_cifar), "--epochs", "1",
         "--stack", "on", "--dropout", "0.25", "0.5"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "3 variants in 1 training process(es)" in proc.stdout
    assert sum(line.startswith("final  ") for line in proc.stdout.splitlines()) == 3
    assert "training stage wall time:" in proc.stdout.splitlines()[-1]


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


def test_gpu_plan_measures_every_plan_side_by_side_and_writes_the_fastest(tiny_cifar, tmp_path):
    written = tmp_path / "gpu_plan.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_plan.py", "--data-dir", str(tiny_cifar), "--device", "cpu", "--ks", "2",
         "--eager-ks", "2", "--epochs", "1", "--limit-train", "0", "--write", str(written)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 2 |")]
    assert [r.split(" | ")[1] for r in rows] == ["on", "off"] and all(r.count(" s, ") >= 2 for r in rows), rows
    plan = json.loads(written.read_text())
    assert plan["graphs"]["2"] in PLANS and plan["eager"]["2"] in ("stacked", "processes")
    assert len(plan["measured"]["rows"]) == 4 and plan["measured"]["command"].startswith("benchmarks/gpu_plan.py")
    # The file it writes is the one the plan reads.
    assert measured_plan(2, True, plan) == plan["graphs"]["2"]


def test_gpu_plan_measures_small_k_of_both_kinds_first():
    """A --budget that runs out during the large K still leaves a plan to write (both kinds at K=2, 4)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_plan import measurement_order

    order = [(k, graphs) for k, _, graphs in measurement_order([2, 4, 8, 16], [2, 4])]
    assert (
        order
        == [(2, "on")] * 2 + [(2, "off")] * 2 + [(4, "on")] * 2 + [(4, "off")] * 2 + [(8, "on")] * 2 + [(16, "on")] * 2
    )


def test_gpu_check_runs_every_step_on_the_cpu_and_ends_with_its_table(tmp_path):
    """The device check's dry run, as its header says to make one before a GPU call: every step runs and
    the table says what it measured (time targets, accuracy bands and the settled answer are the GPU's to
    meet: on a CPU a step may be over its time, never failed)."""
    from dropout_lab.core.data import write_cifar_folder

    write_cifar_folder(tmp_path / "data", 400, 200)
    env = {**os.environ, "DEVICE": "cpu", "EPOCHS": "1", "LIMIT_TRAIN": "200", "KS": "2", "EAGER_KS": "2",
           "PLAN_LIMIT": "200", "SWEEP_SEEDS": "0", "CAP": "150", "PYTHON": sys.executable,
           "DATA": str(tmp_path / "data"), "OUT": str(tmp_path / "out")}  # fmt: skip
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)  # fmt: skip
    table = proc.stdout.split("== table", 1)[1]
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| what")}  # fmt: skip
    assert rows["tests/test_graphs.py + test_plan.py"] == "yes", proc.stdout[-3000:]
    for step in ("training stage, default pair (cold start)", "sweep, 4 variants x 1 epochs, training",
                 "python flows/compare.py, end to end"):  # fmt: skip
        assert rows[step] == "yes" or rows[step].startswith("NO: over "), (step, proc.stdout[-3000:])
    assert (tmp_path / "out" / "gpu_plan.json").is_file()


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
    proc = subprocess.run([sys.executable, "benchmarks/sequential_error.py", "--runs", "400"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 9 * 3, proc.stdout + proc.stderr  # header, then three procedures per scenario
    assert {r[1] for r in rows[1:]} == {"ours (calibrated)", "ours, uncalibrated (before)",
                                        "naive: 95% CI after each wave"}  # fmt: skip
    shapes = ("t3", "uniform", "symmetrized", "resampled", "exponential")
    assert {r[0].lstrip("| ") for r in rows[1:]} == {"no difference", "at the margin", "observed", "worst case",
                                                     *(f"worst case, {shape}" for shape in shapes)}  # fmt: skip
    assert all(float(r[2]) <= 80 for r in rows[1:])  # never more trainings than 4 models x 20 seeds


def test_sequential_error_simulation_adds_the_sign_flip_procedure_when_asked():
    proc = subprocess.run([sys.executable, "benchmarks/sequential_error.py", "--runs", "30", "--signflip", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 9 * 4 and sum(r[1] == "sign-flip, spending a*t^2" for r in rows) == 9, proc.stderr


def test_the_sign_flip_test_spends_at_most_its_level_over_every_sign_of_the_same_magnitudes():
    """Exact under symmetry: over all 2^n sign vectors of one set of magnitudes (each equally likely when
    the differences are symmetric about 0), the sequential test rejects by each look at most as often as
    it has spent by then, and close to it (what the discreteness leaves)."""
    import itertools
    import runpy

    signflip_look = runpy.run_path(str(REPO / "benchmarks" / "sequential_error.py"))["signflip_look"]
    magnitudes = np.random.default_rng(3).gamma(2.0, 1.0, 10)
    ends, spend = (5, 10), [0.04, 0.08]  # the first look can spend 1/32 of it
    looks = [signflip_look(np.array(s) * magnitudes, ends, spend) for s in itertools.product((-1.0, 1.0), repeat=10)]
    by_first, by_last = np.mean([k == 0 for k in looks]), np.mean([k >= 0 for k in looks])
    assert 0 < by_first <= spend[0] and 0.07 <= by_last <= spend[1], (by_first, by_last)


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
