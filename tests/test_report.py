"""Report writing from synthetic results: schemas, figures, markdown."""

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from tasks.config import TrainConfig
from tasks.data import DataInfo
from tasks.model import CLASSES
from tasks.report import HISTORY_SCHEMA, PER_CLASS_SCHEMA, SUMMARY_SCHEMA, markdown_summary, write_report
from tasks.results import EvalResult, TrainResult


def fake_results(rates=(0.25, 0.0), epochs=3, dataset="cifar10", verified=False, seeds=(0,)):
    trained, evals = [], []
    for p, seed in [(p, s) for p in rates for s in seeds]:
        cfg = TrainConfig(dropout=p, epochs=epochs, seed=seed)
        history = [
            {"epoch": e, "train_loss": 2 - 0.3 * e, "train_acc": 0.4 + 0.1 * e * (1.5 if p == 0 else 1) + 0.01 * seed,
             "test_loss": 1.5 - 0.1 * e, "test_acc": 0.45 + 0.08 * e, "epoch_seconds": 10.0}
            for e in range(1, epochs + 1)
        ]  # fmt: skip
        trained.append(TrainResult(cfg, "/nowhere.pt", "0" * 64, history, 361_034, "2026-01-01T00:00:00+00:00",
                                   "2026-01-01T00:01:00+00:00", 60.0, 1, 1000, 200))  # fmt: skip
        confusion = [[20 if i == j else 2 for j in range(10)] for i in range(10)]
        evals.append(EvalResult(cfg, history[-1]["test_loss"], history[-1]["test_acc"], [0.5] * 10, confusion))
    info = DataInfo("/data", dataset, verified, "CIFAR-10 local copy — UNVERIFIED (md5 mismatch)", "f" * 64, "x")
    images = np.random.default_rng(0).integers(0, 255, (25, 32, 32, 3), dtype=np.uint8)
    return trained, evals, info, (images, np.arange(25) % 10), list(CLASSES)


def test_write_report_produces_every_file_with_its_schema(tmp_path):
    run_dir, markdown = write_report(tmp_path / "run", *fake_results())
    assert pq.read_schema(run_dir / "history.parquet").equals(HISTORY_SCHEMA)
    assert pq.read_schema(run_dir / "summary.parquet").equals(SUMMARY_SCHEMA)
    assert pq.read_schema(run_dir / "per_class.parquet").equals(PER_CLASS_SCHEMA)
    summary = {r["model"]: r for r in pq.read_table(run_dir / "summary.parquet").to_pylist()}
    assert summary["baseline"]["best_epoch"] == 3 and summary["baseline"]["final_test_acc"] == 0.45 + 0.24
    assert summary["dropout=0.25"]["started_at"].tzinfo is not None
    for png in ("comparison.png", "samples.png"):
        with Image.open(run_dir / png) as img:
            img.verify()
    assert "data:image/png;base64," in markdown and "unverified" in markdown
    assert "**Verdict.** dropout 0.25 vs baseline with one seed each" in markdown
    assert "no confidence interval can be computed" in markdown
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]  # no temp folder left behind


def test_rewriting_a_report_replaces_it_whole(tmp_path):
    write_report(tmp_path / "run", *fake_results())
    (tmp_path / "run" / "stale.txt").write_text("from an older run")
    write_report(tmp_path / "run", *fake_results())
    assert not (tmp_path / "run" / "stale.txt").exists()


def test_baseline_only_report(tmp_path):
    run_dir, markdown = write_report(tmp_path / "run", *fake_results(rates=(0.0,)))
    assert pq.read_table(run_dir / "summary.parquet").num_rows == 1
    assert "Only one model was trained" in markdown


def test_markdown_labels_synthetic_data():
    trained, evals, info, *_ = fake_results(dataset="fake")
    from dataclasses import replace

    from tasks.report import summary_rows

    info = replace(info, provenance="synthetic data — accuracies meaningless")
    md = markdown_summary(summary_rows(trained, evals, info), info, None, "/x")
    assert "synthetic data — accuracies meaningless" in md


def test_multi_seed_report_has_statistics_and_a_verdict(tmp_path):
    from tasks.report import STATISTICS_SCHEMA

    run_dir, markdown = write_report(tmp_path / "run", *fake_results(rates=(0.1, 0.5, 0.0), seeds=(0, 1, 2)))
    stats = pq.read_table(run_dir / "statistics.parquet")
    assert stats.schema.equals(STATISTICS_SCHEMA) and stats.num_rows == 3 * 4
    assert pq.read_table(run_dir / "summary.parquet").num_rows == 9
    assert "**Verdict.** dropout 0.1 " in markdown and "(3 vs 3 seeds, Welch's t-test)" in markdown
    assert "| model | seeds | final test acc (95% CI) |" in markdown
    with Image.open(run_dir / "comparison.png") as img:
        img.verify()
