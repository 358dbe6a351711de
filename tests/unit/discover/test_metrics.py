"""C-Deletion, C-Insertion, C-µFidelity and the dictionary metrics on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronscan.discover import (
    concept_curves,
    curve_auc,
    hoyer_sparsity,
    matched_cosine,
    mu_fidelity,
    mu_fidelity_subsets,
    reconstruction_error,
    zero_fraction,
)

C = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)


def linear(u: torch.Tensor) -> torch.Tensor:
    """φ(U) = Σ_positions Σ_k c_k U_k: each concept's share is c_k times its summed coefficients."""
    return (u * C).flatten(1).sum(1)


def test_deletion_and_insertion_by_hand():
    u = torch.ones(1, 3, dtype=torch.float64)
    deletion, insertion = concept_curves(linear, u, np.array([0, 1, 2]))
    assert deletion.tolist() == [[6, 3, 1, 0]] and insertion.tolist() == [[0, 3, 5, 6]]
    # Trapezoids over x = 0, 1/3, 2/3, 1: (1/3)(4.5 + 2 + 0.5) and (1/3)(1.5 + 4 + 5.5).
    assert curve_auc(deletion) == pytest.approx([7 / 3]) and curve_auc(insertion) == pytest.approx([11 / 3])
    worst, _ = concept_curves(linear, u, np.array([2, 1, 0]))  # least important first: the logit stays high
    assert worst.tolist() == [[6, 5, 3, 0]] and curve_auc(worst)[0] > curve_auc(deletion)[0]
    grid = torch.ones(2, 2, 2, 3, dtype=torch.float64)  # positions: 4 per image, the same mask at each
    deletion, insertion = concept_curves(linear, grid, np.array([0, 1, 2]))
    assert deletion.tolist() == [[24, 12, 4, 0]] * 2 and insertion[:, -1].tolist() == [24, 24]
    with pytest.raises(ValueError, match="permutation"):
        concept_curves(linear, u, np.array([0, 0, 1]))


def test_mu_fidelity_is_one_for_exact_shares_and_minus_one_reversed():
    u = torch.tensor([[1.0, 2.0, 0.5], [0.3, 1.0, 2.0]], dtype=torch.float64)
    shares = (u * C).numpy()
    subsets = mu_fidelity_subsets(3, 64, 0.4, seed=1)
    assert subsets.shape == (64, 3) and 0.2 < subsets.mean() < 0.6
    assert mu_fidelity(linear, u, shares, subsets) == pytest.approx([1.0, 1.0])
    assert mu_fidelity(linear, u, -shares, subsets) == pytest.approx([-1.0, -1.0])
    flat = mu_fidelity(linear, u, np.ones_like(shares), subsets)  # uniform importance: a weaker correlation
    assert np.all(flat < 1.0)
    assert np.isnan(mu_fidelity(linear, u, shares, np.zeros((8, 3), dtype=bool))).all()  # no subset removes anything


def test_dictionary_metrics_by_hand():
    a = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert reconstruction_error(a, np.zeros_like(a)) == pytest.approx(1.0)
    assert reconstruction_error(a, a) == 0.0
    assert reconstruction_error(a, a + [[0.0, 0.5], [0.0, 0.0]]) == pytest.approx(0.1)
    assert np.isnan(reconstruction_error(np.zeros((2, 2)), np.zeros((2, 2))))
    u = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    assert zero_fraction(u) == pytest.approx(7 / 12)
    assert hoyer_sparsity(u[:1]) == pytest.approx(1.0) and hoyer_sparsity(u[1:2]) == pytest.approx(0.0)
    assert hoyer_sparsity(u) == pytest.approx(0.5)  # the all-zero row is left out


def test_matched_cosine_pairs_a_permuted_dictionary():
    rng = np.random.default_rng(0)
    w = rng.random((5, 8))
    perm = np.array([3, 0, 4, 1, 2])
    mean, pairs = matched_cosine(w, 2.0 * w[perm])
    assert mean == pytest.approx(1.0)
    assert [int(c) for c in pairs[:, 1]] == np.argsort(perm).tolist()
    mean, pairs = matched_cosine(w, -w[perm], absolute=True)  # signs do not matter for PCA / ICA
    assert mean == pytest.approx(1.0) and [int(c) for c in pairs[:, 1]] == np.argsort(perm).tolist()
    assert matched_cosine(w, -w)[0] < 0
    e = np.eye(3)
    mean, pairs = matched_cosine(e, np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))
    assert mean == pytest.approx((1 + 1 / np.sqrt(2)) / 2) and len(pairs) == 2
