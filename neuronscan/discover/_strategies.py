"""Strategies: a class's images grouped by the concept that matters most to each (holistic CRAFT, Fel et al. 2023).

With ``φ[i, k]`` the local importance of concept k for image i of the class (gradient × input by default):

- the image's **dominant concept** is ``argmax_k φ[i, k]`` (ties: the lower k);
- a concept's **prevalence** is the fraction of the class's images whose dominant concept it is (they sum to
  1 over the concepts);
- its **reliability** is the model's accuracy on those images: the fraction of them it classifies as the class
  (NaN for a concept that dominates no image).

A prevalent, reliable concept is a strategy the model uses often and well; a prevalent, unreliable one is a
common way the model gets the class wrong.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["dominant_concepts", "prevalence", "reliability", "strategy_frame"]


def dominant_concepts(importance: np.ndarray) -> np.ndarray:
    """``argmax_k importance[i, k]`` for each image (ties: the lowest k): ``(n,)`` int64."""
    importance = np.asarray(importance, dtype=np.float64)
    return np.argmax(np.nan_to_num(importance, nan=-np.inf), axis=1).astype(np.int64)


def prevalence(dominant: np.ndarray, n_concepts: int) -> np.ndarray:
    """Fraction of images whose dominant concept is k, ``(K,)`` (zeros when there are no images)."""
    dominant = np.asarray(dominant, dtype=np.int64)
    counts = np.bincount(dominant, minlength=n_concepts)[:n_concepts].astype(np.float64)
    return counts / len(dominant) if len(dominant) else counts


def reliability(dominant: np.ndarray, correct: np.ndarray, n_concepts: int) -> np.ndarray:
    """Mean of ``correct`` over the images whose dominant concept is k, ``(K,)``; NaN where there are none."""
    dominant = np.asarray(dominant, dtype=np.int64)
    correct = np.asarray(correct, dtype=np.float64)
    counts = np.bincount(dominant, minlength=n_concepts)[:n_concepts].astype(np.float64)
    sums = np.bincount(dominant, weights=correct, minlength=n_concepts)[:n_concepts]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.where(counts > 0, counts, 1.0), np.nan)


def strategy_frame(importance: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    """One row per concept: ``concept, n_images, prevalence, reliability, runner_up`` (the concept most often
    second among the group's images, −1 without any), ``mean_share`` (the group's mean share of the dominant
    concept in its images' summed positive importance)."""
    importance = np.asarray(importance, dtype=np.float64)
    n, k = importance.shape
    dom = dominant_concepts(importance)
    prev = prevalence(dom, k)
    rel = reliability(dom, correct, k)
    second = (np.argsort(-np.nan_to_num(importance, nan=-np.inf), axis=1, kind="stable")[:, 1]
              if k > 1 else np.full(n, -1))
    pos = np.clip(np.nan_to_num(importance), 0, None)
    total = pos.sum(axis=1)
    share = np.where(total > 0, pos[np.arange(n), dom] / np.where(total > 0, total, 1.0), np.nan)
    rows = []
    for c in range(k):
        members = dom == c
        runner = np.bincount(second[members][second[members] >= 0], minlength=k) if members.any() else None
        rows.append({
            "concept": c, "n_images": int(members.sum()), "prevalence": float(prev[c]), "reliability": float(rel[c]),
            "runner_up": int(np.argmax(runner)) if runner is not None and runner.sum() > 0 else -1,
            "mean_share": float(np.nanmean(share[members])) if members.any() and np.isfinite(share[members]).any()
            else float("nan"),
        })
    return pd.DataFrame(rows)
