"""How good a concept dictionary and its importances are: C-Deletion, C-Insertion, C-µFidelity, reconstruction
error, sparsity, stability.

The first three are the concept-level analogues of the attribution metrics deletion, insertion and µ-fidelity
(Fel et al. 2023): the "pixels" are the K concepts, removing one sets its coefficient to 0 at every position.

- **C-Deletion**: remove the concepts one by one in decreasing importance (the class's ranking); the curve is
  the class logit after 0, 1, …, K removals; its area over ``x = j / K ∈ [0, 1]`` (trapezoids), averaged over
  images. Lower is better: the logit should fall fast.
- **C-Insertion**: start with every concept removed and add them in the same order; the area under that
  curve. Higher is better.
- **C-µFidelity**: per image, draw random subsets S (each concept in S with probability ``fraction``; the same
  subsets for every image of a class), and correlate (Pearson) the logit's drop ``φ(U) − φ(U without S)`` with
  ``Σ_{i∈S}`` of the image's own importances; the mean over images. 1 is perfect.

Dictionary metrics: the relative reconstruction error ``‖A − Â‖_F / ‖A‖_F``; the fraction of coefficients
that are (near) zero and the mean Hoyer sparsity of the rows of U; and stability, the mean cosine of the
dictionaries fitted on two disjoint halves of the images once their concepts are paired by the Hungarian method
(``scipy.optimize.linear_sum_assignment``; |cosine| for PCA and ICA, whose signs are arbitrary).
"""

from __future__ import annotations

import numpy as np
import torch

from neuronscan.discover._importance import LogitFn, masked_logits

__all__ = ["concept_curves", "curve_auc", "mu_fidelity", "mu_fidelity_from_drops", "mu_fidelity_subsets",
           "subset_drops", "reconstruction_error", "zero_fraction", "hoyer_sparsity", "matched_cosine"]


def concept_curves(fn: LogitFn, u: torch.Tensor, order: np.ndarray, *,
                   batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves ``(n, K + 1)`` of images ``u`` ``(n, *grid, K)`` for the concept ``order``
    (most important first): point j is the logit with the first j concepts removed (deletion) or kept
    (insertion)."""
    k = u.shape[-1]
    order = np.asarray(order, dtype=np.int64)
    if sorted(order.tolist()) != list(range(k)):
        raise ValueError(f"order must be a permutation of range({k})")
    removed = np.zeros((k + 1, k), dtype=np.float64)
    for j in range(1, k + 1):
        removed[j, order[:j]] = 1.0
    y = masked_logits(fn, u, np.concatenate([1.0 - removed, removed]), batch_size=batch_size)
    return y[:, : k + 1], y[:, k + 1 :]


def curve_auc(curves: np.ndarray) -> np.ndarray:
    """Area under each curve ``(n, K + 1)`` over ``x = 0, 1/K, …, 1`` (trapezoids): ``(n,)``."""
    curves = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    k = curves.shape[1] - 1
    if k < 1:
        return curves[:, 0].copy()
    return (curves[:, :-1] + curves[:, 1:]).sum(axis=1) / (2.0 * k)


def mu_fidelity_subsets(n_concepts: int, n_subsets: int, fraction: float, *, seed: int = 0) -> np.ndarray:
    """``(n_subsets, K)`` booleans: each concept in each subset with probability ``fraction`` (seeded)."""
    rng = np.random.default_rng(seed)
    return rng.random((n_subsets, n_concepts)) < fraction


def subset_drops(fn: LogitFn, u: torch.Tensor, subsets: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """``φ(U) − φ(U without S)`` for every image and subset S: ``(n, n_subsets)``."""
    subsets = np.asarray(subsets, dtype=bool)
    keep = np.concatenate([np.ones((1, subsets.shape[1])), 1.0 - subsets])
    y = masked_logits(fn, u, keep, batch_size=batch_size)
    return y[:, :1] - y[:, 1:]


def mu_fidelity_from_drops(drops: np.ndarray, importance: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """Per image, Pearson's r between its ``drops`` ``(n, n_subsets)`` and the subsets' summed ``importance``
    ``(n, K)``: ``(n,)``, NaN where either side is constant."""
    totals = np.asarray(importance, dtype=np.float64) @ np.asarray(subsets, dtype=np.float64).T
    return np.array([_pearson(d, t) for d, t in zip(np.asarray(drops, dtype=np.float64), totals)])


def mu_fidelity(fn: LogitFn, u: torch.Tensor, importance: np.ndarray, subsets: np.ndarray, *,
                batch_size: int = 256) -> np.ndarray:
    """Per image, Pearson's r between the logit drops when each subset is removed and the subset's summed
    importance: ``(n,)``, NaN where either side is constant (`subset_drops`, `mu_fidelity_from_drops`)."""
    return mu_fidelity_from_drops(subset_drops(fn, u, subsets, batch_size=batch_size), importance, subsets)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    scale = max(float(np.abs(x).max(initial=0.0)), float(np.abs(y).max(initial=0.0)), 1e-300)
    if not den > 1e-12 * scale * scale * len(x):
        return float("nan")
    return float((x * y).sum() / den)


def reconstruction_error(a: np.ndarray, a_hat: np.ndarray) -> float:
    """``‖A − Â‖_F / ‖A‖_F`` (NaN for an all-zero A)."""
    a = np.asarray(a, dtype=np.float64)
    norm = float(np.linalg.norm(a))
    return float(np.linalg.norm(a - np.asarray(a_hat, dtype=np.float64)) / norm) if norm > 0 else float("nan")


def zero_fraction(u: np.ndarray, rel_tol: float = 1e-6) -> float:
    """The fraction of coefficients whose magnitude is at most ``rel_tol`` times the largest one."""
    u = np.abs(np.asarray(u, dtype=np.float64))
    if u.size == 0:
        return float("nan")
    return float((u <= rel_tol * u.max()).mean())


def hoyer_sparsity(u: np.ndarray) -> float:
    """Mean over the rows of U of Hoyer's sparsity ``(√K − ‖u‖₁/‖u‖₂) / (√K − 1)``: 0 for a row with all
    coefficients equal, 1 for a row with one non-zero; all-zero rows are left out (NaN if all are)."""
    u = np.abs(np.atleast_2d(np.asarray(u, dtype=np.float64)))
    k = u.shape[1]
    if k < 2:
        return float("nan")
    l1, l2 = u.sum(axis=1), np.sqrt((u * u).sum(axis=1))
    ok = l2 > 0
    if not ok.any():
        return float("nan")
    return float(((np.sqrt(k) - l1[ok] / l2[ok]) / (np.sqrt(k) - 1)).mean())


def matched_cosine(w1: np.ndarray, w2: np.ndarray, *, absolute: bool = False) -> tuple[float, np.ndarray]:
    """Pair the rows of two dictionaries ``(K1, C)``, ``(K2, C)`` to maximise the summed cosine (Hungarian);
    return the mean cosine of the pairs and the pairs ``(min(K1, K2), 3)`` as ``(row of w1, row of w2, cos)``."""
    from scipy.optimize import linear_sum_assignment

    a = np.asarray(w1, dtype=np.float64)
    b = np.asarray(w2, dtype=np.float64)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    cos = (a / np.where(na > 0, na, 1.0)) @ (b / np.where(nb > 0, nb, 1.0)).T
    if absolute:
        cos = np.abs(cos)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    pairs = np.column_stack([rows, cols, cos[rows, cols]])
    return float(cos[rows, cols].mean()), pairs
