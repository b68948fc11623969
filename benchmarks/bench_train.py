"""Side-by-side speed of the tutorial's training loop and dropout-lab's trainer, on the same data.

    python benchmarks/bench_train.py --data-dir DIR [--device cpu|cuda] [--steps 400] [--eval-images 2000]
                                     [--variants 2] [--k-sweep 1,2,4,8] [--settings fp32+compile,bf16]

DIR holds `cifar-10-batches-py/` (official files or a stand-in). Without --data-dir a small generated
dataset is used (a smoke run: the speeds are real, the accuracies meaningless). Measured, in one run:

1. reference — the tutorial's loop: torchvision `CIFAR10` with per-sample ToTensor + Normalize,
   DataLoader(batch 32, shuffle, num_workers=2), Adam, per-step `loss.item()` and Python `sum()`
   over the prediction tensor; one model at a time (the tutorial trains the two one after the other).
2. project, sequential — our loop (uint8 tensors decoded once, per-batch normalisation,
   channels_last, no host sync per step) in one process with all cores.
3. project, as the flow trains the pair — on CPU one process per variant, the cores split between
   them, all training at once; on CUDA both variants stacked in one process (tasks/stacked.py).
4. with --k-sweep 1,2,4,8: K variants as K processes, and K variants stacked in one process.

Prints img/s, ratios, eval img/s, the accuracy reached, peak memory, and the projected wall time of
the full default comparison (2 models × 8 epochs × 50,000 images, a 10,000-image test pass and the
eval-mode pass over 10,000 training images per epoch), with the share of that last pass (which the
honest generalization gap needs) next to what all 50,000 would cost. Writes a CSV to
artifacts/benchmarks/. Never run it next to another job: numbers skew.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dropout_lab.config import TrainConfig  # noqa: E402
from dropout_lab.core.data import FOLDER_NAME, load_split, write_cifar_folder  # noqa: E402
from dropout_lab.core.model import Net  # noqa: E402
from dropout_lab.core.stacked import streams_from_global  # noqa: E402
from dropout_lab.core.train import Unit, build  # noqa: E402
from dropout_lab.runtime.devices import available_cores  # noqa: E402

BATCH = 32
WARMUP_STEPS = 20
FULL = {"epochs": 8, "train": 50_000, "test": 10_000, "models": 2, "train_eval": TrainConfig.train_eval_images}


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


# --- 1. the tutorial's loop ------------------------------------------------------------------------


def reference_loop(root: Path, steps: int, eval_images: int, device: str) -> dict:
    import torchvision
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms

    class LocalCIFAR10(torchvision.datasets.CIFAR10):
        # torchvision refuses files whose md5 differ from the official ones (e.g. a stand-in).
        # Note: it reads them with plain pickle; only benchmark data you trust.
        meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}

        def _check_integrity(self) -> bool:
            return True

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    train_set = LocalCIFAR10(str(root), train=True, transform=tf)
    test_set = LocalCIFAR10(str(root), train=False, transform=tf)
    loader = DataLoader(train_set, batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=True)
    torch.manual_seed(0)
    model = Net(0.25).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    done, seen, correct, running_loss = 0, 0, 0, 0.0
    batches = iter(loader)
    start = None
    while done < steps + WARMUP_STEPS:
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        if done == WARMUP_STEPS:
            start, seen = time.perf_counter(), 0
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        running_loss += loss.item()
        correct += sum(out.argmax(1) == y).item()  # the tutorial's Python sum over a tensor
        seen += len(y)
        done += 1
    train_s = time.perf_counter() - start
    train_acc = correct / ((steps + WARMUP_STEPS) * BATCH)
    test_loader = DataLoader(Subset(test_set, range(min(eval_images, len(test_set)))), batch_size=BATCH,
                             num_workers=2)  # fmt: skip
    model.eval()
    t0, n_eval, n_right = time.perf_counter(), 0, 0
    with torch.no_grad():
        for x, y in test_loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            n_right += sum(out.argmax(1) == y).item()
            n_eval += len(y)
    eval_s = time.perf_counter() - t0
    return {"train_img_s": seen / train_s, "eval_img_s": n_eval / eval_s, "train_acc": train_acc,
            "test_acc": n_right / n_eval, "threads": torch.get_num_threads()}  # fmt: skip


# --- 2./3. the project's trainer (one process per variant) ------------------------------------------


def project_child(job: dict) -> dict:
    """Runs inside a child process: the project's loop for `steps` steps, then `eval_images`.

    With job["stack"] = K, trains K variants stacked (tasks/stacked.py) instead of one model;
    img/s then counts the images of all K variants."""
    torch.set_num_threads(job["threads"])
    k = job.get("stack", 0)
    cfgs = [TrainConfig(dropout=0.25 if i % 2 == 0 else 0.0, seed=i // 2, device=job["device"]) for i in range(k)]
    settings = {"precision": job.get("precision", "fp32"), "compile": job.get("compile", False)}
    cfg = cfgs[0] if cfgs else TrainConfig(dropout=job["dropout"], seed=job["seed"], device=job["device"], **settings)
    train_x, train_y = load_split(job["root"], train=True)
    test_x, test_y = load_split(job["root"], train=False, limit=job["eval_images"])
    device = torch.device(cfg.device)
    if device.type == "cuda":  # what the training worker sets
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    train_x, train_y, test_x, test_y = (t.to(device) for t in (train_x, train_y, test_x, test_y))
    total = (job["steps"] + WARMUP_STEPS) * BATCH
    warm = WARMUP_STEPS * BATCH

    def order_for(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        order = torch.cat([torch.randperm(len(train_y), generator=gen) for _ in range(total // len(train_y) + 1)])
        return order[:total].to(device)

    if k:
        nets, opts, streams = [], [], []
        for c in cfgs:  # as dropout_lab.core.train.fit starts them
            net, opt = build(c)
            nets.append(net)
            opts.append(opt)
            cpu_gen, cuda_gen = streams_from_global(device)
            streams.append(cuda_gen or cpu_gen)
        unit = Unit(nets, opts, streams, cfg)
        orders = torch.stack([order_for(c.seed) for c in cfgs])

        def steps(part):
            return unit.train_pass(orders[:, part], train_x, train_y)

        def test():
            return unit.evaluate("test", test_x, test_y)[0]
    else:
        model, opt = build(cfg)
        unit = Unit([model], [opt], [], cfg)  # torch.compile as the config says
        order = order_for(cfg.seed)[None]

        def steps(part):
            return unit.train_pass(order[:, part], train_x, train_y)

        def test():
            return unit.evaluate("test", test_x, test_y)[0]

    t0 = time.perf_counter()
    steps(slice(0, warm))  # includes torch.compile's compilation
    sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, correct = steps(slice(warm, total))
    sync(device)
    train_s = time.perf_counter() - t0
    n_models = max(k, 1)
    test()  # warm-up
    t0 = time.perf_counter()
    result = test()
    eval_s = time.perf_counter() - t0
    return {"train_img_s": n_models * (total - warm) / train_s, "eval_img_s": n_models * len(test_y) / eval_s,
            "train_acc": float(correct.double().mean() if k else correct) / (total - warm),
            "test_acc": result["acc"], "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": peak_gpu_mb(device), "warmup_s": warmup_s}  # fmt: skip


def peak_gpu_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_concurrently(root: Path, k: int, threads: int, args, **settings) -> tuple[list[dict], float]:
    """k child processes at once (variant i: dropout 0.25 for even i, 0 for odd; seed i // 2);
    `settings`: precision / compile for each."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = []
    t0 = time.perf_counter()
    for i in range(k):
        job = {"root": str(root), "steps": args.steps, "eval_images": args.eval_images, "threads": threads,
               "dropout": 0.25 if i % 2 == 0 else 0.0, "seed": i // 2, "device": args.device, **settings}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, __file__, "--child", json.dumps(job)], env=env,
                                      stdout=subprocess.PIPE, text=True))  # fmt: skip
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"benchmark child failed with exit code {p.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results, time.perf_counter() - t0


def run_stacked(root: Path, k: int, threads: int, args) -> tuple[dict, float]:
    """k variants stacked in one child process (same variants as `run_concurrently`)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    job = {"root": str(root), "steps": args.steps, "eval_images": args.eval_images, "threads": threads,
           "stack": k, "device": args.device}  # fmt: skip
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], env=env, stdout=subprocess.PIPE,
                         text=True, check=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1]), time.perf_counter() - t0


def projected_minutes(
    train_img_s: float, eval_img_s: float, models_in_sequence: int, train_eval: int = FULL["train_eval"]
) -> float:
    """Wall minutes of the default comparison at these per-model speeds; `train_eval` training images
    are re-evaluated in eval mode per epoch (the tutorial's loop has no such pass: pass 0)."""
    per_epoch = FULL["train"] / train_img_s + (FULL["test"] + train_eval) / eval_img_s
    return models_in_sequence * FULL["epochs"] * per_epoch / 60


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, help="folder holding cifar-10-batches-py/ (default: generated)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=400, help="timed training steps per loop (after 20 warm-up)")
    ap.add_argument("--eval-images", type=int, default=2000)
    ap.add_argument("--variants", type=int, default=2, help="variants trained at once in the concurrent run")
    ap.add_argument("--k-sweep", default="", help="also time K concurrent variants, e.g. 1,2,4,8")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--settings", default="", help="also time one model with each PRECISION[+compile], "
                    "e.g. fp32+compile,bf16,bf16+compile (bf16/fp16: CUDA only)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "benchmarks")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(project_child(json.loads(args.child))))
        return 0

    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory()
        write_cifar_folder(Path(tmp.name), n_train=5000, n_test=1000)
        args.data_dir = Path(tmp.name)
        print("no --data-dir: using generated images (speeds are real, accuracies meaningless)")
    root = args.data_dir / FOLDER_NAME
    if not root.is_dir():
        raise SystemExit(f"error: {root} not found (pass the folder that contains {FOLDER_NAME}/)")
    cores = available_cores()
    print(f"device {args.device}, {cores} cores, torch {torch.__version__}, {args.steps} steps of batch {BATCH}")
    rows = []

    def record(name: str, r: dict, variants: int = 1, wall: float | None = None) -> None:
        rows.append({"loop": name, "variants": variants, "threads": r["threads"],
                     "train_img_s": round(r["train_img_s"], 1), "eval_img_s": round(r["eval_img_s"], 1),
                     "train_acc": round(r["train_acc"], 4), "test_acc": round(r["test_acc"], 4),
                     "wall_s": None if wall is None else round(wall, 2)})  # fmt: skip
        print(f"  {name:<34} train {r['train_img_s']:8.0f} img/s   eval {r['eval_img_s']:8.0f} img/s   "
              f"train acc {r['train_acc']:.3f}  test acc {r['test_acc']:.3f}  ({r['threads']} threads)")  # fmt: skip

    ref = None
    if not args.skip_reference:
        ref = reference_loop(args.data_dir, args.steps, args.eval_images, args.device)
        record("reference (tutorial loop)", ref)
    (seq,), _ = run_concurrently(root, 1, cores, args)
    record("project, one process, all cores", seq)
    for setting in filter(None, args.settings.split(",")):
        precision, _, compiled = setting.partition("+")
        (r,), _ = run_concurrently(root, 1, cores, args, precision=precision, compile=compiled == "compile")
        record(f"project, one process, {setting}", r)
        print(f"    ({setting}: {WARMUP_STEPS} warm-up steps took {r['warmup_s']:.1f} s, compilation included)")
    k = args.variants
    if args.device.startswith("cuda"):  # what the flow does on one GPU (--stack auto): one stacked process
        stacked, pair_wall = run_stacked(root, k, cores, args)
        record(f"project, {k} variants stacked", stacked, k, pair_wall)
        pair = [{**stacked, "train_img_s": stacked["train_img_s"] / k, "eval_img_s": stacked["eval_img_s"] / k}] * k
        how = "stacked in one process"
    else:  # on CPU (--stack auto): one process per variant, the cores split between them
        pair, pair_wall = run_concurrently(root, k, max(1, cores // k), args)
        for i, r in enumerate(pair):
            record(f"project, concurrent variant {i + 1}/{k}", r, k, pair_wall)
        how = "concurrent processes"
    pair_train = sum(r["train_img_s"] for r in pair)
    slowest = min(pair, key=lambda r: r["train_img_s"])
    gain = pair_train / seq["train_img_s"]
    print(f"\n{k} variants as the flow trains them ({how}): {pair_train:.0f} img/s together "
          f"(vs {seq['train_img_s']:.0f} one model at a time: {gain:.2f}x)")  # fmt: skip
    # The flow trains the models at once: the slowest sets the pace.
    ours_min = projected_minutes(slowest["train_img_s"], slowest["eval_img_s"], models_in_sequence=1)
    seq_min = projected_minutes(seq["train_img_s"], seq["eval_img_s"], models_in_sequence=FULL["models"])
    print("projected full default comparison (training + per-epoch evaluation, start-up excluded):")
    print(f"  project, as the flow runs it    {ours_min:5.1f} min")
    print(f"  project, models one after other {seq_min:5.1f} min")
    # The eval-mode pass over training images (dropout_lab.core.evaluate.train_eval_split) for the honest gap.
    without = projected_minutes(slowest["train_img_s"], slowest["eval_img_s"], 1, train_eval=0)
    everything = projected_minutes(slowest["train_img_s"], slowest["eval_img_s"], 1, train_eval=FULL["train"])
    print(
        f"  of which the eval-mode pass over {FULL['train_eval']:,} training images per epoch: "
        f"+{100 * (ours_min / without - 1):.1f}% (over all {FULL['train']:,}: +{100 * (everything / without - 1):.1f}%)"
    )
    if ref:
        ref_min = projected_minutes(ref["train_img_s"], ref["eval_img_s"], FULL["models"], train_eval=0)
        print(f"  tutorial loop                   {ref_min:5.1f} min")
        pair_eval = sum(r["eval_img_s"] for r in pair)
        print(f"speed-up of the full comparison vs the tutorial loop: {ref_min / ours_min:.2f}x")
        seq_eval = seq["eval_img_s"] / ref["eval_img_s"]
        print(f"evaluation vs the tutorial loop: one process with all cores {seq_eval:.2f}x; "
              f"the concurrent pair together {pair_eval / ref['eval_img_s']:.2f}x "
              f"(each process alone {slowest['eval_img_s'] / ref['eval_img_s']:.2f}x)")  # fmt: skip

    if args.k_sweep:
        print("\nK variants, each the same steps; wall time relative to K=1 (K separate runs would be K x):")
        sweep = [int(v) for v in args.k_sweep.split(",")]
        base = None
        for kk in sweep:
            res, wall = run_concurrently(root, kk, max(1, cores // kk), args)
            base = base or wall
            for r in res:
                record(f"k-sweep processes K={kk}", r, kk, wall)
            total = sum(r["train_img_s"] for r in res)
            print(f"  K={kk} as {kk} process(es): wall {wall:6.1f} s = {wall / base:4.2f}x K=1, "
                  f"{total:7.0f} train img/s together")  # fmt: skip
            if kk > 1:
                r, wall = run_stacked(root, kk, cores, args)
                record(f"k-sweep stacked K={kk}", r, kk, wall)
                print(f"  K={kk} stacked, 1 process:  wall {wall:6.1f} s = {wall / base:4.2f}x K=1, "
                      f"{r['train_img_s']:7.0f} train img/s together, {r['eval_img_s']:7.0f} eval img/s")  # fmt: skip
    print(f"\npeak RSS (this process or any child): {peak_rss_mb():.0f} MB")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"results: {path}")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
