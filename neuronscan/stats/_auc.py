"""AUC and Mann-Whitney U from rank sums, for every (unit, concept) pair at once.

With ``r`` a unit's average ranks over N images and ``R = sum of r over a concept's n positives``:

    U   = R - n (n + 1) / 2
    AUC = U / (n (N - n))  =  P(a_pos > a_neg) + P(a_pos == a_neg) / 2

which equals ``sklearn.metrics.roc_auc_score`` and the ``statistic`` of
``scipy.stats.mannwhitneyu(pos, neg)``. Average ranks are half-integers, so ``R`` and ``U`` are
exact in float64 up to ~2**52 (any realistic N).
"""

from __future__ import annotations

import numpy as np

from ._ranking import UnitRanks
from ._validate import as_labels, fmt_shape

__all__ = ["auc_from_rank_sums", "auc_from_ranks", "mannwhitney_u", "rank_sums"]


def rank_sums(ranks: UnitRanks, labels: object) -> np.ndarray:
    """Sum of each unit's average ranks over each concept's positive images.

    One sparse-dense product ``Y^T r``; exact in float64 (sums of half-integers).

    Args:
        ranks: :class:`UnitRanks` of ``n_units`` units over ``n_images`` images.
        labels: ``(n_images, n_concepts)`` 0/1 scipy.sparse matrix or bool ndarray.

    Returns:
        ``(n_units, n_concepts)`` float64.

    Example:
        >>> r = rank_units(np.array([[3.0], [1.0], [2.0]]))
        >>> rank_sums(r, np.array([[1], [0], [1]], bool))
        array([[5.]])
    """
    if not isinstance(ranks, UnitRanks):
        raise TypeError(f"ranks must be a UnitRanks from rank_units(); got {type(ranks).__name__}")
    y = as_labels(labels, ranks.n_images).astype(np.float64)
    return np.asarray((y.T @ np.asarray(ranks.ranks, order="F")).T)


def auc_from_ranks(
    rank_sum: np.ndarray, n_pos: np.ndarray, n_images: int
) -> tuple[np.ndarray, np.ndarray]:
    """AUC and Mann-Whitney U from rank sums.

    Args:
        rank_sum: ``(n_units, n_concepts)`` sums of average ranks over each concept's positives.
        n_pos: ``(n_concepts,)`` positives per concept.
        n_images: N, the number of ranked images.

    Returns:
        ``(auc, u)``, each ``(n_units, n_concepts)`` float64; NaN where a concept has no positive
        or no negative image (``n_pos`` 0 or N).

    Raises:
        ValueError: ``n_pos`` does not match the concept axis, or is outside ``0..n_images``.

    Example:
        >>> auc_from_ranks(np.array([[5.0]]), np.array([2]), 3)
        (array([[1.]]), array([[2.]]))
    """
    rank_sum = np.asarray(rank_sum, dtype=np.float64)
    n = np.asarray(n_pos, dtype=np.float64)
    _check_pairs(rank_sum, n, n_images, "rank_sum")
    u, auc, undefined = _u_and_auc(rank_sum, n, n_images)
    return auc, np.where(undefined, np.nan, u)


def auc_from_rank_sums(
    rank_sum: object,
    n_pos: object,
    n_images: int,
    *,
    keep: np.ndarray | None = None,
    fill: float = np.nan,
) -> np.ndarray:
    """AUC ``(R - n (n + 1) / 2) / (n (N - n))``, elementwise with broadcasting.

    The one AUC formula of the package: :func:`auc_from_ranks` and the compositional searches
    (formulas scored from rank sums, and the brute-force reference from dense masks) all compute
    it here, so their AUCs agree bit for bit. No shape checks: for callers that validated already.

    Args:
        rank_sum: sums of average ranks over each positive set (any shape).
        n_pos: sizes of the positive sets, broadcastable against ``rank_sum``; ``0..n_images``.
        n_images: N.
        keep: where to keep the AUC, a bool mask that must be False wherever ``n_pos`` is 0 or N
            (e.g. a support bound ``lo <= n_pos <= hi`` with ``lo >= 1``, ``hi <= N - 1``);
            default: exactly where the AUC is defined.
        fill: the value elsewhere.

    Returns:
        float64 array of the broadcast shape (0-d for scalars); ``fill`` (NaN by default) where
        not kept.

    Example:
        >>> float(auc_from_rank_sums(5.0, 2, 3))
        1.0
    """
    rank_sum = np.asarray(rank_sum, dtype=np.float64)
    n = np.asarray(n_pos, dtype=np.float64)
    if keep is None:
        return _u_and_auc(rank_sum, n, n_images, fill)[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = mannwhitney_u(rank_sum, n) / (n * (n_images - n))
    return np.where(keep, auc, fill)


def mannwhitney_u(rank_sum: object, n_pos: object) -> np.ndarray:
    """Mann-Whitney U of the positives, ``R - n (n + 1) / 2``, elementwise; exact in float64.

    Example:
        >>> float(mannwhitney_u(5.0, 2))
        2.0
    """
    n = np.asarray(n_pos, dtype=np.float64)
    return np.asarray(rank_sum, dtype=np.float64) - n * (n + 1) / 2


def _u_and_auc(
    rank_sum: np.ndarray, n: np.ndarray, n_images: int, fill: float = np.nan
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(U, AUC, undefined)`` from float64 rank sums and sizes; AUC is ``fill`` where undefined."""
    m = n_images - n
    u = mannwhitney_u(rank_sum, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = u / (n * m)
    undefined = (n == 0) | (m == 0)
    return u, np.where(undefined, fill, auc), undefined


def _check_pairs(values: np.ndarray, n_pos: np.ndarray, n_images: int, name: str) -> None:
    """Validate a ``(n_units, n_concepts)`` array against ``n_pos (n_concepts,)``."""
    if values.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_units, n_concepts); got shape {fmt_shape(values.shape)}"
        )
    if n_pos.shape != (values.shape[1],):
        raise ValueError(
            f"n_pos has shape {fmt_shape(n_pos.shape)} but {name} has {values.shape[1]:,} "
            f"concepts (shape {fmt_shape(values.shape)})"
        )
    if n_pos.size and (n_pos.min() < 0 or n_pos.max() > n_images):
        raise ValueError(
            f"n_pos must lie in 0..n_images={n_images:,}; got range "
            f"{n_pos.min():,.0f}..{n_pos.max():,.0f}"
        )
