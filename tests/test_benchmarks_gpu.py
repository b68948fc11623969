"""The training and GPU benchmarks' smoke runs, on the CPU: a module apart from test_benchmarks.py so that
another test process runs them (a module goes to one process)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

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
           "PLAN_LIMIT": "200", "SWEEP_SEEDS": "0", "CAP": "300", "ANSWER_ARGS": "--max-seeds 5",
           "TESTS": "tests/test_plan.py",  # test_graphs.py's CUDA-only tests skip here: the default suite runs the rest
           "PYTHON": sys.executable,
           "DATA": str(tmp_path / "data"), "OUT": str(tmp_path / "out")}  # fmt: skip
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)  # fmt: skip
    table = proc.stdout.split("== table", 1)[1]
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| what")}  # fmt: skip
    assert rows["the CUDA-only and plan tests"] == "yes", proc.stdout[-3000:]
    for step in ("training stage, default pair (cold start)", "sweep, 4 variants x 1 epochs, training",
                 "python flows/compare.py, end to end"):  # fmt: skip
        assert rows[step] == "yes" or rows[step].startswith("NO: over "), (step, proc.stdout[-3000:])
    assert (tmp_path / "out" / "gpu_plan.json").is_file()
    assert rows["the settled answer, end to end"] == "yes", proc.stdout[-3000:]  # one look of 5 seeds here
    assert (tmp_path / "out" / "answer" / "decisions.md").read_text().startswith("| model | metric | decision |")
