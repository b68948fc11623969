"""The run history (analysis/history.py), its table and figure (analysis/trend.py) and `dropout-lab history`."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dropout_lab.analysis import history
from dropout_lab.analysis.stats import mean_ci
from dropout_lab.analysis.trend import format_table, plot_trend, run_points, table_rows
from dropout_lab.cli import history as cli
from dropout_lab.config import Variant

REPO = Path(__file__).resolve().parent.parent
DAY0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def model(run: int, rate: float, seed: int, acc: float, gap: float, dataset: str = "cifar10") -> dict:
    """A history row of a model of run `run` (runs one day apart), as the flow records it."""
    return {
        "recorded_at": DAY0 + timedelta(days=run),
        "flow_run_id": f"run-{run}",
        "flow_run_name": f"p={rate:g} night {run}",
        "code_version": "abc123def456",
        "experiment": f"{dataset}-p0.25-s0-e8",  # one experiment per run: the rate and its baseline
        "experiment_hash": f"hash{run}" if dataset == "cifar10" else f"hash{run}-{dataset}",
        "report_folder": f"/out/{dataset}-{run}",
        "weights_sha256": f"w-{run}-{rate}-{seed}",
        "model": "baseline" if rate == 0 else f"dropout={rate:g}",
        "dropout": rate,
        "seed": seed,
        "final_test_acc": acc,
        "final_train_eval_acc": acc + gap,
        "generalization_gap": gap,
        "epochs": 8,
        "batch_size": 32,
        "lr": 0.001,
        "device": "cpu",
        "precision": "fp32",
        "n_train": 50000,
        "n_test": 10000,
        "dataset": dataset,
        "data_verified": True,
        "started_at": DAY0 + timedelta(days=run),
        "finished_at": DAY0 + timedelta(days=run, minutes=5),
    }


def epoch(row: dict, n: int) -> dict:
    return {**{k: row[k] for k in (*history.MODEL_KEY, "recorded_at", "flow_run_id", "dropout")}, "epoch": n,
            "test_acc": row["final_test_acc"] * n / 2, "dataset": row["dataset"]}  # fmt: skip


def nights(n_runs: int = 3, seeds=(0, 1, 2)) -> list[dict]:
    return [
        model(run, rate, seed, acc=0.70 + 0.01 * run + 0.002 * seed - 0.01 * (rate == 0), gap=0.02 + 0.1 * (rate == 0))
        for run in range(n_runs)
        for rate in (0.25, 0.0)
        for seed in seeds
    ]


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "out" / history.HISTORY_FILE
    rows = nights() + [model(9, 0.5, 0, 0.1, 0.0, dataset="fake")]
    assert history.append(path, rows, [epoch(r, n) for r in rows for n in (1, 2)]) == len(rows)
    return path


def test_rows_read_back_with_their_types_in_run_order(store):
    rows = history.read(store)
    assert len(rows) == 19
    first = rows[0]
    assert first["recorded_at"] == DAY0 and first["data_verified"] is True and first["seed"] == 0
    assert [r["flow_run_id"] for r in rows[:6]] == ["run-0"] * 6
    assert [r["model"] for r in rows[:6]] == ["dropout=0.25"] * 3 + ["baseline"] * 3  # baseline last
    assert history.as_table(rows).schema == history.RUNS_SCHEMA
    assert len(history.read(store, "epochs")) == 38


def test_a_model_already_recorded_is_not_added_again(store):
    again = [model(0, 0.25, 0, 0.99, 0.0)]  # same experiment and weights, other numbers: a cached rerun
    assert history.append(store, again, [epoch(again[0], 1)]) == 0
    assert len(history.read(store)) == 19 and len(history.read(store, "epochs")) == 38
    retrained = [{**again[0], "weights_sha256": "different"}]  # the same experiment trained anew
    assert history.append(store, retrained, []) == 1


def test_filters(store):
    decayed = {**model(2, 0.0, 0, 0.7, 0.05), "model": "weight_decay=0.0005", "weight_decay": 0.0005,
               "weights_sha256": "w-wd"}  # fmt: skip
    assert history.append(store, [decayed], []) == 1
    baseline = history.read(store, variants=[Variant()])
    assert {r["model"] for r in baseline} == {"baseline"} and len(baseline) == 9  # not the weight-decay variant
    wd = Variant((("weight_decay", 0.0005),))
    assert [r["model"] for r in history.read(store, variants=[wd])] == ["weight_decay=0.0005"]
    assert {r["model"] for r in history.read(store, variants=[Variant((("dropout", 0.25),)), wd])} == {
        "dropout=0.25", "weight_decay=0.0005"}  # fmt: skip
    # The command line's per-setting filters: 0 is the baseline only.
    rows = lambda *argv: history.read(store, variants=cli.selected(cli.build_parser().parse_args(list(argv))))  # noqa: E731
    assert {r["model"] for r in rows("--rate", "0")} == {"baseline"}
    assert {r["model"] for r in rows("--weight-decay", "0.0005", "0")} == {"weight_decay=0.0005", "baseline"}
    assert {r["model"] for r in rows("--dropout", "0.5")} == {"dropout=0.5"}
    assert {r["seed"] for r in history.read(store, seeds=[1, 2])} == {1, 2}
    assert {r["dataset"] for r in history.read(store, dataset="fake")} == {"fake"}
    since = history.read(store, since=DAY0 + timedelta(days=1))
    assert {r["flow_run_id"] for r in since} == {"run-1", "run-2", "run-9"}
    assert {r["flow_run_id"] for r in history.read(store, last=2)} == {"run-2", "run-9"}
    p25 = [Variant((("dropout", 0.25),))]
    assert {r["flow_run_id"] for r in history.read(store, variants=p25, seeds=[0], last=1)} == set()  # run-9: p=0.5


def _append_many(target: str, worker: int, n: int) -> None:
    for i in range(n):
        row = model(100 * worker + i, 0.25, 0, 0.5, 0.1)
        history.append(target, [row], [epoch(row, e) for e in (1, 2, 3)])


def concurrent_writers(target: str, workers: int = 4, runs: int = 25) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(target, w, runs)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0


def test_concurrent_writers_lose_no_row(tmp_path):
    """Four processes append 25 runs each at the same time: all 100 runs and 300 epochs are there."""
    path = tmp_path / history.HISTORY_FILE
    concurrent_writers(str(path))
    assert len(history.read(path)) == 100 and len(history.read(path, "epochs")) == 300


def test_one_postgres_history_for_every_machine(postgres, capsys, tmp_path):
    """A team's history on a real PostgreSQL server: writers in separate processes (as on separate
    machines) lose no row, a model is recorded once, and the viewer reads it by URL."""
    concurrent_writers(postgres, workers=2, runs=10)
    assert len(history.read(postgres)) == 20 and len(history.read(postgres, "epochs")) == 60
    row = model(100, 0.25, 0, 0.5, 0.1)  # worker 1's first run, once more
    assert history.append(postgres, [row], []) == 0
    assert cli.main(["--history", postgres, "--last", "3", "--no-figure", "--out", str(tmp_path)]) == 0
    assert "3 models from 3 runs" in capsys.readouterr().out


def test_compare_shows_two_experiments_side_by_side(store, capsys):
    assert cli.main(["--out", str(store.parent), "--compare", "hash1", "hash2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("A: cifar10-p0.25-s0-e8\nB: cifar10-p0.25-s0-e8")
    lines = {line.split()[0]: line for line in out.splitlines()[3:] if line.split()}
    assert {"dropout=0.25", "baseline"} <= set(lines) and "3/3" in lines["baseline"]
    assert cli.main(["--out", str(store.parent), "--compare", "hash", "hash2"]) == 2  # ambiguous: refused
    assert "matches" in capsys.readouterr().err


def older_history(path: Path) -> None:
    """A history as the first version wrote it: both tables with their unique keys, fewer columns, no marker."""
    db = sqlite3.connect(path)
    key = "experiment_hash TEXT, model TEXT, seed INTEGER, weights_sha256 TEXT"
    db.execute(f"CREATE TABLE runs (recorded_at TEXT, flow_run_id TEXT, report_folder TEXT, dropout REAL, {key}, "
               "UNIQUE (experiment_hash, model, seed, weights_sha256))")  # fmt: skip
    db.execute(f"CREATE TABLE epochs (recorded_at TEXT, {key}, epoch INTEGER, "
               "UNIQUE (experiment_hash, model, seed, weights_sha256, epoch))")  # fmt: skip
    db.execute("INSERT INTO runs VALUES ('2026-01-01T00:00:00+00:00', 'old', '/r', 0.0, 'h', 'baseline', 0, 'w')")
    db.commit()
    db.close()


def test_an_older_history_gains_new_columns(tmp_path):
    path = tmp_path / history.HISTORY_FILE
    older_history(path)
    before = path.read_bytes()
    rows = history.read(path)
    assert rows[0]["flow_run_id"] == "old" and rows[0]["final_test_acc"] is None
    assert path.read_bytes() == before  # reading changes nothing
    assert history.append(path, [model(9, 0.25, 0, 0.7, 0.1)], []) == 1  # a run records: the columns are added
    assert [r["flow_run_id"] for r in history.read(path)] == ["old", "run-9"]


def test_table_has_one_line_per_model_with_accuracy_and_gap(store):
    rows = history.read(store, last=1)
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["recorded", "(UTC)", "run"]
    assert len(lines) == 2 and "10.00%" in lines[1] and "+0.00" in lines[1] and "fake" in lines[1]
    assert table_rows(rows)[0]["test acc"] == "10.00%"


def test_run_points_are_seed_means_with_t_intervals(store):
    points = run_points(history.read(store, dataset="cifar10"), "final_test_acc")
    dropout, baseline = Variant((("dropout", 0.25),)), Variant()
    assert list(points) == [dropout, baseline]
    when, mean, low, high, n = points[dropout][1]
    expected = mean_ci([100 * (0.71 + 0.002 * s) for s in range(3)])
    assert when == DAY0 + timedelta(days=1) and n == 3
    assert (mean, low, high) == pytest.approx((expected.mean, expected.ci_low, expected.ci_high))


def test_cli_prints_the_filtered_table_and_draws_the_figure(store, capsys, tmp_path):
    figure = tmp_path / "trend.png"
    parquet = tmp_path / "rows.parquet"
    args = ["--out", str(store.parent), "--rate", "0", "--since", "2026-11-02", "--figure", str(figure)]
    assert cli.main([*args, "--parquet", str(parquet)]) == 0
    out = capsys.readouterr().out
    assert "6 models from 2 runs" in out and f"figure: {figure}" in out
    table = [line for line in out.splitlines() if line.startswith("2026-")]
    assert len(table) == 6 and all(" baseline " in line for line in table)
    with Image.open(figure) as img:
        assert img.size[0] > 800
    assert pq.read_table(parquet).num_rows == 6


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["--out", str(tmp_path)]) == 2  # refused
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no run history at") and "\n" not in err
    bad = subprocess.run([sys.executable, "-m", "dropout_lab.cli", "history", "--since", "last tuesday"], cwd=REPO,
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "not a date, time or age like 7d" in bad.stderr.splitlines()[-1]


def test_a_damaged_history_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / history.HISTORY_FILE).write_bytes(b"not a database" * 100)
    assert cli.main(["--out", str(tmp_path)]) == 2  # refused
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not a usable run history" in err and "\n" not in err
    with pytest.raises(history.HistoryError, match="move it aside"):
        history.append(tmp_path / history.HISTORY_FILE, [model(0, 0.25, 0, 0.5, 0.1)], [])


def test_since_accepts_dates_times_and_ages():
    assert cli.since_value("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    assert cli.since_value("2026-11-01T08:00+01:00").utcoffset() == timedelta(hours=1)
    assert datetime.now(UTC) - cli.since_value("7d") == pytest.approx(timedelta(days=7), abs=timedelta(seconds=5))


def test_report_folders_from_before_the_history_are_imported_once(tmp_path, capsys):
    """A report folder as write_report leaves it (summary.parquet, per_epoch.parquet), no history yet."""
    from dropout_lab.analysis.tables import PER_EPOCH_SCHEMA, SUMMARY_SCHEMA

    out = tmp_path / "artifacts"
    folder = out / "cifar10-p0.25-s0-e2-0123456789"
    folder.mkdir(parents=True)
    summary = [{**{k: v for k, v in model(0, rate, 0, 0.6, 0.05).items() if k in SUMMARY_SCHEMA.names}}
               for rate in (0.25, 0.0)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(summary, schema=SUMMARY_SCHEMA), folder / "summary.parquet")
    per_epoch = [{"model": r["model"], "dropout": r["dropout"], "seed": 0, "epoch": e, "test_acc": 0.5,
                  "dataset": "cifar10"} for r in summary for e in (1, 2)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(per_epoch, schema=PER_EPOCH_SCHEMA), folder / "per_epoch.parquet")

    assert cli.main(["--out", str(out), "--import-reports", "--no-figure"]) == 0
    assert "imported 2 model rows" in capsys.readouterr().out
    rows = history.read(out / history.HISTORY_FILE)
    assert [(r["experiment"], r["experiment_hash"], r["flow_run_id"]) for r in rows] == [
        ("cifar10-p0.25-s0-e2", "0123456789", "")
    ] * 2
    assert rows[0]["recorded_at"] == DAY0 + timedelta(minutes=5)
    assert len(history.read(out / history.HISTORY_FILE, "epochs")) == 4
    assert cli.main(["--out", str(out), "--import-reports", "--no-figure"]) == 0
    assert "imported 0 model rows" in capsys.readouterr().out


def test_code_version_is_the_commit_or_a_source_hash(tmp_path):
    assert history.code_version(REPO)[:12].isalnum()
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "a.py").write_text("x = 1\n")
    first = history.code_version(tmp_path)
    (tmp_path / "tasks" / "a.py").write_text("x = 2\n")
    assert first.startswith("pkg-") and history.code_version(tmp_path) != first


def test_runs_on_other_data_or_epochs_get_their_own_row_of_panels(store, tmp_path):
    rows = history.read(store)
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    plot_trend([r for r in rows if r["dataset"] == "cifar10"], one)
    plot_trend(rows, two)  # cifar10 and fake: never one line
    with Image.open(one) as a, Image.open(two) as b:
        assert a.size[0] == b.size[0] and b.size[1] > 1.7 * a.size[1]


def foreign_sqlite(path: Path, runs_columns: str) -> bytes:
    db = sqlite3.connect(path)
    db.execute(f"CREATE TABLE runs ({runs_columns})")
    db.execute("INSERT INTO runs (note) VALUES ('theirs')")
    db.commit()
    db.close()
    return path.read_bytes()


@pytest.mark.parametrize(
    "columns",
    ["id INTEGER, note TEXT",  # another program's table called runs
     "experiment_hash TEXT, model TEXT, seed INTEGER, weights_sha256 TEXT, note TEXT"],  # ours in name, no unique key
    ids=["foreign", "no-key"],
)  # fmt: skip
def test_a_history_that_is_not_ours_is_refused_and_never_altered(tmp_path, capsys, columns):
    path = tmp_path / history.HISTORY_FILE
    before = foreign_sqlite(path, columns)
    with pytest.raises(history.HistoryError, match="not a dropout-lab run history .*nothing was changed"):
        history.read(path)
    with pytest.raises(history.HistoryError, match="not a dropout-lab run history"):
        history.append(path, [model(1, 0.25, 0, 0.7, 0.1)], [])  # would insert duplicates: no unique key there
    assert cli.main(["--out", str(tmp_path)]) == 2  # refused
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a dropout-lab run history" in err and err.count("\n") == 1
    assert path.read_bytes() == before  # no table, column or row added


def test_a_history_recognised_as_ours_is_marked_once(tmp_path):
    path = tmp_path / history.HISTORY_FILE
    history.append(path, [model(1, 0.25, 0, 0.7, 0.1)], [])
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"runs", "epochs", history.MARKER}
