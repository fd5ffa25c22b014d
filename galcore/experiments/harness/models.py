"""Small models sized for CPU runs on 8x8 images and tabular data."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP", "ResNet8", "SmallCNN"]


class SmallCNN(nn.Module):
    """Conv(c->16) - ReLU - Conv(16->32) - ReLU - MaxPool2 - Linear(32*(s/2)^2 -> 64) - ReLU - Linear(64 -> k).

    Input (B, c, s, s), output (B, k).
    """

    def __init__(self, in_channels: int = 1, num_outputs: int = 10, size: int = 8, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * (size // 2) ** 2, 64), nn.ReLU(), nn.Linear(64, num_outputs)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = (
            nn.Sequential()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet8(nn.Module):
    """A ResNet-style net for small images: stem conv, three residual stages (w, 2w, 4w; the
    last two stride 2), global average pooling, linear. Input (B, c, s, s), output (B, k)."""

    def __init__(self, in_channels: int = 1, num_outputs: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(_Block(width, width, 1), _Block(width, 2 * width, 2), _Block(2 * width, 4 * width, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_outputs))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))  # type: ignore[no-any-return]


class MLP(nn.Module):
    """Linear - act - ... - Linear: ``in_features -> hidden... -> num_outputs``. Input (B, d)."""

    def __init__(self, in_features: int, num_outputs: int, hidden: Sequence[int] = (64, 64), dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))  # type: ignore[no-any-return]
