import copy

import torch
import torch.nn.functional as F
from torch import nn

from dropout_lab.analysis.tables import per_class_accuracy
from dropout_lab.config import TrainConfig
from dropout_lab.core.evaluate import to_input
from dropout_lab.core.model import PAD, Net, augmentation, count_parameters, criterion, flip_crop
from dropout_lab.core.train import Unit, build


def test_shapes_and_parameter_count_match_the_tutorial():
    model = Net(dropout=0.25)
    assert count_parameters(model) == 361_034
    assert model(torch.zeros(4, 3, 32, 32)).shape == (4, 10)
    assert count_parameters(Net(dropout=0.0)) == 361_034


def test_baseline_has_no_dropout_layers_and_dropout_model_has_two():
    assert not any(isinstance(m, nn.Dropout) for m in Net(0.0).modules())
    drops = [m for m in Net(0.4).modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.4, 0.4]


def test_dropout_is_active_in_train_mode_only():
    torch.manual_seed(0)
    model, x = Net(0.5), torch.randn(8, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_the_recipe_learns_a_tiny_batch_through_the_project_s_trainer():
    cfg = TrainConfig(dropout=0.25, batch_size=16)
    model, opt = build(cfg)
    images, labels = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8), torch.arange(16) % 10
    unit = Unit([model], [opt], [], cfg)
    losses = [float(unit.train_pass(torch.arange(16)[None], images, labels)[0][0]) / 16 for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]


def test_the_criterion_is_the_config_s_objective_and_evaluation_stays_plain_cross_entropy():
    logits, labels = torch.randn(8, 10), torch.arange(8)
    plain = F.cross_entropy(logits, labels, reduction="none")
    assert torch.equal(criterion(TrainConfig())(logits, labels), plain)
    smoothed = criterion(TrainConfig(label_smoothing=0.1))(logits, labels)
    assert torch.allclose(smoothed, F.cross_entropy(logits, labels, reduction="none", label_smoothing=0.1))
    assert not torch.allclose(smoothed, plain)


def test_to_input_equals_totensor_then_normalize():
    from torchvision.transforms import functional as TF

    img = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    ours = to_input(img)
    ref = torch.stack([TF.normalize(TF.to_tensor(i.numpy()), [0.5] * 3, [0.5] * 3) for i in img])
    torch.testing.assert_close(ours, ref)
    assert ours.is_contiguous(memory_format=torch.channels_last)


def test_per_class_accuracy():
    confusion = [[0] * 10 for _ in range(10)]
    confusion[0][0], confusion[0][1] = 3, 1  # class 0: 3 of 4 right
    confusion[1][1] = 2  # class 1: all right
    acc = per_class_accuracy(confusion)
    assert acc[0] == 0.75 and acc[1] == 1.0
    assert all(a != a for a in acc[2:])  # nan where the class never occurs


def test_variant_label():
    assert TrainConfig(dropout=0.0).label == "baseline"
    assert TrainConfig(dropout=0.25).label == "dropout=0.25"


def test_pool_then_relu_trains_bit_identically_to_the_tutorial_order():
    """Net computes conv → maxpool → ReLU (faster); the tutorial's conv → ReLU → maxpool is the same
    function with the same gradients, so training gives the very same weights."""

    def tutorial_order(net: Net) -> Net:
        tutorial = copy.deepcopy(net)  # same weights
        f = tutorial.features
        assert [type(m) for m in f[:3]] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU]
        tutorial.features = nn.Sequential(*(f[i] for i in (0, 2, 1, 3, 5, 4, 6, 8, 7)))
        return tutorial

    torch.manual_seed(0)
    ours = Net(0.25)
    theirs = tutorial_order(ours)
    x = to_input(torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8))
    y = torch.arange(64) % 10
    for model in (ours, theirs):
        torch.manual_seed(1)  # the same dropout masks
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for i in range(0, 64 * 5, 16):
            batch = slice(i % 64, i % 64 + 16)
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_flip_crop_shifts_each_image_within_its_padding_and_mirrors_some():
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    out = flip_crop(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (0, 0, PAD, PAD, PAD, PAD))
    found = []
    for image, crop in zip(padded, out, strict=True):  # each output is one window of its padded image
        windows = [(dy, dx, flip) for dy in range(2 * PAD + 1) for dx in range(2 * PAD + 1) for flip in (0, 1)
                   if torch.equal(image[dy:dy + 32, dx:dx + 32].flip(1) if flip else image[dy:dy + 32, dx:dx + 32],
                                  crop)]  # fmt: skip
        assert windows, "not a window of the padded image"
        found.append(windows[0])
    assert len({(dy, dx) for dy, dx, _ in found}) > 20 and 10 < sum(f for *_, f in found) < 54  # they vary
    assert torch.equal(out, flip_crop(images, torch.Generator().manual_seed(0)))  # its stream decides it
    assert not torch.equal(out, flip_crop(images, torch.Generator().manual_seed(1)))
    assert augmentation(TrainConfig(augment="none")) is None
