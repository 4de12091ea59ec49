"""Real data for accuracy tests: scikit-learn's bundled handwritten digits (1,797 real
8x8 images, no download) and a small CNN trained on a fixed seeded split in seconds.

Test modules that measure a backend's quantized accuracy train it once each, with a
module-scoped fixture returning `train()`, and compare `accuracy` of the float model
with that of the exported program on the same test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

BATCH = 100  # the exported programs take batches of this size
TEST = 500  # test images (5 batches); the other 1,297 train
CALIBRATION_BATCHES = 8  # of the training split


class DigitsCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, 16, 4, 4)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 32, 2, 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


@dataclass(frozen=True)
class Digits:
    model: DigitsCnn  # trained, in eval mode
    train: torch.Tensor  # (1297, 1, 8, 8) in [0, 1]
    test: torch.Tensor  # (500, 1, 8, 8)
    labels: torch.Tensor  # (500,) of the test images

    def calibration(self) -> list[tuple[torch.Tensor]]:
        """Calibration batches from the training split."""
        return [(batch,) for batch in self.train[: CALIBRATION_BATCHES * BATCH].split(BATCH)]


def train() -> Digits:
    """The CNN trained on a seeded split (skips the test without scikit-learn)."""
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    labels = torch.tensor(data.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train_split, test_split = order[TEST:], order[:TEST]
    torch.manual_seed(0)
    model = DigitsCnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for batch in train_split[torch.randperm(len(train_split))].split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    return Digits(model.eval(), images[train_split], images[test_split], labels[test_split])


def accuracy(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of `images` whose argmax of `run(batch)` is their label, in batches of BATCH."""
    with torch.no_grad():
        predicted = torch.cat([run(batch).argmax(-1) for batch in images.split(BATCH)])
    return 100.0 * float((predicted == labels).float().mean())
