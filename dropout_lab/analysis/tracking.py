"""MLflow logging (optional: `pip install -e ".[mlflow]"`, `--mlflow`). No prefect here.

Each flow run that trained something becomes one parent MLflow run (its parameters, the report's
figures and summary as artifacts) with one child run per model variant (its parameters, every epoch's
metrics by step, the final and best numbers, and the trained network as a logged model with its
signature, `mlflow.pytorch.log_model`). Metrics are fractions everywhere (accuracies, gaps and their
differences), as the report's tables keep them. Everything goes to the MLflow experiment `dropout-lab`
(a model-training experiment: `mlflow.experimentKind` = custom_model_development)
of `MLFLOW_TRACKING_URI` when the environment sets one (a tracking server), else of an embedded
store under the report folder's parent: `<out>/mlflow.db` with artifacts in `<out>/mlartifacts`
(no server, works offline; browse with `mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db`).
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from dropout_lab.analysis.tables import PER_EPOCH_SCHEMA, SUMMARY_SCHEMA, named
from dropout_lab.config import SETTINGS, value_text
from dropout_lab.probe import ProbeFailed, database_url, first_line, within_deadline
from dropout_lab.redact import redact, split_credentials

EXPERIMENT = "dropout-lab"
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, latency, tokens).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
MODEL_NAME = "model"  # the logged model's name in each child run
STORE_FILE, ARTIFACTS_FOLDER = "mlflow.db", "mlartifacts"
# What MLflow logs of each model, from the report's schemas (analysis/tables.py: each column's role).
EPOCH_METRICS = tuple(named(PER_EPOCH_SCHEMA, "metric"))
FINAL_METRICS = tuple(named(SUMMARY_SCHEMA, "metric"))
MODEL_PARAMS = tuple(named(SUMMARY_SCHEMA, "param"))
RUN_TAGS = ("flow_run_id", "flow_run_name", "code_version", "experiment", "experiment_hash", "report_folder")


def check_available() -> None:
    """Raises ValueError (one line) when MLflow is asked for but not installed."""
    if importlib.util.find_spec("mlflow") is None:
        raise ValueError('--mlflow: MLflow is not installed here; pip install -e ".[mlflow]"')


MLFLOW_TABLES = {"experiments", "runs", "alembic_version"}  # present in every MLflow database store
DATABASES = ("sqlite", "postgresql", "mysql", "mssql")


def check_store(out: str | Path) -> None:
    """Raises ValueError (one line, credentials redacted) when the tracking store cannot take this run,
    before any training and within the probe's deadline: a server whose real read (its experiments) does
    not answer or is not MLflow's, a database that is a folder, another program's file or needs a driver
    that is not installed, a file store (MLflow refuses those), an unknown scheme. Creates nothing."""
    uri = tracking_uri(out)
    scheme = urlsplit(uri).scheme.split("+")[0].lower()
    where = f"--mlflow: the tracking store {redact(uri)}"
    try:
        if scheme in ("http", "https"):
            within_deadline(where, lambda: _check_server(uri), address=uri)
        elif scheme in DATABASES:
            database_url(uri, where)
            within_deadline(where, lambda: _check_database(uri, scheme), address=uri)
        elif scheme in ("", "file"):
            if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
                raise ValueError(f"{where}: MLflow no longer takes file stores; use sqlite:///PATH or a server")
        elif scheme != "databricks":
            raise ValueError(f"{where}: unknown scheme {scheme!r} ({', '.join(('http', 'https', *DATABASES))})")
    except ProbeFailed as e:
        raise ValueError(str(e)) from None


def _check_server(uri: str) -> None:
    """A real read: the experiments MLflow's REST API lists (a health check can answer while nothing else does)."""
    import httpx

    plain, auth = split_credentials(uri)
    answer = httpx.post(plain.rstrip("/") + "/api/2.0/mlflow/experiments/search", json={"max_results": 1},
                        timeout=8, headers={"Authorization": auth} if auth else None)  # fmt: skip
    if answer.status_code != 200 or "experiments" not in answer.text and answer.text.strip() != "{}":
        raise ValueError(f"answers {answer.status_code} to a read of its experiments: not a working MLflow server")


def _check_database(uri: str, scheme: str) -> None:
    import sqlalchemy as sa

    url = sa.make_url(uri)
    if scheme == "sqlite":
        path = Path(url.database or "")
        if path.is_dir():
            raise ValueError("a folder, not a database file")
        if not path.exists():
            return  # MLflow creates it
        engine = sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    else:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 8} if scheme == "postgresql" else {})
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
    except sa.exc.SQLAlchemyError as e:
        raise ValueError(f"cannot be opened ({first_line(e)})") from None
    finally:
        engine.dispose()
    if tables and not MLFLOW_TABLES <= tables:
        raise ValueError("another program's database (no MLflow tables): nothing was written to it")


def tracking_uri(out: str | Path) -> str:
    """MLFLOW_TRACKING_URI when set (MLflow's own setting), else the embedded store under `out`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or _embedded_uri(out)


def _embedded_uri(out: str | Path) -> str:
    return f"sqlite:///{(Path(out) / STORE_FILE).resolve()}"


def _experiment_id(client, out: Path) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        for key, value in EXPERIMENT_KIND.items():  # one made by an older version: a training experiment too
            if found.tags.get(key) != value:
                client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    location = (out / ARTIFACTS_FOLDER).resolve().as_uri() if tracking_uri(out) == _embedded_uri(out) else None
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException:  # another run created it meanwhile
        return client.get_experiment_by_name(EXPERIMENT).experiment_id


def _quiet_mlflow() -> None:
    """MLflow prints its own "🏃 View run ... at: URL" lines to stdout (credentials and all): the run's own
    log says where the run is, redacted. Its log records are left unconfigured by MLflow, so they reach
    the project's handlers (the run's log, credentials redacted: flows/compare.py) instead of a raw stderr."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")


def _client(out: str | Path):
    _quiet_mlflow()
    from mlflow import MlflowClient

    Path(out).mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri(out))


def _now_ms() -> int:
    return int(time.time() * 1000)


PROJECT = Path(__file__).resolve().parents[2]


def system_tags(run_name: str) -> dict[str, str]:
    """MLflow's own tags for where a run came from: the commit, branch and repository as MLflow's own git
    resolution finds them (asked about the project's folder: the process's entry point is Prefect's
    engine in a served run), the entry point, the user."""
    from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url

    tags = {"mlflow.source.name": "flows/compare.py", "mlflow.source.type": "LOCAL", "mlflow.runName": run_name,
            "mlflow.user": os.environ.get("USER") or os.environ.get("LOGNAME") or "dropout-lab"}  # fmt: skip
    found = {"mlflow.source.git.commit": get_git_commit(str(PROJECT)), "mlflow.source.git.branch":
             get_git_branch(str(PROJECT)), "mlflow.source.git.repoURL": get_git_repo_url(str(PROJECT))}  # fmt: skip
    return {**tags, **{k: redact(v) for k, v in found.items() if v}}


def clean(value: float) -> float:
    """A metric without float noise (-0.033999999999999975 → -0.034): 12 significant digits, more
    than any measured number here has."""
    return float(f"{float(value):.12g}")


def logged_parent(out: str | Path, experiment_hash: str) -> str | None:
    """The finished parent run that already logged this experiment (parameters, data, code), if any."""
    client = _client(out)
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], max_results=1, filter_string=(
        f"tags.experiment_hash = '{experiment_hash}' and attributes.status = 'FINISHED' "
        "and tags.dropout_lab_parent = 'true'"))  # fmt: skip
    return runs[0].info.run_id if runs else None


def start_parent(out: str | Path, name: str, tags: dict, params: dict, start_ms: int | None = None) -> str:
    """A flow run's parent MLflow run, RUNNING until `finish_parent`: its tags and parameters."""
    from mlflow.entities import Param

    client = _client(out)
    run = client.create_run(_experiment_id(client, Path(out)), start_time=start_ms or _now_ms(), run_name=name,
                            tags={**system_tags(name), **tags, "dropout_lab_parent": "true"})  # fmt: skip
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items() if v is not None])
    return run.info.run_id


def start_child(out: str | Path, parent_id: str, row: dict, start_ms: int | None = None) -> str:
    """One model's child run (its parameters; `row`: a summary/history row or its config's columns)."""
    from mlflow.entities import Param

    client = _client(out)
    name = f"{row['model']} seed {row['seed']}"
    parent = client.get_run(parent_id)
    tags = {**system_tags(name), "mlflow.parentRunId": parent_id,
            **{k: v for k, v in parent.data.tags.items() if k in RUN_TAGS}}  # fmt: skip
    run = client.create_run(parent.info.experiment_id, start_time=start_ms or _now_ms(), run_name=name, tags=tags)
    params = [Param(k, str(row[k])) for k in MODEL_PARAMS if row.get(k) is not None]
    client.log_batch(run.info.run_id, params=params)
    return run.info.run_id


def log_epoch(out: str | Path, run_id: str, record: dict, timestamp_ms: int | None = None) -> None:
    """One epoch's metrics, at its step, as it happens (the gap: eval-mode train minus test accuracy)."""
    from mlflow.entities import Metric

    values = dict(record)
    if "train_eval_acc" in record and "test_acc" in record:
        values["generalization_gap"] = record["train_eval_acc"] - record["test_acc"]
    when, step = timestamp_ms or _now_ms(), int(record["epoch"])
    metrics = [Metric(k, clean(values[k]), when, step) for k in EPOCH_METRICS if values.get(k) is not None]
    _client(out).log_batch(run_id, metrics=metrics)


def finish_child(out: str | Path, run_id: str, row: dict | None, checkpoint: str | None, status: str = "FINISHED",
                 end_ms: int | None = None) -> None:  # fmt: skip
    """A child's final numbers (`row`: its summary row) and trained network (the final checkpoint's
    weights, as a logged model), and its end."""
    from mlflow.entities import Metric

    client = _client(out)
    if row is not None:
        when = end_ms or _now_ms()
        # The final gap under its own key: under the per-epoch key it would read as a point at step 0.
        names = {k: "final_generalization_gap" if k == "generalization_gap" else k for k in FINAL_METRICS}
        metrics = [Metric(names[k], clean(row[k]), when, 0) for k in FINAL_METRICS if row.get(k) is not None]
        client.log_batch(run_id, metrics=metrics)
        client.set_tag(run_id, "weights_sha256", row.get("weights_sha256", ""))
        if checkpoint and Path(checkpoint).is_file():
            log_model(out, run_id, checkpoint, float(row.get("dropout") or 0.0))
    client.set_terminated(run_id, status=status, end_time=end_ms or _now_ms())


_export_lock = threading.Lock()


def log_model(out: str | Path, run_id: str, checkpoint: str, dropout: float) -> str:
    """The checkpoint's network as MLflow's logged model of the run: `Net` with those weights, its
    signature (float32 images (N, 3, 32, 32) normalised to [-1, 1] → (N, 10) logits), the package's
    code so `mlflow.pytorch.load_model` needs no checkout, and torch as its requirement. Returns its id."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from dropout_lab.core.checkpoint import load_checkpoint
    from dropout_lab.core.model import Net

    model = Net(dropout)
    model.load_state_dict(load_checkpoint(Path(checkpoint))["model"])
    model.eval()
    # MLflow's default format, a `torch.export` graph: loads with no pickle and no checkout. A batch of 2
    # in the example keeps the batch dimension free (`torch.export` fixes a size-1 dimension).
    example = np.zeros((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    experiment = _client(out).get_run(run_id).info.experiment_id
    # One at a time in a process: `torch.export` traces through process-wide state (two trainings that end
    # together in threads would trip over each other), and the tracking URI and experiment are MLflow's globals.
    with _export_lock:
        mlflow.set_tracking_uri(tracking_uri(out))
        # The model belongs to the run's experiment (its artifacts under the experiment's location), not to
        # MLflow's Default one in the working folder.
        mlflow.set_experiment(experiment_id=experiment)
        info = mlflow.pytorch.log_model(
            model, name=MODEL_NAME, run_id=run_id, signature=infer_signature(example, logits),
            input_example=example, pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )  # fmt: skip
    return info.model_id


def finish_parent(out: str | Path, run_id: str, headline: dict[str, float], files: list[Path], status: str = "FINISHED",
                  end_ms: int | None = None) -> None:  # fmt: skip
    """The comparison's headline metrics (so MLflow's chart and compare views have them), the report's
    files, and the parent's end."""
    from mlflow.entities import Metric

    client = _client(out)
    when = end_ms or _now_ms()
    client.log_batch(run_id, metrics=[Metric(k, clean(v), when, 0) for k, v in headline.items() if v == v])
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status=status, end_time=when)


def headline_metrics(stats: list[dict]) -> dict[str, float]:
    """Per variant, from statistics.parquet's rows: mean final test accuracy and gap, and the difference
    from the baseline on both; fractions, as the child runs log accuracies."""
    out: dict[str, float] = {}
    for row in stats:
        if row["metric"] not in ("final_test_acc", "generalization_gap"):
            continue
        key = row["model"].replace("=", "_").replace(",", "")
        short = "test_acc" if row["metric"] == "final_test_acc" else "gap"
        out[f"{key}.{short}"] = row["mean"]
        if not row["baseline"]:
            out[f"{key}.{short}_vs_baseline"] = row["diff_vs_baseline"]
    return out


# MLflow's UI (3.x) shows every experiment in its GenAI view (Traces, Evaluations) unless told otherwise:
# its view switch reads this from the page's address, and keeps it while one browses from there.
TRAINING_VIEW = "?workflowType=machine_learning"


def run_page(out: str | Path, run_id: str) -> str | None:
    """The run's page in the tracking server's UI, in its model-training view (credentials left out, and
    redacted wherever else a URL carries them); None for a database store, which has no UI until
    `mlflow ui` serves one."""
    uri = tracking_uri(out)
    if urlsplit(uri).scheme.lower() not in ("http", "https"):
        return None
    experiment = _client(out).get_run(run_id).info.experiment_id
    return redact(f"{split_credentials(uri)[0].rstrip('/')}/#/experiments/{experiment}/runs/{run_id}{TRAINING_VIEW}")


def child_runs(out: str | Path, parent_id: str) -> dict[tuple[str, int], str]:
    """(model, seed) → child run id, of the children a parent has."""
    client = _client(out)
    parent = client.get_run(parent_id)
    found = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {(r.data.params.get("model"), int(r.data.params.get("seed", -1))): r.info.run_id for r in found}


def log_children_after(out: str | Path, parent: str, runs: list[dict], epochs: list[dict],
                       checkpoints: list[str | None] | None = None) -> None:  # fmt: skip
    """A child run per model that has none under `parent` yet (a model trained by an earlier run, read
    from the cache), from its recorded rows: `runs` one per model (with weights_sha256), `epochs` one
    per model and epoch; `checkpoints`, one per model, are logged as their weights."""
    have = child_runs(out, parent)
    for row, checkpoint in zip(runs, checkpoints or [None] * len(runs), strict=True):
        if (row["model"], row["seed"]) in have:
            continue
        child = start_child(out, parent, row, _ms(row, "started_at"))
        log_epochs_after(out, child, row, [e for e in epochs if (e["model"], e["seed"]) == (row["model"], row["seed"])])
        finish_child(out, child, row, checkpoint, end_ms=_ms(row, "finished_at"))


def log_epochs_after(out: str | Path, run_id: str, row: dict, epochs: list[dict]) -> None:
    """Epoch metrics logged after the fact, each at the time its epoch ended (from the run's start and
    the epochs' durations), so the charts' time axis is the training's."""
    when = _ms(row, "started_at")
    for e in sorted(epochs, key=lambda e: e["epoch"]):
        when += int(1000 * (e.get("epoch_seconds") or 0))
        log_epoch(out, run_id, e, when)


def run_params(runs: list[dict], variants: list) -> dict:
    """A parent run's parameters: the variants, each compared setting's values, the seeds, the recipe."""
    first = runs[0]
    compared = {s.plural.replace(" ", "_"): sorted({value for v in variants for f, value in v.settings if f == s.field})
                for s in SETTINGS}  # fmt: skip
    shared = {k: first.get(k) for k in ("epochs", "batch_size", "lr", "device", "precision", "dataset", "n_train")}
    return {"variants": ",".join(v.name for v in variants),
            **{k: ",".join(map(value_text, values)) for k, values in compared.items() if values},
            "seeds": ",".join(str(s) for s in sorted({r["seed"] for r in runs})), **shared}  # fmt: skip


def _ms(row: dict, key: str) -> int:
    """A row's training time stamp in MLflow's milliseconds: runs show how long training took."""
    return int(row[key].timestamp() * 1000)
