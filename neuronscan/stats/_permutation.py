"""Permutation p-values for chosen (unit, concept) pairs, from the unit's ranks.

Permuting the image labels of a concept with ``n`` positives is the same as drawing ``n`` of the
unit's N ranks without replacement, so one permutation of one pair costs O(n), not O(N). The test
is one-sided ("higher on the concept"): with ``U`` the observed Mann-Whitney statistic and ``U_b``
its value on permutation ``b``,

    p_perm = (1 + #{b : U_b >= U}) / (B + 1),

a valid p-value for any B (the observed labelling counts as one permutation). ``U_b >= U`` is
decided on exact integer doubled rank sums (``U`` is the rank sum minus a constant).

Draws. Permutation ``b`` is the prefix of ``rng.permutation(N)`` (``rng`` seeded once): the first
``n`` indices of a uniform random permutation are a uniform draw of ``n`` without replacement, for
every ``n`` at once. So the B index rows are shared by all pairs -- every unit and every concept
size -- and each pair's p-value depends only on ``(seed, n_perm, N)``, the unit's ranks and the
concept's positives, not on which other pairs were asked for. A concept with ``n > N / 2`` draws
its complement (``N - n`` indices) instead: the positives' rank sum is the total minus theirs.
The p-values of different concepts of one unit are therefore dependent (same permutations), each
one exactly valid on its own.

The rows can be drawn once (:func:`permutation_draws`) and given to every call (``draws=``): a run
scored in shards then draws its B permutations once instead of once per shard, and gets the same
p-values as one call over all its pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._ranking import UnitRanks
from ._validate import as_labels, fmt_shape

__all__ = ["PermutationDraws", "permutation_draws", "permutation_pvalues"]

# Permutations drawn per chunk: bounds the (chunk, largest draw) index and prefix-sum matrices.
# Memory otherwise: the doubled ranks of the units that have pairs, 4 bytes x N per unit.
_PERM_CHUNK = 64


@dataclass(frozen=True)
class PermutationDraws:
    """Permutations drawn once (`permutation_draws`): ``index[b]`` is the prefix of the ``b``-th
    ``rng.permutation(n_images)`` of ``numpy.random.default_rng(seed)``."""

    index: np.ndarray
    n_images: int
    seed: int


def permutation_draws(n_images: int, n_perm: int, *, seed: int = 0, length: int | None = None) -> PermutationDraws:
    """The permutations `permutation_pvalues` draws, drawn once to be shared by many calls.

    Row ``b`` is the first ``length`` indices of the ``b``-th ``rng.permutation(n_images)`` of
    ``numpy.random.default_rng(seed)``: exactly the rows `permutation_pvalues` draws itself.

    Args:
        n_images: N, the images permuted.
        n_perm: B, the rows.
        seed: the generator's seed.
        length: indices kept per row (default ``n_images``); a call needs at least its largest draw,
            ``min(n, N - n)`` over its concepts' positive counts ``n``, i.e. at most ``N // 2``.

    Returns:
        `PermutationDraws` whose ``index`` is ``(n_perm, length)`` int32 in ``0..n_images - 1``
        (``4 * n_perm * length`` bytes).

    Example:
        >>> d = permutation_draws(10, 3, seed=1, length=5)
        >>> d.index.shape, bool((np.diff(np.sort(d.index, axis=1), axis=1) > 0).all())
        ((3, 5), True)
    """
    n_images, n_perm = int(n_images), int(n_perm)
    if n_images < 1 or n_perm < 1:
        raise ValueError(f"n_images and n_perm must be >= 1; got {n_images} and {n_perm}")
    length = n_images if length is None else int(length)
    if not 0 <= length <= n_images:
        raise ValueError(f"length must lie in 0..{n_images:,}; got {length:,}")
    rng = np.random.default_rng(seed)
    out = np.empty((n_perm, length), dtype=np.int32)
    for b in range(n_perm):
        out[b] = rng.permutation(n_images)[:length]
    return PermutationDraws(out, n_images, int(seed))


def permutation_pvalues(
    ranks: UnitRanks | np.ndarray,
    labels: object,
    unit_index: np.ndarray,
    concept_index: np.ndarray,
    *,
    n_perm: int = 1000,
    seed: int = 0,
    draws: PermutationDraws | None = None,
) -> tuple[np.ndarray, int]:
    """One-sided permutation p-values for the given (unit, concept) pairs.

    Args:
        ranks: :class:`UnitRanks` from :func:`rank_units`, or ``(n_images, n_units)`` average
            ranks (ties averaged; half-integers).
        labels: ``(n_images, n_concepts)`` 0/1 scipy.sparse matrix or bool ndarray.
        unit_index: ``(n_pairs,)`` integer unit of each pair.
        concept_index: ``(n_pairs,)`` integer concept of each pair.
        n_perm: number of permutations B (>= 1).
        seed: seed of the ``numpy.random.default_rng`` that draws the permutations.
        draws: the permutations drawn beforehand, ``permutation_draws(n_images, n_perm, seed=seed,
            length=...)``: same N and seed, at least ``n_perm`` rows and as many columns as the largest
            draw of the given pairs. Same p-values as without it.

    Returns:
        ``(p_perm, n_perm)``: ``(n_pairs,)`` float64 p-values in ``[1 / (B + 1), 1]`` (NaN for a
        concept with no positive or no negative image) and B.

    Raises:
        ValueError: shapes disagree, indices out of range, ``n_perm < 1``, or ``draws`` were drawn
            for another N or seed or are too small.

    Example:
        >>> r = rank_units(np.arange(10.0)[:, None])
        >>> y = np.zeros((10, 1), bool); y[-3:] = True
        >>> p, b = permutation_pvalues(r, y, np.array([0]), np.array([0]), n_perm=999)
        >>> b, bool(p[0] < 0.05)
        (999, True)
    """
    r = ranks.ranks if isinstance(ranks, UnitRanks) else np.asarray(ranks, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(
            f"ranks must be 2-D (n_images, n_units); got shape {fmt_shape(r.shape)}"
        )
    n_images, n_units = r.shape
    y = as_labels(labels, n_images)
    n_concepts = y.shape[1]
    units = np.asarray(unit_index)
    concepts = np.asarray(concept_index)
    _check_pairs(units, concepts, n_units, n_concepts)
    n_perm = int(n_perm)
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1; got {n_perm}")
    units = units.astype(np.int64)
    concepts = concepts.astype(np.int64)

    indptr = y.indptr.astype(np.int64)
    n_pos = np.diff(indptr)[concepts]
    p_perm = np.full(units.size, np.nan)
    scored = (n_pos > 0) & (n_pos < n_images)
    if not scored.any():
        return p_perm, n_perm
    complement = n_pos > n_images // 2
    draw = np.where(complement, n_images - n_pos, n_pos)  # indices drawn per permutation

    # Doubled ranks (exact integers <= 2N) of the units that have pairs.
    unique_units, pair_unit = np.unique(units[scored], return_inverse=True)
    r2 = np.empty((unique_units.size, n_images), dtype=np.int32)
    for j, unit in enumerate(unique_units):
        r2[j] = np.rint(r[:, unit] * 2.0)
    total = r2.sum(axis=1, dtype=np.int64)
    pairs = np.flatnonzero(scored)
    observed = _observed_rank_sums(r2, pair_unit, y.indices, indptr[concepts[pairs]], n_pos[pairs])

    pair_draw = draw[pairs]
    longest = int(pair_draw.max())
    if draws is not None:
        if draws.n_images != n_images or draws.seed != int(seed):
            raise ValueError(f"draws were drawn for N = {draws.n_images:,}, seed {draws.seed}; these pairs "
                             f"need N = {n_images:,}, seed {int(seed)}")
        if draws.index.shape[0] < n_perm or draws.index.shape[1] < longest:
            raise ValueError(
                f"draws must hold at least {n_perm:,} rows of {longest:,} indices (the largest draw of "
                f"these pairs); got shape {fmt_shape(draws.index.shape)}"
            )
    pair_complement = complement[pairs]
    exceed = np.zeros(pairs.size, dtype=np.int64)
    order = np.argsort(pair_unit, kind="stable")
    bounds = np.searchsorted(pair_unit[order], np.arange(unique_units.size + 1))
    by_unit = [order[bounds[u] : bounds[u + 1]] for u in range(unique_units.size)]
    rng = np.random.default_rng(seed) if draws is None else None
    for first in range(0, n_perm, _PERM_CHUNK):
        n_rows = min(_PERM_CHUNK, n_perm - first)
        if rng is None:
            index = draws.index[first : first + n_rows]
        else:
            index = np.stack([rng.permutation(n_images)[:longest] for _ in range(n_rows)])
        for u, members in enumerate(by_unit):
            width = int(pair_draw[members].max())
            drawn = np.take(r2[u], index[:, :width], mode="clip")
            prefix = np.cumsum(drawn, axis=1, dtype=np.int64)
            sums = prefix[:, pair_draw[members] - 1]  # (n_rows, n_members)
            sums = np.where(pair_complement[members], total[u] - sums, sums)
            exceed[members] += np.count_nonzero(sums >= observed[members], axis=0)
    p_perm[pairs] = (1.0 + exceed) / (n_perm + 1.0)
    return p_perm, n_perm


def _observed_rank_sums(
    r2: np.ndarray,
    pair_unit: np.ndarray,
    rows: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    chunk: int = 1 << 22,
) -> np.ndarray:
    """Doubled rank sum of each pair: ``r2[pair_unit[j]]`` summed over its concept's rows."""
    out = np.empty(lengths.size, dtype=np.int64)
    first = 0
    while first < lengths.size:
        # At least one pair per chunk, then as many as fit in ``chunk`` gathered values.
        ends = np.cumsum(lengths[first:])
        last = first + max(1, int(np.searchsorted(ends, chunk, side="right")))
        lens = lengths[first:last]
        offsets = np.cumsum(lens) - lens
        within = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(offsets, lens)
        image = rows[np.repeat(starts[first:last], lens) + within]
        values = r2[np.repeat(pair_unit[first:last], lens), image]
        out[first:last] = np.add.reduceat(values.astype(np.int64), offsets)
        first = last
    return out


def _check_pairs(units: np.ndarray, concepts: np.ndarray, n_units: int, n_concepts: int) -> None:
    """Validate the pair index arrays."""
    if units.ndim != 1 or concepts.ndim != 1 or units.shape != concepts.shape:
        raise ValueError(
            "unit_index and concept_index must be 1-D arrays of equal length; got shapes "
            f"{fmt_shape(units.shape)} and {fmt_shape(concepts.shape)}"
        )
    checks = (("unit_index", units, n_units), ("concept_index", concepts, n_concepts))
    for name, idx, bound in checks:
        if idx.size and idx.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integers; got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= bound):
            raise ValueError(
                f"{name} must lie in 0..{bound - 1:,}; got range {idx.min():,}..{idx.max():,}"
            )
