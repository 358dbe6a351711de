"""The spatial (HINT) method: IoU arithmetic, Guided Backprop, exact Shapley, a planted channel, the helpers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from neuronscan.errors import InputError
from neuronscan.hierarchy._spatial import (
    SpatialSection,
    analyse_concept,
    box_from_map,
    box_iou,
    concept_target,
    downsample,
    fit_concept_classifier,
    guided_backprop,
    linear_shapley,
    map_box_to_input,
    rank_channels,
    responsible_regions,
    saliency_maps,
    sample_concept_images,
    target_outputs,
    upsample_bilinear,
)
from pipelines.hierarchy_spatial import read_boxes

# --- IoU ---------------------------------------------------------------------------------------------------

SQUARE = [0, 0, 10, 10]


@pytest.mark.parametrize(
    "a,b,expected",
    [
        (SQUARE, SQUARE, 1.0),  # identical
        (SQUARE, [20, 20, 30, 30], 0.0),  # disjoint
        (SQUARE, [2, 2, 6, 6], 16 / 100),  # nested: the inner box's area over the outer's
        ([2, 2, 6, 6], SQUARE, 16 / 100),  # symmetric
        (SQUARE, [5, 5, 15, 15], 25 / 175),  # partial: 5x5 overlap, union 100 + 100 - 25
        ([0, 0, 4, 2], [2, 0, 6, 4], 4 / 20),  # partial, unequal boxes: overlap 2x2, union 8 + 16 - 4
        (SQUARE, [0, 5, 10, 20], 50 / 200),  # overlap over a full side: 10 x 5, union 100 + 150 - 50
        (SQUARE, [10, 0, 20, 10], 0.0),  # touching edges: half-open boxes share no pixel
        (SQUARE, [10, 10, 20, 20], 0.0),  # touching corners
        (SQUARE, [0, 9, 10, 19], 10 / 190),  # one row of pixels in common
        (SQUARE, [5, 5, 5, 8], 0.0),  # degenerate: zero width, inside the other box
        ([5, 5, 5, 8], [5, 5, 5, 8], 0.0),  # two empty boxes: 0, never NaN
        (SQUARE, [8, 8, 2, 2], 0.0),  # inverted corners: an empty box
        ([0.5, 0.5, 2.5, 1.5], [1.5, 0.5, 3.5, 1.5], 1 / 3),  # fractional coordinates
    ],
)
def test_box_iou_hand_computed(a, b, expected):
    got = box_iou(np.array(a, float), np.array(b, float))
    assert float(got) == pytest.approx(expected, abs=1e-12)
    assert np.isfinite(got)


def test_box_iou_broadcasts_and_max_over_boxes():
    pred = np.array([[0, 0, 10, 10]], float)
    truth = np.array([[20, 20, 30, 30], [5, 5, 15, 15], [0, 0, 10, 10]], float)
    ious = box_iou(pred, truth)
    assert ious.shape == (3,)
    assert ious.tolist() == pytest.approx([0.0, 25 / 175, 1.0])
    assert box_iou(pred[:, None], truth[None]).shape == (1, 3)


def test_map_box_to_input():
    # stretch: each axis scaled to the input
    assert map_box_to_input((10, 5, 30, 15), 40, 20, 10, "stretch") == (2.5, 2.5, 7.5, 7.5)
    # centre crop of a 40 x 20 image keeps x in [10, 30): shifted, scaled by 10 / 20, clipped to the crop
    assert map_box_to_input((0, 0, 20, 10), 40, 20, 10, "shorter_center_crop") == (0.0, 0.0, 5.0, 5.0)
    assert map_box_to_input((0, 0, 8, 10), 40, 20, 10, "shorter_center_crop") == (0.0, 0.0, 0.0, 5.0)
    # a square image is only scaled
    assert map_box_to_input((16, 0, 32, 64), 64, 64, 32, "shorter_center_crop") == (8.0, 0.0, 16.0, 32.0)


# --- Guided Backprop ----------------------------------------------------------------------------------------


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(inplace=True), nn.Linear(6, 1))
    return net.double().eval()


def _manual_grads(net: nn.Sequential, x: np.ndarray, guided: bool) -> np.ndarray:
    """d out / d x by hand: vanilla passes g · 1[h > 0] back through a ReLU, Guided Backprop max(g, 0) · 1[h > 0]."""
    w1, b1 = net[0].weight.detach().numpy(), net[0].bias.detach().numpy()
    w2, b2 = net[2].weight.detach().numpy(), net[2].bias.detach().numpy()
    w3 = net[4].weight.detach().numpy()
    h1 = x @ w1.T + b1
    h2 = np.maximum(h1, 0) @ w2.T + b2
    relu_back = (lambda g, h: np.maximum(g, 0) * (h > 0)) if guided else (lambda g, h: g * (h > 0))
    g = np.broadcast_to(w3, h2.shape)
    g = relu_back(g, h2) @ w2
    g = relu_back(g, h1) @ w1
    return g


def _autograd(net, x: np.ndarray) -> np.ndarray:
    xt = torch.tensor(x, requires_grad=True)
    (g,) = torch.autograd.grad(net(xt).sum(), xt)
    return g.numpy()


def test_guided_backprop_differs_from_vanilla_exactly_as_it_should():
    net = _mlp()
    x = np.random.default_rng(0).normal(size=(64, 5))
    vanilla = _autograd(net, x)
    with guided_backprop(net) as n_relus:
        guided = _autograd(net, x)
    assert n_relus == 2
    np.testing.assert_allclose(vanilla, _manual_grads(net, x, guided=False), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(guided, _manual_grads(net, x, guided=True), rtol=1e-12, atol=1e-12)
    assert not np.allclose(guided, vanilla)  # negative gradients were cut somewhere
    # the hooks are gone after the block, and the in-place ReLU is in place again
    np.testing.assert_array_equal(_autograd(net, x), vanilla)
    assert net[3].inplace is True and net[1].inplace is False


def test_guided_backprop_equals_vanilla_when_no_gradient_is_negative():
    net = _mlp(1)
    with torch.no_grad():
        for layer in (net[2], net[4]):
            layer.weight.abs_()  # every gradient reaching a ReLU is >= 0
    x = np.random.default_rng(1).normal(size=(32, 5))
    vanilla = _autograd(net, x)
    with guided_backprop(net):
        np.testing.assert_allclose(_autograd(net, x), vanilla, rtol=1e-12, atol=1e-12)


def test_guided_backprop_needs_relu_modules():
    with pytest.raises(ValueError, match="nn.ReLU"):
        with guided_backprop(nn.Sequential(nn.Linear(3, 2), nn.Tanh())):
            pass


class _TinyConv(nn.Module):
    def __init__(self, relu: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.conv2(self.act(self.conv1(x))).mean(dim=(2, 3)))


def test_saliency_maps_methods_on_a_tiny_conv_net():
    net = _TinyConv().eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def target(out, _f):
        return out[:, 1]

    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xr)[:, 1].sum(), xr)
    vanilla, feats = saliency_maps(net, net.conv2, x, target, method="vanilla")
    assert vanilla.shape == (3, 8, 8) and feats.shape == (3, 6, 4, 4)
    np.testing.assert_allclose(vanilla, torch.linalg.vector_norm(g.double(), dim=1).numpy(), rtol=1e-6)
    gxi, _ = saliency_maps(net, net.conv2, x, target, method="grad_x_input")
    np.testing.assert_allclose(gxi, torch.linalg.vector_norm((g * x).double(), dim=1).numpy(), rtol=1e-6)
    guided, _ = saliency_maps(net, net.conv2, x, target, method="guided_backprop")
    assert guided.shape == vanilla.shape and not np.allclose(guided, vanilla)
    assert net.act.inplace is True  # restored
    at_layer, _ = saliency_maps(net, net.conv2, x, target, method="vanilla", at="layer")
    assert at_layer.shape == (3, 4, 4)


def test_integrated_gradients_and_smoothgrad_on_a_linear_model():
    """With no ReLU the gradient is the same everywhere: IG (zero baseline) is gradient x input, and
    SmoothGrad is the plain gradient."""
    net = _TinyConv(relu=False).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    def target(out, _f):
        return out[:, 0]

    gxi, _ = saliency_maps(net, net.conv2, x, target, method="grad_x_input")
    ig, _ = saliency_maps(net, net.conv2, x, target, method="integrated_gradients", ig_steps=4)
    np.testing.assert_allclose(ig, gxi, rtol=1e-5, atol=1e-9)
    vanilla, _ = saliency_maps(net, net.conv2, x, target, method="vanilla")
    smooth, _ = saliency_maps(net, net.conv2, x, target, method="smoothgrad", smoothgrad_samples=3)
    np.testing.assert_allclose(smooth, vanilla, rtol=1e-5, atol=1e-9)


def test_concept_target_mixes_logits_and_the_direction():
    out = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    feats = torch.ones(2, 2, 3, 3) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert concept_target(mask)(out, feats).tolist() == [5.0, 4.0]
    d = torch.tensor([0.5, 0.5])
    assert concept_target(None, d)(out, feats).tolist() == [2.0, 2.0]
    mixed = concept_target(mask, d, torch.tensor([False, True]))(out, feats)
    assert mixed.tolist() == [5.0, 2.0]


# --- Shapley -------------------------------------------------------------------------------------------------


def test_linear_shapley_equals_brute_force_coalitions():
    rng = np.random.default_rng(0)
    n = 4
    w, b = rng.normal(size=n), 0.7
    background = rng.normal(size=(50, n)) * [1, 2, 0.5, 3] + [0, 1, -2, 4]
    xs = rng.normal(size=(6, n))

    def f(z):
        return z @ w + b

    def value(x, coalition):
        z = background.copy()
        z[:, list(coalition)] = x[list(coalition)]  # features outside S drawn from the background
        return f(z).mean()

    for x in xs:
        phi = np.zeros(n)
        for i in range(n):
            others = [j for j in range(n) if j != i]
            for k in range(n):
                for s in itertools.combinations(others, k):
                    weight = math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
                    phi[i] += weight * (value(x, s + (i,)) - value(x, s))
        got = linear_shapley(w, x[None], background.mean(0))[0]
        np.testing.assert_allclose(got, phi, rtol=1e-10, atol=1e-12)
        assert got.sum() == pytest.approx(f(x[None])[0] - f(background).mean())  # efficiency


# --- the method on planted feature maps ----------------------------------------------------------------------


def _planted(n: int, rng: np.random.Generator, channels: int = 8, grid: int = 16, planted: int = 3):
    feats = np.abs(rng.normal(1.0, 0.3, size=(n, channels, grid, grid)))
    saliency = rng.uniform(0, 0.2, size=(n, grid, grid))
    boxes = []
    for i in range(n):
        w, h = rng.integers(4, 9, size=2)
        x0, y0 = rng.integers(0, grid - w + 1), rng.integers(0, grid - h + 1)
        feats[i, planted, y0 : y0 + h, x0 : x0 + w] += 3.0
        saliency[i, y0 : y0 + h, x0 : x0 + w] += 1.0
        boxes.append((x0, y0, x0 + w, y0 + h))
    return feats, saliency, np.array(boxes, dtype=float)


def test_planted_channel_ranks_first_and_localises():
    rng = np.random.default_rng(0)
    feats, saliency, _ = _planted(40, rng)
    eval_feats, _, eval_boxes = _planted(25, rng)
    scale = 4  # a 16 x 16 grid on a 64 x 64 image
    result = analyse_concept(feats, saliency, eval_features=eval_feats,
                             eval_boxes=[b[None] * scale for b in eval_boxes], image_size=(64, 64), seed=0)
    assert result.skipped is None
    assert result.order[0] == 3
    assert result.shapley[3] > 3 * np.delete(result.shapley, 3).max()
    assert result.classifier.val_accuracy > 0.95
    assert len(result.ious) == 25
    assert result.ious.mean() >= 0.9, result.ious
    assert (result.ious >= 0.5).all()


def test_planted_channel_without_any_responsible_region_is_skipped():
    feats = np.ones((3, 4, 5, 5))
    result = analyse_concept(feats, np.zeros((3, 5, 5)))
    assert result.skipped == "no responsible positions" and result.n_flat == 3 and result.classifier is None


def test_rank_channels_uses_mean_absolute_shapley_and_breaks_ties_by_index():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = (x[:, 1] - 0.5 * x[:, 4] > 0).astype(int)
    clf = fit_concept_classifier(x, y, seed=0)
    order, score = rank_channels(clf, x[y == 1])
    np.testing.assert_allclose(score, np.abs(clf.raw_coef * (x[y == 1] - clf.mean)).mean(0))
    assert order[:2].tolist() == [1, 4]
    clf.coef[:] = 0.0
    order, score = rank_channels(clf, x[y == 1])
    assert order.tolist() == [0, 1, 2, 3, 4] and (score == 0).all()


def test_classifier_probability_is_sgd_modified_huber():
    from sklearn.linear_model import SGDClassifier

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4)) * [1, 5, 0.1, 2]
    y = (x[:, 0] + x[:, 2] * 10 > 0).astype(int)
    clf = fit_concept_classifier(x, y, val_fraction=0.0, seed=3)
    z = (x - clf.mean) / clf.scale
    ref = SGDClassifier(loss="modified_huber", alpha=0.01, max_iter=1000, tol=1e-3, random_state=3).fit(z, y)
    np.testing.assert_allclose(clf.proba(x), ref.predict_proba(z)[:, 1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(clf.coef, ref.coef_[0])


# --- grid helpers -------------------------------------------------------------------------------------------


def test_downsample_is_adaptive_average_pooling():
    maps = np.random.default_rng(0).random((2, 7, 10))
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.tensor(maps)[:, None], (3, 4))[:, 0].numpy()
    np.testing.assert_allclose(downsample(maps, (3, 4)), ref, rtol=1e-12)


def test_upsample_is_torch_bilinear():
    maps = np.random.default_rng(0).random((2, 3, 5))
    ref = torch.nn.functional.interpolate(torch.tensor(maps)[:, None], size=(12, 17), mode="bilinear",
                                          align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(upsample_bilinear(maps, (12, 17)), ref, rtol=1e-12, atol=1e-12)


def test_responsible_regions_normalisation_and_flat_images():
    grid = np.array([[[0.0, 1.0], [0.4, 0.6]], [[2.0, 2.0], [2.0, 2.0]]])
    regions, flat = responsible_regions(grid, threshold=0.5, quantile=1.0)
    assert regions[0].tolist() == [[False, True], [False, True]]
    assert flat.tolist() == [False, True] and not regions[1].any()
    # the 99th percentile maps to 1: the single highest value does not flatten the rest
    grid = np.concatenate([np.full(99, 0.6), [100.0], [0.0]]).reshape(1, 1, 101)
    regions, _ = responsible_regions(grid, 0.5, 0.98)
    assert regions.sum() == 100


def test_box_from_map_components():
    m = np.zeros((10, 10), dtype=bool)
    m[1:3, 1:3] = True  # 4 pixels
    m[5:9, 4:9] = True  # 20 pixels: the largest component
    assert box_from_map(m) == (4, 5, 9, 9)
    assert box_from_map(m, "all") == (1, 1, 9, 9)
    assert box_from_map(np.zeros((4, 4), bool)) == (0, 0, 0, 0)
    d = np.eye(4, dtype=bool)  # diagonal pixels are one 8-connected component
    assert box_from_map(d) == (0, 0, 4, 4)


# --- sampling, targets, boxes files, settings ---------------------------------------------------------------


def test_sample_concept_images_caps_per_leaf_and_in_all():
    groups = {"a": np.arange(0, 50), "b": np.arange(100, 103), "c": np.arange(200, 260)}
    ids = sample_concept_images(groups, per_leaf=20, max_images=1000, rng=np.random.default_rng(0))
    assert len(ids) == 43 and set(range(100, 103)) <= set(ids)
    assert sum(i < 50 for i in ids) == 20 and sum(i >= 200 for i in ids) == 20
    capped = sample_concept_images(groups, per_leaf=20, max_images=30, rng=np.random.default_rng(0))
    assert len(capped) == 30 and set(capped) <= set(ids)
    again = sample_concept_images(groups, per_leaf=20, max_images=30, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(capped, again)


def test_target_outputs_own_logit_descendants_or_none():
    anc = {"red": {"warm", "colour"}, "warm": {"colour"}, "colour": set(), "circle": {"round"}, "round": set()}
    outputs = {"red": 0, "warm": 5, "circle": 1}
    under_colour = {"colour", "warm", "red"}
    assert target_outputs("red", {"red", "circle"}, {"red"}, outputs, anc) == [0]
    # colour is no output: the most specific output under it the image carries (red, not warm)
    assert target_outputs("colour", {"red", "circle"}, under_colour, outputs, anc) == [0]
    assert target_outputs("round", {"circle"}, {"round", "circle"}, outputs, anc) == [1]
    assert target_outputs("round", {"circle"}, {"round", "circle"}, {}, anc) == []


def test_read_boxes_any_parquet(tmp_path):
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"image_id": [1, 2, 3], "concept": ["dog", "cat", "dog"], "x0": [0, 5, 3],
                             "y0": [0, 5, 3], "x1": [10, 5, 9], "y1": [4, 8, 9], "note": ["a", "b", "c"]}), path)
    boxes = read_boxes(str(path))
    assert boxes["image_id"].tolist() == [1, 3]  # the empty box (x1 == x0) is dropped
    assert boxes["width"].isna().all() and boxes[["x0", "y0", "x1", "y1"]].dtypes.eq("float64").all()
    pq.write_table(pa.table({"image_id": [1], "concept": ["dog"], "x0": [0]}), path)
    with pytest.raises(InputError, match="lacks column"):
        read_boxes(str(path))


def test_spatial_section_is_strict():
    assert SpatialSection().saliency == "guided_backprop" and SpatialSection().threshold == 0.5
    with pytest.raises(ValidationError):
        SpatialSection(per_leaf="20")
    with pytest.raises(ValidationError):
        SpatialSection(unknown_key=1)
    with pytest.raises(ValidationError):
        SpatialSection(saliency="gradcam")
    assert SpatialSection(output_concepts=["a", "b"]).output_concepts == ["a", "b"]
