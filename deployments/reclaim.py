"""Reclaim runs stuck before they start: a Prefect automation that marks a dropout-lab run Crashed when
it sat in Pending/Submitting for longer than a run takes to start, which happens when the process that
claimed it (serve.py, a worker) was stopped or died in between. Such a run would otherwise stay
Submitting forever and, on a deployment with a concurrency limit, hold its slot until the lease
expires; Crashed frees the slot at once and shows what happened.

    python deployments/reclaim.py [--after SECONDS] | --off

`deployments/serve.py` switches it on by itself; run this once for the work-pool path. Needs
PREFECT_API_URL (a `prefect server start`).
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect.automations import Automation  # noqa: E402
from prefect.client.schemas.objects import StateType  # noqa: E402
from prefect.events.actions import ChangeFlowRunState  # noqa: E402
from prefect.events.schemas.automations import EventTrigger, Posture  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402

from deployments.notify import api_refusal, delete_named  # noqa: E402
from dropout_lab.cli.oneline import Parser, one_line  # noqa: E402

NAME = "dropout-lab: reclaim runs stuck before start"
TAG = "dropout-lab"  # every deployment of the project carries it (serve.py, prefect.yaml)
# Claiming a run to its Running state takes seconds (a process start, a git clone on a worker); two
# minutes without it means no process is starting it.
DEFAULT_AFTER_S = 120
# Any of these after Pending/Submitting means the run moved on (a rejected or rescheduled start is
# Scheduled again).
MOVED_ON = ("Running", "Completed", "Failed", "Crashed", "Cancelled", "Cancelling", "Scheduled",
            "AwaitingConcurrencySlot", "AwaitingRetry", "Late", "Paused", "Suspended")  # fmt: skip


def switch_on(after_s: float = DEFAULT_AFTER_S) -> Automation:
    """Create the automation, or replace one with another wait; returns it. One with the same wait is
    kept as it is: a replacement would forget the runs it is already timing (a restart of serve.py
    after its process died with a run in Submitting is exactly when it must not)."""
    try:
        existing = Automation.read(name=NAME)
    except (ObjectNotFound, ValueError):
        existing = None
    if existing and existing.enabled and existing.trigger.within == timedelta(seconds=after_s):
        return existing
    delete_named(NAME)
    return Automation(
        name=NAME,
        description=f"Mark a run tagged {TAG} Crashed when it is not Running {after_s:g} s after Pending "
        "(the process that claimed it is gone; deployments/reclaim.py)",
        trigger=EventTrigger(
            after={"prefect.flow-run.Pending", "prefect.flow-run.Submitting"},
            expect={f"prefect.flow-run.{state}" for state in MOVED_ON},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.id": f"prefect.tag.{TAG}"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=after_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=f"not started {after_s:g} s after it was "
                                    "claimed: the process that claimed it stopped (reclaimed by automation)")],
    ).create()  # fmt: skip


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
        print("removed" if delete_named(NAME) else "there was none", NAME, sep="; ")
        return 0
    automation = switch_on(args.after)
    print(f"automation '{automation.name}' ({automation.id}) marks a run Crashed {args.after:g} s after Pending")
    return 0


if __name__ == "__main__":
    sys.exit(main())
