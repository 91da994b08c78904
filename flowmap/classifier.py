"""Small image classifiers (digits 8x8, mnist 28x28), trained on the train split only; their
penultimate features define FD for images. Re-made by `python scripts/train_classifiers.py`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from flowmap.checkpoint import ASSETS, CheckpointError, read_tensors, save_tensors


def classifier_path(data: str = "digits") -> Path:
    """The shipped classifier of a built-in image data set (digits, mnist)."""
    return ASSETS / f"{data}_classifier.safetensors"


CLASSIFIER = classifier_path("digits")


class Classifier(nn.Module):
    """Conv net for [C, side, side] images; `features` is the 128-d penultimate layer. Images of 16
    pixels or more are pooled once first (28 -> 14 -> 7 -> 3 for mnist), 8x8 ones are not (8 -> 4 -> 2)."""

    def __init__(self, channels: int = 1, num_classes: int = 10, feat: int = 128, side: int = 8):
        super().__init__()
        pool_first = side >= 16
        end = side // 8 if pool_first else side // 4
        self.side = side
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.SiLU(),
            *([nn.AvgPool2d(2)] if pool_first else []),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * end * end, feat),
            nn.SiLU(),
        )
        self.head = nn.Linear(feat, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_classifier(x: Tensor, y: Tensor, epochs: int = 60, seed: int = 0) -> Classifier:
    """Adam + one-cycle LR on the train split, with +-1 pixel shifts (test accuracy ~98.7%)."""
    torch.manual_seed(seed)
    net = Classifier(x.shape[1], int(y.max()) + 1, side=x.shape[-1])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
    batches = (len(x) + 127) // 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * batches)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            xb = torch.roll(x[idx], shifts=tuple(torch.randint(-1, 2, (2,)).tolist()), dims=(2, 3))
            loss = nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval().requires_grad_(False)


def save_classifier(net: Classifier, path: Path = CLASSIFIER, accuracy: float | None = None) -> None:
    meta = {"format": "flowmap-classifier/1", "side": str(net.side)}
    if accuracy is not None:
        meta["test_accuracy"] = f"{accuracy:.4f}"
    save_tensors(path, net.state_dict(), meta)


def load_classifier(path: Path = CLASSIFIER) -> Classifier:
    tensors, meta = read_tensors(path)
    if meta.get("format") != "flowmap-classifier/1":
        raise CheckpointError(f"{path}: not a flowmap classifier")
    side = int(meta.get("side", 8))
    net = Classifier(tensors["body.0.weight"].shape[1], tensors["head.weight"].shape[0], side=side)
    net.load_state_dict(tensors)
    return net.eval().requires_grad_(False)
