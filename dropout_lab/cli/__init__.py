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
        print(f"usage: dropout-lab COMMAND [options]\n\ncommands:\n{usage}", file=sys.stderr if argv else sys.stdout)
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    from dropout_lab.cli import history

    try:
        return history.main(argv[1:])
    except BrokenPipeError:  # `| head` stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
