"""What "significant" means, and the per-unit summary built on it (numbers in, numbers out).

One rule, used by the score stage, the report and the diff alike:

* a (unit, concept) pair is **significant** when its Benjamini–Hochberg ``q_value <= alpha`` and its
  ``auc > 0.5`` (the unit is higher on the concept's images; with a one-sided p-value and
  ``alpha < 0.5`` the second condition only excludes NaN);
* a pair is **aligned** when it is significant and ``auc >= min_auc`` — an effect large enough to
  name the unit by. Multimodal and spurious flags, and the concepts a diff reports as gained or lost,
  use aligned pairs;
* ``n_significant`` of a unit counts its significant concepts.

NaN q-values or AUCs (a concept with no positive or no negative image) are never significant.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

__all__ = ["significant_mask", "aligned_mask", "best_concepts", "multimodal_units", "summarize_units"]


def significant_mask(q_value: np.ndarray, auc: np.ndarray, alpha: float) -> np.ndarray:
    """Boolean mask of significant pairs: ``q_value <= alpha`` and ``auc > 0.5`` (NaN is never significant).

    Args:
        q_value, auc: arrays of one shape, e.g. ``(n_units, n_concepts)``.
        alpha: the FDR level.

    Example:
        >>> significant_mask(np.array([0.01, 0.01, np.nan]), np.array([0.9, 0.4, 0.9]), 0.05).tolist()
        [True, False, False]
    """
    q = np.nan_to_num(np.asarray(q_value, dtype=np.float64), nan=1.0)
    a = np.nan_to_num(np.asarray(auc, dtype=np.float64), nan=0.0)
    return (q <= alpha) & (a > 0.5)


def aligned_mask(q_value: np.ndarray, auc: np.ndarray, alpha: float, min_auc: float) -> np.ndarray:
    """Significant pairs whose ``auc >= min_auc`` (the bar for multimodal, spurious, gained and lost)."""
    a = np.nan_to_num(np.asarray(auc, dtype=np.float64), nan=0.0)
    return significant_mask(q_value, auc, alpha) & (a >= min_auc)


def best_concepts(auc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's highest-scoring concept (ties: the first), and whether it has any finite score.

    Args:
        auc: ``(n_units, n_concepts)`` AUC, or the metric ``score.rank_by`` names.

    Returns:
        ``(best, has_best)``: ``(n_units,)`` concept indices and booleans.
    """
    auc = np.asarray(auc, dtype=np.float64)
    n_units, n_concepts = auc.shape
    if n_concepts == 0:
        return np.zeros(n_units, dtype=np.int64), np.zeros(n_units, dtype=bool)
    finite = np.where(np.isfinite(auc), auc, -np.inf)
    best = np.argmax(finite, axis=1)
    return best, np.isfinite(finite[np.arange(n_units), best])


def multimodal_units(
    aligned: np.ndarray, concepts: Sequence[str], ancestors: Mapping[str, Collection[str]] | None
) -> np.ndarray:
    """Units aligned with two concepts that share no ancestor and neither of which contains the other.

    Without a hierarchy (``ancestors`` None) any two aligned concepts make a unit multimodal.

    Args:
        aligned: ``(n_units, n_concepts)`` from `aligned_mask`.
        ancestors: concept → its ancestors (``neuronscan.concepts.ancestors_map``).
    """
    out = np.zeros(aligned.shape[0], dtype=bool)
    for k in np.nonzero(aligned.sum(1) >= 2)[0]:
        if ancestors is None:
            out[k] = True
            continue
        names = [concepts[j] for j in np.nonzero(aligned[k])[0]]
        families = [set(ancestors.get(n, ())) | {n} for n in names]
        out[k] = any(not (families[i] & families[j]) for i in range(len(names)) for j in range(i + 1, len(names)))
    return out


def summarize_units(
    *,
    auc: np.ndarray,
    auprc: np.ndarray,
    q_value: np.ndarray,
    concepts: Sequence[str],
    alpha: float,
    min_auc: float,
    p_perm: np.ndarray | None = None,
    ancestors: Mapping[str, Collection[str]] | None = None,
    spurious_concepts: Collection[str] = (),
    rank_by: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray | list]:
    """The per-unit summary of one layer: best concept, ``n_significant`` and the flags.

    Args:
        auc, auprc, q_value, p_perm: ``(n_units, n_concepts)``; ``p_perm`` NaN where untested.
        concepts: the ``n_concepts`` names.
        alpha, min_auc: see the module docstring.
        ancestors: concept → ancestors, for the multimodal flag.
        spurious_concepts: concepts a unit should not be aligned with.
        rank_by: ``(n_units, n_concepts)`` scores that choose the best concept (default: ``auc``).
        extra: more ``(n_units, n_concepts)`` arrays to read at the best concept, by output name.

    Returns:
        Columns of ``neurons.parquet``: ``best_concept`` (None for a unit without a finite
        ``rank_by`` score), ``best_auc``, ``best_auprc``, ``best_q``, ``best_p_perm``, the ``extra``
        names, ``n_significant`` (int32), ``multimodal`` and ``spurious`` (bool).
    """
    auc = np.asarray(auc, dtype=np.float64)
    n_units, n_concepts = auc.shape
    best, has_best = best_concepts(auc if rank_by is None else rank_by)
    rows = np.arange(n_units)

    def at_best(values: np.ndarray | None) -> np.ndarray:
        if values is None or n_concepts == 0:
            return np.full(n_units, np.nan)
        return np.where(has_best, np.asarray(values, dtype=np.float64)[rows, best], np.nan)

    aligned = aligned_mask(q_value, auc, alpha, min_auc)
    spurious = np.zeros(n_concepts, dtype=bool)
    wanted = set(spurious_concepts)
    if wanted:
        spurious = np.array([c in wanted for c in concepts], dtype=bool)
    return {
        "best_concept": [concepts[b] if h else None for b, h in zip(best, has_best)],
        "best_auc": at_best(auc),
        "best_auprc": at_best(auprc),
        "best_q": at_best(q_value),
        "best_p_perm": at_best(p_perm),
        **{name: at_best(values) for name, values in (extra or {}).items()},
        "n_significant": significant_mask(q_value, auc, alpha).sum(1).astype(np.int32),
        "multimodal": multimodal_units(aligned, concepts, ancestors),
        "spurious": (aligned & spurious).any(1) if n_concepts else np.zeros(n_units, dtype=bool),
    }
