"""Planted truth for the discovery tests: a model whose latent is a known non-negative mix of planted concepts
and whose class logit is a known linear function of them.

Inputs are ``(n, K_TRUE, S, S)`` *concept maps*: channel k is 1 where concept k is present (square blobs), 0
elsewhere. The model:

- ``latent`` (the layer discovery cuts at): ``a[:, :, y, x] = Σ_k x[:, k, y, x] · W_TRUE[k]`` — a 1×1
  convolution with the planted dictionary ``W_TRUE`` (``(K_TRUE, C)``, non-negative, nearly orthogonal rows);
- ``pool`` then ``head``: global average pooling and a linear layer whose class-0 row ``w`` solves
  ``W_TRUE · w = GAMMA``, so that ``logit_0 = BIAS + Σ_k GAMMA[k] · mean(x[:, k])`` exactly.

So concept k's additive share of the class-0 logit on an image is ``GAMMA[k] · mean(x_k)``: every image holds
one blob of each concept, so the importance ranking is the order of ``GAMMA`` (0, 1, 2, 3) on every image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

K_TRUE = 4
C = 24
S = 16
GAMMA = np.array([3.0, 2.0, 1.0, 0.5])
BIAS = 0.25


def planted_dictionary(seed: int = 0) -> np.ndarray:
    """``(K_TRUE, C)``: each concept owns 6 channels (values 0.5–1.5) plus a little on the others."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.0, 0.1, size=(K_TRUE, C))
    for k in range(K_TRUE):
        w[k, 6 * k : 6 * k + 6] += rng.uniform(0.5, 1.5, size=6)
    return w


class PlantedModel(nn.Module):
    """``latent`` (1×1 conv by ``W_TRUE``) → ``pool`` → ``head`` (2 outputs; output 0 is the planted class)."""

    def __init__(self, w_true: np.ndarray):
        super().__init__()
        k, c = w_true.shape
        self.latent = nn.Conv2d(k, c, kernel_size=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, 2)
        w = np.linalg.lstsq(w_true, GAMMA, rcond=None)[0]  # W_TRUE · w = GAMMA (least norm)
        with torch.no_grad():
            self.latent.weight.copy_(torch.tensor(w_true.T[:, :, None, None], dtype=torch.float32))
            self.head.weight.zero_()
            self.head.weight[0] = torch.tensor(w, dtype=torch.float32)
            self.head.weight[1] = torch.tensor(w_true.mean(0) * 0.5, dtype=torch.float32)
            self.head.bias.copy_(torch.tensor([BIAS, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.latent(torch.relu(x))), 1))


def planted_images(n: int, *, seed: int = 0, side: int = 5) -> torch.Tensor:
    """``(n, K_TRUE, S, S)`` concept maps: each image has one ``side``² blob of every concept at a random place
    (blobs may overlap: mixed positions), so every concept's share of the logit is the same on every image."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, K_TRUE, S, S), dtype=np.float32)
    for i in range(n):
        for k in range(K_TRUE):
            y0, x0 = rng.integers(0, S - side + 1, size=2)
            x[i, k, y0 : y0 + side, x0 : x0 + side] = 1.0
    return torch.from_numpy(x)
