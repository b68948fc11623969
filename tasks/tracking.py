"""After the report: the run history (every machine's runs, one row per trained model) and MLflow."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run

from dropout_lab.analysis import history, tracking
from dropout_lab.analysis.history import code_version, history_target
from dropout_lab.analysis.report import Tables
from dropout_lab.analysis.trend import table_rows
from dropout_lab.config import TrainConfig, Variant, variant_of
from dropout_lab.redact import redact
from dropout_lab.results import TrainResult
from dropout_lab.runtime.temporary_server import TEMPORARY_SERVER_ENV
from tasks.report import ui_base

RECENT_RUNS = 20  # runs in the UI's table of the latest runs


def record_history(
    tables: Tables, results: list[TrainResult], out: str, folder: str, experiment: str
) -> tuple[list[dict], list[dict]] | None:
    """Append this run's models to the run history (DROPOUT_LAB_HISTORY, else `<out>/history.sqlite`; a
    model trained by an earlier run, reused from the cache, is not recorded again) and, when rows were
    added, show the latest runs there as the table artifact `dropout-lab-runs`. Returns the run's history
    rows (per model, per epoch) when it recorded any, else None. Not a task: a rerun that reuses
    everything stays all Cached, and this takes milliseconds."""
    logger = get_run_logger()
    path = history_target(out)
    meta = {
        "recorded_at": datetime.now(UTC),
        "flow_run_id": str(current_flow_run.id or ""),
        "flow_run_name": current_flow_run.name or "",
        "code_version": code_version(),
        "experiment": experiment,
        "experiment_hash": history.split_report_folder(folder)[1],
        "report_folder": folder,
    }
    rows = history.model_rows(tables, results, meta)
    added = history.append(path, *rows)
    if not added:
        logger.info("history: these models are already recorded in %s", path)
        return None
    shown = history.shown(path)
    logger.info("history: %d models recorded in %s (dropout-lab history --history %s)", added, shown, shown)
    recent = history.read(path, last=RECENT_RUNS)[::-1]
    create_table_artifact(table_rows(recent), key="dropout-lab-runs", description=f"Latest runs recorded in {shown}")
    return rows


def mlflow_error(e: Exception) -> RuntimeError:
    """MLflow's messages carry the tracking URI, credentials and all: one redacted line."""
    first = (str(e).strip().splitlines() or [""])[0]
    return RuntimeError(redact(f"MLflow: {type(e).__name__}: {first}"))


@task(name="start_mlflow", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE, persist_result=False)
def start_mlflow(out: str, run_dir: str, configs: list[TrainConfig], dataset: str) -> str | None:
    """The flow run's parent MLflow run, before any training, so each model's child run logs its epochs
    as they happen; None when this experiment (parameters, data, code) is already logged: once is enough."""
    logger = get_run_logger()
    experiment, digest = history.split_report_folder(run_dir)
    try:
        already = tracking.logged_parent(out, digest)
        if already:
            logger.info("mlflow: experiment %s is already logged (run %s): not again", experiment, already)
            return None
        tags = {"flow_run_id": str(current_flow_run.id or ""), "flow_run_name": current_flow_run.name or "",
                "code_version": code_version(), "experiment": experiment, "experiment_hash": digest,
                "report_folder": run_dir}  # fmt: skip
        if page := prefect_run_page():
            tags["prefect_flow_run_url"] = page
        rows = [{**variant_of(c).columns(), "seed": c.seed, **c.to_dict(), "dataset": dataset} for c in configs]
        variants = sorted({variant_of(c) for c in configs}, key=Variant.order)
        parent = tracking.start_parent(
            out, current_flow_run.name or experiment, tags, tracking.run_params(rows, variants)
        )
        mlflow_page = tracking.run_page(out, parent)
    except Exception as e:
        raise mlflow_error(e) from None
    store = redact(tracking.tracking_uri(out))
    logger.info("mlflow: run %s in %s, experiment %s", parent, store, tracking.EXPERIMENT)
    # The Prefect run page leads to the MLflow run: a link where a server shows it, else how to see it.
    if mlflow_page:
        create_link_artifact(mlflow_page, link_text=f"MLflow run {current_flow_run.name or experiment}",
                             description=f"MLflow: experiment {tracking.EXPERIMENT}, run {parent}")  # fmt: skip
    else:
        create_markdown_artifact(f"MLflow run `{parent}` (experiment `{tracking.EXPERIMENT}`) in `{store}`: "
                                 f"`mlflow ui --backend-store-uri {store}` shows it",
                                 description=f"MLflow: experiment {tracking.EXPERIMENT}, run {parent}")  # fmt: skip
    return parent


def prefect_run_page() -> str | None:
    """This flow run's page in the Prefect UI; None on the command line's temporary server (no UI)."""
    if os.environ.get(TEMPORARY_SERVER_ENV) or not current_flow_run.id:
        return None
    return f"{ui_base()}/runs/flow-run/{current_flow_run.id}"


@task(name="finish_mlflow", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE, persist_result=False)
def finish_mlflow(out: str, parent: str, tables: Tables, results: list[TrainResult], folder: str) -> str:
    """Models trained by an earlier run (cached here) get their child runs from their recorded epochs; the
    parent gets the comparison's headline metrics (the report's own statistics) and its files, and ends."""
    runs = [{**row, "weights_sha256": r.weights_sha256} for row, r in zip(tables.summary, results, strict=True)]
    try:
        tracking.log_children_after(out, parent, runs, tables.per_epoch, [r.checkpoint for r in results])
        files = [Path(folder, name) for name in ("comparison.png", "samples.png", "summary.md")]
        tracking.finish_parent(out, parent, tracking.headline_metrics(tables.statistics),
                               [f for f in files if f.is_file()])  # fmt: skip
    except Exception as e:
        raise mlflow_error(e) from None
    return parent
