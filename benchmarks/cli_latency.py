"""How long the command line takes to answer when it does no work: `--help`, and refused values.

    python benchmarks/cli_latency.py [--base REV] [--rounds 5]

Runs `python flows/compare.py --help` and a few refused invocations (`--epochs two`, `--dropout 1.5`,
`--lr inf`), and `dropout-lab history --help` and a refused store URL, from this checkout and, with
--base, from REV checked out into a temporary git worktree,
alternately, `--rounds` times each, with this checkout's Python and an empty PREFECT_HOME per run.
Prints the median wall of each, side by side, and the ratio. Never run it next to another job.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMPARE, HISTORY = ["flows/compare.py"], ["-m", "dropout_lab.cli", "history"]  # python's arguments
CASES = {
    "compare.py --help": [*COMPARE, "--help"],
    "compare.py --epochs two": [*COMPARE, "--epochs", "two"],
    "compare.py --dropout 1.5": [*COMPARE, "--dropout", "1.5"],
    "compare.py --lr inf": [*COMPARE, "--lr", "inf"],
    "dropout-lab history --help": [*HISTORY, "--help"],
    "dropout-lab history --history ://x": [*HISTORY, "--history", "://x"],
}


def timed(checkout: Path, args: list[str], home: Path) -> tuple[float, int]:
    """(seconds, exit status) of one command line from `checkout`."""
    env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONPATH": str(checkout)}  # `-m` imports that checkout
    env.pop("PREFECT_API_URL", None)
    script = [str(checkout / args[0])] if args[0].endswith(".py") else args[:1]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *script, *args[1:]], cwd=home.parent, env=env,
                          capture_output=True)  # fmt: skip
    return time.perf_counter() - start, done.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="git revision to compare against, e.g. 1f06c02")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cli-latency-") as tmp:
        checkouts = {"this": REPO}
        if args.base:
            checkouts["base"] = Path(tmp) / "base"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(checkouts["base"]),
                            args.base], check=True)  # fmt: skip
        seconds: dict[tuple[str, str], list[float]] = {}
        codes: dict[tuple[str, str], set[int]] = {}
        runs = 0
        try:
            for _ in range(args.rounds):
                for case, case_args in CASES.items():
                    for name, checkout in checkouts.items():
                        runs += 1
                        home = Path(tmp) / f"run-{runs}" / "prefect-home"
                        home.parent.mkdir()
                        s, code = timed(checkout, case_args, home)
                        seconds.setdefault((case, name), []).append(s)
                        codes.setdefault((case, name), set()).add(code)
        finally:
            if args.base:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkouts["base"])],
                               check=False)  # fmt: skip
    head = (
        f"| command line | this checkout (exit) | {'base ' + args.base + ' (exit) | this/base |' if args.base else ''}"
    )
    print(head + "\n|---|---|" + ("---|---|" if args.base else ""))
    for case in CASES:
        this = statistics.median(seconds[case, "this"])
        row = f"| `{case}` | {this:.2f} s ({'/'.join(map(str, sorted(codes[case, 'this'])))}) |"
        if args.base:
            base = statistics.median(seconds[case, "base"])
            row += f" {base:.2f} s ({'/'.join(map(str, sorted(codes[case, 'base'])))}) | {this / base:.2f} |"
        print(row)
    print(f"median of {args.rounds} runs each, alternated; an empty PREFECT_HOME per run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
