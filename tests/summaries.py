"""Per-seed summary rows as the report writes them, for the statistics and verdict tests."""


def rows(rate, seeds, gaps, accs, **extra):
    label = "baseline" if rate == 0 else f"dropout={rate:g}"
    base = {"n_train": 50_000, "n_test": 10_000, "epochs": 8, "dataset": "cifar10", "data_verified": True}
    return [{**base, **extra, "model": label, "dropout": rate, "seed": s, "generalization_gap": g,
             "final_test_acc": a, "final_train_eval_acc": a + g, "best_test_acc": a, "final_test_loss": 1 - a,
             "train_seconds": 60.0, "epochs_seconds": 60.0}
            for s, g, a in zip(seeds, gaps, accs, strict=True)]  # fmt: skip


BASE_ACC = [0.712, 0.700, 0.725, 0.705, 0.718] * 2


def sweep():
    """Ten seeds (the sign-flip tests need eight or more to decide among four claims): five seeds' numbers twice."""
    out = rows(0.0, range(10), [0.12, 0.13, 0.11, 0.125, 0.115] * 2, BASE_ACC)
    out += rows(0.25, range(10), [0.02, 0.03, 0.025, 0.035, 0.02] * 2, [a + d for a, d in
                zip(BASE_ACC, [0.012, -0.006, 0.009, 0.004, -0.008] * 2, strict=True)])  # fmt: skip
    out += rows(0.5, range(10), [-0.01, 0.0, -0.005, 0.002, -0.004] * 2, [a - 0.03 + d for a, d in
                zip(BASE_ACC, [0.002, -0.001, 0.001, 0.0, -0.002] * 2, strict=True)])  # fmt: skip
    return out
