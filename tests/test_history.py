"""The run history in MLflow's tracking store: recorded by analysis/tracking.py, read without MLflow's client
by analysis/history.py, shown by analysis/trend.py and `dropout-lab history`."""

from __future__ import annotations

import multiprocessing
import re
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dropout_lab.analysis import history, tracking
from dropout_lab.analysis.stats import mean_ci
from dropout_lab.analysis.trend import compare_table, format_table, plot_trend, run_points, table_rows
from dropout_lab.cli import history as cli
from dropout_lab.config import Variant

REPO = Path(__file__).resolve().parent.parent
DAY0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def model(run: int, rate: float, seed: int, acc: float, gap: float, dataset: str = "cifar10") -> dict:
    """A model's row of run `run` (runs one day apart), as the flow records it: its summary and run fields."""
    return {
        "recorded_at": (DAY0 + timedelta(days=run)).isoformat(),
        "flow_run_id": f"run-{run}",
        "flow_run_name": f"p={rate:g} night {run}",
        "code_version": "abc123def456",
        "experiment": f"{dataset}-p0.25-s0-e8",  # one experiment per run: the rate and its baseline
        "experiment_hash": f"hash{run}" if dataset == "cifar10" else f"hash{run}-{dataset}",
        "report_folder": f"/out/{dataset}-{run}",
        "weights_sha256": f"w-{run}-{rate}-{seed}",
        "model_key": f"key-{rate}-{seed}",
        "model": "baseline" if rate == 0 else f"dropout={rate:g}",
        "baseline": rate == 0,
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
        "started_at": (DAY0 + timedelta(days=run)).isoformat(),
        "finished_at": (DAY0 + timedelta(days=run, minutes=5)).isoformat(),
    }


def epoch(row: dict, n: int) -> dict:
    return {"model": row["model"], "seed": row["seed"], "epoch": n, "test_acc": row["final_test_acc"] * n / 2}


def record(uri: str, rows: list[dict], epochs: int = 2) -> int:
    """One flow run's models recorded as the flow records them (one comparison run per experiment)."""
    first = rows[0]
    tags = {k: first[k] for k in ("recorded_at", "flow_run_id", "flow_run_name", "code_version", "experiment",
                                  "experiment_hash", "report_folder")}  # fmt: skip
    models = [{"row": r, "epochs": [epoch(r, n) for n in range(1, epochs + 1)], "checkpoint": None} for r in rows]
    return tracking.record(uri, {"name": first["flow_run_name"], "tags": tags}, models)[0]


def nights(n_runs: int = 3, seeds=(0, 1, 2)) -> list[list[dict]]:
    return [
        [model(run, rate, seed, acc=0.70 + 0.01 * run + 0.002 * seed - 0.01 * (rate == 0), gap=0.02 + 0.1 * (rate == 0))
         for rate in (0.25, 0.0) for seed in seeds]
        for run in range(n_runs)
    ]  # fmt: skip


def uri_of(out: Path) -> str:
    return f"sqlite:///{out / history.STORE_FILE}"


@pytest.fixture(autouse=True)
def default_store(monkeypatch):
    """Stores where the command puts them by default (under --out), not the test session's."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_mlflow_store) -> str:
    path = tmp_path_factory.mktemp("out") / history.STORE_FILE
    shutil.copyfile(empty_mlflow_store, path)  # conftest's new_store, once for the module
    uri = f"sqlite:///{path}"
    for run in [*nights(), [model(9, 0.5, 0, 0.1, 0.0, dataset="fake")]]:
        assert record(uri, run) == len(run)
    return uri


def test_a_model_still_being_recorded_by_another_run_is_not_read(tmp_path, new_store):
    """CI caught it: two runs recording into one store, one read the other's model run between its params
    and its metrics (a row without numbers) and failed formatting its table. Only finished runs are models."""
    from mlflow import MlflowClient

    uri = new_store(tmp_path / history.STORE_FILE)
    assert record(uri, [model(0, 0.25, 0, 0.7, 0.1)]) == 1
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(history.experiment_name()).experiment_id
    half = client.create_run(experiment, tags={history.KIND: history.MODEL}).info.run_id  # left RUNNING
    client.log_param(half, "model", "dropout=0.5")
    rows = history.read(uri)
    assert len(rows) == 1 and rows[0]["final_test_acc"] == pytest.approx(0.7)
    assert table_rows(rows)[0]["test acc"] == "70.00%"


def test_rows_read_back_with_their_types_in_run_order(store):
    rows = history.read(store)
    assert len(rows) == 19
    first = rows[0]
    assert first["recorded_at"] == DAY0 and first["data_verified"] is True and first["seed"] == 0
    assert first["final_test_acc"] == pytest.approx(0.70) and first["epochs"] == 8 and first["dropout"] == 0.25
    assert [r["flow_run_id"] for r in rows[:6]] == ["run-0"] * 6
    assert [r["model"] for r in rows[:6]] == ["dropout=0.25"] * 3 + ["baseline"] * 3  # baseline last
    assert history.as_table(rows).num_rows == 19


def test_the_store_is_mlflow_s_own_with_a_comparison_and_a_child_per_model(store):
    mlflow = pytest.importorskip("mlflow")
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("dropout-lab")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.experiment_hash = 'hash1'")
    (parent,) = [r for r in runs if r.data.tags[history.KIND] == history.COMPARISON]
    children = [r for r in runs if r.data.tags[history.KIND] == history.MODEL]
    assert len(children) == 6 and all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    child = next(c for c in children if c.info.run_name == "baseline seed 0")
    assert child.data.params["seed"] == "0" and child.data.metrics["final_test_acc"] == pytest.approx(0.70)
    assert [m.step for m in client.get_metric_history(child.info.run_id, "test_acc")] == [1, 2]
    assert child.info.end_time - child.info.start_time == 5 * 60 * 1000  # the training's span, not logging's


def test_a_model_already_recorded_is_not_added_again_and_a_retrained_one_replaces_it(tmp_path, capsys, new_store):
    uri = new_store(tmp_path / history.STORE_FILE)
    run = nights(1, seeds=(0,))[0]
    assert record(uri, run) == 2
    assert record(uri, [{**run[0], "final_test_acc": 0.99}]) == 0  # same identity and weights: a cached rerun
    retrained = {**run[0], "weights_sha256": "new", "final_test_acc": 0.5}  # --refresh: the same training anew
    assert record(uri, [retrained]) == 1
    rows = history.read(uri)
    assert len(rows) == 2 and {r["weights_sha256"] for r in rows} == {"new", run[1]["weights_sha256"]}
    capsys.readouterr()
    assert cli.main(["--history", uri, "--compare", "hash0", "hash0"]) == 0  # one seed per side, never two
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("dropout", "baseline"))]
    assert [(r[0], r[1]) for r in rows] == [("dropout=0.25", "1/1"), ("baseline", "1/1")]  # the audit saw 2/2
    assert rows[0][2] == "50.00"  # the retrained model's numbers, not the replaced one's


def test_a_recording_stopped_midway_ends_its_runs_and_the_rerun_completes_them(tmp_path, monkeypatch, new_store):
    # a real MLflow server: tests/test_e2e_mlflow.py
    stop_and_resume_recording(new_store(tmp_path / history.STORE_FILE), monkeypatch)


def stop_and_resume_recording(uri: str, monkeypatch) -> None:
    """Ctrl-C while the history is being recorded: the comparison's run and the model's end KILLED (never
    RUNNING for good); the same command again continues that comparison and replaces the cut-off model."""
    from mlflow import MlflowClient

    run = nights(1, seeds=(0,))[0]
    real = MlflowClient.log_batch

    def stopped_at_the_second_model(self, run_id, metrics=(), params=(), **kw):
        if any(p.key == "model" and p.value == "baseline" for p in params):
            raise KeyboardInterrupt
        return real(self, run_id, metrics=metrics, params=params, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", stopped_at_the_second_model)
    with pytest.raises(KeyboardInterrupt):
        record(uri, run)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(history.experiment_name()).experiment_id
    statuses = lambda: sorted((r.data.tags.get(history.KIND), r.info.status) for r in client.search_runs([experiment]))  # noqa: E731
    assert statuses() == [(history.COMPARISON, "KILLED"), (history.MODEL, "FINISHED"), (history.MODEL, "KILLED")]
    monkeypatch.setattr(MlflowClient, "log_batch", real)
    assert record(uri, run) == 1  # only the cut-off model, under the same comparison
    assert statuses() == [(history.COMPARISON, "FINISHED"), (history.MODEL, "FINISHED"), (history.MODEL, "FINISHED")]
    assert len(history.read(uri)) == 2


def test_filters(store, tmp_path, new_store):
    uri = new_store(tmp_path / history.STORE_FILE)
    for run in nights():
        record(uri, run)
    decayed = {**model(2, 0.0, 0, 0.7, 0.05), "model": "weight_decay=0.0005", "baseline": False,
               "weight_decay": 0.0005, "model_key": "wd"}  # fmt: skip
    assert record(uri, [decayed]) == 1
    baseline = history.read(uri, variants=[Variant()])
    assert {r["model"] for r in baseline} == {"baseline"} and len(baseline) == 9  # not the weight-decay variant
    wd = Variant((("weight_decay", 0.0005),))
    assert [r["model"] for r in history.read(uri, variants=[wd])] == ["weight_decay=0.0005"]
    # The command line's per-setting filters: 0 is the baseline only.
    rows = lambda *argv: history.read(uri, variants=cli.selected(cli.build_parser().parse_args(list(argv))))  # noqa: E731
    assert {r["model"] for r in rows("--rate", "0")} == {"baseline"}
    assert {r["model"] for r in rows("--weight-decay", "0.0005", "0")} == {"weight_decay=0.0005", "baseline"}
    assert {r["model"] for r in rows("--dropout", "0.25")} == {"dropout=0.25"}
    # A variant that combines settings (--variant) has each of them: every filter naming one of them lists it.
    both = {**model(2, 0.25, 0, 0.7, 0.05), "model": "dropout=0.25, augment=flip-crop", "baseline": False,
            "augment": "flip-crop", "model_key": "both"}  # fmt: skip
    assert record(uri, [both]) == 1
    assert {r["model"] for r in rows("--augment", "flip-crop")} == {"dropout=0.25, augment=flip-crop"}
    assert {r["model"] for r in rows("--dropout", "0.25")} == {"dropout=0.25", "dropout=0.25, augment=flip-crop"}
    assert {r["model"] for r in rows("--augment", "none")} == {"baseline"}
    assert {r["seed"] for r in history.read(store, seeds=[1, 2])} == {1, 2}
    assert {r["dataset"] for r in history.read(store, dataset="fake")} == {"fake"}
    since = history.read(store, since=DAY0 + timedelta(days=1))
    assert {r["flow_run_id"] for r in since} == {"run-1", "run-2", "run-9"}
    assert {r["flow_run_id"] for r in history.read(store, last=2)} == {"run-2", "run-9"}
    assert {r["flow_run_id"] for r in history.read(store, experiments=["hash2"])} == {"run-2"}


def _record_many(uri: str, worker: int, n: int) -> None:
    for i in range(n):
        record(uri, [model(100 * worker + i, 0.25, 0, 0.5, 0.1)], epochs=3)


def concurrent_writers(uri: str, workers: int, runs: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_record_many, args=(uri, w, runs)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0


def test_concurrent_writers_lose_no_row_even_when_they_create_the_store(tmp_path):
    """Four processes set up one new SQLite store and record 8 runs each at the same time: all 32 are there."""
    uri = uri_of(tmp_path)
    concurrent_writers(uri, workers=4, runs=8)
    rows = history.read(uri)
    assert len(rows) == 32 and len({r["flow_run_id"] for r in rows}) == 32


def test_one_postgres_history_for_every_machine(postgres, capsys, tmp_path):
    """A team's history in a real PostgreSQL database: writers in separate processes (as on separate
    machines) lose no row, a model is recorded once, and the viewer reads it by URL."""
    concurrent_writers(postgres, workers=2, runs=4)
    uri = "postgresql+psycopg://" + postgres.removeprefix("postgresql://")
    assert len(history.read(uri)) == 8
    assert record(uri, [model(100, 0.25, 0, 0.5, 0.1)]) == 0  # worker 1's first run, once more
    assert cli.main(["--history", postgres, "--last", "3", "--out", str(tmp_path)]) == 0
    assert "3 models from 3 runs" in capsys.readouterr().out


def test_compare_shows_two_experiments_side_by_side(store, capsys):
    assert cli.main(["--history", store, "--compare", "hash1", "hash2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("A: cifar10-p0.25-s0-e8\nB: cifar10-p0.25-s0-e8")
    lines = {line.split()[0]: line for line in out.splitlines()[3:] if line.split()}
    assert {"dropout=0.25", "baseline"} <= set(lines) and "3/3" in lines["baseline"]
    assert cli.main(["--history", store, "--compare", "hash", "hash2"]) == 2  # ambiguous: refused
    # A combined variant's longer name: every row's columns still start where the header's do.
    combined = [{**r, "model": "dropout=0.25, augment=flip-crop", "augment": "flip-crop"} for r in history.read(store)
                if r["model"] == "dropout=0.25"]  # fmt: skip
    table = compare_table(("A", combined), ("B", history.read(store))).splitlines()[3:-1]
    assert len({re.search(r"seeds A/B|(?<= )\d+/\d+ ", line).start() for line in table}) == 1, table
    assert "matches" in capsys.readouterr().err
    # A name several digests share (code changes between them): refused, not their seeds pooled.
    assert cli.main(["--history", store, "--compare", "cifar10-p0.25-s0-e8", "hash2"]) == 2
    err = capsys.readouterr().err
    assert "matches 3 experiments" in err and "hash1" in err and len(err.strip().splitlines()) == 1


def test_table_has_one_line_per_model_with_accuracy_and_gap(store):
    rows = history.read(store, last=1)
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:3] == ["recorded", "(UTC)", "run"]
    assert len(lines) == 2 and "10.00%" in lines[1] and "+0.00" in lines[1] and "fake" in lines[1]
    assert table_rows(rows)[0]["test acc"] == "10.00%"
    # Two weight decays: each model's name whole, not both cut to `weight_decay=0.…`.
    decays = [{**rows[0], "model": f"weight_decay={wd}"} for wd in (0.0005, 0.001)]
    assert [line.split()[5] for line in format_table(decays).splitlines()[1:]] == [r["model"] for r in decays]


def test_run_points_are_seed_means_with_t_intervals(store):
    points = run_points(history.read(store, dataset="cifar10"), "final_test_acc")
    dropout, baseline = Variant((("dropout", 0.25),)), Variant()
    assert list(points) == [dropout, baseline]
    when, mean, low, high, n = points[dropout][1]
    expected = mean_ci([100 * (0.71 + 0.002 * s) for s in range(3)])
    assert when == DAY0 + timedelta(days=1) and n == 3
    assert (mean, low, high) == pytest.approx((expected.mean, expected.ci_low, expected.ci_high))


def test_cli_prints_the_filtered_table_and_draws_the_figure_only_when_asked(store, capsys, tmp_path):
    args = ["--history", store, "--out", str(tmp_path), "--rate", "0", "--since", "2026-11-02"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "6 models from 2 runs" in out and "figure" not in out and not (tmp_path / "history.png").exists()
    table = [line for line in out.splitlines() if line.startswith("2026-")]
    assert len(table) == 6 and all(" baseline " in line for line in table)
    parquet = tmp_path / "rows.parquet"
    assert cli.main([*args, "--figure", "--parquet", str(parquet)]) == 0
    assert f"figure: {tmp_path / 'history.png'}" in capsys.readouterr().out
    with Image.open(tmp_path / "history.png") as img:
        assert img.size[0] > 800
    assert pq.read_table(parquet).num_rows == 6


def test_listing_imports_neither_mlflow_nor_matplotlib_nor_scipy(store):
    code = ("import sys; from dropout_lab.cli import history as h; h.main(['--history', sys.argv[1]]); "
            "print(sorted(m for m in ('mlflow', 'matplotlib', 'scipy', 'torch') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, store], cwd=REPO, capture_output=True, text=True)
    assert "19 models" in done.stdout and done.stdout.splitlines()[-1] == "[]", done.stderr


def test_a_refused_store_answers_before_pyarrow_is_imported(tmp_path):
    """A refusal is as quick as --help: the rows' Arrow types are imported only when rows are read."""
    code = ("import sys; from dropout_lab.cli import history as h; print(h.main(['--out', sys.argv[1]])); "
            "print('pyarrow' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"] and "no run history at" in done.stderr, done.stderr


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["--out", str(tmp_path)]) == 2  # refused
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no run history at") and "\n" not in err
    bad = subprocess.run([sys.executable, "-m", "dropout_lab.cli", "history", "--since", "last tuesday"], cwd=REPO,
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "not a date, time or age like 7d" in bad.stderr.splitlines()[-1]


def test_a_damaged_store_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / history.STORE_FILE).write_bytes(b"not a database" * 100)
    assert cli.main(["--out", str(tmp_path)]) == 2  # refused
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not a readable MLflow store" in err and "\n" not in err
    with pytest.raises(ValueError, match="cannot be opened"):
        tracking.check_store(uri_of(tmp_path))


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
    summary = [{k: datetime.fromisoformat(v) if k.endswith("ed_at") else v for k, v in model(0, rate, 0, 0.6, 0.05)
                .items() if k in SUMMARY_SCHEMA.names} for rate in (0.25, 0.0)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(summary, schema=SUMMARY_SCHEMA), folder / "summary.parquet")
    per_epoch = [{"model": r["model"], "dropout": r["dropout"], "seed": 0, "epoch": e, "test_acc": 0.5,
                  "dataset": "cifar10"} for r in summary for e in (1, 2)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(per_epoch, schema=PER_EPOCH_SCHEMA), folder / "per_epoch.parquet")

    assert cli.main(["--out", str(out), "--import-reports"]) == 0
    assert "imported 2 models" in capsys.readouterr().out
    rows = history.read(uri_of(out))
    assert [(r["experiment"], r["experiment_hash"], r["flow_run_id"]) for r in rows] == [
        ("cifar10-p0.25-s0-e2", "0123456789", "")
    ] * 2
    assert rows[0]["recorded_at"] == DAY0 + timedelta(minutes=5)
    assert cli.main(["--out", str(out), "--import-reports"]) == 0
    assert "imported 0 models" in capsys.readouterr().out


def earlier_history(path: Path, rows: list[dict]) -> None:
    """A run history as the versions before the MLflow store kept it: our own `runs` and `epochs` tables."""
    db = sqlite3.connect(path)
    columns = list(rows[0])
    db.execute(f"CREATE TABLE runs ({', '.join(columns)})")
    db.execute("CREATE TABLE epochs (experiment_hash, model, seed, weights_sha256, epoch, test_acc)")
    db.execute("CREATE TABLE dropout_lab_history (key, value)")
    for r in rows:
        db.execute(f"INSERT INTO runs VALUES ({', '.join('?' * len(columns))})",
                   [int(v) if isinstance(v, bool) else v for v in r.values()])  # fmt: skip
        for n in (1, 2):
            db.execute("INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?)",
                       (r["experiment_hash"], r["model"], r["seed"], r["weights_sha256"], n, 0.1 * n))  # fmt: skip
    db.commit()
    db.close()


def test_an_earlier_version_s_history_is_recorded_once_and_kept(tmp_path, capsys):
    out = tmp_path / "artifacts"
    out.mkdir()
    rows = [{k: v for k, v in r.items() if k != "model_key"} for run in nights(2, seeds=(0,)) for r in run]
    earlier_history(out / history.LEGACY_FILE, rows)
    assert cli.main(["--out", str(out)]) == 2  # no store yet: the refusal says how to import it
    assert f"--import {out / history.LEGACY_FILE}" in capsys.readouterr().err
    assert tracking.import_legacy(out, uri_of(out)) == 4  # what a run does first
    assert not (out / history.LEGACY_FILE).exists() and (out / f"{history.LEGACY_FILE}.imported").is_file()
    recorded = history.read(uri_of(out))
    assert [(r["flow_run_id"], r["model"], r["final_test_acc"]) for r in recorded] == [
        (r["flow_run_id"], r["model"], r["final_test_acc"]) for r in rows]  # fmt: skip
    assert recorded[0]["recorded_at"] == DAY0 and recorded[0]["data_verified"] is True
    assert tracking.import_legacy(out, uri_of(out)) == 0  # once
    assert cli.main(["--out", str(out), "--import", str(out / f"{history.LEGACY_FILE}.imported")]) == 0
    assert "imported 0 models" in capsys.readouterr().out  # and never twice
    with pytest.raises(ValueError, match="dropout-lab history --import"):
        tracking.check_store(f"sqlite:///{out / f'{history.LEGACY_FILE}.imported'}")  # not a store to record to


def test_code_version_is_the_commit_or_a_source_hash(tmp_path):
    assert tracking.code_version(REPO)[:12].isalnum()
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "a.py").write_text("x = 1\n")
    first = tracking.code_version(tmp_path)
    (tmp_path / "tasks" / "a.py").write_text("x = 2\n")
    assert first.startswith("pkg-") and tracking.code_version(tmp_path) != first


def test_runs_on_other_data_or_epochs_get_their_own_row_of_panels(store, tmp_path):
    rows = history.read(store)
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    plot_trend([r for r in rows if r["dataset"] == "cifar10"], one)
    plot_trend(rows, two)  # cifar10 and fake: never one line
    with Image.open(one) as a, Image.open(two) as b:
        assert a.size[0] == b.size[0] and b.size[1] > 1.7 * a.size[1]


def test_another_program_s_database_is_refused_and_never_altered(tmp_path, capsys):
    path = tmp_path / "theirs.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE runs (id INTEGER, note TEXT)")
    db.execute("INSERT INTO runs VALUES (1, 'theirs')")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(ValueError, match="another program's database"):
        tracking.check_store(f"sqlite:///{path}")
    assert cli.main(["--history", f"sqlite:///{path}", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert path.read_bytes() == before


def test_a_postgres_store_another_run_is_setting_up_is_mlflow_s_and_gets_set_up_whole(postgres):
    """CI caught it under load: two runs starting on a new PostgreSQL store, one checked it between MLflow's
    initial tables and its migrations (which add `alembic_version`) and refused it as another program's."""
    import psycopg
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.initial_models import Base

    admin = postgres.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute("CREATE DATABASE half_set_up")
    uri = "postgresql+psycopg://" + admin.removeprefix("postgresql://").rsplit("/", 1)[0] + "/half_set_up"
    engine = sa.create_engine(uri)
    Base.metadata.create_all(engine)  # what the other run's MLflow has done so far
    with engine.connect() as conn:
        assert "alembic_version" not in sa.inspect(conn).get_table_names()
    engine.dispose()
    tracking.check_store(uri)  # not refused
    tracking.client(uri).search_experiments()  # MLflow migrates it to the end under the set-up lock
    engine = sa.create_engine(uri)
    with engine.connect() as conn:
        assert "alembic_version" in sa.inspect(conn).get_table_names()
    engine.dispose()


def test_a_new_store_is_made_whole_or_not_at_all(tmp_path, monkeypatch):
    """CI caught it: Ctrl-C while MLflow built a new SQLite store's tables (in the background, during the first
    epoch) left a half-made store that the resumed run could not open ("table ... already exists")."""
    import mlflow

    path = tmp_path / "mlflow.db"
    uri = f"sqlite:///{path}"

    def stopped_midway(tracking_uri):  # the tables half built when the run stops
        sqlite3.connect(tracking_uri.removeprefix("sqlite:///")).execute(
            "CREATE TABLE guardrails (x)"
        ).connection.commit()
        raise KeyboardInterrupt

    monkeypatch.setattr(mlflow, "MlflowClient", stopped_midway)
    with pytest.raises(KeyboardInterrupt):
        tracking.client(uri)
    assert not path.exists()  # nothing half-made where the store belongs
    monkeypatch.undo()
    assert tracking.client(uri).search_experiments() and path.is_file()
    assert record(uri, [model(0, 0.25, 0, 0.7, 0.1)]) == 1
