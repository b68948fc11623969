"""Report writing from synthetic results: schemas, figures, markdown."""

import math
import pathlib
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dropout_lab.analysis.report import markdown_summary, report_tables, write_report
from dropout_lab.analysis.tables import CONFUSION_SCHEMA, PER_CLASS_SCHEMA, PER_EPOCH_SCHEMA, SUMMARY_SCHEMA
from dropout_lab.config import Design, TrainConfig
from dropout_lab.core.data import CLASSES, DataInfo
from dropout_lab.results import TrainResult


def fake_results(rates=(0.25, 0.0), epochs=3, dataset="cifar10", verified=False, seeds=(0,), n_train=1000):
    trained = []
    confusion = [[20 if i == j else 2 for j in range(10)] for i in range(10)]
    for p, seed in [(p, s) for p in rates for s in seeds]:
        cfg = TrainConfig(dropout=p, epochs=epochs, seed=seed)
        history = [
            {"epoch": e, "train_running_loss": 2 - 0.3 * e, "train_eval_loss": 1.9 - 0.3 * e,
             "train_running_acc": 0.4 + 0.08 * e + 0.01 * seed,
             "train_eval_acc": 0.45 + 0.1 * e * (1.5 if p == 0 else 1) + 0.01 * seed,
             "test_loss": 1.5 - 0.1 * e, "test_acc": 0.45 + 0.08 * e, "test_confusion": confusion,
             "epoch_seconds": 10.0, "n_train": n_train, "n_train_eval": min(n_train, 10_000), "n_test": 200}
            for e in range(1, epochs + 1)
        ]  # fmt: skip
        times = ("2026-01-01T00:00:00+00:00", "2026-01-01T00:01:00+00:00")
        trained.append(TrainResult(cfg, "/nowhere.pt", "0" * 64, history, 361_034, *times, 60.0, 1))
    info = DataInfo("/data", dataset, verified, "CIFAR-10 local copy — UNVERIFIED (md5 mismatch)", "f" * 64)
    images = np.random.default_rng(0).integers(0, 255, (25, 32, 32, 3), dtype=np.uint8)
    return trained, info, (images, np.arange(25) % 10), list(CLASSES)


def written(run_dir, trained, info, samples, names, design=Design()):
    """The report of these results as the flow writes it: its tables computed once, then the files."""
    return write_report(run_dir, trained, info, samples, names, report_tables(trained, info, design))


def test_write_report_produces_every_file_with_its_schema(tmp_path):
    run_dir, markdown = written(tmp_path / "run", *fake_results())
    assert pq.read_schema(run_dir / "per_epoch.parquet").equals(PER_EPOCH_SCHEMA)
    assert pq.read_schema(run_dir / "summary.parquet").equals(SUMMARY_SCHEMA)
    assert pq.read_schema(run_dir / "per_class.parquet").equals(PER_CLASS_SCHEMA)
    assert pq.read_schema(run_dir / "confusion.parquet").equals(CONFUSION_SCHEMA)
    summary = {r["model"]: r for r in pq.read_table(run_dir / "summary.parquet").to_pylist()}
    assert summary["baseline"]["best_epoch"] == 3 and summary["baseline"]["final_test_acc"] == 0.45 + 0.24
    assert summary["baseline"]["generalization_gap"] == pytest.approx(0.45 + 0.45 - (0.45 + 0.24))
    assert summary["dropout=0.25"]["started_at"].tzinfo is not None
    for png in ("decisions.png", "comparison.png", "samples.png"):
        with Image.open(run_dir / png) as img:
            img.verify()
    assert markdown.count("](data:image/png;base64,") == 2 and "unverified" in markdown  # both figures, in the UI
    linked = (run_dir / "summary.md").read_text()
    assert "![decisions](decisions.png)" in linked and "![comparison](comparison.png)" in linked
    assert "\n- dropout 0.25 vs baseline with one seed each" in markdown
    assert "no interval, no decision" in markdown
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]  # no temp folder left behind


def test_a_training_restored_from_its_checkpoints_reports_its_epochs_time_not_the_restore_s(tmp_path):
    """Rerun where the trainings' checkpoints are complete: the process takes seconds, the training took
    its epochs' time; the per-seed table and the one-seed cost estimate use the latter."""
    import dataclasses

    trained, *rest = fake_results()  # 3 epochs of 10 s each, 60 s of process time
    restored = [dataclasses.replace(t, train_seconds=2.0, resumed_from=3) for t in trained]
    run_dir, markdown = written(tmp_path / "run", restored, *rest)
    rows = pq.read_table(run_dir / "summary.parquet").to_pylist()
    assert [(r["train_seconds"], r["epochs_seconds"], r["resumed_from_epoch"]) for r in rows] == [(2.0, 30.0, 3)] * 2
    assert markdown.count("| 30 s | cpu |") == 2
    assert "this run's training took 0.5 min" in markdown


def test_the_figure_title_counts_seeds_per_model_when_a_decided_variant_stopped():
    from dropout_lab.analysis.report import report_title

    def title(results, info) -> str:
        return report_title(report_tables(results, info, Design()).summary, info.provenance)

    trained, info, *_ = fake_results(seeds=(0, 1, 2))
    assert ", 3 seeds (mean, 95% bands)," in title(trained, info)
    stopped = [t for t in trained if not (t.config.dropout and t.config.seed == 2)]  # --seeds auto: 0.25 decided
    assert ", 2–3 seeds per model (n in the legends) (mean, 95% bands)," in title(stopped, info)
    assert ", seed 0," in title(fake_results()[0], info)


def test_rewriting_a_report_replaces_it_whole(tmp_path):
    written(tmp_path / "run", *fake_results())
    (tmp_path / "run" / "stale.txt").write_text("from an older run")
    written(tmp_path / "run", *fake_results())
    assert not (tmp_path / "run" / "stale.txt").exists()


def test_baseline_only_report(tmp_path):
    run_dir, markdown = written(tmp_path / "run", *fake_results(rates=(0.0,)))
    assert pq.read_table(run_dir / "summary.parquet").num_rows == 1
    assert "Only one model was trained" in markdown


def test_markdown_labels_synthetic_data():
    trained, info, *_ = fake_results(dataset="fake")
    from dataclasses import replace

    info = replace(info, provenance="synthetic data — accuracies meaningless")
    md = markdown_summary(report_tables(trained, info, Design()), info, "/x")
    assert "synthetic data — accuracies meaningless" in md


def test_multi_seed_report_has_statistics_and_a_verdict(tmp_path):
    from dropout_lab.analysis.tables import STATISTICS_SCHEMA

    run_dir, markdown = written(tmp_path / "run", *fake_results(rates=(0.1, 0.5, 0.0), seeds=(0, 1, 2)))
    stats = pq.read_table(run_dir / "statistics.parquet")
    assert stats.schema.equals(STATISTICS_SCHEMA) and stats.num_rows == 3 * 4
    assert pq.read_table(run_dir / "summary.parquet").num_rows == 9
    assert "\n- dropout 0.1 vs baseline (3 paired seeds): " in markdown
    assert (
        "**Verdict**\n\n- Reduced run (an unverified local copy of CIFAR-10, its md5s not the official ones; 1,000 of "
        "50,000 training images; 200 of 10,000 test images; 3 epochs instead of the recipe's 8)" in markdown
    )
    assert (
        "| model | seeds | final test acc (95% CI) |" in markdown and "| vs baseline | metric | decision |" in markdown
    )
    # Test accuracy alike at every seed (no spread), three seeds for six claims: no interval, no power. The
    # differences table said "+0.00 (-inf to +inf)" and "nan–nan" there.
    assert "| dropout=0.1 | test acc | undecided | +0.00 (no interval) | — | 3 | 1.00 (1.00) | n/a |" in markdown
    text = re.sub(r"\(data:image/png;base64,[^)]*\)", "", markdown)  # the figures embedded for the run page
    assert not re.search(r"\binf\b|\bnan\b", text), re.findall(r".*\b(?:inf|nan)\b.*", text)
    with Image.open(run_dir / "comparison.png") as img:
        img.verify()


def summary_for(rates, seeds, acc_of):
    return [{"model": "baseline" if p == 0 else f"dropout={p:g}", "dropout": p, "seed": s,
             "final_test_acc": acc_of(p, s), "generalization_gap": 0.1 - p / 5 + 0.001 * s}
            for p in rates for s in seeds]  # fmt: skip


def test_rate_panel_one_seed_two_rates_is_not_zoomed_in_and_not_joined():
    import matplotlib.pyplot as plt

    from dropout_lab.analysis.figures import MIN_RATE_AXIS_SPAN, plot_rate_panel

    fig, ax = plt.subplots()
    plot_rate_panel(ax, summary_for((0.0, 0.25), (0,), lambda p, s: 0.7018 + p * 0.04), "final_test_acc", "acc (%)")
    low, high = ax.get_ylim()
    assert high - low >= MIN_RATE_AXIS_SPAN and low <= 70.18 and high >= 71.18  # a 1-point gap looks like 1 point
    (errorbar,) = ax.containers
    assert errorbar.lines[0].get_linestyle() == "None"  # two rates: no line suggesting a trend
    assert any("no interval" in t.get_text() for t in ax.texts)
    plt.close(fig)


def test_rate_panel_three_rates_are_joined_and_show_every_seed():
    import matplotlib.pyplot as plt

    from dropout_lab.analysis.figures import plot_rate_panel

    fig, ax = plt.subplots()
    data = summary_for((0.0, 0.1, 0.5), (0, 1, 2), lambda p, s: 0.7 + 0.01 * s - p / 10)
    plot_rate_panel(ax, data, "final_test_acc", "acc (%)")
    (errorbar,) = ax.containers
    assert errorbar.lines[0].get_linestyle() == "-"
    dots = sum(len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets") and c not in errorbar)
    assert dots >= 9  # one dot per (rate, seed)
    plt.close(fig)


def test_waves_panel_keeps_the_last_look_readable_beside_a_first_one_without_an_interval():
    """A first look of a 20-seed plan (5 seeds) has no interval at its level, the last is about a point wide:
    the first is drawn as its mean alone and the axis stays finite, the last readable."""
    import matplotlib.pyplot as plt

    from dropout_lab.analysis.figures import plot_waves_panel
    from dropout_lab.analysis.stats import compare_all
    from dropout_lab.config import Design

    noise = [0.004, -0.003, 0.006, -0.005, 0.001, 0.002, -0.006, 0.003, -0.001, 0.005]
    data = summary_for((0.0, 0.25), range(10), lambda p, s: 0.7 + noise[s] * (1 if p else -1) + p / 50)
    for row in data:
        row["generalization_gap"] += noise[row["seed"]] / 2 if row["dropout"] else 0.0
        row["final_train_eval_acc"] = row["final_test_acc"] + row["generalization_gap"]
        row["final_test_loss"] = 1.0 - row["final_test_acc"]
    comparisons = compare_all(data, Design((5, 10), 20, 0.01))
    fig, ax = plt.subplots()
    plot_waves_panel(ax, {m: comparisons[m] for m in ("final_test_acc", "generalization_gap")})
    fig.canvas.draw()
    looks = next(iter(comparisons["final_test_acc"].values())).decision.looks
    assert (looks[0].low, looks[0].high) == (-math.inf, math.inf)  # the situation this is about
    to_px = lambda y: ax.transData.transform((0, 100 * y))[1]  # noqa: E731
    height = ax.bbox.height
    assert (to_px(looks[-1].high) - to_px(looks[-1].low)) / height > 0.1  # last look: >10% of the panel
    assert all(math.isfinite(y) for y in ax.get_ylim())
    hollow = [line for line in ax.lines if line.get_markerfacecolor() == "white"]
    xs = [x for line in hollow for x in line.get_xdata()]
    assert len(xs) == 2 and all(abs(x - 5) < 1 for x in xs)  # the first look (5 seeds), once per claim
    assert any("hollow: no interval" in t.get_text() for t in ax.get_legend().get_texts())
    plt.close(fig)


def test_accuracy_bands_are_clipped_to_possible_values():
    import matplotlib.pyplot as plt

    from dropout_lab.analysis.figures import _band

    fig, ax = plt.subplots()
    runs = np.array([[0.5, 99.5], [3.0, 95.0]])  # two seeds: a t-band of +-16 points around each mean
    _band(ax, np.array([1, 2]), runs, "k", "-", "x")
    (band,) = ax.collections
    ys = np.concatenate([path.vertices[:, 1] for path in band.get_paths()])
    assert ys.min() >= 0.0 and ys.max() <= 100.0
    plt.close(fig)


def test_gap_axis_includes_zero():
    from dropout_lab.analysis.figures import _rate_axis_limits

    low, high = _rate_axis_limits([10.0, 12.0], (-100, 100), include_zero=True)
    assert low < 0 < 10 < 12 < high
    low, high = _rate_axis_limits([99.0, 99.5], (0, 100), include_zero=False)
    assert high == 100 and high - low >= 10


def test_the_difference_panel_says_what_the_verdict_says_at_the_level_of_its_interval():
    """A change clear of zero but not of the margin: the figure's words are the verdict's ('better, not shown
    to exceed ±1.00 points'), and its title names the interval's level (the figure once said 'better' alone)."""
    import matplotlib.pyplot as plt

    from dropout_lab.analysis.figures import plot_difference_panel
    from dropout_lab.analysis.stats import compare_all
    from dropout_lab.analysis.verdict import describe, level_text
    from dropout_lab.config import Design

    lift = [0.005, 0.025, 0.01, 0.02, 0.008, 0.022, 0.012, 0.018, 0.006, 0.024]  # +1.5 points, clear of zero only
    data = summary_for((0.0, 0.25), range(10), lambda p, s: 0.7 + (lift[s] if p else 0.001 * (s % 3)))
    for row in data:
        row["final_train_eval_acc"] = row["final_test_acc"] + row["generalization_gap"]
        row["final_test_loss"] = 1.0 - row["final_test_acc"]
    ((variant, c),) = compare_all(data, Design((), 0, 0.01))["final_test_acc"].items()
    assert ", not shown to exceed ±1.00 points" in describe(c)
    fig, ax = plt.subplots()
    plot_difference_panel(ax, {variant: c}, "Test accuracy")
    (words,) = [t.get_text() for t in ax.texts]
    assert words.replace("\n", " ") == f"{c.decision.decision}, not shown to exceed ±1.00 points"
    assert level_text(c) in ax.get_title()
    plt.close(fig)


def test_the_decisions_figure_is_drawn_from_the_per_seed_rows_alone(tmp_path):
    """docs/answer keeps the run's per-seed rows, not its epochs: its decisions figure is redrawn from them."""
    from dropout_lab.analysis.figures import plot_decisions
    from dropout_lab.config import Design

    answer = pathlib.Path(__file__).resolve().parent.parent / "docs" / "answer"
    summary = pq.read_table(answer / "summary.parquet").to_pylist()
    plot_decisions(summary, "title", tmp_path / "decisions.png", Design((5, 10, 15, 20), 20, 0.01))
    with Image.open(tmp_path / "decisions.png") as img:
        assert img.size[0] > 1000


def test_difference_panel_names_a_claim_without_an_interval():
    """Seeds whose test accuracy differences are all 0: the panel drew a bare dot inside the margin band,
    which reads as equivalent; it now says the claim is undecided and why."""
    import matplotlib.pyplot as plt

    from dropout_lab.analysis.figures import plot_difference_panel
    from dropout_lab.analysis.stats import compare_all
    from dropout_lab.config import Design

    data = summary_for((0.0, 0.25), range(5), lambda p, s: 0.7)
    for row in data:
        row["final_train_eval_acc"] = row["final_test_acc"] + row["generalization_gap"]
        row["final_test_loss"] = 0.3
    fig, ax = plt.subplots()
    plot_difference_panel(ax, compare_all(data, Design((5,), 5, 0.01))["final_test_acc"], "Test accuracy")
    assert [t.get_text() for t in ax.texts] == ["undecided\nno interval: no spread"]
    plt.close(fig)


def test_the_curves_legends_name_each_model_once(tmp_path, monkeypatch):
    """Three models: the accuracy and loss panels' legends hold one entry per model (their titles say which line
    is train, test, running); three per model (eleven in docs/answer) covered the curves they name."""
    from dropout_lab.analysis import figures

    drawn, save = [], figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, title, path: (save(fig, title, path), drawn.append(fig)))
    trained, *_ = fake_results(rates=(0.1, 0.5, 0.0), seeds=(0, 1))
    figures.plot_comparison(trained, "t", tmp_path / "c.png")
    (fig,) = drawn
    names = ["dropout=0.1 (n=2)", "dropout=0.5 (n=2)", "baseline (n=2)"]
    for ax in fig.axes[:3]:  # accuracy, loss, gap (the per-class bars name each model with its accuracy)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == names
    assert "dashed" in fig.axes[0].get_title() and "dotted" in fig.axes[0].get_title()
