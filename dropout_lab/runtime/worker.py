"""Train one variant, or several on one device, in its own process: `python -m dropout_lab.runtime.worker --device D
--parent PID < job.json`.

Why a process per variant: torch's global RNG (dropout masks) and thread pool are per process,
so two variants in threads of one process would interleave random draws (not reproducible) and
oversubscribe the cores. Several variants share one process safely (stacked or side by side): each
draws from its own generators (core/stacked.py). Each worker gets `threads` intra-op threads (cores /
processes on CPU) or a GPU, which several may share (the device plan, runtime/devices.py).
Protocol: one JSON object per stdout line —
  {"event": "start", ...} · {"event": "epoch", "variant": i, ...} per variant and epoch
  · {"event": "done", "results": [one per variant]}
  · {"event": "log", "level": ..., "logger": ..., "message": ...} for the project's log records
  · {"event": "error", "kind": "oom"|"data"|"disk"|"fault"|"crash", "message": ...} before a non-zero exit.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

from dropout_lab.redact import redact, redact_logs

EXIT_OOM, EXIT_DATA, EXIT_FAULT, EXIT_DISK, EXIT_CRASH = 3, 4, 5, 6, 1
# A retry cannot fix these: the disk is still full, the folder still read-only.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def emit(event: str, **payload) -> None:
    print(json.dumps({"event": event, **payload}), flush=True)


class ForwardLogs(logging.Handler):
    """The project's log records (a checkpoint set aside, a lock wait, ...) go to the launching task
    as `log` events, which logs them in the flow run: they reach the Prefect UI, not just stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        emit("log", level=record.levelno, logger=record.name, message=record.getMessage())


def forward_logs() -> None:
    handler = ForwardLogs(logging.INFO)
    project = logging.getLogger("dropout_lab")
    project.addHandler(handler)
    project.setLevel(logging.INFO)
    project.propagate = False  # not twice (stderr is only read when the process fails)


def die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGKILL when the launching process dies (kill -9 included), so no orphan keeps training.

    (Strictly, when the launching *thread* exits: `launcher.run_worker` blocks that thread on this
    process's output until it ends, and `launcher.prestart` runs in the main thread, so the two
    coincide.)"""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the worker notices a dead parent at its next write instead
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(EXIT_CRASH)


def provenance(job: dict) -> dict:
    """Where this training's data and code come from, as measured here: the dataset, the checksums of
    the files it reads and the key of the code it runs. DataError when the data is not what the flow
    checked (`job["data_fingerprint"]`), or the code changed since the run began."""
    from dropout_lab.core.data import DataError, measured_digests
    from dropout_lab.keys import TRAIN_CODE, code_hash

    measured = {"dataset": job["dataset"], "data_fingerprint": measured_digests(Path(job["data_root"]))[1],
                "code": code_hash(TRAIN_CODE)}  # fmt: skip
    if measured["data_fingerprint"] != job["data_fingerprint"]:
        raise DataError(f"the data at {job['data_root']} changed since this run checked it (its files' checksums "
                        "differ); rerun to check it again")  # fmt: skip
    if measured["code"] != job["code"]:
        raise DataError("the training code changed since this run began; rerun with the code as it is now")
    return measured


def graphs_for(cfgs: list, mode: str) -> bool:
    """Whether these variants train as CUDA graphs (`--cuda-graphs` MODE), after checking that they may train
    as one computation; `on` where graphs cannot hold the step says why, in one log line."""
    from dropout_lab.runtime.devices import check_stackable, graphs_wanted

    check_stackable(cfgs)
    cfg = cfgs[0]
    graphed, why_not = graphs_wanted(mode, cfg.device, cfg.precision, cfg.compile)
    if why_not and mode == "on":
        logging.getLogger("dropout_lab.runtime.worker").info("--cuda-graphs on: %s; training eagerly", why_not)
    return graphed


def run_job(job: dict, cuda_ready: threading.Thread | None = None, startup: dict | None = None) -> list[dict]:
    """Train the job's variants (one, or several on one device) with `fit`; one result each.

    `cuda_ready`: the thread creating the CUDA context (`main`), joined before training; `startup`:
    seconds spent before the job came, reported with the `start` event."""
    import torch

    from dropout_lab.config import TrainConfig
    from dropout_lab.core.checkpoint import checkpoint_path, epoch_checkpoints, load_checkpoint
    from dropout_lab.core.evaluate import run_data
    from dropout_lab.core.model import Net, count_parameters
    from dropout_lab.core.train import fit
    from dropout_lab.locks import held, remove_dead_leftovers

    cfgs = [TrainConfig(**c) for c in job["configs"]]
    folders = [Path(f) for f in job["checkpoint_dirs"]]
    cfg, attempt = cfgs[0], job.get("attempt", 1)
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    if cfg.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+; convs use TF32 by default
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()  # the job's own clock (wall_seconds) starts when the job came
    measured = provenance(job)
    data = run_data(job["data_root"], cfg)
    t_data = time.perf_counter()
    if cuda_ready is not None:
        cuda_ready.join()
    startup = {**(startup or {}), "data": t_data - t0}
    if cfg.device.startswith("cuda"):
        startup["cuda_wait"] = time.perf_counter() - t_data
    emit("start", device=cfg.device, threads=torch.get_num_threads(), n_train=len(data.train[1]),
         n_train_eval=len(data.train_eval[1]), n_test=len(data.test[1]), pid=os.getpid(),
         startup={k: round(v, 3) if isinstance(v, float) else v for k, v in startup.items()})  # fmt: skip
    # Two runs training the very same variant (same cache key, same folder) take turns: the second
    # then finds the finished checkpoints and has nothing left to train. Locks in sorted order, so
    # two stacks sharing variants cannot deadlock.
    with ExitStack() as locks:
        for folder in sorted(folders):
            locks.enter_context(held(folder / ".lock", f"the checkpoints of {folder.name}"))
            remove_dead_leftovers(folder, ".*.tmp")  # torn checkpoint writes of a killed run
        if job.get("fresh") and attempt == 1:  # --refresh: retrain from scratch
            for folder in folders:
                for _, path in epoch_checkpoints(folder):
                    path.unlink()
        val_x, val_y = data.val if data.val is not None else (None, None)
        steps = fit(cfgs, *data.train, *data.test, folders, attempt, graphs_for(cfgs, job.get("cuda_graphs", "auto")),
                    progress=True,
                    val_images=val_x, val_labels=val_y, provenance=measured)  # fmt: skip
        for index, record in steps:
            emit("progress" if "progress" in record else "epoch", variant=index, **record)
        # The result is each variant's planned last epoch (fit leaves nothing else as the newest).
        finals = [checkpoint_path(folder, c.epochs) for c, folder in zip(cfgs, folders, strict=True)]
        blobs = [final.read_bytes() for final in finals]
        states = [load_checkpoint(final) for final in finals]
    finished = datetime.now(timezone.utc).isoformat()
    return [
        {
            "checkpoint": str(final),
            "weights_sha256": hashlib.sha256(blob).hexdigest(),
            "history": state["history"],
            "n_params": count_parameters(Net(c.dropout)),
            "started_at": started.isoformat(),
            "finished_at": finished,
            "wall_seconds": time.perf_counter() - t0,
        }
        for c, final, blob, state in zip(cfgs, finals, blobs, states, strict=True)
    ]


def _start_cuda(device: str) -> threading.Thread:
    """Initialise CUDA on `device` in a background thread (joined before training); nothing on CPU."""

    def init() -> None:
        import torch

        if device.startswith("cuda"):
            torch.empty(1, device=device)  # the context, the allocator and the device's kernels image

    thread = threading.Thread(target=init, daemon=True)
    thread.start()
    return thread


def classify(error: BaseException) -> tuple[str, int]:
    """(kind, exit code) of a training failure; the task retries only what a retry can fix."""
    from dropout_lab.core.data import DataError
    from dropout_lab.core.train import InjectedFault

    if "out of memory" in str(error).lower():  # torch.OutOfMemoryError and allocator messages
        return "oom", EXIT_OOM
    if (isinstance(error, OSError) and error.errno in DISK_ERRNOS) or "no space left" in str(error).lower():
        return "disk", EXIT_DISK
    if isinstance(error, DataError):
        return "data", EXIT_DATA
    if isinstance(error, InjectedFault):
        return "fault", EXIT_FAULT
    return "crash", EXIT_CRASH


def main(argv: list[str]) -> int:
    """`python -m dropout_lab.runtime.worker --device D --parent PID`, the job (JSON) on stdin. Started before its
    job may come (`dropout_lab.runtime.launcher.prestart`), it imports torch and creates the device's CUDA context
    in the meantime; when the job comes at once, the context overlaps decoding the data instead."""
    args = dict(zip(argv[::2], argv[1::2], strict=True))
    die_with_parent(int(args["--parent"]))
    # A terminal's Ctrl-C reaches the whole process group; the flow process decides and ends this
    # one with SIGTERM (dropout_lab.runtime.launcher.stop_all), after its last checkpoint was written atomically.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    redact_logs()
    forward_logs()
    try:
        t0 = time.perf_counter()
        import torch  # noqa: F401  (here, before the job: the longest part of a start)

        t_import = time.perf_counter()
        cuda_ready = _start_cuda(args["--device"])
        job = json.load(sys.stdin)
        startup = {"torch_import": t_import - t0, "waited_for_job": time.perf_counter() - t_import,
                   "ahead": args.get("--ahead") == "1"}  # fmt: skip
        emit("done", results=run_job(job, cuda_ready, startup))
        return 0
    except Exception as e:  # report a classified error on the protocol, details on stderr
        traceback.print_exc(file=sys.stderr)
        kind, code = classify(e)
        emit("error", kind=kind, message=redact(f"{type(e).__name__}: {e}"))
        return code


if __name__ == "__main__":
    status = main(sys.argv[1:])
    # The flow reads this process's output to its end: skip collecting torch's objects at exit.
    gc.freeze()
    sys.exit(status)
