"""End to end against a real `prefect server start` on loopback (marked e2e; ~2-3 minutes).

Starts a server on a free port with its own PREFECT_HOME, runs the flow against it, checks runs and
artifacts through the REST API, serves the scheduled deployment and runs it, deploys the work-pool
path and has a process worker run it, screenshots the flow run page in headless Chromium, and stops
everything it started. Run alone: `pytest -m e2e`. Screenshots land in artifacts/e2e/.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "artifacts" / "e2e"
# A schedule that never comes due during a test (a due run would hold the deployment's one slot).
RARE_CRON = "17 3 29 2 *"
TINY = ["--dataset", "fake", "--epochs", "2", "--limit-train", "400", "--limit-test", "200"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Server:
    def __init__(self, root: Path):
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.root = root
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),  # else the UI calls :4200
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        }
        self.procs: list[subprocess.Popen] = []
        self.http = httpx.Client(base_url=self.api, timeout=30)

    def spawn(self, args: list[str], log: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.Popen:
        out = open(self.root / f"{log}.log", "w")
        proc = subprocess.Popen(args, cwd=cwd, env={**self.env, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()[-4000:]

    def run(self, args: list[str], timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=REPO, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    def post(self, path: str, body: dict | None = None):
        r = self.http.post(path, json=body or {})
        r.raise_for_status()
        return r.json()

    def get(self, path: str):
        r = self.http.get(path)
        r.raise_for_status()
        return r.json()

    def wait_for(self, what: str, check, timeout: float = 240):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = check()
            if value:
                return value
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what}")

    def wait_for_runs(self, deployment_id: str, timeout: float = 240) -> list[str]:
        """Wait until the deployment's manual runs all reached a final state; return those states."""

        def final():
            states = self.flow_run_states(deployment_id)
            return states if states and all(s in FINAL for s in states) else None

        return self.wait_for("the deployment's run", final, timeout)

    def flow_run_states(self, deployment_id: str) -> list[str]:
        """States of the deployment's manually requested runs (the schedule's upcoming runs left out)."""
        runs = self.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})
        return [r["state"]["type"] for r in runs if not r["auto_scheduled"]]


PREFECT = str(Path(sys.executable).with_name("prefect"))
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("e2e"))
    srv.spawn([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(srv.port)], "server")
    try:
        srv.wait_for("the Prefect server", lambda: _healthy(srv), timeout=120)
        yield srv
    finally:
        for proc in reversed(srv.procs):
            stop(proc)


def _healthy(srv: Server) -> bool:
    try:
        return srv.http.get("/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def workdir_args(srv: Server, name: str) -> list[str]:
    base = srv.root / name
    return ["--data-dir", str(base / "data"), "--out", str(base / "out"), "--cache-dir", str(base / "cache")]


def root_args(srv: Server, name: str) -> list[str]:
    """serve.py's roots: every deployment run's folders lie inside them."""
    base = srv.root / name
    return ["--data-root", str(base), "--out-root", str(base), "--cache-root", str(base)]


@pytest.fixture(scope="module")
def flow_run(server):
    """The flow run from `python flows/compare.py` against the real server."""
    done = server.run([sys.executable, "flows/compare.py", *TINY, *workdir_args(server, "cli")])
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1].startswith("report: ")
    runs = server.post("/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 1})
    return runs[0]


def test_flow_run_completed_with_all_its_task_runs(server, flow_run):
    assert flow_run["state"]["type"] == "COMPLETED"
    tasks = server.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
    names = {t["name"] for t in tasks}
    for expected in (
        "train[dropout=0.25, seed=0]",
        "train[baseline, seed=0]",
    ):
        assert expected in names
    assert any(n.startswith("fetch_cifar10") for n in names) and any(n.startswith("render_report") for n in names)
    assert {t["state"]["type"] for t in tasks} == {"COMPLETED"}
    trains = [t for t in tasks if t["name"].startswith("train[")]
    assert max(t["start_time"] for t in trains) < min(t["end_time"] for t in trains)  # ran concurrently


def test_artifacts_markdown_with_image_table_and_progress(server, flow_run):
    arts = server.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}})
    by_key = {a["key"]: a for a in arts if a["key"]}
    key = "fake-train400-test200-p0-25-s0-e2"
    assert by_key[f"dropout-comparison-{key}"]["type"] == "markdown"
    assert "data:image/png;base64," in by_key[f"dropout-comparison-{key}"]["data"]
    assert by_key[f"dropout-history-{key}"]["type"] == "table"
    progress = [a for a in arts if a["type"] == "progress"]
    assert sorted(a["key"] for a in progress) == [
        "train-progress-baseline-seed-0",
        "train-progress-dropout-0-25-seed-0",
    ]
    assert all(float(a["data"]) == 100.0 for a in progress)


def test_served_deployment_has_its_schedule_rejects_bad_parameters_and_runs(server):
    serve = server.spawn([sys.executable, "deployments/serve.py", "--cron", RARE_CRON, *TINY,
                          *root_args(server, "served")], "serve")  # fmt: skip
    deployment = server.wait_for("the served deployment", lambda: _deployment(server, "compare/nightly"))
    crons = [s["schedule"].get("cron") for s in deployment["schedules"]]
    assert crons == [RARE_CRON] and deployment["paused"] is False
    fields = deployment["parameter_openapi_schema"]["properties"]
    assert all(f.get("description") for f in fields.values())  # the run form explains every field
    assert fields["epochs"]["description"] == "training epochs" and fields["epochs"]["maximum"] == 1000

    for bad in (["-p", "dropout=1.5"], ["-p", "epochs=0"]):
        rejected = server.run([PREFECT, "deployment", "run", "compare/nightly", *bad], timeout=60)
        assert rejected.returncode != 0
        assert "validation" in (rejected.stdout + rejected.stderr).lower()
    assert server.flow_run_states(deployment["id"]) == []  # nothing was created, nothing trained

    # A caller may only name sub-folders of the roots serve.py was started with.
    elsewhere = server.root / "elsewhere"
    hostile = server.run([PREFECT, "deployment", "run", "compare/nightly", "-p", f"out={elsewhere}"], timeout=60)
    assert hostile.returncode == 0, hostile.stderr
    assert server.wait_for_runs(deployment["id"]) == ["FAILED"], server.log("serve")
    assert "absolute paths are refused" in server.log("serve") and not elsewhere.exists()

    started = server.run([PREFECT, "deployment", "run", "compare/nightly"], timeout=60)
    assert started.returncode == 0, started.stderr
    assert sorted(server.wait_for_runs(deployment["id"])) == ["COMPLETED", "FAILED"], server.log("serve")
    assert list((server.root / "served" / "artifacts").glob("fake-*/summary.parquet"))
    assert serve.poll() is None, server.log("serve")
    stop(serve)
    assert _deployment(server, "compare/nightly")["paused"] is False  # shutdown did not pause the schedule


def test_a_restart_after_downtime_starts_one_late_run_and_cancels_the_rest(server):
    """Three runs missed while serve.py was down: on restart one runs, the others end Cancelled
    (the deployment's concurrency limit 1, collision strategy CANCEL_NEW), not all at once."""
    deployment = _deployment(server, "compare/nightly")
    assert deployment["concurrency_limit"] == 1 or deployment.get("global_concurrency_limit", {}).get("limit") == 1
    assert deployment["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    now = time.time()
    late = []
    for minutes in (5, 4, 3):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60 * minutes))
        body = {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": when}}}
        late.append(server.post(f"/deployments/{deployment['id']}/create_flow_run", body)["id"])
    serve = server.spawn([sys.executable, "deployments/serve.py", "--cron", RARE_CRON, *TINY,
                          *root_args(server, "served")], "serve-again")  # fmt: skip

    def settled():
        runs = server.post("/flow_runs/filter", {"flow_runs": {"id": {"any_": late}}})
        states = sorted(r["state"]["type"] for r in runs)
        return states if all(s in FINAL for s in states) else None

    assert server.wait_for("the late runs", settled) == ["CANCELLED", "CANCELLED", "COMPLETED"], server.log(
        "serve-again"
    )
    stop(serve)


def test_failure_notification_automation_fires_for_a_failed_run(server):
    """`python deployments/notify.py --webhook URL` (as the README says): the automation exists, and a
    failed run of the deployment makes the server post the message to the webhook."""
    received: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{hook.server_address[1]}/hook"
        made = server.run([sys.executable, "deployments/notify.py", "--webhook", url], timeout=120)
        assert made.returncode == 0, made.stdout + made.stderr
        autos = server.post("/automations/filter", {})
        assert [a["name"] for a in autos] == ["dropout-lab: compare/nightly failed"]
        serve = server.spawn([sys.executable, "deployments/serve.py", "--cron", RARE_CRON, *TINY,
                              *root_args(server, "served")], "serve-notify")  # fmt: skip
        failing = server.run([PREFECT, "deployment", "run", "compare/nightly", "-p", "out=/elsewhere"], timeout=60)
        assert failing.returncode == 0, failing.stderr
        server.wait_for("the webhook message", lambda: received, timeout=180)
        text = received[0]["text"]
        assert "compare/nightly" in text or "nightly" in text
        assert "Failed" in text and "absolute paths are refused" in text, text
        stop(serve)
        off = server.run([sys.executable, "deployments/notify.py", "--off"], timeout=120)
        assert off.returncode == 0 and server.post("/automations/filter", {}) == []
    finally:
        hook.shutdown()


def test_work_pool_deployment_runs_on_workers_in_other_folders(server):
    """The README's multi-machine steps on one machine: the deployment stores a git URL (pull step),
    no path of the deploying checkout; two workers started in separate folders, each with its own
    DROPOUT_LAB_ROOT, clone the code and run the deployment."""
    repo = server.root / "repo.git"  # stands in for the project's git server
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    subprocess.run(["git", "-C", str(REPO), "push", "-q", str(repo), "HEAD:refs/heads/main"], check=True)
    created = server.run([PREFECT, "work-pool", "create", "dropout-lab", "--type", "process"], timeout=60)
    assert created.returncode == 0, created.stderr
    deployed = server.run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
                          env={"DROPOUT_LAB_REPO": f"file://{repo}"})  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    deployment = _deployment(server, "compare/nightly-pool")
    assert [s["schedule"].get("cron") for s in deployment["schedules"]] == ["0 2 * * *"]
    assert deployment["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert [next(iter(step)) for step in deployment["pull_steps"]] == ["prefect.deployments.steps.git_clone"]
    assert deployment["pull_steps"][0]["prefect.deployments.steps.git_clone"]["repository"] == f"file://{repo}"
    assert str(REPO) not in json.dumps(deployment)  # nothing of the deploying checkout's location

    machines = [server.root / "machine-a", server.root / "machine-b"]
    workers = []
    for i, home in enumerate(machines):
        home.mkdir()
        workers.append(server.spawn([PREFECT, "worker", "start", "--pool", "dropout-lab"], f"worker-{i}",
                                    env={"DROPOUT_LAB_ROOT": str(home)}, cwd=home))  # fmt: skip
    for epochs in (1, 2):  # one after the other: the deployment runs one at a time
        tiny = {**dict(zip(TINY[::2], TINY[1::2], strict=True)), "--epochs": str(epochs)}
        args = [a for k, v in tiny.items() for a in ("-p", f"{k.lstrip('-').replace('-', '_')}={v}")]
        started = server.run([PREFECT, "deployment", "run", "compare/nightly-pool", *args], timeout=60)
        assert started.returncode == 0, started.stderr
        states = server.wait_for_runs(deployment["id"])
        assert set(states) == {"COMPLETED"}, server.log("worker-0") + server.log("worker-1")
    reports = [p for home in machines for p in home.glob("artifacts/fake-*/summary.parquet")]
    assert len(reports) == 2  # inside the workers' roots, whichever worker took each run
    for worker in workers:
        stop(worker)


def _deployment(server: Server, name: str):
    r = server.http.get(f"/deployments/name/{name}")
    return r.json() if r.status_code == 200 else None


def test_ui_shows_the_flow_run(server, flow_run):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("headless Chromium not installed (apt-get install chromium); .ci/run installs it")
    SHOTS.mkdir(parents=True, exist_ok=True)
    ui = f"http://127.0.0.1:{server.port}"
    pages = {"flow-run.png": f"{ui}/runs/flow-run/{flow_run['id']}"}
    arts = server.post(
        "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}, "type": {"any_": ["markdown"]}}}
    )
    pages["markdown-artifact.png"] = f"{ui}/artifacts/artifact/{arts[0]['id']}"
    for name, url in pages.items():
        shot = SHOTS / name
        shot.unlink(missing_ok=True)
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={server.root / 'chromium'}", "--hide-scrollbars", "--window-size=1600,1300",
             "--virtual-time-budget=20000", f"--screenshot={shot}", url],
            capture_output=True, timeout=120,
        )  # fmt: skip
        assert shot.is_file() and shot.stat().st_size > 20_000, f"no screenshot of {url}"
