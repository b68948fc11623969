"""`dropout-lab history`: every recorded run as a table and a figure of the trend, or two experiments
side by side (`--compare A B`).

Reads the run history every completed `flows/compare.py` run records to (analysis/history.py): the
store `--history URL` (or $DROPOUT_LAB_HISTORY) names, else `<out>/history.sqlite`. Read-only, and
plain Python: no Prefect server needed.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dropout_lab.cli.oneline import Parser, Refused, one_line
from dropout_lab.config import BASELINE, SETTINGS, Variant, counted, flag, value_text

# `--help` and a refused flag answer before SQLAlchemy, pyarrow and matplotlib load (they take seconds):
# the store and the figure are imported once the flags are good.


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
    parser = Parser(
        prog="dropout-lab history",
        description="The run history: one row per model per run, and a figure of the trend; or two experiments "
        "side by side.",
    )
    parser.add_argument("--history", metavar="URL", help="the store: a SQLAlchemy URL such as postgresql://user@host/"
                        "db, or a SQLite file (default: $DROPOUT_LAB_HISTORY, else OUT/history.sqlite)")  # fmt: skip
    parser.add_argument("--out", default="artifacts", help="the flow's --out folder (default: %(default)s)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="two experiments (names or report-folder digests) side by side: every variant's seeds, "
                             "test accuracy and gap with 95%% intervals, and B minus A")  # fmt: skip
    for setting in SETTINGS:  # one filter per compared setting; its `off` value is the baseline alone
        names = [flag(setting.field), *(["--rate"] if setting.field == "dropout" else [])]
        parser.add_argument(*names, dest=setting.field, type=float, nargs="+", metavar="V",
                            help=f"only the variants with these {setting.plural} ({value_text(setting.off)}: the "
                                 "baseline only)")  # fmt: skip
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


@one_line
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_outputs(args)
    from dropout_lab.analysis.history import HistoryError

    try:
        return show(args)
    except HistoryError as e:
        raise Refused(str(e)) from None


def writable_file(path: Path, flag_name: str) -> None:
    """A file the command may write: not a folder, in a folder that exists and is writable. Refused."""
    if path.is_dir() or str(path).endswith(os.sep):
        raise Refused(f"{flag_name} {path}: a folder, not a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise Refused(f"{flag_name} {path}: no folder {folder}")
    try:  # os.access says yes to root; a real (deleted) temp file says whether the folder takes files
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise Refused(f"{flag_name} {path}: its folder is not writable ({e.strerror or e})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise Refused(f"{flag_name} {path}: not writable")


def check_outputs(args: argparse.Namespace) -> None:
    """Every value checked before the store is opened: the figure and Parquet files it would write."""
    if args.last is not None and args.last < 1:
        raise Refused("--last: must be >= 1")
    if args.history is not None and not args.history.strip():
        raise Refused("--history: must not be empty")
    if args.figure is not None and not args.no_figure:
        writable_file(args.figure, "--figure")
    if args.parquet is not None:
        writable_file(args.parquet, "--parquet")


def show(args: argparse.Namespace) -> int:
    from dropout_lab.analysis.history import as_table, exists, history_target, import_reports, read, run_key, shown

    out = Path(args.out)
    history = args.history or history_target(out)
    if args.import_reports:
        if not out.is_dir():
            raise Refused(f"--out {out}: no such folder")
        print(f"imported {import_reports(out, history)} model rows from report folders under {out}")
    if not exists(history):
        raise Refused(f"no run history at {shown(history)}: runs record there once they complete")
    # The table and figure bring matplotlib and scipy (~1.5 s): imported once the store answered, so a
    # refusal is answered in a fraction of a second, like --help.
    from dropout_lab.analysis.trend import format_table, plot_trend

    if args.compare:
        return compare(history, *args.compare)
    rows = read(history, variants=selected(args), seeds=args.seeds, dataset=args.dataset, since=args.since,
                last=args.last)  # fmt: skip
    if not rows:
        print(f"no recorded runs match in {shown(history)}")
        return 0
    print(format_table(rows))
    print(f"{counted(len(rows), 'model')} from {counted(len({run_key(r) for r in rows}), 'run')}")
    if args.parquet:
        import pyarrow.parquet as pq

        pq.write_table(as_table(rows), args.parquet)
        print(f"parquet: {args.parquet}")
    if not args.no_figure:
        figure = args.figure or out / "history.png"
        if args.figure is None:
            writable_file(figure, "--figure (default: OUT/history.png)")
        plot_trend(rows, figure, title=f"Runs recorded in {shown(history)}")
        print(f"figure: {figure}")
    return 0


def selected(args: argparse.Namespace) -> list[Variant] | None:
    """The variants the per-setting filters name (None: no filter): a value at the setting's `off` is the
    baseline, any other that setting's variant."""
    chosen = [BASELINE if value == s.off else Variant(((s.field, float(value)),))
              for s in SETTINGS for value in getattr(args, s.field) or ()]  # fmt: skip
    return chosen or None


def compare(history, a: str, b: str) -> int:
    """Two experiments side by side; each must name exactly one experiment in the history."""
    from dropout_lab.analysis.history import read, shown
    from dropout_lab.analysis.trend import compare_table

    sides = []
    for which in (a, b):
        rows = read(history, experiments=[which]) if which.strip() else []
        names = sorted({r["experiment"] for r in rows})
        if len(names) != 1:
            found = f"{len(names)} experiments ({', '.join(names)[:200]})" if names else "nothing"
            raise Refused(f"--compare {which!r}: matches {found} in {shown(history)}; give a name or a longer digest")
        sides.append((names[0], rows))
    print(compare_table(*sides))
    return 0
