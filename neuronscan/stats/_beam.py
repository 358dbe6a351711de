"""Beam search for compositional formulas (INVERT, Bykov et al. 2023): a heuristic, any length.

The first beam is the ``beam_size`` best in-bounds atoms of ``A`` with distinct positive sets; at
each step every beam formula is extended by AND and by OR with every atom of ``A``, and the next
beam is the ``beam_size`` best distinct formulas among the old beam and the in-bounds extensions
(so the final beam holds the best formulas of any length ``<= max_length``). Formulas with the
same positive set are one formula; the shortest (then first found) is kept. With an unbounded
beam this reaches exactly the space of :mod:`._formula` (every prefix in bounds).

It never scores above the exact optimum and misses it when the optimum's prefixes score low:
``(A AND B) OR C`` is reachable only through ``A AND B``, which loses to refinements of ``C`` when
``C`` covers most of the positives, and ``A AND B`` itself only through ``A`` or ``B``.
``benchmarks/compositional_search.py`` measures how often that happens: at beam 5, on more than
half of the units of its synthetic layer.

Vectorisation: concept rank sums for all units of a block are one sparse-dense product
``labels^T ranks``. Within a step, with ``b`` beam masks and ``M = |A|`` candidate atoms whose
concepts' positives are the concatenated row lists ``rows`` (``nnz`` entries, ``~M density N``),
the rank sums and sizes of every ``phi AND c`` are one gather ``Phi[rows]`` (``b x nnz``) and one
segmented sum (``np.add.reduceat``), i.e. the product ``X^T [r * Phi, Phi]`` done on the nonzeros
only; negation and OR follow from

    R(phi AND NOT c) = R(phi) - R(phi AND c),    R(phi OR y) = R(phi) + R(y) - R(phi AND y)

(sizes likewise), so all ``2 * b * M`` candidates of a step cost ``O(b * nnz)``. Only formulas
that enter the beam (or tie an earlier one in size and rank sum) have their ``(N,)`` masks built;
equal positive sets are detected by comparing ``np.packbits`` bitsets.

``n_evaluated`` counts every atom with a defined AUC plus the ``2 M`` AND/OR extensions of every
beam formula at every step, including those rejected for support or as duplicates.
"""

from __future__ import annotations

import numpy as np

from ._auc import auc_from_rank_sums
from ._formula import _OPS, _candidate_atoms, _in_bounds, _Node, _Registry, _UnitAtoms

__all__: list[str] = []


class _BeamSearch:
    """Beam search over the formulas of one unit, given its atom scores."""

    def __init__(self, atoms: _UnitAtoms):
        self.atoms = atoms
        self.lab, self.params, self.r = atoms.lab, atoms.params, atoms.r
        self.n_evaluated = atoms.n_evaluated
        self._columns: dict[int, np.ndarray] = {}

    def _atom_mask(self, code: int) -> np.ndarray:
        concept = code % self.lab.n_concepts
        col = self._columns.get(concept)
        if col is None:
            col = self._columns[concept] = self.lab.column(concept)
        return ~col if code >= self.lab.n_concepts else col

    def _seed(self, cand: np.ndarray, in_bounds: np.ndarray) -> list[_Node]:
        """First beam: the best in-bounds atoms of A with distinct positive sets."""
        atoms = self.atoms
        codes = cand[in_bounds[cand]]
        codes = codes[np.lexsort((codes, -atoms.atom_auc[codes]))]
        registry, beam = _Registry(), []
        for code in codes:
            code = int(code)
            node = _Node(
                (code,), (), atoms.atom_rank_sum[code], atoms.atom_n[code], atoms.atom_auc[code],
                mask=self._atom_mask(code),
            )
            if registry.add_if_new(node):
                beam.append(node)
                if len(beam) == self.params.beam_size:
                    break
        return beam

    def run(self) -> list[_Node]:
        """Return the final beam, best first."""
        params, lab, r, atoms = self.params, self.lab, self.r, self.atoms
        n_images, n_concepts = lab.n_images, lab.n_concepts
        in_bounds = _in_bounds(atoms.atom_n, n_images, params)
        cand = _candidate_atoms(atoms.atom_auc, in_bounds, params.n_candidates)  # (m,) codes
        beam = self._seed(cand, in_bounds)
        if not beam or params.max_length == 1:
            return beam
        cand_concepts = cand % n_concepts
        cand_negated = cand >= n_concepts
        cand_rank_sum = atoms.atom_rank_sum[cand]
        cand_n = atoms.atom_n[cand]
        # Rows of the candidate concepts' positives, concatenated: phi AND c sums over a segment.
        starts = lab.csc.indptr[cand_concepts]
        sizes = lab.csc.indptr[cand_concepts + 1] - starts
        offsets = np.repeat(starts - np.cumsum(sizes) + sizes, sizes)
        rows = lab.csc.indices[offsets + np.arange(sizes.sum())]
        seg = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # every candidate has >= 1 positive
        r_rows = r[rows]

        for length in range(2, params.max_length + 1):
            b = len(beam)
            phi_rows = np.stack([node.mask[rows] for node in beam])  # (b, nnz) bool
            n_and_c = np.add.reduceat(phi_rows, seg, axis=1, dtype=np.float64)  # (b, m)
            rs_and_c = np.add.reduceat(phi_rows * r_rows, seg, axis=1)  # (b, m)
            phi_rs = np.array([node.rank_sum for node in beam])[:, None]
            phi_n = np.array([node.n_pos for node in beam])[:, None]
            rs_and = np.where(cand_negated, phi_rs - rs_and_c, rs_and_c)
            n_and = np.where(cand_negated, phi_n - n_and_c, n_and_c)
            rs_or = phi_rs + cand_rank_sum - rs_and
            n_or = phi_n + cand_n - n_and
            rs = np.stack([rs_and, rs_or], axis=-1)  # (b, m, 2): [beam, candidate, op]
            n_pos = np.stack([n_and, n_or], axis=-1)
            self.n_evaluated += rs.size

            flat_ok = np.flatnonzero(_in_bounds(n_pos, n_images, params).ravel())
            new_rs, new_n = rs.ravel()[flat_ok], n_pos.ravel()[flat_ok]
            new_auc = auc_from_rank_sums(new_rs, new_n, n_images)
            # Pool = old beam, then the in-bounds extensions; best AUC first, shorter first.
            pool_auc = np.concatenate([[node.auc for node in beam], new_auc])
            pool_len = np.concatenate(
                [[len(node.codes) for node in beam], np.full(flat_ok.size, length)]
            )
            order = np.lexsort((np.arange(pool_auc.size), pool_len, -pool_auc))

            registry = _Registry()
            for node in beam:
                registry.add_if_new(node)
            next_beam: list[_Node] = []
            for t in order:
                if t < b:
                    next_beam.append(beam[t])
                else:
                    t -= b
                    i, j, o = np.unravel_index(flat_ok[t], rs.shape)
                    parent, op, code = beam[i], _OPS[o], int(cand[j])
                    node = _Node(
                        parent.codes + (code,), parent.ops + (op,), new_rs[t], new_n[t], new_auc[t],
                        parent=(parent, op), atom=self._atom_mask(code),
                    )
                    if not registry.add_if_new(node):
                        continue
                    next_beam.append(node)
                if len(next_beam) == params.beam_size:
                    break
            if all(any(node is old for old in beam) for node in next_beam):
                break  # fixed point: the same beam would produce the same candidates again
            beam = next_beam
        return beam


def _beam_search(atoms: _UnitAtoms) -> tuple[list[_Node], int]:
    """INVERT's beam search for one unit: ``(final beam, best first; n_formulas_evaluated)``."""
    search = _BeamSearch(atoms)
    beam = search.run()
    return beam, search.n_evaluated
