"""Late scheduled runs collapse to the newest: after downtime a schedule's missed runs are all due at
once; only the newest is worth running. Prefect has no "no catch-up" switch for a schedule, and its
deployment concurrency either cancels or queues every colliding run alike (manual ones included,
which must never be dropped), so a scheduled run checks at its start whether a later scheduled run of
its deployment is also due, and if so ends Cancelled naming that run."""

from __future__ import annotations

from datetime import datetime, timezone
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort

# A later run in these states does not supersede: it was itself collapsed, or a user stopped it.
NOT_SUPERSEDING = [StateType.CANCELLED, StateType.CANCELLING]


def superseding_run(flow_run_id: UUID | str | None) -> FlowRun | None:
    """The newest scheduled run of the same deployment that is due (its time has come) and was
    scheduled after this one, when this run is itself a scheduled one; None otherwise (manual and API
    runs, and the newest due scheduled run, always run)."""
    if flow_run_id is None:
        return None
    with get_client(sync_client=True) as client:
        me = client.read_flow_run(UUID(str(flow_run_id)))
        if not (me.auto_scheduled and me.deployment_id and me.expected_start_time):
            return None
        later = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[me.deployment_id]),
                expected_start_time=FlowRunFilterExpectedStartTime(
                    after_=me.expected_start_time, before_=datetime.now(timezone.utc)
                ),
                state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=NOT_SUPERSEDING)),
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=20,
        )
    return next((r for r in later if r.auto_scheduled and r.id != me.id
                 and r.expected_start_time > me.expected_start_time), None)  # fmt: skip
