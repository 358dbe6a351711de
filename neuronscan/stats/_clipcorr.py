"""CLIP correlation: Pearson r between a unit's activations and each word's CLIP similarity, over all images.

For unit ``u`` and word ``c``, with image embeddings ``e_i`` and text embedding ``t_c``, the word's similarity
on image ``i`` is ``s_ic = e_i · t_c`` and the label-free score is the correlation of ``a_u`` with ``s_c``
over the images, the image-wide similarity of CLIP-Dissect's correlation-type similarity functions. The label
is the word of highest r: a unit is named after the word whose CLIP similarity rises and falls with it over
the *whole* activation range, as the labelled ``rank_by: correlation`` names it after the concept whose
indicator does, rather than after the words over-represented among its top images (soft-WPMI).

The ``(n_images, n_words)`` similarity matrix is never formed. With ``z`` the unit's standardised
activations (mean 0, population variance 1),

    r_uc = (1/n) sum_i z_i s_ic / sd(s_c) = (m_u · t_c) / sqrt(t_c' Σ t_c),  m_u = (1/n) sum_i z_i e_i,

because ``sum_i z_i = 0`` removes the similarities' mean, and ``Σ`` is the embeddings' population covariance.
So a shard of units needs one ``(K, n) @ (n, D)`` product (:func:`clip_moments`), and the run one ``D × D``
covariance per image set and one ``(U, D) @ (D, C)`` product (:func:`clip_correlation_from_moments`):
``O(n K D)`` per shard and ``O(C D²)`` once, against ``O(n K C)`` for the similarity matrix. 50,000 images ×
2,048 units × 20,000 words at D = 512 is 7e10 multiply-adds instead of 2e12.

Non-finite activations are placed as in :mod:`._metrics` (NaN and -inf at the unit's lowest finite value,
+inf at its highest). A constant unit, or a word whose similarity is constant, has r = NaN.

The image products run in float32 on centred embeddings over blocks of ``_ROWS`` images and add up in
float64 (the embeddings stay float32: a float64 copy of ImageNet's would be 5 GB); the covariance and the
words' variances are float64, the final ``(K, D) @ (D, C)`` product float32. Scores are within ~1e-6 of
the float64 formula, and a unit's do not depend on its shard beyond that (BLAS may order a product's sums by
its shape).
"""

from __future__ import annotations

import numpy as np

from ._metrics import _finite_values
from ._validate import as_activations, fmt_shape

__all__ = ["clip_correlation", "clip_correlation_from_moments", "clip_moments", "embedding_covariance"]

_ROWS = 16384  # images per float32 block of the products


def _embeddings(embeddings: object, n_images: int | None = None) -> np.ndarray:
    e = np.asarray(embeddings)
    if e.ndim != 2 or (n_images is not None and e.shape[0] != n_images):
        want = f"({n_images}, D)" if n_images is not None else "(n_images, D)"
        raise ValueError(f"image embeddings must have shape {want}; got {fmt_shape(e.shape)}")
    if not np.isfinite(e).all():
        raise ValueError("image embeddings must be finite")
    return np.ascontiguousarray(e, dtype=np.float32)


def clip_moments(activations: object, embeddings: object, *, centred: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's ``m_u = (1/n) sum_i z_i e_i`` (its standardised activations times the image embeddings).

    Args:
        activations: ``(n_images, K)`` activations of K units.
        embeddings: ``(n_images, D)`` image embeddings of the same images, in the same order.
        centred: the caller already subtracted a common vector from the embeddings (any constant vector leaves
            ``m`` unchanged, as ``sum_i z_i = 0``; a mean keeps float32 from cancelling), e.g. the whole run's
            mean once for every shard; otherwise these embeddings' mean is subtracted, block by block.

    Returns:
        ``(m, constant)``: ``(K, D)`` float64 moments (zero for a constant unit) and ``(K,)`` bool, True where
        the unit is constant over the images (its correlations are NaN).
    """
    a = as_activations(activations)
    n_images, n_units = a.shape
    e = _embeddings(embeddings, n_images)
    z = np.empty((n_units, n_images), dtype=np.float32)
    constant = np.zeros(n_units, dtype=bool)
    for k in range(n_units):  # one unit at a time: a unit's z has the same bits whatever the shard size
        x = _finite_values(np.asarray(a[:, k], dtype=np.float64))
        xc = x - x.mean() if n_images else x
        sd = np.sqrt(xc @ xc / n_images) if n_images else 0.0
        if not sd > 0:
            constant[k] = True
            z[k] = 0.0
        else:
            z[k] = xc / sd
    # Centred embeddings: CLIP's share a large common direction, which sum(z) = 0 cancels exactly in theory
    # and catastrophically in float32 (terms ~|e|, result ~|e - mean|).
    centre = None if centred else _mean(e).astype(np.float32)
    m = np.zeros((n_units, e.shape[1]), dtype=np.float64)
    for start in range(0, n_images, _ROWS):
        block = e[start : start + _ROWS]
        m += z[:, start : start + _ROWS] @ (block if centre is None else block - centre)
    if n_images:
        m /= n_images
    return m, constant


def _mean(e: np.ndarray) -> np.ndarray:
    mean = np.zeros(e.shape[1])
    for start in range(0, e.shape[0], _ROWS):
        mean += e[start : start + _ROWS].sum(axis=0, dtype=np.float64)
    return mean / max(e.shape[0], 1)


def embedding_covariance(embeddings: object) -> np.ndarray:
    """``(D, D)`` float64 population covariance of the image embeddings (centred before the product)."""
    e = _embeddings(embeddings)
    n, d = e.shape
    if n == 0:
        return np.zeros((d, d))
    mean = _mean(e)
    cov = np.zeros((d, d))
    for start in range(0, n, _ROWS):
        block = e[start : start + _ROWS].astype(np.float64) - mean
        cov += block.T @ block
    return cov / n


def clip_correlation_from_moments(
    moments: np.ndarray, constant: np.ndarray, covariance: np.ndarray, text_embeddings: object
) -> np.ndarray:
    """``(K, C)`` float64 Pearson r of every unit with every word's similarity, from `clip_moments`.

    Args:
        moments, constant: `clip_moments` of the units.
        covariance: `embedding_covariance` of the same images' embeddings.
        text_embeddings: ``(C, D)`` word embeddings.
    """
    m = np.asarray(moments, dtype=np.float64)
    t = np.asarray(text_embeddings, dtype=np.float64)
    cov = np.asarray(covariance, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != m.shape[1] or cov.shape != (m.shape[1], m.shape[1]):
        raise ValueError(f"text embeddings must have shape (C, {m.shape[1]}) and the covariance "
                         f"({m.shape[1]}, {m.shape[1]}); got {fmt_shape(t.shape)} and {fmt_shape(cov.shape)}")
    var = np.einsum("cd,cd->c", t @ cov, t)  # float64: the denominators, once per word
    # A word whose similarity is constant over the images: its variance is rounding noise (relative to the
    # similarity's own scale), and r is undefined.
    scale = np.einsum("cd,cd->c", t, t) * max(float(np.trace(cov)), 0.0)
    ok = var > 1e-12 * np.maximum(scale, 1e-300)
    # The (K, C) product in float32 (twice BLAS's float64 rate; ~1e-7 relative on r), scaled in float64.
    r = (m.astype(np.float32) @ (t / np.sqrt(np.where(ok, var, 1.0))[:, None]).astype(np.float32).T).astype(np.float64)
    r[:, ~ok] = np.nan
    r[np.asarray(constant, dtype=bool)] = np.nan
    return np.clip(r, -1.0, 1.0, out=r, where=~np.isnan(r))


def clip_correlation(activations: object, image_embeddings: object, text_embeddings: object) -> np.ndarray:
    """``(n_units, n_words)`` Pearson r of each unit's activations with each word's CLIP similarity.

    Args:
        activations: ``(n_images, n_units)``.
        image_embeddings: ``(n_images, D)`` CLIP image embeddings (normalised or not), same image order.
        text_embeddings: ``(n_words, D)`` CLIP text embeddings.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> e, t = rng.normal(size=(500, 8)), rng.normal(size=(3, 8))
        >>> a = (e @ t[1])[:, None] * 2.0 + 1.0        # a unit that is word 1's similarity
        >>> r = clip_correlation(a, e, t)
        >>> int(np.argmax(r[0])), round(float(r[0, 1]), 6)
        (1, 1.0)
    """
    a = as_activations(activations)
    e = _embeddings(image_embeddings, a.shape[0])
    m, constant = clip_moments(a, e)
    return clip_correlation_from_moments(m, constant, embedding_covariance(e), text_embeddings)
