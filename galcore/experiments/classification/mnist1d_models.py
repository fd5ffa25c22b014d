"""The MNIST-1D paper's baseline classifiers (Greydanus 2020, arXiv 2011.14439), restated.

Its benchmark table gives, on the default data (4,000 training / 1,000 test signals of length
40, 10 classes), test accuracy ~94% for a small 1-D CNN and ~68% for an MLP, both trained with
Adam (lr 1e-2, no weight decay), batch 100, 6,000 steps (150 epochs of 4,000 samples).

- :class:`MNIST1DCNN`: three ``Conv1d`` layers (25 channels, kernels 5/3/3, stride 2, padding 1,
  ReLU) and a linear classifier on the flattened (25 x 5) features: 5,210 parameters.
- :class:`MNIST1DMLP`: 40 -> 100 -> 100 -> 10 with ReLU and a residual second layer.

Inputs (B, 1, 40) or (B, 40) float; outputs (B, 10) logits.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BASELINE_ACCURACY", "BASELINE_RECIPE", "MNIST1DCNN", "MNIST1DMLP"]

#: the MNIST-1D paper's test accuracy (fraction) per model, on its default data
BASELINE_ACCURACY: dict[str, float] = {"cnn": 0.94, "mlp": 0.68}

#: the paper's training recipe for both baselines
BASELINE_RECIPE: dict[str, float | int] = {"lr": 1e-2, "batch_size": 100, "steps": 6000, "weight_decay": 0.0}


class MNIST1DCNN(nn.Module):
    """The paper's CNN: Conv1d(1->c, 5, s2, p1) - ReLU - Conv1d(c->c, 3, s2, p1) - ReLU -
    Conv1d(c->c, 3, s2, p1) - ReLU - flatten - Linear(c * L' -> k). Length 40 gives L' = 5.

    Input (B, 1, L) or (B, L); output (B, k).
    """

    def __init__(self, num_outputs: int = 10, channels: int = 25, length: int = 40) -> None:
        super().__init__()
        if channels < 1 or length < 8:
            raise ValueError(f"channels must be >= 1 and length >= 8, got channels={channels}, length={length}")
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        out_len = length
        for k in (5, 3, 3):
            out_len = (out_len + 2 - k) // 2 + 1
        self.classifier = nn.Linear(channels * out_len, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


class MNIST1DMLP(nn.Module):
    """The paper's MLP: h1 = relu(W1 x); h2 = h1 + relu(W2 h1); logits = W3 h2.

    Input (B, 1, L) or (B, L); output (B, k).
    """

    def __init__(self, num_outputs: int = 10, hidden: int = 100, length: int = 40) -> None:
        super().__init__()
        self.linear1 = nn.Linear(length, hidden)
        self.linear2 = nn.Linear(hidden, hidden)
        self.linear3 = nn.Linear(hidden, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear1(x.flatten(1)).relu()
        h = h + self.linear2(h).relu()
        return self.linear3(h)  # type: ignore[no-any-return]
