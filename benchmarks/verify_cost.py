"""What checking a cached result costs, side by side in one run (docs/design.md, *What a cached result can claim*).

    python benchmarks/verify_cost.py --data-dir DIR [--limit-train N] [--epochs 1] [--repeats 3]

Trains one model per rate through the training process (as the flow does), then times, for each:
- the checks every cached result gets (its checkpoint's SHA-256, load, identity, final epoch, history);
- the re-measurement a checkpoint this user's runs did not write gets (its final evaluation again, from
  its weights, on the test, train-eval and held-out images);
- measuring the data's checksums, and decoding the data once per process for the re-measurement;
and prints how far the re-measured numbers are from the recorded ones (images and loss).
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

import torch  # noqa: E402

from dropout_lab.config import TrainConfig  # noqa: E402
from dropout_lab.core.checkpoint import checked_claim  # noqa: E402
from dropout_lab.core.claims import identity  # noqa: E402
from dropout_lab.core.data import FOLDER_NAME, _md5_memo, describe_folder  # noqa: E402
from dropout_lab.core.evaluate import run_data  # noqa: E402
from dropout_lab.core.model import Net  # noqa: E402
from dropout_lab.core.verify import remeasure  # noqa: E402
from dropout_lab.keys import TRAIN_CODE, code_hash  # noqa: E402
from dropout_lab.runtime.processes import run_training  # noqa: E402
from dropout_lab.runtime.training import job_for  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--limit-train", type=int, default=5000, help="images trained on (the evaluation is full-size)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.25, 0.0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = args.data_dir / FOLDER_NAME

    def measure_data():
        _md5_memo.clear()
        return describe_folder(root, warn=False)

    t_md5, data = timed(measure_data, args.repeats)
    size = sum(f.stat().st_size for f in root.iterdir()) / 1e6
    print(f"data checksums measured: {t_md5:.2f} s (7 files, {size:.0f} MB)")
    provenance = {"dataset": data.dataset, "data_fingerprint": data.fingerprint, "code": code_hash(TRAIN_CODE)}
    print(f"torch threads in this process: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(prefix="verify-cost-") as tmp:
        for rate in args.rates:
            cfg = TrainConfig(dropout=rate, epochs=args.epochs, limit_train=args.limit_train)
            folder = Path(tmp) / f"p{rate}"
            job = job_for([cfg], data, [folder], 1, "off")  # one thread, as each of two trainings on 2 cores
            done = [e for e in run_training(job) if e["event"] == "done"][0]["results"][0]
            expected = identity(cfg.to_dict(), provenance)
            t_claim, state = timed(
                lambda c=cfg, d=done, f=folder, e=expected: checked_claim(d["checkpoint"], d["weights_sha256"], f, e,
                                                                          d["history"]), args.repeats)  # fmt: skip
            start = time.perf_counter()
            sets = run_data(root, cfg)
            t_decode = time.perf_counter() - start
            model = Net(cfg.dropout).to(memory_format=torch.channels_last)
            model.load_state_dict(state["model"])
            t_eval, measured = timed(lambda m=model, s=sets, c=cfg: remeasure(m, s, c), args.repeats)
            record = done["history"][-1]
            images = {n: round(abs(record[f"{n}_acc"] - r["acc"]) * sum(map(sum, r["confusion"])))
                      for n, r in measured.items()}  # fmt: skip
            losses = {n: abs(record[f"{n}_loss"] - r["loss"]) for n, r in measured.items()}
            counts = {n: sum(map(sum, r["confusion"])) for n, r in measured.items()}
            print(f"dropout {rate:g}: checks of every cached result {t_claim * 1000:.0f} ms; re-measuring its final "
                  f"numbers {t_eval:.2f} s ({', '.join(f'{n} {c:,}' for n, c in counts.items())} images); decoding "
                  f"the data once {t_decode:.2f} s; re-measured vs recorded: images {images}, loss max "
                  f"{max(losses.values()):.1e}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
