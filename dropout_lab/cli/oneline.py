"""One line from every command, whatever raised: the parsers of every command line (compare.py,
`dropout-lab history`, serve.py, notify.py, reclaim.py) answer a bad flag or value in one line instead of
a usage block, and `one_line` turns any exception into one redacted line (the traceback only with
--verbose). Exit status 2: refused before any work; 1: failed while working."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

from dropout_lab.redact import redact

REFUSED, FAILED = 2, 1


class Refused(Exception):
    """A command line refused before any work: one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: argument --epochs: invalid int value: 'two'` (exit 2), the
    usage only with --help."""

    def error(self, message: str):  # argparse calls this for every bad flag or value
        say(f"{message} ({self.prog} --help lists the options)")
        sys.exit(REFUSED)


def say(message: str) -> None:
    """The command's last line on stderr: `error: ...`, one line, credentials redacted."""
    first = (str(message).strip().splitlines() or [""])[0]
    print(f"error: {redact(first)}", file=sys.stderr, flush=True)


def one_line(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a command's main: whatever it raises ends as one line (Refused and ValueError: exit 2, the
    rest: exit 1); with --verbose in argv the traceback comes first, redacted."""

    def wrapped(argv: list[str] | None = None) -> int:
        args = sys.argv[1:] if argv is None else argv
        try:
            return main(argv)
        except SystemExit:
            raise
        except KeyboardInterrupt:
            say("interrupted")
            return 130
        except Exception as e:  # every error ends as one line
            if "--verbose" in args:
                print(redact("".join(traceback.format_exception(e))), file=sys.stderr, end="")
            text = str(e) if isinstance(e, Refused | ValueError) else f"{type(e).__name__}: {e}"
            say(text or type(e).__name__)
            return REFUSED if isinstance(e, Refused | ValueError) else FAILED

    wrapped.__wrapped__ = main
    wrapped.__doc__ = main.__doc__
    return wrapped
