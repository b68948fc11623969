"""The reliability audit's reproductions, round four: secrets in every form, half-working remotes, refusals
that created folders, tracebacks and usage blocks instead of one line, a planted record that disabled
caching, and the history's LIKE patterns, output paths and locks. (The generated-input test drives the
same mechanisms with everything else: tests/test_generated_input.py.)"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dropout_lab import cli, probe
from dropout_lab.analysis import history
from dropout_lab.probe import REMOTE_DEADLINE_S
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


class HalfWorking(http.server.ThreadingHTTPServer):
    """An HTTP server that answers the paths ending in one of `answers` (suffix: body) and everything else 503,
    noting when it first refused."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers, self.first_refusal = answers, None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0].rstrip("/")
                body = next((b for suffix, b in server.answers.items() if path.endswith(suffix)), None)
                if body is None and server.first_refusal is None:
                    server.first_refusal = time.monotonic()
                self.send_response(503 if body is None else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"unavailable" if body is None else body)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def half_working():
    """An HTTP server that answers /health (200) and everything else 503: its URL."""
    server = HalfWorking({"/health": b"true"})
    yield server.url
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


# --- remotes that pass their probe, then fail: one line within the deadline, nothing half-made ---------------


def test_a_prefect_api_failing_after_its_probe_ends_the_command_within_the_deadline_leaving_no_folder(tmp_path):
    """The audit's server: the flow listing (the probe's read) answers, the rest 503 (151 s of silence, then
    'Failed to reach API', folders created)."""
    server = HalfWorking({"/health": b"true", "/flows/filter": b"[]"})
    env = {**os.environ, "PREFECT_API_URL": f"{server.url}/api"}
    for name in ("PREFECT_CLIENT_MAX_RETRIES", "PREFECT_API_REQUEST_TIMEOUT"):
        env.pop(name, None)  # the command's own bounds, not this process's
    done = subprocess.run([sys.executable, str(REPO / "flows/compare.py"), "--dataset", "fake", "--data-dir", "d",
                           "--out", "o", "--cache-dir", "c"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    took = time.monotonic() - server.first_refusal
    server.shutdown()
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("error: "), done.stderr
    assert took < REMOTE_DEADLINE_S and list(tmp_path.iterdir()) == [], (took, list(tmp_path.iterdir()))


def recorded_to(server: HalfWorking, folder: Path) -> subprocess.CompletedProcess:
    """A tiny run whose history is recorded on `server`, as a subprocess in `folder`, with the command's own
    bounds on MLflow's retries (not this process's)."""
    pytest.importorskip("mlflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_")}
    return subprocess.run([sys.executable, str(REPO / "flows/compare.py"), "--dataset", "fake", "--epochs", "1",
                           "--limit-train", "200", "--limit-test", "100", "--data-dir", "d", "--out", "o",
                           "--cache-dir", "c", "--history", server.url], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_an_mlflow_server_failing_after_its_probe_ends_the_run_within_the_deadline_the_report_kept(tmp_path):
    """The audit's server: the experiments search (the probe's read) answers, the rest 503 (250 s without a line,
    MLflow's own retries). Now the run ends within the deadline, its report written, the last line saying so."""
    server = HalfWorking({"/experiments/search": b'{"experiments": []}'})
    done = recorded_to(server, tmp_path)
    took = time.monotonic() - server.first_refusal
    server.shutdown()
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith("error: ") and "503" in last, done.stderr[-3000:]
    assert "the report is written" in last and "the same command again records it" in last
    assert took < REMOTE_DEADLINE_S and list((tmp_path / "o").glob("*/summary.md")), took


def test_an_mlflow_answering_every_request_with_an_empty_object_ends_the_run_in_one_line(tmp_path):
    """The audit's "MLflow" answering 200 `{}` to everything (it passes the probe's read): one last line, within
    the deadline of the report's writing (it failed after 73 s with 10 lines)."""
    server = HalfWorking({"": b"{}"})
    done = recorded_to(server, tmp_path)
    ended = time.time()
    server.shutdown()
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and lines[-1].startswith("error: ") and "the report is written" in lines[-1]
    assert [line for line in lines if line.startswith("error")] == lines[-1:] and "Traceback" not in done.stderr
    assert not [line for line in lines if "WARNING" in line], lines  # the run's log: Prefect's end of run alone
    (summary,) = (tmp_path / "o").glob("*/summary.md")
    assert ended - summary.stat().st_mtime < REMOTE_DEADLINE_S


class Freezable:
    """A TCP proxy to a local port that, once `frozen` is set, passes nothing more either way and takes new
    connections without answering: a database server that stopped (SIGSTOP; its kernel still acknowledges,
    so no connection fails and no library's timeout fires on a connection already open)."""

    def __init__(self, port: int) -> None:
        self.frozen, self.held = threading.Event(), []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

        def pump(source, sink) -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    while self.frozen.is_set():
                        time.sleep(0.1)
                    sink.sendall(data)

        def accept() -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = self.listener.accept()
                    self.held.append(conn)
                    if not self.frozen.is_set():
                        upstream = socket.create_connection(("127.0.0.1", port))
                        self.held.append(upstream)
                        for a, b in ((conn, upstream), (upstream, conn)):
                            threading.Thread(target=pump, args=(a, b), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def close(self) -> None:
        self.frozen.clear()
        for s in (self.listener, *self.held):
            s.close()


@pytest.mark.e2e  # a real PostgreSQL server, a whole run and the deadline's minute
def test_a_postgresql_store_that_stops_answering_mid_run_ends_it_within_the_deadline(tmp_path, postgres):
    """The store passes its probe and is opened while the trainings run, then stops answering (frozen behind a
    proxy after the first epoch): the run ends within the deadline after its report, one last line saying the
    report is written (libpq's timeouts cover only connecting; MLflow waited on its open connection for ever)."""
    from sqlalchemy import make_url

    from dropout_lab.analysis import tracking

    tracking.client(postgres)  # its tables made here: the run's store is ready, as a team's is
    url = make_url(postgres)
    proxy = Freezable(url.port)
    env = {**os.environ, "MLFLOW_EXPERIMENT_NAME": f"frozen-{tmp_path.name}"}
    history_url = url.set(port=proxy.port).render_as_string(hide_password=False)
    with (tmp_path / "run.log").open("w") as log:
        run = subprocess.Popen([sys.executable, str(REPO / "flows/compare.py"), "--dataset", "fake", "--epochs", "2",
                                "--limit-train", "400", "--limit-test", "100", "--data-dir", "d", "--out", "o",
                                "--cache-dir", "c", "--history", history_url], cwd=tmp_path, env=env, stdout=log,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        started = time.monotonic()
        while not list(tmp_path.glob("c/**/epoch-0001.pt")):
            assert run.poll() is None and time.monotonic() - started < 300, (tmp_path / "run.log").read_text()
            time.sleep(0.2)
        proxy.frozen.set()
        run.wait(300)
        ended = time.time()
    finally:
        run.kill()
        proxy.close()
    lines = (tmp_path / "run.log").read_text().strip().splitlines()
    assert run.returncode == 1 and lines[-1].startswith("error: "), "\n".join(lines[-20:])
    assert "MLflow: " in lines[-1] and "the report is written" in lines[-1]
    assert sum("WARNING" in line for line in lines) <= 2, "\n".join(lines[-30:])  # MLflow's retries: bounded
    (summary,) = (tmp_path / "o").glob("*/summary.md")
    assert ended - summary.stat().st_mtime < REMOTE_DEADLINE_S + 10  # the history is recorded after the report


def test_a_pool_run_s_prefect_client_has_the_command_line_s_bounds(monkeypatch):
    """A work-pool run's process imports Prefect before the flow's module (which sets the bounds on the command
    line and in serve.py's runs), so deployments/prefect.yaml gives them in its environment: the same values."""
    import yaml

    from dropout_lab.probe import remote_deadlines

    names = ("PREFECT_CLIENT_MAX_RETRIES", "PREFECT_API_REQUEST_TIMEOUT")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    remote_deadlines()
    (pool,) = yaml.safe_load((REPO / "deployments/prefect.yaml").read_text())["deployments"]
    env = pool["work_pool"]["job_variables"]["env"]
    assert {n: env.get(n) for n in names} == {n: os.environ[n] for n in names}


def test_an_existing_dask_scheduler_without_a_prefect_server_is_refused_in_one_line(capfd, tmp_path):
    """Its workers could not reach a temporary server on this machine (and a training's slot lease hung)."""
    from tests.test_scaleout import free_port

    port = free_port()
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-dashboard"], stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        err = one_line_refusal(capfd, 2, main, "--dataset", "fake", "--data-dir", str(tmp_path / "d"), "--task-runner",
                               "dask", "--dask-address", f"tcp://127.0.0.1:{port}", within=60)  # fmt: skip
    finally:
        scheduler.kill()
        scheduler.wait()
    assert "report to a Prefect server they can reach" in err and list(tmp_path.iterdir()) == []


def test_a_dask_scheduler_that_refuses_leaves_no_folder(capfd, tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "PROBE_DEADLINE_S", 3.0)  # Dask retries a refused connection until the deadline
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
        (["--history", "sqlite:///" + "x" * 5000], "File name too long"),
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
def store(tmp_path, monkeypatch, new_store) -> Path:
    from tests.test_history import model, record

    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the store under --out, as the command finds it by default
    path = tmp_path / "out" / history.STORE_FILE
    record(new_store(path), [model(0, 0.25, 0, 0.7, 0.1), model(0, 0.0, 0, 0.69, 0.2)])
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
        (["--history", "sqlite:///" + "x" * 5000], "File name too long"),  # a 25-line traceback, exit 1
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


# --- the deadline's watch: silence ends a use of a remote, answers keep it going, a stop reaches it -------------


def test_a_remote_use_ends_after_its_silence_not_its_length_and_a_stop_reaches_the_operation():
    import _thread

    from dropout_lab.probe import until_silent

    def answering(answered, times: int, pause: float) -> int:
        for _ in range(times):
            time.sleep(pause)
            answered()
        return times

    # Longer in all than the silence allowed, but never silent that long: it finishes.
    assert until_silent("talking", lambda answered: answering(answered, 6, 0.1), silence_s=0.3) == 6
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no answer for 0 s"):
        until_silent("silent", lambda answered: time.sleep(30), silence_s=0.4)
    assert time.monotonic() - started < 2
    # Ctrl-C while waiting: raised in the operation too, which ends what it began.
    seen = []

    def recording(answered) -> None:
        try:
            while True:
                time.sleep(0.01)
        except BaseException as e:
            seen.append(type(e))
            raise

    threading.Timer(0.3, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        until_silent("recording", recording, silence_s=10)
    assert seen == [KeyboardInterrupt]
