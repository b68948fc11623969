"""The recipe as objects: the tutorial's CNN (`Net`, dropout as an argument: p=0 is the baseline), its
data step (`augmentation`), training objective (`criterion`) and optimizer (`optimizer`), each built from a
TrainConfig. The one trainer (core/train.py) takes them built, alone or stacked, so a setting of the
recipe lives here once (and is declared in config.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dropout_lab.config import TrainConfig
from dropout_lab.core.data import CLASSES


class Net(nn.Module):
    """conv(3→32)·conv(32→64)·conv(64→128), each k3 + ReLU + maxpool2, then 512→512→10.

    Input (N, 3, 32, 32), normalised to [-1, 1]; output (N, 10) logits. Spatial size
    32 → 30 → 15 → 13 → 6 → 4 → 2, so the flattened features are 128·2·2 = 512.
    """

    def __init__(self, dropout: float = 0.25, num_classes: int = len(CLASSES)) -> None:
        super().__init__()

        # p=0 uses Identity, so the baseline is literally the network without dropout layers.
        def drop() -> nn.Module:
            return nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        # The tutorial's conv → ReLU → maxpool, computed as conv → maxpool → ReLU: the same function
        # and the same gradients (both are monotonic and pick the same element; bit-identical
        # training, see tests/test_model.py), with ReLU and its backward on a 4x smaller tensor
        # (benchmarks/RESULTS.md has what that saves).
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(32, 64, 3), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(64, 128, 3), nn.MaxPool2d(2), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), drop(),
            nn.Linear(128 * 2 * 2, 512), nn.ReLU(), drop(),
            nn.Linear(512, num_classes),
        )  # fmt: skip

    def forward(self, x):
        return self.classifier(self.features(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
PAD = 4  # flip-crop's padding: crops shift by up to 4 pixels each way


def flip_crop(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """uint8 (B, 32, 32, 3) → the same: each image zero-padded by PAD pixels, cropped back to 32x32 at a
    random offset and mirrored left-right half the time, drawn from `gen` (on the images' device). Fixed
    shapes, device-side draws and no host sync: a CUDA graph can hold it."""
    b, h, w, _ = images.shape
    device = images.device
    padded = F.pad(images, (0, 0, PAD, PAD, PAD, PAD))  # (B, 40, 40, 3)
    shift = torch.randint(0, 2 * PAD + 1, (2, b, 1), generator=gen, device=device)
    flip = torch.randint(0, 2, (b, 1), generator=gen, device=device).bool()
    rows = shift[0] + torch.arange(h, device=device)  # (B, 32)
    cols = torch.arange(w, device=device)
    cols = shift[1] + torch.where(flip, cols.flip(0), cols)  # (B, 32)
    return padded[torch.arange(b, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]]


def augmentation(cfg: TrainConfig) -> Augment | None:
    """The data step: the transform of each training batch (uint8 images, a variant's own generator), or
    None for the images as they are. Evaluation never augments."""
    return {"none": None, "flip-crop": flip_crop}[cfg.augment]


def augment_stream(cfg: TrainConfig) -> torch.Generator:
    """A variant's augmentation draws, on its device: seeded from the seed alone (variants with one seed
    see the same crops: paired), offset by 2^32 so it is never the batch-order stream of any seed."""
    return torch.Generator(device=cfg.device).manual_seed(cfg.seed + 2**32)


def criterion(cfg: TrainConfig) -> nn.Module:
    """The training objective per image (the step averages it per variant): the tutorial's cross-entropy,
    with the config's label smoothing. Evaluation always measures plain cross-entropy (core/evaluate.py)."""
    return nn.CrossEntropyLoss(reduction="none", label_smoothing=cfg.label_smoothing)


def optimizer(params, cfg: TrainConfig) -> torch.optim.Adam:
    """The one optimizer set-up, alone or stacked: Adam with the config's learning rate and weight decay
    (L2, as torch applies it). On CUDA Adam's fused kernel updates all parameters in one launch instead
    of dozens (at batch 32 a GPU step is launch-bound), and keeps its step count on the GPU
    (`capturable`), so the step can be replayed as a CUDA graph."""
    cuda = torch.device(cfg.device).type == "cuda"
    if cfg.optimizer == "sgd":  # SGD needs larger steps than Adam: 10 x lr (0.01 by default), momentum 0.9
        return torch.optim.SGD(params, lr=10 * cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=cuda, capturable=cuda)
