"""The `train` task: one variant, or several stacked on one device, trained in its own process
(dropout_lab/runtime/processes.py), with its progress logged and published once per variant and epoch."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import task_run as current_task_run

from dropout_lab.config import TrainConfig, variant_of
from dropout_lab.core.data import DataInfo
from dropout_lab.keys import TRAIN_CODE, code_hash, train_key
from dropout_lab.naming import group_label, slug
from dropout_lab.results import TrainResult, results_of
from dropout_lab.runtime.console import DETAILS, quiet
from dropout_lab.runtime.processes import TrainingFailed, run_training
from dropout_lab.runtime.progress import bars, format_epoch, format_startup
from dropout_lab.runtime.training import job_for
from tasks.cache import ResultOf, error_of
from tasks.slots import device_slot


def checkpoint_dir(cache_dir: str, cfg: TrainConfig, data: DataInfo) -> Path:
    """Per-variant checkpoint folder, keyed like its training: a rerun finds its own checkpoints,
    whether it trained alone or in a stack."""
    return Path(cache_dir) / "checkpoints" / f"{slug(cfg.run_name)}-{train_key(cfg, data.fingerprint)[:16]}"


def training_problem(results: list[TrainResult], p: dict) -> str | None:
    """Why cached training results cannot stand for these variants (None: they can): each must be its own
    variant's, built on its final checkpoint of this very identity (config, data, code), with the
    numbers its weights measure (dropout_lab/core/verify.py)."""
    from dropout_lab.core.claims import identity, known_claim

    cfgs, data = p["cfgs"], p["data"]
    if len(results) != len(cfgs):
        return f"{len(results)} results for {len(cfgs)} variants"
    provenance = {"dataset": data.dataset, "data_fingerprint": data.fingerprint, "code": code_hash(TRAIN_CODE)}
    for r, cfg in zip(results, cfgs, strict=True):
        if r.config != cfg:
            return f"a result for {r.config.run_name}, not {cfg.run_name}"
        expected, folder = identity(cfg.to_dict(), provenance), checkpoint_dir(p["cache_dir"], cfg, data)
        if known_claim(r.checkpoint, r.weights_sha256, folder, expected, r.history):
            continue  # this user's run wrote (or checked) these very bytes with this claim: no torch, no load
        from dropout_lab.core.verify import cached_result_problem  # torch: only for a checkpoint it does not know

        problem = cached_result_problem(r.checkpoint, r.weights_sha256, r.history, folder, expected, data.root, cfg)
        if problem:
            return f"{cfg.run_name}: {problem}"
    return None


def retry_unless_hopeless(task, task_run, state) -> bool:
    """Retry crashes and injected faults (the retry resumes from the checkpoint); not OOM, bad data or a
    full/read-only disk, which fail the same way again, nor a run stopped by a signal."""
    err = error_of(state)
    return not (isinstance(err, TrainingFailed) and err.kind in ("oom", "data", "disk", "stopped"))


def train_run_name() -> str:
    return f"train[{group_label(current_task_run.parameters['cfgs'])}]"


@task(
    name="train",
    task_run_name=train_run_name,
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=retry_unless_hopeless,
    # Threads, slots, graphs and `fresh` change how, not what, it trains. Forgotten unless every
    # checkpoint it names is there, in its own folder, as recorded.
    cache_policy=ResultOf(
        identity=lambda p: [train_key(c, p["data"].fingerprint) for c in p["cfgs"]],
        code=TRAIN_CODE,
        trust=training_problem,
    ),
    persist_result=True,
)
def train(
    cfgs: list[TrainConfig],
    data: DataInfo,
    cache_dir: str,
    threads: int = 0,
    fresh: bool = False,
    slots: int = 1,
    cuda_graphs: str = "auto",
) -> list[TrainResult]:
    """Train one variant, or several stacked on one device, in its own process once one of the
    device's `slots` is free, with CUDA graphs per `cuda_graphs`. Resumes from each variant's
    checkpoints unless `fresh` (a refresh), which starts over."""
    quiet()  # in a Dask worker process: its terminal shows one line per failure too, as the command line's does
    logger = get_run_logger()
    label = group_label(cfgs)
    folders = [checkpoint_dir(cache_dir, c, data) for c in cfgs]
    job = job_for(cfgs, data, folders, threads, cuda_graphs, fresh=fresh, attempt=current_task_run.run_count or 1)
    names = [c.run_name for c in cfgs]
    progress = [create_progress_artifact(0.0, key=f"train-progress-{slug(name)}", description=f"train[{name}]")
                for name in names]  # fmt: skip
    events: dict[str, dict] = {}  # the training's start and done events
    resumed_from = [None] * len(cfgs)
    try:
        with device_slot(cfgs[0].device, slots, logger):
            for event in run_training(job):
                kind = event["event"]
                events[kind] = event
                if kind == "start":
                    for cfg in cfgs:
                        bars.update(variant_of(cfg).name, cfg.seed, 0, cfg.epochs, "starting")
                    stacked = f", stacked with {len(cfgs) - 1} other variant(s)" if len(cfgs) > 1 else ""
                    logger.info("train[%s] on %s, %d threads, %d train (%d re-evaluated each epoch) / %d test images%s"
                                "; started in %s", label, event["device"], event["threads"], event["n_train"],
                                event["n_train_eval"], event["n_test"], stacked,
                                format_startup(event.get("startup", {})))  # fmt: skip
                elif kind == "epoch":
                    i, epoch = event["variant"], event["epoch"]
                    if resumed_from[i] is None:
                        resumed_from[i] = event["resumed_from"]
                    if event["resumed_from"] and epoch == event["resumed_from"] + 1:
                        logger.info("train[%s] resumed after epoch %d from its checkpoint", names[i], epoch - 1)
                    logger.info(format_epoch(names[i], cfgs[i].epochs, event))
                    update_progress_artifact(progress[i], 100.0 * epoch / cfgs[i].epochs)
                    bars.update(variant_of(cfgs[i]).name, cfgs[i].seed, epoch, cfgs[i].epochs,
                                f"test acc {event['test_acc']:.2%}")  # fmt: skip
                elif kind == "progress":  # every tenth of an epoch
                    i, done = event["variant"], event["epoch"] - 1 + event["progress"]
                    update_progress_artifact(progress[i], 100.0 * done / cfgs[i].epochs)
                    bars.update(variant_of(cfgs[i]).name, cfgs[i].seed, done, cfgs[i].epochs,
                                f"epoch {event['epoch']}: {event['progress']:.0%}")  # fmt: skip
                elif kind == "log":
                    logger.log(event["level"], "train[%s]: %s", label, event["message"])
    except BaseException as e:
        if not isinstance(e, TrainingFailed):
            raise
        if e.details:
            logger.error(
                "train[%s] failed; in the training process:\n%s", label, e.details, extra={DETAILS: True}
            )  # the run's log in the UI; the terminal (no --verbose) skips it
        if e.kind == "oom":
            raise TrainingFailed(
                f"train[{label}] ran out of GPU memory on {cfgs[0].device} at batch size {cfgs[0].batch_size} "
                f"(precision {cfgs[0].precision}, {len(cfgs)} variant(s) stacked); lower --batch-size, use "
                f"--stack off or another device. {e}", "oom"
            ) from None  # fmt: skip
        raise
    for artifact in progress:
        update_progress_artifact(artifact, 100.0)
    if "done" not in events or "start" not in events:
        raise TrainingFailed(f"train[{label}]: the training process ended without a result", "crash")
    return results_of(cfgs, events["done"]["results"], threads, resumed_from)
