"""Lowest common ancestors on a DAG and multimodal units per level, against planted pairs and the score flag."""

from __future__ import annotations

import numpy as np
import pytest

from neuronscan.concepts import ancestors_map
from neuronscan.hierarchy import NO_PAIR, ConceptDag, multimodal_pairs
from neuronscan.stats import multimodal_units
from tests.unit.hierarchy._planted import EDGES

# A DAG with a two-parent node: "tabby" is under both "cat" (depth 2) and "striped" (depth 1).
DAG_EDGES = EDGES + [("cat", "P2"), ("tabby", "cat"), ("tabby", "striped"), ("striped", "R"), ("zebra", "striped")]


def test_lca_of_siblings_cousins_and_strangers():
    dag = ConceptDag(EDGES, ["x"])
    assert dag.lca("a", "b") == (["P1"], 1)
    assert dag.lca("a", "d") == (["R"], 0)
    assert dag.lca("a", "x") == ([], -1)
    assert dag.lca("a", "P1") == (["P1"], 1)  # an ancestor is its own descendant's LCA
    assert dag.lca("a", "a") == (["a"], 2)
    assert dag.is_ancestor("R", "a") and not dag.is_ancestor("a", "R") and not dag.is_ancestor("a", "a")


def test_lca_on_a_two_parent_node_is_the_deepest_common_ancestor():
    dag = ConceptDag(DAG_EDGES)
    assert dag.depth("tabby") == 3  # 1 + the deeper parent (cat, depth 2)
    # tabby and zebra meet at striped (depth 1) and at R (0): the LCA is the deeper one.
    assert dag.lca("tabby", "zebra") == (["striped"], 1)
    # tabby and d meet through cat's side at P2 (depth 1) — not at striped.
    assert dag.lca("tabby", "d") == (["P2"], 1)
    assert dag.lca("tabby", "a") == (["R"], 0)


def test_several_lowest_common_ancestors_of_equal_depth():
    dag = ConceptDag([("x", "p"), ("x", "q"), ("y", "p"), ("y", "q"), ("p", "r"), ("q", "r")])
    assert dag.lca("x", "y") == (["p", "q"], 1)


def _aligned(concepts, rows):
    aligned = np.zeros((len(rows), len(concepts)), bool)
    for k, names in enumerate(rows):
        for n in names:
            aligned[k, concepts.index(n)] = True
    return aligned


def test_root_pairs_are_multimodal_at_depth_0_and_siblings_are_not():
    concepts = ["P1", "P2", "R", "a", "b", "c", "d", "e"]
    rows = [{"a", "d"}, {"a", "b"}, {"a", "P1"}, {"a"}, {"a", "b", "P1"}, {"a", "b", "d"}]
    aligned = _aligned(concepts, rows)
    auc = np.where(aligned, 0.9, 0.5)
    dag = ConceptDag(EDGES, concepts)
    at0 = multimodal_pairs(aligned, auc, concepts, dag, max_lca_depth=0)
    assert (at0.n_pairs > 0).tolist() == [True, False, False, False, False, True]
    assert at0.pairs[0] == [("a", "d", ["R"], 0, 0.9, 0.9)]
    assert [(a, b) for a, b, *_ in at0.pairs[5]] == [("a", "d"), ("b", "d")]
    assert at0.min_lca_depth.tolist() == [0, 1, NO_PAIR, NO_PAIR, 1, 0]
    at1 = multimodal_pairs(aligned, auc, concepts, dag, max_lca_depth=1)
    assert (at1.n_pairs > 0).tolist() == [True, True, False, False, True, True]
    assert at1.n_aligned.tolist() == [2, 2, 2, 1, 3, 3]


def test_pairs_are_ordered_by_auc_and_capped_per_unit():
    concepts = ["a", "d", "e", "x"]
    aligned = np.ones((1, 4), bool)
    auc = np.array([[0.8, 0.95, 0.9, 0.85]])
    dag = ConceptDag(EDGES, concepts)
    found = multimodal_pairs(aligned, auc, concepts, dag, max_lca_depth=0, max_pairs_per_unit=2)
    # d-e meet at P2 (depth 1): not multimodal. The other 5 pairs are; the 2 with the highest smaller AUC stay.
    assert found.n_pairs.tolist() == [5]
    assert [(a, b) for a, b, *_ in found.pairs[0]] == [("d", "x"), ("e", "x")]
    assert all(auc_a >= auc_b for *_, auc_a, auc_b in found.pairs[0])


@pytest.mark.parametrize("seed", range(3))
def test_depth_minus_one_is_the_score_stages_multimodal_flag(seed):
    rng = np.random.default_rng(seed)
    concepts = sorted({c for e in DAG_EDGES for c in e} | {"loose"})
    aligned = rng.random((200, len(concepts))) < 0.12
    dag = ConceptDag(DAG_EDGES, concepts)
    found = multimodal_pairs(aligned, rng.random(aligned.shape), concepts, dag, max_lca_depth=-1)
    expected = multimodal_units(aligned, concepts, ancestors_map(DAG_EDGES))
    assert np.array_equal(found.n_pairs > 0, expected)


def test_without_a_hierarchy_any_two_aligned_concepts_are_multimodal():
    concepts = ["a", "b", "c"]
    aligned = _aligned(concepts, [{"a", "b"}, {"c"}])
    found = multimodal_pairs(aligned, np.full(aligned.shape, 0.9), concepts, ConceptDag([], concepts), max_lca_depth=0)
    assert found.n_pairs.tolist() == [1, 0] and found.pairs[0][0][2:4] == ([], -1)
