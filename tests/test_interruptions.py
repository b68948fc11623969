"""A command-line run interrupted every way a user interrupts one — Ctrl-C, `kill PID` (SIGTERM),
`kill -9` — and resumed each time with the same command, until it completes: one chain of runs on one
cache (one epoch further each time), checked against an uninterrupted run of the same command, and the
run history (MLflow) as its users read it after each. Marked e2e: whole process trees, command-line runs."""

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from test_reliability import alive, args_for, cli, final_weights, metrics, report_of

pytestmark = pytest.mark.e2e
RUN = ("--epochs", "5", "--limit-train", "2000")


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").iterdir():
            for child in (task / "children").read_text().split():
                found.append(int(child))
                todo.append(int(child))
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def start_training(ws: Path, args: list[str], epoch: int) -> tuple[subprocess.Popen, list[str]]:
    """A CLI run in its own session (like a terminal's foreground job), once epoch `epoch` is checkpointed."""
    proc = cli(args, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 240
    while not list((ws / "cache").glob(f"checkpoints/*/epoch-{epoch:04d}.pt")):
        assert proc.poll() is None and time.time() < deadline, "".join(lines)[-3000:]
        time.sleep(0.1)
    proc.reader, proc.ws = reader, ws
    return proc, lines


def stop(proc: subprocess.Popen, lines: list[str], how) -> dict:
    """Interrupt the run (`how(pid)`); what happened: exit status, output, processes left, time taken."""
    children = descendants(proc.pid)
    servers = [c for c in children if b"uvicorn" in cmdline(c)]
    workers = [c for c in children if b"multiprocessing.forkserver" in cmdline(c)]  # the server and its trainings
    start = time.time()
    how(proc.pid)
    proc.wait(timeout=60)
    proc.reader.join(timeout=10)
    seconds = time.time() - start
    deadline = time.time() + 10
    while any(alive(c) for c in children) and time.time() < deadline:
        time.sleep(0.1)
    return {"rc": proc.returncode, "out": "".join(lines), "seconds": seconds, "children": children,
            "servers": servers, "workers": workers, "orphans": [c for c in children if alive(c)],
            "mlflow": mlflow_runs(proc.ws)}  # fmt: skip


def mlflow_runs(ws: Path) -> list:
    """Every run the history's MLflow store holds (the store is created when a run first records)."""
    store = ws / "out" / "mlflow.db"
    if not store.exists():
        return []
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{store}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def every_process_at_once(pid: int) -> None:
    """SIGTERM to the run's process group and to its temporary server (in a session of its own) at once."""
    servers = [c for c in descendants(pid) if b"uvicorn" in cmdline(c)]
    os.killpg(pid, signal.SIGTERM)
    for server in servers:
        os.kill(server, signal.SIGTERM)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    ws = tmp_path_factory.mktemp("interrupted")
    reference = cli(args_for(ws, *RUN, cache="cache-ref", out="out-ref"))
    ref_out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_out[-3000:]
    args = [*args_for(ws, *RUN), "--history", f"sqlite:///{ws / 'out' / 'mlflow.db'}"]  # this chain's own
    seen = {"reference": ref_out, "ws": ws}
    proc, lines = start_training(ws, args, epoch=1)
    seen["SIGINT"] = stop(proc, lines, lambda pid: os.killpg(pid, signal.SIGINT))  # Ctrl-C: the whole group
    proc, lines = start_training(ws, args, epoch=2)
    seen["SIGTERM"] = stop(proc, lines, lambda pid: os.kill(pid, signal.SIGTERM))  # `kill PID`: the main process
    proc, lines = start_training(ws, args, epoch=3)
    seen["ALL"] = stop(proc, lines, every_process_at_once)  # `systemctl stop`: the run and its server together
    proc, lines = start_training(ws, args, epoch=4)
    seen["SIGKILL"] = stop(proc, lines, lambda pid: os.kill(pid, signal.SIGKILL))
    seen["SIGKILL"]["reports"] = list((ws / "out").glob("*/summary.parquet"))
    final = cli(args)
    seen["final"], _ = final.communicate(timeout=300)
    assert final.returncode == 0, seen["final"][-3000:]
    seen["recorded"] = mlflow_runs(ws)
    return seen


@pytest.mark.parametrize("sig, rc", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_stop_the_run_within_seconds_and_keep_checkpoints(chain, sig, rc):
    name = signal.Signals(sig).name
    stopped = chain[name]
    assert stopped["rc"] == rc, stopped["out"][-3000:]
    assert len(stopped["children"]) >= 3  # the temporary server and two training processes
    assert stopped["seconds"] < 30  # seconds, not the rest of the training
    last = stopped["out"].strip().splitlines()[-1]
    assert last.startswith(f"error: stopped by {name}") and "rerun the same command to resume" in last
    assert "ConnectError" not in stopped["out"] and "Traceback" not in stopped["out"]
    assert not stopped["orphans"], "orphan processes left behind"


def test_a_stop_that_reaches_every_process_at_once_ends_within_seconds_with_the_same_last_line(chain):
    """No API is left to report the stop to: the run does not retry it for minutes, it ends."""
    stopped = chain["ALL"]
    assert stopped["rc"] == 143 and stopped["seconds"] < 15, (stopped["seconds"], stopped["out"][-3000:])
    last = stopped["out"].strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGTERM") and "rerun the same command to resume" in last
    assert not stopped["orphans"], "orphan processes left behind"


def test_the_same_command_resumes_after_each_interruption(chain):
    # Each run after an interruption starts from the checkpoints the interrupted one left ...
    for after in ("SIGTERM", "ALL", "SIGKILL"):  # the runs after Ctrl-C and after SIGTERM (themselves interrupted)
        assert re.search(r"resuming \S+ from epoch-\d{4}\.pt", chain[after]["out"]), chain[after]["out"][-3000:]
    assert "resumed after epoch" in chain["final"]  # ... and the one after kill -9 trains on from there


def test_kill_9_leaves_no_orphans_no_temporary_server_and_no_report(chain):
    killed = chain["SIGKILL"]
    assert killed["rc"] == -signal.SIGKILL
    assert killed["servers"], "the temporary server is not a child of the run"
    assert killed["workers"], "no training process was running"
    assert not killed["orphans"], "orphans after kill -9"
    assert not killed["reports"]  # no report from the killed run


def test_the_resumed_run_equals_an_uninterrupted_one(chain):
    ws = chain["ws"]
    resumed, reference = report_of(chain["final"]), report_of(chain["reference"])
    assert max(pq.read_table(resumed / "summary.parquet").column("resumed_from_epoch").to_pylist()) >= 2
    assert metrics(resumed) == metrics(reference)
    killed_w, ref_w = final_weights(ws / "cache"), final_weights(ws / "cache-ref")
    assert killed_w.keys() == ref_w.keys() == {"baseline", "dropout"}
    for variant in killed_w:
        for name, tensor in killed_w[variant].items():
            assert torch.equal(tensor, ref_w[variant][name]), (variant, name)


def test_an_interrupted_run_leaves_nothing_open_in_mlflow_and_the_resumed_one_records_each_model_once(chain):
    """The run history records a comparison once its report is written: an interrupted run leaves no run in
    MLflow (none RUNNING forever), and the run that finishes records each model once, all its epochs in one
    MLflow run, however often its training was stopped and resumed."""
    import mlflow

    for stopped in ("SIGINT", "SIGTERM", "ALL", "SIGKILL"):
        assert chain[stopped]["mlflow"] == [], stopped
    runs = chain["recorded"]
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.run_name for r in children) == ["baseline seed 0", "dropout=0.25 seed 0"]
    assert len(runs) == 3  # and one comparison
    client = mlflow.MlflowClient(f"sqlite:///{chain['ws'] / 'out' / 'mlflow.db'}")
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "test_acc")] == [1, 2, 3, 4, 5]
