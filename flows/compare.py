"""Does dropout help this CNN on CIFAR-10? `python flows/compare.py --help`.

DAG: fetch_cifar10 → (train[dropout=p] ‖ train[baseline]) → render_report. Each training task
evaluates its model after every epoch; the last evaluation is the final result.
The flow's parameters are the single source of truth for the CLI flags and the deployment schema.

No `from __future__ import annotations` here: deployments pickle the flow by value, and its
parameter annotations must be real objects to rebuild the validation schema in the runner.
"""

import argparse
import atexit
import contextlib
import dataclasses
import gc
import hashlib
import inspect
import logging
import os
import sys
from pathlib import Path

# Prefect's embedded server needs ~20 s to start on a small machine; its default patience is less.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

if __name__ == "__main__":  # the command line: Prefect's server boots while torch & co. are imported
    from flows import early_server

    early_server.begin(sys.argv[1:])

from prefect import flow  # noqa: E402
from prefect.runtime import deployment, flow_run  # noqa: E402
from pydantic import ValidationError, create_model  # noqa: E402

from flows.lifecycle import Stopped, start_temporary_server, stop_on_signals, stop_training_on_sigterm  # noqa: E402
from tasks.cache import cache_options  # noqa: E402
from tasks.config import (  # noqa: E402
    BatchSize,
    CacheDir,
    Compile,
    CudaGraphs,
    DataDir,
    Dataset,
    Device,
    Epochs,
    LearningRate,
    LimitTest,
    LimitTrain,
    Mlflow,
    OutDir,
    Precision,
    Rates,
    Refresh,
    Seeds,
    Stack,
    TrainConfig,
    TrainEvalImages,
    check_train_config,
    describe_error,
    flag,
)
from tasks.data import ARCHIVE_NAME, CIFAR10_URL, FOLDER_NAME  # noqa: E402
from tasks.devices import group_layout, process_plan, stack_groups, variant_configs  # noqa: E402
from tasks.launcher import discard_spares, prestart  # noqa: E402
from tasks.preflight import ROOT_ENV, check_folders, confine_folders  # noqa: E402
from tasks.progress import bars  # noqa: E402
from tasks.redact import redact  # noqa: E402
from tasks.report import history_rows, report_order  # noqa: E402
from tasks.steps import (  # noqa: E402
    fetch_cifar10,
    log_to_mlflow,
    publish_report,
    record_history,
    render_report,
    tag_flow_run,
    train,
    train_key,
)
from tasks.tracking import check_available  # noqa: E402

MIRROR_ENV = "DROPOUT_LAB_CIFAR10_URL"  # download from a mirror instead of the official URL


def project_logs_to_prefect() -> None:
    """The project's own log records (tasks.*: data warnings, lock waits, cache refusals) reach the run's
    logs in the UI: Prefect's API handler is added to the `tasks` logger, as PREFECT_LOGGING_EXTRA_LOGGERS
    would do if it were set before Prefect configured logging (served and worker runs import this
    module afterwards)."""
    project = logging.getLogger("tasks")
    project.setLevel(logging.INFO)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in project.handlers:
            project.addHandler(handler)


project_logs_to_prefect()


def seed_list(seeds: list[int]) -> str:
    """`0-4` for a consecutive range, else `0,2,5`."""
    seeds = sorted(set(seeds))
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def experiment_name(configs: list[TrainConfig], dataset: str) -> str:
    """What was compared, without code or data versions: `cifar10-p0.25-s0-e8`. Nightly runs of the same
    experiment share it (their artifacts line up under one key). A run on part of the data says so
    (`-train2000-test500`): a smoke run must not read like a CIFAR-10 result."""
    rates = sorted({c.dropout for c in configs if c.dropout > 0}) or [0.0]
    seeds = sorted({c.seed for c in configs})
    seed_part = "+".join(map(str, seeds)) if len(seeds) <= 3 else f"{len(seeds)}seeds"
    cfg = configs[0]
    size = "".join(
        f"-{split}{limit}" for split, limit in (("train", cfg.limit_train), ("test", cfg.limit_test)) if limit
    )
    return f"{dataset}{size}-p{'+'.join(f'{p:g}' for p in rates)}-s{seed_part}-e{cfg.epochs}"


def run_folder_name(configs: list[TrainConfig], dataset: str, data_fingerprint: str) -> str:
    """Deterministic per experiment, data and code: the same inputs reuse (and overwrite) one folder;
    different parameters never share one, even when started at the same time."""
    digest = hashlib.sha256("".join(train_key(c, data_fingerprint) for c in configs).encode()).hexdigest()
    return f"{experiment_name(configs, dataset)}-{digest[:10]}"


def flow_run_label() -> str:
    """Flow-run names say what runs: `p=0.25 seeds=0-4 e8`, `p=0.1,0.5 seeds=0 e2 fake train400`."""
    p = flow_run.parameters
    try:
        extra = [p["dataset"]] if p["dataset"] != "cifar10" else []
        extra += [f"{k.split('_')[1]}{p[k]}" for k in ("limit_train", "limit_test") if p[k]]
        rates = ",".join(f"{float(r):g}" for r in p["dropout"])
        return " ".join([f"p={rates}", f"seeds={seed_list(p['seeds'])}", f"e{p['epochs']}", *extra])
    except (KeyError, TypeError, ValueError):  # parameters not validated yet: Prefect's default name
        return "compare"


def documented(fn):
    """Append a Google-style `Args:` section built from each parameter's declared help (tasks/config.py):
    Prefect reads it into the deployment form's field descriptions."""
    lines = ["", "Args:"]
    for name, param in inspect.signature(fn).parameters.items():
        lines.append(f"    {name}: {help_text(param.annotation)}")
    fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n"
    return fn


def help_text(annotation) -> str:
    """The description declared with a parameter's type (tasks/config.py)."""
    found = [m.description for m in getattr(annotation, "__metadata__", ()) if getattr(m, "description", None)]
    return found[-1] if found else ""


def parameter_errors(params: dict) -> None:
    """Validate the flow's parameters against its signature, as Prefect does for a deployment run, so
    the CLI and the UI refuse the same values. Raises ValueError '--flag: must be ...' (one line)."""
    signature = inspect.signature(compare.fn).parameters
    model = create_model("compare_parameters", **{n: (p.annotation, p.default) for n, p in signature.items()})
    try:
        model.model_validate(params)
    except ValidationError as e:
        error = e.errors()[0]
        raise ValueError(f"{flag(str(error['loc'][0]))}: {describe_error(error)}") from None


def check_parameters(params: dict, deployed: bool = False) -> tuple[list[TrainConfig], dict[str, str]]:
    """Validate everything before any work, creating nothing until all checks pass: parameters, then
    devices, then folders (confined to the worker's roots in a deployment run). Returns the variant
    configs and the folders to use. Raises ValueError (one line)."""
    parameter_errors(params)
    if params["mlflow"]:
        check_available()
    base = TrainConfig(**{k: params[k] for k in ("epochs", "batch_size", "lr", "precision", "compile",
                                                 "limit_train", "limit_test", "train_eval_images")})  # fmt: skip
    configs = variant_configs(base, list(params["dropout"]), list(params["seeds"]), params["device"])
    stack_groups(configs, params["stack"], params["cuda_graphs"])  # raises for an unknown mode
    for cfg in configs:
        check_train_config(cfg)  # every rate and seed, and precision vs the resolved device
    folders = confine_folders(params) if deployed else {k: params[k] for k in ROOT_ENV}
    data_dir = Path(folders["data_dir"])
    present = params["dataset"] == "fake" or (data_dir / FOLDER_NAME).is_dir() or (data_dir / ARCHIVE_NAME).is_file()
    check_folders(folders["data_dir"], folders["out"], folders["cache_dir"], data_present=present)
    return configs, folders


@flow(name="compare", flow_run_name=flow_run_label, log_prints=True)
@documented
def compare(
    data_dir: DataDir = "data",
    out: OutDir = "artifacts",
    epochs: Epochs = TrainConfig.epochs,
    batch_size: BatchSize = TrainConfig.batch_size,
    lr: LearningRate = TrainConfig.lr,
    dropout: Rates = [TrainConfig.dropout],  # noqa: B006
    seeds: Seeds = [TrainConfig.seed],  # noqa: B006
    device: Device = "auto",
    precision: Precision = "fp32",
    compile: Compile = False,
    stack: Stack = "auto",
    cuda_graphs: CudaGraphs = "auto",
    limit_train: LimitTrain = 0,
    limit_test: LimitTest = 0,
    train_eval_images: TrainEvalImages = TrainConfig.train_eval_images,
    dataset: Dataset = "cifar10",
    refresh: Refresh = False,
    cache_dir: CacheDir = ".dropout-lab",
    mlflow: Mlflow = False,
) -> str:
    """Train every (dropout rate, seed) pair and the baseline concurrently, evaluating each after every
    epoch, and write the report."""
    stop_training_on_sigterm()
    configs, folders = check_parameters(dict(locals()), deployed=deployment.id is not None)
    tag_flow_run("dropout-lab", dataset, configs[0].device.split(":")[0])
    data_dir, out, cache_dir = folders["data_dir"], folders["out"], folders["cache_dir"]
    opts = {**cache_options(cache_dir), "refresh_cache": True if refresh else None}

    data = fetch_cifar10.with_options(**opts)(data_dir, dataset, os.environ.get(MIRROR_ENV, CIFAR10_URL))
    groups, gpu_workers = training_groups(configs, stack, cuda_graphs)
    threads, slots = process_plan(groups)
    with gpu_resource(gpu_workers):
        trained = [train.with_options(**opts).submit(g, data, cache_dir, threads, refresh, slots[g[0].device],
                                                     cuda_graphs, group_layout(g, stack, cuda_graphs))
                   for g in groups]  # fmt: skip
    results = report_order(t for f in trained for t in f.result())  # a failed training raises here, as is
    run_dir = Path(out).resolve() / run_folder_name(configs, dataset, data.fingerprint)
    report = render_report.with_options(**opts)(trained, data, str(run_dir), return_state=True)
    folder, markdown = report.result()
    experiment = experiment_name(configs, dataset)
    publish_report(markdown, history_rows(results, data), experiment, report.name == "Cached")
    recorded = record_history(results, data, out, folder, experiment)  # None: nothing new was trained
    if mlflow and recorded:
        log_to_mlflow(out, *recorded, folder)
    return folder


# --- scale-out ----------------------------------------------------------------------------------------


def training_groups(
    configs: list[TrainConfig], stack: str, cuda_graphs: str = "auto"
) -> tuple[list[list[TrainConfig]], int]:
    """Which variants train together (one training task each), and how many Dask GPU workers there
    are: on a Dask cluster of GPU machines each task gets a worker's GPU, whatever is local."""
    groups = stack_groups(configs, stack, cuda_graphs)
    gpu_workers = dask_gpu_workers()
    if gpu_workers:
        groups = [[dataclasses.replace(c, device="cuda:0") for c in g] for g in groups]
    return groups, gpu_workers


def dask_gpu_workers() -> int:
    """Number of Dask workers advertising a GPU resource (`dask worker --resources GPU=1`), when this
    flow runs on the DaskTaskRunner; 0 otherwise."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or type(ctx.task_runner).__name__ != "DaskTaskRunner":
        return 0
    workers = ctx.task_runner.client.scheduler_info()["workers"].values()
    return sum(1 for w in workers if w.get("resources", {}).get("GPU", 0) >= 1)


def gpu_resource(enabled: bool):
    """Tasks submitted inside ask Dask for one GPU each, so a GPU worker trains one variant at a time."""
    if not enabled:
        return contextlib.nullcontext()
    import dask

    return dask.annotate(resources={"GPU": 1})


def task_runner_for(kind: str, address: str | None, n_workers: int):
    """`thread` (default: threads in this process, each training in its own subprocess) or `dask`:
    prefect-dask's DaskTaskRunner on an existing scheduler (`address`) or a local cluster."""
    if kind == "thread":
        return None
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "processes": True, "threads_per_worker": 1})


# --- command line ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python flows/compare.py",
        description="Compare a CNN with and without dropout on CIFAR-10 (Prefect flow).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name, param in inspect.signature(compare.fn).parameters.items():
        option, help_ = flag(name), help_text(param.annotation)
        if isinstance(param.default, bool):
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=param.default, help=help_)
            continue
        if isinstance(param.default, list):
            parser.add_argument(option, type=type(param.default[0]), nargs="+", default=param.default,
                                help=help_, metavar=name.upper().rstrip("S"))  # fmt: skip
            continue
        parser.add_argument(option, type=type(param.default), default=param.default, help=help_, metavar=name.upper())
    parser.add_argument("--seed", dest="seeds", type=int, nargs="+", help="same as --seeds")
    scale = parser.add_argument_group("scale-out (how tasks run, not what they compute)")
    scale.add_argument("--task-runner", choices=("thread", "dask"), default="thread",
                       help="thread: in this process; dask: prefect-dask's DaskTaskRunner")  # fmt: skip
    scale.add_argument("--dask-address", metavar="tcp://HOST:8786",
                       help="existing Dask scheduler (default with --task-runner dask: a local cluster)")  # fmt: skip
    return parser


RUNNER_FLAGS = ("task_runner", "dask_address")


def check_api_reachable(timeout_s: float = 5.0) -> None:
    """With PREFECT_API_URL set (e.g. a `prefect server start`), fail fast if nothing answers there,
    instead of letting the client retry for minutes. Without it, runs use a temporary local server."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout_s).raise_for_status()
    except httpx.HTTPError as e:
        reason = redact(f"{type(e).__name__}: {e}")
        raise ConnectionError(
            f"the Prefect API at {redact(url)} (PREFECT_API_URL) does not answer ({reason}); start it "
            "with `prefect server start`, or unset PREFECT_API_URL to run on a temporary local server"
        ) from None


class CliError(Exception):
    """A one-line error for the command line, with its exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def checked_configs(params: dict, deployed: bool = False) -> list[TrainConfig]:
    """The command lines' checks before any work: parameters (exit 2), then the Prefect API (exit 1)."""
    try:
        configs, _ = check_parameters(params, deployed=deployed)
    except ValueError as e:
        raise CliError(str(e), 2) from None
    try:
        check_api_reachable()
    except ConnectionError as e:
        raise CliError(str(e), 1) from None
    return configs


def one_line(error: BaseException) -> str:
    """The CLI's last line for a failed run: the error's first line, credentials redacted."""
    text = f"{type(error).__name__}: {error}" if not isinstance(error, Stopped) else str(error)
    return redact((text.strip().splitlines() or [type(error).__name__])[0])


def main(argv: list[str] | None = None) -> int:
    params = vars(build_parser().parse_args(argv))
    runner_kind, dask_address = (params.pop(k) for k in RUNNER_FLAGS)
    try:
        if dask_address and runner_kind != "dask":
            raise CliError("--dask-address needs --task-runner dask", 2)
        configs = checked_configs(params)
    except CliError as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return e.exit_code
    # Registered before the temporary server starts, so it runs after the server's own exit handler
    # (atexit is last-in, first-out): the flow reports its end, the server stops, then this line.
    last_line: list[str] = []
    atexit.register(lambda: last_line and print(*last_line, file=sys.stderr if last_line[0] == "error:" else None))
    groups = stack_groups(configs, params["stack"], params["cuda_graphs"])
    threads, slots = process_plan(groups)
    runner = task_runner_for(runner_kind, dask_address, min(len(groups), sum(slots.values())))
    flow_fn = compare if runner is None else compare.with_options(task_runner=runner)
    try:
        with stop_on_signals():
            if runner is None:  # training runs in this process's threads: its processes can start now
                prestart(first_processes(groups, threads, slots))
            start_temporary_server(int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
            with bars.shown():  # one bar per model on a terminal; nothing when piped or logged
                folder = flow_fn(**params)
    except Stopped as e:
        last_line[:] = ["error:", f"{e}: training processes ended, finished epochs kept in checkpoints; "
                        "rerun the same command to resume"]  # fmt: skip
        return 128 + e.signum
    except Exception as e:  # Prefect has logged the details; end on one clear line
        last_line[:] = ["error:", one_line(e)]
        return 1
    finally:
        discard_spares()
    last_line[:] = ["report:", folder]
    return 0


def first_processes(groups: list[list[TrainConfig]], threads: int, slots: dict[str, int]) -> list[tuple[int, str]]:
    """(threads, device) of the training processes that start first: one per group, as many per
    device as it has slots."""
    started: dict[str, int] = {}
    for group in groups:
        device = group[0].device
        started[device] = started.get(device, 0) + 1
    return [(threads, device) for device, n in started.items() for _ in range(min(n, slots[device]))]


if __name__ == "__main__":
    status = main()
    # The interpreter's teardown collects every object torch, Prefect and matplotlib made, seconds
    # after the last line, only to exit; frozen, they are skipped. Exit handlers still all run.
    gc.freeze()
    sys.exit(status)
