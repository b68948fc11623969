"""The `render_report` task and the report's Prefect artifacts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext

from dropout_lab.analysis.report import Tables, report_files, report_order, report_problem, write_report
from dropout_lab.core.data import DataInfo, read_class_names, sample_images
from dropout_lab.naming import slug
from dropout_lab.redact import redact
from dropout_lab.results import TrainResult
from tasks.cache import ResultOf


def _report_identity(p: dict) -> tuple:
    trained = [t for group in p["trained"] for t in group]
    return ("report", p["run_dir"], [t.weights_sha256 for t in trained], [t.history for t in trained],
            p["data"].fingerprint, dataclasses.astuple(p["tables"].design))  # fmt: skip


@task(
    name="render_report",
    # Forgotten unless its folder is this run's, holding the very files it wrote.
    cache_policy=ResultOf(
        identity=_report_identity,
        code="dropout_lab.analysis.report",
        trust=lambda result, p: report_problem(result[0], p["run_dir"], result[2]),
    ),
    persist_result=True,
)
def render_report(
    trained: list[list[TrainResult]], data: DataInfo, run_dir: str, tables: Tables
) -> tuple[str, str, dict]:
    """Parquet tables + PNGs into `run_dir` from each training task's results and their `tables` (decided
    as their design says: how the seeds came, the margin); returns (run_dir, markdown for the UI, the
    SHA-256 of each file). Models in the report's order: each setting's variants ascending, the baseline
    last. (The tables are the trainings' results, computed once by the flow: the cache key is theirs.)"""
    trained = report_order(t for group in trained for t in group)
    path, markdown = write_report(Path(run_dir), trained, data, sample_images(data.root), read_class_names(data.root),
                                  tables)  # fmt: skip
    return str(path), markdown, report_files(path)


def publish_report(markdown: str, history: list[dict], experiment: str, cached: bool) -> None:
    """The report as artifacts keyed by experiment (`dropout-comparison-cifar10-p0-25-s0-e8`), so each
    experiment's nightly runs line up under one key and different experiments never mix. A cached
    report is already stored under its key: no second copy of the same figure."""
    logger = get_run_logger()
    key = slug(experiment)
    if cached:  # this run's page links to the report the keyed artifact already holds (~100 bytes, not ~200 KB)
        logger.info("report unchanged (cached): artifact dropout-comparison-%s already holds it", key)
        create_link_artifact(f"{ui_base()}/artifacts/key/dropout-comparison-{key}",
                             link_text=f"dropout-comparison-{key} (unchanged: every result of this run was cached)",
                             description=f"{markdown_title(markdown)}: {experiment}")  # fmt: skip
        return
    create_markdown_artifact(
        markdown, key=f"dropout-comparison-{key}", description=f"{markdown_title(markdown)}: {experiment}"
    )
    create_table_artifact(history, key=f"dropout-per-epoch-{key}", description=f"Per-epoch history: {experiment}")


def publish_look(markdown: str, experiment: str) -> None:
    """One look of `--seeds auto` on the run page (analysis/verdict.py's `look_markdown`): the key is
    the experiment's, so its looks line up, newest first, in the artifact's history."""
    create_markdown_artifact(markdown, key=f"seeds-auto-{slug(experiment)}",
                             description=f"{markdown_title(markdown)}: {experiment}")  # fmt: skip


def markdown_title(markdown: str) -> str:
    """The report's own title (what it compares), from its first line."""
    return markdown.split("\n", 1)[0].removeprefix("# ")


def ui_base() -> str:
    """The Prefect UI's address: PREFECT_UI_URL, else the API's address without `/api`; credentials in it
    redacted (it goes into artifacts, MLflow tags and webhook messages)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    return redact((PREFECT_UI_URL.value() or (PREFECT_API_URL.value() or "").removesuffix("/api")).rstrip("/"))


def tag_flow_run(*tags: str) -> None:
    """Add tags to the current flow run (CLI, served and worker runs alike): filterable in the UI."""
    run = FlowRunContext.get().flow_run
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, tags=sorted({*run.tags, *tags}))
