"""The `fetch_cifar10` task: the data every training reads, downloaded once and cached."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff

from dropout_lab.core.data import CIFAR10_URL, DataInfo, DownloadError, data_problem, ensure_cifar10, ensure_fake
from tasks.cache import ResultOf, error_of


def retry_on_network_error(task, task_run, state) -> bool:
    error = error_of(state)
    return isinstance(error, DownloadError) and error.retry


@task(
    name="fetch_cifar10",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),  # 2, 4, 8 s
    retry_condition_fn=retry_on_network_error,
    # The data folder and source; forgotten unless it describes this folder's files, unchanged.
    cache_policy=ResultOf(
        identity=lambda p: ("fetch", str(Path(p["data_dir"]).resolve()), p["dataset"], p["url"]),
        code="dropout_lab.core.data",
        trust=lambda info, p: data_problem(info, p["data_dir"], p["dataset"]),
    ),
    persist_result=True,
)
def fetch_cifar10(data_dir: str, dataset: str = "cifar10", url: str = CIFAR10_URL) -> DataInfo:
    """Reuse a local copy or download (md5-checked) the CIFAR-10 python archive; `fake` generates one."""
    return ensure_fake(data_dir) if dataset == "fake" else ensure_cifar10(data_dir, url)
