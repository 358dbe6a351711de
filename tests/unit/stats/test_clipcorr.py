"""CLIP correlation against the naive formula: scipy's pearsonr of each unit with each word's similarity."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr

from neuronscan.stats import clip_correlation, clip_correlation_from_moments, clip_moments, embedding_covariance

from ._data import tied_activations


def _naive(a: np.ndarray, e: np.ndarray, t: np.ndarray) -> np.ndarray:
    sims = e.astype(np.float64) @ t.astype(np.float64).T
    out = np.full((a.shape[1], t.shape[0]), np.nan)
    for u in range(a.shape[1]):
        for c in range(t.shape[0]):
            if np.ptp(a[:, u]) > 0 and np.ptp(sims[:, c]) > 0:
                out[u, c] = pearsonr(a[:, u], sims[:, c]).statistic
    return out


def _embeddings(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    # CLIP-like: a large shared direction plus a small varying part, normalised (the mean dominates, which is
    # what makes an uncentred covariance lose digits).
    e = 3.0 * rng.normal(size=d) + 0.3 * rng.normal(size=(n, d))
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equals_pearsonr_on_tied_activations(dtype):
    rng = np.random.default_rng(0)
    a = tied_activations(rng, 700, 9, decimals=1, dtype=dtype)
    a[:, 3] = 0.5  # a constant unit
    e = _embeddings(rng, 700, 16)
    t = rng.normal(size=(11, 16)).astype(np.float32)
    got = clip_correlation(a, e, t)
    want = _naive(a.astype(np.float64), e, t)
    assert np.isnan(got[3]).all() and np.isnan(want[3]).all()
    np.testing.assert_allclose(got, want, atol=5e-7, rtol=0)
    assert np.array_equal(np.argmax(np.nan_to_num(got, nan=-2), 1), np.argmax(np.nan_to_num(want, nan=-2), 1))


def test_non_finite_activations_are_placed_at_the_units_extremes():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 3))
    a[5, 0], a[6, 0], a[7, 1] = np.nan, np.inf, -np.inf
    e, t = _embeddings(rng, 300, 8), rng.normal(size=(4, 8))
    placed = a.copy()
    finite = np.isfinite(a[:, 0])
    placed[5, 0], placed[6, 0] = a[finite, 0].min(), a[finite, 0].max()
    placed[7, 1] = a[np.isfinite(a[:, 1]), 1].min()
    np.testing.assert_allclose(clip_correlation(a, e, t), _naive(placed, e, t), atol=5e-7, rtol=0)


def test_constant_word_similarity_is_nan_and_a_planted_word_wins():
    rng = np.random.default_rng(2)
    e = _embeddings(rng, 2000, 12).astype(np.float64)
    e[:, 0] = 0.0  # no image varies along axis 0 ...
    e = e.astype(np.float32)
    t = rng.normal(size=(5, 12))
    t[4] = 0.0
    t[4, 0] = 1.0  # ... so word 4's similarity is constant
    a = np.stack([e.astype(np.float64) @ t[2], -(e.astype(np.float64) @ t[2]), np.exp(e @ t[1])], axis=1)
    r = clip_correlation(a, e, t)
    assert np.isnan(r[:, 4]).all()
    assert r[0, 2] == pytest.approx(1.0, abs=1e-6) and r[1, 2] == pytest.approx(-1.0, abs=1e-6)
    assert np.nanargmax(r[2]) == 1


def test_moments_are_per_unit_and_add_up_over_blocks(monkeypatch):
    """A unit's moment does not depend on its shard (to float32 rounding: BLAS may order a product's sums by
    its shape), and the float32 blocks add up to the one-block answer."""
    from neuronscan.stats import _clipcorr

    rng = np.random.default_rng(3)
    a, e = rng.normal(size=(5000, 6)), _embeddings(rng, 5000, 10)
    m_all, c_all = clip_moments(a, e)
    m_two, _ = clip_moments(a[:, 2:4], e)
    np.testing.assert_allclose(m_two, m_all[2:4], atol=1e-6 * np.abs(m_all).max(), rtol=0)
    monkeypatch.setattr(_clipcorr, "_ROWS", 333)
    m_blocks, _ = clip_moments(a, e)
    np.testing.assert_allclose(m_blocks, m_all, atol=1e-6 * np.abs(m_all).max(), rtol=0)
    # Centred by the caller (the score stage centres on the run's mean once): the same moments.
    m_given, _ = clip_moments(a, e - e.mean(axis=0, dtype=np.float64).astype(np.float32), centred=True)
    np.testing.assert_allclose(m_given, m_all, atol=1e-6 * np.abs(m_all).max(), rtol=0)
    cov = embedding_covariance(e)
    np.testing.assert_allclose(cov, np.cov(e.astype(np.float64).T, bias=True), atol=1e-12, rtol=1e-9)
    t = rng.normal(size=(3, 10))
    np.testing.assert_allclose(clip_correlation_from_moments(m_all, c_all, cov, t), _naive(a, e, t), atol=2e-6)


def test_bad_shapes_are_refused():
    rng = np.random.default_rng(4)
    a, e = rng.normal(size=(50, 2)), rng.normal(size=(50, 4))
    with pytest.raises(ValueError, match="image embeddings must have shape"):
        clip_correlation(a, e[:40], rng.normal(size=(3, 4)))
    with pytest.raises(ValueError, match="text embeddings must have shape"):
        clip_correlation(a, e, rng.normal(size=(3, 5)))
    bad = e.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        clip_correlation(a, bad, rng.normal(size=(3, 4)))


def test_a_shard_whose_images_have_no_embedding_gets_no_correlation():
    from pipelines.score import _clip_correlations, _clip_moments, centred_embeddings

    rng = np.random.default_rng(5)
    emb, text = _embeddings(rng, 30, 6), rng.normal(size=(4, 6))
    clip = {"image_ids": np.arange(100, 130), "embeddings": emb, "text": text,
            "centred_embeddings": centred_embeddings(emb)}
    part = _clip_moments(np.arange(5), rng.normal(size=(5, 3)), clip)  # ids 0..4: none embedded
    assert part["n"] == 0 and part["constant"].all()
    assert np.isnan(_clip_correlations({"layer": [part]}, clip)["layer"]).all()
    # ... and a shard that shares some images is scored over those alone
    ids = np.array([3, 101, 7, 120, 105, 110, 111, 129])
    acts = rng.normal(size=(8, 2))
    got = _clip_correlations({"layer": [_clip_moments(ids, acts, clip)]}, clip)["layer"]
    have = ids >= 100
    np.testing.assert_allclose(got, _naive(acts[have], emb[ids[have] - 100], text), atol=5e-7)
