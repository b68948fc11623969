"""Train one variant in its own process: `python -m tasks.worker < job.json`.

Why a process per variant: torch's global RNG (dropout masks) and thread pool are per process,
so two variants in threads of one process would interleave random draws (not reproducible) and
oversubscribe the cores. Each worker gets `threads` intra-op threads (cores / variants on CPU)
or its own GPU. Protocol: one JSON object per stdout line —
  {"event": "start", ...} · {"event": "epoch", ...} per epoch · {"event": "done", ...}
  · {"event": "error", "kind": "oom"|"data"|"fault"|"crash", "message": ...} before a non-zero exit.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

EXIT_OOM, EXIT_DATA, EXIT_FAULT, EXIT_CRASH = 3, 4, 5, 1


def emit(event: str, **payload) -> None:
    print(json.dumps({"event": event, **payload}), flush=True)


def run_job(job: dict) -> dict:
    import torch

    from tasks.checkpoint import epoch_checkpoints
    from tasks.config import TrainConfig
    from tasks.data import load_split
    from tasks.model import Net, count_parameters
    from tasks.train import fit

    cfg = TrainConfig(**job["config"])
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    if cfg.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    train_x, train_y = load_split(job["data_root"], train=True, limit=cfg.limit_train)
    test_x, test_y = load_split(job["data_root"], train=False, limit=cfg.limit_test)
    emit("start", device=cfg.device, threads=torch.get_num_threads(), n_train=len(train_y), n_test=len(test_y))
    for record in fit(cfg, train_x, train_y, test_x, test_y, job["checkpoint_dir"], job.get("attempt", 1)):
        emit("epoch", **record)
    _, final = epoch_checkpoints(Path(job["checkpoint_dir"]))[0]
    from tasks.checkpoint import load_checkpoint

    state = load_checkpoint(final)
    return {
        "checkpoint": str(final),
        "weights_sha256": hashlib.sha256(final.read_bytes()).hexdigest(),
        "history": state["history"],
        "n_params": count_parameters(Net(cfg.dropout)),
        "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "wall_seconds": time.perf_counter() - t0,
    }


def main() -> int:
    job = json.load(sys.stdin)
    try:
        emit("done", **run_job(job))
        return 0
    except Exception as e:  # report a classified error on the protocol, details on stderr
        from tasks.data import DataError
        from tasks.train import InjectedFault

        traceback.print_exc(file=sys.stderr)
        text = f"{type(e).__name__}: {e}"
        if "out of memory" in str(e).lower():
            emit("error", kind="oom", message=text)
            return EXIT_OOM
        if isinstance(e, DataError):
            emit("error", kind="data", message=text)
            return EXIT_DATA
        if isinstance(e, InjectedFault):
            emit("error", kind="fault", message=text)
            return EXIT_FAULT
        emit("error", kind="crash", message=text)
        return EXIT_CRASH


if __name__ == "__main__":
    sys.exit(main())
