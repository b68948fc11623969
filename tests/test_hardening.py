"""Hardening: nothing runs code from the cache, deployment runs stay in their folders, the network
times out, signals stop a run cleanly, output is escaped, credentials are redacted, bad parameters
are refused before anything is created, and a crash's leftovers are cleaned up."""

import base64
import errno
import http.server
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from dropout_lab import locks
from dropout_lab.analysis.report import code_span, markdown_summary, report_tables
from dropout_lab.config import Design, TrainConfig
from dropout_lab.core import data
from dropout_lab.core.data import describe_folder
from dropout_lab.locks import held, remove_dead_leftovers
from dropout_lab.results import CachedError, TrainResult, from_jsonable
from dropout_lab.runtime.preflight import confine
from dropout_lab.runtime.processes import TrainingFailed, classify, run_training
from dropout_lab.runtime.training import job_for
from flows.compare import compare, main
from tasks.cache import SafeJSONSerializer, UnsafeCacheEntry, check_record
from tasks.train import retry_unless_hopeless
from tests.refusals import one_line_refusal

REPO = Path(__file__).resolve().parent.parent
MARKER_CMD = "touch {}"


# --- the cache cannot run code ------------------------------------------------------------------------


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (MARKER_CMD.format(self.marker),))


def plant(results: Path, marker: Path) -> int:
    """Replace every cached result with a pickle that would create `marker` if it were loaded."""
    files = [f for f in results.iterdir() if f.is_file()]
    for f in files:
        record = json.loads(f.read_text())
        record["metadata"]["serializer"] = {"type": "pickle", "picklelib": "cloudpickle", "picklelib_version": None}
        record["result"] = base64.b64encode(pickle.dumps(Evil(marker))).decode()
        f.write_text(json.dumps(record))
    return len(files)


def task_states(state) -> dict[str, str]:
    """Each cacheable task run's state (render_report is never cached: it writes the report again)."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    return {r.name: r.state.name for r in runs if not r.name.startswith("render_report")}


def test_a_planted_pickle_in_the_cache_runs_nothing_and_the_tasks_recompute(prefect_harness, tmp_path, caplog):
    params = dict(dataset="fake", epochs=1, limit_train=200, limit_test=100, data_dir=str(tmp_path / "data"),
                  out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))  # fmt: skip
    first = compare(**params, return_state=True)
    assert first.is_completed()
    again = compare(**params, return_state=True)
    assert set(task_states(again).values()) == {"Cached"}  # our own JSON records are read back

    marker = tmp_path / "PWNED"
    assert plant(tmp_path / "cache" / "results", marker) >= 3
    planted = compare(**params, return_state=True)
    assert planted.is_completed() and not marker.exists()
    assert "Cached" not in task_states(planted).values()  # every planted entry was recomputed...
    assert "set aside" in caplog.text  # out of the way: caching resumes with the records the rerun wrote
    assert list((tmp_path / "cache" / "results").glob("*.unreadable"))
    for f in (tmp_path / "cache" / "results").iterdir():  # ...and replaced by a safe record
        if f.suffix != ".unreadable":
            check_record(f.read_bytes(), f.name)
    again = compare(**params, return_state=True)
    assert set(task_states(again).values()) == {"Cached"}  # caching resumed


@pytest.mark.parametrize(
    "record",
    [
        {"metadata": {"serializer": {"type": "json", "object_decoder": "os.system"}}, "result": "{}"},
        {"metadata": {"serializer": {"type": "dropout-lab-json", "picklelib": "x"}}, "result": "1"},
        {"data": "gASV", "serializer": {"type": "pickle"}},  # Prefect's legacy layout
        "not json at all",
    ],
)
def test_records_not_written_by_our_serializer_are_refused_unread(record):
    blob = (record if isinstance(record, str) else json.dumps(record)).encode()
    with pytest.raises(UnsafeCacheEntry):
        check_record(blob, "key")


def test_safe_json_rebuilds_only_known_result_types():
    result = TrainResult(TrainConfig(), "c.pt", "ab", [{"epoch": 1, "test_acc": 0.5}], 10, "t0", "t1", 1.0, 1, 0)
    blob = SafeJSONSerializer().dumps((result, [1, 2.5, None], {"k": "v"}))
    assert SafeJSONSerializer().loads(blob) == (result, [1, 2.5, None], {"k": "v"})
    assert isinstance(SafeJSONSerializer().loads(SafeJSONSerializer().dumps(OSError("disk"))), CachedError)
    for hostile in ({"__dataclass__": "os.system", "fields": {}}, {"__dataclass__": "TrainConfig", "fields": {"x": 1}}):
        with pytest.raises(ValueError, match="refusing cached"):
            from_jsonable(hostile)


# --- deployment runs stay inside their roots ----------------------------------------------------------


def test_deployment_folders_are_confined_to_their_root(tmp_path):
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    (root / "out-link").symlink_to(tmp_path)
    assert confine("out", "inside/reports", root) == root / "inside" / "reports"
    assert confine("out", ".", root) == root
    for value, why in (("/etc", "absolute"), ("../x", "'..'"), ("inside/../../x", "'..'"), ("out-link/x", "symlink")):
        with pytest.raises(ValueError, match=why) as e:
            confine("out", value, root)
        assert "\n" not in str(e.value) and str(e.value).startswith("parameter out (--out) ")


def test_a_deployment_run_naming_an_outside_folder_fails_before_creating_anything(tmp_path, monkeypatch):
    from dropout_lab.runtime.preflight import check_parameters

    for env in ("DROPOUT_LAB_DATA_ROOT", "DROPOUT_LAB_OUT_ROOT", "DROPOUT_LAB_CACHE_ROOT"):
        monkeypatch.setenv(env, str(tmp_path / "root"))
    params = {name: p.default for name, p in __import__("inspect").signature(compare.fn).parameters.items()}
    with pytest.raises(ValueError, match="absolute paths are refused"):
        check_parameters({**params, "dataset": "fake", "out": str(tmp_path / "anywhere")}, deployed=True)
    assert not (tmp_path / "anywhere").exists() and not (tmp_path / "root").exists()
    folders = check_parameters({**params, "dataset": "fake"}, deployed=True).folders
    assert folders["out"] == str(tmp_path / "root" / "artifacts") and Path(folders["out"]).is_dir()


# --- network timeouts and lock waits ---------------------------------------------------------------


def test_a_mirror_that_never_answers_fails_fast_as_a_retryable_error(tmp_path, monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)  # accepts connections (the kernel does), never answers
    monkeypatch.setattr(data, "NET_TIMEOUT_S", 1.0)
    try:
        start = time.monotonic()
        with pytest.raises(data.DownloadError, match="no answer within 1 s"):
            data.ensure_cifar10(tmp_path, f"http://127.0.0.1:{listener.getsockname()[1]}/c.tar.gz")
        assert time.monotonic() - start < 30  # not forever (it used to hang while holding the data lock)
    finally:
        listener.close()
    assert not list(tmp_path.glob(".download-*"))


def test_a_mirror_that_trickles_is_cut_off_by_the_overall_budget(tmp_path, monkeypatch):
    class Trickle(http.server.BaseHTTPRequestHandler):
        finished = False  # the mirror sent its last byte

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                return  # the client gave up
            Trickle.finished = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(data, "DOWNLOAD_BUDGET_S", 0.5)
    try:
        with pytest.raises(data.DownloadError, match="took over"):
            data.ensure_cifar10(tmp_path, f"http://127.0.0.1:{server.server_address[1]}/c.tar.gz")
        assert not Trickle.finished  # cut off by the budget while bytes still came, not at the mirror's end
    finally:
        server.shutdown()


def test_a_run_waiting_on_a_lock_says_so_and_names_the_holder(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(locks, "WAIT_LOG_EVERY_S", 0.2)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1])\n"
         "from dropout_lab.locks import held\n"
         "with held(sys.argv[2], 'x'):\n print('held', flush=True); time.sleep(1.5)", str(REPO),
         str(tmp_path / ".cifar10.lock")], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    lock = tmp_path / ".cifar10.lock"
    with caplog.at_level("WARNING", logger="dropout_lab.locks"), held(lock, "the data folder"):
        pass
    holder.wait()
    assert f"waiting for the data folder: {tmp_path / '.cifar10.lock'} is held by pid {holder.pid}" in caplog.text
    with pytest.raises(TimeoutError, match="gave up"), held(tmp_path / ".cifar10.lock", "a"):
        with held(tmp_path / ".cifar10.lock", "b", timeout_s=0.3):  # same process, another FileLock: waits
            pass


# --- escaping ----------------------------------------------------------------------------------------

HOSTILE_PATH = "/tmp/x`y``\n# heading <img src=x onerror=alert(1)>"


def test_paths_in_markdown_are_code_spans_nothing_can_break_out_of():
    span = code_span(HOSTILE_PATH)
    assert "\n" not in span and "<img src=x onerror=alert(1)>" in span
    fence = span[: len(span) - len(span.lstrip("`"))]
    assert len(fence) == 3 and span.endswith(fence) and fence not in span[len(fence) : -len(fence)]


def test_a_report_with_a_hostile_folder_name_and_class_names_renders(tmp_path):
    from tests.test_report import fake_results, written  # a small set of results, like a real run's

    results, info, samples, _ = fake_results()
    names = ["$\\foo{$", "a_b^c", "<b>x</b>", "`tick`", "$$", "\\", "%", "{", "ok", "}"]
    run_dir = tmp_path / "out`\n<img onerror=alert(1)>"
    folder, markdown = written(run_dir, results, info, samples, names)
    assert (folder / "samples.png").is_file() and (folder / "comparison.png").is_file()
    line = next(x for x in markdown.splitlines() if "Report folder" in x)
    assert "``" in line and "\\n<img" in line  # the newline shown escaped, inside the code span
    assert (folder / "summary.md").read_text().count("Report folder") == 1
    assert markdown_summary(report_tables(results, info, Design()), info, run_dir).count("\n# ") == 0


# --- credentials -------------------------------------------------------------------------------------


# --- one validation, before anything is created --------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "100000"], "--epochs: must be <= 1000"),
        (["--lr", "inf"], "--lr: must be a finite number"),
        (["--lr", "100"], "--lr: must be <= 10"),
        (["--batch-size", "100000"], "--batch-size: must be <= 65536"),
        (["--seeds", str(2**63)], "--seeds: must be <= 4294967295"),
        (["--dropout", "nan"], "--dropout: must be a finite number"),
    ],
)
def test_values_the_flow_would_refuse_are_refused_by_the_cli_first(argv, message, tmp_path, capsys):
    where = ["--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]
    assert one_line_refusal(capsys, 2, main, *argv, *where).startswith(f"error: {message}")
    assert not list(tmp_path.iterdir())  # no folder, no server, no flow run


def test_out_naming_a_file_is_refused_before_data_and_cache_folders_exist(tmp_path, capsys):
    (tmp_path / "report.txt").write_text("")
    code = main(
        ["--data-dir", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "report.txt")]
    )
    assert code == 2 and "--out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]


# --- errors, warnings and leftovers ------------------------------------------------------------------


def test_full_or_read_only_disks_are_not_retried():
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES):
        assert classify(OSError(code, os.strerror(code))) == "disk"

    class State:
        data = TrainingFailed("no space", "disk")

    assert retry_unless_hopeless(None, None, State()) is False
    State.data = TrainingFailed("crashed", "crash")
    assert retry_unless_hopeless(None, None, State()) is True


def test_worker_warnings_reach_the_task_and_the_stderr_tail_is_kept_apart(tiny_cifar, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "epoch-0001.pt").write_bytes(b"not a checkpoint")
    (folder / f".epoch-0001.pt.{dead_pid()}.tmp").write_bytes(b"torn")
    cfg = TrainConfig(epochs=1, limit_train=64, limit_test=32, train_eval_images=32)
    job = job_for([cfg], describe_folder(tiny_cifar / "cifar-10-batches-py", warn=False), [folder], 1, "auto")
    events = list(run_training(job))
    logs = [e["message"] for e in events if e["event"] == "log"]
    assert any("set aside" in m for m in logs) and any("leftover" in m for m in logs), logs
    assert not list(folder.glob(".*.tmp")) and (folder / "epoch-0001.pt.corrupt").is_file()

    bad = {**job, "data_root": str(tmp_path / "missing")}
    with pytest.raises(TrainingFailed) as e:
        list(run_training(bad))
    assert "\n" not in str(e.value) and 'File "' in e.value.details  # the traceback, kept for the log


LAUNCHER = """
import json, sys, time
from dropout_lab.runtime.processes import run_training
for event in run_training(json.loads(sys.argv[1])):
    if event["event"] == "start":
        print("training", flush=True)
        time.sleep(600)
"""


def long_training(tiny_cifar: Path, folder: Path) -> str:
    """A training job of 50 epochs on the tiny data, as JSON for the scripts above and below."""
    cfg = TrainConfig(epochs=50, limit_train=64, limit_test=32, train_eval_images=32)
    return json.dumps(
        job_for([cfg], describe_folder(tiny_cifar / "cifar-10-batches-py", warn=False), [folder], 1, "auto")
    )


def test_kill_9_of_the_launching_process_ends_its_training_and_the_fork_server(tiny_cifar, tmp_path):
    # The trainings are the fork server's children, not the run's: the run's end must still reach them.
    job = long_training(tiny_cifar, tmp_path / "c")
    run = subprocess.Popen([sys.executable, "-c", LAUNCHER, job], cwd=REPO, stdout=subprocess.PIPE, text=True,
                           start_new_session=True)  # fmt: skip
    assert run.stdout.readline() == "training\n"
    below = [int(c) for c in Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()]
    below += [int(c) for p in below for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    assert len(below) >= 3  # the fork server, its resource tracker, the training
    run.kill()
    run.wait()
    deadline = time.time() + 10
    while [p for p in below if Path(f"/proc/{p}").exists() and "Z" not in state(p)] and time.time() < deadline:
        time.sleep(0.1)
    assert [p for p in below if Path(f"/proc/{p}").exists() and "Z" not in state(p)] == []


STOPPED = """
import json, os, sys
from dropout_lab.runtime.processes import before_exit, run_training, stop_all
for event in run_training(json.loads(sys.argv[1])):
    if event["event"] == "start":
        stop_all()  # as a stop whose API is gone: the training ends, the process exits at once
        before_exit()
        print("error: stopped", flush=True)
        os._exit(143)
"""


def test_a_run_that_exits_at_once_mid_training_keeps_its_last_line_last(tiny_cifar, tmp_path):
    # Without before_exit, multiprocessing's resource tracker warns of leaked semaphores after the run ends.
    job = long_training(tiny_cifar, tmp_path / "c")
    run = subprocess.run([sys.executable, "-c", STOPPED, job], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 143 and (run.stdout + run.stderr).strip() == "error: stopped", run.stderr[-2000:]


def state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_crash_s_leftovers_are_removed_by_the_next_run_that_owns_them(tmp_path):
    dead, live = dead_pid(), os.getppid()
    for name in (f".extract-{dead}-ab", f".download-{dead}-cd", f".run.tmp-{dead}-ef", f".run.old-{dead}"):
        (tmp_path / name).mkdir()
    (tmp_path / f".extract-{live}-gh").mkdir()  # a live writer's: kept
    (tmp_path / ".extract-nopid").mkdir()  # no pid in the name: not ours to judge
    removed = remove_dead_leftovers(tmp_path, ".*-*")
    assert sorted(p.name for p in removed) == sorted(
        [f".extract-{dead}-ab", f".download-{dead}-cd", f".run.tmp-{dead}-ef", f".run.old-{dead}"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".extract-{live}-gh", ".extract-nopid"])


def test_fetching_cleans_a_crashed_extraction(cifar_copy):
    leftover = cifar_copy / f".extract-{dead_pid()}-xyz"
    (leftover / "cifar-10-batches-py").mkdir(parents=True)
    data.ensure_cifar10(cifar_copy)
    assert not leftover.exists()


def test_a_checkpoint_with_a_valid_checksum_over_a_code_running_pickle_is_refused(tmp_path):
    import hashlib
    import io

    import torch

    from dropout_lab.core.checkpoint import MAGIC, CheckpointError, load_checkpoint

    marker = tmp_path / "PWNED"
    buf = io.BytesIO()
    torch.save({"model": Evil(marker)}, buf)
    payload = buf.getvalue()
    (tmp_path / "epoch-0001.pt").write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)
    with pytest.raises(CheckpointError, match="unreadable payload"):
        load_checkpoint(tmp_path / "epoch-0001.pt")
    assert not marker.exists()
