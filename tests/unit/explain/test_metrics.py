"""Fidelity, sparsity and stability figures against values computed by hand, and the layer substitution the
accuracy figure rests on (ShapesNet's head sees exactly the reconstruction of conv4:mean)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from neuronscan.explain import (
    AccuracyCounts,
    DistanceSums,
    LayerTap,
    VarianceSums,
    interpretability,
    peak_fractions,
    pooled,
    shift_to_statistic,
)


def test_explained_variance_by_hand():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    x_hat = np.array([[1.5, 2.0], [3.0, 5.0], [4.0, 9.0]])
    # SST: column 0 mean 3 → 4 + 0 + 4 = 8; column 1 mean 5 → 9 + 1 + 16 = 26; SSE: 0.25 + 0 + 1 + 1 + 0 + 0.
    ev = VarianceSums(2)
    ev.add(x, x_hat)
    assert ev.sst == pytest.approx(34.0)
    assert ev.explained_variance() == pytest.approx(1 - 2.25 / 34)
    assert ev.mse() == pytest.approx(2.25 / 6)
    # Sums over two workers add up to the sums over all rows.
    a, b = VarianceSums(2), VarianceSums(2)
    a.add(x[:1], x_hat[:1])
    b.add(x[1:], x_hat[1:])
    both = VarianceSums.from_vector(a.vector() + b.vector())
    assert both.explained_variance() == pytest.approx(ev.explained_variance())
    # A perfect reconstruction explains everything; the mean explains nothing.
    perfect = VarianceSums(2)
    perfect.add(x, x)
    assert perfect.explained_variance() == 1.0
    mean = VarianceSums(2)
    mean.add(x, np.broadcast_to(x.mean(0), x.shape))
    assert mean.explained_variance() == pytest.approx(0.0, abs=1e-12)


def test_accuracy_counts_by_hand():
    groups = {"shape": slice(0, 3), "colour": slice(3, 5)}
    acc = AccuracyCounts(groups)
    # Image 0: shape 1, colour 3; image 1: shape 2, no colour label; image 2: two shape labels (not counted for
    # shape) and colour 4.
    targets = acc.targets([{1, 3}, {2}, {0, 1, 4}])
    assert targets["shape"].tolist() == [1, 2, -1] and targets["colour"].tolist() == [0, -1, 1]
    orig = np.array([[0, 5, 1, 9, 0], [0, 0, 7, 0, 1], [9, 0, 0, 0, 9]], dtype=float)  # shape 2/2, colour 2/2
    rec = np.array([[0, 5, 1, 0, 9], [7, 0, 0, 0, 1], [9, 0, 0, 0, 9]], dtype=float)  # shape 1/2, colour 1/2
    abl = np.array([[5, 0, 0, 9, 0], [5, 0, 0, 0, 1], [9, 0, 0, 0, 9]], dtype=float)  # shape 0/2, colour 2/2
    acc.add("original", orig, targets, count=True)
    acc.add("reconstructed", rec, targets, count=False)
    acc.add("mean_ablated", abl, targets, count=False)
    out = acc.summary()
    assert out["images_counted"] == {"shape": 2, "colour": 2}
    assert out["original"] == 1.0
    assert out["reconstructed_per_group"] == {"shape": 0.5, "colour": 0.5}
    assert out["reconstructed"] == pytest.approx(0.5)
    assert out["mean_ablated_per_group"] == {"shape": 0.0, "colour": 1.0}
    assert out["mean_ablated"] == pytest.approx(0.5)
    assert out["recovered_fraction"] == pytest.approx((0.5 - 0.5) / (1.0 - 0.5))
    again = AccuracyCounts(groups)
    again.load_vector(acc.vector())
    assert again.summary() == out


def test_location_instability_by_hand():
    # Two components, three images; landmark at the centre. Component 0 peaks at distances 0, 0.1, 0.2 (of the
    # diagonal) and fires on all; component 1 fires on one image only (below min_images).
    s2 = math.sqrt(2)
    landmarks = np.array([[0.5, 0.5]] * 3)
    peaks = np.zeros((3, 2, 2))
    for i, d in enumerate([0.0, 0.1, 0.2]):
        peaks[i, 0] = [0.5 + d * s2, 0.5]  # |peak - landmark| = d * sqrt(2), i.e. d of the diagonal
        peaks[i, 1] = [0.0, 0.0]
    active = np.array([[True, False], [True, True], [True, False]])
    ds = DistanceSums(2)
    ds.add(peaks, active, landmarks)
    inst = ds.instability(min_images=2)
    assert inst[0] == pytest.approx(np.std([0.0, 0.1, 0.2]))
    assert math.isnan(inst[1])
    # Images without a landmark do not count.
    ds2 = DistanceSums(2)
    ds2.add(peaks, active, np.array([[0.5, 0.5], [np.nan, np.nan], [0.5, 0.5]]))
    assert ds2.n.tolist() == [2.0, 0.0]


def test_peak_fractions_are_cell_centres():
    maps = np.zeros((1, 2, 4, 8))
    maps[0, 0, 1, 2] = 1.0
    maps[0, 1, 3, 7] = 1.0
    assert peak_fractions(maps)[0].tolist() == [[1.5 / 4, 2.5 / 8], [3.5 / 4, 7.5 / 8]]


def test_shift_to_statistic_sets_the_mean_and_the_max():
    out = torch.rand(2, 3, 4, 4)
    target = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    for stat in ("mean", "max"):
        assert torch.allclose(pooled(shift_to_statistic(out, stat, target), stat), target, atol=1e-6)
    vec = torch.rand(2, 3)
    assert torch.equal(shift_to_statistic(vec, None, target), target)


def test_replacing_conv4_mean_feeds_the_reconstruction_to_shapesnets_head():
    from neuronscan.demo.model import ShapesNet

    model = ShapesNet().eval()
    x = torch.randn(3, 3, 64, 64)
    target = torch.rand(3, 256)
    with LayerTap(model, "conv4") as tap, torch.no_grad():
        model(x)
        assert tap.captured.shape == (3, 256, 8, 8)
        tap.replace = lambda out: shift_to_statistic(out, "mean", target)
        logits = model(x)
    assert torch.allclose(logits, model.head(target), atol=1e-5)


def test_interpretability_counts_live_units():
    neurons = pd.DataFrame({
        "layer": ["a@sae"] * 4 + ["a"] * 2,
        "unit": [0, 1, 2, 3, 0, 1],
        "best_concept": ["red", "circle", None, "red", "round", "red"],
        "best_auprc": [0.9, 0.5, np.nan, 0.7, 0.4, 0.6],
        "best_auc": [0.95, 0.6, np.nan, 0.9, 0.7, 0.8],
        "best_correlation": [0.8, 0.1, np.nan, 0.6, 0.3, 0.5],
        "n_significant": [2, 0, 0, 1, 3, 5],
        "dead": [False, False, True, False, False, False],
        "formula_auc": [0.95, 0.7, np.nan, 0.9, 0.99, 0.8],
    })
    concepts = pd.DataFrame({"concept": ["red", "circle", "round"], "depth": [2, 2, 1]})
    out = interpretability(neurons, "a@sae", concepts)
    assert out["units"] == 4 and out["live_units"] == 3
    assert out["frac_significant"] == pytest.approx(2 / 3)
    assert out["mean_best_auprc"] == pytest.approx(0.7)
    assert out["mean_n_significant"] == pytest.approx(1.0)
    assert out["mean_best_depth"] == pytest.approx(2.0)
    assert out["mean_formula_auc"] == pytest.approx((0.95 + 0.7 + 0.9) / 3)
    assert out["frac_formula_auc_90"] == pytest.approx(2 / 3)
    raw = interpretability(neurons, "a", concepts)
    assert raw["frac_significant"] == 1.0 and raw["mean_best_depth"] == pytest.approx(1.5)
    assert interpretability(neurons, "missing") == {"layer": "missing", "units": 0}
