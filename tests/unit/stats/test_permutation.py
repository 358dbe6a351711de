"""Permutation p-values: reproducible, exact bounds, and in agreement with a naive label shuffle."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from neuronscan.stats import permutation_draws, permutation_pvalues, rank_units
from neuronscan.stats._permutation import _PERM_CHUNK

from ._data import tied_activations


def naive_label_shuffle(x: np.ndarray, y: np.ndarray, n_perm: int, seed: int) -> float:
    """(1 + #{U_b >= U}) / (B + 1) with U from scratch on shuffled labels."""
    rng = np.random.default_rng(seed)

    def u_stat(labels: np.ndarray) -> float:
        pos, neg = x[labels][:, None], x[~labels][None, :]
        return float(np.sum((pos > neg) + 0.5 * (pos == neg)))

    observed = u_stat(y)
    hits = sum(u_stat(rng.permutation(y)) >= observed for _ in range(n_perm))
    return (1 + hits) / (n_perm + 1)


def setup(seed: int = 0, n_images: int = 120):
    rng = np.random.default_rng(seed)
    a = tied_activations(rng, n_images, 4, 1)
    y = np.zeros((n_images, 3), dtype=bool)
    y[rng.choice(n_images, 12, replace=False), 0] = True
    y[rng.choice(n_images, 40, replace=False), 1] = True
    y[rng.choice(n_images, 90, replace=False), 2] = True  # > N/2: drawn as its complement
    # Make unit 1 respond to concept 0 and unit 2 weakly to concept 2.
    a[y[:, 0], 1] += 0.6
    a[y[:, 2], 2] += 0.25
    return a, y


def test_agrees_with_a_naive_label_shuffle_within_monte_carlo_error():
    a, y = setup()
    units = np.array([0, 1, 2, 3, 2, 0])
    concepts = np.array([0, 0, 2, 1, 1, 2])
    n_perm = 2_000
    p, b = permutation_pvalues(rank_units(a), y, units, concepts, n_perm=n_perm, seed=5)
    assert b == n_perm
    for j, (k, c) in enumerate(zip(units, concepts)):
        naive = naive_label_shuffle(a[:, k], y[:, c], n_perm, seed=100 + j)
        sd = np.sqrt(max(naive * (1 - naive), 1 / n_perm) / n_perm)
        assert abs(p[j] - naive) < 5 * np.sqrt(2) * sd, (k, c, p[j], naive)


def test_reproducible_with_a_seed_and_independent_of_other_pairs():
    a, y = setup(1)
    r = rank_units(a)
    units, concepts = np.array([0, 1, 3]), np.array([1, 0, 2])
    p1, _ = permutation_pvalues(r, y, units, concepts, n_perm=300, seed=11)
    p2, _ = permutation_pvalues(r, y, units, concepts, n_perm=300, seed=11)
    np.testing.assert_array_equal(p1, p2)
    alone, _ = permutation_pvalues(r, y, units[1:2], concepts[1:2], n_perm=300, seed=11)
    assert alone[0] == p1[1]
    other, _ = permutation_pvalues(r, y, units, concepts, n_perm=300, seed=12)
    assert not np.array_equal(p1, other)


def test_chunking_does_not_change_results():
    a, y = setup(2)
    r = rank_units(a)
    n_perm = 2 * _PERM_CHUNK + 5
    p, _ = permutation_pvalues(r, y, np.array([1]), np.array([0]), n_perm=n_perm, seed=3)
    # Count by hand with the same draws: prefix of rng.permutation(N) per permutation.
    rng = np.random.default_rng(3)
    r2 = np.rint(r.ranks[:, 1] * 2).astype(np.int64)
    observed = r2[y[:, 0]].sum()
    n = int(y[:, 0].sum())
    hits = sum(r2[rng.permutation(len(r2))[:n]].sum() >= observed for _ in range(n_perm))
    assert p[0] == (1 + hits) / (n_perm + 1)


def test_matches_the_exact_permutation_distribution_with_ties():
    # Six images in three tie groups; every 3-subset enumerated gives the exact tail probability.
    a = np.array([[0.0], [0.0], [1.0], [1.0], [2.0], [2.0]])
    y = np.array([[1], [0], [1], [0], [1], [0]], dtype=bool)  # U equals many permuted U's
    ranks = rank_units(a).ranks[:, 0]
    observed = ranks[y[:, 0]].sum()
    subsets = list(combinations(range(6), 3))
    exact = np.mean([ranks[list(s)].sum() >= observed for s in subsets])
    n_perm = 20_000
    pair = np.array([0])
    p, _ = permutation_pvalues(rank_units(a), y, pair, pair, n_perm=n_perm, seed=2)
    assert abs(p[0] - exact) < 4.5 * np.sqrt(exact * (1 - exact) / n_perm)


def test_bounds_and_strong_signal():
    n_images = 200
    a = np.arange(n_images, dtype=float)[:, None]
    y = np.zeros((n_images, 2), dtype=bool)
    y[-20:, 0] = True  # top 20 images: nothing beats it
    y[:20, 1] = True  # bottom 20: everything beats it
    p, b = permutation_pvalues(rank_units(a), y, np.array([0, 0]), np.array([0, 1]), n_perm=99)
    assert p[0] == 1 / (b + 1)
    assert p[1] == 1.0


def test_degenerate_concepts_give_nan_and_accept_raw_ranks():
    a, y = setup(3)
    y = np.column_stack([y, np.zeros(len(y), bool), np.ones(len(y), bool)])
    r = rank_units(a)
    p, _ = permutation_pvalues(r.ranks, y, np.array([0, 0, 1]), np.array([3, 4, 0]), n_perm=50)
    assert np.isnan(p[0]) and np.isnan(p[1]) and 0 < p[2] <= 1


@pytest.mark.parametrize(
    ("units", "concepts", "kwargs", "fragment"),
    [
        (np.array([0, 1]), np.array([0]), {}, r"equal length; got shapes \(2,\) and \(1,\)"),
        (np.array([4]), np.array([0]), {}, r"unit_index must lie in 0..3"),
        (np.array([0]), np.array([-1]), {}, r"concept_index must lie in 0..2"),
        (np.array([0.5]), np.array([0]), {}, r"integers"),
        (np.array([0]), np.array([0]), {"n_perm": 0}, r"n_perm must be >= 1"),
    ],
)
def test_bad_input_raises(units, concepts, kwargs, fragment):
    a, y = setup()
    with pytest.raises(ValueError, match=fragment):
        permutation_pvalues(rank_units(a), y, units, concepts, **kwargs)


def test_draws_drawn_once_give_the_same_pvalues_as_drawing_in_the_call():
    a, y = setup(4)
    r = rank_units(a)
    units, concepts = np.array([0, 1, 2, 3, 1, 2]), np.array([0, 0, 2, 1, 1, 2])
    n_images = a.shape[0]
    longest = int(max(min(n, n_images - n) for n in y.sum(0)))
    for n_perm in (1, _PERM_CHUNK + 7):
        drawn = permutation_pvalues(r, y, units, concepts, n_perm=n_perm, seed=9)[0]
        for length in (longest, n_images):
            draws = permutation_draws(n_images, n_perm, seed=9, length=length)
            assert draws.index.dtype == np.int32 and draws.index.shape == (n_perm, length)
            shared = permutation_pvalues(r, y, units, concepts, n_perm=n_perm, seed=9, draws=draws)[0]
            np.testing.assert_array_equal(shared, drawn)
    # Each row is a draw without replacement.
    d = permutation_draws(n_images, 5, seed=0).index
    assert all(np.array_equal(np.sort(row), np.arange(n_images)) for row in d)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_images": 119, "seed": 9, "length": 60}, "drawn for N = 119"),
        ({"n_images": 120, "seed": 8, "length": 60}, "seed 8"),
        ({"n_images": 120, "seed": 9, "length": 20}, "rows of 40 indices"),
    ],
)
def test_draws_for_another_n_seed_or_too_short_are_refused(kwargs, message):
    a, y = setup(4)
    draws = permutation_draws(n_perm=10, **kwargs)
    with pytest.raises(ValueError, match=message):
        permutation_pvalues(rank_units(a), y, np.array([0, 2]), np.array([1, 2]), n_perm=10, seed=9, draws=draws)
