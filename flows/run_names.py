"""Runs named from their parameters: the flow's run name, and a deployment's runs named as soon as
they wait, not only once they start.

Prefect names every run it creates for a deployment (the schedule's, the UI's Run button, `prefect
deployment run`) with a random slug ("festive-partridge") and has no name template for them; the flow's
`flow_run_name` applies only when the run starts. So whatever runs for a deployment names its waiting
runs (Scheduled, Late, AwaitingConcurrencySlot: all of state type SCHEDULED) with the names they will
start under, every few seconds: serve.py while it serves, and each deployment run while it runs (on the
work-pool path a run waits only behind a running one, which names it)."""

from __future__ import annotations

import logging
import threading
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound

from dropout_lab.config import PARAMETERS
from dropout_lab.naming import flow_run_label
from dropout_lab.runtime.preflight import resolve_seeds

log = logging.getLogger(__name__)
EVERY_S = 5.0


def label_of(parameters: dict) -> str | None:
    """A run's name from its parameters (dropout_lab/naming.py), those it does not give at their
    declared defaults (a deployment may store only some: deployments/prefect.yaml); None while they are
    not valid."""
    try:
        params = {name: p.default for name, p in PARAMETERS.parameters.items()} | dict(parameters)
        resolve_seeds(params)  # unset seeds: what this machine will train (auto on a GPU)
        return flow_run_label(params)
    except (KeyError, TypeError, ValueError):
        return None


def name_waiting_runs(deployment: str | UUID) -> list[str]:
    """Rename the deployment's (its `flow/deployment` name, or its id as Prefect's runtime gives it: a
    string) runs that wait to start and do not yet carry their parameters' name; returns the new names."""
    with get_client(sync_client=True) as client:
        try:
            deployment_id = UUID(str(deployment))
        except ValueError:
            deployment_id = client.read_deployment_by_name(str(deployment)).id
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


def keep_naming(
    deployment: str | UUID, stop: threading.Event | None = None, every_s: float = EVERY_S
) -> threading.Thread:
    """Name the deployment's waiting runs every `every_s` seconds until `stop` is set, or while the
    process lives (a daemon thread: it never keeps a process alive). A failed pass (server away,
    deployment not yet registered) is retried on the next."""
    stop = stop or threading.Event()

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
