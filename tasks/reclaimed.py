"""A run the reclaim automation marked Crashed (its process died: deployments/reclaim.py) leaves its task
runs Running, their bars growing in the UI: Prefect's automations change flow run states only. The next
run of the project on that server ends them Crashed too, saying why (two reads when there is nothing to
end)."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.states import Crashed

ENDED = "its flow run crashed: the process running it is gone"


def end_orphaned_task_runs(tag: str = "dropout-lab") -> int:
    """Mark Crashed the unfinished task runs of the latest crashed runs tagged `tag`; returns how many."""
    with get_client(sync_client=True) as client:
        crashed = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[tag]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED])),
            ),
            sort=FlowRunSort.END_TIME_DESC,
            limit=50,
        )
        if not crashed:
            return 0
        unfinished = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in crashed])),
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(
                    type=TaskRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED])
                )
            ),
        )
        for task_run in unfinished:
            client.set_task_run_state(task_run.id, Crashed(message=ENDED), force=True)
    return len(unfinished)
