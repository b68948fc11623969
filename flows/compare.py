"""Does dropout help this CNN on CIFAR-10? `python flows/compare.py --help`.

DAG: fetch_cifar10 → train[variant, seed] for every compared variant and the baseline, concurrently
→ render_report. Each training evaluates its model after every epoch; the last evaluation is the
final result. The flow's parameters are declared once (dropout_lab/config.py `compare_parameters`):
the CLI flags, the deployment schema and both validations derive from that declaration.

No `from __future__ import annotations` here: deployments pickle the flow by value, and its
parameter annotations must be real objects to rebuild the validation schema in the runner.
"""

import contextlib
import dataclasses
import gc
import logging
import os
import sys
from datetime import UTC
from pathlib import Path

# Prefect's server can take tens of seconds to start on a small machine; its default patience is less.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Heartbeats as often as the reclaim automation expects them (deployments/reclaim.py: 30 s, Prefect's
# minimum; its default, 180 s, would leave a killed command-line run Running 9 minutes on a server).
os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from dropout_lab.probe import remote_deadlines  # noqa: E402

remote_deadlines()  # before Prefect and MLflow are imported: a remote that fails after its probe ends the run

if __name__ == "__main__":  # --help and bad values answer before torch and Prefect's engine are imported
    from dropout_lab.cli.compare import refuse_early

    refuse_early(sys.argv[1:])

from prefect import flow, get_run_logger, tags  # noqa: E402
from prefect.runtime import deployment, flow_run  # noqa: E402
from prefect.states import Cancelled, Failed  # noqa: E402

from dropout_lab.analysis.plan import plan as cost_forecast  # noqa: E402
from dropout_lab.analysis.report import report_order, report_tables  # noqa: E402
from dropout_lab.analysis.tables import PER_EPOCH_SCHEMA, display_rows  # noqa: E402
from dropout_lab.analysis.verdict import look_markdown, open_claims, variants_words  # noqa: E402
from dropout_lab.cli.compare import run_from_command_line  # noqa: E402
from dropout_lab.config import (  # noqa: E402
    BASELINE,
    PARAMETERS,
    TrainConfig,
    Variant,
    counted,
    help_text,
    variant_of,
)
from dropout_lab.core.data import CIFAR10_URL  # noqa: E402
from dropout_lab.naming import experiment_name, flow_run_label, run_folder_name  # noqa: E402
from dropout_lab.redact import redact_logs  # noqa: E402
from dropout_lab.runtime.devices import process_layout  # noqa: E402
from dropout_lab.runtime.preflight import check_parameters, handed_over, resolve_seeds  # noqa: E402
from dropout_lab.runtime.signals import stop_training_on_sigterm  # noqa: E402
from dropout_lab.runtime.temporary_server import TEMPORARY_SERVER_ENV  # noqa: E402
from tasks.cache import cache_options  # noqa: E402
from tasks.fetch import fetch_cifar10  # noqa: E402
from tasks.late_runs import superseding_run  # noqa: E402
from tasks.reclaimed import end_orphaned_task_runs, watched  # noqa: E402
from tasks.report import publish_look, publish_report, render_report, tag_flow_run  # noqa: E402
from tasks.tracking import prepare_history, record_history  # noqa: E402
from tasks.train import train  # noqa: E402

MIRROR_ENV = "DROPOUT_LAB_CIFAR10_URL"  # download from a mirror instead of the official URL


def project_logs_to_prefect() -> None:
    """The project's own log records (data warnings, lock waits, cache refusals) and MLflow's warnings
    reach the run's logs in the UI: Prefect's API handler is added to those loggers, as
    PREFECT_LOGGING_EXTRA_LOGGERS would do if it were set before Prefect configured logging (served and
    worker runs import this module afterwards)."""
    for name, level in (("dropout_lab", logging.INFO), ("tasks", logging.INFO), ("mlflow", logging.WARNING)):
        project = logging.getLogger(name)
        project.setLevel(level)
        for handler in logging.getLogger("prefect.extra").handlers:
            if handler not in project.handlers:
                project.addHandler(handler)


project_logs_to_prefect()
redact_logs()  # every log record of this process, whoever made it, loses URL credentials before output


def label_of(parameters: dict) -> str | None:
    """A run's name from its parameters (dropout_lab/naming.py), those it does not give at their declared
    defaults (a deployment may store only some: deployments/prefect.yaml); None while they are not valid."""
    try:
        params = {name: p.default for name, p in PARAMETERS.parameters.items()} | dict(parameters)
        resolve_seeds(params)  # unset seeds: what this machine will train (auto on a GPU)
        return flow_run_label(params)
    except (KeyError, TypeError, ValueError):
        return None


def run_name() -> str:
    """The flow run's name from its parameters (Prefect's default before they are valid). A deployment's run
    also carries the time it was scheduled for (a schedule's nightly runs shared one name) and, in brackets,
    the name it was created with: the one `prefect deployment run` printed, so it finds the run in the UI."""
    label = label_of(flow_run.parameters) or "compare"
    when = flow_run.scheduled_start_time if deployment.id else None
    if not when:
        return label
    name = f"{label} {when.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    created = flow_run.name or ""
    return created if created.startswith(name) else f"{name} ({created})" if created else name  # a rerun: as is


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
    try:
        plan = handed_over(params) or check_parameters(params, deployed=deployment.id is not None)
    except ValueError as e:
        if deployment.id is None:  # called from Python: the caller gets the exception
            raise
        # A deployment run's refused parameter: one line in the run's log and its state, no engine traceback.
        get_run_logger().error(f"refused: {e}")
        return Failed(message=f"refused: {e}")
    configs, planned = plan.configs, plan.design
    tag_flow_run("dropout-lab", params["dataset"], configs[0].device.split(":")[0])
    on_server = not os.environ.get(TEMPORARY_SERVER_ENV)
    if on_server:  # a crashed run's task runs end too: those left before, and this one's if it dies
        end_orphaned_task_runs()
    with watched(flow_run.id) if on_server else contextlib.nullcontext():
        data_dir, out, cache_dir = plan.folders["data_dir"], plan.folders["out"], plan.folders["cache_dir"]
        opts = {**cache_options(cache_dir), "refresh_cache": True if params["refresh"] else None}

        prepare_history(out)
        data = fetch_cifar10.with_options(**opts)(data_dir, params["dataset"], os.environ.get(MIRROR_ENV, CIFAR10_URL))
        auto = planned.sequential
        run_dir = Path(out).resolve() / run_folder_name(configs, params["dataset"], data.fingerprint, planned)
        compared = {variant_of(c) for c in configs}
        experiment = experiment_name(configs, params["dataset"], auto)
        trained, looks, training = [], [], compared
        for wave in range(len(plan.waves)):
            trained += submit_trainings(plan.groups(wave, training), data, plan, opts)
            results = report_order(t for f in trained for t in f.result())  # a failed training raises here, as is
            looks.append(len({r.config.seed for r in results}))  # seeds with results at this look
            design = dataclasses.replace(planned, looks=tuple(looks)) if auto else planned
            tables = report_tables(results, data, design)  # every table of the report, once per look
            if auto:
                undecided = open_claims(tables.summary, design, tables.comparisons)
                last = not undecided or wave == len(plan.waves) - 1
                if wave == 0 and not last:  # the first look is the pilot: what the rest will likely cost
                    # Its pace from the trainings' own times (a cached first wave took no time here; a resumed
                    # training's process time covers only its last epochs, its epochs' times all of them).
                    pace = sum(max(r["train_seconds"], r.get("epochs_seconds") or 0) for r in tables.summary)
                    pace /= max(1, sum(plan.slots.values()))
                    forecast = cost_forecast(tables.summary, planned.max_seeds, planned.margin, pace)
                    planned = dataclasses.replace(planned, plan=forecast.words())
                    print(f"plan {forecast.words()}")
                # A variant whose claims are all decided trains no more seeds: its repeated intervals would
                # only narrow, so no later look could change its decision (sequential.py).
                training = None if last else {BASELINE, *undecided}
                next_seeds = [] if last else sorted({c.seed for g in plan.groups(wave + 1, training) for c in g})
                publish_look(
                    look_markdown(design, tables.comparisons, training, next_seeds, bool(undecided)), experiment
                )
                if not undecided:
                    print(f"after {counted(looks[-1], 'seed')}: every claim decided")
                    break
                still = "; ".join(c for cs in undecided.values() for c in cs)
                if last:
                    print(f"after {counted(looks[-1], 'seed')}: budget reached (--max-seeds {params['max_seeds']}); "
                          f"undecided: {still}")  # fmt: skip
                    break
                print(f"after {counted(looks[-1], 'seed')}: undecided: {still}" + next_wave_words(training, compared))
        folder, markdown, unchanged = render_report(trained, data, str(run_dir), tables)
        publish_report(markdown, display_rows(tables.per_epoch, PER_EPOCH_SCHEMA), experiment, unchanged)
        record_history(tables, results, data, out, folder, experiment, params["log_models"])
        return folder


def next_wave_words(training: set[Variant], compared: set[Variant]) -> str:
    """What the next waves train, once some variant has stopped (" (next waves: dropout 0.1 and the baseline)")."""
    return "" if training >= compared else f" (next waves: {variants_words(training)})"


def submit_trainings(groups: list[list[TrainConfig]], data, plan, opts: dict) -> list:
    """One training task per group of variants that train together (the run plan's), submitted to run
    concurrently. On a Dask cluster of GPU machines each task gets a worker's GPU, whatever is local."""
    threads, slots = plan.threads, plan.slots
    gpu_workers = dask_gpu_workers()
    if gpu_workers:
        device = os.environ.get(GPU_WORKER_DEVICE_ENV, "cuda:0")
        groups = [[dataclasses.replace(c, device=device) for c in g] for g in groups]
        threads, slots = process_layout(groups)
    p = plan.params  # a training that waits for a slot says so, once per run and device (tasks/slots.py)
    with gpu_resource(gpu_workers):
        return [train.with_options(**opts).submit(g, data, plan.folders["cache_dir"], threads, p["refresh"],
                                                  slots[g[0].device], p["cuda_graphs"])
                for g in groups]  # fmt: skip


# --- scale-out ----------------------------------------------------------------------------------------


# A test seam: the device a Dask GPU worker trains on (its one GPU, cuda:0). The placement test names `cpu`, so
# that workers advertising GPU=1 on a machine without one show where each training lands (tests/test_scaleout.py).
GPU_WORKER_DEVICE_ENV = "DROPOUT_LAB_GPU_WORKER_DEVICE"


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


def main(argv: list[str] | None = None) -> int:
    """`python flows/compare.py ...`: this flow run from the command line (dropout_lab/cli/compare.py),
    tagged `dropout-lab` from its creation, so its heartbeats carry the tag the reclaim automation matches
    (a tag added once the run has started is not in them)."""
    with tags("dropout-lab"):
        return run_from_command_line(compare, argv)


if __name__ == "__main__":
    status = main()
    # The interpreter's teardown collects every object torch, Prefect and matplotlib made, seconds
    # after the last line, only to exit; frozen, they are skipped. Exit handlers still all run.
    gc.freeze()
    sys.exit(status)
