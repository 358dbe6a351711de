"""Exact search for compositional formulas: the optimum of the whole space (``max_length <= 3``).

The result is the same as the brute-force reference's (:func:`._reference.exhaustive_search`),
formula for formula: the same AUC bit for bit (both compute it with
:func:`._auc.auc_from_rank_sums` from exact rank sums), the same positive set and text (ties
broken in the same order, see :mod:`._compositional`), and the same ``n_formulas_evaluated``.
Longer formulas are refused: the space grows as ``M^L`` (``|A| = M`` up to ``2 * n_candidates``),
64 x 128^3 ~ 1.3e8 formulas per unit at ``L = 4``; the beam search (:mod:`._beam`) handles them.

Method. Write an atom as ``y = u + s x`` with ``x`` its concept's 0/1 column and ``(u, s) = (0, 1)``
for ``c``, ``(1, -1)`` for ``NOT c``. The rank sum of any formula of length ``<= 3`` over concepts
``(a, b, c)`` is then, by inclusion-exclusion, a fixed +-1 combination of the intersection rank
sums ``R_S = sum_i r_i prod_{j in S} x_ij`` over subsets ``S`` of ``{a, b, c}``
(``R_{} = N (N + 1) / 2``); sizes likewise with ``n_S``. For example::

    R(y1 AND y2)        = u2 R(y1) + s2 R(y1 x_b),   R(y1 x_b) = u1 R_b + s1 R_ab
    R(phi OR y)         = R(phi) + R(y) - R(phi AND y)
    R(phi AND y3)       = u3 R(phi) + s3 R(phi x_c)

and ``R(phi x_c)`` for a length-2 ``phi`` needs ``R_c, R_ac, R_bc, R_abc``. Let ``K`` be the
concepts under ``A`` (``<= 2 * n_candidates``). :func:`_triple_sums` gets every ``R_S`` and ``n_S``
with ``|S| <= 3`` over ``K`` in one sparse pass: image ``i`` holding ``d_i`` of the ``K`` concepts
adds its rank to the sorted triples of them (repeats give pairs), ``np.bincount``; cost
``sum_i C(d_i + 2, 3) - d_i``, small when the concepts rarely co-occur (an image with one of them
costs nothing), and no BLAS (small multi-threaded products are slow on a busy machine). Then every
formula is scored with array arithmetic: the ``2 M^2`` length-2 formulas at once, and the ``2 M``
extensions of each of the ``P`` in-bounds length-2 prefixes in chunks of ~1e5 formulas
(``P <= 2 M^2``, so at most ``4 M^3``: about 1e6 at ``M = 64``, typically ~1.5e5 on the benchmark
layer), keeping the running best (or, for ``top_k > 1``, every in-bounds score). Memory per unit:
``O(M^2)`` for length 2, two ``C(K + 2, 3)`` float64 tables (0.7 MiB at ``K = 64``) and chunk
arrays of ~1 MiB each. Measured on 2 cores: ~10 ms per unit on the benchmark layer (50,000
images, 1,481 concepts at 1 % density, ``n_candidates=32``), 50-120 ms per unit when 30-64
common (~20 %) concepts are in ``A``.

``n_evaluated`` counts the whole space as the reference counts it: every atom with a defined AUC,
plus the ``2 M`` AND/OR extensions of every in-bounds formula shorter than ``max_length``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import numpy as np

from ._auc import auc_from_rank_sums
from ._formula import _OPS, _candidate_atoms, _LabelIndex, _Node, _Registry, _UnitAtoms

__all__: list[str] = []

# Length-3 formulas are scored in chunks of whole prefixes, about this many (prefix, atom) pairs
# per chunk: each float64 work array is ~1 MiB, so memory stays bounded whatever M is.
_CHUNK_ELEMENTS = 1 << 17
# For top_k > 1, the best ``_TAKE_PER_RESULT * top_k`` formulas are sorted and deduplicated first
# (one positive set has many formulas: c, c AND c, (c OR x) AND c, ...), more if too few distinct.
_TAKE_PER_RESULT = 64


@functools.lru_cache(maxsize=64)
def _sorted_triples(d: int) -> np.ndarray:
    """``(C(d + 2, 3) - d, 3)`` index triples ``a <= b <= c`` of ``range(d)``, not all equal."""
    triples = itertools.combinations_with_replacement(range(d), 3)
    return np.array([t for t in triples if t[0] != t[2]], dtype=np.intp).reshape(-1, 3)


def _n_triples(k: int) -> int:
    """Number of sorted triples ``x <= y <= z`` of ``range(k)``: ``C(k + 2, 3)``."""
    return k * (k + 1) * (k + 2) // 6


def _sorted_key(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Index of the sorted triple ``x <= y <= z`` among all of them (combinatorial number system:
    ``C(z + 2, 3) + C(y + 1, 2) + x``), in ``[0, C(k + 2, 3))`` for values below ``k``."""
    return z * (z + 1) * (z + 2) // 6 + y * (y + 1) // 2 + x


def _triple_key(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """:func:`_sorted_key` of the triple ``(a, b, c)`` in any order (broadcast)."""
    lo = np.minimum(np.minimum(a, b), c)
    hi = np.maximum(np.maximum(a, b), c)
    return _sorted_key(lo, a + b + c - lo - hi, hi)


def _triple_sums(
    lab: _LabelIndex, r: np.ndarray, concepts: np.ndarray, concept_rank_sums: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Intersection rank sums and sizes of every triple of ``concepts`` (repeats allowed).

    Returns ``(t, s)``: ``t[key]`` = ``sum_i r_i x_ia x_ib x_ic`` and ``s[key]`` =
    ``sum_i x_ia x_ib x_ic`` for ``a <= b <= c`` (positions in ``concepts``), at
    ``key = _sorted_key(a, b, c)`` (:func:`_triple_key` for any order); ``(C(K + 2, 3),)``
    float64 (``K^3 / 6`` entries: 45,760 at ``K = 64``), exact (half-integer and integer sums
    below 2**53). A repeated index is the smaller intersection (``x^2 = x``): ``(a, a, b)``
    holds the pair sums, ``(a, a, a)`` the concept's own (``concept_rank_sums``, ``(K,)``, and
    the column sizes).

    Sparse, by rows: an image holding ``d`` of the ``K`` concepts adds its rank to the
    ``C(d + 2, 3) - d`` sorted triples of its concept list that are not one concept repeated, so
    the cost is ``sum_i C(d_i + 2, 3) - d_i`` (zero for images with one of the concepts: the
    common case when they rarely co-occur), accumulated with two ``np.bincount`` calls per chunk
    of rows (``<= 2 * _CHUNK_ELEMENTS`` triples, ~15 ns each). No BLAS: small multi-threaded
    matrix products are very slow on a busy machine (10x and more, measured).
    """
    n_k = concepts.size
    n_keys = _n_triples(n_k)
    t = np.zeros(n_keys)
    s = np.zeros(n_keys)
    own = _sorted_key(*(np.arange(n_k),) * 3)
    t[own] = concept_rank_sums
    s[own] = lab.counts[concepts]
    indptr, indices = lab.csc.indptr, lab.csc.indices
    starts = indptr[concepts]
    sizes = indptr[concepts + 1] - starts
    total = int(sizes.sum())
    at = np.repeat(starts - np.cumsum(sizes) + sizes, sizes) + np.arange(total)
    # (row, position) pairs sorted by row, then position: each row's concept list, ascending.
    keys = np.sort(indices[at].astype(np.int64) * n_k + np.repeat(np.arange(n_k), sizes))
    rows, pos = np.divmod(keys, n_k)
    # Parts of the sorted key of (x, y, z) as functions of x, y and z, per entry.
    key_z = _sorted_key(0, 0, pos)
    key_y = _sorted_key(0, pos, 0)
    first = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
    degree = np.diff(np.append(first, total))
    for d in np.unique(degree[degree > 1]):
        combos = _sorted_triples(int(d))
        firsts = first[degree == d]
        step = max(1, 2 * _CHUNK_ELEMENTS // combos.shape[0])
        for lo in range(0, firsts.size, step):
            f = firsts[lo : lo + step]
            ent = f[:, None] + np.arange(d)  # (n, d) entries of each row: its concepts, ascending
            key = np.take(key_z[ent], combos[:, 2], axis=1)
            key += np.take(key_y[ent], combos[:, 1], axis=1)
            key += np.take(pos[ent], combos[:, 0], axis=1)
            key = key.ravel()
            t += np.bincount(key, weights=np.repeat(r[rows[f]], combos.shape[0]), minlength=n_keys)
            s += np.bincount(key, minlength=n_keys)
    return t, s


class _LazyNode(_Node):
    """A formula found by the exact search; its mask is built from the labels when needed."""

    __slots__ = ("_lab",)

    def __init__(self, codes, ops, rank_sum, n_pos, auc, lab: _LabelIndex):
        super().__init__(codes, ops, rank_sum, n_pos, auc)
        self._lab = lab

    @property
    def mask(self) -> np.ndarray:
        if self._mask is None:
            n_concepts = self._lab.n_concepts
            out = self._lab.atom_mask(self.codes[0] % n_concepts, self.codes[0] >= n_concepts)
            for op, code in zip(self.ops, self.codes[1:]):
                x = self._lab.atom_mask(code % n_concepts, code >= n_concepts)
                out = out & x if op == "AND" else out | x
            self._mask = out
        return self._mask


class _Collector:
    """Best formulas seen so far, in the exhaustive search's order.

    Entries come in enumeration order: length 1, 2, 3, each in depth-first order (``idx``
    ascending within a length). With ``top_k == 1`` only the best is kept: a later entry replaces
    it only with a strictly higher AUC, so ties go to the shorter, then earlier, formula. Otherwise
    (``top_k`` above 1, or ``None`` for all) every scored in-bounds formula is kept for
    :meth:`top_distinct`.
    """

    def __init__(self, top_k: int | None):
        self.top_k = top_k
        self.best: tuple[float, int, int, float, float] | None = None
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, length: int, parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, int, int]]
            ) -> None:
        """Record scored formulas of one length, given as ``parts`` of flat
        ``(auc, n_pos, rank_sum, offset, stride)``: ``auc`` is ``-inf`` out of bounds and entry
        ``j`` has depth-first index ``offset + stride * j``. Together the parts must come in
        depth-first order except that one call's parts may interleave (their indices decide)."""
        if self.top_k == 1:
            best = None  # (auc, idx, n_pos, rank_sum): the first (lowest idx) of the highest AUC
            for auc, n_pos, rank_sum, offset, stride in parts:
                j = int(np.argmax(auc))
                entry = (float(auc[j]), offset + stride * j, float(n_pos[j]), float(rank_sum[j]))
                if best is None or (-entry[0], entry[1]) < (-best[0], best[1]):
                    best = entry
            if best is not None and best[0] > (-np.inf if self.best is None else self.best[0]):
                self.best = (best[0], length, best[1], best[2], best[3])
            return
        for auc, n_pos, rank_sum, offset, stride in parts:
            sel = np.flatnonzero(auc > -np.inf)
            self.parts.append((
                auc[sel], np.full(sel.size, length, dtype=np.int64), offset + stride * sel,
                n_pos[sel], rank_sum[sel],
            ))

    def top_distinct(self, make_node) -> list[_Node]:
        """The ``top_k`` best formulas with distinct positive sets (sorted as exhaustive_search;
        every distinct set for ``top_k=None``)."""
        if self.top_k == 1:
            return [] if self.best is None else [make_node(*self.best)]
        if not self.parts:
            return []
        auc, length, idx, n_pos, rank_sum = (np.concatenate(a) for a in zip(*self.parts))
        size = auc.size
        take = size if self.top_k is None else min(size, _TAKE_PER_RESULT * self.top_k)
        while True:
            # Every entry scoring >= the take-th best AUC (ties included): the sorted head of all.
            if take < size:
                sel = np.flatnonzero(auc >= np.partition(auc, size - take)[size - take])
            else:
                sel = np.arange(size)
            sel = sel[np.lexsort((idx[sel], length[sel], -auc[sel]))]
            registry, out = _Registry(), []
            for e in sel:
                node = make_node(auc[e], int(length[e]), int(idx[e]), n_pos[e], rank_sum[e])
                if registry.add_if_new(node):
                    out.append(node)
                    if len(out) == self.top_k:
                        return out
            if take == size:
                return out
            take = min(size, 8 * take)


def _exact_search(
    atoms: _UnitAtoms, bounds: tuple[int, int], top_k: int | None
) -> tuple[list[_Node], int]:
    """Exact optimum of the search space for one unit (``max_length <= 3``); see the module doc.

    ``bounds`` is :func:`._formula._support_interval`. Returns the ``top_k`` best formulas with
    distinct positive sets (every one for ``None``; as ``exhaustive_search(top_k=top_k)``) and the
    number of formulas scored, counted as :func:`._reference.exhaustive_search` counts them.
    """
    lab, params, r = atoms.lab, atoms.params, atoms.r
    n_images, n_concepts = lab.n_images, lab.n_concepts
    lo, hi = bounds
    atom_n, atom_rs, atom_auc = atoms.atom_n, atoms.atom_rank_sum, atoms.atom_auc
    in_bounds = (atom_n >= lo) & (atom_n <= hi)
    cand = _candidate_atoms(atom_auc, in_bounds, params.n_candidates)  # (m,) codes, A in order
    n_evaluated = atoms.n_evaluated  # every atom with a defined AUC
    m = cand.size
    ok1 = in_bounds[cand]
    if not ok1.any():
        return [], n_evaluated
    r1, n1 = atom_rs[cand], atom_n[cand]
    collector = _Collector(top_k)
    collector.add(1, [(np.where(ok1, atom_auc[cand], -np.inf), n1, r1, 0, 1)])

    def auc_of(rank_sum: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
        """AUC, as exhaustive_search computes it (bit for bit); -inf out of the support bounds."""
        keep = (n_pos >= lo) & (n_pos <= hi)  # lo >= 1, hi <= N - 1: the AUC is defined there
        return auc_from_rank_sums(rank_sum, n_pos, n_images, keep=keep, fill=-np.inf)

    prefix = None
    if params.max_length >= 2:
        n_evaluated += 2 * m * int(ok1.sum())
        concepts, neg = cand % n_concepts, cand >= n_concepts
        kset = np.unique(concepts)  # the K concepts of A
        n_k = kset.size
        t3, s3 = _triple_sums(lab, r, kset, atom_rs[kset])
        kk = np.searchsorted(kset, concepts)  # (m,) each atom's concept as an index into kset
        diag = np.arange(n_k)
        pair = _triple_key(diag[:, None], diag[:, None], diag[None, :])  # (K, K): (a, a, b)
        t2, s2 = t3[pair], s3[pair]
        # An atom is y = u + s x (u, s) = (0, 1) for a concept, (1, -1) for its negation, so
        # sum_i r_i y_i z_i = u R(z) + s R(x z). a1[i, c] = R(y_i AND x_c):
        u = neg.astype(np.float64)
        sg = 1.0 - 2.0 * u
        t1, s1 = t2[diag, diag], s2[diag, diag]
        a1_r = u[:, None] * t1[None, :] + sg[:, None] * t2[kk]  # (m, K)
        a1_n = u[:, None] * s1[None, :] + sg[:, None] * s2[kk]
        # Length 2, (i1, i2, op) in depth-first order: AND then OR for each pair.
        and_r = u[None, :] * r1[:, None] + sg[None, :] * a1_r[:, kk]  # (m, m) R(y_i AND y_j)
        and_n = u[None, :] * n1[:, None] + sg[None, :] * a1_n[:, kk]
        r2 = np.stack([and_r, r1[:, None] + r1[None, :] - and_r], axis=-1)  # (m, m, 2)
        n2 = np.stack([and_n, n1[:, None] + n1[None, :] - and_n], axis=-1)
        auc2 = auc_of(r2, n2)
        auc2[~ok1] = -np.inf  # the first atom (the length-1 prefix) must be in bounds too
        collector.add(2, [(auc2.ravel(), n2.ravel(), r2.ravel(), 0, 1)])
        if params.max_length >= 3:
            prefix = np.flatnonzero(auc2.ravel() > -np.inf)  # in-bounds length-2 prefixes, in order

    if prefix is not None and prefix.size:
        n_evaluated += 2 * m * int(prefix.size)
        i1, i2, o2 = prefix // (2 * m), (prefix // 2) % m, prefix % 2
        p_r, p_n = r2.ravel()[prefix], n2.ravel()[prefix]  # (P,)
        step = max(1, _CHUNK_ELEMENTS // m)  # prefixes per chunk (K <= m)
        for start in range(0, prefix.size, step):
            chunk = slice(start, start + step)
            j1, j2 = i1[chunk], i2[chunk]
            # W[p, c] = R(phi_p AND x_c) for the chunk's prefixes and every concept:
            #   AND: R(y_i y_j x_c) = u_j R(y_i x_c) + s_j (u_i R(x_kj x_c) + s_i R(x_ki x_kj x_c))
            #   OR:  R(y_i x_c) + R(y_j x_c) - R(y_i y_j x_c)
            trip = _triple_key(kk[j1][:, None], kk[j2][:, None], diag[None, :])  # (c, K)
            uj, sj, ui, si = u[j2, None], sg[j2, None], u[j1, None], sg[j1, None]
            is_or = (o2[chunk] == 1)[:, None]
            w = []
            for a1, x2, x3 in ((a1_r, t2, t3), (a1_n, s2, s3)):
                w_and = uj * a1[j1] + sj * (ui * x2[kk[j2]] + si * x3[trip])
                w_or = a1[j1] + a1[j2] - w_and
                w.append(np.where(is_or, w_or, w_and)[:, kk])  # (c, m): third atom's concept
            pr, pn = p_r[chunk, None], p_n[chunk, None]
            and_r = u[None, :] * pr + sg[None, :] * w[0]  # (c, m) R(phi AND y_i3)
            and_n = u[None, :] * pn + sg[None, :] * w[1]
            or_r = pr + r1[None, :] - and_r
            or_n = pn + n1[None, :] - and_n
            # Depth-first index of (prefix p, atom i3, op o): (p * m + i3) * 2 + o.
            collector.add(3, [
                (auc_of(rs, ns).ravel(), ns.ravel(), rs.ravel(), 2 * m * start + o, 2)
                for o, rs, ns in ((0, and_r, and_n), (1, or_r, or_n))
            ])

    def make_node(auc: float, length: int, idx: int, n_pos: float, rank_sum: float) -> _Node:
        if length == 1:
            codes, ops = (int(cand[idx]),), ()
        elif length == 2:
            codes, ops = (int(cand[idx // (2 * m)]), int(cand[(idx // 2) % m])), (_OPS[idx % 2],)
        else:
            p, rest = divmod(idx, 2 * m)
            codes = (int(cand[i1[p]]), int(cand[i2[p]]), int(cand[rest // 2]))
            ops = (_OPS[o2[p]], _OPS[rest % 2])
        return _LazyNode(codes, ops, rank_sum, n_pos, auc, lab)

    return collector.top_distinct(make_node), n_evaluated
