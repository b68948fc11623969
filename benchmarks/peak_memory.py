"""Peak memory of a command and every process it starts (Linux): RSS and PSS, summed over the tree.

    python benchmarks/peak_memory.py [--interval 0.5] -- python flows/compare.py --data-dir DIR

Samples /proc/<pid>/smaps_rollup of the command and all its descendants (children of every
thread: the flow starts its training processes from task threads) every `interval` seconds.
RSS counts shared library pages once per process (torch's are large), PSS splits them between the
processes that share them. Prints the peaks, the largest process of each kind, and the command's
exit status; exits with it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue  # it ended meanwhile
    return found


def usage_kb(pid: int) -> tuple[int, int, str] | None:
    """(RSS, PSS, command line) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f.read().splitlines()[1:])
        with open(f"/proc/{pid}/cmdline") as f:
            cmdline = " ".join(f.read().replace("\0", " ").split())
    except (OSError, ValueError):
        return None
    return int(fields["Rss"].split()[0]), int(fields["Pss"].split()[0]), cmdline


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command to run (after --)")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to measure after --")
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    peak_rss = peak_pss = 0
    largest: dict[str, int] = {}  # command line (shortened) → its largest RSS
    while proc.poll() is None:
        samples = [u for u in map(usage_kb, descendants(proc.pid)) if u]
        peak_rss = max(peak_rss, sum(rss for rss, _, _ in samples))
        peak_pss = max(peak_pss, sum(pss for _, pss, _ in samples))
        for rss, _, cmdline in samples:
            largest[cmdline[:100]] = max(largest.get(cmdline[:100], 0), rss)
        time.sleep(args.interval)
    wall = time.perf_counter() - start
    print(f"\npeak memory of the process tree: RSS {peak_rss / 1e6:.2f} GB summed, PSS {peak_pss / 1e6:.2f} GB "
          f"(sampled every {args.interval} s); wall {wall:.0f} s; exit status {proc.returncode}")  # fmt: skip
    for cmdline, rss in sorted(largest.items(), key=lambda kv: -kv[1])[:6]:
        print(f"  {rss / 1e6:5.2f} GB  {cmdline}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
