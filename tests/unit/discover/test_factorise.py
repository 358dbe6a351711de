"""The factorisations against scikit-learn's own reconstructions; inputs each method refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronscan.discover import METHODS, fit_factorisation
from neuronscan.errors import InputError


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    w = rng.uniform(0, 1, size=(4, 12)) ** 3
    u = rng.exponential(1.0, size=(200, 4)) * (rng.random((200, 4)) < 0.5)
    return u @ w + 0.01 * rng.random((200, 12))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_fits_transforms_and_decodes(rows, method):
    fact, u = fit_factorisation(rows, method, 4, seed=0, max_iter=300)
    assert fact.components.shape == (4, 12) and u.shape == (200, 4) and fact.offset.shape == (12,)
    # NMF and sparse coding re-solve U with W fixed (to their tolerance); the others are exact.
    assert np.allclose(fact.transform(rows), u, atol=1e-2 if method in ("nmf", "sparse_coding") else 1e-8)
    decoded = fact.decode(u)
    t = torch.tensor(u, dtype=torch.float64)
    assert np.allclose(fact.decode_torch(t).numpy(), decoded)
    est = fact.estimator
    if method == "nmf":
        assert np.allclose(decoded, u @ est.components_) and (u >= 0).all() and (fact.components >= 0).all()
    elif method in ("pca", "ica"):
        assert np.allclose(decoded, est.inverse_transform(est.transform(rows)), atol=1e-8)
    elif method == "kmeans":
        assert np.allclose(decoded, est.cluster_centers_[est.predict(rows)]) and set(np.unique(u)) <= {0.0, 1.0}
    else:
        assert (u >= 0).all() and np.linalg.norm(rows - decoded) / np.linalg.norm(rows) < 0.5
    if method in ("nmf", "pca"):
        assert np.linalg.norm(rows - decoded) / np.linalg.norm(rows) < 0.05  # 4 concepts explain the rows


def test_what_each_method_refuses(rows):
    with pytest.raises(InputError, match="non-negative"):
        fit_factorisation(rows - 0.5, "nmf", 4)
    with pytest.raises(InputError, match="non-negative"):
        fit_factorisation(rows - 0.5, "sparse_coding", 4)
    fit_factorisation(rows - 0.5, "pca", 4)  # PCA centres: negative values are fine
    with pytest.raises(InputError, match="fewer than n_concepts"):
        fit_factorisation(rows[:3], "nmf", 4)
    with pytest.raises(InputError, match="not one of"):
        fit_factorisation(rows, "svd", 4)
