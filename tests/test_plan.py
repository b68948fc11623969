"""The device plan (dropout_lab/runtime/devices.py): how variants sharing a device train, chosen from measurements."""

import dataclasses
import json

import pytest

from dropout_lab.config import TrainConfig
from dropout_lab.runtime import devices
from dropout_lab.runtime.devices import (
    GPU_PROCESSES_MAX,
    PLAN_FILE,
    PLANS,
    measured_plan,
    plan_for,
    stack_groups,
    worker_slots,
)

TABLE = {"eager": {"2": "processes", "8": "stacked"}, "graphs": {"2": "processes", "4": "stacked", "16": "processes"}}


@pytest.fixture
def table(monkeypatch, tmp_path):
    path = tmp_path / "gpu_plan.json"
    path.write_text(json.dumps(TABLE))
    monkeypatch.setattr(devices, "PLAN_FILE", path)


def cfgs(device_list, **changes):
    return [dataclasses.replace(TrainConfig(), dropout=0.1 * i, device=d, **changes) for i, d in enumerate(device_list)]


@pytest.mark.parametrize(
    ("k", "graphed", "expected"),
    [
        (2, True, "processes"),
        (3, True, "processes"),
        (4, True, "stacked"),
        (15, True, "stacked"),
        (16, True, "processes"),
        (64, True, "processes"),
        (1, True, "processes"),
        (2, False, "processes"),
        (7, False, "processes"),
        (8, False, "stacked"),
    ],  # fmt: skip
)
def test_the_measured_entry_for_the_largest_measured_k_not_above_k(table, k, graphed, expected):
    assert measured_plan(k, graphed) == expected


def test_auto_follows_the_measurements_on_a_gpu_and_runs_a_process_each_on_cpu(table):
    assert plan_for("auto", "cuda:0", 4, graphed=True) == "stacked"
    assert plan_for("auto", "cuda:0", 2, graphed=False) == "processes"
    assert plan_for("auto", "cuda:0", 1, graphed=True) == "processes"  # one variant: nothing to share
    assert plan_for("auto", "cpu", 8, graphed=False) == "processes"
    assert [plan_for(m, "cpu", 2, False) for m in ("on", "off")] == ["stacked", "processes"]
    with pytest.raises(ValueError, match="stack must be one of auto, on, off"):
        plan_for("sometimes", "cpu", 2, False)


def test_groups_follow_the_plan(table):
    gpu = cfgs(["cuda:0", "cuda:1", "cuda:0", "cuda:0", "cuda:0"])
    on0 = [gpu[0], gpu[2], gpu[3], gpu[4]]
    # Graphed (fp32, auto): 4 on cuda:0 → one stack; 1 on cuda:1 → its own process.
    assert stack_groups(gpu, "auto") == [on0, [gpu[1]]]
    # Eager (graphs off): 4 on cuda:0 → the eager entry for 2 (the largest measured K not above 4): processes.
    assert stack_groups(gpu, "auto", cuda_graphs="off") == [[c] for c in gpu]  # input order
    # fp16 cannot be graphed: the eager table decides.
    assert stack_groups(cfgs(["cuda:0"] * 8, precision="fp16"), "auto") == [cfgs(["cuda:0"] * 8, precision="fp16")]
    assert stack_groups(gpu, "on") == [on0, [gpu[1]]]
    cpu = cfgs(["cpu", "cpu"])
    assert stack_groups(cpu, "auto") == [[cpu[0]], [cpu[1]]] and stack_groups(cpu, "on") == [cpu]


def test_a_gpu_takes_several_training_processes_at_once():
    assert worker_slots(["cuda:0", "cuda:0", "cuda:1"], 1) == {"cuda:0": GPU_PROCESSES_MAX, "cuda:1": GPU_PROCESSES_MAX}


def test_the_shipped_plan_names_a_known_plan_for_every_entry():
    shipped = json.loads(PLAN_FILE.read_text())
    for kind in ("eager", "graphs"):
        assert shipped[kind] and all(int(k) >= 2 and plan in PLANS for k, plan in shipped[kind].items())
