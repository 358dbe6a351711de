"""Descriptions on planted embeddings: the word nearest a unit's crops wins; soft-WPMI against a naive loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuronscan.describe import crop_scores, describe_units


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_a_text_embedding_equal_to_the_mean_crop_embedding_wins():
    rng = np.random.default_rng(0)
    d, n_units, m = 32, 6, 5
    crops = _unit(rng.normal(size=(n_units * m, d)))
    unit = np.repeat(np.arange(n_units), m)
    rank = np.tile(np.arange(m), n_units)
    words = _unit(rng.normal(size=(40, d)))
    planted = {}
    for u in range(n_units):  # word 10 + u is the unit's mean crop direction
        words[10 + u] = _unit(crops[unit == u].mean(0))
        planted[u] = 10 + u
    vocab = [f"w{i}" for i in range(len(words))]
    scores = crop_scores(crops, unit, rank, words, n_units=n_units, method="mean_cosine")
    table = describe_units(scores, vocab, top_n=3)
    assert table["patch_label"].tolist() == [f"w{planted[u]}" for u in range(n_units)]
    means = np.stack([crops[unit == u].mean(0) for u in range(n_units)])
    assert np.allclose(table["patch_score"], np.linalg.norm(means, axis=1))  # mean cosine with its own direction
    assert all(s[0] >= s[1] >= s[2] for s in table["scores"])
    assert table["phrase"][0].split(", ")[0] == table["patch_label"][0]


def test_mean_cosine_is_the_average_of_cosines_and_a_unit_without_crops_is_empty():
    crops = _unit(np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]))
    words = _unit(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    s = crop_scores(crops, np.array([0, 0, 2]), np.array([0, 1, 0]), words, n_units=3, method="mean_cosine")
    assert np.allclose(s[0], [(1 + 0.6) / 2, (0 + 0.8) / 2, (1 / np.sqrt(2) + 1.4 / np.sqrt(2)) / 2])
    assert np.isnan(s[1]).all()
    table = describe_units(s, ["x", "y", "xy"])
    assert pd.isna(table.loc[1, "patch_label"]) and pd.isna(table.loc[1, "phrase"])
    assert table.loc[1, "concepts"] == [] and np.isnan(table.loc[1, "patch_score"])
    assert table.loc[2, "patch_label"] == "y"


def test_zscore_standardises_each_word_over_the_layers_crops_and_a_hub_word_loses():
    rng = np.random.default_rng(2)
    d, n_units, m = 16, 8, 10
    centres = _unit(rng.normal(size=(n_units, d)))
    hub = _unit(rng.normal(size=d))  # a direction every crop shares: the mean cosine's favourite everywhere
    crops = _unit(hub + 0.6 * np.repeat(centres, m, axis=0) + 0.2 * rng.normal(size=(n_units * m, d)))
    unit = np.repeat(np.arange(n_units), m)
    rank = np.tile(np.arange(m), n_units)
    words = np.vstack([centres, hub])
    vocab = [f"c{u}" for u in range(n_units)] + ["hub"]
    plain = describe_units(crop_scores(crops, unit, rank, words, n_units=n_units, method="mean_cosine"), vocab)
    z = crop_scores(crops, unit, rank, words, n_units=n_units)  # zscore is the default
    assert (plain["patch_label"] == "hub").all()
    assert describe_units(z, vocab)["patch_label"].tolist() == vocab[:n_units]
    sims = crops @ words.T
    zz = (sims - sims.mean(0)) / sims.std(0)
    assert np.allclose(z, np.stack([zz[unit == u].mean(0) for u in range(n_units)]))


def test_soft_wpmi_equals_the_formula_written_unit_by_unit():
    rng = np.random.default_rng(1)
    n_units, m, d, c = 4, 5, 8, 6
    crops = _unit(rng.normal(size=(n_units * m, d)))
    words = _unit(rng.normal(size=(c, d)))
    unit = np.repeat(np.arange(n_units), m)
    rank = np.tile(np.arange(m), n_units)
    keep = np.ones(len(unit), dtype=bool)
    keep[3] = False  # unit 0 lost one crop (an unreadable image)
    got = crop_scores(crops[keep], unit[keep], rank[keep], words, n_units=n_units, method="soft_wpmi", top_m=m)
    p = np.linspace(0.998, 0.97, m)
    cond = np.zeros((n_units, c))
    for u in range(n_units):
        for j in range(m):
            row = u * m + j
            if not keep[row]:
                continue
            z = np.exp(10 * crops[row] @ words.T)
            prob = z / z.sum()
            for k in range(c):
                cond[u, k] += np.log(1 + p[j] * (prob[k] - 1))
    prior = np.log(np.mean(np.exp(cond), axis=0))
    assert np.allclose(got, cond - prior)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="method"):
        crop_scores(np.ones((1, 2)), np.zeros(1), np.zeros(1), np.ones((1, 2)), n_units=1, method="nope")
    with pytest.raises(ValueError, match="dimension"):
        crop_scores(np.ones((1, 2)), np.zeros(1), np.zeros(1), np.ones((1, 3)), n_units=1, method="mean_cosine")
    with pytest.raises(ValueError, match="unit indices"):
        crop_scores(np.ones((1, 2)), np.array([3]), np.zeros(1), np.ones((1, 2)), n_units=1)
    with pytest.raises(ValueError, match="scores must be"):
        describe_units(np.ones((1, 2)), ["a"])
