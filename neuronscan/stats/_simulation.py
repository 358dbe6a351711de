"""Simulation scores: how well a unit's explanation predicts its activations on held-out images.

The simulation protocol (and Linear Explanations, Oikarinen & Weng, ICML 2024) judges an explanation by
the correlation between the unit's activations and a prediction made from the explanation alone, over the
whole activation range and on images the explanation was not fitted on. Three explanations per unit:

* **concept**: the concept with the highest correlation on the *fit* images; the prediction is its 0/1
  indicator, the score its correlation with the unit on the *held-out* images;
* **linear**: a sparse linear combination of concepts, fitted on the fit images by forward stepwise least
  squares (each step adds the candidate concept that most reduces the residual sum of squares, all weights
  refitted; at most ``max_terms`` terms, stopping when a term adds less than ``min_gain`` of R²), among the
  ``n_candidates`` concepts of highest absolute fit-image correlation; the score is the correlation of
  ``intercept + sum_j w_j y_j`` with the unit on the held-out images. Its first term is the concept of
  highest absolute correlation; weights are in activation units, negative ones mean "less on this
  concept";
* **formula**: the unit's compositional formula (searched on *all* images by the score stage, so its
  held-out correlation is optimistic; exploratory, like its p-value), as a 0/1 indicator.

The split is a function of the image id and the seed (SplitMix64 hash, ``holdout`` fraction held out), so
an image is in the same part in every run, shard and layer. A correlation is NaN where the prediction or
the held-out activations are constant. Non-finite activations are placed as in :mod:`._metrics`.

All sums come from two sparse-dense products (fit and held-out rows) plus, per unit, the co-occurrence
counts of its candidate concepts: ``O(nnz * K)`` for a block of K units and ``O(n_candidates^2)`` per step.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._metrics import _finite_values
from ._validate import as_activations, fmt_shape

__all__ = ["holdout_mask", "simulation_scores"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def holdout_mask(image_ids: np.ndarray, holdout: float, seed: int = 0) -> np.ndarray:
    """Which images are held out: ``splitmix64(id + seed * golden) / 2**64 < holdout``.

    Example:
        >>> m = holdout_mask(np.arange(100_000), 0.2, seed=0)
        >>> round(float(m.mean()), 2)
        0.2
    """
    if not 0.0 < float(holdout) < 1.0:
        raise ValueError(f"holdout must lie in (0, 1); got {holdout!r}")
    with np.errstate(over="ignore"):
        z = np.asarray(image_ids).astype(np.uint64) + np.uint64(int(seed) % 2**64) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < holdout


def _corr_from_sums(centred_sums: np.ndarray, n_pos: np.ndarray, n: int, sxx: np.ndarray) -> np.ndarray:
    """Point-biserial r of every (concept, unit) from concept sums of centred values: ``(C, K)``."""
    p = n_pos / max(n, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (centred_sums / n) / np.sqrt(np.outer(p * (1 - p), sxx / n))
    ok = np.outer((n_pos > 0) & (n_pos < n), sxx > 0)
    return np.where(ok, r, np.nan)


def _pearson(pred: np.ndarray, x: np.ndarray) -> float:
    pc, xc = pred - pred.mean(), x - x.mean()
    den = np.sqrt((pc @ pc) * (xc @ xc))
    return float(pc @ xc / den) if den > 0 else float("nan")


def simulation_scores(
    activations: object,
    labels: object,
    image_ids: np.ndarray,
    *,
    holdout: float = 0.2,
    seed: int = 0,
    max_terms: int = 5,
    n_candidates: int = 32,
    min_gain: float = 0.005,
    formula_masks: list[np.ndarray | None] | None = None,
) -> dict:
    """Held-out simulation correlations of each unit's concept, linear and formula explanations.

    Args:
        activations: ``(n_images, n_units)`` activations.
        labels: ``(n_images, n_concepts)`` 0/1 scipy.sparse matrix or bool ndarray.
        image_ids: ``(n_images,)`` integer ids (they decide the split).
        holdout: fraction of images held out, in ``(0, 1)``.
        seed: the split's seed.
        max_terms: most terms of a linear explanation (>= 1).
        n_candidates: concepts a linear explanation chooses from (>= 1).
        min_gain: a term must add at least this much fit-image R² (>= 0).
        formula_masks: per unit its formula's ``(n_images,)`` bool positive set, or None.

    Returns:
        ``concept`` (``(n_units,)`` int64, -1 without one), ``concept_corr``, ``linear_corr``,
        ``formula_corr`` (float64, NaN where undefined), ``linear_terms`` (per unit a list of concept
        indices, in the order chosen), ``linear_weights`` (per unit a list of floats), ``linear_intercept``,
        ``n_fit`` and ``n_holdout``.

    Raises:
        ValueError: shapes disagree or an argument is out of range.
    """
    a = as_activations(activations)
    n_images, n_units = a.shape
    y = sp.csc_matrix(labels if sp.issparse(labels) else np.asarray(labels).astype(bool), dtype=np.float64)
    if y.shape[0] != n_images:
        raise ValueError(f"labels must have {n_images} rows like the activations; got shape {fmt_shape(y.shape)}")
    ids = np.asarray(image_ids)
    if ids.shape != (n_images,):
        raise ValueError(f"image_ids must have shape ({n_images},); got {fmt_shape(ids.shape)}")
    if max_terms < 1 or n_candidates < 1 or min_gain < 0:
        raise ValueError(f"need max_terms >= 1, n_candidates >= 1, min_gain >= 0; got {max_terms}, "
                         f"{n_candidates}, {min_gain}")
    y.data[:] = 1.0
    n_concepts = y.shape[1]
    held = holdout_mask(ids, holdout, seed)
    fit = ~held
    n_fit, n_held = int(fit.sum()), int(held.sum())
    y_fit, y_held = y[fit], y[held]
    y_fit_csc = sp.csc_matrix(y_fit)
    npos_fit = np.asarray(y_fit.sum(axis=0)).ravel()
    npos_held = np.asarray(y_held.sum(axis=0)).ravel()

    out = {
        "concept": np.full(n_units, -1, dtype=np.int64),
        "concept_corr": np.full(n_units, np.nan),
        "linear_corr": np.full(n_units, np.nan),
        "formula_corr": np.full(n_units, np.nan),
        "linear_terms": [[] for _ in range(n_units)],
        "linear_weights": [[] for _ in range(n_units)],
        "linear_intercept": np.full(n_units, np.nan),
        "n_fit": n_fit,
        "n_holdout": n_held,
    }
    m_cand = min(int(n_candidates), n_concepts)
    # Blocks of units whose float64 copies (8 bytes per unit and image: the centred fit and held-out values)
    # stay near _BLOCK_BYTES; every statistic is per unit, so the blocks change no bit.
    step = max(1, min(n_units, _BLOCK_BYTES // (8 * max(n_images, 1))))
    fit_rows, held_rows = np.flatnonzero(fit), np.flatnonzero(held)
    for first in range(0, n_units, step):
        block = a[:, first : first + step]
        (xf_c, mean_f, sxx_f), (xh_c, _, sxx_h) = _split_centred(block, fit_rows, held_rows)
        sums_f = np.asarray(y_fit.T @ xf_c.T)  # (C, block)
        sums_h = np.asarray(y_held.T @ xh_c.T)
        del xf_c
        corr_f = _corr_from_sums(sums_f, npos_fit, n_fit, sxx_f)
        corr_h = _corr_from_sums(sums_h, npos_held, n_held, sxx_h)
        for j in range(block.shape[1]):
            k = first + j
            if formula_masks is not None and formula_masks[k] is not None:
                out["formula_corr"][k] = _pearson(np.asarray(formula_masks[k], dtype=np.float64)[held], xh_c[j])
            rf = corr_f[:, j]
            if not np.isfinite(rf).any() or m_cand == 0:
                continue
            best = int(np.nanargmax(rf))
            out["concept"][k] = best
            out["concept_corr"][k] = corr_h[best, j]
            cand = np.argsort(-np.nan_to_num(np.abs(rf), nan=-1.0), kind="stable")[:m_cand]
            cand = cand[np.isfinite(rf[cand])]
            terms, w = _forward_stepwise(y_fit_csc[:, cand], npos_fit[cand], sums_f[cand, j], sxx_f[j],
                                         n_fit, max_terms, min_gain)
            if not terms:
                continue
            chosen = cand[terms]
            intercept = mean_f[j] - float(w @ (npos_fit[chosen] / n_fit))
            pred = intercept + np.asarray(y_held[:, chosen] @ w).ravel()
            out["linear_corr"][k] = _pearson(pred, xh_c[j])
            out["linear_terms"][k] = [int(c) for c in chosen]
            out["linear_weights"][k] = [float(v) for v in w]
            out["linear_intercept"][k] = intercept
    return out


_BLOCK_BYTES = 64 << 20


def _split_centred(block: np.ndarray, *splits: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per split of image rows: unit-major float64 values (non-finite ones placed over all images), centred,
    with their means and sums of squares. One unit at a time (a unit's bits do not depend on the block): its
    column is gathered once in the splits' order, converted, and each split is a slice of that."""
    n_units = block.shape[1]
    order = np.concatenate(splits)
    bounds = np.cumsum([0, *(rows.size for rows in splits)])
    out = [(np.empty((n_units, rows.size)), np.empty(n_units), np.empty(n_units)) for rows in splits]
    for k in range(n_units):
        v = _finite_values(np.asarray(block[order, k], dtype=np.float64))  # placed over all images
        for (xc, mean, sxx), lo_b, hi_b in zip(out, bounds[:-1], bounds[1:]):
            part = v[lo_b:hi_b]
            mean[k] = part.mean() if part.size else np.nan
            np.subtract(part, mean[k], out=xc[k])
            sxx[k] = xc[k] @ xc[k]
    return out


def _forward_stepwise(
    cols: sp.csc_matrix, n_pos: np.ndarray, b: np.ndarray, sxx: float, n: int, max_terms: int, min_gain: float
) -> tuple[list[int], np.ndarray]:
    """Forward stepwise least squares of a centred unit on centred 0/1 columns, from their Gram matrix.

    ``b`` holds the columns' dot products with the centred unit, ``sxx`` its sum of squares. A step's RSS
    reduction for column j is ``(b_j - G_jS w_S)^2 / (G_jj - G_jS G_SS^-1 G_Sj)``. Returns the chosen
    column positions (in order) and their least-squares weights.
    """
    if sxx <= 0:
        return [], np.zeros(0)
    co = np.asarray((cols.T @ cols).todense(), dtype=np.float64)
    gram = co - np.outer(n_pos, n_pos) / n  # centred Gram matrix
    diag = np.diag(gram).copy()
    chosen: list[int] = []
    w = np.zeros(0)
    for _ in range(max_terms):
        if chosen:
            g_s = gram[np.ix_(chosen, chosen)]
            g_js = gram[:, chosen]
            resid_dot = b - g_js @ w
            proj = np.einsum("ij,ij->i", g_js, np.linalg.solve(g_s, g_js.T).T)
            denom = diag - proj
        else:
            resid_dot, denom = b.copy(), diag.copy()
        ok = denom > 1e-9 * np.maximum(diag, 1e-300)
        if chosen:
            ok[chosen] = False
        if not ok.any():
            break
        gain = np.where(ok, resid_dot**2 / np.where(ok, denom, 1.0), -1.0)
        j = int(np.argmax(gain))
        if gain[j] < min_gain * sxx:
            break
        chosen.append(j)
        g_s = gram[np.ix_(chosen, chosen)]
        w = np.linalg.solve(g_s, b[chosen])
    return chosen, w
