"""How long a training process takes to reach its first step, with and without the fork server preloading
torch._dynamo (runtime/processes.py PRELOAD), side by side in one run.

    python benchmarks/training_start.py [--runs 5]

Each setting gets a fresh fork server in a process of its own (PRELOAD is read when the server starts);
after it is up, `--runs` tiny trainings (generated images, 200 training images, 1 epoch) run one after
another through runtime/processes.py; printed per setting: the median seconds from submitting a training
to its `start` event and to its end, then the ratio. Never run it next to another job.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

ONE_SETTING = """
import json, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from multiprocessing import forkserver
from dropout_lab.config import TrainConfig
from dropout_lab.core.data import describe_folder, write_cifar_folder
from dropout_lab.runtime import processes
from dropout_lab.runtime.training import job_for
processes.PRELOAD[:] = json.loads(sys.argv[2])
root = Path(tempfile.mkdtemp())
write_cifar_folder(root, n_train=400, n_test=200, seed=1)
processes.prestart()
times = []
for i in range(int(sys.argv[3])):
    cfg = TrainConfig(epochs=1, limit_train=200, limit_test=100, train_eval_images=200, seed=i)
    job = job_for([cfg], describe_folder(root / "cifar-10-batches-py", warn=False), [root / f"c{i}"], 1, "auto")
    started = time.perf_counter()
    for event in processes.run_training(job):
        if event["event"] == "start":
            first = time.perf_counter() - started
    times.append((first, time.perf_counter() - started))
print(json.dumps(times))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from dropout_lab.runtime.processes import PRELOAD

    settings = {"without torch._dynamo": [m for m in PRELOAD if m != "torch._dynamo"], "as shipped": PRELOAD}
    medians = {}
    for name, preload in settings.items():
        out = subprocess.run([sys.executable, "-c", ONE_SETTING, str(REPO), json.dumps(preload), str(args.runs)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        times = json.loads(out.strip().splitlines()[-1])
        medians[name] = [statistics.median(t[k] for t in times) for k in (0, 1)]
        print(f"{name:22s} preload {preload}: to start {medians[name][0]:.2f} s, whole training "
              f"{medians[name][1]:.2f} s (median of {args.runs})")  # fmt: skip
    before, after = medians["without torch._dynamo"][1], medians["as shipped"][1]
    print(f"a tiny training, submitted to done: {before:.2f} s -> {after:.2f} s ({before / after:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
