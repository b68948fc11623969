"""The run history: every trained model of every completed flow run, one row each (plus one row per
epoch), accumulated in one SQLite file, `<out>/history.sqlite`.

SQLite rather than a Parquet dataset of small files (benchmarks/history_store.py measures both): a
write is one transaction that any number of concurrent runs can make without losing a row (SQLite's
file lock; writers wait, they do not fail), the key below makes "already recorded" a constraint
rather than a read-then-write race, and filtering is a query instead of opening every file. The
columns are the report's Parquet schemas (analysis/report.py) plus the run's identity (RUN_FIELDS), so a
metric added to the report appears here too (a missing column is added to an existing file).

One row per *trained model*: a model is identified by its experiment (parameters, data and training
code: the report folder's digest) and its final weights' SHA-256, and a rerun that reuses it from the
cache adds nothing. The first run that trained it is the one recorded.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dropout_lab.analysis.tables import HISTORY_SCHEMA, SUMMARY_SCHEMA, UTC_TS, field, history_rows, summary_rows
from dropout_lab.config import SETTINGS

HISTORY_FILE = "history.sqlite"
PROJECT = Path(__file__).resolve().parent.parent
RUN_FIELDS = [
    field("recorded_at", UTC_TS, doc="when the flow run recorded this model"),
    field("flow_run_id", pa.string(), doc="Prefect flow run that trained it (empty: imported from a report folder)"),
    field("flow_run_name", pa.string()),
    field("code_version", pa.string(), doc="git commit of the project (+dirty), else pkg-<hash of its source>"),
    field("experiment", pa.string(), doc="dataset, sizes, rates, seeds, epochs: cifar10-p0.25-s0-e8"),
    field("experiment_hash", pa.string(), doc="the report folder's digest: parameters, data and training code"),
    field("report_folder", pa.string()),
    field("weights_sha256", pa.string(), doc="SHA-256 of the final checkpoint ('imported': not known)"),
]
RUNS_SCHEMA = pa.schema([*RUN_FIELDS, *SUMMARY_SCHEMA])
EPOCHS_SCHEMA = pa.schema([*RUN_FIELDS, *HISTORY_SCHEMA])
MODEL_KEY = ("experiment_hash", "model", "seed", "weights_sha256")
TABLES = {"runs": (RUNS_SCHEMA, MODEL_KEY), "epochs": (EPOCHS_SCHEMA, (*MODEL_KEY, "epoch"))}
# A row's run: its flow run, or for imported rows (no flow run id) their report folder.
RUN_ID = "COALESCE(NULLIF(flow_run_id, ''), report_folder)"
# Variants in report order: the baseline (every setting off; a setting's column missing from an older
# row counts as off) last, then each setting's value.
VARIANT_ORDER = ", ".join(
    [" AND ".join(f"COALESCE({s.field}, {s.off}) = {s.off}" for s in SETTINGS), *(s.field for s in SETTINGS)]
)


def _sql_type(kind: pa.DataType) -> str:
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return "INTEGER"
    return "REAL" if pa.types.is_floating(kind) else "TEXT"  # strings; timestamps as ISO-8601 text


class HistoryError(RuntimeError):
    """The history file cannot be read or written (one line, naming the file)."""


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating) the history, adding any column a newer version of the schema has."""
    try:
        db = sqlite3.connect(path, timeout=120)  # concurrent writers wait for each other's transaction
        for table, (schema, key) in TABLES.items():
            columns = ", ".join(f'"{f.name}" {_sql_type(f.type)}' for f in schema)
            db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns}, UNIQUE ({', '.join(key)}))")
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for f in schema:
                if f.name not in have:
                    db.execute(f'ALTER TABLE {table} ADD COLUMN "{f.name}" {_sql_type(f.type)}')
    except sqlite3.Error as e:
        raise HistoryError(f"{path}: not a usable run history ({e}); move it aside to start a new one") from None
    return db


def _to_sql(value):
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return int(value) if isinstance(value, bool) else value


def _from_sql(value, kind: pa.DataType):
    if value is None:
        return None
    if pa.types.is_timestamp(kind):
        return datetime.fromisoformat(value)
    return bool(value) if pa.types.is_boolean(kind) else value


def append(path: Path, runs: list[dict], epochs: list[dict]) -> int:
    """Add the rows in one transaction; rows of models already recorded are skipped. Returns the
    number of model rows added."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = connect(path)
    try:
        with db:
            before = db.total_changes
            _insert(db, "runs", runs)
            added = db.total_changes - before
            _insert(db, "epochs", epochs)
        return added
    except sqlite3.Error as e:  # read-only, disk full, locked past the timeout
        raise HistoryError(f"{path}: could not record the run ({e})") from None
    finally:
        db.close()


def _insert(db: sqlite3.Connection, table: str, rows: list[dict]) -> None:
    names = TABLES[table][0].names
    quoted = ", ".join(f'"{n}"' for n in names)
    db.executemany(
        f"INSERT OR IGNORE INTO {table} ({quoted}) VALUES ({', '.join('?' * len(names))})",
        [[_to_sql(row.get(n)) for n in names] for row in rows],
    )


def read(
    path: Path,
    table: str = "runs",
    rates: list[float] | None = None,
    seeds: list[int] | None = None,
    dataset: str | None = None,
    since: datetime | None = None,
    last: int | None = None,
) -> list[dict]:
    """Rows of `runs` or `epochs`, oldest first, filtered: rates (0 = the baseline), seeds, dataset,
    recorded at or after `since`; `last` keeps the rows of the last N flow runs."""
    schema = TABLES[table][0]
    where, args = [], []
    for column, values in (("dropout", rates), ("seed", seeds)):
        if values:
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            args += list(values)
    if dataset:
        where.append("dataset = ?")
        args.append(dataset)
    if since:
        where.append("recorded_at >= ?")
        args.append(_to_sql(since if since.tzinfo else since.replace(tzinfo=UTC)))
    if last:
        where.append(f"{RUN_ID} IN (SELECT DISTINCT {RUN_ID} FROM runs ORDER BY recorded_at DESC LIMIT ?)")
        args.append(last)
    sql = f"SELECT * FROM {table}" + (f" WHERE {' AND '.join(where)}" if where else "")
    order = ", epoch" if table == "epochs" else ""
    db = connect(path)
    try:
        cursor = db.execute(sql + f" ORDER BY recorded_at, {RUN_ID}, {VARIANT_ORDER}, seed{order}", args)
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, values, strict=True)) for values in cursor]
    finally:
        db.close()
    return [{f.name: _from_sql(row.get(f.name), f.type) for f in schema} for row in rows]


def split_report_folder(folder: str | Path) -> tuple[str, str]:
    """(experiment, experiment hash) of a report folder named `<experiment>-<digest>` (flows/compare.py
    `run_folder_name`)."""
    experiment, _, digest = Path(folder).name.rpartition("-")
    return experiment, digest


def run_key(row: dict) -> str:
    """The run a row belongs to (same rule as RUN_ID)."""
    return row["flow_run_id"] or row["report_folder"]


def as_table(rows: list[dict], table: str = "runs") -> pa.Table:
    return pa.Table.from_pylist(rows, schema=TABLES[table][0])


def model_rows(results, data, meta: dict) -> tuple[list[dict], list[dict]]:
    """History rows of one run's trained models: (runs, epochs). `meta` holds RUN_FIELDS except
    weights_sha256 (each model's own)."""
    by_key = {(r.config.label, r.config.seed): r.weights_sha256 for r in results}

    def ident(row: dict) -> dict:
        return {**meta, "weights_sha256": by_key[(row["model"], row["seed"])]}

    runs = [{**ident(row), **row} for row in summary_rows(results, data)]
    epochs = [{**ident(row), **row} for row in history_rows(results, data)]
    return runs, epochs


def code_version(root: Path = PROJECT) -> str:
    """The project's git commit (`+dirty` when tracked files changed), or without git a hash of its
    Python source (`pkg-…`): which code produced a row."""
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


def import_reports(out: Path, history: Path) -> int:
    """Record report folders written before the history existed (`<out>/*/summary.parquet`), once:
    a folder whose digest is already in the history is skipped. Returns the model rows added."""
    recorded = {r["experiment_hash"] for r in read(history)} if history.exists() else set()
    added = 0
    for summary_file in sorted(out.glob("*/summary.parquet")):
        folder = summary_file.parent
        experiment, digest = split_report_folder(folder)
        if digest in recorded:
            continue
        summary = pq.read_table(summary_file).to_pylist()
        epochs_file = folder / "history.parquet"
        per_epoch = pq.read_table(epochs_file).to_pylist() if epochs_file.exists() else []
        meta = {
            "recorded_at": max(row["finished_at"] for row in summary),
            "flow_run_id": "",
            "flow_run_name": "",
            "code_version": "unknown",
            "experiment": experiment,
            "experiment_hash": digest,
            "report_folder": str(folder.resolve()),
            "weights_sha256": "imported",
        }
        added += append(history, [{**meta, **row} for row in summary], [{**meta, **row} for row in per_epoch])
    return added
