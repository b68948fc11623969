"""The README's answer is a real run's, in the report's own words.

The README quotes the verdict and the decision tables of one measured run, between the markers
`<!-- answer: FOLDER -->` and `<!-- /answer -->`, right after the command that ran it. FOLDER holds that
run's `summary.parquet` and `statistics.parquet` as the flow wrote them. Here the quote is rebuilt from
the summary with the current code and the command's own flags: a change of the report's wording or
statistics that the README does not carry fails, and the message gives the block to paste.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dropout_lab.analysis.stats import statistics_rows
from dropout_lab.analysis.verdict import data_scope
from dropout_lab.cli.compare import build_parser

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from rebuild_answer import answer_block, design_of_command, quoted, report_of, statistics_current  # noqa: E402


@pytest.fixture(scope="module")
def measured():
    flags, folder, block = quoted()
    summary = pq.read_table(folder / "summary.parquet").to_pylist()
    return flags, folder, block, summary, design_of_command(flags, len({r["seed"] for r in summary}))


def test_the_readme_quotes_the_measured_run_in_the_report_s_current_words(measured):
    _, folder, block, summary, design = measured
    expected = answer_block(summary, design)
    assert block.strip() + "\n" == expected, (
        f"README.md's answer no longer says what the report says for {folder.relative_to(REPO)}; "
        f"paste this between its markers:\n{expected}"
    )


def test_docs_answer_s_statistics_are_what_the_current_code_derives(measured, tmp_path):
    """docs/answer/statistics.parquet, values and field metadata, as the current code derives it from the run's
    rows; one whose train-side intervals are another code's is stale."""
    _, folder, _, summary, design = measured
    tables = report_of(summary, design, folder)[0]
    assert statistics_current(folder, tables)
    table = pq.read_table(folder / "statistics.parquet")
    train = [r["metric"] == "final_train_eval_acc" for r in table.to_pylist()]
    low = [v - 0.001 if t else v for v, t in zip(table["decision_ci_low"].to_pylist(), train, strict=True)]
    column = table.schema.get_field_index("decision_ci_low")
    pq.write_table(table.set_column(column, table.schema.field(column), pa.array(low)), tmp_path / "statistics.parquet")
    assert not statistics_current(tmp_path, tables)


def test_the_quoted_run_is_the_full_recipe_its_command_names(measured):
    """An answer for CIFAR-10: every image, the recipe's epochs and the rates the command names; the
    design rebuilt from the command gives the decisions the flow itself wrote."""
    flags, folder, _, summary, design = measured
    args = build_parser().parse_args(shlex.split(flags.replace("<stand-in>", "DIR")))
    assert not data_scope(summary)[1], f"{folder}: a reduced run cannot be the README's answer"
    rates = {r["dropout"] for r in summary if r["dropout"] > 0}
    assert rates == set(args.dropout)
    written = pq.read_table(folder / "statistics.parquet").to_pylist()
    recomputed = statistics_rows(summary, design)
    keys = ("decision", "decision_ci_low", "decision_ci_high", "seeds_used", "looks", "margin")
    for w, r in zip(written, recomputed, strict=True):
        assert (w["model"], w["metric"]) == (r["model"], r["metric"])
        for key in keys:
            a, b = w[key], r[key]
            assert a == b or (isinstance(a, float) and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)) \
                or (a is None and b is None) or (a != a and b != b), (w["model"], w["metric"], key, a, b)  # fmt: skip


def test_a_changed_word_in_the_report_fails_the_readme_check(measured, monkeypatch):
    """The check above is not vacuous: the same comparison with the verdict's wording changed differs."""
    _, _, block, summary, design = measured
    import dropout_lab.analysis.verdict as stats

    monkeypatch.setitem(stats.WORDS, "generalization_gap", ("tightened", "loosened"))
    assert answer_block(summary, design) != block.strip() + "\n"


# The run page's markdown column at a 1600-px window is about 1,040 px wide; Prefect's table style takes
# about 6.7 px per character and 24 px of padding per cell (both read off the e2e screenshot of the
# per-seed table). Its cells do not wrap, so a wider table runs off the page.
PAGE_PX, CHAR_PX, CELL_PX = 1040, 6.7, 24


def table_widths(markdown: str) -> list[tuple[int, str]]:
    """(estimated width in px, header row) of each markdown table."""
    found = []
    for block in re.findall(r"(?:^\|.*\|\n?)+", markdown, re.M):
        lines = [line for line in block.strip().splitlines() if set(line) - set("|-")]
        rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
        columns = len(rows[0])
        chars = sum(max(len(row[i]) for row in rows if i < len(row)) for i in range(columns))
        found.append((round(chars * CHAR_PX + columns * CELL_PX), lines[0]))
    return found


def test_every_table_of_the_report_fits_the_run_page(measured):
    """The measured run's report, and the same with its widest optional column (the epoch held-out
    images chose) on a GPU: no table is wider than the run page."""
    _, folder, _, summary, design = measured
    held_out = [{**r, "val_best_epoch": 8, "val_selected_test_acc": 0.7234, "device": "cuda:0"} for r in summary]
    for rows in (summary, held_out):
        widths = table_widths(report_of(rows, design, folder)[1])
        assert len(widths) >= 4  # means, differences, fixed-sample checks, per seed
        assert [(w, head) for w, head in widths if w > PAGE_PX] == []


def test_the_decisions_figure_s_words_stay_in_their_panels_and_cover_no_interval(measured, monkeypatch, tmp_path):
    """The measured run's decisions figure: the waves panel's legend (seven entries) sits in the words panel,
    below its sentence, not over the intervals it names (inside the panel it covered 0.1's and 0.25's); the
    words above the difference panels' bars stay inside their frames (0.5's gap sides ran past the right one)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from dropout_lab.analysis import figures

    _, _, _, summary, design = measured
    drawn, save = [], figures._save  # the figure as saved: laid out, then closed
    monkeypatch.setattr(figures, "_save", lambda fig, title, path: (save(fig, title, path), drawn.append(fig)))
    figures.plot_decisions(summary, "t", tmp_path / "d.png", design)
    (fig,) = drawn
    ax_waves, ax_words = fig.axes[2], fig.axes[5]
    fig.set_dpi(80)  # as saved (figures._save): text is laid out on whole pixels, so the dpi matters
    renderer = FigureCanvasAgg(fig).get_renderer()  # closed figures keep no canvas of their own
    legend, (words,) = ax_words.get_legend(), ax_words.texts
    assert ax_waves.get_legend() is None and len(legend.get_texts()) == 7
    box = legend.get_window_extent(renderer)
    assert not box.overlaps(words.get_window_extent(renderer))
    assert ax_words.bbox.contains(box.x0, box.y0) and ax_words.bbox.contains(box.x1, box.y1)
    for ax in fig.axes[:2]:  # the test accuracy and gap differences
        for words in ax.texts:
            box = words.get_window_extent(renderer)
            assert ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1, (words.get_text(), box, ax.bbox)
