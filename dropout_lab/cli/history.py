"""Every recorded run as a table, and a figure of the trend: `python flows/history.py --out artifacts`.

Reads `<out>/history.sqlite`, which each completed `flows/compare.py` run (CLI, served or worker run)
writing reports to `--out` appends to (analysis/history.py). Plain Python: no Prefect server needed.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dropout_lab.analysis.history import HISTORY_FILE, HistoryError, as_table, import_reports, read, run_key
from dropout_lab.analysis.trend import format_table, plot_trend


def since_value(text: str) -> datetime:
    """`2026-11-01`, `2026-11-01T08:00` (UTC unless it says otherwise) or `7d` / `12h` ago."""
    ago = re.fullmatch(r"(\d+)([dh])", text.strip())
    if ago:
        amount = int(ago.group(1))
        return datetime.now(UTC) - (timedelta(days=amount) if ago.group(2) == "d" else timedelta(hours=amount))
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date, time or age like 7d: {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dropout-lab history",
        description="The run history under --out: one row per model per run, and a figure of the trend.",
    )
    parser.add_argument("--out", default="artifacts", help="the flow's --out folder (default: %(default)s)")
    parser.add_argument("--rate", type=float, nargs="+", metavar="P", help="only these dropout rates (0: baseline)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="only these seeds")
    parser.add_argument("--dataset", help="only this dataset (cifar10, fake)")
    parser.add_argument("--since", type=since_value, metavar="WHEN", help="recorded since: 2026-11-01, 7d, 12h")
    parser.add_argument("--last", type=int, metavar="N", help="only the last N runs")
    parser.add_argument("--figure", type=Path, metavar="PNG", help="where the figure goes (default: OUT/history.png)")
    parser.add_argument("--no-figure", action="store_true", help="print the table only")
    parser.add_argument("--parquet", type=Path, metavar="FILE", help="also write the selected rows as Parquet")
    parser.add_argument(
        "--import-reports", action="store_true", help="first record report folders written before the history existed"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return show(args)
    except HistoryError as e:
        return fail(str(e))


def show(args: argparse.Namespace) -> int:
    out = Path(args.out)
    history = out / HISTORY_FILE
    if args.last is not None and args.last < 1:
        return fail("--last: must be >= 1")
    if args.import_reports:
        if not out.is_dir():
            return fail(f"no folder {out}")
        print(f"imported {import_reports(out, history)} model rows from report folders under {out}")
    if not history.is_file():
        return fail(f"no run history at {history}: runs record there once they complete with --out {out}")
    rows = read(history, rates=args.rate, seeds=args.seeds, dataset=args.dataset, since=args.since, last=args.last)
    if not rows:
        print(f"no recorded runs match in {history}")
        return 0
    print(format_table(rows))
    print(f"{len(rows)} models from {len({run_key(r) for r in rows})} runs")
    if args.parquet:
        import pyarrow.parquet as pq

        pq.write_table(as_table(rows), args.parquet)
        print(f"parquet: {args.parquet}")
    if not args.no_figure:
        figure = args.figure or out / "history.png"
        plot_trend(rows, figure, title=f"Runs recorded in {history}")
        print(f"figure: {figure}")
    return 0


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1
