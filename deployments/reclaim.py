"""Reclaim runs whose process is gone, with two Prefect automations on a dropout-lab run:
- stuck before it starts: it sat in Pending/Submitting longer than a run takes to start (the process
  that claimed it, serve.py or a worker, was stopped or died in between);
- silent while it runs: its flow-run heartbeats (Prefect's own, every HEARTBEAT_S seconds where
  serve.py or the worker sets PREFECT_FLOWS_HEARTBEAT_FREQUENCY) stopped for SILENT_AFTER_S seconds
  (Prefect's documented zombie-run automation: the machine or its process tree was killed).
Either run would otherwise show Pending or Running forever and, on a deployment with a concurrency
limit, hold its slot until the lease expires; Crashed frees the slot at once and says what happened.

    python deployments/reclaim.py [--after SECONDS] | --off

`deployments/serve.py` switches it on by itself; run this once for the work-pool path. Needs
PREFECT_API_URL (a `prefect server start`).
"""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect.automations import Automation  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import (  # noqa: E402
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType  # noqa: E402
from prefect.client.schemas.sorting import FlowRunSort  # noqa: E402
from prefect.events.actions import ChangeFlowRunState  # noqa: E402
from prefect.events.schemas.automations import EventTrigger, Posture  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402
from prefect.states import Scheduled, State  # noqa: E402

from deployments.notify import api_refusal, delete_named  # noqa: E402
from dropout_lab.cli.oneline import Parser, one_line  # noqa: E402

NAME = "dropout-lab: reclaim runs stuck before start"
SILENT_NAME = "dropout-lab: reclaim runs whose heartbeats stopped"
TAG = "dropout-lab"  # every deployment of the project carries it (serve.py, prefect.yaml)
# Claiming a run to its Running state takes seconds (a process start, a git clone on a worker); two
# minutes without it means no process is starting it.
DEFAULT_AFTER_S = 120
# Any of these after Pending/Submitting means the run moved on (a rejected or rescheduled start is
# Scheduled again).
MOVED_ON = ("Running", "Completed", "Failed", "Crashed", "Cancelled", "Cancelling", "Scheduled",
            "AwaitingConcurrencySlot", "AwaitingRetry", "Late", "Paused", "Suspended")  # fmt: skip
# Prefect's minimum heartbeat interval (its default, 180 s, would leave a dead run Running 9 minutes);
# three missed heartbeats mark a run silent, as Prefect's own managed automation counts them.
HEARTBEAT_S = 30
SILENT_AFTER_S = 3 * HEARTBEAT_S
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


def _kept(name: str, within_s: float) -> Automation | None:
    """The automation of that name when it is on with that wait: a replacement would forget the runs
    it is already timing (a restart of serve.py after its process died is exactly when it must not)."""
    try:
        existing = Automation.read(name=name)
    except (ObjectNotFound, ValueError):
        return None
    if existing.enabled and existing.trigger.within == timedelta(seconds=within_s):
        return existing
    return None


def switch_on(after_s: float = DEFAULT_AFTER_S) -> tuple[Automation, Automation]:
    """Create both automations, or replace one with another wait; returns them (stuck, silent). One
    with the same wait is kept as it is."""
    return _stuck(after_s), _silent()


def _silent() -> Automation:
    return _reclaim(
        SILENT_NAME, SILENT_AFTER_S,
        f"when its heartbeats (every {HEARTBEAT_S} s) stopped for {SILENT_AFTER_S} s",
        after={"prefect.flow-run.heartbeat"},
        expect={"prefect.flow-run.*"},  # a heartbeat or any state change: the run is alive
        message=f"no heartbeat for {SILENT_AFTER_S} s: the process running it stopped",
    )  # fmt: skip


def _stuck(after_s: float) -> Automation:
    return _reclaim(
        NAME, after_s, f"when it is not Running {after_s:g} s after Pending",
        after={"prefect.flow-run.Pending", "prefect.flow-run.Submitting"},
        expect={f"prefect.flow-run.{state}" for state in MOVED_ON},
        message=f"not started {after_s:g} s after it was claimed: the process that claimed it stopped",
    )  # fmt: skip


def _reclaim(name: str, within_s: float, when: str, after: set[str], expect: set[str], message: str) -> Automation:
    """The automation `name`, kept when it is on with this wait, else made anew: a run tagged TAG that
    had one of the `after` events and then none of the `expect` events for `within_s` is marked Crashed."""
    if existing := _kept(name, within_s):
        return existing
    delete_named(name)
    return Automation(
        name=name,
        description=f"Mark a run tagged {TAG} Crashed {when} (the process that ran it is gone; deployments/reclaim.py)",
        trigger=EventTrigger(
            after=after,
            expect=expect,
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.id": f"prefect.tag.{TAG}"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=f"{message} (reclaimed by automation)")],
    ).create()


# What Prefect's runner sets on the runs it still holds when it stops (SIGTERM to serve.py): the run was
# asked for and never finished; no person cancelled it (a person's cancel passes through Cancelling).
SHUT_DOWN = "Runner is shutting down."
REQUEUED = "re-queued: the serving process stopped before this run finished"


def requeue(deployment: str) -> tuple[list[FlowRun], list[FlowRun]]:
    """Undo what a stopping runner did to the deployment's runs; returns (re-queued, restored).

    A run it cancelled before the run finished goes back in the queue (Scheduled, due now), so the next
    serving process runs it (a run that had started resumes from its checkpoints): Prefect has no setting
    for this, its runner cancels what it holds when it stops. A run it "cancelled" after the run had
    finished (its process had exited but the runner had not yet let go of it; Prefect's server lets a
    Completed run become Cancelled) gets its own outcome back, data included: it must neither read
    Cancelled nor run a second time."""
    with get_client(sync_client=True) as client:
        try:
            deployment_id = client.read_deployment_by_name(deployment).id
        except ObjectNotFound:
            return [], []
        cancelled = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLED])),
            ),
            sort=FlowRunSort.START_TIME_DESC,
            limit=200,
        )
        requeued, restored = [], []
        for run in (r for r in cancelled if r.state and r.state.message == SHUT_DOWN):
            if (outcome := _outcome_before_shutdown(client, run)) is not None:
                # The state as it was, result reference included (`set_flow_run_state` sends only a local
                # result's); a new transition id, else the server takes it for a repeat of the old one.
                state = outcome.model_dump(mode="json", include={"type", "name", "message", "data", "state_details"})
                state["state_details"]["transition_id"] = str(uuid4())
                client.request("POST", "/flow_runs/{id}/set_state", path_params={"id": run.id},
                               json={"state": state, "force": True})  # fmt: skip
                restored.append(run)
            else:
                client.set_flow_run_state(run.id, Scheduled(message=REQUEUED), force=True)
                requeued.append(run)
    return requeued, restored


# How Prefect's runner words the Crashed it records when its own shutdown SIGTERMs a run's process
# (before it writes SHUT_DOWN): part of the stop, not an outcome the run had reached.
KILLED_BY_STOP = f"status code: -{signal.SIGTERM.value}."


def _outcome_before_shutdown(client, run: FlowRun) -> State | None:
    """The final state the run had reached before the runner's shutdown, or None (it had not)."""
    history = sorted(client.read_flow_run_states(run.id), key=lambda s: s.timestamp)
    at = next((i for i, s in enumerate(history) if s.id == run.state.id), 0) - 1
    while at >= 0 and history[at].is_crashed() and KILLED_BY_STOP in (history[at].message or ""):
        at -= 1
    return history[at] if at >= 0 and history[at].is_final() else None


def seconds(text: str) -> float:
    """argparse type: a positive number of seconds (Prefect's proactive triggers need at least 10)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 10 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds between 10 and 86400, got {text!r}")
    return value


@one_line
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python deployments/reclaim.py", description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--after", metavar="SECONDS", type=seconds, default=DEFAULT_AFTER_S,
                      help=f"how long a run may sit in Pending/Submitting (default {DEFAULT_AFTER_S})")  # fmt: skip
    what.add_argument("--off", action="store_true", help="delete the automation")
    args = parser.parse_args(argv)
    if (refused := api_refusal()) is not None:
        return refused
    if args.off:
        for name in (NAME, SILENT_NAME):
            print("removed" if delete_named(name) else "there was none", name, sep="; ")
        return 0
    stuck, silent = switch_on(args.after)
    print(f"automation '{stuck.name}' ({stuck.id}) marks a run Crashed {args.after:g} s after Pending")
    print(
        f"automation '{silent.name}' ({silent.id}) marks a run Crashed after {SILENT_AFTER_S} s without "
        f"a heartbeat (the workers need {HEARTBEAT_ENV}={HEARTBEAT_S})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
