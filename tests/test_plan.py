"""The device plan (dropout_lab/runtime/devices.py): how variants sharing a device train, chosen from measurements."""

import dataclasses
import json

import pytest

from dropout_lab.config import TrainConfig
from dropout_lab.runtime import devices
from dropout_lab.runtime.devices import (
    GPU_PROCESSES_MAX,
    PLANS,
    measured_plan,
    plan_for,
    process_layout,
    stack_groups,
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


def test_a_wave_s_processes_on_one_gpu_all_start_at_once_while_the_cpu_splits_its_cores(monkeypatch):
    monkeypatch.setattr(devices, "available_cores", lambda: 4)
    gpu = [[c] for c in cfgs(["cuda:0"] * 5 + ["cuda:1"] * 2)]  # a process each (graphed plan for K=2 is processes)
    threads, slots = process_layout(gpu)
    assert all(slots[d] >= sum(g[0].device == d for g in gpu) for d in slots)  # none waits for a slot
    threads, slots = process_layout([[c] for c in cfgs(["cpu"] * 3)])
    assert threads == 1 and slots == {"cpu": 4}  # 3 processes on 4 cores: one thread each, all at once
    threads, slots = process_layout([[c] for c in cfgs(["cpu"] * 2)])
    assert (threads, slots) == (2, {"cpu": 2})  # the cores split between the two, no oversubscription


def test_the_shipped_plan_decides_every_number_of_variants_into_groups_that_cover_them_once():
    for k in range(2, 3 * GPU_PROCESSES_MAX):
        for graphs in ("on", "off"):
            configs = cfgs(["cuda:0"] * k)
            groups = stack_groups(configs, "auto", graphs)
            assert sorted(c.dropout for g in groups for c in g) == sorted(c.dropout for c in configs)
            assert len(groups) in (1, k) and measured_plan(k, graphs == "on") in PLANS
