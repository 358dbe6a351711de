"""Explanation-quality metrics of every (unit, concept) pair beyond AUC and AUPRC.

NeuronEval (Oikarinen et al., ICML 2025) found that of the common neuron-explanation metrics only
correlation, cosine similarity, AUPRC, F1 and IoU pass both of its sanity checks (an explanation
missing part of the concept's images, or adding unrelated ones, must score worse); neuronscan
computes these for every pair, and `neuronscan sanity` (:mod:`._sanity`) measures the checks here.

For unit values ``x`` over N images and a concept's 0/1 labels ``y`` with ``n`` positives:

* **top set** ``T``: the images with ``x >= t`` where ``t`` is the unit's ``k``-th largest value,
  ``k = ceil(top_quantile * N)`` (NetDissect's top quantile; NeuronEval's ``_binarize_act``). Ties
  at ``t`` are all in ``T``, so ``|T| >= k`` (a unit that is exactly a concept rarer than the top
  quantile has ``t = 0`` and every image in ``T``; a top quantile at most the concept's frequency avoids it);
* **F1** ``= 2 |T ∩ C| / (|T| + n)`` and **IoU** ``= |T ∩ C| / (|T| + n - |T ∩ C|)``;
* **correlation**: Pearson's r between ``x`` and ``y`` (the point-biserial correlation),
  ``r = (sum_C (x - mean x) / N) / sqrt(var x * p (1 - p))`` with ``p = n / N`` and population
  variances; NaN for a constant unit;
* **cosine** ``= sum_C x / (||x|| sqrt(n))``; NaN for an all-zero unit.

Every metric is NaN for a concept with no positive or no negative image (as AUC is). Non-finite
activations follow the ranking's order (NaN and ``-inf`` lowest, ``+inf`` highest): before these
metrics they are replaced by the unit's lowest finite value (NaN, ``-inf``) or its highest
(``+inf``); a unit with no finite value is constant.

Cost per block of K units: one sparse-dense product ``labels.T @ x`` (``nnz * K``), a partition per
unit for ``t``, and a gather of the top images' label rows (``|T| * labels per image``).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from ._validate import as_activations, fmt_shape

__all__ = ["METRIC_KEYS", "label_metrics", "top_set_threshold"]

METRIC_KEYS = ("f1", "iou", "correlation", "cosine")
"""The pair columns :func:`label_metrics` returns, in order."""


def top_set_threshold(x: np.ndarray, top_quantile: float) -> float:
    """The unit's ``k``-th largest value, ``k = ceil(top_quantile * N)`` (at least 1)."""
    n = x.shape[0]
    k = min(n, max(1, math.ceil(top_quantile * n)))
    return float(np.partition(x, n - k)[n - k])


def _finite_values(x: np.ndarray) -> np.ndarray:
    """``x`` (one unit, float64) with NaN/-inf at its lowest finite value and +inf at its highest."""
    finite = np.isfinite(x)
    if finite.all():
        return x
    if not finite.any():
        return np.zeros_like(x)
    lo, hi = x[finite].min(), x[finite].max()
    return np.where(finite, x, np.where(x == np.inf, hi, lo))


def _unit_major(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unit-major float64 values (non-finite ones placed), centred values, means and sums of squares.

    Every statistic is computed one unit at a time, from its own contiguous row: the same bits whatever
    the number of units in the block (numpy reduces a multi-row axis in another order than one row).
    """
    n_images, n_units = a.shape
    x = np.empty((n_units, n_images), dtype=np.float64)
    xc = np.empty_like(x)
    mean = np.empty(n_units)
    sxx = np.empty(n_units)
    for k in range(n_units):
        x[k] = _finite_values(np.asarray(a[:, k], dtype=np.float64))
        mean[k] = x[k].mean()
        np.subtract(x[k], mean[k], out=xc[k])
        sxx[k] = xc[k] @ xc[k]
    return x, xc, mean, sxx


def label_metrics(activations: object, labels: object, *, top_quantile: float = 0.005) -> dict[str, np.ndarray]:
    """F1, IoU (at the unit's top quantile), correlation and cosine of every (unit, concept) pair.

    Args:
        activations: ``(n_images, n_units)`` float activations (any strides).
        labels: ``(n_images, n_concepts)`` 0/1 scipy.sparse matrix or bool ndarray.
        top_quantile: fraction of images in a unit's top set, in ``(0, 1]``.

    Returns:
        ``{"f1", "iou", "correlation", "cosine"}``: ``(n_units, n_concepts)`` float64 each, and
        ``"top_size"``: ``(n_units,)`` int64 ``|T|``.

    Raises:
        ValueError: shapes disagree or ``top_quantile`` is outside ``(0, 1]``.

    Example:
        >>> x = np.array([[0.0], [0.0], [1.0], [1.0]])
        >>> y = np.array([[0], [0], [1], [1]], dtype=bool)
        >>> m = label_metrics(x, y, top_quantile=0.25)
        >>> [float(m[k][0, 0]) for k in ("f1", "iou", "correlation", "cosine")]
        [1.0, 1.0, 1.0, 1.0]
    """
    a = as_activations(activations)
    n_images, n_units = a.shape
    if not 0.0 < float(top_quantile) <= 1.0:
        raise ValueError(f"top_quantile must lie in (0, 1]; got {top_quantile!r}")
    if sp.issparse(labels):
        y = sp.csr_matrix(labels, dtype=np.float64)
    else:
        y = sp.csr_matrix(np.asarray(labels).astype(bool), dtype=np.float64)
    if y.ndim != 2 or y.shape[0] != n_images:
        raise ValueError(
            f"labels must have shape ({n_images}, n_concepts) to match the activations; got {fmt_shape(y.shape)}"
        )
    y.sum_duplicates()
    if y.nnz and (y.data != 1.0).any():
        y.data = (y.data != 0).astype(np.float64)
        y.eliminate_zeros()
    n_concepts = y.shape[1]
    n_pos = np.asarray(y.sum(axis=0)).ravel()
    scored = (n_pos > 0) & (n_pos < n_images)

    corr = np.empty((n_units, n_concepts))
    cosine = np.empty((n_units, n_concepts))
    inter = np.empty((n_units, n_concepts))
    top_size = np.empty(n_units, dtype=np.int64)
    # Blocks of units small enough that their float64 copies stay near _BLOCK_BYTES (a shard of 32 units
    # at 1.28M images would otherwise hold ~650 MiB of copies).
    step = max(1, min(n_units, _BLOCK_BYTES // (16 * max(n_images, 1))))
    for s in range(0, n_units, step):
        e = min(n_units, s + step)
        corr[s:e], cosine[s:e], inter[s:e], top_size[s:e] = _block(a[:, s:e], y, n_pos, top_quantile)
    t = top_size[:, None].astype(np.float64)
    n = n_pos[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * inter / (t + n)
        iou = inter / (t + n - inter)
    out = {"f1": f1, "iou": iou, "correlation": corr, "cosine": cosine}
    for key in METRIC_KEYS:
        out[key] = np.where(scored[None, :], out[key], np.nan)
    out["top_size"] = top_size
    return out


_BLOCK_BYTES = 64 << 20


def _block(a: np.ndarray, y: sp.csr_matrix, n_pos: np.ndarray, top_quantile: float) -> tuple:
    """Correlation, cosine, top-set overlap ``(K, C)`` and top-set sizes ``(K,)`` of a block of units."""
    n_images, n_units = a.shape
    n_concepts = y.shape[1]
    x, xc, mean, sxx = _unit_major(a)
    norm = np.sqrt(np.array([x[k] @ x[k] for k in range(n_units)]))
    centred_sums = np.asarray(y.T @ xc.T).T  # (K, C): sum over each concept of x - mean
    del xc
    pos_sums = centred_sums + mean[:, None] * n_pos[None, :]
    p = n_pos / n_images
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = (centred_sums / n_images) / np.sqrt(np.outer(sxx / n_images, p * (1 - p)))
        corr = np.where((sxx > 0)[:, None], corr, np.nan)
        cosine = pos_sums / np.outer(norm, np.sqrt(n_pos))
        cosine = np.where(np.outer(norm > 0, n_pos > 0), cosine, np.nan)
    # Top sets and their overlap with each concept, from the label rows of the top images.
    top_size = np.empty(n_units, dtype=np.int64)
    inter = np.empty((n_units, n_concepts), dtype=np.float64)
    indptr, indices = y.indptr.astype(np.int64), y.indices
    for k in range(n_units):
        rows = np.flatnonzero(x[k] >= top_set_threshold(x[k], top_quantile))
        top_size[k] = rows.size
        starts, lens = indptr[rows], indptr[rows + 1] - indptr[rows]
        total = int(lens.sum())
        if total == 0:
            inter[k] = 0.0
            continue
        offsets = np.cumsum(lens) - lens
        within = np.arange(total, dtype=np.int64) - np.repeat(offsets, lens)
        inter[k] = np.bincount(indices[np.repeat(starts, lens) + within], minlength=n_concepts)
    return corr, cosine, inter, top_size
