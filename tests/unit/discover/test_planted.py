"""Planted truth (`_planted.py`): the dictionary is recovered (Hungarian-matched cosine ≥ 0.9) from crops and
from positions, the importance ranking is the planted one, and Sobol agrees with gradient × input on the linear
head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronscan.discover import CraftSettings, ModelSplit, discover_class, matched_cosine
from tests.unit.discover._planted import BIAS, GAMMA, K_TRUE, PlantedModel, S, planted_dictionary, planted_images

W_TRUE = planted_dictionary()


@pytest.fixture(scope="module")
def split():
    torch.set_num_threads(1)
    return ModelSplit(PlantedModel(W_TRUE), "latent", input_size=S, in_channels=K_TRUE)


def _settings(**kw) -> CraftSettings:
    return CraftSettings(**{"n_concepts": K_TRUE, "importance_images": 12, "sobol_designs": 64,
                            "mufidelity_subsets": 32, "batch_size": 256, **kw})


@pytest.fixture(scope="module", params=[("positions", 16), ("crops", 40)], ids=["positions", "crops"])
def found(request, split):
    source, n = request.param
    x = planted_images(n, seed=1)
    return source, x, discover_class(split, x, 0, _settings(source=source, patch_size=8))


def test_the_planted_dictionary_is_recovered(found):
    source, _x, r = found
    mean, pairs = matched_cosine(W_TRUE, r.factorisation.components)
    assert pairs[:, 2].min() >= 0.9, (source, pairs)
    assert mean >= 0.99
    assert r.quality["reconstruction_error"] < 0.05 and r.quality["reconstruction_error_positions"] < 0.05
    assert r.rows.per_image == (S * S if source == "positions" else 4)  # 8-px crops, stride 6: 2 × 2
    assert r.quality["stability"] >= 0.95  # two halves of the images find the same concepts


def test_the_importance_ranking_is_the_planted_one(found):
    _source, x, r = found
    _mean, pairs = matched_cosine(W_TRUE, r.factorisation.components)
    found_of_true = pairs[:, 1].astype(int)  # row k: the discovered concept matched to planted concept k
    presence = x[: r.n_importance].mean(dim=(2, 3)).numpy()  # (n, K_TRUE): mean of each concept map
    share = presence * GAMMA  # each planted concept's exact additive share of the logit
    for method in ("sobol", "gradient_input", "occlusion"):
        ranking = np.argsort(-r.class_importance[method][found_of_true])
        assert ranking.tolist() == np.argsort(-share.mean(0)).tolist() == [0, 1, 2, 3], method
    gi = r.importance["gradient_input"][:, found_of_true]
    # Gradient × input is the planted shares, up to how well the recovered W matches the planted one.
    assert np.allclose(gi, share, atol=0.1 * share.max())
    assert np.allclose(gi.sum(1), share.sum(1), rtol=0.02)  # the shares add up to the logit above the bias
    assert np.allclose(r.logit, BIAS + share.sum(1), atol=1e-4)


def test_sobol_and_gradient_input_agree_on_the_linear_head(found):
    _source, _x, r = found
    gi, sobol = r.importance["gradient_input"], r.importance["sobol"]
    occ = r.importance["occlusion"]
    assert np.allclose(gi, occ, atol=1e-4)  # a linear head: removing a concept removes exactly its share
    expected = gi**2 / (gi**2).sum(axis=1, keepdims=True)  # uniform masks, independent: S_Ti ∝ share²
    assert np.abs(sobol - expected).max() < 0.2  # one image: 64 designs, randomly paired
    assert np.abs(sobol.mean(0) - expected.mean(0)).max() < 0.05  # the class: the mean over its images
    assert (np.argmax(sobol, axis=1) == np.argmax(np.abs(gi), axis=1)).all()
    # Exact shares: C-µFidelity is 1 for gradient × input and occlusion.
    assert r.metrics["gradient_input"]["c_mufidelity"] == pytest.approx(1.0, abs=1e-6)
    assert r.metrics["occlusion"]["c_mufidelity"] == pytest.approx(1.0, abs=1e-6)
    assert r.metrics["sobol"]["c_mufidelity"] > 0.9
    # Deletion in importance order falls faster than insertion rises: C-Deletion < C-Insertion.
    assert r.metrics["sobol"]["c_deletion"] < r.metrics["sobol"]["c_insertion"]
    assert r.deletion["sobol"][:, -1] == pytest.approx(r.insertion["sobol"][:, 0])  # all removed, both ways


def test_strategies_and_accuracy(found):
    _source, _x, r = found
    frame = r.strategies
    assert frame["prevalence"].sum() == pytest.approx(1.0) and frame["n_images"].sum() == r.n_importance
    assert r.correct.dtype == bool and len(r.correct) == r.n_importance
    assert set(np.unique(r.u_images.argmax(1))) <= set(range(K_TRUE))
    assert len(r.examples) == K_TRUE and all(1 <= len(e) <= 8 for e in r.examples)
