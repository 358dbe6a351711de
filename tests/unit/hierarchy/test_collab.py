"""Collaborative units on planted truth; exact Shapley values against brute-force enumeration; the split."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from neuronscan.hierarchy import (
    CollabParams,
    balanced_weights,
    collaborative_units,
    concept_split,
    fit_logistic,
    linear_shapley,
    shapley_shares,
)
from tests.unit.hierarchy._planted import PARENT_UNIT, labels_of, planted

PARAMS = CollabParams(min_positives=20, n_candidates=8, max_units=6)


@pytest.fixture(scope="module")
def world():
    leaf, x, wiring = planted(n_images=900, n_units=16, seed=3)
    return leaf, x, wiring


def test_the_parent_unit_alone_is_the_set_of_its_parent(world):
    leaf, x, _ = world
    res = collaborative_units(x, labels_of(leaf, "P2"), "P2", PARAMS)
    assert res.units.tolist() == [PARENT_UNIT]
    assert res.reached and res.cumulative_auc[0] >= res.target_auc
    assert res.shapley.tolist() == [1.0]


@pytest.mark.parametrize("child, unit", [("d", 3), ("e", 4)])
def test_a_child_gets_its_own_unit_first_not_the_parent_unit(world, child, unit):
    leaf, x, _ = world
    res = collaborative_units(x, labels_of(leaf, child), child, PARAMS)
    assert res.units[0] == unit
    assert PARENT_UNIT not in res.units[:1]
    assert res.reached


def test_a_parent_without_its_own_unit_gets_exactly_its_childrens_units(world):
    leaf, x, _ = world
    res = collaborative_units(x, labels_of(leaf, "P1"), "P1", PARAMS)
    assert sorted(res.units.tolist()) == [0, 1, 2]
    assert res.reached
    # Each unit added raises the held-out AUC; the children share the contribution about equally.
    assert np.all(np.diff(res.cumulative_auc) > 0)
    assert res.cumulative_auc[1] < res.target_auc <= res.cumulative_auc[2]
    assert res.shapley.sum() == pytest.approx(1.0)
    assert res.shapley.min() > 0.2


def test_max_units_caps_the_set(world):
    leaf, x, _ = world
    params = CollabParams(min_positives=20, n_candidates=8, max_units=2)
    res = collaborative_units(x, labels_of(leaf, "P1"), "P1", params)
    assert len(res.units) == 2 and not res.reached


def test_an_absolute_target_below_the_first_unit_stops_there(world):
    leaf, x, _ = world
    params = CollabParams(min_positives=20, n_candidates=8, target_auc=0.6)
    res = collaborative_units(x, labels_of(leaf, "P1"), "P1", params)
    assert len(res.units) == 1 and res.target_auc == 0.6


def test_too_few_positives_or_negatives_gives_none(world):
    leaf, x, _ = world
    y = np.zeros(len(leaf), bool)
    y[:10] = True
    assert collaborative_units(x, y, "rare", PARAMS) is None
    assert collaborative_units(x, ~y, "common", PARAMS) is None


def test_no_unit_above_chance_gives_an_empty_set():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.5
    x = np.c_[np.where(y, -1.0, 1.0) + rng.normal(scale=0.1, size=400), np.ones(400)]
    res = collaborative_units(x, y, "opposite", CollabParams())
    assert len(res.units) == 0 and not res.reached and res.n_candidates == 0


def test_the_split_is_stratified_seeded_and_capped():
    y = np.zeros(1000, bool)
    y[::4] = True
    params = CollabParams(holdout=0.3, max_positives=100, max_negatives=300, seed=5)
    s = concept_split(y, "c", params)
    assert (s.y_train.sum(), s.y_test.sum()) == (70, 30)
    assert ((~s.y_train).sum(), (~s.y_test).sum()) == (210, 90)
    assert not set(s.train) & set(s.test)
    again = concept_split(y, "c", params)
    assert np.array_equal(s.train, again.train) and np.array_equal(s.test, again.test)
    other = concept_split(y, "c", CollabParams(holdout=0.3, max_positives=100, max_negatives=300, seed=6))
    assert not np.array_equal(s.test, other.test)
    assert not np.array_equal(s.test, concept_split(y, "d", params).test)


def test_same_result_for_every_layer_order_and_rerun(world):
    leaf, x, _ = world
    y = labels_of(leaf, "P1")
    a = collaborative_units(x, y, "P1", PARAMS)
    b = collaborative_units(x.copy(), y.copy(), "P1", PARAMS)
    assert a.units.tolist() == b.units.tolist() and np.array_equal(a.cumulative_auc, b.cumulative_auc)


def _brute_force_shapley(value, n_features: int) -> np.ndarray:
    """Shapley values by enumerating every coalition: sum_S |S|!(n-|S|-1)!/n! (v(S + i) - v(S))."""
    phi = np.zeros(n_features)
    for i in range(n_features):
        others = [j for j in range(n_features) if j != i]
        for size in range(n_features):
            for subset in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(n_features - size - 1) / math.factorial(n_features)
                phi[i] += weight * (value(set(subset) | {i}) - value(set(subset)))
    return phi


def test_linear_shapley_equals_brute_force_on_a_four_unit_probe():
    rng = np.random.default_rng(11)
    z = rng.normal(size=(300, 4)) * [1.0, 2.0, 0.5, 1.5] + [0.3, -1.0, 2.0, 0.0]
    y = (z @ [1.0, -0.5, 2.0, 0.7] + rng.normal(size=300)) > 1.0
    fit = fit_logistic(z, y, balanced_weights(y), l2=0.01)
    coef, b = fit.coef[0], fit.intercept[0]
    background = z[:200]
    mean = background.mean(0)
    phi = linear_shapley(coef, z[200:], mean)
    for row, x in zip(phi[:10], z[200:210]):
        def value(coalition, x=x):
            # The logit with absent units set to their background mean (interventional, independent baseline).
            present = np.array([j in coalition for j in range(4)])
            return b + coef @ np.where(present, x, mean)

        np.testing.assert_allclose(row, _brute_force_shapley(value, 4), atol=1e-10)
        assert row.sum() == pytest.approx(value({0, 1, 2, 3}) - value(set()))  # efficiency


def test_shapley_shares_are_mean_absolute_values_normalised():
    phi = np.array([[1.0, -3.0], [-1.0, 1.0]])
    np.testing.assert_allclose(shapley_shares(phi), [1 / 3, 2 / 3])
    np.testing.assert_allclose(shapley_shares(np.zeros((2, 4))), [0.25] * 4)


def test_shares_of_a_planted_set_follow_its_units_weights(world):
    leaf, x, _ = world
    res = collaborative_units(x, labels_of(leaf, "P1"), "P1", PARAMS)
    assert len(res.weights) == len(res.units) == len(res.shapley) == len(res.unit_auc)
    assert np.all(res.weights > 0)
