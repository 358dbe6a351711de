"""score_block: output contract, label formats, degenerate inputs and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import mannwhitneyu
from sklearn.metrics import average_precision_score, roc_auc_score

from neuronscan.stats import average_precision, prepare_labels, rank_units, score_block

from ._data import as_sparse, random_labels, tied_activations

PAIR_KEYS = ("auc", "auprc", "p_value", "log_p", "u")


def oracle(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    res = mannwhitneyu(x[y], x[~y], alternative="greater", method="asymptotic")
    return {
        "auc": roc_auc_score(y, x),
        "auprc": average_precision_score(y, x),
        "p_value": res.pvalue,
        "u": res.statistic,
    }


def test_output_contract():
    rng = np.random.default_rng(0)
    a = tied_activations(rng, 50, 7, 1, np.float32)
    y = random_labels(rng, 50, 9)
    out = score_block(a, y)
    assert set(out) == {*PAIR_KEYS, "n_pos", "n_neg", "dead", "n_nonfinite"}
    for key in PAIR_KEYS:
        assert out[key].shape == (7, y.shape[1]) and out[key].dtype == np.float64
    for key in ("n_pos", "n_neg"):
        assert out[key].shape == (y.shape[1],) and out[key].dtype == np.int64
    assert out["dead"].dtype == bool and out["n_nonfinite"].dtype == np.int64
    np.testing.assert_array_equal(out["n_pos"], y.sum(axis=0))
    np.testing.assert_array_equal(out["n_pos"] + out["n_neg"], 50)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "dense-bool", "int-csr", "matrix-coo"])
def test_label_formats_give_identical_results(fmt):
    rng = np.random.default_rng(1)
    a = tied_activations(rng, 120, 5, 1)
    y = random_labels(rng, 120, 8)
    reference = score_block(a, y)
    if fmt == "dense-bool":
        labels = y
    elif fmt == "int-csr":
        labels = sp.csr_array(y.astype(np.int32))
    elif fmt == "matrix-coo":
        labels = sp.coo_matrix(y.astype(np.int8))
    else:
        labels = as_sparse(y, fmt)
    out = score_block(a, labels)
    for key in PAIR_KEYS:
        np.testing.assert_array_equal(out[key], reference[key])


def test_zero_and_all_positive_concepts_are_nan_with_a_counted_warning():
    rng = np.random.default_rng(2)
    a = tied_activations(rng, 60, 3, 1)
    y = random_labels(rng, 60, 4)
    y = np.column_stack([np.zeros(60, bool), y, np.ones(60, bool)])
    with pytest.warns(UserWarning, match="2 of .* concepts have no positive or no negative"):
        out = score_block(a, y)
    for key in PAIR_KEYS:
        assert np.isnan(out[key][:, [0, -1]]).all()
        assert not np.isnan(out[key][:, 1:-1]).any()
    np.testing.assert_array_equal(out["n_pos"][[0, -1]], [0, 60])


def test_single_image():
    with pytest.warns(UserWarning, match="2 of 2 concepts"):
        out = score_block(np.array([[0.3, 1.0]]), np.array([[True, False]]))
    assert np.isnan(out["auc"]).all() and np.isnan(out["p_value"]).all()
    np.testing.assert_array_equal(out["dead"], [True, True])


def test_nan_and_inf_activations_rank_as_documented():
    rng = np.random.default_rng(3)
    a = tied_activations(rng, 300, 4, 1)
    a[rng.random(300) < 0.05, 0] = np.nan
    a[rng.random(300) < 0.05, 1] = np.inf
    a[rng.random(300) < 0.05, 2] = -np.inf
    y = random_labels(rng, 300, 10)
    out = score_block(a, y)
    np.testing.assert_array_equal(out["n_nonfinite"], np.count_nonzero(~np.isfinite(a), axis=0))
    # Oracle: NaN is the lowest value, tied -- replace it by something below every value.
    x = a.copy()
    x[np.isnan(x)] = np.nanmin(np.where(np.isfinite(a), a, np.nan)) - 1.0
    for k in range(4):
        for c in range(y.shape[1]):
            pos, neg = x[y[:, c], k], x[~y[:, c], k]
            res = mannwhitneyu(pos, neg, alternative="greater", method="asymptotic")
            assert out["u"][k, c] == res.statistic
            assert out["p_value"][k, c] == pytest.approx(res.pvalue, abs=1e-9)
            pairwise = np.mean((pos[:, None] > neg) + 0.5 * (pos[:, None] == neg))
            assert out["auc"][k, c] == pytest.approx(pairwise, abs=1e-9)
            if np.isfinite(x[:, k]).all():  # sklearn refuses inf
                ref = average_precision_score(y[:, c], x[:, k])
                assert out["auprc"][k, c] == pytest.approx(ref, abs=1e-9)
    # +-inf only moves images to the ends: AP of the inf units on a finite copy is the same.
    for k, fill in ((1, np.nanmax(x[np.isfinite(x)]) + 1), (2, np.nanmin(x[np.isfinite(x)]) - 1)):
        finite_copy = np.where(np.isinf(x[:, k]), fill, x[:, k])
        for c in range(y.shape[1]):
            ref = average_precision_score(y[:, c], finite_copy)
            assert out["auprc"][k, c] == pytest.approx(ref, abs=1e-9)


def test_dead_units():
    a = np.zeros((40, 3))
    a[:, 1] = np.arange(40)
    a[:, 2] = 7.0
    y = np.zeros((40, 2), dtype=bool)
    y[30:, 0] = True
    y[::3, 1] = True
    out = score_block(a, y)
    np.testing.assert_array_equal(out["dead"], [True, False, True])
    for k in (0, 2):
        np.testing.assert_array_equal(out["auc"][k], [0.5, 0.5])
        np.testing.assert_array_equal(out["p_value"][k], [1.0, 1.0])
        np.testing.assert_allclose(out["auprc"][k], y.mean(axis=0), rtol=1e-15)
    assert out["auc"][1, 0] == 1.0


def test_precomputed_ranks_and_threads_give_identical_results():
    rng = np.random.default_rng(4)
    a = tied_activations(rng, 500, 37, 1, np.float32)
    y = random_labels(rng, 500, 13)
    base = score_block(a, y, n_threads=1)
    for out in (score_block(a, y, n_threads=2), score_block(a, y, ranks=rank_units(a))):
        for key in (*PAIR_KEYS, "dead", "n_nonfinite", "n_pos"):
            np.testing.assert_array_equal(out[key], base[key])


def test_returned_ranks_equal_rank_units():
    rng = np.random.default_rng(5)
    a = tied_activations(rng, 400, 21, 1, np.float32)
    a[3, 2] = np.nan
    y = random_labels(rng, 400, 9)
    ref = rank_units(a)
    base = score_block(a, y)
    for threads in (1, 2):
        out = score_block(a, y, n_threads=threads, return_ranks=True)
        got = out.pop("ranks")
        np.testing.assert_array_equal(got.ranks, ref.ranks)
        np.testing.assert_array_equal(got.tie_term, ref.tie_term)
        np.testing.assert_array_equal(got.dead, ref.dead)
        np.testing.assert_array_equal(got.n_nonfinite, ref.n_nonfinite)
        for key in (*PAIR_KEYS, "dead", "n_nonfinite"):
            np.testing.assert_array_equal(out[key], base[key])
    assert "ranks" not in base
    assert score_block(a, y, ranks=ref, return_ranks=True)["ranks"] is ref


def test_untied_units_take_the_same_values():
    # Continuous data (no ties) uses the rank sums from the sorted keys alone.
    rng = np.random.default_rng(5)
    a = rng.standard_normal((400, 6))
    y = random_labels(rng, 400, 10)
    out = score_block(a, y)
    for k in range(6):
        for c in range(y.shape[1]):
            ref = oracle(a[:, k], y[:, c])
            for key, value in ref.items():
                assert out[key][k, c] == pytest.approx(value, abs=1e-9, rel=0)


def test_no_units():
    out = score_block(np.zeros((10, 0)), np.eye(10, 3, dtype=bool))
    assert out["auc"].shape == (0, 3) and out["dead"].shape == (0,)


@pytest.mark.parametrize(
    ("acts", "labels", "fragment"),
    [
        (np.zeros((10, 2)), np.zeros((9, 3), bool), "labels has 9 rows but activations has 10"),
        (np.zeros((10, 2)), sp.csr_array((11, 3)), "labels has 11 rows but activations has 10"),
        (np.zeros(10), np.zeros((10, 3), bool), r"activations must be 2-D .* got shape \(10,\)"),
        (np.zeros((10, 2)), np.zeros(10, bool), r"labels must be 2-D .* got shape \(10,\)"),
        (np.zeros((10, 2)), np.full((10, 3), 2), r"labels must be 0/1; found values \[2\]"),
    ],
)
def test_bad_input_raises_value_error_with_shapes(acts, labels, fragment):
    with pytest.raises(ValueError, match=fragment):
        score_block(acts, labels)


def test_ranks_for_other_activations_raise():
    r = rank_units(np.zeros((10, 3)))
    message = r"ranks has shape \(10, 3\) but activations has shape \(10, 2\)"
    with pytest.raises(ValueError, match=message):
        score_block(np.zeros((10, 2)), np.eye(10, 2, dtype=bool), ranks=r)


def test_prepared_labels_are_reusable_across_blocks():
    rng = np.random.default_rng(6)
    a = tied_activations(rng, 300, 12, 1)
    y = random_labels(rng, 300, 9)
    layout = prepare_labels(sp.coo_array(y), 300)
    whole = score_block(a, y)
    for k0 in (0, 5):
        part = score_block(a[:, k0 : k0 + 5], layout)
        for key in PAIR_KEYS:
            np.testing.assert_array_equal(part[key], whole[key][k0 : k0 + 5])
    np.testing.assert_array_equal(average_precision(a, layout), whole["auprc"])
    with pytest.raises(ValueError, match="labels have 300 rows but activations has 299 images"):
        score_block(a[:299], layout)
