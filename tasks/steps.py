"""Prefect tasks: thin wrappers around the pure functions of this package.

Caching (tasks/cache.py `ResultOf`): each task's key covers what identifies its result *and the source
of the project modules that compute it*, found from their imports, so an edit to the training loop
retrains while an edit to the plots only re-renders. A cached result whose files are gone from disk
is forgotten and computed again. Results persist as JSON under the flow's `cache_dir`.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.runtime import flow_run as current_flow_run
from prefect.runtime import task_run as current_task_run
from prefect.tasks import exponential_backoff

from tasks import history, tracking
from tasks.cache import ResultOf, code_hash, stable_hash
from tasks.config import TrainConfig
from tasks.data import (
    CIFAR10_URL,
    DataInfo,
    DownloadError,
    ensure_cifar10,
    ensure_fake,
    load_split,
    read_class_names,
    still_on_disk,
)
from tasks.history import HISTORY_FILE, code_version
from tasks.launcher import TrainingFailed, run_worker, worker_job
from tasks.progress import bars
from tasks.redact import redact
from tasks.report import report_order, write_report
from tasks.results import TrainResult
from tasks.train import format_epoch, format_startup
from tasks.trend import table_rows

TRAIN_CODE = "tasks.worker"  # the training process: everything it imports decides the weights


def slug(text: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _error_of(state) -> BaseException | None:
    data = state.data if isinstance(state.data, BaseException) else None
    if data is None:
        try:
            data = state.result(raise_on_failure=False)
        except Exception as e:
            data = e
    return data if isinstance(data, BaseException) else None


# --- fetch ---------------------------------------------------------------------------------------


def retry_on_network_error(task, task_run, state) -> bool:
    return isinstance(_error_of(state), DownloadError)


@task(
    name="fetch_cifar10",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),  # 2, 4, 8 s
    retry_condition_fn=retry_on_network_error,
    # The data folder and source; forgotten when the files it describes were deleted or replaced.
    cache_policy=ResultOf(
        identity=lambda p: ("fetch", str(Path(p["data_dir"]).resolve()), p["dataset"], p["url"]),
        code="tasks.data",
        still_there=still_on_disk,
    ),
    persist_result=True,
)
def fetch_cifar10(data_dir: str, dataset: str = "cifar10", url: str = CIFAR10_URL) -> DataInfo:
    """Reuse a local copy or download (md5-checked) the CIFAR-10 python archive; `fake` generates one."""
    return ensure_fake(data_dir) if dataset == "fake" else ensure_cifar10(data_dir, url)


# --- train ---------------------------------------------------------------------------------------


def train_key(cfg: TrainConfig, data_fingerprint: str) -> str:
    """One variant's training identity: its config, the data, the training process's code."""
    return stable_hash("train", cfg.to_dict(), data_fingerprint, code_hash(TRAIN_CODE))


def checkpoint_dir(cache_dir: str, cfg: TrainConfig, data: DataInfo) -> Path:
    """Per-variant checkpoint folder, keyed like its training: a rerun finds its own checkpoints,
    whether it trained alone or in a stack."""
    return Path(cache_dir) / "checkpoints" / f"{slug(cfg.run_name)}-{train_key(cfg, data.fingerprint)[:16]}"


def retry_unless_hopeless(task, task_run, state) -> bool:
    """Retry crashes and injected faults (the retry resumes from the checkpoint); not OOM, bad data or a
    full/read-only disk, which fail the same way again, nor a run stopped by a signal."""
    err = _error_of(state)
    return not (isinstance(err, TrainingFailed) and err.kind in ("oom", "data", "disk", "stopped"))


def group_label(cfgs: list[TrainConfig]) -> str:
    """`dropout=0.25, seed=0`; two together: `dropout=0.25, seed=0 + baseline, seed=0`; more: `6 variants on cuda:0`."""
    if len(cfgs) <= 2:
        return " + ".join(c.run_name for c in cfgs)
    return f"{len(cfgs)} variants on {cfgs[0].device}"


# --- device slots ----------------------------------------------------------------------------------
# How many training processes may run at once on a device is a Prefect global concurrency limit per
# machine and device, so every flow run, served deployment, worker and Dask task on that machine
# shares it (a module-level semaphore would limit one process only).


_creating = threading.Lock()


def slot_name(device: str) -> str:
    """`dropout-lab-HOST-cpu`, `dropout-lab-HOST-cuda-0`: devices belong to a machine."""
    return f"dropout-lab-{slug(socket.gethostname())}-{slug(device)}"


def ensure_slots(device: str, size: int) -> str:
    """Create the device's limit with the plan's size on first use; an existing one (perhaps resized
    in the UI) is kept as it is. Returns its name."""
    name = slot_name(device)
    with _creating, get_client(sync_client=True) as client:  # one thread at a time; other processes: below
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size))
            except (ObjectAlreadyExists, httpx.HTTPStatusError):  # created meanwhile (SQLite answers 500)
                client.read_global_concurrency_limit_by_name(name)  # raises if it really is missing
    return name


# Prefect's temporary server does not run the service that reclaims expired leases, so a run killed
# with -9 would hold its slots there forever (in the SQLite file the next temporary server reuses).
# Runs on a temporary server therefore limit themselves within their own process, all they share.
TEMPORARY_SERVER_ENV = "DROPOUT_LAB_TEMPORARY_SERVER"
_local_slots: dict[str, threading.BoundedSemaphore] = {}


@contextlib.contextmanager
def device_slot(device: str, size: int, logger) -> Iterator[None]:
    """Hold one of the device's `size` slots while training; say so when all are taken."""
    local = bool(os.environ.get(TEMPORARY_SERVER_ENV))
    with (_local_slot if local else _prefect_slot)(device, size, logger):
        yield


@contextlib.contextmanager
def _prefect_slot(device: str, size: int, logger) -> Iterator[None]:
    # A lost lease renewal (server hiccup) does not kill a training hours in; a killed run's lease
    # lapses after a minute (the shortest the server takes).
    name = ensure_slots(device, size)
    hold = {"occupy": 1, "strict": True, "raise_on_lease_renewal_failure": False, "lease_duration": 60}
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(concurrency(name, timeout_seconds=0.5, **hold))
        except TimeoutError:
            logger.info("all slots of %s are taken (other trainings on %s): waiting for one", name, device)
            stack.enter_context(concurrency(name, **hold))
        yield


@contextlib.contextmanager
def _local_slot(device: str, size: int, logger) -> Iterator[None]:
    with _creating:
        slot = _local_slots.setdefault(device, threading.BoundedSemaphore(size))
    if not slot.acquire(blocking=False):
        logger.info("all %d slots of %s are taken by this run's other trainings: waiting for one", size, device)
        slot.acquire()
    try:
        yield
    finally:
        slot.release()


def train_run_name() -> str:
    return f"train[{group_label(current_task_run.parameters['cfgs'])}]"


@task(
    name="train",
    task_run_name=train_run_name,
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=retry_unless_hopeless,
    # Threads, slots, graphs, layout and `fresh` change how, not what, it trains. Forgotten when a
    # checkpoint is gone.
    cache_policy=ResultOf(
        identity=lambda p: [train_key(c, p["data"].fingerprint) for c in p["cfgs"]],
        code=TRAIN_CODE,
        still_there=lambda results: all(Path(r.checkpoint).is_file() for r in results),
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
    layout: str = "stacked",
) -> list[TrainResult]:
    """Train one variant, or several sharing a device (`layout`: stacked, or side by side on CUDA
    streams), in its own process, once one of the device's `slots` is free, with CUDA graphs per
    `cuda_graphs`; log and publish progress once per variant and epoch.

    Resumes from each variant's checkpoints unless `fresh` (a refresh), which starts over.
    """
    logger = get_run_logger()
    folders = [checkpoint_dir(cache_dir, c, data) for c in cfgs]
    job = worker_job(cfgs, data.root, folders, threads, cuda_graphs, layout, fresh=fresh,
                     attempt=current_task_run.run_count or 1)  # fmt: skip
    names = [c.run_name for c in cfgs]
    progress = [create_progress_artifact(0.0, key=f"train-progress-{slug(name)}", description=f"train[{name}]")
                for name in names]  # fmt: skip
    done, start, resumed_from, graphed = None, None, [None] * len(cfgs), [False] * len(cfgs)
    try:
        with device_slot(cfgs[0].device, slots, logger):
            for event in run_worker(job):
                if event["event"] == "start":
                    start = event
                    for name, cfg in zip(names, cfgs, strict=True):
                        bars.update(name, 0, cfg.epochs, "starting")
                    together = {"stacked": "stacked with", "streams": "side by side with"}[layout]
                    stacked = f", {together} {len(cfgs) - 1} other variant(s)" if len(cfgs) > 1 else ""
                    logger.info("train[%s] on %s, %d threads, %d train (%d re-evaluated each epoch) / %d test images%s"
                                "; started in %s", group_label(cfgs), event["device"], event["threads"],
                                event["n_train"], event["n_train_eval"], event["n_test"], stacked,
                                format_startup(event.get("startup", {})))  # fmt: skip
                elif event["event"] == "epoch":
                    i = event["variant"]
                    name, epochs = names[i], cfgs[i].epochs
                    if resumed_from[i] is None:
                        resumed_from[i] = event["resumed_from"]
                    graphed[i] = event.get("cuda_graphs", False)
                    if event["resumed_from"] and event["epoch"] == event["resumed_from"] + 1:
                        logger.info("train[%s] resumed after epoch %d from its checkpoint", name, event["resumed_from"])
                    logger.info(format_epoch(name, epochs, event))
                    update_progress_artifact(progress[i], 100.0 * event["epoch"] / epochs)
                    bars.update(name, event["epoch"], epochs, f"test acc {event['test_acc']:.2%}")
                elif event["event"] == "log":
                    logger.log(event["level"], "train[%s]: %s", group_label(cfgs), event["message"])
                elif event["event"] == "done":
                    done = event
    except TrainingFailed as e:
        if e.details:
            logger.error("train[%s] failed; the training process's last lines:\n%s", group_label(cfgs), e.details)
        if e.kind == "oom":
            raise TrainingFailed(
                f"train[{group_label(cfgs)}] ran out of GPU memory on {cfgs[0].device} at batch size "
                f"{cfgs[0].batch_size} (precision {cfgs[0].precision}, {len(cfgs)} variant(s) stacked); "
                f"lower --batch-size, use --stack off or another device. {e}", "oom"
            ) from None  # fmt: skip
        raise
    for artifact in progress:
        update_progress_artifact(artifact, 100.0)
    if done is None or start is None:
        raise TrainingFailed(f"train[{group_label(cfgs)}]: worker ended without a result", "crash")
    return [
        TrainResult(
            config=cfg,
            checkpoint=r["checkpoint"],
            weights_sha256=r["weights_sha256"],
            history=r["history"],
            n_params=r["n_params"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
            train_seconds=r["wall_seconds"],
            threads=threads,
            n_train=start["n_train"],
            n_train_eval=start["n_train_eval"],
            n_test=start["n_test"],
            resumed_from=cfg.epochs if resumed is None else resumed,
            stacked_with=len(cfgs) if layout == "stacked" else 1,
            trained_as="alone" if len(cfgs) == 1 else layout,
            cuda_graphs=was_graphed,
        )
        for cfg, r, resumed, was_graphed in zip(cfgs, done["results"], resumed_from, graphed, strict=True)
    ]


# --- report --------------------------------------------------------------------------------------


def publish_report(markdown: str, history: list[dict], experiment: str, cached: bool) -> None:
    """The report as artifacts keyed by experiment (`dropout-comparison-cifar10-p0-25-s0-e8`), so each
    experiment's nightly runs line up under one key and different experiments never mix. A cached
    report is already stored under its key: no second ~200 KB copy of the same figure."""
    logger = get_run_logger()
    key = slug(experiment)
    if cached:
        logger.info("report unchanged (cached): artifact dropout-comparison-%s already holds it", key)
        return
    create_markdown_artifact(
        markdown, key=f"dropout-comparison-{key}", description=f"Dropout vs baseline: {experiment}"
    )
    create_table_artifact(history, key=f"dropout-history-{key}", description=f"Per-epoch history: {experiment}")


def tag_flow_run(*tags: str) -> None:
    """Add tags to the current flow run (CLI, served and worker runs alike): filterable in the UI."""
    run = FlowRunContext.get().flow_run
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, tags=sorted({*run.tags, *tags}))


def _report_identity(p: dict) -> tuple:
    trained = [t for group in p["trained"] for t in group]
    return ("report", p["run_dir"], [t.weights_sha256 for t in trained], [t.history for t in trained],
            p["data"].fingerprint)  # fmt: skip


@task(
    name="render_report",
    # Forgotten when the report folder was deleted since.
    cache_policy=ResultOf(
        identity=_report_identity,
        code="tasks.report",
        still_there=lambda result: Path(result[0], "summary.parquet").is_file(),
    ),
    persist_result=True,
)
def render_report(trained: list[list[TrainResult]], data: DataInfo, run_dir: str) -> tuple[str, str]:
    """Parquet tables + PNGs into `run_dir` from each training task's results; returns (run_dir,
    markdown for the UI). Models in the report's order: dropout rates ascending, the baseline last."""
    trained = report_order(t for group in trained for t in group)
    train_x, train_y = load_split(data.root, train=True, limit=25)
    samples = (train_x.numpy(), train_y.numpy())
    path, markdown = write_report(Path(run_dir), trained, data, samples, read_class_names(data.root))
    return str(path), markdown


# --- run history -----------------------------------------------------------------------------------

RECENT_RUNS = 20  # runs in the UI's table of the latest runs


def record_history(
    results: list[TrainResult], data: DataInfo, out: str, folder: str, experiment: str
) -> tuple[list[dict], list[dict]] | None:
    """Append this run's models to `<out>/history.sqlite` (a model trained by an earlier run, reused
    from the cache, is not recorded again) and, when rows were added, show the latest runs there as
    the table artifact `dropout-lab-runs`. Returns the run's history rows (per model, per epoch) when
    it recorded any, else None. Not a task: a rerun that reuses everything stays all Cached, and this
    takes milliseconds."""
    logger = get_run_logger()
    path = Path(out) / HISTORY_FILE
    meta = {
        "recorded_at": datetime.now(UTC),
        "flow_run_id": str(current_flow_run.id or ""),
        "flow_run_name": current_flow_run.name or "",
        "code_version": code_version(),
        "experiment": experiment,
        "experiment_hash": history.split_report_folder(folder)[1],
        "report_folder": folder,
    }
    rows = history.model_rows(results, data, meta)
    added = history.append(path, *rows)
    if not added:
        logger.info("history: these models are already recorded in %s", path)
        return None
    logger.info("history: %d models recorded in %s (python flows/history.py --out %s)", added, path, out)
    recent = history.read(path, last=RECENT_RUNS)[::-1]
    create_table_artifact(table_rows(recent), key="dropout-lab-runs", description=f"Latest runs recorded in {path}")
    return rows


@task(name="log_to_mlflow", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE, persist_result=False)
def log_to_mlflow(out: str, runs: list[dict], epochs: list[dict], folder: str) -> str:
    """One parent MLflow run for this flow run, a child per model (tasks/tracking.py)."""
    files = [Path(folder, name) for name in ("comparison.png", "samples.png", "summary.md")]
    run_id = tracking.log_flow_run(out, runs, epochs, [f for f in files if f.is_file()])
    get_run_logger().info("mlflow: run %s in %s, experiment %s", run_id, redact(tracking.tracking_uri(out)),
                          tracking.EXPERIMENT)  # fmt: skip
    return run_id
