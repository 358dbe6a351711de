"""The sanity checks reproduce NeuronEval's findings on neuronscan's kernels, controls included."""

from __future__ import annotations

import pytest

from neuronscan.stats import SANITY_METRICS, sanity_checks


@pytest.fixture(scope="module")
def result():
    return sanity_checks(n_images=20_000, frequencies=(0.3, 0.05, 0.001), n_seeds=12, seed=1)


def test_the_check_is_checked_by_metrics_known_to_fail(result):
    # Recall ignores missing labels, precision ignores extra ones: each fails exactly that test.
    assert not result.passed["recall"]["missing"] and result.passed["recall"]["extra"]
    assert result.passed["precision"]["missing"] and not result.passed["precision"]["extra"]
    # AUC barely moves when a rare concept loses half its images (its negatives gain n/2 of N): it fails
    # the missing-labels test at the rare frequency only, as NeuronEval reports.
    assert not result.passed["auc"]["missing"] and result.passed["auc"]["extra"]
    freqs = result.frequencies
    assert result.decrease["auc"]["missing"][freqs.index(0.001)] == 0.0
    assert result.decrease["auc"]["missing"][freqs.index(0.3)] == 1.0
    assert result.mean_diff["auc"]["missing"][freqs.index(0.001)] == pytest.approx(-0.001 / 4, rel=0.3)


def test_correlation_cosine_f1_iou_and_auprc_pass_both(result):
    for m in ("correlation", "cosine", "f1", "iou", "auprc"):
        assert result.passed[m] == {"missing": True, "extra": True}, m
    assert set(result.passed) == set(SANITY_METRICS)
    text = result.table()
    assert "auc" in text and "FAIL" in text and "(control)" in text


def test_a_fixed_top_quantile_costs_f1_and_iou_their_sensitivity_on_rarer_concepts():
    r = sanity_checks(n_images=20_000, frequencies=(0.05, 0.001), n_seeds=8, top_quantile=0.005)
    assert r.passed["f1"]["missing"] is False and r.decrease["f1"]["missing"][0] == 1.0
    assert r.passed["correlation"] == {"missing": True, "extra": True}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="positives"):
        sanity_checks(n_images=100, frequencies=(0.001,), n_seeds=2)
    with pytest.raises(ValueError, match="n_seeds"):
        sanity_checks(n_seeds=0)
