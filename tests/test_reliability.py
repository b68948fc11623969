"""Fault injection: task retries, concurrent runs, dead API, full or unwritable disks (interruptions and
resuming: test_interruptions.py)."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from dropout_lab.core.checkpoint import epoch_checkpoints, load_checkpoint
from dropout_lab.core.train import FAIL_AT_EPOCH_ENV
from dropout_lab.runtime.processes import TrainingFailed, classify
from flows.compare import compare, main
from tests.archives import archive_folder

REPO = Path(__file__).resolve().parent.parent
METRICS = ("epoch", "train_running_loss", "train_running_acc", "train_eval_acc", "test_loss", "test_acc")


def cli(args, env_extra=None, **kw):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "flows/compare.py", *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw,
    )  # fmt: skip


def args_for(ws: Path, *extra, cache="cache", out="out"):
    return ["--dataset", "fake", "--data-dir", str(ws / "data"), "--out", str(ws / out),
            "--cache-dir", str(ws / cache), *extra]  # fmt: skip


def report_of(output: str) -> Path:
    last = output.strip().splitlines()[-1]
    assert last.startswith("report: "), output[-3000:]
    return Path(last.removeprefix("report: "))


def metrics(folder: Path):
    rows = pq.read_table(folder / "per_epoch.parquet").to_pylist()
    return sorted((r["model"], *(r[m] for m in METRICS)) for r in rows)


def final_weights(cache: Path) -> dict[str, dict]:
    out = {}
    for folder in (cache / "checkpoints").iterdir():
        out[folder.name.split("-")[0]] = load_checkpoint(epoch_checkpoints(folder)[0][1])["model"]
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_injected_fault_is_survived_by_the_tasks_own_retry(prefect_harness, tiny_cifar, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(tiny_cifar / "cifar-10-batches-py", tmp_path / "data" / "cifar-10-batches-py")
    common = dict(data_dir=str(tmp_path / "data"), epochs=3)
    clean = Path(compare(**common, out=str(tmp_path / "o1"), cache_dir=str(tmp_path / "c1")))
    monkeypatch.setenv(FAIL_AT_EPOCH_ENV, "2")  # every worker raises mid-epoch 2 on its first attempt
    faulty = Path(compare(**common, out=str(tmp_path / "o2"), cache_dir=str(tmp_path / "c2")))
    summary = pq.read_table(faulty / "summary.parquet").to_pylist()
    assert [r["resumed_from_epoch"] for r in summary] == [1, 1]  # the retry resumed at epoch 2
    assert metrics(faulty) == metrics(clean)


@pytest.mark.e2e  # three command-line runs, two at once
def test_concurrent_runs_with_different_parameters_share_folders_safely(tmp_path):
    first = cli(args_for(tmp_path, "--epochs", "2"))
    second = cli(args_for(tmp_path, "--epochs", "2", "--dropout", "0.5"))
    out1, _ = first.communicate(timeout=300)
    out2, _ = second.communicate(timeout=300)
    assert first.returncode == 0, out1[-3000:]
    assert second.returncode == 0, out2[-3000:]
    r1, r2 = report_of(out1), report_of(out2)
    assert r1 != r2 and r1.parent == r2.parent
    assert {r["model"] for r in pq.read_table(r1 / "summary.parquet").to_pylist()} == {"dropout=0.25", "baseline"}
    assert {r["model"] for r in pq.read_table(r2 / "summary.parquet").to_pylist()} == {"dropout=0.5", "baseline"}
    third = cli(args_for(tmp_path, "--epochs", "2"))
    out3, _ = third.communicate(timeout=300)
    assert third.returncode == 0 and report_of(out3) == r1
    # Fetch and both trainings; the report is written again from them (never cached). Which run's record of the
    # baseline both runs trained is the cached one depends on who finished last: its times may differ from r1's.
    assert out3.count("Cached(type=COMPLETED)") >= 3, out3[-3000:]


def test_dead_api_url_fails_fast_with_a_clear_message(tmp_path):
    start = time.time()
    proc = cli(args_for(tmp_path), {"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and time.time() - start < 30  # refused before any work
    assert "Prefect API at http://127.0.0.1:9/api" in out and "does not answer" in out


def test_unwritable_out_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    code = main(args_for(tmp_path, "--out", str(tmp_path / "blocker" / "out")))
    assert code == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "data").joinpath("fake-cifar10").exists()


def test_full_disk_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import shutil as real_shutil

    from dropout_lab.runtime import preflight

    usage = real_shutil.disk_usage(tmp_path)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: usage._replace(free=5 << 20))
    assert (
        main(["--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]) == 2
    )
    assert "MB free; this run needs about" in capsys.readouterr().err


def test_failed_report_leaves_no_folder_that_looks_complete(tmp_path, monkeypatch):
    from dropout_lab.analysis import report
    from tests.test_report import fake_results, written

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(report, "plot_samples", broken)
    with pytest.raises(OSError):
        written(tmp_path / "run", *fake_results())
    assert list(tmp_path.iterdir()) == []


def test_out_of_memory_is_not_retried_and_names_model_and_batch():
    from prefect.states import Failed

    from tasks.train import retry_unless_hopeless

    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert classify(oom) == "oom"
    assert classify(ValueError("x")) == "crash"
    assert retry_unless_hopeless(None, None, Failed(data=TrainingFailed("oom", "oom"))) is False
    assert retry_unless_hopeless(None, None, Failed(data=TrainingFailed("boom", "crash"))) is True


def test_concurrent_fetches_sharing_a_data_dir_download_once(tiny_cifar, tmp_path, monkeypatch):
    import hashlib

    from dropout_lab.core import data
    from tests.test_download import ArchiveServer

    payload = archive_folder(tiny_cifar / "cifar-10-batches-py", tmp_path / "a.tar.gz").read_bytes()
    monkeypatch.setattr(data, "ARCHIVE_MD5", hashlib.md5(payload).hexdigest())
    server = ArchiveServer(payload)
    try:
        results = []
        threads = [threading.Thread(target=lambda: results.append(data.ensure_cifar10(tmp_path / "d", server.url)))
                   for _ in range(3)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.close()
    assert server.requests == 1 and len({r.fingerprint for r in results}) == 1 and len(results) == 3


def test_a_stopping_runner_s_cancel_is_undone_by_what_the_run_had_reached(prefect_harness):
    """serve.py's restart undoes the "Runner is shutting down." cancel of Prefect's runner: a run it held
    before the run finished is queued again; a run whose process had already finished (the runner had not
    let go of it yet; CI caught a Completed run so re-run by the next serve.py) gets its outcome back,
    result reference included; a person's cancel stays."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Completed, Crashed, Pending, Running

    from deployments.reclaim import REQUEUED, SHUT_DOWN, requeue

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("compare")
        deployment = client.create_deployment(flow_id=flow_id, name="requeue-check")
        names = ("held", "killed", "ended", "person")
        runs = {name: client.create_flow_run_from_deployment(deployment) for name in names}
        finished = Completed(message="all 4 models trained")
        finished_data = {"storage_key": "/results/abc", "serializer": {"type": "pickle"}, "prefect_version": "3"}
        # The runner's own SIGTERM to a starting run's process is recorded as Crashed before its cancel.
        killed = Crashed(message="Process exited with status code: -15. Process exited due to a SIGTERM signal.")
        for name, states in (("held", [Pending()]), ("killed", [Pending(), killed]),
                             ("ended", [Pending(), Running(), finished]),
                             ("person", [Pending(), Running(), finished])):  # fmt: skip
            for state in states:
                client.set_flow_run_state(runs[name].id, state, force=True)
            if name in ("ended", "person"):  # the Completed state as the engine writes it: with its result's reference
                client.request("POST", "/flow_runs/{id}/set_state", path_params={"id": runs[name].id},
                               json={"state": {"type": "COMPLETED", "name": "Completed", "message": finished.message,
                                               "data": finished_data}, "force": True})  # fmt: skip
            message = "cancelled by a person" if name == "person" else SHUT_DOWN
            client.set_flow_run_state(runs[name].id, Cancelled(message=message), force=True)

        requeued, restored = requeue("compare/requeue-check")
        assert {r.id for r in requeued} == {runs["held"].id, runs["killed"].id}
        assert [r.id for r in restored] == [runs["ended"].id]
        state = {name: client.read_flow_run(run.id).state for name, run in runs.items()}
        for name in ("held", "killed"):
            assert (state[name].type.value, state[name].message) == ("SCHEDULED", REQUEUED)
        assert (state["ended"].type.value, state["ended"].message) == ("COMPLETED", finished.message)
        assert client.read_flow_run_states(runs["ended"].id)[-1].model_dump(mode="json")["data"]["storage_key"] == (
            "/results/abc")  # fmt: skip
        assert (state["person"].type.value, state["person"].message) == ("CANCELLED", "cancelled by a person")
        assert requeue("compare/requeue-check") == ([], [])  # nothing left to undo
