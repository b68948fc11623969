"""Wall time of the comparison's training stage, run exactly as the flow runs it, without Prefect.

    python benchmarks/time_training.py --data-dir DIR [--device auto] [--stack auto] [--cuda-graphs auto]
        [--precision fp32] [--compile] [--dropout 0.25] [--seeds 0] [--epochs 8] [--limit-train N]
        [--limit-test N]

The same variants, devices, plan (stacked, or a process each), CUDA graphs, thread split and training
processes (`dropout_lab.runtime.processes`) as `flows/compare.py`, each from scratch in a temporary
checkpoint folder, the groups concurrently. For machines without Prefect (e.g. a GPU box
with only torch): the flow adds Prefect's start-up (~20 s here for its temporary server) and the
report on top. Prints one line per variant and epoch, the final accuracies and the wall time.
`time_stage` is the same measurement as a function (benchmarks/gpu_plan.py).
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

from dropout_lab.config import GRAPH_MODES, TrainConfig, check_train_config, compared_variants  # noqa: E402
from dropout_lab.core.data import FOLDER_NAME, describe_folder  # noqa: E402
from dropout_lab.runtime.devices import STACK_MODES, process_layout, stack_groups, variant_configs  # noqa: E402
from dropout_lab.runtime.processes import run_training  # noqa: E402
from dropout_lab.runtime.progress import format_epoch  # noqa: E402
from dropout_lab.runtime.training import job_for  # noqa: E402


def time_stage(configs: list[TrainConfig], root: Path, stack: str, cuda_graphs: str, echo: bool = True) -> dict:
    """Train `configs` as the flow would; {"wall": s, "finals": {name: last record}, "failures": [...],
    "groups": n, "graphed": all trained with CUDA graphs}."""
    groups = stack_groups(configs, stack, cuda_graphs)
    threads, slots = process_layout(groups)
    data = describe_folder(root, warn=False)  # measured, as the flow's fetch measures it
    # The flow takes these slots from Prefect's concurrency limits; this timing runs without Prefect.
    device_slots = {device: threading.BoundedSemaphore(n) for device, n in slots.items()}
    if echo:
        names = [f"{' + '.join(c.run_name for c in g)} on {g[0].device}" for g in groups]
        how = ["stacked" if len(g) > 1 else "alone" for g in groups]
        layout = "; ".join(f"{name} ({h})" for name, h in zip(names, how, strict=True))
        print(f"{len(configs)} variants in {len(groups)} training process(es): {layout}", flush=True)
    finals: dict[str, dict] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def train(group: list[TrainConfig], folder: Path) -> None:
        folders = [folder / f"variant{i}" for i in range(len(group))]
        job = job_for(group, data, folders, threads, cuda_graphs)
        try:
            with device_slots[group[0].device]:
                for event in run_training(job):
                    if event["event"] == "epoch":
                        name = group[event["variant"]].run_name
                        with lock:
                            finals[name] = event
                            if echo:
                                print(format_epoch(name, group[0].epochs, event), flush=True)
                    elif event["event"] == "log" and echo:
                        print(f"  [{group[0].run_name}] {event['message']}", flush=True)
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
    graphed = bool(finals) and all(r.get("cuda_graphs") for r in finals.values())
    return {"wall": wall, "finals": finals, "failures": failures, "groups": len(groups), "graphed": graphed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True, help=f"folder holding {FOLDER_NAME}/")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--stack", default="auto", choices=STACK_MODES)
    ap.add_argument("--cuda-graphs", default="auto", choices=GRAPH_MODES)
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
    configs = variant_configs(base, compared_variants({"dropout": args.dropout}), args.seeds, args.device)
    for cfg in configs:
        check_train_config(cfg)
    result = time_stage(configs, root, args.stack, args.cuda_graphs)
    for name, r in result["finals"].items():
        gap = 100 * (r["train_eval_acc"] - r["test_acc"])
        print(f"final  {name:<24} train acc (eval mode) {r['train_eval_acc']:6.2%}  test acc {r['test_acc']:6.2%}  "
              f"gap {gap:.2f} points  test loss {r['test_loss']:.4f}")  # fmt: skip
    for failure in result["failures"]:
        print(f"error: {failure}", file=sys.stderr)
    print(f"training stage wall time: {result['wall']:.1f} s ({len(configs)} variants, {args.epochs} epochs, "
          f"device {args.device}, stack {args.stack}, cuda graphs {'used' if result['graphed'] else 'not used'}, "
          f"precision {args.precision}, compile {args.compile})")  # fmt: skip
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
