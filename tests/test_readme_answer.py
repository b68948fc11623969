"""The README's answer is a real run's, in the report's own words.

The README quotes the verdict and the decision tables of one measured run, between the markers
`<!-- answer: FOLDER -->` and `<!-- /answer -->`, right after the command that ran it. FOLDER holds that
run's `summary.parquet` and `statistics.parquet` as the flow wrote them. Here the quote is rebuilt from
the summary with the current code and the command's own flags: a change of the report's wording or
statistics that the README does not carry fails, and the message gives the block to paste.
"""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dropout_lab.analysis.stats import statistics_rows
from dropout_lab.analysis.verdict import data_scope
from dropout_lab.cli.compare import build_parser

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from rebuild_answer import answer_block, design_of_command, quoted  # noqa: E402


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
