"""Rank every unit's activations once; every score of the unit is then a function of its ranks.

For one unit with values ``a[0..N-1]``, the average rank of image ``i`` is ``(s + 1 + e) / 2`` where
``[s, e)`` is the span of ``a[i]``'s tie group in ascending order (0-based). Internally ranks are
kept *doubled* (``r2 = s + e + 1``, an exact integer in ``[2, 2N]``) so that rank sums over any set
of images are exact integers; ``UnitRanks.ranks`` is ``r2 / 2``, exact in float64.

Non-finite values. ``+inf``/``-inf`` order naturally (above/below every finite value); every NaN is
treated as lower than everything else, ``-inf`` included, and all NaNs of a unit tie with each
other. ``n_nonfinite`` counts NaN and +-inf per unit. (scipy/sklearn refuse or propagate NaN; this
policy lets a few bad images rank last instead of poisoning a unit's scores.)

How. Values are mapped to unsigned integers whose order is the float order (sign bit flipped for
non-negative values, all bits flipped for negative ones, ``-0.0`` normalised to ``+0.0``, NaN to 0).
For float32 input the 32-bit key and the image index are packed in one uint64 and sorted with a
plain (SIMD) sort, which is ~2.5x faster than an argsort; float64 input whose values are all
exactly representable in float32 takes the same path, other float64 input uses an argsort.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ._validate import as_activations, fmt_shape

__all__ = ["UnitRanks", "rank_units"]

_T = TypeVar("_T")

# Units ranked together: ~40 bytes of temporaries per (unit, image), 16 MB at N = 50,000 and
# 410 MB at N = 1.28M. Eight units keep the sort and scatter cache-friendly: ranking 1.28M x 32
# float32 takes ~2.8 s in blocks of 8 against ~5.5 s in blocks of 32 (one thread).
_RANK_BLOCK = 8


@dataclass(frozen=True)
class UnitRanks:
    """Average ranks of every unit, plus the per-unit facts the scores need.

    Attributes:
        ranks: ``(n_images, n_units)`` float64 average ranks in ``1..n_images``, ties averaged.
            A transposed view of a unit-major array (each unit's ranks are contiguous).
        tie_term: ``(n_units,)`` float64, ``sum_t (t**3 - t)`` over the unit's tie groups.
        dead: ``(n_units,)`` bool, the unit is constant over all images (NaNs tie with NaNs).
        n_nonfinite: ``(n_units,)`` int64, count of NaN and +-inf activations.
    """

    ranks: np.ndarray
    tie_term: np.ndarray
    dead: np.ndarray
    n_nonfinite: np.ndarray

    @property
    def n_images(self) -> int:
        """Number of images N."""
        return int(self.ranks.shape[0])

    @property
    def n_units(self) -> int:
        """Number of units K."""
        return int(self.ranks.shape[1])

    def doubled(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Doubled ranks ``2 * ranks`` of units ``start:stop`` as uint32, unit-major ``(B, N)``."""
        block = self.ranks[:, start:stop].T
        return np.rint(block * 2.0).astype(np.uint32)


def rank_units(
    activations: np.ndarray,
    *,
    n_threads: int | None = None,
) -> UnitRanks:
    """Rank each unit's activations over the images (average ranks, ties averaged).

    Args:
        activations: ``(n_images, n_units)`` real array; float32 input is ranked in float32.
        n_threads: worker threads over blocks of units (default: the CPUs available).

    Returns:
        :class:`UnitRanks` with ``ranks (n_images, n_units)``, ``tie_term``, ``dead`` and
        ``n_nonfinite`` (each ``(n_units,)``).

    Raises:
        ValueError: activations not 2-D or with no images.

    Example:
        >>> r = rank_units(np.array([[0.0], [2.0], [0.0], [1.0]]))
        >>> r.ranks[:, 0].tolist(), r.tie_term.tolist()
        ([1.5, 4.0, 1.5, 3.0], [6.0])
    """
    a = as_activations(activations)
    n_images, n_units = a.shape
    r2 = np.empty((n_units, n_images), dtype=np.uint32)
    tie_term = np.empty(n_units, dtype=np.float64)
    dead = np.empty(n_units, dtype=bool)
    n_nonfinite = np.empty(n_units, dtype=np.int64)

    def work(bounds: tuple[int, int]) -> None:
        k0, k1 = bounds
        r2[k0:k1], tie_term[k0:k1], dead[k0:k1], n_nonfinite[k0:k1], _ = rank_block(a[:, k0:k1])

    run_blocks(work, unit_blocks(n_units, _RANK_BLOCK), n_threads)
    return UnitRanks(
        ranks=(r2 * 0.5).T,
        tie_term=tie_term,
        dead=dead,
        n_nonfinite=n_nonfinite,
    )


def unit_blocks(n_units: int, block: int) -> list[tuple[int, int]]:
    """Split ``range(n_units)`` into ``[start, stop)`` blocks of at most ``block`` units."""
    return [(k, min(k + block, n_units)) for k in range(0, n_units, block)]


def resolve_threads(n_threads: int | None, n_tasks: int) -> int:
    """Number of worker threads: ``n_threads`` or the CPUs this process may use, at most tasks."""
    if n_threads is None:
        try:
            n_threads = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            n_threads = os.cpu_count() or 1
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1; got {n_threads}")
    return max(1, min(n_threads, n_tasks))


def run_blocks(fn: Callable[[_T], None], tasks: list[_T], n_threads: int | None) -> None:
    """Run ``fn`` on each task, on a thread pool when it helps (numpy releases the GIL)."""
    workers = resolve_threads(n_threads, len(tasks))
    if workers == 1:
        for task in tasks:
            fn(task)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(fn, tasks):
            pass


def rank_block(
    a: np.ndarray, *, with_below: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Rank a block of units.

    Args:
        a: ``(n_images, B)`` float32 or float64 activations (any strides).
        with_below: also return, per image, the number of images with a strictly lower value.

    Returns:
        ``(r2, tie_term, dead, n_nonfinite, below)``: doubled average ranks ``(B, n_images)``
        uint32, ``(B,)`` tie term (int64; float64 beyond 2**21 images), ``(B,)`` bool, ``(B,)``
        int64, and ``(B, n_images)`` uint32 ``below`` or None.
    """
    n_images, n_block = a.shape
    if n_block * n_images >= 2**32:
        raise ValueError(
            f"a block of {n_block:,} units x {n_images:,} images is too large to rank at once; "
            "pass fewer units per block"
        )
    # Copy the (strided) columns row-major first, then transpose the small copy: reading a few
    # columns of a wide array straight into unit-major order misses the TLB on every image. Columns
    # that are already unit-major (a transposed C array) are used as they are (x is never written).
    x = a.T if a.T.flags.c_contiguous else np.ascontiguousarray(np.ascontiguousarray(a).T)
    finite = np.isfinite(x)
    n_nonfinite = n_images - np.count_nonzero(finite, axis=1).astype(np.int64)
    nan = np.isnan(x) if n_nonfinite.any() else None
    del finite
    if x.dtype == np.float64:
        with np.errstate(over="ignore"):
            x32 = x.astype(np.float32)
        if np.array_equal(x32, x, equal_nan=True):
            x = x32
        del x32
    # -0.0 + 0.0 == +0.0: both zeros must tie, but their bit patterns differ.
    x = np.add(x, 0.0, dtype=x.dtype)
    if x.dtype == np.float32 and sys.byteorder == "little":
        # uint64 = (key << 32) | flat position row * N + i, written as two uint32 halves; the
        # position is also the scatter target.
        packed = np.empty((n_block, n_images), dtype=np.uint64)
        halves = packed.view(np.uint32).reshape(n_block, n_images, 2)
        halves[..., 0] = np.arange(n_block * n_images, dtype=np.uint32).reshape(n_block, n_images)
        halves[..., 1] = _sortable_bits(x.view(np.uint32), nan)
        packed.sort(axis=1)
        flat_order = halves[..., 0].astype(np.intp).reshape(-1)
        svals = halves[..., 1]
    else:
        if x.dtype == np.float32:
            x = x.astype(np.float64)
        key = _sortable_bits(x.view(np.uint64), nan)
        order = np.argsort(key, axis=1)
        svals = np.take_along_axis(key, order, axis=1)
        flat_order = (order + np.arange(0, n_block * n_images, n_images)[:, None]).reshape(-1)
        del key, order
    del x

    # Tie groups of the whole block at once: every row starts a new group, so a group's end is
    # the next group's start, across rows too.
    flags = np.empty((n_block, n_images), dtype=bool)
    flags[:, 0] = True
    np.not_equal(svals[:, 1:], svals[:, :-1], out=flags[:, 1:])
    del svals
    flat_flags = flags.reshape(-1)
    group = np.cumsum(flat_flags, dtype=np.int32 if flat_flags.size < 2**31 else np.int64)
    group -= 1
    starts = np.flatnonzero(flat_flags)
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1] = flat_flags.size
    size = ends - starts  # t
    first_group = group[::n_images]
    groups_per_row = np.diff(first_group, append=starts.size)
    # s: images strictly below the group (its start within its row).
    start = starts - np.repeat(np.arange(0, n_block * n_images, n_images), groups_per_row)
    r2_group = 2 * start + size + 1
    # t**3 - t is exact in int64 up to t ~ 2 million; beyond, float64 as scipy computes it.
    t = size if n_images < 2**21 else size.astype(np.float64)
    tie_term = np.add.reduceat((t * t - 1) * t, first_group)
    dead = size[first_group] == n_images
    if not with_below:
        r2 = np.empty((n_block, n_images), dtype=np.uint32)
        np.put(r2, flat_order, np.take(r2_group.astype(np.uint32), group, mode="clip"), mode="clip")
        return r2, tie_term, dead, n_nonfinite, None
    # Both per image: one scatter of (r2, s) pairs as uint64 costs little more than one of uint32
    # (the scatter is bound by its random writes), then each half is copied out contiguous.
    pair = np.empty((r2_group.size, 2), dtype=np.uint32)
    pair[:, 0] = r2_group
    pair[:, 1] = start
    both = np.empty((n_block, n_images), dtype=np.uint64)
    np.put(both, flat_order, np.take(pair.view(np.uint64).reshape(-1), group, mode="clip"), mode="clip")
    halves = both.view(np.uint32).reshape(n_block, n_images, 2)
    return np.ascontiguousarray(halves[..., 0]), tie_term, dead, n_nonfinite, np.ascontiguousarray(halves[..., 1])


def below_from_doubled(r2: np.ndarray) -> np.ndarray:
    """Images strictly below each value, ``s = (r2 - 1 - t) / 2``, from doubled ranks ``(B, N)``."""
    below = np.empty(r2.shape, dtype=np.uint32)
    for u in range(r2.shape[0]):
        keys = r2[u]
        tie = np.take(np.bincount(keys), keys, mode="clip")
        below[u] = (keys.astype(np.int64) - 1 - tie) // 2
    return below


def _sortable_bits(bits: np.ndarray, nan: np.ndarray | None) -> np.ndarray:
    """Map IEEE float bit patterns to unsigned keys with the same order; NaN becomes 0 (lowest)."""
    width = bits.dtype.itemsize * 8
    utype = bits.dtype.type
    sign = bits >> utype(width - 1)
    mask = (sign * utype(2 ** (width - 1) - 1)) | utype(2 ** (width - 1))
    key = bits ^ mask
    if nan is not None:
        key[nan] = 0
    return key


def check_ranks(ranks: UnitRanks, n_images: int, n_units: int) -> None:
    """Raise ValueError unless ``ranks`` describes ``n_units`` units over ``n_images`` images."""
    if not isinstance(ranks, UnitRanks):
        raise TypeError(f"ranks must be a UnitRanks from rank_units(); got {type(ranks).__name__}")
    if ranks.ranks.shape != (n_images, n_units):
        raise ValueError(
            f"ranks has shape {fmt_shape(ranks.ranks.shape)} but activations has shape "
            f"{fmt_shape((n_images, n_units))}; rank the same activations with rank_units()"
        )
