"""Training processes started ahead of their jobs (tasks/launcher.py `prestart`)."""

import pytest

from dropout_lab.config import TrainConfig
from dropout_lab.core.data import describe_folder
from dropout_lab.runtime import launcher
from dropout_lab.runtime.launcher import discard_spares, prestart, run_worker, worker_job


@pytest.fixture
def job(tiny_cifar, tmp_path):
    cfg = TrainConfig(epochs=1, limit_train=64, limit_test=32, train_eval_images=32)
    data = describe_folder(tiny_cifar / "cifar-10-batches-py", warn=False)
    return worker_job([cfg], data, [tmp_path / "ckpt"], 1, "auto")


@pytest.fixture(autouse=True)
def no_spares_left():
    yield
    discard_spares()


def started(events):
    return next(e for e in events if e["event"] == "start")


def test_a_process_started_ahead_takes_the_job_and_says_how_long_it_waited(job):
    prestart([(1, "cpu")])
    (spare,) = launcher._spares[(1, "cpu")]
    events = list(run_worker(job))
    assert started(events)["pid"] == spare.pid and events[-1]["event"] == "done"
    startup = started(events)["startup"]
    assert set(startup) == {"torch_import", "waited_for_job", "ahead", "data"} and startup["ahead"]  # CPU: no CUDA
    assert launcher._spares[(1, "cpu")] == [] and spare.returncode == 0 and spare not in launcher._live


def test_a_job_for_other_threads_or_a_dead_spare_gets_a_new_process(job):
    prestart([(2, "cpu"), (1, "cpu")])
    other = launcher._spares[(2, "cpu")][0]
    dead = launcher._spares[(1, "cpu")][0]
    dead.kill()
    dead.wait()
    events = list(run_worker(job))
    assert started(events)["pid"] not in (other.pid, dead.pid) and events[-1]["event"] == "done"
    assert not started(events)["startup"]["ahead"]  # started for this job
    assert launcher._spares[(2, "cpu")] == [other] and other.poll() is None


def test_unused_spares_are_ended(job):
    prestart([(1, "cpu"), (1, "cpu")])
    procs = list(launcher._spares[(1, "cpu")])
    discard_spares()
    assert all(p.returncode is not None for p in procs) and launcher._spares == {}
    assert not set(procs) & launcher._live
