"""End to end against a real `prefect server start` on loopback (marked e2e), in two modules that each
start their own server, so that a second test process runs the other half: this one (a command-line
run, the served deployment, restarts) and test_e2e_machines.py (a crashed machine, failure alerts,
workers on other machines).

Together they run every command of the README's "Watching runs in the Prefect UI" and "Run on a
schedule" sections as written (the bash blocks, and the inline `prefect ...` commands), from the
repository root, with the substitutions listed in `AS_WRITTEN` below and nothing else; once both
modules' tests have all run, the `readme` fixture of the last to end fails if a command of those
sections was run by neither. Between the commands they check runs, task runs, artifacts, deployments
and automations through the REST API and screenshot the UI in headless Chromium (artifacts/e2e/).
Run alone: `pytest -m e2e`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from browser import SHOTS, screenshot
from prefect.client.base import PrefectHttpxSyncClient

from dropout_lab.analysis import history
from tasks.slots import slot_name

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("Watching runs in the Prefect UI", "Run on a schedule")
# A schedule that never comes due during a test (a due run would hold the deployment's one slot).
RARE_CRON = "17 3 29 2 *"
TINY = ["--dataset", "fake", "--epochs", "2", "--limit-train", "400", "--limit-test", "200"]
# Everything a test changes in a README command before running it (the rest runs as written):
#   {port}      the README's :4200 → the test server's free port
#   {root}      /tmp/dropout-lab → a folder of the test's temporary directory
#   {hook}      the Slack webhook → a local HTTP server that records what it receives
#   {repo}      the GitHub URL → a bare git repository on disk (file://)
#   RARE_CRON   "0 2 * * *" → a date that never comes mid-test (a due run would take the one slot)
#   <host>, N   the placeholders of `prefect gcl update` and `prefect gcl delete`
# and flow / serve.py commands get test flags appended (`TINY`: generated images, 2 epochs; where
# reports go), so that a run takes seconds. `$HOME` is the worker "machine"'s folder.
AS_WRITTEN = {
    "127.0.0.1:4200": "127.0.0.1:{port}",
    "/tmp/dropout-lab": "{root}",
    "https://hooks.slack.com/services/T000/B000/XXXX": "{hook}",
    "https://github.com/you/dropout-lab.git": "{repo}",
    '"0 2 * * *"': f'"{RARE_CRON}"',
    "dropout-lab-<host>-cpu --limit N": slot_name("cpu") + " --limit 3",
    "delete dropout-lab-<host>-cpu": "delete " + slot_name("cpu"),
}
# The README's "remove with" commands and what each removes; run last (the module's teardown), so
# that no test loses an object it needs.
REMOVE_WITH = {
    "prefect deployment delete compare/nightly": "/deployments/name/compare/nightly",
    "prefect gcl delete dropout-lab-<host>-cpu": f"/v2/concurrency_limits/{slot_name('cpu')}",
}


def readme_commands() -> list[str]:
    """The commands of SECTIONS: each line of their bash blocks (continuations joined, comments
    dropped) and each inline code span that starts with `prefect `."""
    text = (REPO / "README.md").read_text()
    commands = []
    for section in SECTIONS:
        body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
        for block in re.findall(r"```bash\n(.*?)```", body, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = " ".join(re.sub(r"\s+#.*$", "", line).split())
                if line and line not in commands:
                    commands.append(line)
        prose = re.sub(r"```.*?```", "", body, flags=re.S)
        commands += [c for c in re.findall(r"`(prefect [^`]*)`", prose) if c not in commands]
    return commands


class Readme:
    """Runs README commands as written (AS_WRITTEN's substitutions only) and records which ran."""

    def __init__(self, srv: Server):
        self.srv = srv
        self.commands = readme_commands()
        self.ran: set[str] = set()
        self.values = {"port": srv.port, "root": srv.root / "served"}

    def text(self, command: str, extra: list[str] = ()) -> str:
        assert command in self.commands, f"not a command of the README's sections {SECTIONS}: {command}"
        self.ran.add(command)
        for readme, test in AS_WRITTEN.items():
            if readme in command:
                command = command.replace(readme, test.format(**self.values))
        return " ".join([command, *extra])

    def run(self, command: str, extra: list[str] = (), timeout: int = 300, **kw) -> subprocess.CompletedProcess:
        return self.srv.run(["bash", "-c", self.text(command, extra)], timeout=timeout, **kw)

    def spawn(self, command: str, log: str, extra: list[str] = (), **kw) -> subprocess.Popen:
        return self.srv.spawn(["bash", "-c", self.text(command, extra)], log, **kw)


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
            # The README's inline `prefect ...` commands assume the venv is active.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        self.procs: list[subprocess.Popen] = []
        # Prefect's own client: it retries what the server marks retryable (503 while SQLite is busy
        # under load, 429, 502) as every Prefect process does; the tests read the statuses themselves.
        self.http = PrefectHttpxSyncClient(base_url=self.api, timeout=30, raise_on_all_errors=False)

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
                              timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip

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

    def manual_runs(self, deployment_id: str) -> list[str]:
        """Ids of the deployment's manually requested runs (the schedule's runs left out)."""
        runs = self.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})
        return [r["id"] for r in runs if not r["auto_scheduled"]]

    def flow_run_states(self, deployment_id: str) -> list[str]:
        """State types of the deployment's manually requested runs."""
        runs = self.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})
        return [r["state"]["type"] for r in runs if not r["auto_scheduled"]]

    def state_names(self, flow_run_id: str) -> list[str]:
        """Every state the run went through, oldest first."""
        return [s["name"] for s in self.get(f"/flow_run_states/?flow_run_id={flow_run_id}")]


PREFECT = str(Path(sys.executable).with_name("prefect"))
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("e2e"))
    srv.readme = Readme(srv)
    # PREFECT_SERVER_API_PORT (in srv.env) moves it off :4200, as the README says for another port.
    srv.readme.spawn(".venv/bin/prefect server start", "server")
    assert srv.readme.text("export PREFECT_API_URL=http://127.0.0.1:4200/api") == f"export PREFECT_API_URL={srv.api}"
    try:
        srv.wait_for("the Prefect server", lambda: _healthy(srv), timeout=120)
        yield srv
    finally:
        for proc in reversed(srv.procs):
            stop(proc)


@pytest.fixture(scope="module")
def readme(server, request, tmp_path_factory):
    """The README's commands of those sections; once every test of both modules has run (in whatever
    order), each command must have been run by one of them: one added without a test fails here."""
    yield server.readme
    for command, path in REMOVE_WITH.items():
        if server.http.get(path).status_code == 200:
            done = server.readme.run(command, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
            assert server.http.get(path).status_code == 404, f"still there after `{command}`"
    selected = {item.name for item in request.session.items if item.module is request.module}
    if selected >= {name for name in dir(request.module) if name.startswith("test_")}:
        # The modules may run in different test processes: each leaves what it ran where the other finds it,
        # in this pytest run's temporary folder (the one its test processes share).
        base = tmp_path_factory.getbasetemp()
        folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "readme-commands-ran"
        folder.mkdir(exist_ok=True)
        name = request.module.__name__.rpartition(".")[2]
        (folder / f"{name}.json").write_text(json.dumps(sorted(server.readme.ran)))
        done = {f.stem: json.loads(f.read_text()) for f in folder.glob("*.json")}
        if set(done) >= set(README_MODULES):
            missed = [c for c in server.readme.commands if not any(c in r for r in done.values())]
            assert missed == [], f"README commands no test ran: {missed}"


# The modules that run the README's commands between them.
README_MODULES = ("test_e2e_server", "test_e2e_machines")


def _healthy(srv: Server) -> bool:
    try:
        return httpx.get(f"{srv.api}/health", timeout=2).status_code == 200  # no retries while it starts
    except httpx.HTTPError:
        return False


def workdir_args(srv: Server, name: str) -> list[str]:
    base = srv.root / name
    return ["--data-dir", str(base / "data"), "--out", str(base / "out"), "--cache-dir", str(base / "cache")]


def root_args(srv: Server, name: str) -> list[str]:
    """serve.py's roots: every deployment run's folders lie inside them."""
    base = srv.root / name
    return ["--data-root", str(base), "--out-root", str(base), "--cache-root", str(base)]


SERVE = '.venv/bin/python deployments/serve.py --cron "0 2 * * *" --data-root /tmp/dropout-lab --device auto'


# How long a run may sit in Pending before the reclaim automation marks it Crashed (README: 120 s).
RECLAIM_S = 45


def serve_as_written(readme: Readme, log: str) -> subprocess.Popen:
    """The README's serve.py command; reports and cache under the same root as its data."""
    root = str(readme.values["root"])
    return readme.spawn(SERVE, log, extra=[*TINY, "--out-root", root, "--cache-root", root,
                                           "--reclaim-after", str(RECLAIM_S)])  # fmt: skip


@pytest.fixture(scope="module")
def flow_run(server, readme):
    """The flow run of the README's `.venv/bin/python flows/compare.py` against the real server."""
    done = readme.run(".venv/bin/python flows/compare.py", extra=[*TINY, *workdir_args(server, "cli")])
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1].startswith("report: ")
    cli_runs = {"flow_runs": {"deployment_id": {"is_null_": True}}, "sort": "START_TIME_DESC", "limit": 1}
    return server.post("/flow_runs/filter", cli_runs)[0]  # this command's run, whatever deployments run meanwhile


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
    assert by_key[f"dropout-per-epoch-{key}"]["type"] == "table"
    progress = [a for a in arts if a["type"] == "progress"]
    assert sorted(a["key"] for a in progress) == [
        "train-progress-baseline-seed-0",
        "train-progress-dropout-0-25-seed-0",
    ]
    assert all(float(a["data"]) == 100.0 for a in progress)


def test_device_slots_are_a_global_limit_resized_as_the_readme_says(server, readme, flow_run):
    """The CLI run against the server created the machine's CPU limit; the README's
    `prefect gcl update` resizes it."""
    name = slot_name("cpu")
    assert server.get(f"/v2/concurrency_limits/{name}")["limit"] >= 1
    done = readme.run("prefect gcl update dropout-lab-<host>-cpu --limit N", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert server.get(f"/v2/concurrency_limits/{name}")["limit"] == 3


def test_served_deployment_has_its_schedule_rejects_bad_parameters_and_runs(server, readme):
    serve = serve_as_written(readme, "serve")
    deployment = server.wait_for("the served deployment", lambda: _deployment(server, "compare/nightly"))
    crons = [s["schedule"].get("cron") for s in deployment["schedules"]]
    assert crons == [RARE_CRON] and deployment["paused"] is False
    fields = deployment["parameter_openapi_schema"]["properties"]
    assert all(f.get("description") for f in fields.values())  # the run form explains every field
    assert fields["epochs"]["description"] == "training epochs" and fields["epochs"]["maximum"] == 1000

    bad_rate = "prefect deployment run compare/nightly -p 'dropout=[1.5]'"
    for rejected in (readme.run(bad_rate, timeout=60), server.run([PREFECT, *bad_rate.split()[1:4], "-p", "epochs=0"])):
        assert rejected.returncode != 0
        assert "validation" in (rejected.stdout + rejected.stderr).lower()
    assert server.flow_run_states(deployment["id"]) == []  # nothing was created, nothing trained

    # A caller may only name sub-folders of the roots serve.py was started with.
    elsewhere = server.root / "elsewhere"
    hostile = server.run([PREFECT, "deployment", "run", "compare/nightly", "-p", f"out={elsewhere}"], timeout=60)
    assert hostile.returncode == 0, hostile.stderr
    assert server.wait_for_runs(deployment["id"]) == ["FAILED"], server.log("serve")
    assert "absolute paths are refused" in server.log("serve") and not elsewhere.exists()
    # In the run's log (the UI's): one line naming the deployment parameter, no engine traceback.
    (refused,) = server.manual_runs(deployment["id"])
    query = {"logs": {"flow_run_id": {"any_": [refused]}}}
    messages = lambda: [r["message"] for r in server.post("/logs/filter", query)]  # noqa: E731
    server.wait_for("the run's logs", lambda: any(m.startswith("Finished in state") for m in messages()), timeout=60)
    logs = messages()  # shipped in batches: all there once the last one is
    assert not any("Traceback" in m for m in logs), logs
    expected = (f"refused: parameter out (--out) {str(elsewhere)!r}: a deployment run may only name a folder inside "
                f"{server.root / 'served'} (set by serve.py --out-root or $DROPOUT_LAB_OUT_ROOT where the worker "
                "starts); absolute paths are refused")  # fmt: skip
    assert [m for m in logs if m.startswith("refused")] == [expected], logs

    # Asked for together: the second waits for the deployment's one slot (ENQUEUE), then runs; none is dropped.
    printed = []  # the names `prefect deployment run` printed: each run keeps its own in brackets
    for command in (
        ".venv/bin/prefect deployment run compare/nightly",
        ".venv/bin/prefect deployment run compare/nightly -p 'dropout=[0.5]'",
    ):
        started = readme.run(command, timeout=60)
        assert started.returncode == 0, started.stderr
        printed += re.findall(r"Created flow run '([^']+)'", started.stdout)
    server.wait_for_runs(deployment["id"], timeout=420)
    names = [r["name"] for r in server.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {
        "any_": [deployment["id"]]}, "state": {"type": {"any_": ["COMPLETED"]}}}})]  # fmt: skip
    assert len(printed) == 2 and sorted(n.rpartition(" (")[2].rstrip(")") for n in names) == sorted(printed), names
    assert sorted(server.flow_run_states(deployment["id"])) == ["COMPLETED", "COMPLETED", "FAILED"], server.log("serve")
    waited = [r for r in server.manual_runs(deployment["id"]) if "AwaitingConcurrencySlot" in server.state_names(r)]
    assert len(waited) == 1, server.log("serve")  # one ran at once, the other queued behind it
    reports = sorted(p.parent.name for p in readme.values["root"].glob("artifacts/fake-*/summary.parquet"))
    assert len(reports) == 2 and any("p0.5" in r for r in reports), reports
    recorded = [r for r in history.read(history.store_uri(readme.values["root"] / "artifacts"))  # served runs too
                if r["report_folder"].startswith(str(readme.values["root"]))]  # fmt: skip
    assert len({r["flow_run_id"] for r in recorded}) == 2 and {r["dropout"] for r in recorded} == {0.0, 0.25, 0.5}
    assert serve.poll() is None, server.log("serve")
    stop(serve)
    assert _deployment(server, "compare/nightly")["paused"] is False  # shutdown did not pause the schedule


def test_a_restart_reclaims_a_stuck_run_collapses_late_runs_and_runs_what_was_asked_for(server):
    """While serve.py was down: its process had claimed a run and died (the run left Submitting, holding
    the deployment's one slot), three scheduled runs came due, and a user asked for a run. On restart
    the stuck run is marked Crashed by the reclaim automation (the slot is freed), the late scheduled
    runs collapse to the newest (the older two end Cancelled, naming it), and the asked-for run runs."""
    deployment = _deployment(server, "compare/nightly")
    assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    autos = {a["name"]: a for a in server.post("/automations/filter", {})}
    assert autos["dropout-lab: reclaim runs stuck before start"]["trigger"]["within"] == RECLAIM_S

    stuck = server.post(f"/deployments/{deployment['id']}/create_flow_run", {})["id"]
    for state in ({"type": "PENDING"}, {"type": "PENDING", "name": "Submitting"}):  # what a dead runner leaves
        assert server.post(f"/flow_runs/{stuck}/set_state", {"state": state})["status"] == "ACCEPT"
    # The schedule's runs of the last three leap days (RARE_CRON is 29 February), all late by years.
    server.post(f"/deployments/{deployment['id']}/schedule",
                {"start_time": "2015-01-01T00:00:00Z", "end_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "max_runs": 10})  # fmt: skip
    late = server.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]},
                                                           "expected_start_time": {"before_": "2025-01-01T00:00:00Z"}},
                                             "sort": "EXPECTED_START_TIME_ASC"})  # fmt: skip
    assert [r["expected_start_time"][:10] for r in late] == ["2016-02-29", "2020-02-29", "2024-02-29"]
    asked = server.post(f"/deployments/{deployment['id']}/create_flow_run", {})["id"]
    serve = serve_as_written(server.readme, "serve-again")
    ids = [stuck, *(r["id"] for r in late), asked]

    def settled():
        runs = {r["id"]: r for r in server.post("/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}})}
        return [runs[i]["state"] for i in ids] if all(runs[i]["state"]["type"] in FINAL for i in ids) else None

    states = server.wait_for("the stuck, late and asked-for runs", settled, timeout=480)
    assert [s["type"] for s in states] == ["CRASHED", "CANCELLED", "CANCELLED", "COMPLETED", "COMPLETED"], (
        states, server.log("serve-again"))  # fmt: skip
    assert "reclaimed" in states[0]["message"]
    assert all(s["message"].startswith("superseded: the run scheduled for 2024-02-29 03:17") for s in states[1:3])
    stop(serve)  # a stopping runner may still hold a finished run: the run keeps its outcome all the same
    assert [(s["type"], s["message"]) for s in settled()] == [(s["type"], s["message"]) for s in states]


def process_tree(pid: int) -> list[int]:
    """pid and every process below it (a flow run's process may sit in a session of its own)."""
    children: dict[int, list[int]] = {}
    for line in subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def commands_in(pid: int, text: str) -> list[int]:
    """The processes of pid's tree whose command line contains `text`."""
    found = []
    for member in process_tree(pid):
        try:
            if text.encode() in Path(f"/proc/{member}/cmdline").read_bytes().replace(b"\0", b" "):
                found.append(member)
        except OSError:
            continue
    return found


def run_process(pid: int, pending_at: str) -> list[int]:
    """serve.py's processes (pid's tree) for the flow run Pending since `pending_at` (ISO time): Prefect's
    runner starts a served flow's run as a multiprocessing child (the run's id is set inside it, not in
    its environment), so a child spawned since the run went Pending is its process (earlier runs'
    children are gone; serve.py's resource tracker stays)."""
    since = datetime.fromisoformat(pending_at.replace("Z", "+00:00")).timestamp() - 0.05
    boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])  # to 10 ms (btime: whole seconds)

    def started(member: int) -> float:  # /proc/PID/stat field 22: clock ticks after boot
        try:
            ticks = int(Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()[19])
        except (OSError, ValueError, IndexError):
            return float("-inf")  # gone meanwhile
        return boot + ticks / os.sysconf("SC_CLK_TCK")

    return [m for m in commands_in(pid, "multiprocessing.spawn import spawn_main") if started(m) >= since]


def test_a_run_claimed_when_serve_py_is_stopped_runs_after_the_restart(server):
    """SIGTERM to serve.py while a requested run is Submitting: Prefect's runner cancels what it holds
    ("Runner is shutting down."); serve.py queues it again on its way out, and the next serve.py runs
    it (no alert: it never failed). The run asked for meanwhile completes too."""
    from deployments.reclaim import REQUEUED, SHUT_DOWN

    serve = serve_as_written(server.readme, "serve-term")
    deployment = server.wait_for("the deployment", lambda: _deployment(server, "compare/nightly"))
    claimed = server.post(f"/deployments/{deployment['id']}/create_flow_run", {})["id"]
    state = lambda run: server.get(f"/flow_runs/{run}")["state"]  # noqa: E731
    deadline = time.time() + 120
    (serving,) = server.wait_for("serve.py", lambda: commands_in(serve.pid, "deployments/serve.py"))
    # Claimed: Pending, and its own process started (below serve.py; another run's process, or none yet,
    # is a different moment: the runner holds nothing to cancel), still importing: seconds before Running.
    while not ((now := state(claimed))["type"] == "PENDING" and run_process(serving, now["timestamp"])):
        assert time.time() < deadline and state(claimed)["type"] in ("SCHEDULED", "PENDING"), state(claimed)
        time.sleep(0.05)
    time.sleep(0.3)  # the runner registers the process it started (an await later)
    assert state(claimed)["type"] == "PENDING", state(claimed)
    os.kill(serving, signal.SIGTERM)  # to serve.py, as `kill PID` or a service manager's stop does
    assert serve.wait(timeout=60) is not None
    assert SHUT_DOWN in [s["message"] for s in server.get(f"/flow_run_states/?flow_run_id={claimed}")], (
        server.log("serve-term"))  # fmt: skip
    assert state(claimed)["type"] == "SCHEDULED" and state(claimed)["message"] == REQUEUED, state(claimed)
    assert "re-queued" in server.log("serve-term")
    asked = server.post(f"/deployments/{deployment['id']}/create_flow_run", {})["id"]
    serve = serve_as_written(server.readme, "serve-after-term")
    server.wait_for("both runs", lambda: all(state(r)["type"] in FINAL for r in (claimed, asked)), timeout=300)
    assert [state(r)["type"] for r in (claimed, asked)] == ["COMPLETED", "COMPLETED"], server.log("serve-after-term")
    stop(serve)


def _deployment(server: Server, name: str):
    r = server.http.get(f"/deployments/name/{name}")
    return r.json() if r.status_code == 200 else None


def test_ui_shows_the_flow_run(server, flow_run):
    ui = f"http://127.0.0.1:{server.port}"
    pages = {"flow-run.png": f"{ui}/runs/flow-run/{flow_run['id']}"}
    arts = server.post(
        "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}, "type": {"any_": ["markdown"]}}}
    )
    pages["markdown-artifact.png"] = f"{ui}/artifacts/artifact/{arts[0]['id']}"
    for name, url in pages.items():
        screenshot(url, SHOTS / name, server.root / "chromium")
