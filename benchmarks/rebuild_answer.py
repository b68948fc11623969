"""Re-derive the README's answer (docs/answer) from the measured run's per-seed results, with the current code.

    python benchmarks/rebuild_answer.py [--check]

docs/answer/summary.parquet holds the run's per-model results as the flow wrote them (one row per model and
seed). Every decision, interval, p-value and sentence of the report derives from those rows and the run's
design, which the README's command names (`--seeds auto`, `--max-seeds`, `--margin`; the looks are the
waves' ends up to the seeds the run reached). This writes docs/answer/statistics.parquet and summary.md
again and prints the block the README quotes between its answer markers (tests/test_readme_answer.py
checks the README against it), and draws decisions.png (what the verdict rests on) from those rows. The
curves (comparison.png) need the per-epoch rows, which docs/answer does not keep: they stay the run's.
`--check`: write nothing, exit 1 if the markdown, the statistics (values and field metadata) or the README's quote
would change.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dropout_lab.analysis.figures import plot_decisions, plt  # noqa: E402
from dropout_lab.analysis.report import Tables, markdown_summary, report_title, statistics_tables  # noqa: E402
from dropout_lab.analysis.stats import compare_all, statistics_rows  # noqa: E402
from dropout_lab.analysis.tables import STATISTICS_SCHEMA, write_table  # noqa: E402
from dropout_lab.analysis.verdict import verdict  # noqa: E402
from dropout_lab.cli.compare import build_parser  # noqa: E402
from dropout_lab.config import Design, seed_waves  # noqa: E402
from dropout_lab.core.data import DataInfo  # noqa: E402

README = REPO / "README.md"
MARKER = re.compile(r"<!-- answer: (?P<folder>\S+) -->\n(?P<block>.*?)<!-- /answer -->", re.S)


def quoted() -> tuple[str, Path, str]:
    """(the measured command's flags, the run's folder, the quoted block) from the README."""
    text = README.read_text()
    found = MARKER.search(text)
    assert found, "README.md has no <!-- answer: FOLDER --> ... <!-- /answer --> block"
    before = text[: found.start()].rsplit("\n\n", 2)[-2:]  # the paragraph(s) just above the block
    commands = re.findall(r"`python flows/compare\.py ([^`]*)`", "\n".join(before))
    assert commands, "the README names no `python flows/compare.py ...` command just above its answer"
    return commands[-1], REPO / found["folder"], found["block"]


def design_of_command(flags: str, seeds: int) -> Design:
    """The design the flow ran with: looks at the end of each wave of `--seeds auto`, else one look."""
    args = build_parser().parse_args(shlex.split(flags.replace("<stand-in>", "DIR")))
    if args.seeds != ["auto"]:
        return Design(margin=args.margin / 100)
    ends, total = [], 0
    for wave in seed_waves(args.max_seeds):
        total += len(wave)
        if total <= seeds:
            ends.append(total)
    return Design(tuple(ends), args.max_seeds, args.margin / 100)


def answer_block(summary: list[dict], design: Design) -> str:
    """What the README quotes: the verdict as the report words it, then its tables but the fixed-sample
    checks (docs/answer/summary.md has them)."""
    stats = statistics_rows(summary, design)
    lines = [*(f"- {line}" for line in verdict(summary, design)), "", *statistics_tables(stats, checks=False)]
    return "\n".join(lines).strip() + "\n"


def report_of(summary: list[dict], design: Design, run_dir: Path) -> tuple[Tables, str]:
    """The report's tables as far as the per-seed rows give them (no per-epoch or per-class rows here),
    and its markdown."""
    first = summary[0]
    data = DataInfo("", first["dataset"], first["data_verified"], first["data_provenance"], "")
    comparisons = compare_all(summary, design)
    tables = Tables(design, summary, [], comparisons, statistics_rows(summary, design, comparisons), [], [])
    return tables, markdown_summary(tables, data, run_dir)


def statistics_current(folder: Path, tables: Tables) -> bool:
    """Whether the folder's statistics.parquet is what the current code derives, field metadata included: one
    left behind by older code is stale. Values are compared as their reprs (exact, and NaN, which no Arrow
    comparison takes as equal to itself, alike)."""
    kept, stats = (
        pq.read_table(folder / "statistics.parquet"),
        pa.Table.from_pylist(tables.statistics, schema=STATISTICS_SCHEMA),
    )
    return kept.schema.equals(stats.schema, check_metadata=True) and repr(kept.to_pylist()) == repr(stats.to_pylist())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if docs/answer would change")
    args = ap.parse_args()
    flags, folder, block = quoted()
    summary = pq.read_table(folder / "summary.parquet").to_pylist()
    design = design_of_command(flags, len({r["seed"] for r in summary}))
    old_md = (folder / "summary.md").read_text()
    tables, markdown = report_of(summary, design, Path(re.search(r"Report folder: `([^`]*)`", old_md).group(1)))
    expected = answer_block(summary, design)
    if args.check:
        changed = markdown != old_md or block.strip() + "\n" != expected or not statistics_current(folder, tables)
        print("docs/answer and the README's quote " + ("would change" if changed else "are current"))
        return 1 if changed else 0
    write_table(tables.statistics, STATISTICS_SCHEMA, folder / "statistics.parquet")
    (folder / "summary.md").write_text(markdown)
    with plt.rc_context({"text.parse_math": False}):
        plot_decisions(summary, report_title(summary, summary[0]["data_provenance"]), folder / "decisions.png", design,
                       tables.comparisons)  # fmt: skip
    print(f"wrote {folder / 'statistics.parquet'}, {folder / 'summary.md'} and {folder / 'decisions.png'}; the "
          "README's quote:\n")  # fmt: skip
    print(expected)
    return 0


if __name__ == "__main__":
    sys.exit(main())
