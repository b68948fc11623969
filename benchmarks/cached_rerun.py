"""Where a cached rerun's time goes, side by side in one run: the same flow run twice, the second finding
every training in the cache (issue #34: "a cached training resolves in <= 2 s").

    python benchmarks/cached_rerun.py [--data-dir DIR | --dataset fake] [--seeds 0 1] [--epochs 1]

Runs `compare` in this process on a temporary Prefect server (the command line's), once to fill a fresh
cache and once more, then reads every task run's start and end from the server and prints, per task,
the first run's wall and the cached one's, and each flow run's wall. A cached training's time is the
cache lookup, reading its record, and the integrity checks its checkpoint gets (docs/design.md, "What a
cached result can claim"). Never run it next to another job.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="a CIFAR-10 folder (default: generated images, --dataset fake)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--limit-train", type=int, default=2000)
    args = ap.parse_args()

    from dropout_lab.runtime import temporary_server

    with tempfile.TemporaryDirectory(prefix="cached-rerun-") as tmp, temporary_server.serving(120):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        from flows.compare import compare

        params = dict(data_dir=args.data_dir or str(Path(tmp) / "data"), dataset="cifar10" if args.data_dir
                      else "fake", out=str(Path(tmp) / "out"), cache_dir=str(Path(tmp) / "cache"),
                      epochs=args.epochs, seeds=args.seeds, limit_train=args.limit_train, limit_test=500)  # fmt: skip
        walls, runs = [], []
        for _ in range(2):
            start = time.perf_counter()
            state = compare(**params, return_state=True)
            walls.append(time.perf_counter() - start)
            assert state.is_completed(), state
            runs.append(state.state_details.flow_run_id)
        time.sleep(3)  # task states reach the server as events, a moment after the run
        with get_client(sync_client=True) as client:
            tasks = [client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r]))) for r in runs]
    print("| task | first run | cached rerun | cached state |\n|---|---|---|---|")
    first = {t.name: t for t in tasks[0]}
    cached_trainings = []
    for t in sorted(tasks[1], key=lambda t: t.name):
        seconds = (t.end_time - t.start_time).total_seconds() if t.end_time and t.start_time else float("nan")
        before = first.get(t.name)
        was = (before.end_time - before.start_time).total_seconds() if before and before.end_time else float("nan")
        if t.name.startswith("train["):
            cached_trainings.append(seconds)
        print(f"| {t.name} | {was:.2f} s | {seconds:.2f} s | {t.state.name if t.state else '?'} |")
    print(f"| **flow run, end to end** | {walls[0]:.1f} s | {walls[1]:.1f} s | |")
    if cached_trainings:
        print(f"cached trainings: median {statistics.median(cached_trainings):.2f} s, "
              f"worst {max(cached_trainings):.2f} s over {len(cached_trainings)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
