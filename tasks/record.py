"""After the report: the run history (every machine's runs, one row per trained model) and MLflow."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run

from dropout_lab.analysis import history, tracking
from dropout_lab.analysis.history import HISTORY_FILE, code_version
from dropout_lab.analysis.trend import table_rows
from dropout_lab.core.data import DataInfo
from dropout_lab.results import TrainResult
from dropout_lab.runtime.redact import redact

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
    logger.info("history: %d models recorded in %s (dropout-lab history --out %s)", added, path, out)
    recent = history.read(path, last=RECENT_RUNS)[::-1]
    create_table_artifact(table_rows(recent), key="dropout-lab-runs", description=f"Latest runs recorded in {path}")
    return rows


@task(name="log_to_mlflow", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE, persist_result=False)
def log_to_mlflow(out: str, runs: list[dict], epochs: list[dict], folder: str) -> str:
    """One parent MLflow run for this flow run, a child per model (dropout_lab/analysis/tracking.py)."""
    files = [Path(folder, name) for name in ("comparison.png", "samples.png", "summary.md")]
    try:
        run_id = tracking.log_flow_run(out, runs, epochs, [f for f in files if f.is_file()])
    except Exception as e:  # MLflow's messages carry the tracking URI, credentials and all
        first = (str(e).strip().splitlines() or [""])[0]
        raise RuntimeError(redact(f"MLflow: {type(e).__name__}: {first}")) from None
    get_run_logger().info("mlflow: run %s in %s, experiment %s", run_id, redact(tracking.tracking_uri(out)),
                          tracking.EXPERIMENT)  # fmt: skip
    return run_id
