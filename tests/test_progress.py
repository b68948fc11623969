import logging

from dropout_lab.runtime.progress import EpochBars


class FakeRichHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.console = "original console"

    def emit(self, record):
        pass


def test_bars_are_silent_when_not_a_terminal(capsys):
    bars = EpochBars()
    with bars.shown():  # pytest's stderr is not a TTY
        bars.update("baseline", 0, 1, 8, "test acc 50%")
        assert bars._progress is None
    assert capsys.readouterr().err == ""


def test_one_bar_per_model_counts_its_seeds_and_log_handlers_print_through_it():
    bars, handler = EpochBars(), FakeRichHandler()
    logging.getLogger("prefect.test-progress").addHandler(handler)
    try:
        with bars.shown(enabled=True):
            assert handler.console is bars._progress.console
            bars.update("baseline", 0, 1, 8)
            bars.update("dropout=0.25", 0, 2, 8)
            bars.update("baseline", 0, 3, 8)
            tasks = {t.description: (t.completed, t.total, t.fields["seeds"]) for t in bars._progress.tasks}
            assert tasks == {"train[baseline]": (3, 8, "seed 0"), "train[dropout=0.25]": (2, 8, "seed 0")}
            for seed in range(10):  # --seeds auto's waves: more seeds, the same bar, its total grows
                bars.update("baseline", seed, 8, 8)
            bars.update("baseline", 10, 2.5, 8, "test acc 50%")
            (baseline,) = [t for t in bars._progress.tasks if t.description == "train[baseline]"]
            assert (baseline.completed, baseline.total, baseline.fields["seeds"]) == (82.5, 88, "10/11 seeds")
            assert baseline.fields["note"] == "seed 10: test acc 50%" and len(bars._progress.tasks) == 2
        assert handler.console == "original console" and bars._progress is None
    finally:
        logging.getLogger("prefect.test-progress").removeHandler(handler)
