"""Does dropout help this CNN on CIFAR-10? `python flows/compare.py --help`.

DAG: fetch_cifar10 → train[variant, seed] for every compared variant and the baseline, concurrently
→ render_report. Each training evaluates its model after every epoch; the last evaluation is the
final result. The flow's parameters are declared once (dropout_lab/config.py `compare_parameters`):
the CLI flags, the deployment schema and both validations derive from that declaration.

No `from __future__ import annotations` here: deployments pickle the flow by value, and its
parameter annotations must be real objects to rebuild the validation schema in the runner.
"""

import atexit
import contextlib
import dataclasses
import gc
import logging
import os
import sys
from pathlib import Path

# Prefect's server can take tens of seconds to start on a small machine; its default patience is less.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

if __name__ == "__main__":  # --help and bad values answer before torch and Prefect's engine are imported
    from dropout_lab.cli.compare import refuse_early

    refuse_early(sys.argv[1:])

from prefect import flow  # noqa: E402
from prefect.runtime import deployment, flow_run  # noqa: E402
from prefect.states import Cancelled  # noqa: E402

from dropout_lab.analysis.report import report_order  # noqa: E402
from dropout_lab.analysis.tables import (  # noqa: E402
    HISTORY_SCHEMA,
    display_rows,
    history_rows,
    summary_rows,  # noqa: E402
)
from dropout_lab.analysis.verdict import open_claims  # noqa: E402
from dropout_lab.cli.compare import CliError, check_dask, checked_configs, fail, one_line, parse  # noqa: E402
from dropout_lab.config import (  # noqa: E402
    BASELINE,
    PARAMETERS,
    TrainConfig,
    Variant,
    design_of,
    help_text,
    seed_waves,
    variant_of,
)
from dropout_lab.core.data import CIFAR10_URL  # noqa: E402
from dropout_lab.naming import experiment_name, flow_run_label, run_folder_name  # noqa: E402
from dropout_lab.redact import redact_logs  # noqa: E402
from dropout_lab.runtime import console, temporary_server  # noqa: E402
from dropout_lab.runtime.devices import process_plan, stack_groups  # noqa: E402
from dropout_lab.runtime.launcher import discard_spares, first_processes, prestart  # noqa: E402
from dropout_lab.runtime.preflight import check_parameters, resolve_seeds  # noqa: E402
from dropout_lab.runtime.progress import bars  # noqa: E402
from dropout_lab.runtime.signals import Stopped, stop_on_signals, stop_training_on_sigterm  # noqa: E402
from tasks.cache import cache_options  # noqa: E402
from tasks.fetch import fetch_cifar10  # noqa: E402
from tasks.late_runs import superseding_run  # noqa: E402
from tasks.record import finish_mlflow, record_history, start_mlflow  # noqa: E402
from tasks.report import publish_report, render_report, tag_flow_run  # noqa: E402
from tasks.train import train  # noqa: E402

MIRROR_ENV = "DROPOUT_LAB_CIFAR10_URL"  # download from a mirror instead of the official URL


def project_logs_to_prefect() -> None:
    """The project's own log records (data warnings, lock waits, cache refusals) reach the run's logs
    in the UI: Prefect's API handler is added to the project's loggers, as PREFECT_LOGGING_EXTRA_LOGGERS
    would do if it were set before Prefect configured logging (served and worker runs import this
    module afterwards)."""
    for name in ("dropout_lab", "tasks"):
        project = logging.getLogger(name)
        project.setLevel(logging.INFO)
        for handler in logging.getLogger("prefect.extra").handlers:
            if handler not in project.handlers:
                project.addHandler(handler)


project_logs_to_prefect()
redact_logs()  # every log record of this process, whoever made it, loses URL credentials before output


def run_name() -> str:
    """The flow run's name from its parameters (dropout_lab/naming.py); Prefect's default before they are valid."""
    try:
        params = dict(flow_run.parameters)
        resolve_seeds(params)  # unset seeds: what this machine will train (auto on a GPU)
        return flow_run_label(params)
    except (KeyError, TypeError, ValueError):
        return "compare"


def declared_parameters(fn):
    """Give the flow the declared parameters (`compare_parameters`): its signature, which Prefect reads
    into the deployment schema and validates against, and a Google-style `Args:` section of each
    parameter's help, which Prefect reads into the deployment form's field descriptions."""
    fn.__signature__ = PARAMETERS.replace(return_annotation=str)
    lines = ["", "Args:", *(f"    {name}: {help_text(p.annotation)}" for name, p in PARAMETERS.parameters.items())]
    fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n"
    return fn


@flow(name="compare", flow_run_name=run_name, log_prints=True)
@declared_parameters
def compare(**params) -> str:
    """Train every compared variant and the baseline for every seed concurrently, evaluating each after
    every epoch, and write the report."""
    stop_training_on_sigterm()
    if deployment.id and (newer := superseding_run(flow_run.id)):  # after downtime, only the newest runs
        when = newer.expected_start_time.strftime("%Y-%m-%d %H:%M %Z")
        return Cancelled(message=f"superseded: the run scheduled for {when} ({newer.name}) is also due")
    configs, folders = check_parameters(params, deployed=deployment.id is not None)
    tag_flow_run("dropout-lab", params["dataset"], configs[0].device.split(":")[0])
    data_dir, out, cache_dir = folders["data_dir"], folders["out"], folders["cache_dir"]
    opts = {**cache_options(cache_dir), "refresh_cache": True if params["refresh"] else None}

    data = fetch_cifar10.with_options(**opts)(data_dir, params["dataset"], os.environ.get(MIRROR_ENV, CIFAR10_URL))
    planned = design_of(params)
    auto = planned.sequential
    run_dir = Path(out).resolve() / run_folder_name(configs, params["dataset"], data.fingerprint, planned)
    parent = start_mlflow(out, str(run_dir), configs, params["dataset"]) if params["mlflow"] else None
    compared = {variant_of(c) for c in configs}
    trained, looks, training = [], [], compared
    for wave in seed_waves(params["max_seeds"]) if auto else [sorted({c.seed for c in configs})]:
        wave_configs = [c for c in configs if c.seed in wave and variant_of(c) in training]
        trained += submit_trainings(wave_configs, data, params, opts, cache_dir, parent, out)
        results = report_order(t for f in trained for t in f.result())  # a failed training raises here, as is
        looks.append(len({r.config.seed for r in results}))  # seeds with results at this look
        design = dataclasses.replace(planned, looks=tuple(looks)) if auto else planned
        if auto:
            undecided = open_claims(summary_rows(results, data), design)
            if not undecided:
                print(f"after {looks[-1]} seeds: every claim decided")
                break
            # A variant whose claims are all decided trains no more seeds: its repeated intervals would
            # only narrow, so no later look could change its decision (sequential.py).
            training = {BASELINE, *undecided}
            print(f"after {looks[-1]} seeds: undecided: {'; '.join(c for cs in undecided.values() for c in cs)}"
                  + next_wave_words(training, compared))  # fmt: skip
    report = render_report.with_options(**opts)(trained, data, str(run_dir), design, return_state=True)
    folder, markdown, _ = report.result()
    experiment = experiment_name(configs, params["dataset"], auto)
    publish_report(markdown, display_rows(history_rows(results, data), HISTORY_SCHEMA), experiment,
                   report.name == "Cached")  # fmt: skip
    record_history(results, data, out, folder, experiment)
    if parent:
        finish_mlflow(out, parent, results, data, folder)
    return folder


def next_wave_words(training: set[Variant], compared: set[Variant]) -> str:
    """What the next waves train, once some variant has stopped (" (next waves: dropout 0.1 and the baseline)")."""
    if training >= compared:
        return ""
    names = [v.words for v in sorted(training, key=Variant.order)]
    return f" (next waves: {', '.join(names[:-1])} and the {names[-1]})"


def submit_trainings(configs: list[TrainConfig], data, params: dict, opts: dict, cache_dir: str, parent, out: str):
    """One training task per group of variants that train together, submitted to run concurrently."""
    groups, gpu_workers = training_groups(configs, params["stack"], params["cuda_graphs"])
    threads, slots = process_plan(groups)
    with gpu_resource(gpu_workers):
        return [train.with_options(**opts).submit(g, data, cache_dir, threads, params["refresh"], slots[g[0].device],
                                                  params["cuda_graphs"], parent, out)
                for g in groups]  # fmt: skip


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


def main(argv: list[str] | None = None) -> int:
    try:
        params, how = parse(argv)
        configs = checked_configs(params)
        if how["dask_address"]:
            check_dask(how["dask_address"])
    except CliError as e:
        return fail(e)
    console.quiet(how["verbose"])
    # At exit: the flow has reported its end, the server stops (it may hold the run's last states),
    # then this line, the terminal's last.
    last_line: list[str] = []

    def say_last_line() -> None:
        temporary_server.stop()
        if last_line:
            print(*last_line, file=sys.stderr if last_line[0] == "error:" else None)

    atexit.register(say_last_line)
    groups = stack_groups(configs, params["stack"], params["cuda_graphs"])
    threads, slots = process_plan(groups)
    runner = task_runner_for(how["task_runner"], how["dask_address"], min(len(groups), sum(slots.values())))
    flow_fn = compare if runner is None else compare.with_options(task_runner=runner)
    try:
        with stop_on_signals():
            if runner is None:  # training runs in this process's threads: its processes can start now
                prestart(first_processes(groups, threads, slots))
            timeout = int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
            with temporary_server.serving(timeout), bars.shown():  # bars: on a terminal only, one per model
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


if __name__ == "__main__":
    status = main()
    # The interpreter's teardown collects every object torch, Prefect and matplotlib made, seconds
    # after the last line, only to exit; frozen, they are skipped. Exit handlers still all run.
    gc.freeze()
    sys.exit(status)
