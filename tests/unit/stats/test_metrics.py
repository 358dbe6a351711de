"""F1, IoU, correlation and cosine of every pair against naive per-pair oracles on tied data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import pointbiserialr
from sklearn.metrics import f1_score, jaccard_score

from neuronscan.stats import label_metrics, score_block

from ._data import tied_activations


def _naive(x: np.ndarray, y: np.ndarray, q: float) -> dict[str, float]:
    n = len(x)
    k = max(1, math.ceil(q * n))
    t = np.sort(x)[::-1][k - 1]
    top = x >= t
    out = {"f1": f1_score(y, top, zero_division=0.0), "iou": jaccard_score(y, top, zero_division=0.0)}
    out["correlation"] = pointbiserialr(y, x).statistic if np.ptp(x) > 0 else np.nan
    norm = np.linalg.norm(x)
    out["cosine"] = float(x @ y / (norm * np.sqrt(y.sum()))) if norm > 0 else np.nan
    return out


@pytest.mark.parametrize("q", [0.005, 0.05, 0.3, 1.0])
def test_every_pair_equals_the_naive_metrics(q):
    rng = np.random.default_rng(0)
    n = 400
    a = tied_activations(rng, n, 7, 1)  # heavy ties
    a[:, 5] = 2.5  # constant unit: correlation NaN, cosine defined
    a[:, 6] = 0.0  # all-zero unit: cosine NaN too
    y = rng.random((n, 6)) < np.array([0.02, 0.1, 0.3, 0.6, 0.0, 1.0])
    a[y[:, 1], 0] += 1.5
    m = label_metrics(a, sp.csc_matrix(y), top_quantile=q)
    for key in ("f1", "iou", "correlation", "cosine"):
        assert m[key].shape == (7, 6) and m[key].dtype == np.float64
        assert np.isnan(m[key][:, 4:]).all(), key  # no positive / no negative: NaN like AUC
    checked = 0
    for k in range(7):
        for c in range(4):
            want = _naive(a[:, k].astype(np.float64), y[:, c], q)
            for key, value in want.items():
                got = m[key][k, c]
                if np.isnan(value):
                    assert np.isnan(got), (key, k, c)
                else:
                    assert got == pytest.approx(value, abs=1e-12), (key, k, c, got, value)
                    checked += 1
    assert checked >= 100
    assert np.isnan(m["correlation"][5, :4]).all() and np.isfinite(m["cosine"][5, :4]).all()
    assert np.isnan(m["cosine"][6, :4]).all()
    np.testing.assert_array_equal(m["f1"], label_metrics(a, y, top_quantile=q)["f1"])  # dense labels too


def test_ties_at_the_threshold_are_all_in_the_top_set():
    x = np.array([[3.0], [2.0], [2.0], [2.0], [1.0], [0.0], [0.0], [0.0], [0.0], [0.0]])
    y = np.zeros((10, 2), dtype=bool)
    y[:4, 0] = True
    y[[0, 5], 1] = True
    m = label_metrics(x, y, top_quantile=0.2)  # k = 2: the value 2.0, tied three times
    assert m["top_size"].tolist() == [4]
    assert m["f1"][0, 0] == 1.0 and m["iou"][0, 0] == 1.0
    assert m["iou"][0, 1] == pytest.approx(1 / 5)


def test_a_unit_that_is_a_concept_scores_one():
    rng = np.random.default_rng(1)
    y = np.zeros((1000, 3), dtype=bool)
    for c, n in enumerate((5, 50, 400)):  # at least the top set's k = 5 images
        y[rng.choice(1000, n, replace=False), c] = True
    m = label_metrics(y.astype(np.float32), y, top_quantile=0.005)
    for key in ("f1", "iou", "correlation", "cosine"):
        np.testing.assert_allclose(np.diag(m[key]), 1.0, atol=1e-12, err_msg=key)
    res = score_block(y.astype(np.float32), sp.csc_matrix(y))
    np.testing.assert_allclose(np.diag(res["auc"]), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.diag(res["auprc"]), 1.0, atol=1e-12)
    # A concept rarer than the top quantile: the k-th largest value is 0 and every image ties into T.
    rare = y[:, :1].copy()
    rare[np.flatnonzero(rare[:, 0])[0], 0] = False
    m = label_metrics(rare.astype(np.float32), rare, top_quantile=0.005)
    assert m["top_size"][0] == 1000 and m["f1"][0, 0] == pytest.approx(2 * 4 / 1004)


def test_nonfinite_values_follow_the_ranking_order():
    x = np.array([np.nan, -np.inf, 0.0, 1.0, 2.0, np.inf])
    y = np.array([0, 0, 0, 1, 1, 1], dtype=bool)[:, None]
    m = label_metrics(x[:, None], y, top_quantile=0.5)
    placed = np.array([0.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    want = _naive(placed, y[:, 0], 0.5)
    for key, value in want.items():
        assert m[key][0, 0] == pytest.approx(value, abs=1e-12), key


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="top_quantile"):
        label_metrics(np.zeros((4, 1)), np.zeros((4, 1), bool), top_quantile=0.0)
    with pytest.raises(ValueError, match=r"labels must have shape \(4, n_concepts\)"):
        label_metrics(np.zeros((4, 1)), np.zeros((5, 1), bool))


def test_blocks_of_units_change_no_bit(monkeypatch):
    from neuronscan.stats import _metrics

    rng = np.random.default_rng(6)
    a = tied_activations(rng, 700, 9, 1)
    y = rng.random((700, 5)) < 0.2
    whole = label_metrics(a, y, top_quantile=0.02)
    monkeypatch.setattr(_metrics, "_BLOCK_BYTES", 1)
    blocks = label_metrics(a, y, top_quantile=0.02)
    for key in ("f1", "iou", "correlation", "cosine", "top_size"):
        np.testing.assert_array_equal(blocks[key], whole[key], err_msg=key)
