"""Lowest common ancestors in a concept DAG, and multimodal units per level.

Depth is `neuronscan.concepts.concept_depths`' (0 for a root, else 1 + the deepest parent). A concept's
*family* is the concept and all its ancestors. For two concepts a and b:

* their **common ancestors** are the intersection of their families (a itself when a is an ancestor of b);
* their **lowest common ancestors** (LCA) are the common ancestors of greatest depth — on a DAG there may be
  several (a node with two parents); ``lca_depth`` is that depth, −1 when they share no ancestor.

A unit is **multimodal at depth d** when it is *aligned* (q ≤ alpha, AUC ≥ ``score.min_auc``,
`neuronscan.stats.aligned_mask`) with two concepts, neither an ancestor of the other, whose ``lca_depth ≤ d``:
they only meet at or above depth d (at ``d = 0``: at a root, or nowhere). ``d = −1`` is the score stage's
``multimodal`` flag (aligned concepts that share no ancestor). A unit's ``min_lca_depth`` is the smallest
``lca_depth`` over its pairs: it is multimodal at every ``d ≥ min_lca_depth``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from neuronscan.concepts import ancestors_map, concept_depths

__all__ = ["ConceptDag", "UnitPairs", "multimodal_pairs", "NO_PAIR"]


class ConceptDag:
    """A concept hierarchy for LCA queries: families as bitsets ordered by depth (deepest = highest bit).

    Args:
        edges: ``(child, parent)`` edges (may be empty: every concept is then its own root).
        concepts: concepts outside the hierarchy to know too (depth 0, no ancestors).

    Example:
        >>> dag = ConceptDag([("circle", "round"), ("ellipse", "round"), ("round", "shape"), ("square", "shape")])
        >>> dag.lca("circle", "ellipse"), dag.lca("circle", "square"), dag.lca("circle", "red")
        ((['round'], 1), (['shape'], 0), ([], -1))
    """

    def __init__(self, edges: Iterable[tuple[str, str]], concepts: Iterable[str] = ()):
        edges = [(str(c), str(p)) for c, p in edges]
        anc = ancestors_map(edges) if edges else {}
        depth = concept_depths(edges) if edges else {}
        nodes = set(anc) | set(depth) | {str(c) for c in concepts}
        self.depths: dict[str, int] = {n: int(depth.get(n, 0)) for n in nodes}
        order = sorted(nodes, key=lambda n: (self.depths[n], n))
        self._bit = {n: i for i, n in enumerate(order)}
        self._names = order
        self._bit_depth = [self.depths[n] for n in order]
        # Bits of depth d occupy one contiguous range [lo, hi).
        self._band: dict[int, tuple[int, int]] = {}
        for i, d in enumerate(self._bit_depth):
            lo, _ = self._band.get(d, (i, i))
            self._band[d] = (lo, i + 1)
        self._family: dict[str, int] = {}
        for n in nodes:
            bits = 1 << self._bit[n]
            for a in anc.get(n, ()):
                bits |= 1 << self._bit[a]
            self._family[n] = bits

    def __contains__(self, concept: str) -> bool:
        return concept in self._family

    def depth(self, concept: str) -> int:
        return self.depths.get(concept, 0)

    def family(self, concept: str) -> int:
        return self._family.get(concept) or 0

    def is_ancestor(self, a: str, b: str) -> bool:
        """Whether ``a`` is a proper ancestor of ``b``."""
        return a != b and a in self._bit and bool(self.family(b) >> self._bit[a] & 1)

    def lca(self, a: str, b: str) -> tuple[list[str], int]:
        """The lowest common ancestors of ``a`` and ``b`` (sorted by name) and their depth; ``([], -1)`` if none."""
        common = self.family(a) & self.family(b)
        if not common:
            return [], -1
        d = self._bit_depth[common.bit_length() - 1]
        lo, hi = self._band[d]
        band = (common >> lo) & ((1 << (hi - lo)) - 1)
        names = [self._names[lo + i] for i in range(hi - lo) if band >> i & 1]
        return sorted(names), d


@dataclass
class UnitPairs:
    """The multimodal analysis of one layer.

    Attributes:
        pairs: per unit index (row of ``aligned``), its recorded pairs
            ``(concept_a, concept_b, lca, lca_depth, auc_a, auc_b)``, ``auc_a >= auc_b``.
        n_pairs: ``(n_units,)`` pairs with ``lca_depth <= max_lca_depth`` (all of them, also those not recorded).
        min_lca_depth: ``(n_units,)`` the smallest ``lca_depth`` of the unit's unnested aligned pairs; a value
            below −1 (−2) where the unit has no such pair.
        n_aligned: ``(n_units,)`` aligned concepts.
    """

    pairs: dict[int, list[tuple[str, str, list[str], int, float, float]]]
    n_pairs: np.ndarray
    min_lca_depth: np.ndarray
    n_aligned: np.ndarray


NO_PAIR = -2
"""``min_lca_depth`` of a unit without two unnested aligned concepts."""


def multimodal_pairs(
    aligned: np.ndarray,
    auc: np.ndarray,
    concepts: Sequence[str],
    dag: ConceptDag,
    *,
    max_lca_depth: int = 0,
    max_pairs_per_unit: int | None = None,
) -> UnitPairs:
    """Every unit's pairs of aligned concepts that meet only at or above ``max_lca_depth`` (module docstring).

    Args:
        aligned: ``(n_units, n_concepts)`` bool (`neuronscan.stats.aligned_mask`).
        auc: ``(n_units, n_concepts)`` AUCs (orders each pair and the recorded pairs).
        concepts: the column names.
        dag: the hierarchy.
        max_lca_depth: d of "multimodal at depth d" (−1: only concepts that share no ancestor).
        max_pairs_per_unit: record at most this many pairs per unit, those with the highest smaller AUC
            (None: all); ``n_pairs`` counts every pair.
    """
    aligned = np.asarray(aligned, dtype=bool)
    auc = np.asarray(auc, dtype=np.float64)
    n_units = aligned.shape[0]
    n_pairs = np.zeros(n_units, dtype=np.int32)
    min_depth = np.full(n_units, NO_PAIR, dtype=np.int16)
    out: dict[int, list] = {}
    cache: dict[tuple[int, int], tuple[bool, list[str], int]] = {}
    names = [str(c) for c in concepts]
    for k in np.flatnonzero(aligned.sum(1) >= 2):
        cols = np.flatnonzero(aligned[k])
        cols = cols[np.argsort(-auc[k, cols], kind="stable")]  # highest AUC first: concept_a is the stronger
        found = []
        best = None
        for i in range(len(cols)):
            for j in range(i + 1, len(cols)):
                a, b = int(cols[i]), int(cols[j])
                key = (a, b) if a < b else (b, a)
                hit = cache.get(key)
                if hit is None:
                    ca, cb = names[key[0]], names[key[1]]
                    nested = dag.is_ancestor(ca, cb) or dag.is_ancestor(cb, ca)
                    lcas, d = dag.lca(ca, cb)
                    hit = cache[key] = (nested, lcas, d)
                nested, lcas, d = hit
                if nested:
                    continue
                best = d if best is None else min(best, d)
                if d <= max_lca_depth:
                    found.append((names[a], names[b], lcas, d, float(auc[k, a]), float(auc[k, b])))
        if best is not None:
            min_depth[k] = best
        n_pairs[k] = len(found)
        if found:
            if max_pairs_per_unit is not None and len(found) > max_pairs_per_unit:
                order = sorted(range(len(found)), key=lambda i: (-found[i][5], -found[i][4], i))
                found = [found[i] for i in sorted(order[:max_pairs_per_unit])]
            out[int(k)] = found
    return UnitPairs(out, n_pairs, min_depth, aligned.sum(1).astype(np.int32))
