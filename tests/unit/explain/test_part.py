"""Zhang's part explainer: the part-template loss (-MI of maps and templates) against a loop written from the
definitions, its templates and mask by hand, and the explainer's shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuronscan.explain import PartExplainer, part_template_loss, positive_templates, template_mask


def _mi_by_loops(maps: np.ndarray, beta: float, tau: float, alpha: float) -> float:
    """-MI(X; T) averaged over filters, one template, image and filter at a time."""
    b, f, h, w = maps.shape
    n, n2 = max(h, w), h * w
    cells = [(y, x) for y in range(h) for x in range(w)]
    templates = []
    for my, mx in cells:
        t = np.array([[tau * max(1 - beta * (abs(y - my) + abs(x - mx)) / n, -1) for x in range(w)] for y in range(h)])
        templates.append(t)
    templates.append(np.full((h, w), -tau))
    prior = [alpha / n2] * n2 + [1 - alpha]
    total = 0.0
    for k in range(f):
        x = maps[:, k]
        x = x / max(x.mean(), 1e-6)
        px_t = np.zeros((b, len(templates)))
        for j, t in enumerate(templates):
            e = np.array([math.exp(float((x[i] * t).sum())) for i in range(b)])
            px_t[:, j] = e / e.sum()
        px = (px_t * np.array(prior)).sum(1)
        mi = sum(prior[j] * sum(px_t[i, j] * math.log(px_t[i, j] / px[i]) for i in range(b))
                 for j in range(len(templates)))
        total += -mi
    return total / f


@pytest.mark.parametrize("tau", [None, 0.5])
def test_part_template_loss_matches_the_definition(tau):
    rng = np.random.default_rng(0)
    maps = np.maximum(rng.normal(size=(6, 3, 4, 5)), 0)
    maps[0, 0, 1, 2] = 5.0
    got = float(part_template_loss(torch.tensor(maps, dtype=torch.float64), beta=4.0, tau=tau))
    want = _mi_by_loops(maps, 4.0, 0.5 / 20 if tau is None else tau, 20 / 21)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_one_peak_per_image_scores_lower_than_spread_activation():
    b, h, w = 16, 6, 6
    peaked = torch.zeros(b, 1, h, w)
    for i in range(b):
        peaked[i, 0, i % h, (i * 5) % w] = 1.0
    spread = torch.rand(b, 1, h, w, generator=torch.Generator().manual_seed(0))
    assert part_template_loss(peaked, tau=2.0) < part_template_loss(spread, tau=2.0)


def test_templates_and_mask_by_hand():
    t = positive_templates(3, 3, beta=4.0, tau=1.0)
    # mu = centre (row 4): distance 1 cells → 1 - 4/3 = -1/3; corners distance 2 → clamped at -1.
    want = [[-1, -1 / 3, -1], [-1 / 3, 1, -1 / 3], [-1, -1 / 3, -1]]
    assert np.allclose(t[4].view(3, 3).numpy(), want)
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 0, 0] = 3.0
    m = template_mask(maps, beta=2.0)[0, 0]
    # max(1 - 2 * d / 4, 0): d = 0 → 1, d = 1 → 0.5, d >= 2 → 0.
    assert m[0, 0] == 1.0 and m[0, 1] == 0.5 and m[1, 0] == 0.5 and m[1, 1] == 0.0 and m[3, 3] == 0.0


def test_part_explainer_shapes_and_seed():
    f = torch.rand(2, 8, 6, 6)
    a = PartExplainer(8, 5, ordinary=2, seed=3)
    b = PartExplainer(8, 5, ordinary=2, seed=3)
    out = a(f)
    assert out["parts"].shape == (2, 5, 6, 6) and out["ordinary"].shape == (2, 2, 6, 6)
    assert out["recon"].shape == f.shape and (out["recon"] >= 0).all()
    # Masked maps keep each map's peak and vanish far from it.
    peak = out["parts"].flatten(2).amax(-1)
    assert torch.allclose(out["masked"].flatten(2).amax(-1), peak)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="odd"):
        PartExplainer(8, 5, kernel_size=2)
