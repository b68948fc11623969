"""`dropout-lab history`: every recorded run as a table (and, asked, a figure of the trend), or two
experiments side by side (`--compare A B`).

Reads the run history every completed `flows/compare.py` run records to: MLflow's tracking store, the one
`--history URL` (or $MLFLOW_TRACKING_URI) names, else `<out>/mlflow.db`, read without MLflow's client
(analysis/history.py). Read-only but for `--import` and `--import-reports`; no Prefect server needed.
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

# `--help` and a refused flag answer before the store, pyarrow and matplotlib load: the store is read
# once the flags are good, and the figure's libraries are imported only when a figure is asked for.


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
        description="The run history: one row per model per run, a figure of the trend when asked; or two "
        "experiments side by side.",
    )
    parser.add_argument("--history", metavar="URL", help="the store, an MLflow tracking URI: sqlite:///FILE, "
                        "postgresql://user@host/db, http://mlflow-server:5000 (default: $MLFLOW_TRACKING_URI, "
                        "else sqlite:///OUT/mlflow.db)")  # fmt: skip
    parser.add_argument("--out", default="artifacts", help="the flow's --out folder (default: %(default)s)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="two experiments (names or report-folder digests) side by side: every variant's seeds, "
                             "test accuracy and gap with 95%% intervals, and B minus A")  # fmt: skip
    for setting in SETTINGS:  # one filter per compared setting; its `off` value is the baseline alone
        names = [flag(setting.field), *(["--rate"] if setting.field == "dropout" else [])]
        parser.add_argument(*names, dest=setting.field, type=float if setting.numeric else str, nargs="+", metavar="V",
                            choices=setting.choices or None,
                            help=f"only the variants with these {setting.plural}, alone or with other settings "
                                 f"({value_text(setting.off)}: the baseline only)")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="only these seeds")
    parser.add_argument("--dataset", help="only this dataset (cifar10, fake)")
    parser.add_argument("--since", type=since_value, metavar="WHEN", help="recorded since: 2026-11-01, 7d, 12h")
    parser.add_argument("--last", type=int, metavar="N", help="only the last N runs")
    parser.add_argument("--figure", type=Path, nargs="?", const=True, metavar="PNG",
                        help="also draw the trend (default file: OUT/history.png)")  # fmt: skip
    parser.add_argument("--parquet", type=Path, metavar="FILE", help="also write the selected rows as Parquet")
    parser.add_argument("--import", dest="import_from", metavar="FILE_OR_URL",
                        help="first record a run history an earlier version kept (history.sqlite, or its "
                             "database URL) into the store, once")  # fmt: skip
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
    if args.figure is True:
        args.figure = Path(args.out) / "history.png"
    if args.figure is not None:
        writable_file(args.figure, "--figure")
    if args.parquet is not None:
        writable_file(args.parquet, "--parquet")


def show(args: argparse.Namespace) -> int:
    from dropout_lab.analysis.history import LEGACY_FILE, exists, read, run_key, shown, store_uri
    from dropout_lab.analysis.trend import format_table

    out = Path(args.out)
    uri = store_uri(out, args.history)
    if args.import_from or args.import_reports:
        from dropout_lab.analysis.tracking import check_store, import_history, import_reports

        check_store(uri)
        if args.import_from:
            print(f"imported {counted(import_history(args.import_from, uri), 'model')} from {shown(args.import_from)}")
        if args.import_reports:
            if not out.is_dir():
                raise Refused(f"--out {out}: no such folder")
            print(f"imported {counted(import_reports(out, uri), 'model')} from report folders under {out}")
    if not exists(uri):
        legacy = out / LEGACY_FILE
        hint = f"; an earlier version's history is at {legacy}: --import {legacy} records it" * legacy.is_file()
        raise Refused(f"no run history at {shown(uri)}: runs record there once they complete{hint}")
    if args.compare:
        return compare(uri, *args.compare)
    rows = read(uri, variants=selected(args), seeds=args.seeds, dataset=args.dataset, since=args.since,
                last=args.last)  # fmt: skip
    if not rows:
        print(f"no recorded runs match in {shown(uri)}")
        return 0
    print(format_table(rows))
    print(f"{counted(len(rows), 'model')} from {counted(len({run_key(r) for r in rows}), 'run')}")
    if args.parquet:
        import pyarrow.parquet as pq

        from dropout_lab.analysis.history import as_table

        pq.write_table(as_table(rows), args.parquet)
        print(f"parquet: {args.parquet}")
    if args.figure:
        from dropout_lab.analysis.trend import plot_trend

        plot_trend(rows, args.figure, title=f"Runs recorded in {shown(uri)}")
        print(f"figure: {args.figure}")
    return 0


def selected(args: argparse.Namespace) -> list[Variant] | None:
    """The variants the per-setting filters name (None: no filter): a value at the setting's `off` is the
    baseline, any other that setting's variant."""
    chosen = [BASELINE if value == s.off else Variant(((s.field, value),))
              for s in SETTINGS for value in getattr(args, s.field) or ()]  # fmt: skip
    return chosen or None


def compare(uri: str, a: str, b: str) -> int:
    """Two experiments side by side; each must name exactly one experiment in the history."""
    from dropout_lab.analysis.history import read, shown
    from dropout_lab.analysis.trend import compare_table

    sides = []
    for which in (a, b):
        rows = read(uri, experiments=[which]) if which.strip() else []
        # One experiment is one digest: a name that two (a code change, a recipe named alike) share would
        # pool their seeds, a model both used counted twice.
        found = sorted({(r["experiment"], r["experiment_hash"][:10]) for r in rows})
        if len(found) != 1:
            listed = ", ".join(" ".join(pair) for pair in found)[:200]
            which_text = f"{len(found)} experiments ({listed})" if found else "nothing"
            raise Refused(f"--compare {which!r}: matches {which_text} in {shown(uri)}; give one experiment's digest "
                          "(its report folder's last part)")  # fmt: skip
        sides.append((found[0][0], rows))
    print(compare_table(*sides))
    return 0
