"""Wall time of the whole default comparison, this checkout vs an earlier commit, side by side.

    python benchmarks/ab_end_to_end.py --base REV --data-dir DIR [--rounds 1] [--fresh-prefect-home] [-- FLOW ARGS]

Checks REV out into a temporary git worktree and runs `python flows/compare.py --data-dir DIR`
there and here, alternately (base, this, base, this, … for --rounds), each with a fresh cache and
output folder, with this checkout's Python. Prints each wall time and the ratio this/base.
What a change costs end to end (Prefect's start-up, training, evaluation, report), measured on
one machine in one run. `--fresh-prefect-home` gives every run an empty PREFECT_HOME: a machine's
first run, which also creates Prefect's database. Never run it next to another job: numbers skew.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed_run(
    checkout: Path, data_dir: Path, scratch: Path, extra: list[str], fresh_home: bool = False
) -> tuple[float, list[str]]:
    """(seconds, the report's files) of one full flow run from `checkout`, fresh cache and output
    (and with `fresh_home` PREFECT_HOME) under `scratch`. The file list shows which code ran (it
    differs whenever the report does)."""
    cmd = [sys.executable, str(checkout / "flows" / "compare.py"), "--data-dir", str(data_dir),
           "--cache-dir", str(scratch / "cache"), "--out", str(scratch / "out"), *extra]  # fmt: skip
    env = {**os.environ, "PREFECT_HOME": str(scratch / "prefect-home")} if fresh_home else None
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    report = Path(done.stdout.strip().splitlines()[-1].removeprefix("report: "))  # the CLI's last line
    return seconds, sorted(p.name for p in report.iterdir())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision to compare against, e.g. HEAD~3")
    ap.add_argument("--data-dir", type=Path, required=True, help="folder holding cifar-10-batches-py/")
    ap.add_argument("--rounds", type=int, default=1, help="base/this pairs, alternated")
    ap.add_argument("--fresh-prefect-home", action="store_true", help="an empty PREFECT_HOME for every run")
    ap.add_argument("extra", nargs="*", help="more flow arguments for both, after --")
    args = ap.parse_args()
    data_dir = args.data_dir.resolve()
    with tempfile.TemporaryDirectory(prefix="ab-end-to-end-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base), args.base], check=True)
        times: dict[str, list[float]] = {"base": [], "this": []}
        try:
            for i in range(args.rounds):
                for name, checkout in (("base", base), ("this", REPO)):
                    scratch = Path(tmp) / f"{name}-{i}"
                    scratch.mkdir()
                    seconds, files = timed_run(checkout, data_dir, scratch, args.extra, args.fresh_prefect_home)
                    times[name].append(seconds)
                    print(f"round {i + 1}: {name:<4} {seconds:7.1f} s  (report: {', '.join(files)})", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)
    base_s, this_s = (sum(times[k]) / len(times[k]) for k in ("base", "this"))
    home = " (an empty PREFECT_HOME each run)" if args.fresh_prefect_home else ""
    print(
        f"base {args.base}: {base_s:.1f} s, this checkout: {this_s:.1f} s, ratio this/base {this_s / base_s:.3f}{home}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
