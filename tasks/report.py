"""The `render_report` task and the report's Prefect artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext

from dropout_lab.analysis.report import Tables, report_files, report_order, write_report
from dropout_lab.core.data import DataInfo, read_class_names, sample_images
from dropout_lab.naming import slug
from dropout_lab.redact import redact
from dropout_lab.results import TrainResult


# Never cached: a cached report could only be checked against what its own record says, and whoever can
# edit the report can edit that record too. Written again from the checked trainings instead (the
# measured cost: benchmarks/RESULTS.md, *A cached rerun*).
@task(name="render_report", cache_policy=NO_CACHE, persist_result=False)
def render_report(
    trained: list[list[TrainResult]], data: DataInfo, run_dir: str, tables: Tables
) -> tuple[str, str, bool]:
    """Parquet tables + PNGs into `run_dir` from each training task's results and their `tables` (decided
    as their design says: how the seeds came, the margin); returns (run_dir, markdown for the UI, whether
    the files are byte for byte those already there). Models in the report's order: each setting's
    variants ascending, the baseline last."""
    trained = report_order(t for group in trained for t in group)
    before = report_files(run_dir)
    path, markdown = write_report(Path(run_dir), trained, data, sample_images(data.root), read_class_names(data.root),
                                  tables)  # fmt: skip
    return str(path), markdown, before == report_files(path)


def publish_report(markdown: str, history: list[dict], experiment: str, unchanged: bool) -> None:
    """The report as artifacts keyed by experiment (`dropout-comparison-cifar10-p0-25-s0-e8`), so each
    experiment's nightly runs line up under one key and different experiments never mix. A report
    written again byte for byte is already stored under its key: no second copy of the same figure."""
    logger = get_run_logger()
    key = slug(experiment)
    if unchanged:  # this run's page links to the report the keyed artifact already holds (~100 bytes, not ~200 KB)
        logger.info("report unchanged: artifact dropout-comparison-%s already holds it", key)
        create_link_artifact(f"{ui_base()}/artifacts/key/dropout-comparison-{key}",
                             link_text=f"dropout-comparison-{key} (unchanged: written again, the same files)",
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
