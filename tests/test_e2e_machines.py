"""End to end against a real `prefect server start` (marked e2e), the second half of test_e2e_server.py's
README sections on a server of its own: a serving machine that crashes, the failure alert, and workers
on other machines. Its helpers and fixtures are test_e2e_server.py's (one server per module)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from browser import MISSING, SHOTS, installed, screenshot

from dropout_lab.analysis import history
from tests import test_e2e_server as e2e
from tests.test_e2e_server import (
    FINAL,
    PREFECT,
    REPO,
    TINY,
    Server,
    _deployment,
    process_tree,
    serve_as_written,
    stop,
    workdir_args,
)

pytestmark = pytest.mark.e2e
server, readme = e2e.server, e2e.readme  # this module's own server (module-scoped fixtures)


def _training_runs(server: Server, flow_run_id: str) -> bool:
    return "train" in " ".join(t["name"] for t in server.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [
        flow_run_id]}}}) if (t.get("state") or {}).get("type") == "RUNNING")  # fmt: skip


def test_a_crash_of_the_serving_machine_frees_its_running_run_through_heartbeats(server):
    """kill -9 of serve.py and its whole process tree while a run trains, and of a command-line run against
    the same server: their heartbeats stop, Prefect's zombie-run automation marks both Crashed after 90 s
    (not Running forever), which frees the deployment's one slot, and the run asked for after the restart
    completes. kill -9 of a third run's process alone (the out-of-memory killer's way) leaves its watcher,
    which marks that run and its task runs Crashed within seconds."""
    from deployments.reclaim import SILENT_AFTER_S, SILENT_NAME
    from tasks.reclaimed import DIED, ENDED

    serve = serve_as_written(server.readme, "serve-crash")
    deployment = server.wait_for("the deployment", lambda: _deployment(server, "compare/nightly"))
    autos = {a["name"]: a for a in server.post("/automations/filter", {})}
    assert autos[SILENT_NAME]["trigger"]["within"] == SILENT_AFTER_S == 90
    running = server.post(f"/deployments/{deployment['id']}/create_flow_run", {"parameters": {"epochs": 60}})["id"]
    # On the same machine, a run started from the command line against the server (the README's way to
    # watch runs): tagged and heartbeating from its creation, so the same automation reclaims it.
    cli = server.spawn([sys.executable, "flows/compare.py", *TINY, "--epochs", "60", "--seeds", "7",
                        *workdir_args(server, "cli-killed")], "cli-killed")  # fmt: skip
    by_cli = {"flow_runs": {"deployment_id": {"is_null_": True}, "state": {"type": {"any_": ["RUNNING"]}}}}
    (cli_run,) = server.wait_for("the command-line run", lambda: server.post("/flow_runs/filter", by_cli), timeout=180)
    assert "dropout-lab" in cli_run["tags"]
    oom = server.spawn([sys.executable, "flows/compare.py", *TINY, "--epochs", "60", "--seeds", "8",
                        *workdir_args(server, "cli-oom")], "cli-oom")  # fmt: skip
    runs = lambda: [r for r in server.post("/flow_runs/filter", by_cli) if r["id"] != cli_run["id"]]  # noqa: E731
    (oom_run,) = server.wait_for("the second command-line run", runs, timeout=180)
    for run in (running, cli_run["id"], oom_run["id"]):
        server.wait_for("the run's training", lambda: _training_runs(server, run), timeout=180)  # noqa: B023
    for pid in process_tree(serve.pid) + process_tree(cli.pid):  # the machine goes: nothing is left to mark them
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(oom.pid, signal.SIGKILL)  # the flow's process alone: its trainings follow it, its watcher acts
    serve.wait()
    cli.wait()
    oom.wait()
    killed_at = time.time()
    state = lambda run: server.get(f"/flow_runs/{run}")["state"]  # noqa: E731
    tasks_of = lambda run: server.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run]}}})  # noqa: E731
    server.wait_for("the watched run's task runs", lambda: {t["state"]["type"] for t in tasks_of(oom_run["id"])}
                    <= FINAL, timeout=30)  # fmt: skip
    assert state(oom_run["id"])["type"] == "CRASHED" and state(oom_run["id"])["message"] == DIED, state(oom_run["id"])
    assert any(t["state"]["message"] == ENDED for t in tasks_of(oom_run["id"]))
    print(f"the watched run and its task runs Crashed {time.time() - killed_at:.1f} s after the kill")
    assert server.get(f"/flow_runs/{running}")["state"]["type"] == "RUNNING"
    serve = serve_as_written(server.readme, "serve-after-crash")
    asked = server.post(f"/deployments/{deployment['id']}/create_flow_run", {})["id"]
    server.wait_for("the asked-for run", lambda: state(asked)["type"] in FINAL, timeout=SILENT_AFTER_S + 210)
    assert state(asked)["type"] == "COMPLETED", server.log("serve-after-crash")
    crashed = state(running)
    assert crashed["type"] == "CRASHED" and "no heartbeat" in crashed["message"], crashed
    # Its task runs end too (the asked-for run, started after the reclaim, ended them), not Running for good.
    left = server.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [running]}}})
    assert left and {t["state"]["type"] for t in left} <= FINAL, [(t["name"], t["state"]["type"]) for t in left]
    assert any(t["state"]["message"] == ENDED for t in left)
    print(f"killed run Crashed and the next run completed {time.time() - killed_at:.0f} s after the kill")
    server.wait_for("the command-line run reclaimed", lambda: state(cli_run["id"])["type"] == "CRASHED",
                    timeout=max(10, killed_at + SILENT_AFTER_S + 60 - time.time()))  # fmt: skip
    assert "no heartbeat" in state(cli_run["id"])["message"]
    stop(serve)
    assert state(asked)["type"] == "COMPLETED", state(asked)  # not re-queued to run a second time


def test_failure_notification_automation_fires_for_a_failed_run(server, readme):
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
        readme.values["hook"] = f"http://127.0.0.1:{hook.server_address[1]}/hook"
        made = readme.run(
            ".venv/bin/python deployments/notify.py --webhook https://hooks.slack.com/services/T000/B000/XXXX",
            timeout=120,
        )
        assert made.returncode == 0, made.stdout + made.stderr
        port = hook.server_address[1]
        assert f"http://127.0.0.1:{port}/…" in made.stdout and "/hook" not in made.stdout + made.stderr  # its host
        alerts = lambda: sorted(a["name"] for a in server.post("/automations/filter", {}) if "nightly" in a["name"])  # noqa: E731
        assert alerts() == ["dropout-lab: compare/nightly crashed", "dropout-lab: compare/nightly failed"]
        blocks = lambda: [b for b in server.post("/block_documents/filter", {}) if "failures" in (b["name"] or "")]  # noqa: E731
        (block,) = blocks()
        data = json.dumps(block["data"])  # the URL is a secret: the block API shows it masked
        assert block["data"]["url"] == "{{webhook}}" and "/hook" not in data and f":{port}" not in data, data
        objects_named_in_the_readme(server)
        serve = serve_as_written(readme, "serve-notify")
        deployment = _deployment(server, "compare/nightly")
        before = set(server.manual_runs(deployment["id"]))
        # A cancelled run sends nothing, though it passes through Crashed on its way to Cancelled.
        long = server.run([PREFECT, "deployment", "run", "compare/nightly", "-p", "epochs=60"], timeout=60)
        assert long.returncode == 0, long.stderr
        (cancelled,) = set(server.manual_runs(deployment["id"])) - before
        server.wait_for("the long run's training", lambda: "train" in " ".join(
            t["name"] for t in server.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [cancelled]}}})
            if (t.get("state") or {}).get("type") == "RUNNING"), timeout=180)  # fmt: skip
        assert server.run([PREFECT, "flow-run", "cancel", cancelled], timeout=60).returncode == 0
        state = lambda: server.get(f"/flow_runs/{cancelled}")["state"]["type"]  # noqa: E731
        server.wait_for("the cancellation", lambda: state() == "CANCELLED")
        cancelled_at = time.time()
        failing = server.run([PREFECT, "deployment", "run", "compare/nightly", "-p", "out=/elsewhere"], timeout=60)
        assert failing.returncode == 0, failing.stderr
        server.wait_for("the webhook message", lambda: received, timeout=180)
        # The Crashed automation waits CANCELLED_WITHIN_S (30 s) for a Cancelled before it posts.
        time.sleep(max(0.0, cancelled_at + 45 - time.time()))
        assert len(received) == 1, received
        assert server.get(f"/flow_runs/{cancelled}")["name"] not in received[0]["text"]
        text = received[0]["text"]
        assert "compare/nightly" in text or "nightly" in text
        assert "Failed" in text and "absolute paths are refused" in text, text
        changed = text.split("Parameters changed from the deployment's: ")[1].split("\n")[0]
        assert changed == "out=/elsewhere", text  # what differs from the deployment's defaults, nothing else
        assert f"http://127.0.0.1:{server.port}/runs/flow-run/" in text and "None" not in text  # a link to the run
        stop(serve)
        off = readme.run(".venv/bin/python deployments/notify.py --off", timeout=120)
        assert off.returncode == 0 and alerts() == [] and blocks() == []  # everything notify.py made
    finally:
        hook.shutdown()
    if not installed():  # skipped at the end, not at the screenshots: the README's commands all ran
        pytest.skip(f"{MISSING}: the Automations and Blocks pages were not photographed")


def objects_named_in_the_readme(server: Server) -> None:
    """The UI's Automations and Blocks pages (screenshots under artifacts/e2e, where Chromium is installed)
    after a served run with notifications on: every automation and every named block there is one the
    README's table names."""
    for page in ("automations", "blocks") if installed() else ():
        screenshot(f"http://127.0.0.1:{server.port}/{page}", SHOTS / f"prefect-{page}.png", server.root / "chromium")
    table = (REPO / "README.md").read_text().split("What else the project keeps on a Prefect server")[1][:3000]
    automations = [a["name"] for a in server.post("/automations/filter", {})]

    def named(name: str) -> bool:  # in full, or after the one before it as "… crashed"
        words = name.split()
        return name in table or any(f"… {' '.join(words[-k:])}`" in table for k in range(1, len(words)))

    assert automations and all(named(n) for n in automations), automations
    blocks = [b["name"] for b in server.post("/block_documents/filter", {}) if not b["is_anonymous"]]
    assert blocks and all(b.startswith("dropout-lab-failures-") for b in blocks) and "dropout-lab-failures-" in table


def test_work_pool_deployment_runs_on_workers_in_other_folders(server, readme, postgres):
    """The README's multi-machine steps on one machine: the deployment stores a git URL (pull step),
    no path of the deploying checkout; two workers, each started as the README says from its own
    checkout with its own $HOME, clone the code; three runs asked for at once under the deployment's
    limit of two: two train, the third waits as AwaitingConcurrencySlot (never Late) and runs when
    one ends; all record to one PostgreSQL history."""
    repo = server.root / "repo.git"  # stands in for the project's git server
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    subprocess.run(["git", "-C", str(REPO), "push", "-q", str(repo), "HEAD:refs/heads/main"], check=True)
    readme.values["repo"] = f"file://{repo}"
    created = readme.run(".venv/bin/prefect work-pool create dropout-lab --type process", timeout=60)
    assert created.returncode == 0, created.stderr
    deployed = readme.run(
        "DROPOUT_LAB_REPO=https://github.com/you/dropout-lab.git .venv/bin/prefect deploy --all "
        "--prefect-file deployments/prefect.yaml --concurrency-limit 2"
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    deployment = _deployment(server, "compare/nightly-pool")
    assert [s["schedule"].get("cron") for s in deployment["schedules"]] == ["0 2 * * *"]
    assert deployment["global_concurrency_limit"]["limit"] == 2  # the command's limit: one run per machine
    assert (deployment["concurrency_options"] or {}).get("collision_strategy", "ENQUEUE") == "ENQUEUE"
    assert [next(iter(step)) for step in deployment["pull_steps"]] == ["prefect.deployments.steps.git_clone"]
    assert deployment["pull_steps"][0]["prefect.deployments.steps.git_clone"]["repository"] == f"file://{repo}"
    assert str(REPO) not in json.dumps(deployment)  # nothing of the deploying checkout's location

    reclaim = readme.run(".venv/bin/python deployments/reclaim.py", timeout=120)
    assert reclaim.returncode == 0, reclaim.stdout + reclaim.stderr
    autos = {a["name"]: a for a in server.post("/automations/filter", {})}
    assert autos["dropout-lab: reclaim runs stuck before start"]["trigger"]["within"] == 120
    worker = "DROPOUT_LAB_ROOT=$HOME/dropout-lab .venv/bin/prefect worker start --pool dropout-lab"
    machines = [server.root / "machine-a", server.root / "machine-b"]
    workers = []
    for i, home in enumerate(machines):
        checkout = home / "src" / "dropout-lab"  # "a checkout with its venv" on that machine
        subprocess.run(["git", "clone", "-q", str(repo), str(checkout)], check=True)
        (checkout / ".venv").symlink_to(REPO / ".venv")
        # Both machines record to one team history (README: MLFLOW_TRACKING_URI in the worker's environment).
        env = {"HOME": str(home), "MLFLOW_TRACKING_URI": postgres}
        workers.append(readme.spawn(worker, f"worker-{i}", env=env, cwd=checkout))
    server.wait_for("both workers online", lambda: len([w for w in server.post(
        "/work_pools/dropout-lab/workers/filter", {}) if w["status"] == "ONLINE"]) == 2, timeout=120)  # fmt: skip
    pairs = zip(TINY[::2], TINY[1::2], strict=True)
    tiny = {k.lstrip("-").replace("-", "_"): int(v) if v.isdigit() else v for k, v in pairs}
    for epochs in (1, 2, 3):  # asked for at one moment, one more than the limit: none is dropped
        server.post(f"/deployments/{deployment['id']}/create_flow_run", {"parameters": {**tiny, "epochs": epochs}})
    ours = {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}}
    server.wait_for(
        "a run waiting for the deployment's limit",
        lambda: any(r["state"]["name"] == "AwaitingConcurrencySlot" for r in server.post("/flow_runs/filter", ours)),
        timeout=240,
    )
    pool_page = f"http://127.0.0.1:{server.port}/work-pools/work-pool/dropout-lab?tab=Runs"
    screenshot(pool_page, SHOTS / "work-pool-waiting.png", server.root / "chromium")
    states = server.wait_for_runs(deployment["id"], timeout=600)
    logs = server.log("worker-0") + server.log("worker-1")
    assert states == ["COMPLETED"] * 3, logs
    runs = server.manual_runs(deployment["id"])
    went_through = {run: server.state_names(run) for run in runs}
    assert not [r for r, names in went_through.items() if "Late" in names], went_through  # waiting is no lateness
    assert any("AwaitingConcurrencySlot" in names for names in went_through.values()), went_through
    spans = sorted((r["start_time"], r["end_time"]) for r in (server.get(f"/flow_runs/{run}") for run in runs))
    assert spans[2][0] >= min(spans[0][1], spans[1][1]), spans  # the third started after one of two ended
    # Each run inside the root of the worker that took it.
    reports = [len(list(home.glob("dropout-lab/artifacts/fake-*/summary.parquet"))) for home in machines]
    assert sum(reports) == 3, logs
    recorded = {r["flow_run_id"] for r in history.read(postgres)}
    assert set(runs) <= recorded  # every machine's runs in the one history
    shown = server.run([sys.executable, "-m", "dropout_lab.cli", "history", "--history", postgres,
                        "--out", str(server.root / "history-view")], timeout=120)  # fmt: skip
    assert shown.returncode == 0 and shown.stdout.count("fake") >= 3, shown.stdout + shown.stderr
    for proc in workers:
        stop(proc)
