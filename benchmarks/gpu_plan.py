"""Which plan trains K variants on one GPU fastest: stacked, or a process each.

    python benchmarks/gpu_plan.py --data-dir DIR [--ks 2,4,8,16] [--eager-ks 2,4] [--epochs 2]
        [--limit-train 25000] [--write dropout_lab/runtime/gpu_plan.json]

For each K, K variants (dropout 0.25 and the baseline over K/2 seeds) train exactly as the flow
trains them (`benchmarks/time_training.time_stage`: the real worker processes, start-up, capture and
evaluation included), once per plan — `--stack on` (one stacked computation, one CUDA graph) and
`off` (K processes sharing the GPU) — with CUDA graphs, and for `--eager-ks` also without them. One
run, side by side, so the ratios hold on the machine that printed them. Prints the table (wall
seconds, images per second together, the fastest) and with --write saves the fastest per K as the
plan `--stack auto` follows (dropout_lab/runtime/gpu_plan.json). Never run it next to another job.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from time_training import time_stage  # noqa: E402

from dropout_lab.config import TrainConfig, compared_variants  # noqa: E402
from dropout_lab.core.data import FOLDER_NAME  # noqa: E402
from dropout_lab.runtime.devices import variant_configs  # noqa: E402

STACK_FOR = {"stacked": "on", "processes": "off"}


def measure(root: Path, k: int, plan: str, graphs: str, base: TrainConfig, device: str) -> dict:
    configs = variant_configs(base, compared_variants({"dropout": [0.25]}), list(range(k // 2)), device)
    result = time_stage(configs, root, STACK_FOR[plan], graphs, echo=False)
    images = k * base.epochs * (base.limit_train or 50_000)
    ok = not result["failures"] and len(result["finals"]) == k
    row = {"k": k, "plan": plan, "graphs": graphs == "on", "wall": result["wall"], "img_s": images / result["wall"],
           "graphed": result["graphed"], "ok": ok, "failures": result["failures"]}  # fmt: skip
    status = "" if ok else f"  FAILED: {result['failures'][:1]}"
    used = "graphed" if result["graphed"] else "eager"
    print(f"K={k:<3} {plan:<10} {used:<8} {row['wall']:7.1f} s  {row['img_s']:>10,.0f} img/s{status}", flush=True)
    return row


def fastest(rows: list[dict], k: int, graphs: bool) -> str | None:
    """The plan with the least wall time for this K, once every plan of it was measured."""
    done = [r for r in rows if r["k"] == k and r["graphs"] == graphs]
    if len(done) < len(STACK_FOR) or not all(r["ok"] for r in done):
        return None
    return min(done, key=lambda r: r["wall"])["plan"]


def measurement_order(ks: list[int], eager_ks: list[int]) -> list[tuple[int, str, str]]:
    """(K, plan, graphs) in the order measured: smallest K first, graphed then eager, so a --budget
    that runs out leaves complete small-K entries of both kinds (a plan needs both to be written)."""
    todo = [(k, plan, "on") for k in ks for plan in STACK_FOR]
    todo += [(k, plan, "off") for k in eager_ks for plan in STACK_FOR]
    return sorted(todo, key=lambda t: t[0])  # stable: graphed before eager within a K


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True, help=f"folder holding {FOLDER_NAME}/")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--ks", default="2,4,8,16")
    ap.add_argument("--eager-ks", default="2,4")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit-train", type=int, default=25_000)
    ap.add_argument("--budget", type=float, default=0, help="seconds: measure nothing new after this (0: no limit)")
    ap.add_argument("--write", type=Path, help="save the fastest plan per K here (the format of runtime/gpu_plan.json)")
    args = ap.parse_args()
    root = args.data_dir / FOLDER_NAME
    if not root.is_dir():
        raise SystemExit(f"error: {root} not found")
    base = TrainConfig(epochs=args.epochs, limit_train=args.limit_train)
    ks = [int(k) for k in args.ks.split(",") if k]
    eager_ks = [int(k) for k in args.eager_ks.split(",") if k]
    if any(k < 2 or k % 2 for k in ks + eager_ks):
        raise SystemExit("error: every K must be even and at least 2 (dropout 0.25 and the baseline per seed)")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    print(f"{gpu}, torch {torch.__version__}: {args.epochs} epochs x {args.limit_train or 50_000} images per variant")
    todo = measurement_order(ks, eager_ks)
    rows, start = [], time.perf_counter()
    for k, plan, graphs in todo:
        if args.budget and time.perf_counter() - start > args.budget:
            print(f"K={k:<3} {plan:<10} not measured: --budget {args.budget:g} s spent", flush=True)
            continue
        rows.append(measure(root, k, plan, graphs, base, args.device))

    print("\n| K | graphs | stacked | processes | fastest |\n|---|---|---|---|---|")
    for graphs, kset in ((True, ks), (False, eager_ks)):
        for k in kset:
            cells = {r["plan"]: r for r in rows if r["k"] == k and r["graphs"] == graphs}
            text = [f"{c['wall']:.1f} s, {c['img_s']:,.0f} img/s" + ("" if c["ok"] else " (failed)") if c else "—"
                    for c in (cells.get(p) for p in STACK_FOR)]  # fmt: skip
            print(f"| {k} | {'on' if graphs else 'off'} | {' | '.join(text)} | {fastest(rows, k, graphs)} |")
    if args.write:
        plan = {
            kind: {str(k): fastest(rows, k, graphs) for k in kset if fastest(rows, k, graphs)}
            for kind, graphs, kset in (("graphs", True, ks), ("eager", False, eager_ks))
        }
        if not plan["graphs"] or not plan["eager"]:
            print("error: not writing a plan: no K has all its plans measured", file=sys.stderr)
            return 1
        command = " ".join(["benchmarks/gpu_plan.py", *sys.argv[1:]])
        plan["measured"] = {"on": f"{gpu}, torch {torch.__version__}, {date.today()}", "command": command,
                            "rows": rows}  # fmt: skip
        args.write.write_text(json.dumps(plan, indent=1) + "\n")
        print(f"plan written to {args.write}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
