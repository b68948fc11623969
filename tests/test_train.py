"""The training loop: determinism, resume after a fault, corrupted checkpoints."""

import dataclasses

import pytest
import torch

from dropout_lab.config import TrainConfig, check_train_config
from dropout_lab.core.checkpoint import MAGIC, epoch_checkpoints, load_checkpoint
from dropout_lab.core.train import FAIL_AT_EPOCH_ENV, InjectedFault, fit

CFG = TrainConfig(dropout=0.25, epochs=3, batch_size=32, seed=3)


def run(cfg, splits, folder, attempt=1):
    return [record for _, record in fit([cfg], *splits, [folder], attempt=attempt)]


def final_weights(folder):
    return load_checkpoint(epoch_checkpoints(folder)[0][1])["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def strip_time(records):
    """The numbers of per-epoch records, without timing and the events' own fields (not in checkpoints)."""
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "resumed_from", "cuda_graphs")} for r in records]


def test_same_seed_same_numbers(splits, tmp_path):
    a, b = run(CFG, splits, tmp_path / "a"), run(CFG, splits, tmp_path / "b")
    assert strip_time(a) == strip_time(b)
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))
    c = run(dataclasses.replace(CFG, seed=4), splits, tmp_path / "c")
    assert strip_time(c) != strip_time(a)


def test_records_are_fractions_and_epochs_count_from_one(splits, tmp_path):
    records = run(CFG, splits, tmp_path / "a")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        for key in ("train_running_acc", "train_eval_acc", "test_acc"):
            assert 0 <= r[key] <= 1, key
        assert r["train_running_loss"] > 0 and r["train_eval_loss"] > 0
        assert sum(map(sum, r["test_confusion"])) == len(splits[3])  # every test image counted once
        assert sum(r["test_confusion"][i][i] for i in range(10)) / len(splits[3]) == r["test_acc"]
    assert records[-1]["train_running_loss"] < records[0]["train_running_loss"]
    # Each record holds exactly its declared columns (the per-epoch table and MLflow derive from them).
    from dropout_lab.analysis.tables import PER_EPOCH_SCHEMA
    from dropout_lab.core.records import EPOCH_COLUMNS

    declared = [name for name, *_ in EPOCH_COLUMNS]
    assert set(records[0]) - {"resumed_from"} == {*declared, "test_confusion"}
    assert all(name in PER_EPOCH_SCHEMA.names for name in declared)
    assert (records[0]["n_train"], records[0]["n_test"], records[0]["stacked_with"]) == (len(splits[1]), 160, 1)


@pytest.mark.parametrize("augment", ["none", "flip-crop"])
def test_fault_then_resume_equals_uninterrupted_run(splits, tmp_path, monkeypatch, augment):
    cfg = dataclasses.replace(CFG, augment=augment)  # a resumed run draws the same crops too
    reference = run(cfg, splits, tmp_path / "ref")
    monkeypatch.setenv(FAIL_AT_EPOCH_ENV, "2")
    folder, seen = tmp_path / "faulty", []
    with pytest.raises(InjectedFault):
        for _, record in fit([cfg], *splits, [folder], attempt=1):
            seen.append(record)
    assert [r["epoch"] for r in seen] == [1]
    resumed = run(cfg, splits, folder, attempt=2)  # the retry: fault only fires on attempt 1
    assert [r["epoch"] for r in resumed] == [2, 3] and resumed[0]["resumed_from"] == 1
    assert strip_time(seen + resumed) == strip_time(reference)
    assert_same_weights(final_weights(folder), final_weights(tmp_path / "ref"))
    history = load_checkpoint(epoch_checkpoints(folder)[0][1])["history"]
    assert strip_time(history) == strip_time(reference)


def test_completed_run_resumes_with_nothing_to_do(splits, tmp_path):
    run(CFG, splits, tmp_path / "a")
    assert run(CFG, splits, tmp_path / "a") == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic"])
def test_corrupted_latest_checkpoint_falls_back_to_previous(splits, tmp_path, damage):
    reference = run(CFG, splits, tmp_path / "ref")
    folder = tmp_path / "run"
    run(dataclasses.replace(CFG), splits, folder)
    latest = epoch_checkpoints(folder)[0][1]  # epoch 3; epoch 2 kept as fallback
    blob = latest.read_bytes()
    if damage == "truncate":
        latest.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        latest.write_bytes(blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:])
    else:
        latest.write_bytes(b"NOTMAGIC" + blob[len(MAGIC) :])
    redone = run(CFG, splits, folder)
    assert [r["epoch"] for r in redone] == [3] and redone[0]["resumed_from"] == 2
    assert strip_time(redone) == strip_time(reference[2:])
    assert (folder / "epoch-0003.pt.corrupt").exists()


def test_checkpoint_for_another_config_is_set_aside_and_training_restarts(splits, tmp_path):
    folder = tmp_path / "run"
    run(dataclasses.replace(CFG, epochs=1, dropout=0.0), splits, folder)  # same shapes, other config
    records = run(CFG, splits, folder)
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[0]["resumed_from"] == 0
    assert list(folder.glob("*.corrupt"))


def test_checkpoint_with_wrong_shapes_is_set_aside(splits, tmp_path, caplog):
    from dropout_lab.core.checkpoint import save_checkpoint
    from dropout_lab.core.claims import identity

    folder = tmp_path / "run"
    folder.mkdir()
    save_checkpoint(folder / "epoch-0001.pt", {"identity": identity(CFG.to_dict(), {}), "epoch": 1, "history": [{}],
                                               "model": {"w": torch.zeros(3)}})  # fmt: skip
    records = run(CFG, splits, folder)
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[0]["resumed_from"] == 0
    assert (folder / "epoch-0001.pt.corrupt").exists()
    assert "does not fit this run" in caplog.text


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", 0, "epochs"),
        ("batch_size", 0, "--batch-size"),
        ("dropout", 1.0, "dropout"),
        ("dropout", -0.1, "dropout"),
        ("lr", 0.0, "--lr"),
        ("precision", "fp8", "precision"),
        ("precision", "bf16", "needs a CUDA device"),
    ],
)
def test_bad_config_is_rejected_with_a_clear_message(field, value, message):
    with pytest.raises(ValueError, match=message):
        check_train_config(dataclasses.replace(CFG, **{field: value}))
