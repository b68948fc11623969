"""After the report: the run history, recorded in MLflow's tracking store (the one store of record)."""

from __future__ import annotations

import contextlib
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run as current_flow_run

from dropout_lab.analysis import history, tracking
from dropout_lab.analysis.report import Tables
from dropout_lab.analysis.trend import table_rows
from dropout_lab.config import Variant, variant_of
from dropout_lab.core.data import DataInfo
from dropout_lab.keys import train_key
from dropout_lab.probe import until_silent
from dropout_lab.redact import redact
from dropout_lab.results import TrainResult
from dropout_lab.runtime.temporary_server import TEMPORARY_SERVER_ENV
from tasks.report import ui_base

RECENT_RUNS = 20  # runs in the UI's table of the latest runs
REPORT_FILES = (
    "decisions.png",
    "comparison.png",
    "samples.png",
    "summary.md",
)  # the comparison run's artifacts in MLflow


def mlflow_error(e: Exception, folder: str) -> RuntimeError:
    """MLflow's messages carry the tracking URI, credentials and all: one redacted line, which says that the
    report is whole and what records it (the models are cached: the same command again only records)."""
    first = (str(e).strip().splitlines() or [""])[0]
    return RuntimeError(redact(f"MLflow: {type(e).__name__}: {first} (the report is written, {folder}; the same "
                               "command again records it)"))  # fmt: skip


def prepare_history(out: str) -> None:
    """Open the run history's store in the background while the trainings run: importing MLflow and setting
    up a new store take seconds, and recording waits for them (an error is raised there, not here)."""

    def prepare() -> None:
        with contextlib.suppress(Exception):
            tracking.client(history.store_uri(out))

    threading.Thread(target=prepare, name="history-store", daemon=True).start()


def record_history(tables: Tables, results: list[TrainResult], data: DataInfo, out: str, folder: str,
                   experiment: str, log_models: bool = False) -> int:  # fmt: skip
    """Record this run's comparison and its models in the run history (MLflow's tracking store: `--history`
    or MLFLOW_TRACKING_URI, else `<out>/mlflow.db`): a model already recorded in this experiment is not
    recorded again. When models were added, the latest runs are shown as the table artifact
    `dropout-lab-runs`, with a link to MLflow; `log_models` logs each recorded model's network too.
    Returns the models recorded. Not a task: a rerun that reuses everything stays all Cached."""
    logger = get_run_logger()
    uri = history.store_uri(out)
    meta = {"recorded_at": datetime.now(UTC).isoformat(), "flow_run_id": str(current_flow_run.id or ""),
            "flow_run_name": current_flow_run.name or "", "code_version": tracking.code_version(),
            "experiment": experiment, "experiment_hash": Path(folder).name.rpartition("-")[2],
            "report_folder": folder}  # fmt: skip
    if page := prefect_run_page():
        meta["prefect_flow_run_url"] = page
    models = []
    for row, r in zip(tables.summary, results, strict=True):
        mine = [e for e in tables.per_epoch if (variant_of(e), e["seed"]) == (variant_of(row), row["seed"])]
        identity = {
            "weights_sha256": r.weights_sha256,
            "model_key": train_key(r.config, data.fingerprint),
            "started_at": row["started_at"].isoformat(),
            "finished_at": row["finished_at"].isoformat(),
        }
        models.append({"row": {**row, **meta, **identity}, "epochs": mine, "checkpoint": r.checkpoint})
    variants = sorted({variant_of(r) for r in tables.summary}, key=Variant.order)
    comparison = {"name": meta["flow_run_name"] or experiment, "tags": meta,
                  "params": tracking.run_params(tables.summary, variants),
                  "metrics": tracking.headline_metrics(tables.statistics)}  # fmt: skip
    files = [f for f in (Path(folder, name) for name in REPORT_FILES) if f.is_file()]

    def recording(answered) -> tuple[int, str, str | None, list[dict], int]:
        imported = tracking.import_legacy(out, uri)
        added, parent = tracking.record(uri, comparison, models, files, log_models, answered)
        recent = history.read(uri, last=RECENT_RUNS) if added else []
        return added, parent, tracking.run_page(uri, parent), recent, imported

    try:  # a store that stops answering ends the run within the deadline, whatever its kind (probe.py)
        added, parent, page, recent, imported = until_silent("recording the history", recording)
    except Exception as e:
        raise mlflow_error(e, folder) from None
    if imported:
        logger.info("history: %d models of %s recorded in %s (the file is kept as %s.imported)", imported,
                    history.LEGACY_FILE, history.shown(uri), history.LEGACY_FILE)  # fmt: skip
    shown = history.shown(uri)
    if not added:
        logger.info("history: these models are already recorded in %s", shown)
        return 0
    logger.info("history: %d models recorded in %s, experiment %s (dropout-lab history --history %s)", added, shown,
                history.experiment_name(), shown)  # fmt: skip
    create_table_artifact(table_rows(recent[::-1]), key="dropout-lab-runs",
                          description=f"Latest runs recorded in {shown}")  # fmt: skip
    # The Prefect run page leads to the MLflow run: a link where a server shows it, else how to see it.
    about = f"MLflow: experiment {history.experiment_name()}, run {parent}"
    if page:
        create_link_artifact(page, link_text=f"MLflow run {comparison['name']}", description=about)
    else:
        create_markdown_artifact(f"MLflow run `{parent}` (experiment `{history.experiment_name()}`) in `{shown}`: "
                                 f"`{tracking.ui_command(uri)}` shows it", description=about)  # fmt: skip
    return added


def prefect_run_page() -> str | None:
    """This flow run's page in the Prefect UI; None on the command line's temporary server (no UI)."""
    if os.environ.get(TEMPORARY_SERVER_ENV) or not current_flow_run.id:
        return None
    return f"{ui_base()}/runs/flow-run/{current_flow_run.id}"
