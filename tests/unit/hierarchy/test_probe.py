"""The joint probe: L2 logistic regression against scikit-learn, batched fits, and the AUC it is judged by."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from neuronscan.hierarchy import auc_score, balanced_weights, fit_logistic, unit_aucs


def _problem(seed: int, n: int = 400, p: int = 4):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, p))
    y = (z @ rng.normal(size=p) + rng.normal(size=n)) > 0.8
    return z, y


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("l2", [1e-3, 1e-2, 1.0])
def test_equals_sklearn_with_balanced_weights(seed, l2):
    z, y = _problem(seed)
    w = balanced_weights(y)
    fit = fit_logistic(z, y, w, l2=l2)
    # sklearn minimises C * sum(s_i loss_i) + ||w||^2 / 2: the same optimum with C = 1 / l2.
    ref = LogisticRegression(C=1.0 / l2, tol=1e-12, max_iter=100_000).fit(z, y, sample_weight=w)
    np.testing.assert_allclose(fit.coef[0], ref.coef_[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fit.intercept[0], ref.intercept_[0], rtol=1e-4, atol=1e-5)


def test_separable_data_stays_finite_and_separates():
    z = np.r_[np.zeros((50, 1)), np.ones((50, 1))]
    y = np.r_[np.zeros(50, bool), np.ones(50, bool)]
    fit = fit_logistic(z, y, balanced_weights(y), l2=1e-2)
    assert np.isfinite(fit.coef).all() and fit.coef[0, 0] > 0
    assert auc_score(fit.logit(z)[0], y) == 1.0


def test_a_batch_is_its_problems_solved_one_by_one():
    z, y = _problem(7, p=3)
    w = balanced_weights(y)
    rng = np.random.default_rng(1)
    batch = np.stack([z, z[:, ::-1], z + rng.normal(scale=0.1, size=z.shape)])
    together = fit_logistic(batch, y, w, l2=0.01)
    for b in range(3):
        alone = fit_logistic(batch[b], y, w, l2=0.01)
        np.testing.assert_allclose(together.coef[b], alone.coef[0], atol=1e-8)
        np.testing.assert_allclose(together.loss[b], alone.loss[0], atol=1e-12)


def test_warm_start_reaches_the_same_optimum():
    z, y = _problem(3)
    w = balanced_weights(y)
    cold = fit_logistic(z, y, w, l2=0.01)
    warm = fit_logistic(z, y, w, l2=0.01, start=np.full((1, 5), 3.0))
    np.testing.assert_allclose(warm.coef, cold.coef, atol=1e-7)


def test_aucs_equal_sklearn_with_heavy_ties():
    rng = np.random.default_rng(0)
    x = np.round(np.maximum(rng.normal(size=(300, 6)), 0), 1)
    y = rng.random(300) < 0.3
    np.testing.assert_allclose(unit_aucs(x, y), [roc_auc_score(y, x[:, k]) for k in range(6)], atol=1e-12)
    assert auc_score(x[:, 0], y) == pytest.approx(roc_auc_score(y, x[:, 0]))


def test_rejects_bad_inputs():
    z, y = _problem(0)
    with pytest.raises(ValueError, match="l2"):
        fit_logistic(z, y, balanced_weights(y), l2=0.0)
    with pytest.raises(ValueError, match="finite"):
        fit_logistic(np.where(z > 2, np.nan, z), y, balanced_weights(y), l2=0.1)
    with pytest.raises(ValueError, match="positives and negatives"):
        balanced_weights(np.ones(5, bool))
