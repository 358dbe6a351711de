"""The elementwise AUC, U and p-value kernels shared by score_block and the compositional search
agree bit for bit with the block kernels and with scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, rankdata

from neuronscan.stats._auc import auc_from_rank_sums, auc_from_ranks, mannwhitney_u
from neuronscan.stats._mannwhitney import mannwhitney_pvalue, mannwhitney_pvalues


def _case(seed: int):
    rng = np.random.default_rng(seed)
    n_images, n_units, n_concepts = 97, 4, 9
    acts = np.round(rng.normal(size=(n_images, n_units)), 1)
    acts[:, 0] = 0.0  # a constant unit
    labels = rng.random((n_images, n_concepts)) < rng.uniform(0.05, 0.6, n_concepts)
    labels[:, 0] = False
    labels[:, 1] = True  # AUC undefined for both
    ranks = rankdata(acts, axis=0)
    rank_sum = ranks.T @ labels
    tie_term = np.array(
        [np.sum(c.astype(float) ** 3 - c) for c in (np.unique(a, return_counts=True)[1]
                                                     for a in acts.T)]
    )
    return acts, labels, rank_sum, labels.sum(axis=0), tie_term


@pytest.mark.parametrize("seed", range(3))
def test_elementwise_kernels_equal_the_block_kernels_bit_for_bit(seed):
    _, _, rank_sum, n_pos, tie_term = _case(seed)
    n_images = 97
    auc, u = auc_from_ranks(rank_sum, n_pos, n_images)
    p, _ = mannwhitney_pvalues(u, n_pos, n_images, tie_term)
    np.testing.assert_array_equal(auc_from_rank_sums(rank_sum, n_pos, n_images), auc)
    defined = (n_pos > 0) & (n_pos < n_images)
    np.testing.assert_array_equal(mannwhitney_u(rank_sum, n_pos)[:, defined], u[:, defined])
    for k in range(rank_sum.shape[0]):
        for c in np.flatnonzero(defined):  # scalars, as the compositional search calls them
            assert float(auc_from_rank_sums(rank_sum[k, c], int(n_pos[c]), n_images)) == auc[k, c]
            uk = mannwhitney_u(float(rank_sum[k, c]), float(n_pos[c]))
            pk = mannwhitney_pvalue(uk, float(n_pos[c]), n_images, float(tie_term[k]))
            assert float(pk) == p[k, c]


def test_elementwise_p_value_equals_scipy_including_a_constant_unit():
    acts, labels, rank_sum, n_pos, tie_term = _case(7)
    for k in range(acts.shape[1]):
        for c in range(2, labels.shape[1]):
            mask = labels[:, c]
            u = mannwhitney_u(rank_sum[k, c], n_pos[c])
            p = float(mannwhitney_pvalue(u, n_pos[c], acts.shape[0], tie_term[k]))
            ref = mannwhitneyu(acts[mask, k], acts[~mask, k], alternative="greater",
                               method="asymptotic").pvalue
            assert p == pytest.approx(ref, rel=1e-9, abs=1e-300)
    assert float(mannwhitney_pvalue(mannwhitney_u(rank_sum[0, 2], n_pos[2]), n_pos[2], 97,
                                    tie_term[0])) == 1.0


def test_auc_from_rank_sums_is_nan_where_undefined_and_broadcasts():
    auc = auc_from_rank_sums(np.array([[0.0, 6.0, 3.0]]), np.array([0, 3, 1]), 3)
    assert np.isnan(auc[0, 0]) and np.isnan(auc[0, 1]) and auc[0, 2] == 1.0
    assert auc_from_rank_sums(np.zeros((2, 5)), np.zeros(5), 10).shape == (2, 5)


def test_auc_from_rank_sums_keep_and_fill_equal_the_default_where_kept():
    _, _, rank_sum, n_pos, _ = _case(4)
    n_pos = np.broadcast_to(n_pos.astype(float), rank_sum.shape)
    keep = (n_pos >= 10) & (n_pos <= 60)
    masked = auc_from_rank_sums(rank_sum, n_pos, 97, keep=keep, fill=-np.inf)
    np.testing.assert_array_equal(masked[keep], auc_from_rank_sums(rank_sum, n_pos, 97)[keep])
    assert np.all(masked[~keep] == -np.inf)
