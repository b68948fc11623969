"""What the command line's terminal shows: log lines without tracebacks (they go to Prefect's run log,
which the UI shows; `--verbose` shows them here too), and other libraries' chatter at WARNING."""

from __future__ import annotations

import logging
import os
import sys

from dropout_lab.runtime.processes import stopping

VERBOSE_ENV = "DROPOUT_LAB_VERBOSE"  # --verbose, for the run's other processes (Dask workers) too
CHATTY = ("distributed", "bokeh", "tornado")  # a Dask cluster's INFO lines: dozens per run
DETAILS = "details"  # a record with `extra={DETAILS: True}` belongs in the run's log, not on the terminal


class WithoutTracebacks(logging.Formatter):
    """Formats a record as `inner` does, leaving out its traceback (the record keeps it for other handlers)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _no_details(record: logging.LogRecord) -> bool:
    """Detail records stay off the terminal, and so do the task runs' end states once the run is being
    stopped: each training's "Failed: stopped by a signal / not started" echoes the stop, which the
    command's last line states once (the run's log keeps them all)."""
    if getattr(record, DETAILS, False):
        return False
    return not (stopping() and record.name == "prefect.task_runs" and record.levelno >= logging.ERROR)


def _terminal_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    found = {id(h): h for lg in loggers for h in getattr(lg, "handlers", [])}
    return [h for h in found.values() if getattr(h, "stream", None) in (sys.stderr, sys.stdout)]


def quiet(verbose: bool | None = None) -> None:
    """Unless `verbose` (None: as $DROPOUT_LAB_VERBOSE says): no tracebacks or detail records on this
    process's terminal handlers, other libraries at WARNING. The command line calls it, and so does every
    task a Dask worker process runs (its own handlers write to the same terminal). Idempotent."""
    if verbose is None:
        verbose = bool(os.environ.get(VERBOSE_ENV))
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # Dask's worker processes read it at start
    for handler in _terminal_handlers():
        if not isinstance(handler.formatter, WithoutTracebacks):
            handler.setFormatter(WithoutTracebacks(handler.formatter))
            handler.addFilter(_no_details)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
