"""The reliability audit's reproductions, round four: secrets in every form, half-working remotes, refusals
that created folders, tracebacks and usage blocks instead of one line, a planted record that disabled
caching, and the history's LIKE patterns, output paths and locks. (The generated-input test drives the
same mechanisms with everything else: tests/test_generated_input.py.)"""

from __future__ import annotations

import http.server
import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dropout_lab import cli
from dropout_lab.analysis import history
from flows.compare import compare, main
from tests.refusals import SECRET, one_line_refusal

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def environment_restored():
    """A command line sets variables for the processes it starts (--history): not for the next test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def half_working():
    """An HTTP server that answers /health (200) and everything else 503: its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            ok = self.path.rstrip("/").endswith("/health")
            self.send_response(200 if ok else 503)
            self.end_headers()
            self.wfile.write(b"true" if ok else b"unavailable")

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


# --- secrets -----------------------------------------------------------------------------------------------


# --- half-working remotes, within the probe's deadline, nothing created ---------------------------------------


def test_an_mlflow_server_answering_only_its_health_check_is_refused_at_once(capfd, tmp_path, monkeypatch,
                                                                             half_working):  # fmt: skip
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", half_working)
    err = one_line_refusal(capfd, 2, main, "--dataset", "fake", "--data-dir", str(tmp_path / "d"), "--out",
                   str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert "answers 503 to a read of its experiments" in err and list(tmp_path.iterdir()) == []


def test_a_prefect_api_answering_only_its_health_check_is_refused_by_every_command(capfd, tmp_path, half_working,
                                                                                    monkeypatch):  # fmt: skip
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments import notify, reclaim, serve

    monkeypatch.chdir(tmp_path)  # serve.py's folders lie inside its roots (here): relative names
    where = ["--dataset", "fake", "--data-dir", "d", "--out", "o", "--cache-dir", "c"]
    with temporary_settings(updates={PREFECT_API_URL: f"{half_working}/api"}):
        for run, argv in ((main, where), (serve.main, where), (reclaim.main, []),
                          (notify.main, ["--webhook", "https://hooks.example/x"])):  # fmt: skip
            err = one_line_refusal(capfd, 2, run, *argv)
            assert "(PREFECT_API_URL)" in err and "503" in err
    assert list(tmp_path.iterdir()) == []


def test_a_dask_scheduler_that_refuses_leaves_no_folder(capfd, tmp_path):
    one_line_refusal(
        capfd,
        2,
        main,
        "--dataset",
        "fake",
        "--data-dir",
        str(tmp_path / "d"),
        "--out",
        str(tmp_path / "o"),
        "--cache-dir",
        str(tmp_path / "c"),
        "--task-runner",
        "dask",
        "--dask-address",
        "tcp://127.0.0.1:1",
    )
    assert list(tmp_path.iterdir()) == []


# --- one line, never a traceback or a usage block -----------------------------------------------------------


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
        (["--epochs", "1.5"], "invalid int value"),
        (["--seeds", "Auto"], "argument --seeds"),
        (["--max-seeds", "5.5"], "argument --max-seeds"),
        (["--max-seeds", "auto"], "argument --max-seeds"),
        (["--margin", "1,5"], "argument --margin"),
        (["--val-images", "nan"], "argument --val-images"),
        (["--val-images", "1e3"], "argument --val-images"),
        (["--history", "://nothing"], "not a tracking store URL"),
        (["--history", f"alice:{SECRET}@host:1/db"], "a path or an address needs its scheme"),
        (["--history", f"postgresql+asyncpg://u:{SECRET}@h/db"], "the async driver asyncpg cannot be used"),
        (["--history", f"mysql://u:{SECRET}@h/db"], "needs the MySQLdb package"),
        (["--history", "postgresql://u@h:notaport/db"], "not a database URL"),
    ],
)
def test_compare_answers_bad_values_in_one_line(capfd, tmp_path, argv, says):
    assert says in one_line_refusal(capfd, 2, main, *argv, "--data-dir", str(tmp_path / "d"))
    assert list(tmp_path.iterdir()) == []


def test_a_bad_prefect_setting_in_the_environment_is_one_line(tmp_path):
    env = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "abc"}
    done = subprocess.run([sys.executable, "flows/compare.py", "--dataset", "fake", "--data-dir", str(tmp_path / "d")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "must be a whole number" in done.stderr
    assert not (tmp_path / "d").exists()


def test_serve_answers_a_bad_reclaim_time_in_one_line(capfd):
    from deployments import serve

    assert "expected seconds between 10 and 86400" in one_line_refusal(capfd, 2, serve.main, "--reclaim-after", "2")


def history_cli(argv):
    return cli.main(["history", *argv])


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    from tests.test_history import model, record

    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the store under --out, as the command finds it by default
    path = tmp_path / "out" / history.STORE_FILE
    record(f"sqlite:///{path}", [model(0, 0.25, 0, 0.7, 0.1), model(0, 0.0, 0, 0.69, 0.2)])
    return path


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--history", "://x"], "not a tracking store URL"),
        (["--history", f"alice:{SECRET}@host:1/db"], "a path or an address needs its scheme"),
        (["--history", "postgresql://u@h:notaport/db"], "not a database URL"),
        (["--history", f"mysql://u:{SECRET}@h/db"], "needs the MySQLdb package"),
        (["--compare", "%", "_"], "matches nothing"),
        (["--compare", "", ""], "matches nothing"),
        (["--figure", "/tmp"], "a folder, not a file name"),
        (["--figure", "/proc/x.png"], "not writable"),
        (["--parquet", "/nonexistent/x.parquet"], "no folder /nonexistent"),
        (["--since", "last tuesday"], "argument --since"),
    ],
)
def test_the_history_command_answers_in_one_line(capfd, store, argv, says):
    assert says in one_line_refusal(capfd, 2, history_cli, "--out", str(store.parent), *argv)
    assert not Path("/tmp.png").exists()


def test_reports_of_another_program_are_skipped_and_a_store_without_mlflow_s_tables_is_refused(capfd, tmp_path, store):
    import pyarrow as pa
    import pyarrow.parquet as pq

    foreign = store.parent / "someone-else-abc123"
    foreign.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), foreign / "summary.parquet")
    assert history_cli(["--out", str(store.parent), "--import-reports"]) == 0
    capfd.readouterr()
    stripped = tmp_path / "stripped.db"
    db = sqlite3.connect(stripped)  # MLflow's runs table, none of the others a read joins
    db.execute("CREATE TABLE runs (run_uuid TEXT, experiment_id INTEGER, lifecycle_stage TEXT)")
    db.commit()
    db.close()
    assert "not an MLflow store" in one_line_refusal(capfd, 2, history_cli, "--history", f"sqlite:///{stripped}")


def test_a_locked_store_is_a_one_line_refusal(store, capfd, monkeypatch):
    monkeypatch.setattr(history, "LOCK_WAIT_S", 1.0)
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        err = one_line_refusal(capfd, 2, history_cli, "--out", str(store.parent), within=10)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "locked" in err
    assert len(history.read(f"sqlite:///{store}")) == 2  # and once the lock is gone, read as ever


# --- a planted record ---------------------------------------------------------------------------------------


def test_a_record_nested_a_hundred_thousand_deep_is_set_aside_and_caching_resumes(prefect_harness, tmp_path, caplog):
    params = dict(dataset="fake", epochs=1, limit_train=200, limit_test=100, data_dir=str(tmp_path / "data"),
                  out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))  # fmt: skip
    compare(**params)
    results = tmp_path / "cache" / "results"
    victim = next(f for f in results.iterdir() if "weights_sha256" in f.read_text())
    record = json.loads(victim.read_text())
    record["result"] = "[" * 100_000 + "]" * 100_000
    victim.write_text(json.dumps(record))
    compare(**params)
    assert "set aside" in caplog.text and (victim.parent / (victim.name + ".unreadable")).exists()
    assert "Error encountered when computing cache key" not in caplog.text
    assert json.loads(victim.read_text())["result"] != record["result"]  # the task wrote its record again
