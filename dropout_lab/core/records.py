"""What one epoch of a training measured: the epoch record, its columns declared once, where they are
measured. The per-epoch table (analysis/tables.py PER_EPOCH_SCHEMA) and MLflow's epoch metrics derive from
EPOCH_COLUMNS. Plain Python (no torch): the tables and the command line's checks read it.
"""

from __future__ import annotations

# The epoch record's columns: (name, kind, unit, meaning); `epoch_record` writes exactly these (and the
# test set's confusion matrix).
FRACTION, NATS, SECONDS = "fraction", "nats per image (mean cross-entropy)", "seconds"
OBJECTIVE = "training objective per image (the variant's criterion, core/model.py)"
RUNNING = "the tutorial's running mean over the epoch in train mode (dropout on); not the gap's train side"
TRAIN_EVAL = "the epoch's final weights in eval mode on n_train_eval training images (fixed class-balanced subset)"
VAL = "the epoch's final weights in eval mode on the held-out training images (--val-images; else null)"
EPOCH_COLUMNS = (
    ("epoch", int, None, None),
    ("train_running_loss", float, OBJECTIVE, f"the {OBJECTIVE}: {RUNNING}"),
    ("train_running_acc", float, FRACTION, RUNNING),
    ("train_eval_loss", float, NATS, TRAIN_EVAL),
    ("train_eval_acc", float, FRACTION, TRAIN_EVAL),
    ("test_loss", float, NATS, None),
    ("test_acc", float, FRACTION, None),
    ("val_loss", float, NATS, VAL),
    ("val_acc", float, FRACTION, VAL),
    ("epoch_seconds", float, SECONDS, None),
    ("n_train", int, None, "images trained on"),
    ("n_train_eval", int, None, "training images evaluated in eval mode (the gap's train side)"),
    ("n_test", int, None, "test images evaluated"),
    ("stacked_with", int, None, "variants its epoch trained with as one computation (1: alone)"),
    ("cuda_graphs", bool, None, "its steps and evaluations were replayed as CUDA graphs"),
)  # fmt: skip


def epoch_record(
    epoch: int,
    loss_sum: float,
    correct: int,
    n: int,
    train_eval: dict,
    test: dict,
    seconds: float,
    val: dict | None = None,
    stacked_with: int = 1,
    cuda_graphs: bool = False,
) -> dict:
    """One epoch's history entry. Accuracies are fractions, losses mean cross-entropy per image; the
    held-out (validation) numbers are None without --val-images. It also says on how many images the
    epoch trained and was evaluated, and how it trained (stacked with how many variants, graphed)."""
    return {
        "epoch": epoch,
        # The tutorial's numbers: means over the epoch in train mode, i.e. with dropout on (for the
        # dropout models only) and weights still moving. Kept, but they are not the gap's train side.
        "train_running_loss": float(loss_sum) / n,
        "train_running_acc": float(correct) / n,
        # The epoch's final weights in eval mode on (a fixed subset of) the training set: measured
        # like the test set, so train minus test accuracy is the generalization gap for every model.
        "train_eval_loss": train_eval["loss"],
        "train_eval_acc": train_eval["acc"],
        "test_loss": test["loss"],
        "test_acc": test["acc"],
        "test_confusion": test["confusion"],  # [true][predicted] counts
        "val_loss": val["loss"] if val else None,
        "val_acc": val["acc"] if val else None,
        "epoch_seconds": seconds,
        "n_train": n,
        "n_train_eval": sum(map(sum, train_eval["confusion"])),
        "n_test": sum(map(sum, test["confusion"])),
        "stacked_with": stacked_with,
        "cuda_graphs": cuda_graphs,
    }
