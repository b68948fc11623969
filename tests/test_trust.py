"""Trust nothing a file says, fail fast on every remote, never a traceback: the reliability audit's cases.

Cached results are claims checked before use (training, report, data); remotes (MLflow, Dask, the
Prefect API for notifications, a mirror) answer within seconds or the run is refused with one line;
credentials never reach output; refusals leave no folder; the GPU plan file is validated."""

import hashlib
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from dropout_lab import probe
from dropout_lab.analysis import history
from dropout_lab.config import TrainConfig
from dropout_lab.core.checkpoint import CheckpointError, checked_claim, save_checkpoint
from dropout_lab.core.claims import identity
from dropout_lab.core.data import data_problem, ensure_fake
from dropout_lab.core.verify import numbers_problem
from dropout_lab.runtime import devices
from dropout_lab.runtime.console import WithoutTracebacks
from dropout_lab.runtime.preflight import check_folders, confine
from flows.compare import compare, main
from tests.refusals import one_line_refusal

REPO = Path(__file__).resolve().parent.parent
SECRET = "alice:s3cret"


@pytest.fixture
def silent_peer():
    """A TCP server that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


# --- cached results are claims -----------------------------------------------------------------------


PROVENANCE = {"dataset": "cifar10", "data_fingerprint": "f" * 64, "code": "c" * 64}


def checkpoint(folder: Path, cfg: TrainConfig, history: list) -> tuple[Path, str]:
    path = folder / "epoch-0001.pt"
    folder.mkdir(parents=True, exist_ok=True)
    state = {"identity": identity(cfg.to_dict(), PROVENANCE), "epoch": 1, "history": history, "model": {}}
    return path, save_checkpoint(path, state)


def claim_problem(checkpoint: str, sha: str, folder: Path, cfg: TrainConfig, history: list) -> str | None:
    try:
        checked_claim(checkpoint, sha, folder, identity(cfg.to_dict(), PROVENANCE), history)
    except CheckpointError as e:
        return str(e)
    return None


def test_a_training_result_is_trusted_only_as_its_own_checkpoint_says(tmp_path):
    cfg, history = TrainConfig(epochs=1), [{"epoch": 1, "test_acc": 0.5}]
    folder = tmp_path / "checkpoints" / "dropout-0-25"
    path, sha = checkpoint(folder, cfg, history)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert claim_problem(str(path), sha, folder, cfg, history) is None
    # The audit's forgeries: a checkpoint elsewhere, a wrong hash, better metrics than the checkpoint's.
    assert "is not in" in claim_problem("/etc/passwd", sha, folder, cfg, history)
    other, _ = checkpoint(tmp_path / "elsewhere", cfg, history)
    assert "is not in" in claim_problem(str(other), sha, folder, cfg, history)
    assert "SHA-256" in claim_problem(str(path), "0" * 64, folder, cfg, history)
    assert "metrics" in claim_problem(str(path), sha, folder, cfg, [{"epoch": 1, "test_acc": 0.99}])
    assert "another configuration" in claim_problem(str(path), sha, folder, TrainConfig(epochs=1, lr=0.1), history)
    path.unlink()
    assert "gone" in claim_problem(str(path), sha, folder, cfg, history)


def test_a_re_measurement_takes_no_number_silently(caplog):
    """Image counts must be the data's in every epoch; an accuracy a kernel's rounding moved is logged
    with how many images moved, never absorbed in silence; more than the allowance is refused."""
    measured = {"train_eval": {"acc": 0.5, "loss": 1.0, "confusion": [[50, 50], [0, 100]]},
                "test": {"acc": 0.6, "loss": 1.0, "confusion": [[300, 200], [0, 500]]}}  # fmt: skip
    epoch = {"epoch": 1, "n_train": 400, "n_train_eval": 200, "n_test": 1000, "train_eval_acc": 0.5,
             "train_eval_loss": 1.0, "test_acc": 0.6, "test_loss": 1.0}  # fmt: skip
    with caplog.at_level(logging.WARNING):
        assert numbers_problem([epoch], measured, 400) is None and not caplog.records
        assert numbers_problem([epoch | {"test_acc": 0.601}], measured, 400, name="epoch-0001.pt") is None
    assert "epoch-0001.pt" in caplog.text and "test 1 of 1000 images (allowed 2)" in caplog.text
    assert "is not its weights'" in numbers_problem([epoch | {"test_acc": 0.603}], measured, 400)
    assert "claims n_train 50000, the data gives 400" in numbers_problem([epoch | {"n_train": 50_000}], measured, 400)
    assert "claims n_test 10000" in numbers_problem([epoch | {"n_test": 10_000}, epoch], measured, 400)


def test_the_data_is_trusted_only_where_this_run_puts_it(tmp_path):
    info = ensure_fake(tmp_path / "data", n_train=20, n_test=10)
    assert data_problem(info, tmp_path / "data", "fake") is None
    assert "is not" in data_problem(info, tmp_path / "other-data", "fake")
    assert "does not describe" in data_problem(info, tmp_path / "data", "cifar10")


def tamper(results: Path, field_of: str, change) -> int:
    """Change every cached record whose result holds `field_of`; returns how many were changed."""
    changed = 0
    for f in results.iterdir():
        record = json.loads(f.read_text())
        result = json.loads(record["result"])
        if field_of in json.dumps(result):
            record["result"] = json.dumps(change(result))
            f.write_text(json.dumps(record))
            changed += 1
    return changed


def test_forged_cached_results_are_ignored_and_computed_again(prefect_harness, tmp_path, caplog):
    params = dict(dataset="fake", epochs=1, limit_train=200, limit_test=100, data_dir=str(tmp_path / "data"),
                  cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "out"))  # fmt: skip
    first = Path(compare(**params))
    results = tmp_path / "cache" / "results"

    def forge_training(result):  # the audit's case: /etc/passwd, zeros and 99 %, on every trained model
        for group_result in result:
            fields = group_result["fields"]
            fields["checkpoint"], fields["weights_sha256"] = "/etc/passwd", "0" * 64
            fields["history"][-1]["test_acc"] = 0.99
        return result

    assert tamper(results, "weights_sha256", forge_training) == 2
    folder = Path(compare(**params))
    assert folder == first  # the report this run writes, not the forged folder
    summary = pq.read_table(folder / "summary.parquet").to_pylist()
    assert all(r["final_test_acc"] != 0.99 for r in summary)
    recorded = history.read(history.store_uri(tmp_path / "out"))
    assert recorded and all(r["weights_sha256"] != "0" * 64 and r["final_test_acc"] != 0.99 for r in recorded)
    ignored = [r.getMessage() for r in caplog.records if "ignoring cached result" in r.getMessage()]
    assert any("/etc/passwd is not in" in m for m in ignored)


# --- secrets never leave -------------------------------------------------------------------------------


def test_the_console_hides_tracebacks_other_handlers_keep_them():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "Task run failed", None, sys.exc_info())
    shown = WithoutTracebacks(logging.Formatter("%(message)s")).format(record)
    assert shown == "Task run failed" and "Traceback" in logging.Formatter().format(record)


def test_once_a_run_is_stopping_the_terminal_drops_the_tasks_end_echoes(monkeypatch):
    """A stopped sweep: each pending training ends Failed ("not started: the run is stopping"); the run's
    log keeps those records, the terminal shows only the command's last line about the stop."""
    from dropout_lab.runtime import console, processes

    def shown(name: str, level: int) -> bool:
        return console._no_details(logging.LogRecord(name, level, __file__, 1, "Finished in state Failed", None, None))

    assert shown("prefect.task_runs", logging.ERROR)  # a task that fails on its own is shown
    monkeypatch.setattr(processes, "_stopping", threading.Event())
    processes._stopping.set()
    assert not shown("prefect.task_runs", logging.ERROR)
    assert shown("prefect.task_runs", logging.INFO) and shown("prefect.flow_runs", logging.ERROR)


def test_the_temporary_server_s_own_output_stays_off_the_terminal(monkeypatch, capfd):
    """Stopping the server mid-write makes it log tracebacks: they go to a file, and its last line is
    what a server that fails to start is reported with."""
    from dropout_lab.runtime import temporary_server as ts

    monkeypatch.setattr(ts, "_server", None)
    monkeypatch.setattr(ts, "_output", tempfile.TemporaryFile())
    monkeypatch.setattr(ts, "configured", lambda: False)
    monkeypatch.setattr(ts, "atexit", type("A", (), {"register": staticmethod(lambda f: None)}))
    real_popen = subprocess.Popen

    def failing_server(args, **kwargs):  # a server that prints a traceback and exits while starting
        script = "import sys; print('Traceback (most recent call last):', file=sys.stderr); sys.exit('no database')"
        return real_popen([sys.executable, "-c", script], **kwargs)

    monkeypatch.setattr(ts.subprocess, "Popen", failing_server)
    with pytest.raises(RuntimeError, match=r"exited with status 1 while starting: no database$"):
        ts.start(timeout_s=30)
    assert "Traceback" not in "".join(capfd.readouterr())


# --- every remote has a deadline --------------------------------------------------------------------------


def test_mlflow_stores_that_cannot_work_are_refused_before_any_work(capsys, tmp_path, monkeypatch, silent_peer):
    pytest.importorskip("mlflow")
    base = ["--dataset", "fake", "--data-dir", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "c")]
    cases = {
        f"http://{SECRET}@127.0.0.1:9": "Connection refused",  # nothing listens
        f"http://{SECRET}@127.0.0.1:{silent_peer}": "no answer within",  # accepts, never answers
        "file:///proc/nope": "MLflow no longer takes file stores",
        f"mysql://{SECRET}@127.0.0.1/db": "needs the MySQLdb package",
        "bogus://store": "unknown scheme",
    }
    monkeypatch.setattr(probe, "PROBE_DEADLINE_S", 3.0)  # the silent peer's wait; its length is not tested
    for uri, message in cases.items():
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert message in one_line_refusal(capsys, 2, main, *base, "--out", str(tmp_path / "o"), within=6)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "folder-store" / "mlflow.db").mkdir(parents=True)  # the embedded store is a folder
    folder_store = ["--out", str(tmp_path / "folder-store")]
    assert "a folder, not a database file" in one_line_refusal(capsys, 2, main, *base, *folder_store)
    foreign = tmp_path / "foreign-store" / "mlflow.db"
    foreign.parent.mkdir()
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE notes (text TEXT)")
    db.commit()
    db.close()
    before = foreign.read_bytes()
    assert "another program's database" in one_line_refusal(capsys, 2, main, *base, "--out", str(foreign.parent))
    assert foreign.read_bytes() == before
    assert not (tmp_path / "d").exists() and not (tmp_path / "c").exists()


def test_a_dask_scheduler_that_does_not_answer_is_refused_within_seconds(capsys, tmp_path, silent_peer, monkeypatch):
    base = ["--dataset", "fake", "--task-runner", "dask", "--data-dir", str(tmp_path / "d")]
    monkeypatch.setattr(probe, "PROBE_DEADLINE_S", 3.0)  # the deadline's length is not what is tested
    for port in (9, silent_peer):  # refused, and accepted but never answered
        err = one_line_refusal(capsys, 2, main, *base, "--dask-address", f"tcp://127.0.0.1:{port}", within=6)
        assert "no Dask scheduler answers there" in err


def test_notify_refuses_bad_webhooks_and_a_silent_api_with_one_line(tmp_path):
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    for webhook in ("not a url", "file:///etc/passwd"):
        proc = subprocess.run([sys.executable, "deployments/notify.py", "--webhook", webhook], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 2 and "not an http(s) webhook URL" in proc.stderr.splitlines()[-1]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "deployments/notify.py", "--webhook", "https://hooks.example/x"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and time.monotonic() - started < 20
    assert proc.stderr.startswith("error: the Prefect API at") and proc.stderr.count("\n") == 1, proc.stderr
    for args in (["--after", "5"], []):  # the reclaim automation: a bad wait; a silent API
        proc = subprocess.run([sys.executable, "deployments/reclaim.py", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr  # one line, not a usage block


# --- names and refusals ---------------------------------------------------------------------------------


def test_a_folder_name_too_long_is_refused_before_anything_is_created(capsys, tmp_path):
    long_out = tmp_path / ("b" * 300)
    argv = ["--dataset", "fake", "--data-dir", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "c")]
    assert "longer than this file system allows" in one_line_refusal(capsys, 2, main, *argv, "--out", str(long_out))
    assert sorted(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="longer than this file system allows"):
        confine("out", "x" * 300, tmp_path)  # a deployment run's out='x'*300


def test_a_deployment_run_with_a_folder_name_too_long_is_refused_before_anything_is_created(tmp_path, monkeypatch):
    from dropout_lab.config import PARAMETERS
    from dropout_lab.runtime.preflight import ANY_ROOT_ENV, check_parameters

    monkeypatch.setenv(ANY_ROOT_ENV, str(tmp_path))  # the worker's root; the run names sub-folders of it
    params = {name: p.default for name, p in PARAMETERS.parameters.items()}
    params.update(dataset="fake", out="x" * 300, data_dir="d", cache_dir="c")
    with pytest.raises(ValueError, match="longer than this file system allows"):
        check_parameters(params, deployed=True)
    assert list(tmp_path.iterdir()) == []


def test_a_refusal_leaves_no_folder_behind(capsys, tmp_path, monkeypatch):
    argv = ["--dataset", "fake", "--data-dir", str(tmp_path / "D"), "--cache-dir", str(tmp_path / "C")]
    one_line_refusal(capsys, 2, main, *argv, "--out", "/proc/x")  # /proc takes no folder: refused after the plan
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    import shutil as real_shutil

    from dropout_lab.runtime import preflight

    usage = real_shutil.disk_usage(tmp_path)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: usage._replace(free=20 << 20))  # a full tmpfs
    with pytest.raises(ValueError, match="MB free"):
        check_folders(str(tmp_path / "D"), str(tmp_path / "O"), str(tmp_path / "C"), data_present=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "content, field",
    [("{}", "'eager'"), ("[1, 2, 3]", "JSON object"), ('{"eager": null, "graphs": {"2": "stacked"}}', "'eager'"),
     ('{"eager": {"2": "processes"}, "graphs": "stacked"}', "'graphs'"),
     ('{"eager": {"2": "fastest"}, "graphs": {"2": "stacked"}}', "'eager' entry '2'"),
     ('{"eager": {"two": "stacked"}, "graphs": {"2": "stacked"}}', "'eager' entry 'two'"), ("not json", "readable")],
)  # fmt: skip
def test_a_malformed_plan_file_is_one_line_naming_the_file_and_the_field(tmp_path, content, field):
    path = tmp_path / "gpu_plan.json"
    path.write_text(content)
    devices._read_plan.cache_clear()
    try:
        with pytest.raises(ValueError) as refused:
            devices.measured_plan(2, True, devices._read_plan(path))
    finally:
        devices._read_plan.cache_clear()
    message = str(refused.value)
    assert message.startswith(str(path)) and field in message and "\n" not in message


def test_cache_keys_are_computed_one_module_at_a_time(monkeypatch):
    from dropout_lab import keys

    inside, most = [0], [0]
    lock = threading.Lock()

    def slow_hash(module: str) -> str:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        with lock:
            inside[0] -= 1
        return module

    monkeypatch.setattr(keys, "_hashes", {})
    monkeypatch.setattr(keys, "_hash_sources", slow_hash)
    threads = [threading.Thread(target=keys.code_hash, args=(f"m{i % 4}",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and sorted(keys._hashes) == ["m0", "m1", "m2", "m3"]


def test_torch_is_not_needed_to_refuse_a_run():
    code = ("import sys; sys.argv = ['compare.py', '--epochs', '0']\n"
            "from dropout_lab.cli.compare import refuse_early\n"
            "try:\n    refuse_early(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print(e.code, 'torch' in sys.modules, 'prefect.flows' in sys.modules)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stdout + proc.stderr
    assert torch  # the suite itself has torch
