"""Compositional formulas: their representation, the label index, atoms and the search space.

Shared by the exact search (:mod:`._exact`), the beam search (:mod:`._beam`) and the brute-force
reference (:mod:`._reference`); :mod:`._compositional` has the overview and the public entry.

Atoms and formulas. Atoms are the concepts and their negations, coded ``0..2C-1`` (``c`` for
concept ``c``, ``C + c`` for ``NOT c``). A formula is built left to right,
``phi_{l+1} = phi_l AND atom`` or ``phi_l OR atom``, up to ``max_length`` atoms, and rendered with
parentheses where the operator changes: ``(circle AND red) OR NOT striped``.

Scores. A formula is scored by the AUC of its positive set against the unit's activations, from
rank sums exactly as for single concepts (:func:`._auc.auc_from_rank_sums`; ``U`` from
:func:`._auc.mannwhitney_u`):

    U = sum_{i in phi} r_i - n (n + 1) / 2,    AUC = U / (n (N - n)),

with ``r`` the unit's average ranks (ties averaged, 1..N) and ``n = |phi|``. Average ranks are
half-integers, so every rank sum is exact in float64 and the AUC equals
``sklearn.metrics.roc_auc_score(mask, activations)``. Each formula carries the one-sided
Mann-Whitney p-value from ``U`` and the unit's tie term (:func:`._mannwhitney.mannwhitney_pvalue`).

Search space. The atom set ``A`` (:func:`_candidate_atoms`) is the ``n_candidates`` atoms with the
highest single-atom AUC (any support: ``NOT c`` with support 0.9 is a useful ``AND`` operand) plus
the ``n_candidates`` best atoms whose support is in bounds (so the best single-concept labels are
always in it); ties go to the lower code. The searched space is every formula
``a_1 op_2 a_2 ... op_L a_L`` with all ``a_i`` in ``A``, ``op`` in {AND, OR}, ``L <= max_length``,
whose *every prefix* has support ``|phi| / N`` in ``[min_fraction, max_fraction]`` and
``1 <= |phi| <= N - 1`` (where the AUC is defined).

Support bounds. INVERT's reference implementation uses ``min_fraction=0.0, max_fraction=0.5``.
neuronscan keeps ``max_fraction=0.5`` but defaults ``min_fraction`` to ``0.001`` (50 of 50,000
images): with no floor, a length-3 AND can isolate a handful of top images and reach AUC near 1 by
construction, a label that describes no population. Pass ``min_fraction=0.0`` for INVERT's setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._auc import auc_from_rank_sums, mannwhitney_u
from ._mannwhitney import mannwhitney_pvalue

__all__ = ["DEFAULT_MAX_FRACTION", "DEFAULT_MIN_FRACTION", "Formula"]

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
# Settings: validated once at the public boundary.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Params:
    max_length: int
    beam_size: int
    n_candidates: int | None
    min_fraction: float
    max_fraction: float
    search: str


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _check_params(
    max_length: int,
    beam_size: int,
    n_candidates: int | None,
    min_fraction: float,
    max_fraction: float,
    search: str,
) -> _Params:
    """Validate the search settings once at the public boundary."""
    max_length = _positive_int("max_length", max_length)
    beam_size = _positive_int("beam_size", beam_size)
    if n_candidates is not None:
        n_candidates = _positive_int("n_candidates", n_candidates)
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


def _check_top_k(top_k: Any) -> int | None:
    """``top_k``: how many formulas to return, a positive integer or ``None`` (all of them)."""
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1
    ):
        raise ValueError(f"top_k must be a positive integer or None; got {top_k!r}")
    return None if top_k is None else int(top_k)


# --------------------------------------------------------------------------------------------
# Unit side: ranks and tie terms.
# --------------------------------------------------------------------------------------------


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


def _check_rows(n_rows: int, lab: _LabelIndex) -> None:
    if n_rows != lab.n_images:
        raise ValueError(f"labels has {lab.n_images:,} rows but ranks has {n_rows:,} images")


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


# --------------------------------------------------------------------------------------------
# Atoms, support bounds and the atom set A.
# --------------------------------------------------------------------------------------------


class _UnitAtoms:
    """One unit's ranks and the rank sum, size and AUC of each of the ``2C`` atoms."""

    def __init__(
        self, lab: _LabelIndex, params: _Params, r: np.ndarray, concept_rank_sums: np.ndarray
    ):
        self.lab, self.params, self.r = lab, params, r
        total = float(np.sum(r))
        # Atom code a < C is concept a; a >= C is NOT concept (a - C).
        self.atom_rank_sum = np.concatenate([concept_rank_sums, total - concept_rank_sums])
        self.atom_n = np.concatenate([lab.counts, lab.n_images - lab.counts])
        self.atom_auc = auc_from_rank_sums(self.atom_rank_sum, self.atom_n, lab.n_images)
        self.n_evaluated = int(np.count_nonzero(~np.isnan(self.atom_auc)))  # defined AUCs


def _in_bounds(n_pos: np.ndarray, n_images: int, params: _Params) -> np.ndarray:
    frac = n_pos / n_images
    return (n_pos >= 1) & (n_pos <= n_images - 1) & (frac >= params.min_fraction) & (
        frac <= params.max_fraction
    )


def _support_interval(n_images: int, params: _Params) -> tuple[int, int]:
    """``(lo, hi)`` with ``_in_bounds(n) <=> lo <= n <= hi``; ``lo > hi`` when nothing is in bounds.

    ``n / N >= min_fraction`` and ``n / N <= max_fraction`` are monotone in ``n`` (IEEE division is
    monotone), so the in-bounds sizes are one interval; finding it with the very same float test
    keeps the exact search's support check bit-identical to the reference's.
    """
    ok = np.flatnonzero(_in_bounds(np.arange(n_images + 1, dtype=np.float64), n_images, params))
    return (int(ok[0]), int(ok[-1])) if ok.size else (1, 0)


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


# --------------------------------------------------------------------------------------------
# Formulas during a search, and as results.
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


def _to_formula(node: _Node, lab: _LabelIndex, tie_term: float) -> Formula:
    n_concepts = lab.n_concepts
    atoms = tuple((code % n_concepts, code >= n_concepts) for code in node.codes)
    u = mannwhitney_u(node.rank_sum, node.n_pos)
    return Formula(
        text=_formula_text(atoms, node.ops, lab.names),
        atoms=atoms,
        ops=node.ops,
        auc=node.auc,
        n_pos=int(node.n_pos),
        p_value=float(mannwhitney_pvalue(u, node.n_pos, lab.n_images, tie_term)),
        length=len(node.codes),
    )
