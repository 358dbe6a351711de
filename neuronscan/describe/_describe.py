"""Describe units by the CLIP embeddings of their top crops: score every vocabulary word, keep the best.

Three scores, for a unit u with crop embeddings ``e_1 … e_n`` (L2-normalised, in rank order) and word embeddings
``t_c`` (L2-normalised, `neuronscan.clip.embed_texts`):

- ``zscore`` (the default): ``s(u, c) = (1/n) Σ_j (e_j · t_c − μ_c) / σ_c``, with ``μ_c``, ``σ_c`` the mean and
  standard deviation of ``e · t_c`` over every crop of the layer — the mean cosine with each word's similarity
  standardised over the layer's crops, so a word close to every crop (a hub) or one whose cosines spread widely
  does not win by its scale alone.
- ``mean_cosine``: ``s(u, c) = (1/n) Σ_j e_j · t_c`` — the cosine of the word with the unit's crops, averaged.
  It equals ``m_u · t_c`` with ``m_u`` the mean crop embedding, so among unit-norm word embeddings the best word
  is the one nearest ``m_u``'s direction.
- ``soft_wpmi``: CLIP-Dissect's soft-WPMI with the unit's crops as its top set:
  ``P'[j, c] = softmax_c(10 e_j · t_c)``, ``log p(c | u) = Σ_j log(1 + p_j (P'[j, c] − 1))`` with
  ``p_j = linspace(0.998, 0.97, top_m)[j]``, ``log p(c) = log mean_u exp(log p(c | u))`` over the layer's
  units, ``s(u, c) = log p(c | u) − log p(c)``: words every crop of the layer is close to score low.

numpy only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["METHODS", "crop_scores", "describe_units"]

METHODS = ("zscore", "mean_cosine", "soft_wpmi")


def _normalised(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.where(norms > 0, norms, 1.0)


def crop_scores(crop_emb: np.ndarray, unit: np.ndarray, rank: np.ndarray, text_emb: np.ndarray, *,
                n_units: int, method: str = "zscore", top_m: int | None = None) -> np.ndarray:
    """Scores ``(n_units, n_words)`` of every word for every unit from its crops.

    Args:
        crop_emb: ``(n, D)`` one embedding per crop row (rows of a unit in any order).
        unit: ``(n,)`` the row's unit index in ``0 … n_units − 1``.
        rank: ``(n,)`` the row's rank among the unit's top images (0 = highest); orders soft-WPMI's weights.
        text_emb: ``(C, D)`` word embeddings.
        n_units: units of the layer (a unit without rows scores NaN).
        method: ``zscore``, ``mean_cosine`` or ``soft_wpmi``; the first and last compare a unit with the other
            rows passed in (a layer's crops).
        top_m: the weight schedule's length for ``soft_wpmi`` (default: the largest rank + 1).

    Example:
        >>> e = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
        >>> t = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> crop_scores(e, np.array([0, 0, 1]), np.array([0, 1, 0]), t, n_units=2, method="mean_cosine").tolist()
        [[0.5, 0.5], [1.0, 0.0]]
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    e = _normalised(crop_emb, "crop_emb")
    t = _normalised(text_emb, "text_emb")
    if e.shape[1] != t.shape[1]:
        raise ValueError(f"crop and text embeddings differ in dimension: {e.shape[1]} vs {t.shape[1]}")
    unit = np.asarray(unit, dtype=np.int64).ravel()
    rank = np.asarray(rank, dtype=np.int64).ravel()
    if not len(unit) == len(rank) == len(e):
        raise ValueError(f"crop_emb, unit and rank differ in length: {len(e)}, {len(unit)}, {len(rank)}")
    if len(unit) and (unit.min() < 0 or unit.max() >= n_units):
        raise ValueError(f"unit indices must be in 0 … {n_units - 1}")
    counts = np.bincount(unit, minlength=n_units).astype(np.float64)
    sims = e @ t.T  # (n, C)
    out = np.zeros((n_units, t.shape[0]), dtype=np.float64)
    if method in ("mean_cosine", "zscore"):
        if method == "zscore" and len(sims):
            sd = sims.std(axis=0)
            sims = (sims - sims.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        np.add.at(out, unit, sims)
        with np.errstate(invalid="ignore", divide="ignore"):
            out /= counts[:, None]
    else:
        m = int(top_m) if top_m is not None else (int(rank.max()) + 1 if len(rank) else 1)
        if len(rank) and rank.max() >= m:
            raise ValueError(f"ranks go up to {int(rank.max())}, beyond top_m = {m}")
        weights = np.linspace(0.998, 0.97, max(m, 1))[rank] if len(rank) else np.zeros(0)
        z = 10.0 * sims
        z -= z.max(axis=1, keepdims=True)
        prob = np.exp(z)
        prob /= prob.sum(axis=1, keepdims=True)
        np.add.at(out, unit, np.log1p(weights[:, None] * (prob - 1.0)))
        live = counts > 0
        if live.any():
            cond = out[live]
            top = cond.max(axis=0)
            prior = top + np.log(np.exp(cond - top).mean(axis=0))
            out[live] = cond - prior
    out[counts == 0] = np.nan
    return out


def describe_units(scores: np.ndarray, vocabulary: list[str], *, top_n: int = 5,
                   phrase_words: int = 3) -> pd.DataFrame:
    """The top words of each unit: ``patch_label, patch_score, phrase, concepts, scores`` (one row per unit).

    Words are ranked by score, ties by vocabulary order; a unit whose scores are NaN (no crop) gets a null
    label, NaN score, empty lists. ``phrase`` joins the first ``phrase_words`` words with ``", "``.

    Example:
        >>> d = describe_units(np.array([[0.1, 0.3, 0.2]]), ["red", "circle", "round"], top_n=2)
        >>> d.loc[0, ["patch_label", "phrase"]].tolist()
        ['circle', 'circle, round']
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != len(vocabulary):
        raise ValueError(f"scores must be (n_units, {len(vocabulary)}), got {s.shape}")
    if top_n < 1 or phrase_words < 1:
        raise ValueError("top_n and phrase_words must be at least 1")
    words = np.asarray(vocabulary, dtype=object)
    k = min(top_n, len(vocabulary))
    order = np.argsort(-np.nan_to_num(s, nan=-np.inf), axis=1, kind="stable")[:, :k]
    labels, best, phrases, concepts, values = [], [], [], [], []
    for row, idx in zip(s, order):
        if not np.isfinite(row).any():
            labels.append(None)
            best.append(np.nan)
            phrases.append(None)
            concepts.append([])
            values.append([])
            continue
        chosen = [str(w) for w in words[idx]]
        labels.append(chosen[0])
        best.append(float(row[idx[0]]))
        phrases.append(", ".join(chosen[:phrase_words]))
        concepts.append(chosen)
        values.append([float(v) for v in row[idx]])
    return pd.DataFrame({"patch_label": labels, "patch_score": best, "phrase": phrases, "concepts": concepts,
                         "scores": values})
