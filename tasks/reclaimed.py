"""Task runs of a run whose process died stay Running, their bars growing in the UI: Prefect's automations
change flow run states only (deployments/reclaim.py marks the flow run Crashed), and nothing in Prefect
ends a dead run's task runs. Two things end them:
- a watcher beside each run on a server: a small process in a session of its own, waiting on a pipe that
  the run closes when its body ends. End of file without the run's word means the run's process died (kill
  -9, the kernel's out-of-memory killer, its process group killed), and the watcher marks the run and its
  unfinished task runs Crashed at once, saying why, and lets go of the device slots the run held (their
  leases would hold the next run a minute: the run tells it each lease it takes). A machine
  that dies takes its watcher with it, so
- the project's next run on that server ends the task runs of runs crashed since (two reads when there is
  nothing to end).

    python -m tasks.reclaimed FLOW_RUN_ID   (the watcher; `watched` starts it)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

ENDED = "its flow run crashed: the process running it is gone"
DIED = "its process died before ending the run (killed, or out of memory): reclaimed by the run's watcher"
DONE = "done"  # the run's last line when its body ends, any way it ends
WATCH_S = 120  # a watcher whose server does not answer gives up (the automation is still there)
_to_watcher: int | None = None  # the write end of this process's watcher's pipe while its run's body runs
_writing = threading.Lock()


def end_orphaned_task_runs(tag: str = "dropout-lab") -> int:
    """Mark Crashed the unfinished task runs of the latest crashed runs tagged `tag`; returns how many."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        crashed = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[tag]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED])),
            ),
            sort=FlowRunSort.END_TIME_DESC,
            limit=50,
        )
        return _end_task_runs(client, [r.id for r in crashed]) if crashed else 0


def _end_task_runs(client, flow_run_ids: list[UUID]) -> int:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    unfinished = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)),
        task_run_filter=TaskRunFilter(
            state=TaskRunFilterState(
                type=TaskRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED])
            )
        ),
    )
    for task_run in unfinished:
        client.set_task_run_state(task_run.id, Crashed(message=ENDED), force=True)
    return len(unfinished)


def reclaim(flow_run_id: UUID, leases: list[UUID] = ()) -> int:
    """The run's process is gone: its run Crashed unless it already ended, its unfinished task runs Crashed
    too, and the slot leases it held let go; returns how many task runs it ended."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        if not client.read_flow_run(flow_run_id).state.is_final():
            client.set_flow_run_state(flow_run_id, Crashed(message=DIED), force=True)
        ended = _end_task_runs(client, [flow_run_id])
        for lease in leases:  # one let go or lapsed meanwhile is answered 204 all the same
            client.release_concurrency_slots_with_lease(lease)
        return ended


def tell_watcher(line: str) -> None:
    """One line to this process's watcher, when it has one (`lease ID`: a slot's lease taken). A watcher
    that is gone (killed by someone) is told nothing more: its loss must not fail the run's trainings."""
    global _to_watcher
    with _writing:
        if _to_watcher is not None:
            try:
                os.write(_to_watcher, f"{line}\n".encode())
            except OSError:
                _to_watcher = None


@contextmanager
def watched(flow_run_id: UUID) -> Iterator[None]:
    """Run the body with a watcher that reclaims the run if this process dies before the body ends. Its own
    session keeps it out of the terminal's Ctrl-C and of a kill of this process group; it imports nothing
    until it has to act, so it costs a Python start."""
    global _to_watcher
    watcher = subprocess.Popen([sys.executable, "-m", "tasks.reclaimed", str(flow_run_id)], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent,
                               start_new_session=True)  # fmt: skip
    _to_watcher = watcher.stdin.fileno()
    try:
        yield
    finally:
        tell_watcher(DONE)
        with _writing:
            _to_watcher = None
            watcher.stdin.close()
        watcher.wait()


def main(flow_run_id: str) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run's stop, not the watcher's: it waits for the word
    said = sys.stdin.buffer.read().decode(errors="replace").splitlines()
    if said[-1:] == [DONE]:
        return 0
    # Every lease the run took: one it let go already is answered like one still held (Prefect releases
    # a lease it no longer has as a no-op), so the run need not say which it freed.
    leases = [UUID(line.split()[1]) for line in said if line.startswith("lease ")]
    signal.alarm(WATCH_S)
    try:
        reclaim(UUID(flow_run_id), leases)
    except Exception as e:  # one line where the run's output went; the automation still reclaims it
        print(f"dropout-lab: could not reclaim run {flow_run_id}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
