"""Wall time of the comparison's training stage, run exactly as the flow runs it, without Prefect.

    python benchmarks/time_training.py --data-dir DIR [--device auto] [--stack auto] [--precision fp32]
        [--compile] [--dropout 0.25] [--seeds 0] [--epochs 8] [--limit-train N] [--limit-test N]

The same variants, devices, stacks, thread split and training processes (`tasks.launcher`) as
`flows/compare.py`, each from scratch in a temporary checkpoint folder, the groups concurrently.
For machines without Prefect (e.g. a GPU box with only torch): the flow adds Prefect's start-up
(~20 s here for its temporary server), evaluation and the report on top. Prints one line per
variant and epoch, the final accuracies and the wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks.config import TrainConfig, check_train_config  # noqa: E402
from tasks.data import FOLDER_NAME  # noqa: E402
from tasks.devices import process_plan, stack_groups, variant_configs  # noqa: E402
from tasks.launcher import run_worker  # noqa: E402
from tasks.train import format_epoch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True, help=f"folder holding {FOLDER_NAME}/")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--stack", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--dropout", type=float, nargs="+", default=[0.25])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--limit-train", type=int, default=0)
    ap.add_argument("--limit-test", type=int, default=0)
    args = ap.parse_args()
    root = args.data_dir / FOLDER_NAME
    if not root.is_dir():
        raise SystemExit(f"error: {root} not found")
    base = TrainConfig(epochs=args.epochs, precision=args.precision, compile=args.compile,
                       limit_train=args.limit_train, limit_test=args.limit_test)  # fmt: skip
    configs = variant_configs(base, args.dropout, args.seeds, args.device)
    for cfg in configs:
        check_train_config(cfg)
    groups = stack_groups(configs, args.stack)
    threads, slots = process_plan(groups)
    # The flow takes these slots from Prefect's concurrency limits; this timing runs without Prefect.
    device_slots = {device: threading.BoundedSemaphore(n) for device, n in slots.items()}
    layout = "; ".join(" + ".join(c.run_name for c in g) + f" on {g[0].device}" for g in groups)
    print(f"{len(configs)} variants in {len(groups)} training process(es): {layout}", flush=True)

    finals: dict[str, dict] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def train(group: list[TrainConfig], folder: Path) -> None:
        job = {"configs": [c.to_dict() for c in group], "data_root": str(root), "threads": threads,
               "checkpoint_dirs": [str(folder / f"variant{i}") for i in range(len(group))]}  # fmt: skip
        try:
            with device_slots[group[0].device]:
                for event in run_worker(job):
                    if event["event"] == "epoch":
                        name = group[event["variant"]].run_name
                        with lock:
                            finals[name] = event
                            print(format_epoch(name, args.epochs, event), flush=True)
        except Exception as e:  # reported below; the other groups finish
            failures.append(f"{' + '.join(c.run_name for c in group)}: {e}")

    with tempfile.TemporaryDirectory(prefix="time-training-") as tmp:
        start = time.perf_counter()
        workers = [threading.Thread(target=train, args=(g, Path(tmp) / f"group{i}")) for i, g in enumerate(groups)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - start
    for name, r in finals.items():
        gap = 100 * (r["train_eval_acc"] - r["test_acc"])
        print(f"final  {name:<24} train acc (eval mode) {r['train_eval_acc']:6.2%}  test acc {r['test_acc']:6.2%}  "
              f"gap {gap:.2f} points  test loss {r['test_loss']:.4f}")  # fmt: skip
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    print(f"training stage wall time: {wall:.1f} s ({len(configs)} variants, {args.epochs} epochs, "
          f"device {args.device}, stack {args.stack}, precision {args.precision}, compile {args.compile})")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
