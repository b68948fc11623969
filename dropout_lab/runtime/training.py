"""One training process's work: the job's variants (one, or several stacked on one device) trained with
`core.train.fit`, its events sent to the launching task as they happen (runtime/processes.py runs it in a
process of its own, from the standard library's process pool).

Why a process per training: torch's global RNG (dropout masks) and thread pool are per process, so two
variants in threads of one process would interleave random draws (not reproducible) and oversubscribe
the cores. Several variants share one process safely (stacked or side by side): each draws from its own
generators (core/stacked.py). Events are dicts: `start` once, `epoch` per variant and epoch, `progress`
every tenth of an epoch, `log` for the project's log records; the results are the call's return value
and a failure its exception.
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

from dropout_lab.redact import redact_logs

Emit = Callable[[dict], None]
_emit: Emit | None = None  # this process's channel to its launching task (set by `start`)


class ForwardLogs(logging.Handler):
    """The project's log records (a checkpoint set aside, a lock wait, ...) go to the launching task as
    `log` events, which logs them in the flow run: they reach the Prefect UI, not just stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        if _emit is not None:
            _emit({"event": "log", "level": record.levelno, "message": record.getMessage()})


def start(events, threads: int, environment: dict[str, str], launcher: int) -> None:
    """The process pool's initializer, before the job: the launching process's environment as it is now
    (the fork server's is the one it had when the server started), die with the process that launched this
    one (a kill -9 of the run takes its trainings along), leave Ctrl-C to the run (it ends this process
    after its last checkpoint was written atomically), forward the project's log records, use `threads`
    cores."""
    global _emit
    os.environ.clear()
    os.environ.update(environment)
    die_with(launcher)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _emit = events.send
    _emit({"event": "pid", "pid": os.getpid()})  # so the task can end this process before it starts training
    redact_logs()
    project = logging.getLogger("dropout_lab")
    project.addHandler(ForwardLogs(logging.INFO))
    project.setLevel(logging.INFO)
    project.propagate = False  # not twice
    if threads:
        import torch

        torch.set_num_threads(threads)


def die_with(pid: int) -> None:
    """SIGKILL this process when process `pid` ends. Not the kernel's parent-death signal: this process's
    parent is the fork server, which outlives the run as long as any process it forked holds its
    keep-alive pipe (every one does), so after a kill -9 of the run both would wait on each other."""
    try:
        watched = os.pidfd_open(pid)  # Linux 5.3+; readable once the process has ended
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)
    except (OSError, AttributeError):
        return  # no pidfd here: a run killed with -9 leaves this training to finish alone

    def watch() -> None:
        select.select([watched], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-launcher", daemon=True).start()


def job_for(cfgs: list, data, checkpoint_dirs: list, threads: int, cuda_graphs: str, **more) -> dict:
    """A training's job (plain values, as a process receives it): its variants, the data as the run checked
    it (a DataInfo: its folder, dataset and measured fingerprint), the training code's key, one checkpoint
    folder per variant, CPU threads and CUDA graphs; `more`: e.g. fresh, attempt."""
    from dropout_lab.keys import TRAIN_CODE, code_hash

    return {"configs": [c.to_dict() for c in cfgs], "data_root": str(data.root), "dataset": data.dataset,
            "data_fingerprint": data.fingerprint, "code": code_hash(TRAIN_CODE),
            "checkpoint_dirs": [str(d) for d in checkpoint_dirs], "threads": threads, "cuda_graphs": cuda_graphs,
            **more}  # fmt: skip


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
        logging.getLogger(__name__).info("--cuda-graphs on: %s; training eagerly", why_not)
    return graphed


def train(job: dict, emit: Emit | None = None) -> list[dict]:
    """Train the job's variants (one, or several on one device) with `fit`; one result each. Events go to
    `emit`, else to this process's launching task (`start`)."""
    import torch

    from dropout_lab.config import TrainConfig
    from dropout_lab.core.checkpoint import checkpoint_path, epoch_checkpoints, load_checkpoint
    from dropout_lab.core.evaluate import run_data
    from dropout_lab.core.model import Net, count_parameters
    from dropout_lab.core.train import fit
    from dropout_lab.locks import held, remove_dead_leftovers

    emit = emit or _emit
    cfgs = [TrainConfig(**c) for c in job["configs"]]
    folders = [Path(f) for f in job["checkpoint_dirs"]]
    cfg, attempt = cfgs[0], job.get("attempt", 1)
    if cfg.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+; convs use TF32 by default
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    measured = provenance(job)
    data = run_data(job["data_root"], cfg)
    startup = {"data": time.perf_counter() - t0}
    if cfg.device.startswith("cuda"):
        t_cuda = time.perf_counter()
        torch.empty(1, device=cfg.device)  # the context, the allocator and the device's kernels image
        startup["cuda"] = time.perf_counter() - t_cuda
    emit({"event": "start", "device": cfg.device, "threads": torch.get_num_threads(), "n_train": len(data.train[1]),
          "n_train_eval": len(data.train_eval[1]), "n_test": len(data.test[1]), "pid": os.getpid(),
          "startup": startup})  # fmt: skip
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
                    progress=True, val_images=val_x, val_labels=val_y, provenance=measured)  # fmt: skip
        for index, record in steps:
            emit({"event": "progress" if "progress" in record else "epoch", "variant": index, **record})
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
