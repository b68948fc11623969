"""Recording the run history in MLflow's tracking store, the one store of record (analysis/history.py reads
it; `--history URL` or MLFLOW_TRACKING_URI names it, by default `sqlite:///<out>/mlflow.db`). No prefect here.

Each comparison (an experiment: the report folder's digest) is one MLflow run of kind `comparison`: its
parameters, headline metrics (the report's own statistics, fractions), the report's figures and summary.
Each trained model is a child run of kind `model`: its summary parameters, every epoch's metrics at its
step, its final numbers, its identity as tags (`model_key`: the training identity; the weights' SHA-256,
the flow run, the code version) and its network as a logged model with its signature. Recorded once the
report is written: a run that fails or is stopped leaves nothing open in MLflow, a resumed run records each
model once with all its epochs, and a rerun that reuses cached models records nothing again. Runs go to
MLFLOW_EXPERIMENT_NAME (default `dropout-lab`), a model-training experiment.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from dropout_lab.analysis.history import COMPARISON, KIND, MODEL, experiment_name, scheme_of, shown, sqlite_path
from dropout_lab.analysis.tables import PER_EPOCH_SCHEMA, SUMMARY_SCHEMA, named
from dropout_lab.config import SETTINGS, value_text
from dropout_lab.locks import held
from dropout_lab.probe import REMOTE_RETRIES, ProbeFailed, database_url, first_line, remote_deadlines, within_deadline
from dropout_lab.redact import redact, split_credentials

# Before MLflow is imported: it would print its own "🏃 View run ... at: URL" lines to stdout (credentials and
# all) and configure its own log handlers; its records reach the project's handlers (the run's log, redacted).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
remote_deadlines()  # MLflow's retries within the run's deadline for a remote (it reads them at each request)
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, latency, tokens).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
ARTIFACTS_FOLDER = "mlartifacts"
# What MLflow logs of each model, from the report's schemas (analysis/tables.py: each column's role).
EPOCH_METRICS = tuple(named(PER_EPOCH_SCHEMA, "metric"))
FINAL_METRICS = tuple(named(SUMMARY_SCHEMA, "metric"))
MODEL_PARAMS = tuple(named(SUMMARY_SCHEMA, "param"))
# A model run's tags beside MLflow's own: what identifies it and which run recorded it (history.RUN_FIELDS).
RUN_TAGS = ("recorded_at", "flow_run_id", "flow_run_name", "code_version", "experiment", "experiment_hash",
            "report_folder", "weights_sha256", "model_key", "started_at", "finished_at", "imported_from")  # fmt: skip


def check_available() -> None:
    """Raises ValueError (one line) when MLflow, the run history's store, is not installed."""
    if importlib.util.find_spec("mlflow") is None:
        raise ValueError("--history: MLflow is not installed here; pip install -e .")


# MLflow creates these two first, in one transaction (its initial tables), and `alembic_version` only when
# it migrates them afterwards: a store another run is setting up has them without it, and is MLflow's.
MLFLOW_TABLES = {"experiments", "runs"}
DATABASES = ("sqlite", "postgresql", "mysql", "mssql")


def check_store(uri: str) -> None:
    """Raises ValueError (one line, credentials redacted) when the tracking store cannot take this run,
    before any training and within the probe's deadline: a server whose real read (its experiments) does
    not answer or is not MLflow's, a database that is a folder, another program's file or needs a driver
    that is not installed, a file store (MLflow refuses those), an unknown scheme. Creates nothing."""
    check_available()
    scheme = scheme_of(uri)
    where = f"--history: the tracking store {redact(uri)}"
    try:
        if scheme in ("http", "https"):
            within_deadline(where, lambda: _check_server(uri), address=uri)
        elif scheme in DATABASES:
            database_url(uri, where)
            within_deadline(where, lambda: _check_database(uri, scheme), address=uri)
        elif scheme == "file":
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
    if "dropout_lab_history" in tables:
        raise ValueError("a run history of an earlier version: `dropout-lab history --import URL` records it into "
                         "the MLflow store once; nothing was written to it")  # fmt: skip
    if tables and not MLFLOW_TABLES <= tables:
        raise ValueError("another program's database (no MLflow tables): nothing was written to it")


SETUP_LOCK = 20_261_206  # the PostgreSQL advisory lock held while MLflow sets up its tables
_ready: set[str] = set()
_ready_lock = threading.Lock()


def client(uri: str):
    """MLflow's client of the store, the store set up first, one process at a time: MLflow creates and
    migrates a new database when its client first opens it, and two processes doing that at once break
    its migrations (a file lock beside a SQLite file, an advisory lock in a PostgreSQL database)."""
    import mlflow.store.db.utils as db_utils
    from mlflow import MlflowClient

    # MLflow opens a database store up to 10 times, 1.0 s of pauses growing to 51 s: 100 s and more of
    # its 4-line warnings when the server went away after the probe. Bounded as the HTTP retries are.
    db_utils.MAX_RETRY_COUNT = min(db_utils.MAX_RETRY_COUNT, REMOTE_RETRIES + 1)
    with _ready_lock:
        if uri not in _ready:
            with _setting_up(uri):
                _set_up(uri)
            _ready.add(uri)
    return MlflowClient(tracking_uri=uri)


def _set_up(uri: str) -> None:
    """Open the store once, MLflow creating or migrating it. A new SQLite store is made whole or not at all:
    MLflow builds its tables (seconds, while the trainings run) in a file beside it, renamed into place when
    done, so a run stopped meanwhile leaves no half-made store that every later run would fail to open."""
    from mlflow import MlflowClient

    path = sqlite_path(uri)
    if path is None or path.exists():
        MlflowClient(tracking_uri=uri)
        return
    new = path.with_name(f".{path.name}.tmp-{os.getpid()}-new")  # a dead writer's: removed as leftovers are
    new.unlink(missing_ok=True)
    MlflowClient(tracking_uri=f"sqlite:///{new}")
    os.replace(new, path)


@contextlib.contextmanager
def _setting_up(uri: str) -> Iterator[None]:
    path = sqlite_path(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with held(f"{path}.lock", f"the MLflow store {path}"):
            yield
    elif urlsplit(uri).scheme.startswith("postgresql"):
        import sqlalchemy as sa

        engine = sa.create_engine(uri, poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f"SELECT pg_advisory_lock({SETUP_LOCK})"))  # released when it disconnects
                yield
        finally:
            engine.dispose()
    else:
        yield


def experiment_id(mlflow_client, uri: str) -> str:
    """The id of the project's experiment, made a model-training experiment (created with artifacts beside a
    SQLite store when missing)."""
    from mlflow.exceptions import MlflowException

    name = experiment_name()
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        for key, value in EXPERIMENT_KIND.items():  # one made by an older version: a training experiment too
            if found.tags.get(key) != value:
                mlflow_client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    path = sqlite_path(uri)
    location = (path.parent / ARTIFACTS_FOLDER).resolve().as_uri() if path else None
    try:
        return mlflow_client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException:  # another run created it meanwhile
        return mlflow_client.get_experiment_by_name(name).experiment_id


PROJECT = Path(__file__).resolve().parents[2]


def system_tags(run_name: str) -> dict[str, str]:
    """MLflow's own tags for where a run came from: the commit, branch and repository as MLflow's own git
    resolution finds them (asked about the project's folder: the process's entry point is Prefect's
    engine in a served run), the entry point, the user (MLflow's own resolution)."""
    from mlflow.tracking.context.default_context import _get_user
    from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url
    from mlflow.utils.mlflow_tags import MLFLOW_USER

    tags = {"mlflow.source.name": "flows/compare.py", "mlflow.source.type": "LOCAL", "mlflow.runName": run_name,
            MLFLOW_USER: _get_user()}  # fmt: skip
    found = {"mlflow.source.git.commit": get_git_commit(str(PROJECT)), "mlflow.source.git.branch":
             get_git_branch(str(PROJECT)), "mlflow.source.git.repoURL": get_git_repo_url(str(PROJECT))}  # fmt: skip
    return {**tags, **{k: redact(v) for k, v in found.items() if v}}


def clean(value: float) -> float:
    """A metric without float noise (-0.033999999999999975 → -0.034): 12 significant digits, more
    than any measured number here has."""
    return float(f"{float(value):.12g}")


def _ms(when: datetime | str) -> int:
    """A time stamp in MLflow's milliseconds: runs show how long training took."""
    return int((datetime.fromisoformat(when) if isinstance(when, str) else when).timestamp() * 1000)


def record(uri: str, comparison: dict, models: list[dict], files: list[Path] = (), log_models: bool = True,
           answered: Callable[[], None] = lambda: None) -> tuple[int, str]:  # fmt: skip
    """Record one comparison and its models; returns (models recorded, the comparison's run id).

    `comparison`: tags (experiment, experiment_hash, flow run, code version, report folder), `name`,
    `params` and `metrics`. `models`: each {"row": its summary row with the RUN_TAGS, "epochs": its
    per-epoch rows, "checkpoint": its final checkpoint or None}. A model already recorded in this
    experiment with these very weights is skipped; with other weights (retrained) its old run is replaced.
    `answered()` is called as the store answers (probe.until_silent's watch)."""
    from mlflow.entities import Metric, Param

    mlflow = client(uri)
    exp = experiment_id(mlflow, uri)
    answered()
    digest = comparison["tags"]["experiment_hash"]
    same = f"tags.experiment_hash = '{digest}'"
    found = mlflow.search_runs([exp], filter_string=f"{same} and tags.`{KIND}` = '{MODEL}'", max_results=50_000)
    recorded = {r.data.tags.get("model_key"): r for r in found}
    parents = mlflow.search_runs([exp], filter_string=f"{same} and tags.`{KIND}` = '{COMPARISON}'", max_results=1)
    start = min((_ms(m["row"]["started_at"]) for m in models), default=None)
    parent = parents[0].info.run_id if parents else mlflow.create_run(
        exp, start_time=start, run_name=comparison["name"],
        tags={**system_tags(comparison["name"]), **comparison["tags"], KIND: COMPARISON}).info.run_id  # fmt: skip
    with ended_if_stopped(mlflow, parent):
        added = 0
        for model in models:
            added += _record_model(mlflow, exp, parent, model, recorded.get(model["row"]["model_key"]), uri, log_models)
            answered()
        params = [Param(k, str(v)) for k, v in comparison.get("params", {}).items() if v is not None]
        metrics = [Metric(k, clean(v), _ms(comparison["tags"]["recorded_at"]), 0)
                   for k, v in comparison.get("metrics", {}).items() if v == v]  # fmt: skip
        if not parents or parents[0].info.status != "FINISHED":  # new, or its recording was stopped
            mlflow.log_batch(parent, metrics=metrics, params=params)
            for path in files:
                mlflow.log_artifact(parent, str(path))
    mlflow.set_terminated(parent, status="FINISHED", end_time=max((_ms(m["row"]["finished_at"]) for m in models),
                                                                   default=None))  # fmt: skip
    return added, parent


@contextlib.contextmanager
def ended_if_stopped(mlflow, run_id: str) -> Iterator[None]:
    """An MLflow run being recorded ends KILLED when the recording is stopped (Ctrl-C, SIGTERM) and FAILED
    when it fails, never left RUNNING."""
    try:
        yield
    except BaseException as e:
        with contextlib.suppress(Exception):
            mlflow.set_terminated(run_id, status="FAILED" if isinstance(e, Exception) else "KILLED")
        raise


def _record_model(mlflow, exp: str, parent: str, model: dict, earlier, uri: str, log_models: bool) -> int:
    """One model's run under the comparison's; 0 when this experiment already holds it, finished, with these
    very weights. A retrained model (other weights) or one whose recording was stopped replaces its run."""
    from mlflow.entities import Metric, Param

    row = model["row"]
    if earlier is not None:
        if earlier.info.status == "FINISHED" and earlier.data.tags.get("weights_sha256") == row["weights_sha256"]:
            return 0
        mlflow.delete_run(earlier.info.run_id)
    name = f"{row['model']} seed {row['seed']}"
    tags = {**system_tags(name), "mlflow.parentRunId": parent, KIND: MODEL,
            **{k: str(row[k]) for k in RUN_TAGS if row.get(k) is not None}}  # fmt: skip
    run = mlflow.create_run(exp, start_time=_ms(row["started_at"]), run_name=name, tags=tags).info.run_id
    with ended_if_stopped(mlflow, run):
        steps = [Metric(k, clean(e[k]), _ms(row["started_at"]), int(e["epoch"]))
                 for e in model["epochs"] for k in EPOCH_METRICS if e.get(k) is not None]  # fmt: skip
        finals = [Metric("final_generalization_gap" if k == "generalization_gap" else k, clean(row[k]),
                         _ms(row["finished_at"]), 0) for k in FINAL_METRICS if row.get(k) is not None]  # fmt: skip
        params = [Param(k, str(row[k])) for k in MODEL_PARAMS if row.get(k) is not None]
        for at in range(0, len(steps) + len(finals), 1000):  # MLflow takes up to 1,000 metrics per batch
            mlflow.log_batch(run, metrics=(steps + finals)[at : at + 1000], params=params if at == 0 else [])
        if log_models and model.get("checkpoint") and Path(model["checkpoint"]).is_file():
            log_model(uri, run, model["checkpoint"], row)
    mlflow.set_terminated(run, status="FINISHED", end_time=_ms(row["finished_at"]))
    return 1


_export_lock = threading.Lock()


def log_model(uri: str, run_id: str, checkpoint: str, row: dict) -> str:
    """The checkpoint's network as MLflow's logged model of the run, named after the model and seed
    (`logged_model_name`): `Net` with those weights, its signature (float32 images (N, 3, 32, 32)
    normalised to [-1, 1] → (N, 10) logits), torch as its requirement. Returns its id."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from dropout_lab.core.checkpoint import load_checkpoint
    from dropout_lab.core.model import Net

    model = Net(float(row.get("dropout") or 0.0))
    model.load_state_dict(load_checkpoint(Path(checkpoint))["model"])
    model.eval()
    # MLflow's default format, a `torch.export` graph: loads with no pickle and no checkout. A batch of 2
    # in the example keeps the batch dimension free (`torch.export` fixes a size-1 dimension).
    example = np.zeros((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    experiment = client(uri).get_run(run_id).info.experiment_id
    # One at a time in a process: `torch.export` traces through process-wide state, and the tracking URI and
    # experiment are MLflow's globals.
    with _export_lock:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment_id=experiment)
        info = mlflow.pytorch.log_model(
            model, name=logged_model_name(row), run_id=run_id,
            signature=infer_signature(example, logits), input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )  # fmt: skip
    return info.model_id


def logged_model_name(row: dict) -> str:
    """`dropout-0_25-seed-0`, `baseline-seed-0`: a model's logged-model name (MLflow refuses '.' and ':' there)."""
    return re.sub(r"[^\w-]+", "-", f"{row['model']} seed {row['seed']}".replace(".", "_"))


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


def run_params(rows: list[dict], variants: list) -> dict:
    """A comparison's parameters: the variants, each compared setting's values, the seeds, the recipe."""
    first = rows[0]
    compared = {s.plural.replace(" ", "_"): sorted({value for v in variants for f, value in v.settings if f == s.field})
                for s in SETTINGS}  # fmt: skip
    shared = {k: first.get(k) for k in ("epochs", "batch_size", "lr", "device", "precision", "dataset", "n_train")}
    return {"variants": ",".join(v.name for v in variants),
            **{k: ",".join(map(value_text, values)) for k, values in compared.items() if values},
            "seeds": ",".join(str(s) for s in sorted({r["seed"] for r in rows})), **shared}  # fmt: skip


# MLflow's UI (3.x) shows every experiment in its GenAI view (Traces, Evaluations) unless told otherwise:
# its view switch reads this from the page's address, and keeps it while one browses from there.
TRAINING_VIEW = "?workflowType=machine_learning"


def run_page(uri: str, run_id: str | None = None) -> str | None:
    """The run's page (else the experiment's) in the tracking server's UI, in its model-training view
    (credentials left out); None for a database store, which has no UI until `mlflow ui` serves one."""
    if urlsplit(uri).scheme.lower() not in ("http", "https"):
        return None
    mlflow = client(uri)
    experiment = mlflow.get_run(run_id).info.experiment_id if run_id else experiment_id(mlflow, uri)
    page = f"{split_credentials(uri)[0].rstrip('/')}/#/experiments/{experiment}"
    return redact(f"{page}/runs/{run_id}{TRAINING_VIEW}" if run_id else f"{page}{TRAINING_VIEW}")


def ui_command(uri: str) -> str:
    """How to see a database store's runs: `mlflow ui --backend-store-uri URI` (redacted)."""
    return f"mlflow ui --backend-store-uri {shown(uri)}"


def code_version(root: Path = PROJECT) -> str:
    """The project's git commit (`+dirty` when tracked files changed), or without git a hash of its
    Python source (`pkg-…`): which code produced a row."""
    import hashlib
    import subprocess

    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=10).stdout.strip()  # fmt: skip
            return commit.stdout.strip()[:12] + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    digest = hashlib.sha256()
    for source in sorted(p for part in ("dropout_lab", "tasks", "flows") for p in (root / part).rglob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return "pkg-" + digest.hexdigest()[:12]


# --- histories recorded before MLflow was the store of record ------------------------------------------


def _typed_row(row: dict) -> dict:
    """A row as an earlier history or a report folder holds it, with the summary's types (booleans stored
    as 0/1, times as ISO-8601 text)."""
    import pyarrow as pa

    kinds = {f.name: f.type for f in (*SUMMARY_SCHEMA, *PER_EPOCH_SCHEMA)}
    out = dict(row)
    for name, value in row.items():
        kind = kinds.get(name)
        if value is None or kind is None:
            continue
        if pa.types.is_boolean(kind):
            out[name] = bool(value)
        elif pa.types.is_timestamp(kind) and isinstance(value, str):
            out[name] = datetime.fromisoformat(value)
    return out


def record_rows(uri: str, runs: list[dict], epochs: list[dict], source: str) -> int:
    """Record model rows of an earlier history or of report folders (each with the run fields it has),
    grouped by experiment; an experiment already in the store is skipped whole. Returns models recorded."""
    from dropout_lab.analysis.history import read

    have = {r["experiment_hash"] for r in read(uri)}
    added, by_experiment = 0, {}
    for row in map(_typed_row, runs):
        by_experiment.setdefault(row["experiment_hash"], []).append(row)
    for digest, rows in by_experiment.items():
        if digest in have:
            continue
        first = rows[0]
        recorded_at = first.get("recorded_at") or max(r["finished_at"] for r in rows)
        meta = {"recorded_at": recorded_at.isoformat() if isinstance(recorded_at, datetime) else str(recorded_at),
                "flow_run_id": first.get("flow_run_id") or "", "flow_run_name": first.get("flow_run_name") or "",
                "code_version": first.get("code_version") or "unknown", "experiment": first["experiment"],
                "experiment_hash": digest, "report_folder": first.get("report_folder") or "",
                "imported_from": source}  # fmt: skip
        models = []
        for row in rows:
            mine = [_typed_row(e) for e in epochs if (e.get("experiment_hash", digest), e["model"], e["seed"]) ==
                    (digest, row["model"], row["seed"])]  # fmt: skip
            key = {"weights_sha256": row.get("weights_sha256") or "imported", "model_key": f"{row['model']} seed "
                   f"{row['seed']}", "started_at": row["started_at"].isoformat(),
                   "finished_at": row["finished_at"].isoformat()}  # fmt: skip
            models.append({"row": {**row, **meta, **key}, "epochs": mine, "checkpoint": None})
        comparison = {"name": meta["flow_run_name"] or meta["experiment"], "tags": meta}
        added += record(uri, comparison, models, log_models=False)[0]
    return added


def import_history(source: str, uri: str) -> int:
    """Record a run history of an earlier version (its own `runs` and `epochs` tables, in a SQLite file or
    a database URL) into the MLflow store, once: experiments already there are skipped. Returns models."""
    import sqlalchemy as sa

    url = source if "://" in source else f"sqlite:///{Path(source).resolve()}"
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            runs = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM runs"))]
            epochs = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM epochs"))]
    except sa.exc.SQLAlchemyError as e:
        raise ValueError(f"{shown(source)}: not a run history of an earlier version ({first_line(e)})") from None
    finally:
        engine.dispose()
    return record_rows(uri, runs, epochs, shown(source)) if runs else 0


def import_legacy(out: str | Path, uri: str) -> int:
    """The history file an earlier version kept under `out` (history.sqlite), recorded once: afterwards it is
    renamed history.sqlite.imported (kept, never read again). Returns the models recorded."""
    from dropout_lab.analysis.history import LEGACY_FILE

    legacy = Path(out) / LEGACY_FILE
    if not legacy.is_file():
        return 0
    added = import_history(str(legacy), uri)
    os.replace(legacy, legacy.with_name(legacy.name + ".imported"))
    return added


def import_reports(out: Path, uri: str) -> int:
    """Record report folders written before the history existed (`<out>/*/summary.parquet`): an experiment
    already in the history is skipped. Returns the models recorded."""
    import logging

    import pyarrow as pa
    import pyarrow.parquet as pq

    runs, epochs = [], []
    for summary_file in sorted(out.glob("*/summary.parquet")):
        folder = summary_file.parent
        experiment, _, digest = folder.name.rpartition("-")
        epochs_file = next((f for f in (folder / "per_epoch.parquet", folder / "history.parquet") if f.exists()), None)
        try:
            summary = pq.read_table(summary_file).to_pylist()
            per_epoch = pq.read_table(epochs_file).to_pylist() if epochs_file else []  # history.parquet: < 2026-12
        except (OSError, pa.ArrowException) as e:
            logging.getLogger(__name__).warning("history: %s skipped: not a readable report (%s)", folder,
                                                first_line(e))  # fmt: skip
            continue
        if missing := sorted({"model", "seed", "finished_at"} - set(summary[0] if summary else ())):
            logging.getLogger(__name__).warning("history: %s skipped: not one of our reports (no %s)", folder,
                                                ", ".join(missing) or "rows")  # fmt: skip
            continue
        meta = {"experiment": experiment, "experiment_hash": digest, "report_folder": str(folder.resolve())}
        runs += [{**meta, **row} for row in summary]
        epochs += [{**meta, **row} for row in per_epoch]
    return record_rows(uri, runs, epochs, str(out)) if runs else 0
