"""The honest generalization gap: train accuracy measured like test accuracy (eval mode, final weights)."""

import dataclasses

import pytest
import torch

from dropout_lab.analysis.tables import summary_rows
from dropout_lab.config import TrainConfig
from dropout_lab.core.data import load_split, write_cifar_folder
from dropout_lab.core.evaluate import evaluate, train_eval_indices, train_eval_split
from dropout_lab.core.stacked import Single
from dropout_lab.core.train import Unit, build, fit
from dropout_lab.results import TrainResult


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    """Enough images of the generated patterns for the model to learn them in a few epochs."""
    root = write_cifar_folder(tmp_path_factory.mktemp("learnable"), n_train=800, n_test=10, seed=1)
    return (*load_split(root, train=True), *load_split(root, train=False))


def test_subset_is_fixed_sorted_and_class_balanced():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([900, 500, 300, 1000, 40, 700, 600, 800, 650, 510])])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(5))]
    idx = train_eval_indices(labels, 2000)
    assert torch.equal(idx, train_eval_indices(labels, 2000))  # fixed: the same images every call
    assert len(idx) == 2000 == len(set(idx.tolist())) and torch.equal(idx, idx.sort().values)
    counts = torch.bincount(labels[idx], minlength=10).tolist()
    assert counts[4] == 40  # a class with fewer images than its share gives all it has ...
    others = [c for i, c in enumerate(counts) if i != 4]
    assert max(others) - min(others) <= 1  # ... and the rest share the remainder evenly
    assert not torch.equal(idx, train_eval_indices(labels, 2000, seed=1))
    assert train_eval_indices(labels, 0) is None and train_eval_indices(labels, len(labels)) is None


def test_subset_split_keeps_image_label_pairs():
    images = torch.arange(50).view(50, 1, 1, 1).expand(50, 32, 32, 3).to(torch.uint8)
    labels = torch.arange(50) % 10
    x, y = train_eval_split(images, labels, 20)
    assert len(y) == 20 and torch.equal(x[:, 0, 0, 0].long() % 10, y)
    assert torch.bincount(y, minlength=10).tolist() == [2] * 10


def fixed_weight_accuracies(model, splits) -> tuple[float, float]:
    """(running accuracy in train mode, eval-mode accuracy) over the same training images with the
    weights held fixed (lr 0): the only difference left is dropout being on or off."""
    train_x, train_y = splits[0], splits[1]
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, correct = Unit([model], [frozen], [], TrainConfig()).train_pass(
        torch.arange(len(train_y))[None], train_x, train_y
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # really fixed
    return float(correct) / len(train_y), evaluate(Single(model), train_x, train_y, batch_size=64)[0]["acc"]


def trained(dropout: float, splits):
    cfg = TrainConfig(dropout=dropout, seed=0)
    model, opt = build(cfg)
    unit = Unit([model], [opt], [], cfg)
    for epoch in range(4):
        order = torch.randperm(len(splits[1]), generator=torch.Generator().manual_seed(epoch))
        unit.train_pass(order[None], splits[0], splits[1])
    return model


def test_dropout_lowers_the_running_number_on_fixed_weights(learnable):
    running, eval_mode = fixed_weight_accuracies(trained(0.5, learnable), learnable)
    assert eval_mode > 0.6  # learnt the patterns, so dropout noise has something to spoil
    assert running < eval_mode - 0.02
    # Without dropout, train mode and eval mode are the same function: the two numbers agree.
    running, eval_mode = fixed_weight_accuracies(trained(0.0, learnable), learnable)
    assert running == pytest.approx(eval_mode, abs=1 / len(learnable[1]))


def test_fit_records_the_eval_mode_pass_on_the_configured_subset(splits, tmp_path):
    cfg = TrainConfig(dropout=0.5, epochs=2, seed=1, train_eval_images=100)
    records = [record for _, record in fit([cfg], *splits, [tmp_path / "ckpt"])]
    # the record's train_eval numbers are exactly `evaluate` of the epoch's final weights on the subset
    from dropout_lab.core.checkpoint import epoch_checkpoints, load_checkpoint
    from dropout_lab.core.model import Net

    net = Net(0.5)
    net.load_state_dict(load_checkpoint(epoch_checkpoints(tmp_path / "ckpt")[0][1])["model"])
    expected = evaluate(Single(net), *train_eval_split(splits[0], splits[1], 100), batch_size=cfg.eval_batch_size)[0]
    assert records[-1]["train_eval_acc"] == expected["acc"]
    assert records[-1]["train_eval_loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert records[-1]["train_eval_acc"] * 100 == round(records[-1]["train_eval_acc"] * 100)  # k / 100 images


def test_summary_gap_uses_eval_mode_train_accuracy_and_final_is_the_last_epoch():
    history = [
        {"epoch": e, "train_running_loss": 1.0, "train_running_acc": run, "train_eval_loss": 0.8,
         "train_eval_acc": ev, "test_loss": 0.9, "test_acc": test, "epoch_seconds": 1.0,
         "test_confusion": [[0] * 10 for _ in range(10)], "n_train": 1000, "n_train_eval": 1000, "n_test": 200}
        for e, (run, ev, test) in enumerate([(0.50, 0.60, 0.58), (0.55, 0.70, 0.66), (0.57, 0.75, 0.64)], start=1)
    ]  # fmt: skip
    result = TrainResult(TrainConfig(dropout=0.25, epochs=3), "/x.pt", "0" * 64, history, 1, "2026-01-01T00:00:00",
                         "2026-01-01T00:01:00", 60.0, 1)  # fmt: skip
    from dropout_lab.core.data import DataInfo

    (row,) = summary_rows([result], DataInfo("/d", "cifar10", True, "CIFAR-10", "f"))
    assert row["generalization_gap"] == pytest.approx(0.75 - 0.64)  # not running 0.57 - 0.64 < 0
    assert row["final_train_running_acc"] == 0.57 and row["final_train_eval_acc"] == 0.75
    assert (row["final_test_acc"], row["best_test_acc"], row["best_epoch"]) == (0.64, 0.66, 2)
    assert row["best_test_acc"] >= row["final_test_acc"]


def test_changing_the_subset_size_is_another_experiment():
    a, b = TrainConfig(), dataclasses.replace(TrainConfig(), train_eval_images=0)
    assert a.to_dict() != b.to_dict()  # part of the cache key and of the checkpoint's configuration
