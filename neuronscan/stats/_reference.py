"""Brute-force reference for the compositional searches: the test oracle (not public API).

:func:`exhaustive_search` enumerates the whole search space of :mod:`._formula` naively, with a
dense ``(n_images,)`` mask per formula and a plain rank sum over it, in the depth-first order that
defines how ties are broken. It is exponential in ``max_length`` and meant for tests and
benchmarks (``tests/unit/stats/test_compositional.py``, ``benchmarks/compositional_search.py``)
on small sizes: ``compositional_search(..., search="exact", top_k=k)`` must return exactly its
formulas and count for ``max_length <= 3``. It scores AUCs and p-values with the same shared
kernels as the searches (:func:`._auc.auc_from_rank_sums`, :func:`._formula._to_formula`), so
equal positive sets give bit-identical numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._auc import auc_from_rank_sums
from ._formula import (
    _OPS,
    DEFAULT_MAX_FRACTION,
    DEFAULT_MIN_FRACTION,
    Formula,
    _as_ranks,
    _candidate_atoms,
    _check_average_ranks,
    _check_params,
    _check_rows,
    _check_tie_term,
    _check_top_k,
    _LabelIndex,
    _Node,
    _tie_term_of,
    _to_formula,
)

__all__ = ["exhaustive_search"]


def exhaustive_search(
    ranks: Any,
    labels: Any,
    concept_names: Sequence[str],
    *,
    max_length: int = 3,
    n_candidates: int | None = 32,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    max_fraction: float = DEFAULT_MAX_FRACTION,
    tie_term: float | None = None,
    top_k: int | None = 5,
) -> tuple[list[Formula], int]:
    """Naive reference: enumerate the whole space that :func:`compositional_search` searches.

    Every formula ``a_1 op a_2 ... op a_L`` (``L <= max_length``) over the atom set ``A`` (the top
    ``n_candidates`` atoms plus the top ``n_candidates`` in-bounds atoms; see
    :mod:`._formula`), with every prefix in the support bounds, is built as a dense mask and
    scored by a plain rank sum. Exponential in ``max_length``: for tests and benchmarks on small
    sizes only. ``compositional_search(..., search="exact", top_k=top_k)`` returns the same
    formulas and count for ``max_length <= 3``, without masks.

    Args:
        ranks, labels, concept_names, max_length, n_candidates, min_fraction, max_fraction,
            tie_term: as for :func:`compositional_search`.
        top_k: how many formulas to return; ``None`` for every distinct positive set.

    Returns:
        ``(formulas, n_formulas_evaluated)``: distinct positive sets, best AUC first (then shorter,
        then first enumerated), and the number of formulas scored (atoms plus extensions).

    Raises:
        ValueError: as for :func:`compositional_search`.

    Example:
        >>> import numpy as np
        >>> from scipy.stats import rankdata
        >>> labels = np.zeros((8, 2), dtype=bool)  # columns: red, round
        >>> labels[[5, 6], 0] = True
        >>> labels[[0, 1, 5], 1] = True
        >>> best, _ = exhaustive_search(rankdata([8.0, 7, 6, 5, 4, 3, 2, 1]), labels,
        ...                             ["red", "round"], min_fraction=0.0, top_k=1)
        >>> best[0].text
        'round AND NOT red'
    """
    # Enumerates any max_length; "beam" only so that _check_params sets no length limit.
    params = _check_params(max_length, 1, n_candidates, min_fraction, max_fraction, "beam")
    top_k = _check_top_k(top_k)
    r = _as_ranks(ranks, 1)
    lab = _LabelIndex.build(labels, concept_names)
    _check_rows(r.shape[0], lab)
    _check_average_ranks(r[:, None])
    ties = _check_tie_term(tie_term, None)
    ties = _tie_term_of(r) if ties is None else ties
    n_images, n_concepts = lab.n_images, lab.n_concepts
    dense = lab.csc.toarray() != 0
    atom_masks = [dense[:, c] for c in range(n_concepts)]
    atom_masks += [~dense[:, c] for c in range(n_concepts)]

    def score(mask: np.ndarray) -> tuple[int, float, float]:
        n = int(mask.sum())
        if n == 0 or n == n_images:
            return n, float("nan"), float("nan")
        rank_sum = float(r[mask].sum())
        return n, rank_sum, float(auc_from_rank_sums(rank_sum, n, n_images))

    def in_bounds(n: int) -> bool:
        return 1 <= n <= n_images - 1 and params.min_fraction <= n / n_images <= params.max_fraction

    atom_scores = [score(mk) for mk in atom_masks]
    atom_auc = np.array([sc[2] for sc in atom_scores])
    atom_in_bounds = np.array([in_bounds(sc[0]) for sc in atom_scores])
    n_evaluated = int(np.count_nonzero(~np.isnan(atom_auc)))
    cand = [int(a) for a in _candidate_atoms(atom_auc, atom_in_bounds, params.n_candidates)]
    best: dict[bytes, tuple[float, int, int, tuple[int, ...], tuple[str, ...], int, float]] = {}
    counter = 0

    def visit(mask, codes: tuple[int, ...], ops: tuple[str, ...], n: int, rs: float, auc: float):
        nonlocal counter, n_evaluated
        key = np.packbits(mask).tobytes()
        entry = (-auc, len(codes), counter, codes, ops, n, rs)
        counter += 1
        if key not in best or entry[:3] < best[key][:3]:
            best[key] = entry
        if len(codes) == params.max_length:
            return
        for code in cand:
            for op in _OPS:
                new = mask & atom_masks[code] if op == "AND" else mask | atom_masks[code]
                n_evaluated += 1
                n_new, rs_new, auc_new = score(new)
                if in_bounds(n_new):
                    visit(new, codes + (code,), ops + (op,), n_new, rs_new, auc_new)

    for code in cand:
        n, rs, auc = atom_scores[code]
        if in_bounds(n):
            visit(atom_masks[code], (code,), (), n, rs, auc)

    entries = sorted(best.values(), key=lambda e: e[:3])
    if top_k is not None:
        entries = entries[:top_k]
    formulas = []
    for neg_auc, _, _, codes, ops, n, rs in entries:
        node = _Node(codes, ops, rs, n, -neg_auc)
        formulas.append(_to_formula(node, lab, ties))
    return formulas, n_evaluated
