"""--val-images: training images held out to choose an epoch without the test set."""

import pyarrow.parquet as pq
import pytest
import torch

from dropout_lab.config import TrainConfig, check_train_config
from dropout_lab.core.evaluate import holdout_split, train_eval_indices


def test_the_held_out_images_are_fixed_class_balanced_and_never_trained_on():
    labels = torch.arange(1000) % 10
    images = torch.arange(1000)[:, None]  # each image knows its index
    train_x, train_y, val_x, val_y = holdout_split(images, labels, 100)
    assert len(val_y) == 100 and len(train_y) == 900
    assert torch.bincount(val_y).tolist() == [10] * 10  # balanced
    assert set(val_x[:, 0].tolist()).isdisjoint(train_x[:, 0].tolist())  # never trained on
    assert torch.equal(val_x, holdout_split(images, labels, 100)[2])  # the same images every run and seed
    assert set(val_x[:, 0].tolist()) != set(train_eval_indices(labels, 100).tolist())  # not the gap's subset
    assert holdout_split(images, labels, 0)[2] is None


def test_held_out_images_must_leave_some_to_train_on():
    with pytest.raises(ValueError, match="leaves nothing to train on"):
        check_train_config(TrainConfig(limit_train=500, val_images=500))
    check_train_config(TrainConfig(limit_train=500, val_images=100))


def test_a_run_with_held_out_images_reports_the_val_selected_epoch(prefect_harness, tmp_path):
    from flows.compare import compare

    folder = compare(dataset="fake", epochs=3, limit_train=600, limit_test=200, val_images=100, seeds=[0],
                     data_dir=str(tmp_path / "d"), out=str(tmp_path / "o"), cache_dir=str(tmp_path / "c"))  # fmt: skip
    history = pq.read_table(f"{folder}/per_epoch.parquet").to_pylist()
    assert all(r["val_acc"] is not None and r["n_train"] == 500 for r in history)
    for row in pq.read_table(f"{folder}/summary.parquet").to_pylist():
        mine = [r for r in history if r["model"] == row["model"]]
        chosen = max(mine, key=lambda r: r["val_acc"])  # on held-out images, not on the test set
        assert (row["val_best_epoch"], row["val_selected_test_acc"]) == (chosen["epoch"], chosen["test_acc"])
        assert row["n_val"] == 100
    md = open(f"{folder}/summary.md").read()
    assert "500 training images (100 more held out to choose an epoch)" in md
    assert "| val-selected (epoch) |" in md and "| best test (epoch) |" in md and "(val-selected)" in md
