"""The run history: every trained model of every completed flow run, one row each (plus one row per
epoch), in one store that every machine can share: `--history URL` (SQLAlchemy's URL form), by default
the SQLite file `<out>/history.sqlite`; `postgresql://user@host/db` for a team's server.

A database rather than a Parquet dataset of small files (benchmarks/history_store.py measures both): a
write is one transaction that any number of concurrent runs can make without losing a row (writers
wait, they do not fail), the key below makes "already recorded" a constraint rather than a
read-then-write race, and filtering is a query instead of opening every file. The columns are the
report's Parquet schemas (analysis/tables.py) plus the run's identity (RUN_FIELDS), so a metric added
to the report appears here too (a column an older history lacks is added when a run records to it).

One row per *trained model*: a model is identified by its experiment (parameters, data and training
code: the report folder's digest) and its final weights' SHA-256, and a rerun that reuses it from the
cache adds nothing. The first run that trained it is the one recorded.

A store is ours only if it says so (a marker table; a history written before the marker existed is
recognised by its tables and their unique keys): anything else — another program's SQLite file,
a `runs` table of its own — is refused with one line and never altered. Reading never writes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from dropout_lab.analysis.tables import PER_EPOCH_SCHEMA, SUMMARY_SCHEMA, UTC_TS, field
from dropout_lab.config import SETTINGS, Variant, variant_of
from dropout_lab.probe import ProbeFailed, database_url, within_deadline
from dropout_lab.redact import redact

log = logging.getLogger(__name__)

HISTORY_FILE = "history.sqlite"
PROJECT = Path(__file__).resolve().parents[2]
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
EPOCHS_SCHEMA = pa.schema([*RUN_FIELDS, *PER_EPOCH_SCHEMA])
MODEL_KEY = ("experiment_hash", "model", "seed", "weights_sha256")
TABLES = {"runs": (RUNS_SCHEMA, MODEL_KEY), "epochs": (EPOCHS_SCHEMA, (*MODEL_KEY, "epoch"))}
MARKER, SCHEMA_VERSION = "dropout_lab_history", "1"
# What every read of a store uses, per table (the first version's epochs table had no run columns).
REQUIRED = {"runs": (*MODEL_KEY, "recorded_at", "flow_run_id", "report_folder"), "epochs": (*MODEL_KEY, "recorded_at")}


class HistoryError(RuntimeError):
    """The history cannot be read or written (one line, naming the store)."""


def _sql_type(kind: pa.DataType) -> sa.types.TypeEngine:
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return sa.BigInteger()
    return sa.Float() if pa.types.is_floating(kind) else sa.Text()  # strings; timestamps as ISO-8601 text


def _tables() -> tuple[sa.MetaData, dict[str, sa.Table]]:
    meta = sa.MetaData()
    tables = {
        name: sa.Table(
            name,
            meta,
            *(sa.Column(f.name, _sql_type(f.type)) for f in schema),
            sa.UniqueConstraint(*key, name=f"{name}_model_key"),
        )  # fmt: skip
        for name, (schema, key) in TABLES.items()
    }
    sa.Table(MARKER, meta, sa.Column("key", sa.Text(), primary_key=True), sa.Column("value", sa.Text()))
    return meta, tables


METADATA, SQL_TABLES = _tables()


HISTORY_ENV = "DROPOUT_LAB_HISTORY"  # the store every run of this machine records to (--history sets it)


def history_target(out: str | Path) -> str | Path:
    """Where a run writing reports to `out` records its models: DROPOUT_LAB_HISTORY, else `<out>/history.sqlite`."""
    return os.environ.get(HISTORY_ENV) or Path(out) / HISTORY_FILE


def store_url(target: str | Path) -> str:
    """The SQLAlchemy URL of a history: a URL as given (`postgresql://` through psycopg 3), a path as a
    SQLite file."""
    text = str(target)
    if "://" not in text:
        return f"sqlite:///{Path(text).resolve()}"
    return "postgresql+psycopg://" + text.removeprefix("postgresql://") if text.startswith("postgresql://") else text


def check(target: str | Path) -> None:
    """Before any training: the store answers (within the probe's deadline) and, if it holds anything, is
    ours. HistoryError (one line) otherwise; creates and changes nothing."""
    path = _is_sqlite_file(target)
    if path is not None:
        if path.is_dir():
            raise _refuse(target, "a folder")
        if not path.exists():
            return

    def inspect() -> str | None:
        with _engine(target, read_only=True).connect() as conn:
            return _problem(sa.inspect(conn))

    try:
        why = within_deadline(f"the run history {shown(target)}", lambda: _patiently(target, inspect),
                              address=str(target))  # fmt: skip
    except ProbeFailed as e:
        raise HistoryError(str(e)) from None
    if why and why != "empty":
        raise _refuse(target, why)


def shown(target: str | Path) -> str:
    """A store's name for messages: its path, or its URL with any password redacted."""
    return redact(str(target))


_engines: dict[tuple[str, bool], sa.Engine] = {}


def _url(target: str | Path) -> sa.URL:
    """The store's SQLAlchemy URL, checked (it parses, a synchronous driver that is installed): HistoryError."""
    try:
        return database_url(store_url(target), "--history")
    except ProbeFailed as e:
        raise HistoryError(str(e)) from None


def _engine(target: str | Path, read_only: bool) -> sa.Engine:
    url = _url(target)
    key = (str(url), read_only)
    if key not in _engines:
        if url.get_backend_name() == "sqlite":
            # Read-only opens the file as such: nothing can be created or changed.
            uri = f"file:{url.database}?mode=ro" if read_only else f"file:{url.database}"
            engine = sa.create_engine("sqlite://", creator=lambda uri=uri: _sqlite(uri), poolclass=sa.NullPool)
            if not read_only:  # a writer takes the write lock first, so concurrent writers queue, never deadlock
                sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
            _engines[key] = engine
        else:
            args = {"connect_timeout": 10} if url.get_backend_name() == "postgresql" else {}
            _engines[key] = sa.create_engine(url, connect_args=args, poolclass=sa.NullPool)
    return _engines[key]


LOCK_NOTICE_S = 2.0  # a SQLite store locked by another process: said after this long
LOCK_WAIT_S = 120.0  # and waited for up to this long


def _sqlite(uri: str):
    import sqlite3

    # Transactions are begun explicitly (the "begin" event); a lock is waited for in `_patiently`.
    return sqlite3.connect(uri, uri=True, timeout=LOCK_NOTICE_S, isolation_level=None)


def _patiently(target: str | Path, operation):
    """`operation()`, waiting while another process holds the SQLite store's lock: after LOCK_NOTICE_S
    one line says what it waits for, and after LOCK_WAIT_S it gives up (the OperationalError)."""
    deadline, told = time.monotonic() + LOCK_WAIT_S, False
    while True:
        try:
            return operation()
        except sa.exc.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            if not told:
                told = True
                log.warning("history: waiting for %s: another process holds its lock (up to %.0f s)", shown(target),
                            LOCK_WAIT_S)  # fmt: skip


def _problem(inspector: sa.Inspector) -> str | None:
    """Why an existing store is not a dropout-lab history (None: it is one)."""
    names = set(inspector.get_table_names())
    if MARKER in names:  # ours; a table someone stripped of the columns every read uses is not
        for table in TABLES:
            columns = {c["name"] for c in inspector.get_columns(table)} if table in names else set()
            if missing := sorted(set(REQUIRED[table]) - columns):
                return f"its {table!r} table lacks {', '.join(missing)}"
        return None
    if not names:
        return "empty"
    for table, (_, key) in TABLES.items():  # a history written before the marker existed
        if table not in names:
            return f"it has no {table!r} table of ours"
        columns = {c["name"] for c in inspector.get_columns(table)}
        if missing := sorted(set(REQUIRED[table]) - columns):
            return f"its {table!r} table lacks {', '.join(missing)}"
        uniques = [set(u["column_names"]) for u in inspector.get_unique_constraints(table)]
        uniques += [set(i["column_names"]) for i in inspector.get_indexes(table) if i.get("unique")]
        if not set(key) <= columns or set(key) not in uniques:
            return f"its {table!r} table is not ours (no unique {', '.join(key)})"
    return None


def _refuse(target: str | Path, why: str) -> HistoryError:
    return HistoryError(f"{shown(target)}: not a dropout-lab run history ({why}); nothing was changed — point "
                        "--history elsewhere or move it aside")  # fmt: skip


def _is_sqlite_file(target: str | Path) -> Path | None:
    url = _url(target)
    return Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None


def _prepare_for_writing(conn: sa.Connection, target: str | Path) -> None:
    """Create a new store, or check an existing one is ours and give it the columns it lacks."""
    inspector = sa.inspect(conn)
    why = _problem(inspector)
    if why == "empty":
        METADATA.create_all(conn)
    elif why:
        raise _refuse(target, why)
    else:
        for table, (schema, _) in TABLES.items():
            have = {c["name"] for c in inspector.get_columns(table)}
            for f in schema:
                if f.name not in have:
                    kind = _sql_type(f.type).compile(dialect=conn.dialect)
                    conn.execute(sa.text(f'ALTER TABLE {table} ADD COLUMN "{f.name}" {kind}'))
        METADATA.tables[MARKER].create(conn, checkfirst=True)
    marker = METADATA.tables[MARKER]
    if conn.execute(sa.select(marker.c.value).where(marker.c.key == "schema")).scalar() is None:
        conn.execute(marker.insert().values(key="schema", value=SCHEMA_VERSION))


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


def append(target: str | Path, runs: list[dict], epochs: list[dict]) -> int:
    """Add the rows in one transaction; rows of models already recorded are skipped. Returns the
    number of model rows added. A SQLite file's folder is created; a store that is not ours is refused."""
    path = _is_sqlite_file(target)
    if path is not None:
        if path.is_dir():
            raise _refuse(target, "a folder")
        path.parent.mkdir(parents=True, exist_ok=True)

    def write() -> int:
        with _engine(target, read_only=False).begin() as conn:
            _prepare_for_writing(conn, target)
            added = _insert(conn, "runs", runs)
            _insert(conn, "epochs", epochs)
        return added

    try:
        for attempt in (1, 2):
            try:
                return _patiently(target, write)
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError) as e:
                # PostgreSQL: another machine created the tables at the same moment (a duplicate pg_type
                # key, or "relation already exists"): the second attempt finds them made
                if attempt == 2 or (isinstance(e, sa.exc.ProgrammingError) and "already exists" not in str(e)):
                    raise
    except sa.exc.OperationalError as e:  # unreachable, read-only, disk full, locked past the timeout
        raise HistoryError(f"{shown(target)}: could not record the run ({_reason(e)})") from None
    except sa.exc.SQLAlchemyError as e:  # not a database at all
        raise HistoryError(f"{shown(target)}: not a usable run history ({_reason(e)}); move it aside") from None


def _reason(error: BaseException) -> str:
    """The first line of a database error, credentials redacted."""
    return redact(str(getattr(error, "orig", None) or error).strip().splitlines()[0])


def _insert(conn: sa.Connection, table: str, rows: list[dict]) -> int:
    if not rows:
        return 0
    names = TABLES[table][0].names
    sql_table = SQL_TABLES[table]
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    # One statement per row, returning a row only when it was new (drivers' rowcounts disagree here).
    statement = insert(sql_table).on_conflict_do_nothing().returning(sa.literal_column("1"))
    return sum(len(conn.execute(statement, {n: _to_sql(row.get(n)) for n in names}).all()) for row in rows)


def _run_id(table: sa.Table):
    """A row's run: its flow run, or for imported rows (no flow run id) their report folder."""
    return sa.func.coalesce(sa.func.nullif(table.c.flow_run_id, ""), table.c.report_folder)


def read(
    target: str | Path,
    table: str = "runs",
    variants: list[Variant] | None = None,
    seeds: list[int] | None = None,
    dataset: str | None = None,
    since: datetime | None = None,
    last: int | None = None,
    experiments: list[str] | None = None,
) -> list[dict]:
    """Rows of `runs` or `epochs`, oldest first, filtered: variants (exactly these settings), seeds,
    dataset, recorded at or after `since`, experiments (exact names, or digests by their first
    characters); `last` keeps the rows of the last N flow runs. Read-only: a store that is not ours is
    refused and left as it is."""
    path = _is_sqlite_file(target)
    if path is not None and not path.is_file():
        raise HistoryError(f"{shown(target)}: {'a folder, not a run history' if path.is_dir() else 'no run history'}")
    schema = TABLES[table][0]

    def rows_of() -> list[dict]:
        with _engine(target, read_only=True).connect() as conn:
            inspector = sa.inspect(conn)
            why = _problem(inspector)
            if why:
                raise _refuse(target, why)
            have = {c["name"] for c in inspector.get_columns(table)}  # an older history lacks newer columns
            columns = [sa.Column(f.name, _sql_type(f.type)) for f in schema if f.name in have]
            query = _query(sa.Table(table, sa.MetaData(), *columns), have, variants, seeds, dataset, since, last,
                           experiments)  # fmt: skip
            return [dict(r._mapping) for r in conn.execute(query)]

    try:
        rows = _patiently(target, rows_of)
    except sa.exc.SQLAlchemyError as e:
        raise HistoryError(f"{shown(target)}: not a usable run history ({_reason(e)})") from None
    return [{f.name: _from_sql(row.get(f.name), f.type) for f in schema} for row in rows]


def _query(t: sa.Table, have: set[str], variants, seeds, dataset, since, last, experiments) -> sa.Select:
    """The filtered rows of `t`, in run order, then report order (the baseline last), then seed (and epoch)."""
    query = sa.select(t)
    settings = [s for s in SETTINGS if s.field in have]  # a setting's column an older history lacks: off

    def is_variant(variant: Variant):  # every compared setting at exactly the variant's value
        values = dict(variant.settings)
        if set(values) - {s.field for s in settings}:
            return sa.false()
        return sa.and_(*(sa.func.coalesce(t.c[s.field], s.off) == values.get(s.field, s.off) for s in settings))

    if variants:
        query = query.where(sa.or_(*(is_variant(v) for v in variants)))
    if seeds:
        query = query.where(t.c.seed.in_(list(seeds)))
    if dataset:
        query = query.where(t.c.dataset == dataset)
    if since:
        query = query.where(t.c.recorded_at >= _to_sql(since if since.tzinfo else since.replace(tzinfo=UTC)))
    if experiments:  # a name exactly, or a digest by its first characters: user text is never a LIKE pattern
        named = [t.c.experiment.in_(experiments),
                 *(sa.func.substr(t.c.experiment_hash, 1, len(e)) == e for e in experiments if e)]  # fmt: skip
        query = query.where(sa.or_(*named))
    if last:
        runs = sa.Table("runs", sa.MetaData(), *(sa.Column(n) for n in ("flow_run_id", "report_folder", "recorded_at")))
        ids = sa.select(_run_id(runs).label("run"), runs.c.recorded_at).subquery()
        newest = sa.select(ids.c.run).group_by(ids.c.run).order_by(sa.func.max(ids.c.recorded_at).desc())
        query = query.where(_run_id(t).in_(newest.limit(last).scalar_subquery()))
    baseline = sa.and_(*(sa.func.coalesce(t.c[s.field], s.off) == s.off for s in settings))
    order = [t.c.recorded_at, _run_id(t), baseline, *(t.c[s.field] for s in settings), t.c.seed]
    return query.order_by(*order, *([t.c.epoch] if "epoch" in have else []))


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


def model_rows(tables, results, meta: dict) -> tuple[list[dict], list[dict]]:
    """History rows of one run's trained models: (runs, epochs), from the report's tables (analysis/report.py
    `Tables`: its summary and per-epoch rows). `meta` holds RUN_FIELDS except weights_sha256 (each model's own)."""
    by_key = {(variant_of(r.config), r.config.seed): r.weights_sha256 for r in results}

    def ident(row: dict) -> dict:  # keyed on the exact settings, never on a printed name
        return {**meta, "weights_sha256": by_key[(variant_of(row), row["seed"])]}

    runs = [{**ident(row), **row} for row in tables.summary]
    epochs = [{**ident(row), **row} for row in tables.per_epoch]
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


def exists(target: str | Path) -> bool:
    """Whether the store holds a history yet (it may still not be ours: `read` says so)."""
    path = _is_sqlite_file(target)
    if path is not None:
        return path.exists()

    def tables() -> set[str]:
        with _engine(target, read_only=True).connect() as conn:
            return set(sa.inspect(conn).get_table_names())

    try:
        return bool(within_deadline(f"the run history {shown(target)}", tables, address=str(target)) & {MARKER, "runs"})
    except ProbeFailed as e:
        raise HistoryError(str(e)) from None
    except sa.exc.SQLAlchemyError as e:
        raise HistoryError(f"{shown(target)}: cannot be reached ({_reason(e)})") from None


def import_reports(out: Path, history: str | Path) -> int:
    """Record report folders written before the history existed (`<out>/*/summary.parquet`), once:
    a folder whose digest is already in the history is skipped. Returns the model rows added."""
    recorded = {r["experiment_hash"] for r in read(history)} if exists(history) else set()
    added = 0
    for summary_file in sorted(out.glob("*/summary.parquet")):
        folder = summary_file.parent
        experiment, digest = split_report_folder(folder)
        if digest in recorded:
            continue
        epochs_file = next((f for f in (folder / "per_epoch.parquet", folder / "history.parquet") if f.exists()), None)
        try:
            summary = pq.read_table(summary_file).to_pylist()
            per_epoch = pq.read_table(epochs_file).to_pylist() if epochs_file else []  # history.parquet: < 2026-12
        except (OSError, pa.ArrowException) as e:
            log.warning("history: %s skipped: not a readable report (%s)", folder, _reason(e))
            continue
        missing = sorted({"model", "seed", "finished_at"} - set(summary[0] if summary else ()))
        if missing:
            log.warning("history: %s skipped: not one of our reports (no %s)", folder, ", ".join(missing) or "rows")
            continue
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
