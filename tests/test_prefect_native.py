"""Prefect's own mechanisms: device slots are global concurrency limits shared by every flow run."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from dropout_lab.analysis import history
from tasks.slots import ensure_slots, slot_name

REPO = Path(__file__).resolve().parent.parent


def set_limit(name: str, size: int | None) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            pass
        if size is not None:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size))


def test_slots_are_created_once_with_the_plan_s_size_and_then_kept(prefect_harness):
    name = slot_name("cuda:3")
    assert name.startswith("dropout-lab-") and name.endswith("-cuda-3")
    set_limit(name, None)
    try:
        assert ensure_slots("cuda:3", 2) == (name, 2)
        assert ensure_slots("cuda:3", 5) == (name, 2)  # a later plan does not resize what exists (the UI may)
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(name).limit == 2
    finally:
        set_limit(name, None)


def test_slot_waits_are_announced_once_per_run_and_device(monkeypatch):
    """Every training of a wave may wait; the log says so once per run and device, with the limit's size
    and how to resize it on a server."""
    from tasks import slots

    lines = []
    logger = type("Logger", (), {"info": lambda self, *args: lines.append(args[0] % args[1:])})()
    for run in ("run-a", "run-b"):
        monkeypatch.setenv("PREFECT__FLOW_RUN_ID", run)
        for _ in range(5):
            slots.announce_wait("cpu", 2, logger)
        slots.announce_wait("cuda:0", 1, logger, limit="dropout-lab-h-cuda-0")
    assert lines[:2] == ["2 trainings at a time on cpu: the others wait for a slot",
                         "1 training at a time on cuda:0, for every run on this machine (the limit "
                         "dropout-lab-h-cuda-0: `prefect gcl update dropout-lab-h-cuda-0 --limit N` resizes it): "
                         "the others wait for a slot"] and lines[2:] == lines[:2]  # fmt: skip


def _missing_once(monkeypatch, cls, method: str) -> None:
    """`cls.method` answers "not found" once, as when another run creates the object right after this
    run looked: Prefect then creates it and the server answers that it already exists."""
    real, calls = getattr(cls, method), []

    def first_missing(self, *args, **kwargs):
        calls.append(method)
        if len(calls) == 1:
            raise ObjectNotFound(http_exc=Exception(f"{method}: not yet"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, first_missing)


def test_results_are_kept_in_a_folder_with_no_storage_block_on_the_server(prefect_harness, tmp_path):
    from prefect import flow, task

    from tasks.cache import ResultOf, cache_options

    @task(cache_policy=ResultOf(identity=lambda p: ("double", p["x"])))
    def double(x: int) -> int:
        return 2 * x

    @flow
    def twice() -> int:
        return double.with_options(**cache_options(tmp_path / "cache"))(21)

    with get_client(sync_client=True) as client:
        before = len(client.read_block_documents())
        assert twice() == 42 and len(list((tmp_path / "cache" / "results").iterdir())) == 1
        assert len(client.read_block_documents()) == before


def test_a_slot_limit_another_run_creates_meanwhile_is_kept(prefect_harness, monkeypatch):
    from prefect.client.orchestration import SyncPrefectClient

    name = slot_name("cuda:4")
    set_limit(name, 3)
    try:
        _missing_once(monkeypatch, SyncPrefectClient, "read_global_concurrency_limit_by_name")
        assert ensure_slots("cuda:4", 1) == (name, 3)
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(name).limit == 3  # the other run's
    finally:
        set_limit(name, None)


@pytest.mark.e2e  # two command-line runs at once against one server
def test_two_concurrent_flow_runs_share_the_device_s_slots(prefect_harness, tmp_path):
    """Two CLI runs (separate processes) against one server, the CPU limited to one training at once:
    their four trainings never overlap. A per-process semaphore would let them run two by two."""
    name = slot_name("cpu")
    set_limit(name, 1)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    try:
        runs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "flows/compare.py",
                    "--dataset",
                    "fake",
                    "--epochs",
                    "3",
                    "--limit-train",
                    "2000",  # trainings long enough that the two runs' overlap (the wait) does not hang on timing
                    "--limit-test",
                    "200",
                    "--seeds",
                    str(seed),
                    "--data-dir",
                    str(tmp_path / f"d{seed}"),
                    "--out",
                    str(tmp_path / "out"),
                    "--cache-dir",
                    str(tmp_path / f"c{seed}"),
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
            for seed in (1, 2)
        ]
        outputs = [run.communicate(timeout=600)[0] for run in runs]
    finally:
        set_limit(name, None)
    for run, out in zip(runs, outputs, strict=True):
        assert run.returncode == 0, out[-3000:]
    waits = [out.count("for every run on this machine (the limit dropout-lab-") for out in outputs]
    assert 1 in waits and max(waits) == 1, outputs[0][-2500:] + outputs[1][-2500:]  # one line per run, if it waits
    spans = sorted(
        (row["started_at"], row["finished_at"])
        for folder in (tmp_path / "out").glob("fake-*")
        for row in pq.read_table(folder / "summary.parquet").to_pylist()
    )
    assert len(spans) == 4
    recorded = [r for r in history.read(history.store_uri(tmp_path / "out"))  # both runs land in one history
                if r["report_folder"].startswith(str(tmp_path))]  # fmt: skip
    assert len(recorded) == 4 and len({r["flow_run_id"] for r in recorded}) == 2
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, spans


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_slot_names_are_per_machine_and_device(device):
    assert slot_name(device) == slot_name(device) and slot_name("cpu") != slot_name("cuda:0")


def test_a_task_s_code_is_found_from_imports_not_a_hand_kept_list(tmp_path, monkeypatch):
    from dropout_lab import keys

    worker = keys.project_imports("dropout_lab.runtime.training")
    assert {"dropout_lab.core.train", "dropout_lab.core.stacked", "dropout_lab.core.checkpoint",
            "dropout_lab.core.model"} <= worker  # fmt: skip
    assert "dropout_lab.analysis.report" not in worker  # a plot edit does not retrain
    # a training edit re-renders only via weights
    assert "dropout_lab.core.train" not in keys.project_imports("dropout_lab.analysis.report")

    # A split module: the new file is picked up (even when imported lazily inside a function).
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "a.py").write_text("import os\n\ndef f():\n    from tasks import b\n    return b.g()\n")
    (tmp_path / "tasks" / "b.py").write_text("from tasks.c import h\n\ndef g():\n    return h()\n")
    (tmp_path / "tasks" / "c.py").write_text("def h():\n    return 1\n")
    monkeypatch.setattr(keys, "REPO", tmp_path)
    assert keys.project_imports("tasks.a") == {"tasks.a", "tasks.b", "tasks.c"}
    before = keys._hash_sources("tasks.a")
    (tmp_path / "tasks" / "c.py").write_text("def h():\n    return 2\n")
    assert keys._hash_sources("tasks.a") != before


def test_the_alert_lists_only_the_parameters_a_run_changed_from_its_deployment():
    """The failure message as Prefect's server renders it (its own user-template environment)."""
    from types import SimpleNamespace as O

    from prefect.server.utilities.user_templates import render_user_template_sync, validate_user_template

    from deployments.notify import BODY

    validate_user_template(BODY)
    deployment = O(name="nightly", parameters={"out": "served", "epochs": 2, "dropout": [0.25]})

    def changed(**params) -> str:
        state = O(name="Failed", message="boom")
        run = O(name="r", id="1", state=state, parameters={**deployment.parameters, **params})
        text = render_user_template_sync(BODY, {"flow_run": run, "deployment": deployment})
        return text.split("Parameters changed from the deployment's: ")[1].split("\n")[0]

    assert changed(out="/elsewhere") == "out=/elsewhere"
    assert changed(out="a", epochs=3) == "epochs=3; out=a"
    assert changed() == "none (the deployment's defaults)"


def test_a_run_is_named_from_its_parameters_and_those_a_deployment_does_not_store_at_their_defaults():
    """Prefect applies the flow's run name when a run starts; a deployment may store only some parameters."""
    from dropout_lab.config import PARAMETERS
    from flows.compare import label_of

    epochs = PARAMETERS.parameters["epochs"].default
    assert label_of({"dropout": [0.1, 0.5]}) == f"p=0.1,0.5 seeds=0 e{epochs}"
    fake = {"dropout": [0.1], "dataset": "fake", "limit_train": 400}
    assert label_of(fake) == f"p=0.1 seeds=0 e{epochs} fake train400"
    assert label_of({"dropout": ["half"]}) is None  # not valid yet: Prefect's default name stays


def stand_ins():
    """A flow and a task to create runs of on the test server (their bodies never run)."""
    from prefect import flow, task

    @flow(name="reclaimed-here")
    def stand_in():
        pass

    @task(name="a-training")
    def training():
        pass

    return stand_in, training


def test_a_reclaimed_run_s_unfinished_task_runs_end_crashed_at_the_next_run(prefect_harness):
    """The reclaim automation crashes a flow run whose process died; its task runs stay Running until the
    project's next run on that server ends them (tasks/reclaimed.py)."""
    from prefect.states import Completed, Crashed, Running

    from tasks.reclaimed import ENDED, end_orphaned_task_runs

    stand_in, training = stand_ins()
    with get_client(sync_client=True) as client:
        dead = client.create_flow_run(stand_in, tags=["dropout-lab"], state=Running())
        alive = client.create_flow_run(stand_in, tags=["dropout-lab"], state=Running())
        stuck, done, other = (client.create_task_run(training, run.id, key, state=state)
                              for run, key, state in ((dead, "0", Running()), (dead, "1", Completed()),
                                                      (alive, "0", Running())))  # fmt: skip
        client.set_flow_run_state(dead.id, Crashed(message="no heartbeat for 90 s"), force=True)
        assert end_orphaned_task_runs() >= 1
        ended, kept, untouched = (client.read_task_run(t.id).state for t in (stuck, done, other))
    assert ended.type.value == "CRASHED" and ended.message == ENDED
    assert kept.type.value == "COMPLETED" and untouched.type.value == "RUNNING"  # finished, or its run alive


def test_kill_9_of_a_run_s_process_crashes_the_run_and_its_task_runs_at_once_and_a_run_that_ends_is_left_alone(
    prefect_harness,
):
    """A run on a server is watched from a session of its own (tasks/reclaimed.py): when its process is
    killed (kill -9 of it or of its process group, the out-of-memory killer) the run and its unfinished task
    runs end Crashed within seconds, saying why, and the device slot it held is free at once (its lease would
    hold the next run for a minute, and for ever on a server without Prefect's lease reclaimer); a run whose
    body ended, normally or by an exception, is not touched."""
    import signal
    import time

    from prefect.states import Completed, Running

    from tasks.reclaimed import DIED, ENDED, tell_watcher, watched
    from tests.test_e2e_server import commands_in

    stand_in, training = stand_ins()
    with get_client(sync_client=True) as client:
        killed, ended = (client.create_flow_run(stand_in, tags=["dropout-lab"], state=Running()) for _ in "ab")
        stuck, done, left = (client.create_task_run(training, run.id, key, state=state)
                             for run, key, state in ((killed, "0", Running()), (killed, "1", Completed()),
                                                     (ended, "0", Running())))  # fmt: skip
        with pytest.raises(ZeroDivisionError), watched(ended.id):
            raise ZeroDivisionError
        with watched(ended.id):  # a watcher someone killed: the run goes on, telling it nothing more
            (pid,) = commands_in(os.getpid(), f"tasks.reclaimed {ended.id}")
            os.kill(pid, signal.SIGKILL)
            while "State:\tZ" not in Path(f"/proc/{pid}/status").read_text():  # dead: its pipe's end closed
                time.sleep(0.01)
            tell_watcher("lease 00000000-0000-0000-0000-000000000000")
        # The run's process: watched, training in a task run's concurrency context on the device's slot.
        body = (
            "import logging, time, uuid; from prefect.concurrency.context import ConcurrencyContext; "
            "from tasks.reclaimed import watched; from tasks.slots import device_slot; "
            f"w = watched(uuid.UUID('{killed.id}')); w.__enter__(); ConcurrencyContext().__enter__(); "
            "s = device_slot('cpu', 1, logging.getLogger()); s.__enter__(); "
        )
        slot = slot_name("cpu")
        set_limit(slot, None)
        run = subprocess.Popen([sys.executable, "-c", body + "print('watched', flush=True); time.sleep(120)"],
                               cwd=REPO, env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
                               stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        try:
            assert run.stdout.readline() == "watched\n"
            assert client.read_global_concurrency_limit_by_name(slot).active_slots == 1
            os.killpg(run.pid, signal.SIGKILL)  # the run's whole process group: its watcher has its own session
            run.wait()
            deadline = time.monotonic() + 60
            while client.read_global_concurrency_limit_by_name(slot).active_slots:  # the run, its tasks, its slot
                assert time.monotonic() < deadline, (client.read_flow_run(killed.id).state, slot)
                time.sleep(0.2)
            crashed, alive = (client.read_flow_run(r.id).state for r in (killed, ended))
            ended_now, kept, untouched = (client.read_task_run(t.id).state for t in (stuck, done, left))
        finally:
            run.kill()
            set_limit(slot, None)
    assert crashed.type.value == "CRASHED" and crashed.message == DIED
    assert ended_now.type.value == "CRASHED" and ended_now.message == ENDED
    assert alive.type.value == "RUNNING"  # its body ended (an exception): Prefect's engine ends such a run
    assert kept.type.value == "COMPLETED" and untouched.type.value == "RUNNING"


def test_a_deployment_run_s_name_carries_the_time_it_was_scheduled_for_and_the_name_it_was_created_with(
    monkeypatch,
):
    """Nightly runs of one deployment differ by their date (they shared one name), and keep the name
    `prefect deployment run` printed (Prefect's random one); a command-line run's name is what it compares
    alone; a run started again (re-queued) keeps its name."""
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    import flows.compare

    night = datetime(2026, 12, 7, 3, 0, tzinfo=timezone(timedelta(hours=1)))
    monkeypatch.setattr(
        flows.compare, "flow_run",
        SimpleNamespace(parameters={"epochs": 8}, scheduled_start_time=night, name="crafty-lion"),
    )  # fmt: skip
    monkeypatch.setattr(flows.compare, "deployment", SimpleNamespace(id=None))
    plain = flows.compare.run_name()
    assert plain.endswith(" e8") and "2026" not in plain
    monkeypatch.setattr(flows.compare, "deployment", SimpleNamespace(id="a-deployment"))
    named = flows.compare.run_name()
    assert named == f"{plain} 2026-12-07 02:00 UTC (crafty-lion)"
    flows.compare.flow_run.name = named
    assert flows.compare.run_name() == named
