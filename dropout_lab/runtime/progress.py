"""Progress as a user sees it: the one fixed-format line per epoch, what stood before the first step, and
terminal progress bars (one per model; silent unless stderr is a terminal)."""

from __future__ import annotations

import logging
import sys
import threading
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def format_epoch(label: str, epochs: int, r: dict) -> str:
    """The one fixed-format progress line per epoch: the running (train-mode) numbers, then the
    eval-mode train and test numbers, and their difference, the generalization gap (with --val-images,
    the held-out accuracy after the test numbers)."""
    val = f"  val acc {r['val_acc']:6.2%}" if r.get("val_acc") is not None else ""
    return (
        f"{label:<24} epoch {r['epoch']:>2}/{epochs}  running loss {r['train_running_loss']:.4f} "
        f"acc {r['train_running_acc']:6.2%}  train loss {r['train_eval_loss']:.4f} acc {r['train_eval_acc']:6.2%}"
        f"  test loss {r['test_loss']:.4f} acc {r['test_acc']:6.2%}{val}"
        f"  gap {100 * (r['train_eval_acc'] - r['test_acc']):5.2f}  {r['epoch_seconds']:6.1f}s"
    )


def format_startup(startup: dict) -> str:
    """What stood before the first step in the training process, e.g. `data 1.5 s, CUDA context 0.4 s`."""
    parts = [f"data {startup['data']:.1f} s"] if "data" in startup else []
    if "cuda" in startup:
        parts.append(f"CUDA context {startup['cuda']:.1f} s")
    return ", ".join(parts) or "?"


class EpochBars:
    """`update(model, seed, epoch, epochs, text)` moves the bar of one model, which counts the epochs of
    all its seeds (20 seeds are one bar, not 20: `--seeds auto` adds seeds in waves, and the bar's total
    grows with them) and says how many of its seeds are done; a no-op until `shown()`."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._bars: dict[str, int] = {}
        self._seeds: dict[str, dict[int, tuple[float, int]]] = {}  # model → seed → (epochs done, epochs)
        self._lock = threading.Lock()  # training tasks report from several threads

    @contextmanager
    def shown(self, enabled: bool | None = None):
        """Display bars while inside the block; by default only when stderr is a TTY."""
        if not (sys.stderr.isatty() if enabled is None else enabled):
            yield
            return
        self._progress = Progress(
            TextColumn("{task.description:<22}", markup=False), BarColumn(), MofNCompleteColumn(),
            TextColumn("epochs"), TextColumn("{task.fields[seeds]}"), TimeElapsedColumn(),
            TextColumn("{task.fields[note]}", markup=False),
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
                self._progress, self._bars, self._seeds = None, {}, {}

    def __reduce__(self):
        # Deployments pickle the flow by value (with the globals it uses): unpickle as this
        # process's own singleton instead of trying to pickle a lock and a live display.
        return (_the_bars, ())

    def update(self, model: str, seed: int, epoch: float, epochs: int, note: str = "") -> None:
        with self._lock:
            if self._progress is None:
                return
            seeds = self._seeds.setdefault(model, {})
            seeds[seed] = (epoch, epochs)
            total = sum(n for _, n in seeds.values())
            done = sum(min(e, n) for e, n in seeds.values())
            finished = sum(e >= n for e, n in seeds.values())
            counts = f"{finished}/{len(seeds)} seeds" if len(seeds) > 1 else f"seed {seed}"
            if model not in self._bars:
                self._bars[model] = self._progress.add_task(f"train[{model}]", total=total, note="", seeds="")
            note = f"seed {seed}: {note}" if note and len(seeds) > 1 else note
            self._progress.update(self._bars[model], total=total, completed=done, seeds=counts, note=note)


def _rich_log_handlers() -> list[logging.Handler]:
    """Handlers (Prefect's console handler among them) that print through a rich Console."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    found = {id(h): h for lg in loggers for h in getattr(lg, "handlers", []) if hasattr(h, "console")}
    return list(found.values())


bars = EpochBars()


def _the_bars() -> EpochBars:
    return bars
