"""Deployment runs named from their parameters as soon as they exist, not only once they start.

Prefect names every run it creates for a deployment (the schedule's, the UI's Run button, `prefect
deployment run`) with a random slug ("festive-partridge") and has no name template for them; the flow's
`flow_run_name` applies only when the run starts. So the serving process names the runs waiting for it
(Scheduled, Late, AwaitingConcurrencySlot: all of state type SCHEDULED) with the name the run will get
when it starts, every few seconds."""

from __future__ import annotations

import logging
import threading

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound

from flows.compare import label_of

log = logging.getLogger(__name__)
EVERY_S = 5.0


def name_waiting_runs(deployment: str) -> list[str]:
    """Rename the deployment's runs that wait to start and do not yet carry their parameters' name;
    returns the new names."""
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        waiting = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))), limit=200)  # fmt: skip
        named = []
        for run in waiting:
            label = label_of(run.parameters)
            if label and run.name != label:
                client.update_flow_run(run.id, name=label)
                named.append(label)
    return named


def keep_naming(deployment: str, stop: threading.Event, every_s: float = EVERY_S) -> threading.Thread:
    """Name the deployment's waiting runs every `every_s` seconds until `stop` is set (a daemon thread:
    it never keeps the serving process alive). A failed pass (server away, deployment not yet
    registered) is retried on the next."""

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                name_waiting_runs(deployment)
            except ObjectNotFound:
                continue  # serve() registers the deployment a moment after this starts
            except Exception as e:  # noqa: BLE001 - naming is cosmetic: never stop serving for it
                log.debug("naming waiting runs of %s: %s", deployment, e)

    thread = threading.Thread(target=loop, name="dropout-lab-run-names", daemon=True)
    thread.start()
    return thread
