"""Terminal progress bars, one per model, for local runs. Silent unless stderr is a terminal."""

from __future__ import annotations

import logging
import sys
import threading
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class EpochBars:
    """`update(label, epoch, epochs, text)` moves the bar of one model; a no-op until `shown()`."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._bars: dict[str, int] = {}
        self._lock = threading.Lock()  # training tasks report from several threads

    @contextmanager
    def shown(self, enabled: bool | None = None):
        """Display bars while inside the block; by default only when stderr is a TTY."""
        if not (sys.stderr.isatty() if enabled is None else enabled):
            yield
            return
        self._progress = Progress(
            TextColumn("{task.description:<22}", markup=False), BarColumn(), MofNCompleteColumn(),
            TextColumn("epochs"), TimeElapsedColumn(), TextColumn("{task.fields[note]}", markup=False),
            console=Console(stderr=True, markup=False),  # log text like "train[baseline]" is not markup
        )  # fmt: skip
        # Log lines must print through the bars' console, above the bars, or the two interleave.
        swapped = [(h, h.console) for h in _rich_log_handlers()]
        with self._progress:
            for handler, _ in swapped:
                handler.console = self._progress.console
            try:
                yield
            finally:
                for handler, console in swapped:
                    handler.console = console
                self._progress, self._bars = None, {}

    def __reduce__(self):
        # Deployments pickle the flow by value (with the globals it uses): unpickle as this
        # process's own singleton instead of trying to pickle a lock and a live display.
        return (_the_bars, ())

    def update(self, label: str, epoch: int, epochs: int, note: str = "") -> None:
        with self._lock:
            if self._progress is None:
                return
            if label not in self._bars:
                self._bars[label] = self._progress.add_task(f"train[{label}]", total=epochs, note="")
            self._progress.update(self._bars[label], completed=epoch, note=note)


def _rich_log_handlers() -> list[logging.Handler]:
    """Handlers (Prefect's console handler among them) that print through a rich Console."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    found = {id(h): h for lg in loggers for h in getattr(lg, "handlers", []) if hasattr(h, "console")}
    return list(found.values())


bars = EpochBars()


def _the_bars() -> EpochBars:
    return bars
