"""Why the run history is SQLite (tasks/history.py) and not a Parquet dataset of small files.

    python benchmarks/history_store.py [--runs 1000] [--writers 4] [--models 4] [--epochs 8]

Side by side in one run, on the same synthetic rows: `writers` processes append `runs` flow runs at
the same time (each run = `models` model rows + `models x epochs` epoch rows), then the whole history
is read back with a filter (one rate, last half of the runs). The Parquet store is the obvious
alternative: one `runs/<id>.parquet` and one `epochs/<id>.parquet` per flow run, written to a temp
name and renamed (concurrent writers cannot clash), read with pyarrow.dataset. Prints rows found vs
expected, the wall times and their ratios; nothing is timed in the tests.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from dropout_lab.analysis import history
from dropout_lab.config import Variant  # noqa: E402

DAY0 = datetime(2026, 1, 1, tzinfo=UTC)


def flow_run(i: int, models: int, epochs: int) -> tuple[list[dict], list[dict]]:
    meta = {"recorded_at": DAY0 + timedelta(hours=i), "flow_run_id": f"run-{i:06d}", "flow_run_name": f"run {i}",
            "code_version": "abc", "experiment": "cifar10-p0.25-s0-e8", "experiment_hash": f"h{i}",
            "report_folder": f"/out/{i}"}  # fmt: skip
    runs, per_epoch = [], []
    for m in range(models):
        rate = 0.0 if m % 2 else 0.25
        key = {**meta, "weights_sha256": f"w{i}-{m}", "model": f"m{m}", "dropout": rate, "seed": m // 2}
        runs.append({**key, "final_test_acc": 0.7, "generalization_gap": 0.05, "dataset": "cifar10", "epochs": epochs})
        per_epoch += [{**key, "epoch": e, "test_acc": 0.1 * e, "dataset": "cifar10"} for e in range(1, epochs + 1)]
    return runs, per_epoch


def parquet_append(root: Path, runs: list[dict], per_epoch: list[dict]) -> None:
    for table, rows, schema in (("runs", runs, history.RUNS_SCHEMA), ("epochs", per_epoch, history.EPOCHS_SCHEMA)):
        folder = root / table
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{rows[0]['flow_run_id']}.{os.getpid()}.tmp"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
        os.replace(tmp, folder / f"{rows[0]['flow_run_id']}.parquet")


def writer(kind: str, where: str, first: int, count: int, models: int, epochs: int) -> None:
    for i in range(first, first + count):
        runs, per_epoch = flow_run(i, models, epochs)
        if kind == "sqlite":
            history.append(Path(where), runs, per_epoch)
        else:
            parquet_append(Path(where), runs, per_epoch)


def append_all(kind: str, where: Path, args) -> float:
    per = args.runs // args.writers
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=writer, args=(kind, str(where), w * per, per, args.models, args.epochs))
             for w in range(args.writers)]  # fmt: skip
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0, f"{kind} writer failed"
    return time.perf_counter() - start


def read_filtered(kind: str, where: Path, since: datetime) -> tuple[int, int, float]:
    start = time.perf_counter()
    if kind == "sqlite":
        rate = [Variant((("dropout", 0.25),))]
        runs = len(history.read(where, variants=rate, since=since))
        per_epoch = len(history.read(where, "epochs", variants=rate, since=since))
    else:
        when = pa.scalar(since, history.RUNS_SCHEMA.field("recorded_at").type)
        flt = (ds.field("dropout") == 0.25) & (ds.field("recorded_at") >= when)
        runs = ds.dataset(where / "runs", schema=history.RUNS_SCHEMA).to_table(filter=flt).num_rows
        per_epoch = ds.dataset(where / "epochs", schema=history.EPOCHS_SCHEMA).to_table(filter=flt).num_rows
    return runs, per_epoch, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    args.runs -= args.runs % args.writers
    since = DAY0 + timedelta(hours=args.runs // 2)
    want = (args.runs // 2 * args.models // 2, args.runs // 2 * args.models // 2 * args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        where = {"sqlite": Path(tmp, history.HISTORY_FILE), "parquet": Path(tmp, "parquet")}
        results = {}
        for kind in ("sqlite", "parquet"):
            write_s = append_all(kind, where[kind], args)
            runs, per_epoch, read_s = read_filtered(kind, where[kind], since)
            files = 1 if kind == "sqlite" else sum(1 for _ in where[kind].rglob("*.parquet"))
            results[kind] = (write_s, read_s)
            print(f"{kind:8s} {args.runs} runs by {args.writers} writers: append {write_s:6.2f} s "
                  f"({1000 * write_s / args.runs * args.writers:5.1f} ms per run per writer), filtered read "
                  f"{read_s:6.3f} s, {files} files, rows {runs}/{want[0]} runs {per_epoch}/{want[1]} epochs "
                  f"{'OK' if (runs, per_epoch) == want else 'LOST ROWS'}")  # fmt: skip
    (sw, sr), (pw, pr) = results["sqlite"], results["parquet"]
    print(f"ratio parquet/sqlite: append {pw / sw:.2f}x, filtered read {pr / sr:.2f}x")


if __name__ == "__main__":
    main()
