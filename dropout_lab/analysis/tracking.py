"""MLflow logging (optional: `pip install -e ".[mlflow]"`, `--mlflow`). No prefect here.

Each flow run that trained something becomes one parent MLflow run (its parameters, the report's
figures and summary as artifacts) with one child run per model variant (its parameters, every epoch's
metrics by step, the final and best numbers). Everything goes to the MLflow experiment `dropout-lab`
of `MLFLOW_TRACKING_URI` when the environment sets one (a tracking server), else of an embedded
store under the report folder's parent: `<out>/mlflow.db` with artifacts in `<out>/mlartifacts`
(no server, works offline; browse with `mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db`).
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from dropout_lab.config import SETTINGS, Variant, variant_of
from dropout_lab.runtime.redact import redact, split_credentials

EXPERIMENT = "dropout-lab"
STORE_FILE, ARTIFACTS_FOLDER = "mlflow.db", "mlartifacts"
EPOCH_METRICS = ("train_running_loss", "train_running_acc", "train_eval_loss", "train_eval_acc", "test_loss",
                 "test_acc", "generalization_gap", "epoch_seconds")  # fmt: skip
FINAL_METRICS = ("final_test_acc", "best_test_acc", "best_epoch", "generalization_gap", "final_test_loss",
                 "final_train_eval_acc", "train_seconds")  # fmt: skip
MODEL_PARAMS = ("model", "baseline", *(s.field for s in SETTINGS), "seed", "epochs", "batch_size", "lr", "device",
                "precision", "compiled", "stacked_variants", "n_params", "n_train", "n_train_eval", "n_test", "dataset",
                "data_verified", "data_provenance", "resumed_from_epoch")  # fmt: skip
RUN_TAGS = ("flow_run_id", "flow_run_name", "code_version", "experiment", "experiment_hash", "report_folder")


def check_available() -> None:
    """Raises ValueError (one line) when MLflow is asked for but not installed."""
    if importlib.util.find_spec("mlflow") is None:
        raise ValueError('--mlflow: MLflow is not installed here; pip install -e ".[mlflow]"')


STORE_TIMEOUT_S = 5.0
MLFLOW_TABLES = {"experiments", "runs", "alembic_version"}  # present in every MLflow database store


def check_store(out: str | Path) -> None:
    """Raises ValueError (one line, credentials redacted) when the tracking store cannot take this run,
    before any training: a server that does not answer within seconds (or is not MLflow), a database
    that is a folder or another program's file, a scheme MLflow does not know. Creates nothing."""
    uri = tracking_uri(out)
    scheme = urlsplit(uri).scheme.split("+")[0].lower()
    where = f"--mlflow: the tracking store {redact(uri)}"
    if scheme in ("http", "https"):
        _check_server(uri, where)
    elif scheme in ("sqlite", "postgresql", "mysql", "mssql"):
        _check_database(uri, scheme, where)
    elif scheme in ("", "file"):
        path = Path(urlsplit(uri).path if scheme else uri)
        if path.exists() and not path.is_dir():
            raise ValueError(f"{where} is a file, not a folder")
    elif scheme != "databricks":
        raise ValueError(f"{where}: unknown scheme {scheme!r} (http, https, sqlite, postgresql, mysql, file)")


def _check_server(uri: str, where: str) -> None:
    import httpx

    plain, auth = split_credentials(uri)
    try:
        answer = httpx.get(plain.rstrip("/") + "/health", timeout=STORE_TIMEOUT_S,
                           headers={"Authorization": auth} if auth else None)  # fmt: skip
    except httpx.HTTPError as e:
        raise ValueError(f"{where} does not answer within {STORE_TIMEOUT_S:.0f} s ({type(e).__name__})") from None
    if answer.status_code != 200:
        raise ValueError(f"{where} answers {answer.status_code} at /health: not an MLflow tracking server")


def _check_database(uri: str, scheme: str, where: str) -> None:
    import sqlalchemy as sa

    url = sa.make_url(uri)
    if scheme == "sqlite":
        path = Path(url.database or "")
        if path.is_dir():
            raise ValueError(f"{where} is a folder, not a database file")
        if not path.exists():
            return  # MLflow creates it
        engine = sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    else:
        engine = sa.create_engine(url, connect_args={"connect_timeout": int(STORE_TIMEOUT_S)})
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
    except sa.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise ValueError(f"{where} cannot be opened ({redact(reason)})") from None
    finally:
        engine.dispose()
    if tables and not MLFLOW_TABLES <= tables:
        raise ValueError(f"{where} is another program's database (no MLflow tables): nothing was written to it")


def tracking_uri(out: str | Path) -> str:
    """MLFLOW_TRACKING_URI when set (MLflow's own setting), else the embedded store under `out`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or _embedded_uri(out)


def _embedded_uri(out: str | Path) -> str:
    return f"sqlite:///{(Path(out) / STORE_FILE).resolve()}"


def _experiment_id(client, out: Path) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return found.experiment_id
    location = (out / ARTIFACTS_FOLDER).resolve().as_uri() if tracking_uri(out) == _embedded_uri(out) else None
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=location)
    except MlflowException:  # another run created it meanwhile
        return client.get_experiment_by_name(EXPERIMENT).experiment_id


def log_flow_run(out: str | Path, runs: list[dict], epochs: list[dict], files: list[Path]) -> str:
    """Log one flow run's models (history rows of analysis/history.py: `runs` one per model, `epochs` one
    per model and epoch) and its report files. Returns the parent run's id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri(out))
    experiment_id = _experiment_id(client, out)
    first = runs[0]
    now = int(time.time() * 1000)
    parent = client.create_run(
        experiment_id,
        start_time=min(_ms(r, "started_at") for r in runs),
        run_name=first["flow_run_name"] or first["experiment"],
        tags={k: str(first[k]) for k in RUN_TAGS},
    )
    variants = sorted({variant_of(r) for r in runs}, key=Variant.order)
    compared = {s.plural.replace(" ", "_"): sorted({value for v in variants for f, value in v.settings if f == s.field})
                for s in SETTINGS}  # fmt: skip
    shared = {k: first.get(k) for k in ("epochs", "batch_size", "lr", "device", "precision", "dataset", "n_train")}
    client.log_batch(parent.info.run_id, params=[
        Param("variants", ",".join(v.name for v in variants)),
        *(Param(key, ",".join(f"{p:g}" for p in values)) for key, values in compared.items() if values),
        Param("seeds", ",".join(str(s) for s in sorted({r["seed"] for r in runs}))),
        *(Param(k, str(v)) for k, v in shared.items() if v is not None),
    ])  # fmt: skip
    for path in files:
        client.log_artifact(parent.info.run_id, str(path))
    for row in runs:
        child = client.create_run(
            experiment_id,
            start_time=_ms(row, "started_at"),
            run_name=row["model"] + f" seed {row['seed']}",
            tags={"mlflow.parentRunId": parent.info.run_id, "weights_sha256": row["weights_sha256"],
                  **{k: str(row[k]) for k in RUN_TAGS}},
        )  # fmt: skip
        mine = [e for e in epochs if (e["model"], e["seed"]) == (row["model"], row["seed"])]
        metrics = [Metric(name, float(e[name]), now, int(e["epoch"])) for e in mine for name in EPOCH_METRICS
                   if e.get(name) is not None]  # fmt: skip
        metrics += [Metric(name, float(row[name]), now, 0) for name in FINAL_METRICS if row.get(name) is not None]
        params = [Param(name, str(row[name])) for name in MODEL_PARAMS if row.get(name) is not None]
        client.log_batch(child.info.run_id, params=params)
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(child.info.run_id, metrics=metrics[start : start + 1000])
        client.set_terminated(child.info.run_id, end_time=_ms(row, "finished_at"))
    client.set_terminated(parent.info.run_id, end_time=max(_ms(r, "finished_at") for r in runs))
    return parent.info.run_id


def _ms(row: dict, key: str) -> int:
    """A row's training time stamp in MLflow's milliseconds: runs show how long training took."""
    return int(row[key].timestamp() * 1000)
