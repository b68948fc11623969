"""A command's refusal as a user sees it, one check for every command's tests: the exit status, one line on
stderr (`error: ...`), no traceback, no secret, and an answer within seconds (never a hang)."""

from __future__ import annotations

import time

SECRET = "s3cret"  # the password the tests put in URLs: never printed


def one_line_refusal(capture, code: int, run, *argv, within: float = 15.0) -> str:
    """Run a command's `main(argv)`; it must end with `code` (a return or argparse's SystemExit) and print
    one line only, without SECRET, within `within` seconds. `capture`: pytest's capsys or capfd. Returns
    that line."""
    started = time.monotonic()
    try:
        status = run(list(argv))
    except SystemExit as e:  # argparse's refusal, as a process would end
        status = e.code
    assert status == code
    out, err = capture.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert SECRET not in out + err and time.monotonic() - started < within
    return err
