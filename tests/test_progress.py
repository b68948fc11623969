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
        bars.update("baseline", 1, 8, "test acc 50%")
        assert bars._progress is None
    assert capsys.readouterr().err == ""


def test_one_bar_per_model_and_log_handlers_print_through_it():
    bars, handler = EpochBars(), FakeRichHandler()
    logging.getLogger("prefect.test-progress").addHandler(handler)
    try:
        with bars.shown(enabled=True):
            assert handler.console is bars._progress.console
            bars.update("baseline", 1, 8)
            bars.update("dropout=0.25", 2, 8)
            bars.update("baseline", 3, 8)
            tasks = {t.description: t.completed for t in bars._progress.tasks}
            assert tasks == {"train[baseline]": 3, "train[dropout=0.25]": 2}
        assert handler.console == "original console" and bars._progress is None
    finally:
        logging.getLogger("prefect.test-progress").removeHandler(handler)
