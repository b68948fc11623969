"""Running the flow in the tests: under the session's embedded Prefect server, with its task states and
artifacts as the server recorded them."""

import time
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

from flows.compare import compare

EPOCHS = 2


def run_flow(ws: Path, **overrides):
    params = dict(data_dir=str(ws / "data"), out=str(ws / "artifacts"), cache_dir=str(ws / "cache"), epochs=EPOCHS)
    state = compare(**{**params, **overrides}, return_state=True)
    assert state.is_completed(), state
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30  # the server records task states from events, a moment after the run
        while True:
            task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if all(tr.state is not None for tr in task_runs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    states: dict[str, set[str]] = {}  # task run name → its states (a re-run task appears twice)
    for tr in task_runs:
        states.setdefault(tr.name, set()).add(tr.state.name)
    return Path(state.result()), states, artifacts
