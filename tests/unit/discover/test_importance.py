"""Sobol total indices (design and Jansen estimator) against analytic values, gradient × input and occlusion
against a hand-written linear logit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronscan.discover import (
    gradient_input_importance,
    jansen_total_indices,
    masked_logits,
    occlusion_importance,
    sobol_design,
    sobol_importance,
)


def test_sobol_design_is_a_b_and_the_replicated_matrices():
    n, k = 16, 3
    masks = sobol_design(k, n, seed=0)
    assert masks.shape == (n * (k + 2), k) and masks.dtype == np.float32
    assert masks.min() >= 0 and masks.max() <= 1
    a, b, c = masks[:n], masks[n : 2 * n], masks[2 * n :].reshape(k, n, k)
    for i in range(k):
        assert np.array_equal(c[i][:, i], b[:, i])
        assert np.array_equal(np.delete(c[i], i, axis=1), np.delete(a, i, axis=1))
    assert np.array_equal(sobol_design(k, n, seed=0), masks) and not np.array_equal(sobol_design(k, n, seed=1), masks)
    with pytest.raises(ValueError, match="power of two"):
        sobol_design(k, 24)


def test_jansen_on_the_ishigami_function():
    """Analytic total indices of Ishigami (a = 7, b = 0.1) on [−π, π]³: 0.5576, 0.4424, 0.2437."""
    n = 2**13
    x = -np.pi + 2 * np.pi * sobol_design(3, n, seed=3).astype(np.float64)
    y = np.sin(x[:, 0]) + 7 * np.sin(x[:, 1]) ** 2 + 0.1 * x[:, 2] ** 4 * np.sin(x[:, 0])
    assert jansen_total_indices(y, n, 3) == pytest.approx([0.5576, 0.4424, 0.2437], abs=0.02)


def test_jansen_on_a_linear_function_and_a_constant():
    n, c = 2**10, np.array([3.0, -2.0, 1.0, 0.0])
    masks = sobol_design(4, n, seed=0).astype(np.float64)
    st = jansen_total_indices(masks @ c + 5.0, n, 4)
    assert st == pytest.approx(c**2 / (c**2).sum(), abs=0.02)  # independent inputs, no interaction
    assert jansen_total_indices(np.full(n * 6, 2.0), n, 4).tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="outputs"):
        jansen_total_indices(np.zeros(5), n, 4)


C = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)


def linear(u: torch.Tensor) -> torch.Tensor:
    return (u * C).flatten(1).sum(1) + 1.0


def test_gradient_input_and_occlusion_are_each_concept_share_of_a_linear_logit():
    u = torch.rand(5, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    share = (u * C).sum(dim=(1, 2)).numpy()
    assert np.allclose(gradient_input_importance(linear, u, batch_size=2), share)
    assert np.allclose(occlusion_importance(linear, u, batch_size=4), share)
    vec = u[:, 0, 0]  # a vector layer: no positions
    assert np.allclose(gradient_input_importance(linear, vec), (vec * C).numpy())


def test_masked_logits_evaluates_every_image_with_every_mask():
    u = torch.rand(3, 4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    keep = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.5], [0.0, 0.0, 0.0]])
    got = masked_logits(linear, u, keep, batch_size=2)
    want = np.array([[float(linear((u[i] * torch.tensor(m))[None])) for m in keep] for i in range(3)])
    assert np.allclose(got, want)


def test_sobol_importance_on_a_linear_logit_is_the_squared_share():
    u = torch.rand(4, 5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    share = (u * C).sum(dim=1).numpy()
    st = sobol_importance(linear, u, 1024, seed=0, batch_size=5000)
    assert st.shape == (4, 3)
    expected = share**2 / (share**2).sum(axis=1, keepdims=True)
    assert st == pytest.approx(expected, abs=0.08)  # one image: a random pairing of 1,024 designs
    assert st.mean(0) == pytest.approx(expected.mean(0), abs=0.03)
    again = sobol_importance(linear, u, 1024, seed=0, batch_size=7)
    assert np.array_equal(st, again)  # seeded per image: the batching does not matter


def test_every_coordinate_pair_is_balanced_on_average():
    """Over the first 32 points of a 20-dimensional Sobol' sequence the pair (4, 14) is far from balanced
    (6 · mean((a − b)²) = 1.74); B's rows in a random order make every concept's expectation exact."""
    n, k = 32, 10
    ratios = []
    for seed in range(50):
        m = sobol_design(k, n, seed=[7, seed]).astype(np.float64)
        ratios.append(6 * ((m[:n] - m[n : 2 * n]) ** 2).mean(axis=0))
    assert np.abs(np.mean(ratios, axis=0) - 1).max() < 0.1
