import torch
import torch.nn.functional as F
from torch import nn

from tasks.config import TrainConfig
from tasks.evaluate import per_class_accuracy, to_input
from tasks.model import Net, count_parameters


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


def test_a_few_steps_reduce_the_loss_on_a_tiny_batch():
    torch.manual_seed(0)
    model = Net(0.25)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = to_input(torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8))
    y = torch.arange(16) % 10
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


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
