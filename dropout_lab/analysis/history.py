"""The run history: every trained model of every completed flow run, as MLflow keeps it. MLflow's tracking
store is the one store of record (analysis/tracking.py writes it: one run per comparison, a child run per
model with its parameters, per-epoch and final metrics and tags); `dropout-lab history`, the Prefect
table artifact and MLflow's own UI all read that one store.

Reading goes around MLflow's client on purpose: importing it and opening its store takes ~3 s on 2 cores,
and a listing must answer in well under that. A database store (SQLite, PostgreSQL) is read with one
query per table of MLflow's schema (runs, tags, params, latest_metrics), a tracking server through MLflow's
documented REST API (`runs/search`); both read-only. Rows come back as the report's summary rows (the
columns of analysis/tables.py SUMMARY_SCHEMA, typed as there) plus the run fields (RUN_FIELDS).

A model is identified by its training identity (`model_key`: its settings, seed, data, code and epochs:
keys.train_key) within its experiment: a retrained model replaces its earlier run, and a model is never
counted twice. Histories written by earlier versions (`history.sqlite`, our own tables) are imported
once (`import_history`), nothing lost.
"""

from __future__ import annotations

import functools
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from dropout_lab.config import Variant, variant_of
from dropout_lab.probe import ProbeFailed, database_url, within_deadline
from dropout_lab.redact import redact, split_credentials

if TYPE_CHECKING:
    import pyarrow as pa

STORE_FILE = "mlflow.db"  # the default store, under the flow's --out folder
LEGACY_FILE = "history.sqlite"  # the store of versions before 2026-12-06, imported once
EXPERIMENT = "dropout-lab"
KIND, MODEL, COMPARISON = "dropout_lab.kind", "model", "comparison"  # a run's tag: what it records
# The tags every model run carries beside its parameters and metrics: which run recorded it, from what.
RUN_FIELDS = ("recorded_at", "flow_run_id", "flow_run_name", "code_version", "experiment", "experiment_hash",
              "report_folder", "weights_sha256", "model_key")  # fmt: skip
FINAL = {"final_generalization_gap": "generalization_gap"}  # metric name in MLflow → summary column


class HistoryError(RuntimeError):
    """The history cannot be read or written (one line, naming the store)."""


def store_uri(out: str | Path, given: str | None = None) -> str:
    """The run history's MLflow tracking URI: `given` (`--history`), else MLFLOW_TRACKING_URI (MLflow's own
    setting), else the SQLite file `<out>/mlflow.db`; PostgreSQL through psycopg 3 (the driver installed)."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(out) / STORE_FILE).resolve()}"
    return "postgresql+psycopg://" + uri.removeprefix("postgresql://") if uri.startswith("postgresql://") else uri


def experiment_name() -> str:
    """MLflow's experiment of this project's runs: MLFLOW_EXPERIMENT_NAME (MLflow's own setting), else dropout-lab."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT


def scheme_of(uri: str) -> str:
    """A store URI's scheme (`sqlite`, `postgresql`, `http`, ...); ValueError (one line) for text that is not
    a URL: a path or an address with its scheme forgotten is never taken as a file."""
    scheme = urlsplit(uri).scheme.split("+")[0].lower()
    if not scheme or "://" not in uri:
        raise ValueError(f"--history {redact(uri)}: not a tracking store URL (sqlite:///FILE, postgresql://HOST/DB, "
                         "http://HOST:5000); a path or an address needs its scheme")  # fmt: skip
    return scheme


def shown(uri: str) -> str:
    """A store's name for messages: its URL with any password redacted."""
    return redact(str(uri))


def sqlite_path(uri: str) -> Path | None:
    """The file of a SQLite store (None for any other store)."""
    return Path(uri.split("///", 1)[1]) if uri.startswith("sqlite:///") else None


def exists(uri: str) -> bool:
    """Whether the store may hold a history (a SQLite file that is there; any server or database)."""
    path = sqlite_path(uri)
    try:
        return path is None or path.is_file()
    except OSError as e:  # a name the file system cannot hold (too long)
        raise HistoryError(f"{shown(uri)}: {e.strerror}") from None


def read(
    uri: str,
    variants: list[Variant] | None = None,
    seeds: list[int] | None = None,
    dataset: str | None = None,
    since: datetime | None = None,
    last: int | None = None,
    experiments: list[str] | None = None,
) -> list[dict]:
    """Every recorded model of the store's experiment, oldest first (then report order and seed), one row each
    (the newest run of a model identity), filtered: these variants (each alone or combined with other settings;
    the baseline alone), seeds, dataset, recorded at or
    after `since`, experiments (exact names, or digests by their first characters); `last` keeps the rows
    of the last N flow runs. Read-only; HistoryError (one line) when the store cannot be read."""
    try:
        scheme = scheme_of(uri)
    except ValueError as e:
        raise HistoryError(str(e)) from None
    reader = _rest_runs if scheme in ("http", "https") else _sql_runs
    try:
        runs = within_deadline(f"the run history {shown(uri)}", lambda: reader(uri), address=uri)
    except ProbeFailed as e:
        raise HistoryError(str(e)) from None
    newest: dict[tuple, dict] = {}
    for run in sorted((_row(r) for r in runs), key=lambda r: r["recorded_at"]):
        newest[(run["experiment_hash"], run["model_key"])] = run  # a retrained model: its latest run
    rows = [r for r in newest.values() if _wanted(r, variants, seeds, dataset, since, experiments)]
    if last:
        order = sorted({run_key(r): r["recorded_at"] for r in rows}.items(), key=lambda kv: kv[1])
        keep = {key for key, _ in order[-last:]}
        rows = [r for r in rows if run_key(r) in keep]
    return sorted(rows, key=lambda r: (r["recorded_at"], run_key(r), variant_of(r).order(), r["seed"]))


def _wanted(row: dict, variants, seeds, dataset, since, experiments) -> bool:
    return ((not variants or any(_within(v, variant_of(row)) for v in variants)) and (not seeds or row["seed"] in seeds)
            and (not dataset or row["dataset"] == dataset) and (not since or row["recorded_at"] >= since)
            and (not experiments or any(row["experiment"] == e or (e and row["experiment_hash"].startswith(e))
                                        for e in experiments)))  # fmt: skip


def _within(wanted: Variant, model: Variant) -> bool:
    """`dropout=0.25` names the model of that rate and every combination with it (`--variant dropout=0.25,...`);
    the baseline names the baseline alone."""
    return set(wanted.settings) <= set(model.settings) if wanted.settings else model.is_baseline


def run_key(row: dict) -> str:
    """The flow run a row belongs to (imported rows: their report folder)."""
    return row["flow_run_id"] or row["report_folder"]


@functools.cache
def columns() -> dict:
    """The summary's columns and their Arrow types, imported when rows are read: a refusal answers
    without pyarrow's import (a third of the command's time)."""
    from dropout_lab.analysis.tables import SUMMARY_SCHEMA

    return {f.name: f.type for f in SUMMARY_SCHEMA}


def _typed(name: str, text: str | None):
    import pyarrow as pa

    kind = columns().get(name)
    if text is None or kind is None or text == "None":
        return None if text == "None" else text
    if pa.types.is_boolean(kind):
        return text == "True"
    if pa.types.is_integer(kind):
        return int(float(text))
    if pa.types.is_floating(kind):
        return float(text)
    if pa.types.is_timestamp(kind):
        return datetime.fromisoformat(text)
    return text


def _row(run: tuple[dict, dict, dict]) -> dict:
    """A model's history row from its run's (params, metrics, tags)."""
    params, metrics, tags = run
    row = {name: _typed(name, value) for name, value in params.items()}
    row |= {FINAL.get(name, name): value for name, value in metrics.items() if FINAL.get(name, name) in columns()}
    row |= {name: tags.get(name, "") for name in RUN_FIELDS}
    for name in ("recorded_at", "started_at", "finished_at"):
        row[name] = datetime.fromisoformat(tags[name]) if tags.get(name) else None
    row["model_key"] = row["model_key"] or f"{row['model']}/{row['seed']}/{row['weights_sha256']}"
    return {**{name: None for name in columns()}, **row}


def _sql_runs(uri: str) -> list[tuple[dict, dict, dict]]:
    """(params, metrics, tags) of every active, finished model run of the experiment, from MLflow's tables: a
    run another process is still recording (its params before its metrics) is not a model yet."""
    import sqlalchemy as sa

    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        return []  # no store yet
    if path is not None:  # read-only: nothing is created or changed
        engine = sa.create_engine("sqlite://", creator=lambda: _sqlite_readonly(path), poolclass=sa.NullPool)
    else:
        url = database_url(uri, "--history")
        engine = sa.create_engine(
            url,
            poolclass=sa.NullPool,
            connect_args={"connect_timeout": 8} if url.get_backend_name() == "postgresql" else {},
        )
    runs = """SELECT r.run_uuid FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id
              JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = :kind AND t.value = :model
              WHERE e.name = :experiment AND r.lifecycle_stage = 'active' AND r.status = 'FINISHED'"""
    found: dict[str, tuple[dict, dict, dict]] = {}
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if not tables:
                return []  # a store MLflow has not set up yet
            if missing := {"experiments", "runs", "tags", "params", "latest_metrics"} - tables:
                raise HistoryError(f"{shown(uri)}: not an MLflow store (no {', '.join(sorted(missing))} table); "
                                   "nothing was changed")  # fmt: skip
            bind = {"kind": KIND, "model": MODEL, "experiment": experiment_name()}
            # The finished runs once: each query below is its own snapshot, and a run another process finishes
            # or replaces between them would otherwise come back with its parameters but not its metrics.
            ids = [row[0] for row in conn.execute(sa.text(runs), bind)]
            for at_once in (ids[i : i + 500] for i in range(0, len(ids), 500)):
                for table, at in (("params", 0), ("latest_metrics", 1), ("tags", 2)):
                    query = sa.text(f"SELECT x.run_uuid, x.key, x.value FROM {table} x WHERE x.run_uuid IN :ids"
                                    ).bindparams(sa.bindparam("ids", expanding=True))  # fmt: skip
                    for run_uuid, key, value in conn.execute(query, {"ids": at_once}):
                        found.setdefault(run_uuid, ({}, {}, {}))[at][key] = value
    except sa.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise HistoryError(f"{shown(uri)}: not a readable MLflow store ({redact(reason)})") from None
    finally:
        engine.dispose()
    return list(found.values())


LOCK_WAIT_S = 10.0  # a SQLite store a writer holds locked is waited for this long


def _sqlite_readonly(path: Path):
    import sqlite3

    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=LOCK_WAIT_S)


def _rest_runs(uri: str) -> list[tuple[dict, dict, dict]]:
    """The same from a tracking server, through MLflow's REST API (runs/search, page by page)."""
    import httpx

    plain, auth = split_credentials(uri)
    base, headers = plain.rstrip("/") + "/api/2.0/mlflow", {"Authorization": auth} if auth else None
    with httpx.Client(timeout=8, headers=headers) as http:
        answer = http.get(f"{base}/experiments/get-by-name", params={"experiment_name": experiment_name()})
        if answer.status_code == 404:
            return []
        answer.raise_for_status()
        ids, found, token = [answer.json()["experiment"]["experiment_id"]], [], None
        while True:
            body = {"experiment_ids": ids, "filter": f"tags.`{KIND}` = '{MODEL}' and attributes.status = 'FINISHED'",
                    "max_results": 1000,
                    **({"page_token": token} if token else {})}  # fmt: skip
            page = http.post(f"{base}/runs/search", json=body)
            page.raise_for_status()
            data = page.json()
            for run in data.get("runs", []):
                values = run.get("data", {})
                found.append(tuple({item["key"]: item["value"] for item in values.get(part, [])}
                                   for part in ("params", "metrics", "tags")))  # fmt: skip
            if not (token := data.get("next_page_token")):
                return found


def as_table(rows: list[dict]) -> pa.Table:
    """History rows as Parquet takes them: the run fields, then the summary's columns."""
    import pyarrow as pa

    from dropout_lab.analysis.tables import SUMMARY_SCHEMA

    fields = [pa.field(n, pa.timestamp("us", tz="UTC") if n == "recorded_at" else pa.string()) for n in RUN_FIELDS]
    return pa.Table.from_pylist(rows, schema=pa.schema([*fields, *SUMMARY_SCHEMA]))
