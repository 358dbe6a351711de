"""The one definition of "significant" and the per-unit summary, against a naive per-unit loop."""

from __future__ import annotations

import numpy as np

from neuronscan.stats import aligned_mask, best_concepts, multimodal_units, significant_mask, summarize_units


def test_masks_by_hand():
    q = np.array([0.01, 0.01, 0.2, np.nan, 0.05, 0.01])
    auc = np.array([0.9, 0.4, 0.9, 0.9, 0.76, np.nan])
    assert significant_mask(q, auc, 0.05).tolist() == [True, False, False, False, True, False]
    assert aligned_mask(q, auc, 0.05, 0.8).tolist() == [True, False, False, False, False, False]
    assert aligned_mask(q, auc, 0.05, 0.75).tolist() == [True, False, False, False, True, False]


def test_best_concepts_ties_and_nan():
    auc = np.array([[0.6, 0.9, 0.9], [np.nan, np.nan, np.nan], [np.nan, 0.3, 0.2]])
    best, has = best_concepts(auc)
    assert best.tolist()[0] == 1 and best.tolist()[2] == 1 and has.tolist() == [True, False, True]
    best, has = best_concepts(np.zeros((2, 0)))
    assert has.tolist() == [False, False]


def test_multimodal_needs_unrelated_concepts():
    concepts = ["dog", "cat", "mammal", "car"]
    anc = {"dog": {"mammal", "animal"}, "cat": {"mammal", "animal"}, "mammal": {"animal"}, "car": {"vehicle"}}
    aligned = np.array([[1, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 0], [1, 0, 1, 0]], dtype=bool)
    assert multimodal_units(aligned, concepts, anc).tolist() == [False, True, False, False]
    assert multimodal_units(aligned, concepts, None).tolist() == [True, True, False, True]


def test_summary_equals_a_naive_loop():
    rng = np.random.default_rng(0)
    n_units, n_c = 40, 12
    concepts = [f"c{j}" for j in range(n_c)]
    auc = np.round(rng.uniform(0.3, 1.0, (n_units, n_c)), 2)  # rounding makes ties
    auc[rng.random((n_units, n_c)) < 0.1] = np.nan
    auc[3] = np.nan
    shape = (n_units, n_c)
    q = np.where(rng.random(shape) < 0.5, rng.uniform(0, 0.04, shape), rng.uniform(0.06, 1, shape))
    auprc = rng.random((n_units, n_c))
    p_perm = np.where(rng.random((n_units, n_c)) < 0.3, rng.random((n_units, n_c)), np.nan)
    anc = {c: {"left" if j % 2 else "right"} for j, c in enumerate(concepts)}
    spurious = {"c3", "c7"}
    out = summarize_units(auc=auc, auprc=auprc, q_value=q, p_perm=p_perm, concepts=concepts, alpha=0.05,
                          min_auc=0.75, ancestors=anc, spurious_concepts=spurious)
    for k in range(n_units):
        finite = [j for j in range(n_c) if np.isfinite(auc[k, j])]
        if not finite:
            assert out["best_concept"][k] is None and np.isnan(out["best_auc"][k])
        else:
            b = max(finite, key=lambda j: (auc[k, j], -j))
            assert out["best_concept"][k] == concepts[b]
            assert (out["best_auc"][k], out["best_auprc"][k], out["best_q"][k]) == (auc[k, b], auprc[k, b], q[k, b])
            assert np.array_equal(out["best_p_perm"][k], p_perm[k, b], equal_nan=True)
        sig = [j for j in range(n_c) if q[k, j] <= 0.05 and auc[k, j] > 0.5]
        strong = [j for j in sig if auc[k, j] >= 0.75]
        assert out["n_significant"][k] == len(sig)
        sides = {j % 2 for j in strong}
        assert out["multimodal"][k] == (len(sides) == 2)
        assert out["spurious"][k] == any(concepts[j] in spurious for j in strong)
    assert out["n_significant"].dtype == np.int32
