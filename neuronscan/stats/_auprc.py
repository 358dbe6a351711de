"""Average precision (AUPRC) of every unit for every concept, with the rank sums on the way.

Definition (``sklearn.metrics.average_precision_score``): thresholds are the distinct activation
values, highest first, and ``AP = sum_t (R_t - R_{t-1}) P_t``. Only thresholds where recall grows
contribute, i.e. tie groups holding positives. For a positive image ``i`` of concept ``c`` let

    g_i = #{images j : a_j >= a_i} = N - s_i    (s_i: images strictly below i)
    P_i = #{positives j of c : a_j >= a_i}      (true positives at that threshold)

then each positive adds ``(1 / n_c) * P_i / g_i`` and ``AP_c = (1 / n_c) sum_{i in c} P_i / g_i``.

``g`` depends on the unit only; ``P`` needs the positives of ``c`` in descending order. Per unit,
the keys ``s`` of each concept's positives are gathered into a padded row and sorted (ascending
``s`` = ascending activation; equal values share ``s``), all concepts of a row-length bucket at
once with one ``np.sort(axis=-1)``. Short rows sort with SIMD networks, so bucketing rows by
length (at most 12.5% padding, small buckets merged) is ~2.5x faster than one global sort of
``(concept, key)`` pairs. In a sorted row, the element at position ``j`` (0-based) of a run
``[a, a + L)`` of equal keys has ``P = n_c - a = (n_c - j) + (j - a)``: a fixed weight
``n_c - j`` plus a tie correction that is non-zero only inside runs, ``L (L - 1) / 2`` per run.
``1 / g = 1 / (N - s)``.

Pads are ``N + 1 + column``: above every key and distinct from each other, so they sort to the
end of a row, never tie, and carry weight 0.

Rank sums come on the way, exactly (integers): ``r2 = 2 s + t + 1`` with ``t`` the size of the
image's tie group, so ``2 R[k, c] = 2 sum(s) + 2 n_c + sum(t - 1)`` over the positives. Usually
the only large tie group is the bottom one (ReLU zeros, NaN): its run leads every sorted row
(``s = 0``), so its count per row gives both its ``t - 1`` terms and its run correction, and the
few other tied images are handled from their own concept lists (``_UnitTies``). When many images
are tied elsewhere (quantised activations), the doubled ranks are gathered and summed instead and
runs are found in the sorted rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._ranking import UnitRanks, below_from_doubled, rank_units, run_blocks, unit_blocks
from ._validate import as_labels, fmt_shape

__all__ = ["ConceptLayout", "average_precision", "block_rank_sums_and_ap", "prepare_labels"]

# Row lengths above this are m * 2**e with m in 9..16, so padding wastes less than 12.5%.
_MIN_ROW = 16
# Fewest padded elements in a bucket of rows (smaller ones merge into longer rows).
_MIN_BUCKET = 2**15
# Key of the bottom tie group when it is handled from row sums: far below every other key.
_BOTTOM_KEY = 2**30
# Integers below this add exactly in float64.
_FLOAT_EXACT = 2**53
# Units per task of average_precision; temporaries are ~12 bytes per padded positive per bucket.
AP_BLOCK = 8


@dataclass(frozen=True)
class _Bucket:
    """Concepts whose positives are padded to the same row length."""

    concepts: np.ndarray  # (C_b,) int64 concept indices
    index: np.ndarray  # (C_b, L_b) intp: image index of each positive, N + column for pads
    weight: np.ndarray  # (C_b, L_b) float64: n_c - column for positives, 0 for pads
    pad_sum: np.ndarray  # (C_b,) int64: sum of the pad keys of each row
    n_pos: np.ndarray  # (C_b,) int64


@dataclass(frozen=True)
class ConceptLayout:
    """Label matrix regrouped for the AP kernel; build once, reuse for every block of units.

    Attributes:
        n_images: number of images N.
        n_pos: ``(n_concepts,)`` int64 positives per concept.
        scored: ``(n_concepts,)`` bool, ``0 < n_pos < N`` (scores defined).
        pad_width: longest padded row (pads use keys ``N + 1 .. N + pad_width``).
        image_indptr, image_concepts: the labels as CSR (each image's concepts), for the
            sparse tie corrections.
    """

    n_images: int
    n_pos: np.ndarray
    scored: np.ndarray
    pad_width: int
    buckets: tuple[_Bucket, ...]
    image_indptr: np.ndarray
    image_concepts: np.ndarray

    @property
    def n_concepts(self) -> int:
        """Number of concepts C."""
        return int(self.n_pos.shape[0])

    @classmethod
    def build(cls, labels: sp.csc_array) -> ConceptLayout:
        """Group the concepts of a canonical CSC label matrix (see ``as_labels``) by row length."""
        n_images, n_concepts = labels.shape
        indptr = labels.indptr.astype(np.int64)
        n_pos = np.diff(indptr)
        scored = (n_pos > 0) & (n_pos < n_images)
        length = _merge_small(_row_length(n_pos), scored)
        buckets = []
        for row_len in np.unique(length[scored]):
            concepts = np.flatnonzero(scored & (length == row_len))
            buckets.append(_make_bucket(labels, concepts, int(row_len), n_images))
        pad_width = int(length[scored].max()) if scored.any() else 1
        if n_images + pad_width >= 2**30:
            raise ValueError(f"at most 2**29 images can be scored at once; got {n_images:,}")
        by_image = labels.tocsr()
        by_image.sort_indices()
        return cls(
            n_images,
            n_pos,
            scored,
            pad_width,
            tuple(buckets),
            by_image.indptr.astype(np.int64),
            by_image.indices.astype(np.int64),
        )

    @property
    def n_positives(self) -> int:
        """Total number of positive (image, concept) labels."""
        return int(self.image_concepts.size)


def _row_length(n_pos: np.ndarray) -> np.ndarray:
    """Padded row length per concept: 16 up to 16 positives, else the next ``m * 2**e``, m 9..16."""
    n = np.maximum(np.asarray(n_pos, dtype=np.int64), 1)
    length = np.full(n.shape, _MIN_ROW, dtype=np.int64)
    big = n > _MIN_ROW
    # 2**(e + 3) < n <= 2**(e + 4)  =>  e = bit_length(n - 1) - 4
    e = np.frexp((n[big] - 1).astype(np.float64))[1].astype(np.int64) - 4
    step = np.left_shift(np.int64(1), e)
    length[big] = -(-n[big] // step) * step
    return length


def _merge_small(length: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Pad the concepts of sparsely used row lengths up to the next length in use.

    Each bucket costs a dozen numpy calls per unit, so a bucket of a few short rows costs more
    in overhead than its padding would: a length whose rows hold fewer than ``_MIN_BUCKET``
    elements joins the next longer one (the longest is kept).
    """
    length = length.copy()
    lengths, counts = np.unique(length[scored], return_counts=True)
    for i in range(lengths.size - 1):
        if counts[i] * lengths[i] < _MIN_BUCKET:
            length[scored & (length == lengths[i])] = lengths[i + 1]
            counts[i + 1] += counts[i]
    return length


def _make_bucket(
    labels: sp.csc_array, concepts: np.ndarray, row_len: int, n_images: int
) -> _Bucket:
    """Build the padded gather index and weights for the given concepts."""
    starts = labels.indptr[concepts].astype(np.int64)
    n_pos = labels.indptr[concepts + 1].astype(np.int64) - starts
    n_rows = concepts.size
    cols = np.arange(row_len, dtype=np.int64)
    index = np.broadcast_to(n_images + cols, (n_rows, row_len)).copy()
    weight = np.zeros((n_rows, row_len), dtype=np.float64)
    # Flat position of every positive: row * row_len + (its offset within the concept).
    row_of = np.repeat(np.arange(n_rows, dtype=np.int64), n_pos)
    offset = np.arange(row_of.size, dtype=np.int64) - np.repeat(np.cumsum(n_pos) - n_pos, n_pos)
    src = np.repeat(starts, n_pos) + offset
    flat = row_of * row_len + offset
    index.ravel()[flat] = labels.indices[src]
    weight.ravel()[flat] = (n_pos[row_of] - offset).astype(np.float64)
    valid = cols[None, :] < n_pos[:, None]
    pad_key = n_images + 1 + cols
    pad_sum = np.where(valid, 0, pad_key[None, :]).sum(axis=1)
    return _Bucket(concepts, index.astype(np.intp), weight, pad_sum, n_pos)


def block_rank_sums_and_ap(
    r2: np.ndarray, below: np.ndarray, layout: ConceptLayout
) -> tuple[np.ndarray, np.ndarray]:
    """Doubled rank sums and average precision of a block of units for every scored concept.

    Args:
        r2: ``(B, N)`` uint32 doubled average ranks of B units (see ``rank_block``).
        below: ``(B, N)`` uint32 images strictly below each image's value (``s = N - g``).
        layout: the label layout from :meth:`ConceptLayout.build`.

    Returns:
        ``(rank_sum2, ap)``: ``(B, n_concepts)`` int64 ``2 * sum of ranks of the positives`` and
        float64 average precision; both 0 for concepts that are not scored (caller masks them).
    """
    n_block, n_images = below.shape
    n_pad = layout.pad_width
    # Sort keys: s for images, N + 1 + column for pads (above every s, distinct, and N - key
    # non-zero so that weight 0 over it is 0).
    ext = np.empty(n_images + n_pad, dtype=np.int32)
    ext[n_images:] = n_images + 1 + np.arange(n_pad, dtype=np.int32)
    buffers = [
        (np.empty(b.index.shape, dtype=np.int32), np.empty(b.index.shape, dtype=np.float64))
        for b in layout.buckets
    ]
    rank_sum2 = np.zeros((n_block, layout.n_concepts), dtype=np.int64)
    ap = np.zeros((n_block, layout.n_concepts), dtype=np.float64)
    for u in range(n_block):
        ties = _UnitTies.find(r2[u], below[u], layout)
        # With sparse ties the bottom group's positives are counted from the row sums: their key
        # -_BOTTOM_KEY (still the lowest, all equal) adds -_BOTTOM_KEY per positive to a sum of
        # the other keys that stays below _BOTTOM_KEY.
        bottom_key = ties.sparse and ties.bottom > 1
        ext[:n_images] = below[u]
        if bottom_key:
            np.copyto(ext[:n_images], -_BOTTOM_KEY, where=below[u] == 0)
        if not ties.sparse:
            ext_r2 = np.zeros(n_images + n_pad, dtype=np.int32)
            ext_r2[:n_images] = r2[u]
        for b, (keys, terms) in zip(layout.buckets, buffers):
            if not ties.sparse:
                np.take(ext_r2, b.index, mode="clip", out=keys)
                rank_sum2[u, b.concepts] = keys.sum(axis=-1, dtype=np.int64)
            np.take(ext, b.index, mode="clip", out=keys)
            keys.sort(axis=-1)
            # g = N - s of every element, exact integers in float64 (pads: N - key < 0, with weight 0).
            np.subtract(float(n_images), keys, out=terms)
            if ties.sparse:
                row_len = b.index.shape[1]
                if row_len * (_BOTTOM_KEY + 2 * n_images) < _FLOAT_EXACT:
                    # Integers below 2**53 throughout, so these float64 sums are exact:
                    # sum(s) = L N - sum(N - s).
                    key_sum = (row_len * float(n_images) - terms.sum(axis=-1)).astype(np.int64)
                else:
                    key_sum = keys.sum(axis=-1, dtype=np.int64)
            # sum_j (n_c - j) / g_j with g = N - s; pads have weight 0.
            np.divide(b.weight, terms, out=terms)
            total = terms.sum(axis=-1)
            if ties.sparse:
                # r2 = 2 s + t + 1 = 2 s + 2 + (t - 1); t - 1 > 0 only in tie groups: the
                # bottom group (s = 0, its run leads every row) here, the others below.
                below_sum = key_sum - b.pad_sum
                if bottom_key:
                    if b.index.shape[1] * n_images < _BOTTOM_KEY:
                        n_bottom = -(below_sum // _BOTTOM_KEY)
                    else:
                        n_bottom = np.count_nonzero(keys == -_BOTTOM_KEY, axis=-1)
                    below_sum += _BOTTOM_KEY * n_bottom
                    # The bottom run has P = n_c and g = N; the loop above gave its positions
                    # weights n_c - j over N + _BOTTOM_KEY instead.
                    nb = n_bottom.astype(np.float64)
                    weights = nb * b.n_pos - nb * (nb - 1) * 0.5
                    total += nb * b.n_pos / n_images - weights / (n_images + _BOTTOM_KEY)
                    rank_sum2[u, b.concepts] = (ties.bottom - 1) * n_bottom
                else:
                    rank_sum2[u, b.concepts] = 0
                rank_sum2[u, b.concepts] += 2 * below_sum + 2 * b.n_pos
            else:
                total += _run_correction(keys, n_images)
            ap[u, b.concepts] = total
        if ties.sparse:
            rank_sum2[u] += ties.rank_sum_correction
            ap[u] += ties.ap_correction
    ap[:, layout.scored] /= layout.n_pos[layout.scored]
    return rank_sum2, ap


@dataclass(frozen=True)
class _UnitTies:
    """A unit's tie groups, and their corrections when they are few enough to handle sparsely.

    ``sparse`` when the images in tie groups other than the bottom one (``s > 0``, ``t > 1``)
    carry at most 1/8 of the positive labels: then those groups' contributions are computed from
    their images' concepts directly, and the bottom group's from its run at the start of each
    sorted row. Otherwise the kernel gathers the doubled ranks and finds runs in sorted rows.
    """

    sparse: bool
    bottom: int  # size of the tie group with s = 0 (the lowest value)
    rank_sum_correction: np.ndarray | None  # (n_concepts,) int64: sum over positives of t - 1
    ap_correction: np.ndarray | None  # (n_concepts,) float64: sum over runs L (L - 1) / 2 / g

    @classmethod
    def find(cls, r2: np.ndarray, below: np.ndarray, layout: ConceptLayout) -> _UnitTies:
        """Inspect one unit's ``r2 (N,)`` and ``below (N,)``."""
        n_images = below.size
        s = below.view(np.int32)
        size = r2.view(np.int32) - 2 * s - 1  # t of each image's group (r2 = 2 s + t + 1)
        bottom = int(r2.min()) - 1  # the lowest value's group has s = 0
        tied = np.flatnonzero((size > 1) & (s > 0))
        starts = layout.image_indptr[tied]
        lengths = layout.image_indptr[tied + 1] - starts
        n_entries = int(lengths.sum())
        if n_entries * 8 > layout.n_positives:
            return cls(False, bottom, None, None)
        n_concepts = layout.n_concepts
        rank_sum_correction = np.zeros(n_concepts, dtype=np.int64)
        ap_correction = np.zeros(n_concepts, dtype=np.float64)
        if n_entries:
            offsets = np.cumsum(lengths) - lengths
            within = np.arange(n_entries, dtype=np.int64) - np.repeat(offsets, lengths)
            concept = layout.image_concepts[np.repeat(starts, lengths) + within]
            group = np.repeat(below[tied].astype(np.int64), lengths)  # s identifies the group
            extra = np.repeat(size[tied].astype(np.int64) - 1, lengths)
            extra_sum = np.bincount(concept, weights=extra, minlength=n_concepts)
            rank_sum_correction += extra_sum.astype(np.int64)  # integers < 2**53: exact
            # Runs: positives of one concept in one tie group.
            pair, run = np.unique(group * n_concepts + concept, return_counts=True)
            long = run > 1
            run_group, run_concept = np.divmod(pair[long], n_concepts)
            run = run[long].astype(np.float64)
            ap_correction += np.bincount(
                run_concept,
                weights=run * (run - 1) * 0.5 / (n_images - run_group),
                minlength=n_concepts,
            )
        return cls(True, bottom, rank_sum_correction, ap_correction)


def _run_correction(keys: np.ndarray, n_images: int) -> np.ndarray:
    """Per row, the sum over runs of equal keys ``s`` of ``L (L - 1) / 2 / (N - s)``; ``(C_b,)``.

    A run of length L starting at ``a`` needs ``j - a`` added to the weight ``n_c - j`` of each of
    its elements, ``L (L - 1) / 2`` in all, each divided by the run's ``g = N - s``. Runs are found
    with boolean passes only, so the cost does not grow with the number of tied elements.
    """
    n_rows, row_len = keys.shape
    out = np.zeros(n_rows, dtype=np.float64)
    if row_len < 2:
        return out
    # tied[j]: element j + 1 equals element j. The last column is cleared, so no run of tied
    # positions continues from one row into the next.
    flat_keys = keys.reshape(-1)
    flat = np.empty(flat_keys.size, dtype=bool)
    np.equal(flat_keys[1:], flat_keys[:-1], out=flat[:-1])
    flat.reshape(n_rows, row_len)[:, -1] = False
    first = flat.copy()
    first[1:] &= ~flat[:-1]
    starts = np.flatnonzero(first)
    if starts.size == 0:
        return out
    flat[:-1] &= ~flat[1:]  # now: the last tied position of each run
    ends = np.flatnonzero(flat)
    pairs = (ends - starts + 1).astype(np.float64)  # L - 1 tied elements per run
    weight = pairs * (pairs + 1) * 0.5 / (n_images - flat_keys[starts].astype(np.float64))
    out += np.bincount(starts // row_len, weights=weight, minlength=n_rows)
    return out


def average_precision(
    ranks: UnitRanks | np.ndarray,
    labels: object,
    *,
    n_threads: int | None = None,
) -> np.ndarray:
    """Average precision of every unit for every concept.

    Args:
        ranks: a :class:`UnitRanks` from :func:`rank_units`, or raw activations
            ``(n_images, n_units)`` (ranked here).
        labels: ``(n_images, n_concepts)`` 0/1 scipy.sparse matrix or bool ndarray, or a
            :class:`ConceptLayout` from :func:`prepare_labels`.
        n_threads: worker threads over blocks of units (default: the CPUs available).

    Returns:
        ``(n_units, n_concepts)`` float64, equal to
        ``sklearn.metrics.average_precision_score(labels[:, c], activations[:, k])``;
        NaN for concepts with no positives or no negatives.

    Raises:
        ValueError: shapes disagree.

    Example:
        >>> average_precision(np.array([[0.9], [0.1], [0.5]]), np.array([[1], [0], [1]], bool))
        array([[1.]])
    """
    if not isinstance(ranks, UnitRanks):
        ranks = rank_units(ranks, n_threads=n_threads)
    layout = prepare_labels(labels, ranks.n_images)
    out = np.full((ranks.n_units, layout.n_concepts), np.nan)

    def work(bounds: tuple[int, int]) -> None:
        k0, k1 = bounds
        r2 = ranks.doubled(k0, k1)
        _, ap = block_rank_sums_and_ap(r2, below_from_doubled(r2), layout)
        out[k0:k1, layout.scored] = ap[:, layout.scored]

    run_blocks(work, unit_blocks(ranks.n_units, AP_BLOCK), n_threads)
    return out


def prepare_labels(labels: object, n_images: int | None = None) -> ConceptLayout:
    """Validate labels once and lay them out for the kernel, to reuse across blocks of units.

    :func:`score_block` and :func:`average_precision` accept the result in place of ``labels``;
    a score stage that runs many shards of units over the same labels builds it once.

    Args:
        labels: ``(n_images, n_concepts)`` 0/1 scipy.sparse matrix or bool ndarray.
        n_images: expected number of rows (checked when given).

    Returns:
        A :class:`ConceptLayout` (read-only; safe to share between threads and processes).

    Raises:
        ValueError: wrong number of rows, not 2-D, or values other than 0/1.

    Example:
        >>> layout = prepare_labels(np.eye(4, 2, dtype=bool))
        >>> layout.n_images, layout.n_concepts, layout.n_pos.tolist()
        (4, 2, [1, 1])
    """
    if isinstance(labels, ConceptLayout):
        layout = labels
    else:
        shape = np.shape(labels)
        rows = n_images if n_images is not None else (shape[0] if shape else 0)
        layout = ConceptLayout.build(as_labels(labels, int(rows)))
    if n_images is not None and layout.n_images != n_images:
        raise ValueError(
            f"labels have {layout.n_images:,} rows but activations has {n_images:,} images "
            f"(labels shape {fmt_shape((layout.n_images, layout.n_concepts))})"
        )
    return layout
