"""Simulation scores against naive least squares and correlations; planted OR units."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import pearsonr

from neuronscan.stats import holdout_mask, simulation_scores


def _naive_stepwise(x: np.ndarray, cols: np.ndarray, max_terms: int, min_gain: float) -> list[int]:
    """Forward stepwise by refitting every candidate with lstsq (intercept included)."""
    chosen: list[int] = []
    sxx = float(((x - x.mean()) ** 2).sum())

    def rss(idx: list[int]) -> float:
        design = np.column_stack([np.ones(len(x)), cols[:, idx]]) if idx else np.ones((len(x), 1))
        coef, *_ = np.linalg.lstsq(design, x, rcond=None)
        return float(((x - design @ coef) ** 2).sum())

    current = sxx
    for _ in range(max_terms):
        def full_rank(idx: list[int]) -> bool:
            return np.linalg.matrix_rank(np.column_stack([np.ones(len(x)), cols[:, idx]])) == len(idx) + 1

        trials = {j: rss(chosen + [j]) for j in range(cols.shape[1]) if j not in chosen and full_rank(chosen + [j])}
        if not trials:
            break
        j = min(trials, key=lambda t: (trials[t], t))
        if current - trials[j] < min_gain * sxx:
            break
        chosen.append(j)
        current = trials[j]
    return chosen


def _data(seed: int, n: int = 3000, c: int = 10):
    rng = np.random.default_rng(seed)
    y = rng.random((n, c)) < rng.uniform(0.05, 0.4, c)
    x = np.round(1.5 * y[:, 0] + 0.8 * y[:, 3] - 0.6 * y[:, 5] + rng.normal(scale=0.7, size=n), 1)
    ids = rng.permutation(10 * n)[:n]
    return x, y, ids


@pytest.mark.parametrize("seed", range(3))
def test_linear_explanation_equals_naive_stepwise_least_squares(seed):
    x, y, ids = _data(seed)
    res = simulation_scores(x[:, None], sp.csc_matrix(y), ids, holdout=0.25, seed=seed, max_terms=4,
                            n_candidates=10, min_gain=0.001)
    held = holdout_mask(ids, 0.25, seed)
    fit = ~held
    assert res["n_holdout"] == held.sum() and res["n_fit"] == fit.sum()
    terms = res["linear_terms"][0]
    assert terms == _naive_stepwise(x[fit], y[fit].astype(float), 4, 0.001)
    assert set(terms[:3]) == {0, 3, 5}
    design = np.column_stack([np.ones(fit.sum()), y[fit][:, terms]])
    coef, *_ = np.linalg.lstsq(design, x[fit], rcond=None)
    np.testing.assert_allclose(res["linear_weights"][0], coef[1:], rtol=1e-9, atol=1e-12)
    assert res["linear_intercept"][0] == pytest.approx(coef[0], rel=1e-9)
    pred = coef[0] + y[held][:, terms] @ coef[1:]
    assert res["linear_corr"][0] == pytest.approx(pearsonr(pred, x[held]).statistic, abs=1e-12)
    # The concept explanation: the best fit-image correlation, scored on the held-out images.
    fit_r = [pearsonr(y[fit, j], x[fit]).statistic for j in range(y.shape[1])]
    best = int(np.argmax(fit_r))
    assert res["concept"][0] == best and best in (0, 3)
    assert res["concept_corr"][0] == pytest.approx(pearsonr(y[held, best], x[held]).statistic, abs=1e-12)
    assert res["linear_corr"][0] > res["concept_corr"][0]


def test_an_or_unit_is_explained_better_by_its_formula_and_linear_fit_than_by_one_concept():
    rng = np.random.default_rng(7)
    n = 4000
    y = rng.random((n, 6)) < 0.15
    x = (y[:, 1] | y[:, 4]).astype(float) + rng.normal(scale=0.2, size=n)
    ids = np.arange(n)
    mask = y[:, 1] | y[:, 4]
    res = simulation_scores(x[:, None], y, ids, formula_masks=[mask])
    assert res["formula_corr"][0] > 0.9 > res["concept_corr"][0]
    assert res["linear_corr"][0] > res["concept_corr"][0] + 0.1
    assert set(res["linear_terms"][0][:2]) == {1, 4}


def test_a_unit_that_is_a_concept_simulates_perfectly_and_degenerate_units_are_nan():
    rng = np.random.default_rng(2)
    y = rng.random((2000, 4)) < 0.2
    x = np.column_stack([y[:, 2].astype(float), np.full(2000, 3.0)])
    res = simulation_scores(x, y, np.arange(2000), formula_masks=[y[:, 2], None])
    assert res["concept"][0] == 2 and res["concept_corr"][0] == pytest.approx(1.0)
    assert res["linear_corr"][0] == pytest.approx(1.0) and res["linear_terms"][0] == [2]
    assert res["formula_corr"][0] == pytest.approx(1.0)
    assert res["concept"][1] == -1 and np.isnan(res["concept_corr"][1]) and np.isnan(res["linear_corr"][1])
    assert res["linear_terms"][1] == [] and np.isnan(res["formula_corr"][1])


def test_the_split_depends_on_the_image_id_and_seed_only():
    ids = np.arange(50_000, dtype=np.int64)
    m = holdout_mask(ids, 0.2, seed=3)
    assert abs(m.mean() - 0.2) < 0.01
    perm = np.random.default_rng(0).permutation(ids)
    np.testing.assert_array_equal(holdout_mask(perm, 0.2, seed=3), m[perm])
    assert (holdout_mask(ids, 0.2, seed=4) != m).mean() > 0.2
    with pytest.raises(ValueError, match="holdout"):
        holdout_mask(ids, 1.0)


def test_blocks_of_units_change_no_bit(monkeypatch):
    """Units are processed in memory-bounded blocks; a block of one unit gives the same bits."""
    from neuronscan.stats import _simulation

    rng = np.random.default_rng(5)
    y = rng.random((1500, 7)) < 0.2
    a = np.round(y @ rng.normal(size=(7, 5)) + rng.normal(size=(1500, 5)), 1)
    ids = np.arange(1500)
    masks = [y[:, 0] | y[:, 1]] * 5
    whole = simulation_scores(a, y, ids, formula_masks=masks)
    monkeypatch.setattr(_simulation, "_BLOCK_BYTES", 1)
    blocks = simulation_scores(a, y, ids, formula_masks=masks)
    for key in ("concept", "concept_corr", "linear_corr", "formula_corr", "linear_intercept"):
        np.testing.assert_array_equal(blocks[key], whole[key], err_msg=key)
    assert blocks["linear_terms"] == whole["linear_terms"] and blocks["linear_weights"] == whole["linear_weights"]
