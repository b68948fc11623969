"""Stacked training (tasks/stacked.py) is the same maths as training each variant alone."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

from dropout_lab.config import TrainConfig
from dropout_lab.core.checkpoint import epoch_checkpoints, load_checkpoint
from dropout_lab.core.evaluate import evaluate
from dropout_lab.core.model import Net, optimizer
from dropout_lab.core.stacked import Single, StackedNet, streams_from_global
from dropout_lab.core.train import FAIL_AT_EPOCH_ENV, InjectedFault, Unit, build, fit
from dropout_lab.runtime.devices import check_stackable

BASE = TrainConfig(epochs=2, batch_size=32)
# Measured: a correct stack differs from separate training by <= 2e-5 after 3 Adam steps (summation
# order in the grouped convolutions); one variant with the wrong dropout stream differs by 2e-3.
STEP_TOL = 2e-4


def variants(*pairs):
    return [dataclasses.replace(BASE, dropout=p, seed=s) for p, s in pairs]


def alone_pass(net, opt, cfg, x, y, order):
    """Train one variant on `order` as the trainer trains it alone (its dropout from the global generator)."""
    return Unit([net], [opt], [], cfg).train_pass(order[None], x, y)


def stacked_pass(nets, cfg, x, y, orders, streams) -> tuple[StackedNet, torch.Tensor, torch.Tensor]:
    """Train the variants on their `orders` as one stacked computation: (the stack, losses, number correct)."""
    unit = Unit(nets, [optimizer(n.parameters(), cfg) for n in nets], streams, cfg)
    losses, correct = unit.train_pass(torch.stack(orders), x, y)
    return unit.model, losses, correct


def max_param_diff(net, stacked, k) -> float:
    return max((p - stacked.param(name)[k]).abs().max().item() for name, p in net.named_parameters())


@pytest.mark.parametrize(
    "pairs",
    [
        [(0.25, 0), (0.0, 0), (0.5, 0)],  # one seed: one shared batch per step (dense first conv)
        [(0.25, 0), (0.0, 0), (0.5, 1)],  # different batch orders side by side (grouped first conv)
    ],
    ids=["shared-batches", "own-batches"],
)
def test_steps_match_separate_training(splits, pairs):
    x, y = splits[0], splits[1]
    cfgs = variants(*pairs)
    steps = 3
    orders = [torch.randperm(len(y), generator=torch.Generator().manual_seed(c.seed))[: steps * 32] for c in cfgs]
    initial, alone, streams = [], [], []
    for cfg, order in zip(cfgs, orders, strict=True):
        net, opt = build(cfg)
        streams.append(streams_from_global("cpu")[0])  # the stream `build` leaves
        initial.append(copy.deepcopy(net))
        alone_pass(net, opt, cfg, x, y, order)
        alone.append(net)
    stacked, losses, correct = stacked_pass(copy.deepcopy(initial), BASE, x, y, orders, streams)
    for k, net in enumerate(alone):
        assert max_param_diff(net, stacked, k) < STEP_TOL, cfgs[k].run_name
    assert losses.shape == (3,) and correct.shape == (3,)

    # The same check fails when one variant's dropout stream is not its own.
    streams = [torch.Generator().manual_seed(99)] + streams[1:]
    stacked, _, _ = stacked_pass(copy.deepcopy(initial), BASE, x, y, orders, streams)
    assert max_param_diff(alone[0], stacked, 0) > 10 * STEP_TOL


def test_evaluating_the_stack_matches_evaluating_each_net(splits):
    _, _, tx, ty = splits
    nets = [build(c)[0] for c in variants((0.25, 0), (0.0, 1))]
    together = evaluate(StackedNet(nets), tx, ty, batch_size=64)
    for net, result in zip(nets, together, strict=True):
        (alone,) = evaluate(Single(net), tx, ty, batch_size=64)
        assert result["confusion"] == alone["confusion"] and result["acc"] == alone["acc"]
        assert result["loss"] == pytest.approx(alone["loss"], rel=1e-5)


def final_state(folder):
    return load_checkpoint(epoch_checkpoints(folder)[0][1])


def assert_close_to_alone(stacked_dir, alone_dir, tol=1e-3, final_tol=1e-2):
    """Weights after the first epoch within `tol`, after the last within `final_tol`; streams exact;
    per-epoch losses close. Why two bounds: the two paths sum in different orders, and Adam turns
    noise-level gradient differences into lr-sized steps, so the gap grows chaotically with steps
    (on one 2-vCPU EPYC: 2.4e-4 after 10 steps, 5.3e-3 after 20, while the losses still agree to 1e-5;
    a wrong dropout stream is off by 2e-3 after three steps, see above)."""
    a, b = final_state(stacked_dir), final_state(alone_dir)
    first_a, first_b = (load_checkpoint(epoch_checkpoints(f)[-1][1]) for f in (stacked_dir, alone_dir))
    assert first_a["epoch"] == first_b["epoch"] == 1
    assert max((first_a["model"][k] - first_b["model"][k]).abs().max().item() for k in a["model"]) < tol
    assert max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"]) < final_tol
    for key in ("rng_cpu", "rng_order", "rng_augment"):  # the variant's streams end exactly where they would alone
        assert torch.equal(a[key], b[key]), key
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert ra["train_running_loss"] == pytest.approx(rb["train_running_loss"], abs=1e-4)
        assert ra["train_eval_loss"] == pytest.approx(rb["train_eval_loss"], abs=1e-3)
        assert ra["test_loss"] == pytest.approx(rb["test_loss"], abs=1e-3)


@pytest.mark.parametrize("augment", ["none", "flip-crop"])
def test_variants_trained_together_match_each_trained_alone_and_write_the_same_checkpoints(splits, tmp_path, augment):
    # Augmented, each variant's batch goes through the data step with its own stream, as it would alone.
    cfgs = [dataclasses.replace(c, augment=augment) for c in variants((0.25, 0), (0.0, 0), (0.5, 1))]
    events = list(fit(cfgs, *splits, [tmp_path / f"stacked{i}" for i in range(3)]))
    assert [(i, r["epoch"]) for i, r in events] == [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)]
    for i, cfg in enumerate(cfgs):
        list(fit([cfg], *splits, [tmp_path / f"alone{i}"]))
        assert_close_to_alone(tmp_path / f"stacked{i}", tmp_path / f"alone{i}")


def test_resume_after_fault_is_bit_identical(splits, tmp_path, monkeypatch):
    cfgs = variants((0.25, 0), (0.0, 1))
    clean = [tmp_path / f"clean{i}" for i in range(2)]
    list(fit(cfgs, *splits, clean))
    folders = [tmp_path / f"faulty{i}" for i in range(2)]
    monkeypatch.setenv(FAIL_AT_EPOCH_ENV, "2")
    with pytest.raises(InjectedFault):
        list(fit(cfgs, *splits, folders, attempt=1))
    assert [e for e, _ in epoch_checkpoints(folders[0])] == [1]
    resumed = list(fit(cfgs, *splits, folders, attempt=2))
    assert [(i, r["epoch"], r["resumed_from"]) for i, r in resumed] == [(0, 2, 1), (1, 2, 1)]
    for a, b in zip(clean, folders, strict=True):
        sa, sb = final_state(a), final_state(b)
        assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])


def test_variants_at_different_epochs_catch_up_then_stack(splits, tmp_path, monkeypatch):
    """A variant resumed further than the other waits; checkpoints move freely between the trainers."""
    ahead, behind = variants((0.25, 0), (0.0, 0))
    folders = [tmp_path / "ahead", tmp_path / "behind"]
    monkeypatch.setenv(FAIL_AT_EPOCH_ENV, "2")  # train `ahead` alone for one epoch, then fail
    with pytest.raises(InjectedFault):
        list(fit([ahead], *splits, folders[:1]))
    monkeypatch.delenv(FAIL_AT_EPOCH_ENV)
    events = list(fit([ahead, behind], *splits, folders))
    assert [(i, r["epoch"]) for i, r in events] == [(1, 1), (0, 2), (1, 2)]
    for i, cfg in enumerate([ahead, behind]):
        list(fit([cfg], *splits, [tmp_path / f"alone{i}"]))
        assert_close_to_alone(folders[i], tmp_path / f"alone{i}")


def test_stack_needs_shared_settings():
    with pytest.raises(ValueError, match="share lr"):
        check_stackable([BASE, dataclasses.replace(BASE, lr=0.01, dropout=0.0)])


def test_mixed_precision_runs_the_same_way(splits):
    """bf16 autocast (CUDA in real runs; CPU autocast here) through the stacked path: the step and
    evaluation run, and one step agrees with separate bf16 training to bf16's precision."""
    x, y, tx, ty = splits
    cfgs = variants((0.25, 0), (0.0, 1))
    orders = [torch.randperm(len(y), generator=torch.Generator().manual_seed(c.seed))[:32] for c in cfgs]
    bf16 = dataclasses.replace(BASE, precision="bf16")
    initial, alone, streams = [], [], []
    for cfg, order in zip(cfgs, orders, strict=True):
        net, opt = build(cfg)
        streams.append(streams_from_global("cpu")[0])
        initial.append(copy.deepcopy(net))
        alone_pass(net, opt, bf16, x, y, order)
        alone.append(net)
    stacked, losses, _ = stacked_pass(initial, bf16, x, y, orders, streams)
    assert torch.isfinite(losses).all()
    # One Adam step moves each weight by about lr (1e-3); bf16 rounding may flip a few tiny gradients.
    for k, net in enumerate(alone):
        diffs = torch.cat([(p - stacked.param(n)[k]).abs().flatten() for n, p in net.named_parameters()])
        assert (diffs > 1e-4).float().mean() < 0.05  # measured 0.4 %; a wrong dropout stream: 30 %
    results = evaluate(stacked, tx, ty, precision="bf16")
    assert all(0 <= r["acc"] <= 1 and r["loss"] > 0 for r in results)


def changed_net(dropout: float, seed: int) -> Net:
    """Net as someone might change it: a narrower hidden layer, one more dropout and ReLU."""
    torch.manual_seed(seed)
    net = Net(dropout)
    drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
    net.classifier = nn.Sequential(
        nn.Flatten(), drop, nn.Linear(512, 128), nn.ReLU(), copy.deepcopy(drop), nn.Linear(128, 64), nn.ReLU(),
        copy.deepcopy(drop), nn.Linear(64, 10),
    )  # fmt: skip
    return net


def test_the_stack_is_built_from_net_so_a_changed_net_stacks_the_same(splits):
    """StackedNet has no layer names or forward of its own: a changed Net trains the same stacked
    as alone (3 steps, the dropout streams included)."""
    x, y = splits[0], splits[1]
    rates, seeds = (0.25, 0.0), (0, 1)
    orders = [torch.randperm(len(y), generator=torch.Generator().manual_seed(s))[:96] for s in seeds]
    initial, alone, streams = [], [], []
    for rate, seed, order in zip(rates, seeds, orders, strict=True):
        net = changed_net(rate, seed)
        streams.append(streams_from_global("cpu")[0])
        initial.append(copy.deepcopy(net))
        alone_pass(net, optimizer(net.parameters(), BASE), BASE, x, y, order)
        alone.append(net)
    stacked, _, _ = stacked_pass(initial, BASE, x, y, orders, streams)
    assert [kind for kind, *_ in stacked.plan].count("linear") == 3
    for k, net in enumerate(alone):
        assert max_param_diff(net, stacked, k) < STEP_TOL


def test_a_layer_without_a_batched_form_or_a_forward_out_of_order_is_refused():
    net = Net(0.25)
    net.features.insert(1, nn.BatchNorm2d(32))
    with pytest.raises(ValueError, match="cannot stack features.1: no batched form of BatchNorm2d"):
        StackedNet([net, copy.deepcopy(net)])

    class Reordered(Net):
        def forward(self, x):
            return self.classifier(self.features(x.flip(-1)))  # not just its layers in order

    with pytest.raises(ValueError, match="does not reproduce Net"):
        StackedNet([Reordered(0.25), Reordered(0.0)])
