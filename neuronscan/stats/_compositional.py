"""Compositional concept labels: the best AND/OR formula of concepts, exactly or by beam search.

A unit's label can be a formula such as ``(circle AND red) OR NOT striped``. Atoms are the
concepts and their negations; a formula is built left to right, ``phi_{l+1} = phi_l AND atom`` or
``phi_l OR atom``, up to ``max_length`` atoms. A formula is scored by the AUC of its positive set
against the unit's activations, computed from rank sums exactly as for single concepts:

    U = sum_{i in phi} r_i - n (n + 1) / 2,    AUC = U / (n (N - n)),

with ``r`` the unit's average ranks (ties averaged, 1..N) and ``n = |phi|``; the AUC equals
``sklearn.metrics.roc_auc_score(mask, activations)``. This module is the public entry
(:func:`compositional_search` for one unit, :func:`compositional_search_units` for a layer); the
parts live in:

* :mod:`._formula`: :class:`Formula`, the label index, atoms and the atom set ``A``, the search
  space and its support bounds (defaults: ``min_fraction=0.001``, ``max_fraction=0.5``), input
  checks and text rendering;
* :mod:`._exact`: the exact search (intersection rank sums of concept triples);
* :mod:`._beam`: INVERT's beam search;
* :mod:`._reference`: a brute-force enumerator of the same space, with dense masks (the test
  oracle; not public API).

Search space. Every formula ``a_1 op_2 a_2 ... op_L a_L`` over the atom set ``A`` (the top
``n_candidates`` atoms by single-atom AUC plus the top ``n_candidates`` in-bounds ones),
``L <= max_length``, whose *every prefix* has its support ``|phi| / N`` in
``[min_fraction, max_fraction]``. This is exactly what the beam search reaches with an unbounded
beam, so it is the "same space" that the reference enumerates.

Search modes (``search=``):

* ``"exact"`` (the default; ``max_length <= 3``): the optimum of the whole space, the same as the
  reference's, formula for formula (the same AUC bit for bit, positive set, text and
  ``n_formulas_evaluated``). ``top_k`` formulas are returned; ``beam_size`` is ignored. Longer
  formulas are refused with a ``ValueError`` (the space grows as ``M^L``, ``M = |A|``); use
  ``search="beam"`` for them.
* ``"beam"``: INVERT's beam search (Bykov et al. 2023) with a beam of ``beam_size``, a heuristic
  for any ``max_length``. It never scores above the exact optimum and misses it when the
  optimum's prefixes score low (``(A AND B) OR C`` when ``C`` covers most of the positives);
  ``benchmarks/compositional_search.py`` measures how often: at beam 5, on more than half of the
  units of its synthetic layer. The best ``top_k`` of the final beam are returned.

Order and ties. Formulas are ranked by AUC (descending), then length (shorter first), then the
depth-first order in which the reference enumerates them: by the first atom's position in ``A``
(the top atoms by AUC, then the in-bounds ones not among them), then the second atom's position,
then its operator (AND before OR), then the third atom and operator. Formulas with the same
positive set are one formula, represented by its first in that ranking; the ``top_k`` results
are distinct positive sets.

p-values. Each formula carries the one-sided (unit higher on the formula's images) Mann-Whitney
U p-value, normal approximation with tie and continuity correction, as for single concepts. It is
EXPLORATORY: the formula was selected from many, and the p-value is not corrected for that. The
search returns how many formulas it scored (every atom with a defined AUC, plus the ``2 M`` AND/OR
extensions of every in-bounds formula shorter than ``max_length``; for ``"exact"`` that is the
whole space, counted as the reference counts it); ``min(1, p * n_formulas_evaluated)`` is a
Bonferroni bound over those (it does not account for the adaptive choice of which formulas were
scored: the atom set ``A``, and for ``"beam"`` the beam).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ._beam import _beam_search
from ._exact import _exact_search
from ._formula import (
    DEFAULT_MAX_FRACTION,
    DEFAULT_MIN_FRACTION,
    Formula,
    _as_ranks,
    _check_average_ranks,
    _check_params,
    _check_rows,
    _check_tie_term,
    _check_top_k,
    _LabelIndex,
    _Node,
    _support_interval,
    _tie_term_of,
    _to_formula,
    _UnitAtoms,
)
from ._ranking import UnitRanks

__all__ = [
    "DEFAULT_MAX_FRACTION",
    "DEFAULT_MIN_FRACTION",
    "Formula",
    "compositional_search",
    "compositional_search_units",
]


def _run_unit(
    atoms: _UnitAtoms, bounds: tuple[int, int], top_k: int | None
) -> tuple[list[_Node], int]:
    """Search one unit with ``atoms.params.search``; ``(best formulas, n_formulas_evaluated)``.

    ``top_k``: how many formulas to return (``None``: all the search keeps).
    """
    if atoms.params.search == "exact":
        return _exact_search(atoms, bounds, top_k)
    beam, n_evaluated = _beam_search(atoms)
    return beam[:top_k], n_evaluated


def compositional_search(
    ranks: Any,
    labels: Any,
    concept_names: Sequence[str],
    *,
    max_length: int = 3,
    beam_size: int = 5,
    n_candidates: int | None = 32,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    max_fraction: float = DEFAULT_MAX_FRACTION,
    tie_term: float | None = None,
    search: str = "exact",
    top_k: int | None = 5,
) -> tuple[list[Formula], int]:
    """Best compositional formulas for one unit: exact search, or beam search (INVERT).

    Args:
        ranks: ``(n_images,)`` average ranks of the unit's activations (ties averaged, 1..N), e.g.
            ``scipy.stats.rankdata(a, method='average')``.
        labels: ``(n_images, n_concepts)`` binary concept labels, scipy.sparse or dense.
        concept_names: ``n_concepts`` names used in ``Formula.text``.
        max_length: most atoms in a formula (L); at most 3 with ``search="exact"``.
        beam_size: formulas kept per step (B) of ``search="beam"``; ignored by ``"exact"``.
        n_candidates: size of the atom set ``A`` (the top ``n_candidates`` of all
            ``2 * n_concepts`` atoms by single-atom AUC, plus the top ``n_candidates`` in-bounds
            ones; see the module docstring); ``None`` for all atoms.
        min_fraction, max_fraction: bounds on the support ``n_pos / n_images`` of every formula
            kept (see the module docstring for the defaults).
        tie_term: ``sum(t**3 - t)`` over the unit's tie groups, for the p-values; computed from
            ``ranks`` when ``None``.
        search: ``"exact"`` (default): the optimum of the whole search space, identical to
            the brute-force reference (``max_length <= 3``; time ``O(M^3)`` and memory
            ``O(M^2)`` per unit for ``M = |A|``, about 10 ms per unit at the default
            ``n_candidates=32`` on 50,000 images, so ``n_candidates=None`` suits small concept
            sets only); ``"beam"``: INVERT's beam search, a heuristic that can miss the optimum
            (any ``max_length``).
        top_k: how many formulas (distinct positive sets) to return; ``None`` for all of them
            (with ``"exact"`` every distinct positive set of the space, with ``"beam"`` the whole
            final beam). With ``"beam"`` at most ``beam_size`` formulas come back whatever
            ``top_k``.

    Returns:
        ``(formulas, n_formulas_evaluated)``: at most ``top_k`` formulas with distinct positive
        sets, sorted by AUC descending (then shorter first); empty when no formula has its
        support in bounds. With ``search="exact"`` they are the ``top_k`` best of the whole
        space, exactly what the brute-force reference (``neuronscan.stats._reference``) returns;
        with ``"beam"``, the head of the final beam. ``n_formulas_evaluated`` counts every
        formula whose AUC was computed (atoms with a defined AUC plus every AND/OR extension of
        an in-bounds formula, including those rejected for support or as duplicates; for
        ``"exact"`` the same count as the reference's). Each ``Formula.p_value`` is EXPLORATORY,
        not corrected for the search; ``min(1, p * n_formulas_evaluated)`` is a Bonferroni
        bound.

    Raises:
        ValueError: on mismatched shapes, non-binary labels, ranks that are not average ranks, or
            invalid settings (among them ``search`` not ``"exact"``/``"beam"``,
            ``search="exact"`` with ``max_length > 3``, and ``top_k`` not a positive integer or
            ``None``).

    Example:
        >>> import numpy as np
        >>> from scipy.stats import rankdata
        >>> labels = np.zeros((8, 2), dtype=bool)  # columns: red, round
        >>> labels[[5, 6], 0] = True
        >>> labels[[0, 1, 5], 1] = True
        >>> r = rankdata([8.0, 7, 6, 5, 4, 3, 2, 1])
        >>> best, n_evaluated = compositional_search(r, labels, ["red", "round"], min_fraction=0.0)
        >>> best[0].text, best[0].auc, best[0].n_pos
        ('round AND NOT red', 1.0, 2)
    """
    params = _check_params(
        max_length, beam_size, n_candidates, min_fraction, max_fraction, search
    )
    top_k = _check_top_k(top_k)
    r = np.ascontiguousarray(_as_ranks(ranks, 1))
    lab = _LabelIndex.build(labels, concept_names)
    _check_rows(r.shape[0], lab)
    _check_average_ranks(r[:, None])
    ties = _check_tie_term(tie_term, None)
    unit = _UnitAtoms(lab, params, r, lab.csr_t @ r)
    nodes, n_evaluated = _run_unit(unit, _support_interval(lab.n_images, params), top_k)
    ties = _tie_term_of(r) if ties is None else ties
    return [_to_formula(node, lab, ties) for node in nodes], n_evaluated


def compositional_search_units(
    ranks: Any,
    labels: Any,
    concept_names: Sequence[str],
    *,
    max_length: int = 3,
    beam_size: int = 5,
    n_candidates: int | None = 32,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    max_fraction: float = DEFAULT_MAX_FRACTION,
    tie_term: Any = None,
    n_threads: int = 1,
    block_size: int = 256,
    return_counts: bool = False,
    search: str = "exact",
    concept_rank_sums: Any = None,
) -> list[Formula | None] | tuple[list[Formula | None], np.ndarray]:
    """Best compositional formula of every unit (see :func:`compositional_search`).

    The label matrix is validated and indexed once; concept rank sums are one sparse-dense
    product per block of ``block_size`` units; blocks run on ``n_threads`` threads (the products
    release the GIL).

    Args:
        ranks: ``(n_images, n_units)`` average ranks, one column per unit, or the
            :class:`UnitRanks` of :func:`rank_units` / ``score_block(return_ranks=True)`` (their
            ranks are average ranks by construction and are not checked again; their ``tie_term``
            is used unless one is given).
        labels, concept_names, max_length, beam_size, n_candidates, min_fraction, max_fraction,
            search: as for :func:`compositional_search` (``beam_size`` is the beam of
            ``search="beam"`` and ignored by ``"exact"``; one formula per unit is returned, the
            ``top_k=1`` of :func:`compositional_search`).
        tie_term: ``None`` (computed per unit), a scalar, or ``(n_units,)``.
        n_threads: worker threads.
        block_size: units per block.
        return_counts: also return ``n_formulas_evaluated`` per unit.
        concept_rank_sums: ``(n_units, n_concepts)`` rank sums of every concept's positives,
            when the caller has them (``score_block``'s ``u + n_pos (n_pos + 1) / 2``); default:
            one sparse-dense product per block. Exact values give the same formulas.

    Returns:
        ``formulas``: one ``Formula`` per unit (the optimum with ``search="exact"``, the head of
        the final beam with ``"beam"``), or ``None`` for a unit
        with no formula in the support bounds; with ``return_counts``, ``(formulas, counts)`` where
        ``counts`` is ``(n_units,)`` int64. p-values are EXPLORATORY, as for
        :func:`compositional_search`.

    Raises:
        ValueError: as for :func:`compositional_search`, naming the first bad unit.

    Example:
        >>> import numpy as np
        >>> from scipy.stats import rankdata
        >>> labels = np.zeros((8, 2), dtype=bool)  # columns: red, round
        >>> labels[[5, 6], 0] = True
        >>> labels[[0, 1, 5], 1] = True
        >>> acts = np.stack([np.arange(8.0, 0, -1), np.arange(1.0, 9)], axis=1)  # 2 units
        >>> best = compositional_search_units(rankdata(acts, axis=0), labels, ["red", "round"],
        ...                                   min_fraction=0.0)
        >>> [(f.text, round(f.auc, 3)) for f in best]
        [('round AND NOT red', 1.0), ('red AND NOT round', 0.857)]
    """
    params = _check_params(
        max_length, beam_size, n_candidates, min_fraction, max_fraction, search
    )
    trusted = isinstance(ranks, UnitRanks)
    if trusted and tie_term is None:
        tie_term = ranks.tie_term
    r2 = _as_ranks(ranks.ranks if trusted else ranks, 2)
    lab = _LabelIndex.build(labels, concept_names)
    _check_rows(r2.shape[0], lab)
    n_units = r2.shape[1]
    ties = _check_tie_term(tie_term, n_units)
    if concept_rank_sums is not None:
        concept_rank_sums = np.asarray(concept_rank_sums, dtype=np.float64)
        if concept_rank_sums.shape != (n_units, lab.n_concepts):
            raise ValueError(f"concept_rank_sums must have shape ({n_units}, {lab.n_concepts}); "
                             f"got shape {concept_rank_sums.shape}")
    for name, value in (("n_threads", n_threads), ("block_size", block_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    starts = list(range(0, n_units, int(block_size)))
    for s in starts if not trusted else ():
        _check_average_ranks(r2[:, s : s + block_size], first_unit=s)
    bounds = _support_interval(lab.n_images, params)

    def run_block(start: int) -> list[tuple[Formula | None, int]]:
        stop = min(start + block_size, n_units)
        if concept_rank_sums is None:
            sums = np.asarray(lab.csr_t @ np.ascontiguousarray(r2[:, start:stop]))  # (n_concepts, k)
        else:
            sums = concept_rank_sums[start:stop].T
        out = []
        for k in range(stop - start):
            # The unit's ranks: a column of ``block``, read from ``r2`` where it is contiguous when the
            # ranks are unit-major (`UnitRanks.ranks`), which saves a strided copy per unit.
            r = np.ascontiguousarray(r2[:, start + k])
            unit = _UnitAtoms(lab, params, r, np.ascontiguousarray(sums[:, k]))
            nodes, n_evaluated = _run_unit(unit, bounds, 1)
            if nodes:
                if ties is None:
                    t = _tie_term_of(r)
                else:
                    t = ties if np.ndim(ties) == 0 else ties[start + k]
                out.append((_to_formula(nodes[0], lab, float(t)), n_evaluated))
            else:
                out.append((None, n_evaluated))
        return out

    if n_threads == 1 or len(starts) == 1:
        results = [run_block(s) for s in starts]
    else:
        with ThreadPoolExecutor(max_workers=int(n_threads)) as pool:
            results = list(pool.map(run_block, starts))
    flat = [item for block in results for item in block]
    formulas = [f for f, _ in flat]
    if return_counts:
        return formulas, np.array([c for _, c in flat], dtype=np.int64)
    return formulas
