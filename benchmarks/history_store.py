"""The run history in MLflow's store: concurrent writers lose nothing, and how fast a listing answers when read
with MLflow's own client versus `dropout-lab history`, side by side, each a fresh process as a user starts it.

    python benchmarks/history_store.py [--runs 200] [--writers 4] [--models 4] [--epochs 8] [--rounds 3]

`--writers` processes record `--runs` comparisons of `--models` models with `--epochs` epochs each into one
new SQLite store at once (analysis/tracking.py, as the flow records them), then each reader lists every
model (`--rounds` times, alternated; the median): MLflow's client (`search_runs` of the model runs) and the
command (`dropout-lab history`, which reads MLflow's tables around the client). Never run next to another job.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

MLFLOW_LISTING = """
import sys
from mlflow import MlflowClient
client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name("dropout-lab").experiment_id
runs = client.search_runs([experiment], filter_string="tags.`dropout_lab.kind` = 'model'", max_results=50000)
print(len(runs))
"""


def writer(uri: str, first: int, count: int, models: int, epochs: int) -> None:
    from test_history import model, record

    for run in range(first, first + count):
        record(uri, [{**model(run, 0.25 if m % 2 else 0.0, m // 2, 0.7, 0.1), "model_key": f"k{m}"}
                     for m in range(models)], epochs=epochs)  # fmt: skip


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    per = args.runs // args.writers
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=writer, args=(uri, w * per, per, args.models, args.epochs))
                 for w in range(args.writers)]  # fmt: skip
        start = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            assert p.exitcode == 0, "a writer failed"
        write_s = time.perf_counter() - start
        want = per * args.writers * args.models
        readers = {
            "mlflow client": [sys.executable, "-c", MLFLOW_LISTING, uri],
            "dropout-lab history": [sys.executable, "-m", "dropout_lab.cli", "history", "--history", uri],
        }
        times: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(args.rounds):
            for name, cmd in readers.items():
                seconds, out = timed(cmd)
                times[name].append(seconds)
                found = int(out.split()[0]) if name == "mlflow client" else int(out.splitlines()[-1].split()[0])
                assert found == want, f"{name} listed {found} models, {want} recorded"
        print(f"{args.writers} writers recorded {args.runs} runs x {args.models} models into one new store in "
              f"{write_s:.1f} s; every one read back ({want} models)")  # fmt: skip
        median = {name: statistics.median(t) for name, t in times.items()}
        for name, seconds in median.items():
            print(f"{name:20s} lists {want} models in {seconds:.2f} s (median of {args.rounds}, a fresh process)")
        ratio = median["dropout-lab history"] / median["mlflow client"]
        print(f"ratio dropout-lab history / mlflow client: {ratio:.2f}")


if __name__ == "__main__":
    main()
