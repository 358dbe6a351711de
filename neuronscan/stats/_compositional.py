"""Compositional concept labels: the best AND/OR formula of concepts, exactly or by beam search.

A unit's label can be a formula such as ``(circle AND red) OR NOT striped``. Atoms are the
concepts and their negations; a formula is built left to right, ``phi_{l+1} = phi_l AND atom`` or
``phi_l OR atom``, up to ``max_length`` atoms. A formula is scored by the AUC of its positive set
against the unit's activations, computed from rank sums exactly as for single concepts:

    U = sum_{i in phi} r_i - n (n + 1) / 2,    AUC = U / (n (N - n)),

with ``r`` the unit's average ranks (ties averaged, 1..N) and ``n = |phi|``. Average ranks are
half-integers, so every rank sum below is exact in float64 and the AUC equals
``sklearn.metrics.roc_auc_score(mask, activations)``.

Search space. Atoms are coded ``0..2C-1`` (``c`` for concept ``c``, ``C + c`` for ``NOT c``).
The atom set ``A`` is the ``n_candidates`` atoms with the highest single-atom AUC (any support:
``NOT c`` with support 0.9 is a useful ``AND`` operand) plus the ``n_candidates`` best atoms whose
support is in bounds (so the best single-concept labels are always in it); ties go to the lower
code. The searched space is every formula ``a_1 op_2 a_2 ... op_L a_L`` with all ``a_i`` in ``A``,
``op`` in {AND, OR}, ``L <= max_length``, whose *every prefix* has support ``|phi| / N`` in
``[min_fraction, max_fraction]`` and ``1 <= |phi| <= N - 1`` (where the AUC is defined). This is
exactly what the beam search below reaches with an unbounded beam, so it is the "same space" that
:func:`exhaustive_search` enumerates (naively, with dense masks: the reference for tests).

Search modes (``search=``):

* ``"exact"`` (the default; ``max_length <= 3``): the optimum of the whole space. The result is
  the same as :func:`exhaustive_search`'s, formula for formula: the same AUC bit for bit (both
  compute it with the same float operations from exact rank sums), the same positive set and text
  (ties broken in the same order, below), and the same ``n_formulas_evaluated``. Longer formulas
  are refused with a ``ValueError``: the space grows as ``M^L`` (``|A| = M`` up to
  ``2 * n_candidates``), 64 x 128^3 ~ 1.3e8 formulas per unit at ``L = 4``; use
  ``search="beam"`` for them.
* ``"beam"``: INVERT's beam search (Bykov et al. 2023), a heuristic for any ``max_length``. It
  never scores above the exact optimum and misses it when the optimum's prefixes score low:
  ``(A AND B) OR C`` is reachable only through ``A AND B``, which loses to refinements of ``C``
  when ``C`` covers most of the positives, and ``A AND B`` itself only through ``A`` or ``B``.
  ``benchmarks/compositional_search.py`` measures how often that happens: at beam 5, on more
  than half of the units of its synthetic layer.

Order and ties. Formulas are ranked by AUC (descending), then length (shorter first), then the
depth-first order in which :func:`exhaustive_search` enumerates them: by the first atom's position
in ``A`` (the order above: the top atoms by AUC, then the in-bounds ones not among them), then
the second atom's position, then its operator (AND before OR), then the third atom and operator.
Formulas with the same positive set are one formula, represented by its first in that ranking;
``top_k`` results are distinct positive sets.

Exact search. Write an atom as ``y = u + s x`` with ``x`` its concept's 0/1 column and
``(u, s) = (0, 1)`` for ``c``, ``(1, -1)`` for ``NOT c``. The rank sum of any formula of length
``<= 3`` over concepts ``(a, b, c)`` is then, by inclusion-exclusion, a fixed +-1 combination of
the intersection rank sums ``R_S = sum_i r_i prod_{j in S} x_ij`` over subsets ``S`` of
``{a, b, c}`` (``R_{} = N (N + 1) / 2``); sizes likewise with ``n_S``. For example::

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

Beam search: the first beam is the ``beam_size`` best in-bounds atoms of ``A`` with distinct
positive sets; at each step every beam formula is extended by AND and by OR with every atom of
``A``, and the next beam is the ``beam_size`` best distinct formulas among the old beam and the
in-bounds extensions (so the final beam holds the best formulas of any length
``<= max_length``). Formulas with the same positive set are one formula; the shortest (then first
found) is kept. Vectorisation: concept rank sums for all units of a block are one sparse-dense
product ``labels^T ranks``. Within a step, with ``b`` beam masks and ``M = |A|`` candidate atoms
whose concepts' positives are the concatenated row lists ``rows`` (``nnz`` entries,
``~M density N``), the rank sums and sizes of every ``phi AND c`` are one gather ``Phi[rows]``
(``b x nnz``) and one segmented sum (``np.add.reduceat``), i.e. the product ``X^T [r * Phi, Phi]``
done on the nonzeros only; negation and OR follow from the identities above, so all
``2 * b * M`` candidates of a step cost ``O(b * nnz)``. Only formulas that enter the beam (or tie
an earlier one in size and rank sum) have their ``(N,)`` masks built; equal positive sets are
detected by comparing ``np.packbits`` bitsets.

Support bounds. INVERT's reference implementation uses ``min_fraction=0.0, max_fraction=0.5``.
neuronscan keeps ``max_fraction=0.5`` but defaults ``min_fraction`` to ``0.001`` (50 of 50,000
images): with no floor, a length-3 AND can isolate a handful of top images and reach AUC near 1 by
construction, a label that describes no population. Pass ``min_fraction=0.0`` for INVERT's setting.

p-values. Each formula carries the one-sided (unit higher on the formula's images) Mann-Whitney
U p-value, normal approximation with tie and continuity correction, as for single concepts. It is
EXPLORATORY: the formula was selected from many, and the p-value is not corrected for that. The
search returns how many formulas it scored (every atom with a defined AUC, plus the ``2 M`` AND/OR
extensions of every in-bounds formula shorter than ``max_length``; for ``"exact"`` that is the
whole space, counted as :func:`exhaustive_search` counts it); ``min(1, p * n_formulas_evaluated)``
is a Bonferroni bound over those (it does not account for the adaptive choice of which formulas
were scored: the atom set ``A``, and for ``"beam"`` the beam).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import ndtr

__all__ = [
    "DEFAULT_MAX_FRACTION",
    "DEFAULT_MIN_FRACTION",
    "Formula",
    "compositional_search",
    "compositional_search_units",
    "exhaustive_search",
]

DEFAULT_MIN_FRACTION = 0.001
DEFAULT_MAX_FRACTION = 0.5
_OPS = ("AND", "OR")
_SEARCH_MODES = ("exact", "beam")
_MAX_EXACT_LENGTH = 3  # longest formulas the exact search enumerates


@dataclass(frozen=True)
class Formula:
    """One compositional label of a unit.

    Attributes:
        text: the formula with concept names, built left to right, e.g.
            ``"(circle AND red) OR NOT striped"``.
        atoms: ``(concept_index, negated)`` per atom, in order; ``len(atoms) == length``.
        ops: the operator joining each atom to the formula before it (``"AND"`` or ``"OR"``);
            ``len(ops) == length - 1``.
        auc: AUC of the unit's activations for the formula's positive set.
        n_pos: number of images in the formula's positive set.
        p_value: one-sided Mann-Whitney p-value (normal approximation, tie and continuity
            corrected). EXPLORATORY: not corrected for the number of formulas searched.
        length: number of atoms.
    """

    text: str
    atoms: tuple[tuple[int, bool], ...]
    ops: tuple[str, ...]
    auc: float
    n_pos: int
    p_value: float
    length: int

    def mask(self, labels: Any) -> np.ndarray:
        """Evaluate the formula on a label matrix.

        Args:
            labels: ``(n_images, n_concepts)`` binary matrix (scipy.sparse or dense), with the
                concepts in the order the formula's indices refer to.

        Returns:
            ``(n_images,)`` bool mask of the formula's positive set.
        """
        lab = _LabelIndex.build(labels, None)
        needed = 1 + max(concept for concept, _ in self.atoms)
        if lab.n_concepts < needed:
            raise ValueError(
                f"labels has {lab.n_concepts:,} concepts but the formula uses concept {needed - 1}"
            )
        out = lab.atom_mask(*self.atoms[0])
        for op, atom in zip(self.ops, self.atoms[1:]):
            x = lab.atom_mask(*atom)
            out = out & x if op == "AND" else out | x
        return out


# --------------------------------------------------------------------------------------------
# Label side: validated once, shared by every unit.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LabelIndex:
    """Binary labels as CSC (columns = concepts) plus their transpose and column sizes."""

    csc: sp.csc_array  # (n_images, n_concepts) float64 0/1
    csr_t: sp.csr_array  # (n_concepts, n_images) same data, for rank sums of all concepts
    counts: np.ndarray  # (n_concepts,) float64 positives per concept
    names: tuple[str, ...]

    @property
    def n_images(self) -> int:
        return self.csc.shape[0]

    @property
    def n_concepts(self) -> int:
        return self.csc.shape[1]

    @classmethod
    def build(cls, labels: Any, concept_names: Sequence[str] | None) -> _LabelIndex:
        """Validate ``labels`` (sparse or dense, binary, 2-D) and index it."""
        if sp.issparse(labels):
            if labels.ndim != 2:
                raise ValueError(
                    f"labels must be 2-D (n_images, n_concepts); got shape {labels.shape}"
                )
            csc = sp.csc_array(labels, dtype=np.float64, copy=True)
            csc.sum_duplicates()
            csc.eliminate_zeros()
            if csc.nnz and not np.all(csc.data == 1.0):
                bad = csc.data[csc.data != 1.0][0]
                raise ValueError(f"labels must be binary (0/1 or bool); found the value {bad}")
        else:
            arr = np.asarray(labels)
            if arr.ndim != 2:
                raise ValueError(
                    f"labels must be 2-D (n_images, n_concepts); got shape {arr.shape}"
                )
            if arr.dtype != np.bool_:
                if not (np.issubdtype(arr.dtype, np.number) and np.isin(arr, (0, 1)).all()):
                    raise ValueError(
                        f"labels must be binary (0/1 or bool); got dtype {arr.dtype} with "
                        f"other values"
                    )
                arr = arr != 0
            csc = sp.csc_array(arr).astype(np.float64)
        csc.sort_indices()
        n_concepts = csc.shape[1]
        if concept_names is None:
            names = tuple(f"c{j}" for j in range(n_concepts))
        else:
            names = tuple(concept_names)
            if len(names) != n_concepts:
                raise ValueError(
                    f"concept_names has {len(names):,} names but labels has {n_concepts:,} columns"
                )
            if not all(isinstance(s, str) for s in names):
                raise ValueError("concept_names must be strings")
        counts = np.diff(csc.indptr).astype(np.float64)
        return cls(csc=csc, csr_t=csc.T.tocsr(), counts=counts, names=names)

    def column(self, concept: int) -> np.ndarray:
        """Dense bool mask of one concept: (n_images,)."""
        out = np.zeros(self.n_images, dtype=bool)
        out[self.csc.indices[self.csc.indptr[concept] : self.csc.indptr[concept + 1]]] = True
        return out

    def atom_mask(self, concept: int, negated: bool) -> np.ndarray:
        """Dense bool mask of a concept or its negation: (n_images,)."""
        col = self.column(concept)
        return ~col if negated else col


# --------------------------------------------------------------------------------------------
# Validation and small numeric helpers.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Params:
    max_length: int
    beam_size: int
    n_candidates: int | None
    min_fraction: float
    max_fraction: float
    search: str


def _check_params(
    max_length: int,
    beam_size: int,
    n_candidates: int | None,
    min_fraction: float,
    max_fraction: float,
    search: str,
) -> _Params:
    """Validate the search settings once at the public boundary."""

    def _int(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
        return int(value)

    max_length = _int("max_length", max_length)
    beam_size = _int("beam_size", beam_size)
    if n_candidates is not None:
        n_candidates = _int("n_candidates", n_candidates)
    lo, hi = float(min_fraction), float(max_fraction)
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(
            f"need 0 <= min_fraction <= max_fraction <= 1; got min_fraction={min_fraction!r}, "
            f"max_fraction={max_fraction!r}"
        )
    if not isinstance(search, str) or search not in _SEARCH_MODES:
        raise ValueError(f"search must be 'exact' or 'beam'; got {search!r}")
    if search == "exact" and max_length > _MAX_EXACT_LENGTH:
        raise ValueError(
            f"search='exact' supports max_length <= {_MAX_EXACT_LENGTH}; got max_length="
            f"{max_length}. Use search='beam' for longer formulas (a heuristic), or max_length <= "
            f"{_MAX_EXACT_LENGTH}"
        )
    return _Params(max_length, beam_size, n_candidates, lo, hi, search)


def _as_ranks(ranks: Any, ndim: int) -> np.ndarray:
    """Convert to float64 with the expected number of dimensions."""
    try:
        arr = np.asarray(ranks, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ranks must be a real-valued array; {exc}") from exc
    if arr.ndim != ndim:
        want = "(n_images,)" if ndim == 1 else "(n_images, n_units)"
        raise ValueError(f"ranks must have shape {want}; got shape {arr.shape}")
    return arr


def _check_average_ranks(block: np.ndarray, first_unit: int = 0) -> None:
    """Raise unless every column of ``block (n_images, k)`` looks like average ranks 1..N."""
    n_images = block.shape[0]
    if n_images < 2:
        raise ValueError(f"need at least 2 images; got {n_images}")
    doubled = 2.0 * block
    ok = np.isfinite(block).all(axis=0)
    ok &= (doubled == np.round(doubled)).all(axis=0)
    ok &= (block.min(axis=0) >= 1.0) & (block.max(axis=0) <= n_images)
    ok &= block.sum(axis=0) == n_images * (n_images + 1) / 2.0
    if not ok.all():
        unit = first_unit + int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"ranks of unit {unit} are not average ranks 1..{n_images:,} (half-integers summing to "
            f"N(N+1)/2); rank the activations first with scipy.stats.rankdata(a, method='average', "
            f"axis=0)"
        )


def _tie_term_of(r: np.ndarray) -> float:
    """Sum of t^3 - t over the tie groups of average ranks ``r (n_images,)``, in O(n_images).

    Tie groups occupy disjoint runs of sorted positions, so their average ranks (the runs'
    midpoints) are distinct: counting equal doubled ranks gives the group sizes.
    """
    t = np.bincount((2.0 * r).astype(np.int64))
    t = t[t > 1].astype(np.float64)
    return float(np.sum(t**3 - t))


def _check_tie_term(tie_term: Any, n_units: int | None) -> np.ndarray | float | None:
    if tie_term is None:
        return None
    arr = np.asarray(tie_term, dtype=np.float64)
    if n_units is None:
        if arr.ndim != 0:
            raise ValueError(f"tie_term must be a scalar for one unit; got shape {arr.shape}")
    elif arr.shape not in ((), (n_units,)):
        raise ValueError(
            f"tie_term must be a scalar or have shape ({n_units},); got shape {arr.shape}"
        )
    if not (np.isfinite(arr).all() and (arr >= 0).all()):
        raise ValueError(
            "tie_term must be finite and >= 0 (it is the sum of t^3 - t over tie groups)"
        )
    return float(arr) if arr.ndim == 0 else np.broadcast_to(arr, (n_units,))


def _auc(rank_sum: np.ndarray, n_pos: np.ndarray, n_images: int) -> np.ndarray:
    """AUC from rank sums; NaN where the positive set is empty or everything."""
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * (n_images - n_pos))
    return np.where((n_pos > 0) & (n_pos < n_images), auc, np.nan)


def _p_value(rank_sum: float, n_pos: float, n_images: int, tie_term: float) -> float:
    """One-sided Mann-Whitney p-value (normal approximation, tie and continuity corrected)."""
    m = n_images - n_pos
    u = rank_sum - n_pos * (n_pos + 1) / 2.0
    var = n_pos * m / 12.0 * ((n_images + 1) - tie_term / (n_images * (n_images - 1.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - n_pos * m / 2.0 - 0.5) / np.sqrt(max(var, 0.0))
    return float(ndtr(-z))


def _in_bounds(n_pos: np.ndarray, n_images: int, params: _Params) -> np.ndarray:
    frac = n_pos / n_images
    return (n_pos >= 1) & (n_pos <= n_images - 1) & (frac >= params.min_fraction) & (
        frac <= params.max_fraction
    )


def _top_atoms(atom_auc: np.ndarray, n_candidates: int | None) -> np.ndarray:
    """Atom codes by AUC descending (ties by code), defined AUCs only, the first n_candidates."""
    order = np.argsort(-atom_auc, kind="stable")
    order = order[~np.isnan(atom_auc[order])]
    return order if n_candidates is None else order[:n_candidates]


def _candidate_atoms(
    atom_auc: np.ndarray, in_bounds: np.ndarray, n_candidates: int | None
) -> np.ndarray:
    """Atom set A: the top ``n_candidates`` atoms, then the top in-bounds ones not among them."""
    top = _top_atoms(atom_auc, n_candidates)
    top_in = _top_atoms(np.where(in_bounds, atom_auc, np.nan), n_candidates)
    return np.concatenate([top, top_in[~np.isin(top_in, top)]])


def _formula_text(
    atoms: Sequence[tuple[int, bool]], ops: Sequence[str], names: Sequence[str]
) -> str:
    def word(atom: tuple[int, bool]) -> str:
        return f"NOT {names[atom[0]]}" if atom[1] else names[atom[0]]

    text, last = word(atoms[0]), None
    for op, atom in zip(ops, atoms[1:]):
        if last is not None and last != op:
            text = f"({text})"
        text, last = f"{text} {op} {word(atom)}", op
    return text


# --------------------------------------------------------------------------------------------
# Beam search for one unit.
# --------------------------------------------------------------------------------------------


class _Node:
    """A formula in the search: its atoms, rank sum, size, AUC and (lazily) its mask."""

    __slots__ = ("codes", "ops", "rank_sum", "n_pos", "auc", "_mask", "_parent", "_atom", "_packed")

    def __init__(self, codes, ops, rank_sum, n_pos, auc, mask=None, parent=None, atom=None):
        self.codes: tuple[int, ...] = codes
        self.ops: tuple[str, ...] = ops
        self.rank_sum = float(rank_sum)
        self.n_pos = float(n_pos)
        self.auc = float(auc)
        self._mask = mask
        self._parent = parent  # (node, op) this one extends, when the mask is not built yet
        self._atom = atom  # (n_images,) bool mask of the atom added last
        self._packed: bytes | None = None

    @property
    def mask(self) -> np.ndarray:
        if self._mask is None:
            parent, op = self._parent
            self._mask = parent.mask & self._atom if op == "AND" else parent.mask | self._atom
            self._parent = self._atom = None
        return self._mask

    @property
    def packed(self) -> bytes:
        if self._packed is None:
            self._packed = np.packbits(self.mask).tobytes()
        return self._packed


class _Registry:
    """Positive sets seen so far; (size, rank sum) pre-filters, packed bitsets decide."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[float, float], list[_Node]] = {}

    def add_if_new(self, node: _Node) -> bool:
        key = (node.n_pos, node.rank_sum)
        same_key = self._by_key.setdefault(key, [])
        if any(node.packed == other.packed for other in same_key):
            return False
        same_key.append(node)
        return True


class _UnitSearch:
    """Beam search over the formulas of one unit, given its ranks and concept rank sums."""

    def __init__(
        self, lab: _LabelIndex, params: _Params, r: np.ndarray, concept_rank_sums: np.ndarray
    ):
        self.lab, self.params, self.r = lab, params, r
        n_images, n_concepts = lab.n_images, lab.n_concepts
        total = float(np.sum(r))
        # Atom code a < C is concept a; a >= C is NOT concept (a - C).
        self.atom_rank_sum = np.concatenate([concept_rank_sums, total - concept_rank_sums])
        self.atom_n = np.concatenate([lab.counts, n_images - lab.counts])
        self.atom_auc = _auc(self.atom_rank_sum, self.atom_n, n_images)
        self.n_evaluated = int(np.count_nonzero(~np.isnan(self.atom_auc)))
        self._columns: dict[int, np.ndarray] = {}

    def _atom_mask(self, code: int) -> np.ndarray:
        concept = code % self.lab.n_concepts
        col = self._columns.get(concept)
        if col is None:
            col = self._columns[concept] = self.lab.column(concept)
        return ~col if code >= self.lab.n_concepts else col

    def _seed(self, cand: np.ndarray, in_bounds: np.ndarray) -> list[_Node]:
        """First beam: the best in-bounds atoms of A with distinct positive sets."""
        codes = cand[in_bounds[cand]]
        codes = codes[np.lexsort((codes, -self.atom_auc[codes]))]
        registry, beam = _Registry(), []
        for code in codes:
            code = int(code)
            node = _Node(
                (code,), (), self.atom_rank_sum[code], self.atom_n[code], self.atom_auc[code],
                mask=self._atom_mask(code),
            )
            if registry.add_if_new(node):
                beam.append(node)
                if len(beam) == self.params.beam_size:
                    break
        return beam

    def run(self) -> list[_Node]:
        """Return the final beam, best first."""
        params, lab, r = self.params, self.lab, self.r
        n_images, n_concepts = lab.n_images, lab.n_concepts
        in_bounds = _in_bounds(self.atom_n, n_images, params)
        cand = _candidate_atoms(self.atom_auc, in_bounds, params.n_candidates)  # (m,) atom codes
        beam = self._seed(cand, in_bounds)
        if not beam or params.max_length == 1:
            return beam
        cand_concepts = cand % n_concepts
        cand_negated = cand >= n_concepts
        cand_rank_sum = self.atom_rank_sum[cand]
        cand_n = self.atom_n[cand]
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
            new_auc = _auc(new_rs, new_n, n_images)
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


# --------------------------------------------------------------------------------------------
# Exact search for one unit (max_length <= 3).
# --------------------------------------------------------------------------------------------

# Length-3 formulas are scored in chunks of whole prefixes, about this many (prefix, atom) pairs
# per chunk: each float64 work array is ~1 MiB, so memory stays bounded whatever M is.
_CHUNK_ELEMENTS = 1 << 17
# For top_k > 1, the best ``_TAKE_PER_RESULT * top_k`` formulas are sorted and deduplicated first
# (one positive set has many formulas: c, c AND c, (c OR x) AND c, ...), more if too few distinct.
_TAKE_PER_RESULT = 64


def _support_interval(n_images: int, params: _Params) -> tuple[int, int]:
    """``(lo, hi)`` with ``_in_bounds(n) <=> lo <= n <= hi``; ``lo > hi`` when nothing is in bounds.

    ``n / N >= min_fraction`` and ``n / N <= max_fraction`` are monotone in ``n`` (IEEE division is
    monotone), so the in-bounds sizes are one interval; finding it with the very same float test
    keeps the exact search's support check bit-identical to :func:`exhaustive_search`'s.
    """
    ok = np.flatnonzero(_in_bounds(np.arange(n_images + 1, dtype=np.float64), n_images, params))
    return (int(ok[0]), int(ok[-1])) if ok.size else (1, 0)


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
    every scored in-bounds formula is kept for :meth:`top_distinct`.
    """

    def __init__(self, top_k: int):
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
        """The ``top_k`` best formulas with distinct positive sets (sorted as exhaustive_search)."""
        if self.top_k == 1:
            return [] if self.best is None else [make_node(*self.best)]
        if not self.parts:
            return []
        auc, length, idx, n_pos, rank_sum = (np.concatenate(a) for a in zip(*self.parts))
        size = auc.size
        take = min(size, _TAKE_PER_RESULT * self.top_k)
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
    search: _UnitSearch, bounds: tuple[int, int], top_k: int
) -> tuple[list[_Node], int]:
    """Exact optimum of the search space for one unit (``max_length <= 3``); see the module doc.

    Returns the ``top_k`` best formulas with distinct positive sets (as
    ``exhaustive_search(top_k=top_k)``) and the number of formulas scored, counted as
    :func:`exhaustive_search` counts them.
    """
    lab, params, r = search.lab, search.params, search.r
    n_images, n_concepts = lab.n_images, lab.n_concepts
    lo, hi = bounds
    atom_n, atom_rs, atom_auc = search.atom_n, search.atom_rank_sum, search.atom_auc
    in_bounds = (atom_n >= lo) & (atom_n <= hi)
    cand = _candidate_atoms(atom_auc, in_bounds, params.n_candidates)  # (m,) codes, A in order
    n_evaluated = search.n_evaluated  # every atom with a defined AUC
    m = cand.size
    ok1 = in_bounds[cand]
    if not ok1.any():
        return [], n_evaluated
    r1, n1 = atom_rs[cand], atom_n[cand]
    collector = _Collector(top_k)
    collector.add(1, [(np.where(ok1, atom_auc[cand], -np.inf), n1, r1, 0, 1)])

    def auc_of(rank_sum: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
        """AUC, as exhaustive_search computes it (bit for bit); -inf out of the support bounds."""
        with np.errstate(divide="ignore", invalid="ignore"):
            auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * (n_images - n_pos))
        return np.where((n_pos >= lo) & (n_pos <= hi), auc, -np.inf)

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


def _to_formula(node: _Node, lab: _LabelIndex, tie_term: float) -> Formula:
    n_concepts = lab.n_concepts
    atoms = tuple((code % n_concepts, code >= n_concepts) for code in node.codes)
    return Formula(
        text=_formula_text(atoms, node.ops, lab.names),
        atoms=atoms,
        ops=node.ops,
        auc=node.auc,
        n_pos=int(node.n_pos),
        p_value=_p_value(node.rank_sum, node.n_pos, lab.n_images, tie_term),
        length=len(node.codes),
    )


def _run_unit(
    search: _UnitSearch, bounds: tuple[int, int], top_k: int
) -> tuple[list[_Node], int]:
    """Search one unit with ``search.params.search``; ``(best formulas, n_formulas_evaluated)``."""
    if search.params.search == "exact":
        return _exact_search(search, bounds, top_k)
    beam = search.run()
    return beam[:top_k], search.n_evaluated


def _check_rows(n_rows: int, lab: _LabelIndex) -> None:
    if n_rows != lab.n_images:
        raise ValueError(f"labels has {lab.n_images:,} rows but ranks has {n_rows:,} images")


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


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
) -> tuple[list[Formula], int]:
    """Best compositional formulas for one unit: exact search, or beam search (INVERT).

    Args:
        ranks: ``(n_images,)`` average ranks of the unit's activations (ties averaged, 1..N), e.g.
            ``scipy.stats.rankdata(a, method='average')``.
        labels: ``(n_images, n_concepts)`` binary concept labels, scipy.sparse or dense.
        concept_names: ``n_concepts`` names used in ``Formula.text``.
        max_length: most atoms in a formula (L); at most 3 with ``search="exact"``.
        beam_size: with ``search="beam"``, formulas kept per step (B); with ``search="exact"``,
            how many formulas (distinct positive sets) to return.
        n_candidates: size of the atom set ``A`` (the top ``n_candidates`` of all
            ``2 * n_concepts`` atoms by single-atom AUC, plus the top ``n_candidates`` in-bounds
            ones; see the module docstring); ``None`` for all atoms.
        min_fraction, max_fraction: bounds on the support ``n_pos / n_images`` of every formula
            kept (see the module docstring for the defaults).
        tie_term: ``sum(t**3 - t)`` over the unit's tie groups, for the p-values; computed from
            ``ranks`` when ``None``.
        search: ``"exact"`` (default): the optimum of the whole search space, identical to
            :func:`exhaustive_search` (``max_length <= 3``; time ``O(M^3)`` and memory
            ``O(M^2)`` per unit for ``M = |A|``, about 10 ms per unit at the default
            ``n_candidates=32`` on 50,000 images, so ``n_candidates=None`` suits small concept
            sets only); ``"beam"``: INVERT's beam search, a heuristic that can miss the optimum
            (any ``max_length``).

    Returns:
        ``(formulas, n_formulas_evaluated)``: at most ``beam_size`` formulas with distinct
        positive sets, sorted by AUC descending (then shorter first); empty when no formula has
        its support in bounds. With ``search="exact"`` they are the ``beam_size`` best of the
        whole space, exactly ``exhaustive_search(..., top_k=beam_size)``; with ``"beam"``, the
        final beam. ``n_formulas_evaluated`` counts every formula whose AUC was computed (atoms
        with a defined AUC plus every AND/OR extension of an in-bounds formula, including those
        rejected for support or as duplicates; for ``"exact"`` the same count as
        :func:`exhaustive_search`). Each ``Formula.p_value`` is EXPLORATORY, not corrected for
        the search; ``min(1, p * n_formulas_evaluated)`` is a Bonferroni bound.

    Raises:
        ValueError: on mismatched shapes, non-binary labels, ranks that are not average ranks, or
            invalid settings (among them ``search`` not ``"exact"``/``"beam"``, and
            ``search="exact"`` with ``max_length > 3``).

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
    r = np.ascontiguousarray(_as_ranks(ranks, 1))
    lab = _LabelIndex.build(labels, concept_names)
    _check_rows(r.shape[0], lab)
    _check_average_ranks(r[:, None])
    ties = _check_tie_term(tie_term, None)
    unit = _UnitSearch(lab, params, r, lab.csr_t @ r)
    nodes, n_evaluated = _run_unit(unit, _support_interval(lab.n_images, params), beam_size)
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
) -> list[Formula | None] | tuple[list[Formula | None], np.ndarray]:
    """Best compositional formula of every unit (see :func:`compositional_search`).

    The label matrix is validated and indexed once; concept rank sums are one sparse-dense
    product per block of ``block_size`` units; blocks run on ``n_threads`` threads (the products
    release the GIL).

    Args:
        ranks: ``(n_images, n_units)`` average ranks, one column per unit.
        labels, concept_names, max_length, beam_size, n_candidates, min_fraction, max_fraction,
            search: as for :func:`compositional_search` (``beam_size`` matters only for
            ``search="beam"``: one formula per unit is returned).
        tie_term: ``None`` (computed per unit), a scalar, or ``(n_units,)``.
        n_threads: worker threads.
        block_size: units per block.
        return_counts: also return ``n_formulas_evaluated`` per unit.

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
    r2 = _as_ranks(ranks, 2)
    lab = _LabelIndex.build(labels, concept_names)
    _check_rows(r2.shape[0], lab)
    n_units = r2.shape[1]
    ties = _check_tie_term(tie_term, n_units)
    for name, value in (("n_threads", n_threads), ("block_size", block_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    starts = list(range(0, n_units, int(block_size)))
    for s in starts:
        _check_average_ranks(r2[:, s : s + block_size], first_unit=s)
    bounds = _support_interval(lab.n_images, params)

    def run_block(start: int) -> list[tuple[Formula | None, int]]:
        block = np.ascontiguousarray(r2[:, start : start + block_size])
        concept_rank_sums = np.asarray(lab.csr_t @ block)  # (n_concepts, k)
        out = []
        for k in range(block.shape[1]):
            r = np.ascontiguousarray(block[:, k])
            unit = _UnitSearch(lab, params, r, concept_rank_sums[:, k])
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
    ``n_candidates`` atoms plus the top ``n_candidates`` in-bounds atoms; see the module
    docstring), with every prefix in the support bounds, is built as a dense mask and scored by a
    plain rank sum. Exponential in ``max_length``: for tests and benchmarks on small sizes only.
    ``compositional_search(..., search="exact", beam_size=top_k)`` returns the same formulas and
    count for ``max_length <= 3``, without masks.

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
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1
    ):
        raise ValueError(f"top_k must be a positive integer or None; got {top_k!r}")
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
        return n, rank_sum, (rank_sum - n * (n + 1) / 2) / (n * (n_images - n))

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
