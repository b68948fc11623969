"""The `dropout-lab` command (installed by `pip install -e .`): `dropout-lab history ...`.

The comparison itself runs as `python flows/compare.py` (the Prefect flow's own command line).
"""

from __future__ import annotations

import os
import sys

COMMANDS = {"history": "the run history as a table and a figure of the trend"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        usage = "\n".join(f"  {name:<10}{what}" for name, what in COMMANDS.items())
        if argv[:1] in ([], ["-h"], ["--help"]):
            print(f"usage: dropout-lab COMMAND [options]\n\ncommands:\n{usage}")
            return 0
        print(f"error: unknown command {argv[0][:80]!r}: use {' or '.join(COMMANDS)} (dropout-lab --help)",
              file=sys.stderr)  # fmt: skip
        return 2
    from dropout_lab.cli import history

    try:
        return history.main(argv[1:])
    except BrokenPipeError:  # `| head` stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
