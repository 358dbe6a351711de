"""One-sided Mann-Whitney U p-values (normal approximation, tie and continuity corrected).

For a unit with tie groups of sizes ``t`` over N images and a concept with ``n`` positives and
``m = N - n`` negatives, under H0 (the unit does not rank positives higher):

    E[U]   = n m / 2
    Var[U] = n m / 12 * ((N + 1) - sum_t (t**3 - t) / (N (N - 1)))
    z      = (U - E[U] - 1/2) / sqrt(Var[U])
    p      = P(Z >= z) = ndtr(-z),         log p = log_ndtr(-z)

exactly as ``scipy.stats.mannwhitneyu(pos, neg, alternative='greater', method='asymptotic')``
computes it in float64. ``log p`` stays finite where ``p`` underflows to 0 (a perfectly separating
unit over many images has ``z`` in the hundreds).

A dead (constant) unit has ``Var[U] = 0`` and ``U = E[U]``, so ``z = -inf`` and ``p = 1``,
``log p = 0`` -- the value scipy returns for all-tied samples.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr, ndtr

from ._auc import _check_pairs
from ._validate import fmt_shape

__all__ = ["mannwhitney_pvalue", "mannwhitney_pvalues", "mannwhitney_z"]


def mannwhitney_pvalues(
    u: np.ndarray,
    n_pos: np.ndarray,
    n_images: int,
    tie_term: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """P-values of the one-sided test "the unit is higher on the concept's images".

    Args:
        u: ``(n_units, n_concepts)`` Mann-Whitney U of the positives (see :func:`auc_from_ranks`).
        n_pos: ``(n_concepts,)`` positives per concept.
        n_images: N.
        tie_term: ``(n_units,)`` ``sum_t (t**3 - t)`` over each unit's tie groups.

    Returns:
        ``(p_value, log_p)``, each ``(n_units, n_concepts)`` float64; NaN where a concept has no
        positive or no negative image, or ``u`` is NaN.

    Raises:
        ValueError: shapes disagree.

    Example:
        >>> p, log_p = mannwhitney_pvalues(np.array([[2.0]]), np.array([1]), 3, np.array([0.0]))
        >>> round(float(p[0, 0]), 6)
        0.270146
    """
    u = np.asarray(u, dtype=np.float64)
    n = np.asarray(n_pos, dtype=np.float64)
    _check_pairs(u, n, n_images, "u")
    tie_term = np.asarray(tie_term, dtype=np.float64)
    if tie_term.shape != (u.shape[0],):
        raise ValueError(
            f"tie_term has shape {fmt_shape(tie_term.shape)} but u has {u.shape[0]:,} units "
            f"(shape {fmt_shape(u.shape)})"
        )
    z = mannwhitney_z(u, n, n_images, tie_term[:, None])
    with np.errstate(invalid="ignore"):
        p = np.clip(ndtr(-z), 0.0, 1.0)
        log_p = np.minimum(log_ndtr(-z), 0.0)
    undefined = (n == 0) | (n == n_images)
    p[:, undefined] = np.nan
    log_p[:, undefined] = np.nan
    return p, log_p


def mannwhitney_z(u: object, n_pos: object, n_images: int, tie_term: object) -> np.ndarray:
    """``z = (U - E[U] - 1/2) / sqrt(Var[U])``, elementwise with broadcasting, no shape checks.

    The one z formula of the package: :func:`mannwhitney_pvalues` (``tie_term`` as
    ``(n_units, 1)`` against ``n_pos (n_concepts,)``) and :func:`mannwhitney_pvalue` compute it
    here. ``Var[U]`` is 0 when ``tie_term >= N**3 - N`` (every image tied: a constant unit), so
    ``z`` is ``-inf`` there when ``U = E[U]``.

    Args:
        u: Mann-Whitney U of the positives.
        n_pos: positives, broadcastable against ``u``.
        n_images: N.
        tie_term: ``sum_t (t**3 - t)`` over the unit's tie groups, broadcastable against ``u``.

    Returns:
        float64 array of the broadcast shape (0-d for scalars).
    """
    u = np.asarray(u, dtype=np.float64)
    n = np.asarray(n_pos, dtype=np.float64)
    tie_term = np.asarray(tie_term, dtype=np.float64)
    big_n = float(n_images)
    m = big_n - n
    with np.errstate(divide="ignore", invalid="ignore"):
        # Per unit: (N + 1) - tie_term / (N (N - 1)); exactly 0 for a constant unit.
        spread = (big_n + 1) - tie_term / (big_n * (big_n - 1))
        spread = np.where(tie_term >= big_n**3 - big_n, 0.0, spread)
        s = np.sqrt(n * m / 12 * spread)
        return (u - n * m / 2 - 0.5) / s


def mannwhitney_pvalue(u: object, n_pos: object, n_images: int, tie_term: object) -> np.ndarray:
    """One-sided p-value ``P(Z >= z)`` from U, elementwise with broadcasting (see
    :func:`mannwhitney_z`); no shape checks, and no NaN for ``n_pos`` 0 or N (callers pass sizes
    where U is defined).

    Example:
        >>> round(float(mannwhitney_pvalue(2.0, 1, 3, 0.0)), 6)
        0.270146
    """
    z = mannwhitney_z(u, n_pos, n_images, tie_term)
    with np.errstate(invalid="ignore"):
        return np.clip(ndtr(-z), 0.0, 1.0)
