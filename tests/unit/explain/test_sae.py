"""Sparse autoencoders: a planted layer whose features are a known sparse non-negative mix of part detectors —
the SAE trained by the explain stage's own worker code recovers the parts (Hungarian matching, cosine ≥ 0.9); the
JumpReLU straight-through estimator's gradients against the rectangle-kernel formulas; decoder norms; AuxK."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from neuronscan.config import config_from_dict
from neuronscan.explain import SparseAutoencoder, normalise_decoder, remove_parallel_grad, sae_loss
from neuronscan.io import RunDir
from pipelines.explain import plan_explainer, train_local
from tests.unit.explain._planted import planted_config, planted_parts, write_planted_run


def _weights(folder: str) -> dict:
    return torch.load(f"{folder}/explainer.pt", weights_only=True)


def _matched_cosines(w_dec: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Cosine of each part (column of d) with the decoder column the optimal one-to-one assignment gives it."""
    a = w_dec / np.linalg.norm(w_dec, axis=0, keepdims=True)
    b = d / np.linalg.norm(d, axis=0, keepdims=True)
    sim = b.T @ a  # (parts, components)
    rows, cols = linear_sum_assignment(-sim)
    return sim[rows, cols]


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_the_sae_recovers_planted_parts(tmp_path, activation):
    x, d, c = planted_parts()
    sparsity = {"activation": "topk", "k": 3} if activation == "topk" else {
        "activation": "jumprelu", "threshold": 0.3, "l0_coefficient": 0.05, "bandwidth": 0.1}
    cfg = config_from_dict(planted_config(sparsity=sparsity, epochs=30))
    root = write_planted_run(tmp_path / "run", x, c=c, config=cfg.model_dump(mode="json"))
    run = RunDir(str(root))
    plan = plan_explainer(cfg, run, cfg.explain.explainers()[0])
    assert plan.derived == "planted:mean@sae" and plan.width == 32 and plan.n_units == 32
    train_local(plan)
    state = _weights(plan.folder)["state_dict"]
    cos = _matched_cosines(state["W_dec"].numpy(), d)
    assert cos.min() >= 0.9, np.round(np.sort(cos), 3)
    # The derived layer is committed, one part per source part, every image once, in the activation contract.
    files = run.committed_layer_files("planted:mean@sae")
    assert len(files) == 2
    assert sorted(lp.layer for lp in run.layer_parts()) == ["planted:mean", "planted:mean@sae"]
    import json

    metrics = json.loads(open(f"{plan.folder}/metrics.json").read())
    assert metrics["fidelity"]["explained_variance"] > 0.95
    # Three parts per image: TopK keeps exactly three components, JumpReLU learns to.
    assert metrics["sparsity"]["mean_l0"] == pytest.approx(3.0, abs=0 if activation == "topk" else 0.3)
    assert metrics["dead"]["count"] <= 32 - 16


def test_topk_keeps_the_k_largest_positive_pre_activations():
    sae = SparseAutoencoder(4, 6, activation="topk", k=2, seed=0)
    pre = torch.tensor([[0.5, -1.0, 2.0, 0.1, 1.0, -3.0], [-1.0, -2.0, -0.5, -0.1, -3.0, -4.0]])
    z = sae.activate(pre)
    assert z.tolist() == [[0.0, 0.0, 2.0, 0.0, 1.0, 0.0], [0.0] * 6]  # negatives among the top k give 0


def test_jumprelu_straight_through_gradients_match_the_rectangle_kernel():
    eps = 0.2
    sae = SparseAutoencoder(3, 4, activation="jumprelu", threshold=0.5, bandwidth=eps, seed=0)
    theta = sae.threshold.detach()
    pre = torch.tensor([[0.45, 0.62, 0.58, 1.0], [0.3, 0.55, 0.41, 0.5]], requires_grad=True)
    z = sae.activate(pre)
    assert torch.equal(z.detach(), pre.detach() * (pre.detach() > theta))
    g = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    z.backward(g)
    kernel = ((pre.detach() - theta).abs() < eps / 2).float()
    expected_theta = (-(theta / eps) * kernel * g).sum(0)
    # d/d log_theta = theta * d/d theta
    assert torch.allclose(sae.log_threshold.grad, expected_theta * theta, atol=1e-6)
    assert torch.equal(pre.grad, g * (pre.detach() > theta).float())
    # The L0 penalty's gradient: -(1/eps) kernel per image, summed, through the threshold only.
    sae.zero_grad()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    out = sae(x)
    parts = sae_loss(sae, out, l0_coefficient=1.0)
    l0_only = parts["loss"] - parts["mse"]
    (grad,) = torch.autograd.grad(l0_only, sae.log_threshold)
    k = ((out["pre"].detach() - theta).abs() < eps / 2).float()
    assert torch.allclose(grad, (-(1 / eps) * k).sum(0) / 5 * theta, atol=1e-6)


def test_decoder_columns_stay_unit_norm_and_their_parallel_gradient_goes():
    sae = SparseAutoencoder(5, 7, seed=3)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    normalise_decoder(sae)
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(7), atol=1e-6)
    sae.W_dec.grad = sae.W_dec.detach().clone() * 2 + torch.randn(5, 7)
    remove_parallel_grad(sae)
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(0), torch.zeros(7), atol=1e-5)


def test_auxk_reconstructs_the_residual_with_dead_components_only():
    sae = SparseAutoencoder(6, 10, k=2, seed=0)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.since_fired[:] = 0
        sae.since_fired[5:] = 100  # components 5..9 dead
    out = sae(x)
    parts = sae_loss(sae, out, aux_k=3, aux_coefficient=1.0, dead_after=50)
    assert parts["aux"] > 0
    # Gradients of the aux term reach only the dead components' encoder rows.
    sae.zero_grad()
    parts["aux"].backward()
    g = sae.W_enc.grad.abs().sum(1)
    assert (g[:5] == 0).all() and (g[5:] > 0).any()
    # Nothing dead: no aux loss.
    with torch.no_grad():
        sae.since_fired[:] = 0
    assert float(sae_loss(sae, sae(x), aux_k=3, dead_after=50)["aux"]) == 0.0


def test_update_fired_counts_images_since_each_component_fired():
    sae = SparseAutoencoder(3, 4, k=1, seed=0)
    sae.update_fired(torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]))
    assert sae.since_fired.tolist() == [2, 0, 2, 0]
    sae.update_fired(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert sae.since_fired.tolist() == [0, 1, 3, 1]
