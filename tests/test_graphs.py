"""CUDA-graphed training (dropout_lab/core/graphs.py, dropout_lab/core/train.py `_Unit`).

On CPU the graphed path runs with `dropout_lab.core.graphs.capture` emulated (a "replay" calls the captured
function): everything around the capture — static index buffers, the on-device batch position,
warm-up steps and their undoing, the eager last batch, stacks, fallback, checkpoints — is
the code a GPU runs, and must train exactly what the eager path trains. The real capture is checked
by the CUDA-only tests at the end (skipped without a GPU; `benchmarks/gpu_check.sh` runs them).
"""

import dataclasses
import logging

import pytest
import torch

from dropout_lab.config import TrainConfig
from dropout_lab.core import graphs
from dropout_lab.core.checkpoint import epoch_checkpoints, load_checkpoint
from dropout_lab.core.train import FAIL_AT_EPOCH_ENV, InjectedFault, fit
from dropout_lab.runtime import devices
from dropout_lab.runtime.devices import graphs_wanted
from dropout_lab.runtime.training import graphs_for

# 320 training images at batch 24: 13 full steps and a last batch of 8 (the eager remainder).
BASE = TrainConfig(epochs=2, batch_size=24)
LAYOUTS = {
    "alone": [(0.25, 0)],
    "stacked": [(0.25, 0), (0.0, 0), (0.5, 1)],
}


@pytest.fixture
def emulated(monkeypatch):
    """The graphed path on CPU; returns the list of captured functions."""
    captured = []

    def capture(fn, generators=(), pool=None):
        captured.append(fn)
        return fn, None

    monkeypatch.setattr(graphs, "capture", capture)
    monkeypatch.setattr(devices, "graphs_wanted", lambda mode, *_: (mode != "off", None))
    return captured


def variants(pairs, **changes):
    return [dataclasses.replace(BASE, dropout=p, seed=s, **changes) for p, s in pairs]


def train(cfgs, splits, folder, cuda_graphs, attempt=1):
    folders = [folder / f"v{i}" for i in range(len(cfgs))]
    events = list(fit(cfgs, *splits, folders, attempt, graphed=graphs_for(cfgs, cuda_graphs)))  # as training does
    return events, [load_checkpoint(epoch_checkpoints(f)[0][1]) for f in folders]


def assert_same_training(a, b):
    """Bit-identical: weights, Adam state, every RNG stream, per-epoch numbers."""
    for sa, sb in zip(a, b, strict=True):
        assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
        for i, state in sa["optimizer"]["state"].items():
            assert all(torch.equal(v, sb["optimizer"]["state"][i][k]) for k, v in state.items())
        for key in ("rng_cpu", "rng_order"):
            assert torch.equal(sa[key], sb[key]), key
        drop = ("epoch_seconds", "cuda_graphs")  # the record says how it trained: the numbers are the same
        assert [{k: v for k, v in r.items() if k not in drop} for r in sa["history"]] == [
            {k: v for k, v in r.items() if k not in drop} for r in sb["history"]
        ]


@pytest.mark.parametrize("layout", LAYOUTS, ids=list(LAYOUTS))
def test_the_graphed_path_trains_exactly_what_the_eager_path_trains(splits, tmp_path, emulated, layout):
    cfgs = variants(LAYOUTS[layout])
    eager_events, eager = train(cfgs, splits, tmp_path / "eager", "off")
    assert emulated == []  # off: nothing captured
    graphed_events, graphed = train(cfgs, splits, tmp_path / "graphed", "on")
    assert len(emulated) == 3  # its step, the train-eval and the test pass, once
    assert [(i, r["epoch"]) for i, r in graphed_events] == [(i, r["epoch"]) for i, r in eager_events]
    assert_same_training(eager, graphed)


def test_a_failed_capture_logs_one_line_and_trains_eagerly_to_the_same_result(splits, tmp_path, monkeypatch, caplog):
    cfgs = variants(LAYOUTS["stacked"])
    _, eager = train(cfgs, splits, tmp_path / "eager", "off")

    def capture(fn, generators=(), pool=None):
        fn()  # as if the capture had got partway: the warm-up and a step's side effects are undone
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(graphs, "capture", capture)
    monkeypatch.setattr(devices, "graphs_wanted", lambda mode, *_: (True, None))
    with caplog.at_level(logging.WARNING, logger="dropout_lab.core.train"):
        _, fallback = train(cfgs, splits, tmp_path / "fallback", "on")
    lines = [r.getMessage() for r in caplog.records if "capture failed" in r.getMessage()]
    assert lines == ["CUDA graph capture failed, training eagerly: CUDA error: operation not permitted when "
                     "stream is capturing"]  # fmt: skip
    assert_same_training(eager, fallback)


def test_a_resumed_graphed_run_equals_an_uninterrupted_one(splits, tmp_path, emulated, monkeypatch):
    cfgs = variants([(0.25, 0), (0.0, 1)], epochs=3)
    _, clean = train(cfgs, splits, tmp_path / "clean", "on")
    monkeypatch.setenv(FAIL_AT_EPOCH_ENV, "2")
    with pytest.raises(InjectedFault):
        train(cfgs, splits, tmp_path / "faulty", "on")
    events, resumed = train(cfgs, splits, tmp_path / "faulty", "on", attempt=2)
    assert [(r["epoch"], r["resumed_from"]) for _, r in events] == [(2, 1), (2, 1), (3, 1), (3, 1)]
    assert_same_training(clean, resumed)


def test_cuda_graphs_on_without_cuda_says_so_once_and_trains(splits, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="dropout_lab.runtime.training"):
        events, _ = train(variants([(0.25, 0)], epochs=1), splits, tmp_path, "on")
    assert len(events) == 1
    assert [r.getMessage() for r in caplog.records if "cuda-graphs" in r.getMessage()] == [
        "--cuda-graphs on: CUDA graphs need a CUDA device, not cpu; training eagerly"
    ]


@pytest.mark.parametrize(
    ("mode", "device", "precision", "compile", "expected"),
    [
        ("auto", "cpu", "fp32", False, (False, None)),
        ("auto", "cuda:0", "fp32", False, (True, None)),
        ("auto", "cuda:0", "bf16", False, (True, None)),
        ("on", "cuda:1", "fp32", False, (True, None)),
        ("off", "cuda:0", "fp32", False, (False, None)),
        ("on", "cpu", "fp32", False, (False, "CUDA graphs need a CUDA device, not cpu")),
        (
            "auto",
            "cuda:0",
            "fp16",
            False,
            (False, "fp16's loss scaling syncs with the host every step; bf16 or fp32 capture"),
        ),  # fmt: skip
        (
            "auto",
            "cuda:0",
            "fp32",
            True,
            (False, "--compile trains through torch.compile, not the trainer's own CUDA graphs"),
        ),  # fmt: skip
    ],
)
def test_when_graphs_are_used(mode, device, precision, compile, expected):
    assert graphs_wanted(mode, device, precision, compile) == expected


def test_an_unknown_graph_mode_is_refused():
    with pytest.raises(ValueError, match="--cuda-graphs must be one of auto, on, off"):
        graphs_wanted("sometimes", "cpu", "fp32", False)


# --- on a CUDA GPU only -------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def exact_cuda():
    """Full float32 and fixed cuDNN algorithms, so eager and graphed kernels can be compared."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)  # fmt: skip
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
     torch.backends.cudnn.benchmark) = saved  # fmt: skip


@cuda
@pytest.mark.parametrize("layout", LAYOUTS, ids=list(LAYOUTS))
def test_cuda_graphed_and_eager_agree(splits, tmp_path, exact_cuda, layout, caplog):
    cfgs = variants(LAYOUTS[layout], device="cuda:0", epochs=1)
    _, eager = train(cfgs, splits, tmp_path / "eager", "off")
    with caplog.at_level(logging.WARNING, logger="dropout_lab.core.train"):
        _, graphed = train(cfgs, splits, tmp_path / "graphed", "on")
    assert "capture failed" not in caplog.text  # really graphed
    for a, b in zip(eager, graphed, strict=True):
        for k, w in a["model"].items():
            torch.testing.assert_close(b["model"][k], w, rtol=1e-5, atol=1e-6)
        assert torch.equal(a["rng_cuda"], b["rng_cuda"])  # the dropout streams advanced alike
        assert a["history"][-1]["test_acc"] == pytest.approx(b["history"][-1]["test_acc"], abs=1 / 160)


@cuda
def test_cuda_resumed_graphed_run_is_exact(splits, tmp_path, exact_cuda, monkeypatch):
    cfgs = variants([(0.25, 0), (0.0, 1)], device="cuda:0", epochs=3)
    _, clean = train(cfgs, splits, tmp_path / "clean", "on")
    monkeypatch.setenv(FAIL_AT_EPOCH_ENV, "2")
    with pytest.raises(InjectedFault):
        train(cfgs, splits, tmp_path / "faulty", "on")
    _, resumed = train(cfgs, splits, tmp_path / "faulty", "on", attempt=2)
    for a, b in zip(clean, resumed, strict=True):
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        assert torch.equal(a["rng_cuda"], b["rng_cuda"])


@cuda
def test_cuda_capture_failure_falls_back_to_eager(splits, tmp_path, monkeypatch, caplog):
    def refuse(*_, **__):
        raise RuntimeError("capture refused by the test")

    monkeypatch.setattr(torch.cuda, "graph", refuse)
    cfgs = variants([(0.25, 0), (0.0, 0)], device="cuda:0", epochs=1)
    with caplog.at_level(logging.WARNING, logger="dropout_lab.core.train"):
        events, _ = train(cfgs, splits, tmp_path, "on")
    assert len(events) == 2 and "capture failed, training eagerly: capture refused by the test" in caplog.text
