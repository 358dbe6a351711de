"""Collaborative units of a concept: the smallest set of a layer's units whose joint linear probe separates it.

For one concept and one layer (numbers in, numbers out; ``docs/algorithms.md`` has the method):

1. **Split.** The concept's positives and negatives are each drawn without replacement (at most
   ``max_positives`` / ``max_negatives``) and each split ``holdout`` : ``1 - holdout`` into held-out and
   training rows, from ``numpy.random.default_rng([seed, crc32(concept)])`` — stratified, and the same
   split for every layer and every rerun.
2. **Prescreen.** Every unit's AUC on the training rows; the ``n_candidates`` units with the highest AUC
   (> ½, not constant) are the candidates.
3. **Target.** The probe on all candidates gives the held-out ``full_auc``; the target is
   ``min(target_auc, 0.5 + target_fraction * (full_auc - 0.5))``.
4. **Greedy forward selection.** Starting from no unit, add the candidate whose joint probe (L2 logistic
   regression on standardised units, balanced class weights) has the lowest penalised training loss; after
   each addition measure the held-out AUC (``cumulative_auc``); stop once it reaches the target, or at
   ``max_units`` units.
5. **Contributions.** Exact Shapley values of the final probe's logit with the interventional baseline
   (an absent unit is set to its training mean): for a linear model ``phi_i(x) = w_i (z_i - E[z_i])``.
   Each unit's share is its mean ``|phi_i|`` over the held-out positives, normalised to sum 1.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from neuronscan.hierarchy._probe import auc_score, balanced_weights, fit_logistic, unit_aucs

__all__ = [
    "CollabParams",
    "CollaborativeSet",
    "Split",
    "concept_split",
    "collaborative_units",
    "linear_shapley",
    "shapley_shares",
]


@dataclass(frozen=True)
class CollabParams:
    """The settings of the search (the ``hierarchy`` config section; defaults documented there)."""

    min_positives: int = 20
    max_positives: int = 2000
    max_negatives: int = 2000
    holdout: float = 0.3
    n_candidates: int = 32
    max_units: int = 8
    target_auc: float = 0.95
    target_fraction: float = 0.95
    l2: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")
        if self.min_positives < 2:
            raise ValueError("min_positives must be >= 2 (one training and one held-out positive)")
        if self.max_units < 1 or self.n_candidates < 1:
            raise ValueError("max_units and n_candidates must be >= 1")
        if not self.l2 > 0:
            raise ValueError("l2 must be > 0")


@dataclass
class Split:
    """Row indices (sorted) of the training and held-out images of one concept, and their labels."""

    train: np.ndarray
    test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


@dataclass
class CollaborativeSet:
    """The result for one (concept, layer).

    Attributes:
        units: selected column indices, in the order they were added.
        weights: the final probe's coefficients on the standardised units.
        shapley: each unit's share of mean |Shapley value| over held-out positives (sums to 1).
        cumulative_auc: held-out AUC after adding each unit (the probe refit on the first r + 1 units).
        unit_auc: each selected unit's own AUC on the training rows.
        full_auc: held-out AUC of the probe on every candidate; target_auc: the stopping target.
        reached: the last cumulative AUC reached the target.
        n_pos, n_neg: positives and negatives of the concept among all images (before subsampling).
    """

    concept: str
    units: np.ndarray
    weights: np.ndarray
    shapley: np.ndarray
    cumulative_auc: np.ndarray
    unit_auc: np.ndarray
    full_auc: float
    target_auc: float
    reached: bool
    n_pos: int
    n_neg: int
    n_candidates: int
    extra: dict = field(default_factory=dict)


def _rng(seed: int, concept: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(concept.encode("utf-8"))])


def concept_split(y: np.ndarray, concept: str, params: CollabParams) -> Split | None:
    """The stratified, seeded training / held-out split of one concept (module docstring, step 1).

    Returns None when the concept has fewer than ``min_positives`` positives or negatives.
    """
    y = np.asarray(y, dtype=bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if len(pos) < params.min_positives or len(neg) < params.min_positives:
        return None
    rng = _rng(params.seed, concept)
    parts = []
    for rows, cap in ((pos, params.max_positives), (neg, params.max_negatives)):
        drawn = rng.permutation(rows)[:cap]
        n_test = int(min(len(drawn) - 1, max(1, round(params.holdout * len(drawn)))))
        parts.append((drawn[n_test:], drawn[:n_test]))
    train = np.sort(np.concatenate([parts[0][0], parts[1][0]]))
    test = np.sort(np.concatenate([parts[0][1], parts[1][1]]))
    return Split(train, test, y[train], y[test])


def linear_shapley(coef: np.ndarray, z: np.ndarray, background_mean: np.ndarray) -> np.ndarray:
    """Exact Shapley values of a linear logit ``b + w·z`` with independent features absent at their mean.

    ``phi[j, i] = w_i (z[j, i] - background_mean[i])``; the values of a row sum to its logit minus the
    logit at the mean (efficiency).
    """
    return np.asarray(coef, dtype=np.float64)[None, :] * (np.asarray(z, dtype=np.float64)
                                                         - np.asarray(background_mean, dtype=np.float64)[None, :])


def shapley_shares(phi: np.ndarray) -> np.ndarray:
    """Mean ``|phi|`` per feature, normalised to sum 1 (equal shares when every value is 0)."""
    mean_abs = np.abs(np.asarray(phi, dtype=np.float64)).mean(0)
    total = mean_abs.sum()
    if not total > 0:
        return np.full(mean_abs.shape, 1.0 / max(len(mean_abs), 1))
    return mean_abs / total


def collaborative_units(x: np.ndarray, y: np.ndarray, concept: str, params: CollabParams) -> CollaborativeSet | None:
    """Greedy collaborative units of one concept in one layer (module docstring).

    Args:
        x: ``(n_images, n_units)`` finite activations of the layer.
        y: ``(n_images,)`` bool, the concept's positives (labels propagated to ancestors by the caller).
        concept: its name (seeds the split).
        params: `CollabParams`.

    Returns:
        The `CollaborativeSet`, or None when the concept has too few positives or negatives. A concept whose
        units all have training AUC ≤ ½ gets an empty set (``reached`` False).
    """
    x = np.asarray(x)
    y = np.asarray(y, dtype=bool)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x must be (n_images, n_units) with n_images = len(y); got {x.shape} and {y.shape}")
    split = concept_split(y, concept, params)
    if split is None:
        return None
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    x_train = np.asarray(x[split.train], dtype=np.float64)
    if not np.isfinite(x_train).all():
        raise ValueError("activations must be finite (the hierarchy stage replaces NaN/inf first)")
    mean = x_train.mean(0)
    sd = x_train.std(0)
    auc = unit_aucs(x_train, split.y_train)
    usable = (sd > 0) & np.isfinite(auc) & (auc > 0.5)
    order = np.argsort(-np.where(usable, auc, -np.inf), kind="stable")
    candidates = order[: min(params.n_candidates, int(usable.sum()))]
    empty = np.zeros(0)
    if len(candidates) == 0:
        return CollaborativeSet(concept, np.zeros(0, np.int64), empty, empty, empty, empty, float("nan"),
                                float("nan"), False, n_pos, n_neg, 0)
    z_train = (x_train[:, candidates] - mean[candidates]) / sd[candidates]
    z_test = (np.asarray(x[split.test][:, candidates], dtype=np.float64) - mean[candidates]) / sd[candidates]
    w = balanced_weights(split.y_train)

    full = fit_logistic(z_train, split.y_train, w, l2=params.l2)
    full_auc = auc_score(full.logit(z_test)[0], split.y_test)
    target = min(params.target_auc, 0.5 + params.target_fraction * (full_auc - 0.5))

    chosen: list[int] = []  # positions in `candidates`
    theta = np.zeros(1)  # [intercept, coef of chosen…] of the current probe
    cumulative: list[float] = []
    fit = None
    while len(chosen) < min(params.max_units, len(candidates)):
        remaining = np.array([j for j in range(len(candidates)) if j not in chosen])
        batch = np.concatenate(
            [np.broadcast_to(z_train[:, chosen], (len(remaining), len(split.train), len(chosen))),
             z_train[:, remaining].T[:, :, None]], axis=2)
        start = np.concatenate([np.broadcast_to(theta, (len(remaining), len(theta))),
                                np.zeros((len(remaining), 1))], axis=1)
        fits = fit_logistic(batch, split.y_train, w, l2=params.l2, start=start)
        best = int(np.argmin(fits.loss))  # ties: the candidate with the higher single-unit AUC
        chosen.append(int(remaining[best]))
        fit = fits
        theta = np.concatenate([[fits.intercept[best]], fits.coef[best]])
        held = auc_score(z_test[:, chosen] @ theta[1:] + theta[0], split.y_test)
        cumulative.append(held)
        if held >= target:
            break
    assert fit is not None
    coef = theta[1:]
    phi = linear_shapley(coef, z_test[split.y_test][:, chosen], z_train[:, chosen].mean(0))
    return CollaborativeSet(
        concept=concept,
        units=candidates[chosen].astype(np.int64),
        weights=coef,
        shapley=shapley_shares(phi),
        cumulative_auc=np.asarray(cumulative),
        unit_auc=auc[candidates[chosen]],
        full_auc=float(full_auc),
        target_auc=float(target),
        reached=bool(cumulative[-1] >= target),
        n_pos=n_pos,
        n_neg=n_neg,
        n_candidates=int(len(candidates)),
        extra={"n_train": int(len(split.train)), "n_test": int(len(split.test))},
    )
