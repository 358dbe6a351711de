"""Label-free unit labels from CLIP embeddings: soft-WPMI (CLIP-Dissect) and top-image cosine.

Inputs are the layer's activations ``A (n_images, n_units)``, CLIP image embeddings
``E (n_images, D)`` of the same images and text embeddings ``T (n_concepts, D)`` of the concept
vocabulary. Rows of ``E`` and ``T`` are L2-normalised here (a no-op for CLIP outputs, which are
stored normalised).

Top images. ``B_k`` is the ``top_k`` images with the highest activation of unit ``k``, ordered by
activation (descending), ties broken by image index (lower first), so the set and its order are
deterministic even where ReLU makes many activations equal. When ``top_k > n_images`` it is
clamped to ``n_images`` with a ``UserWarning``: every image is then in ``B_k`` and rank ``j``
keeps the weight it has in the ``top_k`` schedule below.

Soft-WPMI (Oikarinen & Weng 2023)::

    P'[i, c]       = softmax_c(alpha * E[i] . T[c])                 image i's concept distribution
    p_j            = linspace(weight_start, weight_end, top_k)[j]   weight of the rank-j image
    log p(c | B_k) = sum_j log(1 + p_j (P'[B_k[j], c] - 1))
    log p(c)       = log mean_k exp(log p(c | B_k))                 over the layer's units
    score[k, c]    = log p(c | B_k) - lam * log p(c)

``p_j`` runs from ``weight_start`` to ``weight_end`` inclusive (CLIP-Dissect's reference code
stops one step short of ``p_end``). ``log p(c)`` is a mean over *all units passed in*: pass every
unit of a layer at once, or compute :func:`soft_wpmi_log_conditional` per shard of units and
apply the log-mean-exp over the gathered ``(n_units, n_concepts)`` matrix.

How it is computed. ``P'`` is a property of the image, not of the unit, so each image that is in
some unit's ``B_k`` gets its row of ``P'`` once, however many units share it: the images are taken
in fixed ranges of image index (``_BLOCK_ELEMENTS // n_concepts`` images each, 6,710 at 20,000
concepts), the range's top images are multiplied with ``T`` in one BLAS product and exponentiated
in place, and every (unit, rank) pair whose image lies in the range gathers that row and adds its
terms to the unit's row of the result. The elementwise work runs on ``OMP_NUM_THREADS`` threads
(else one per CPU; numpy and torch release the GIL), the product on the BLAS's own threads. The row
gather and the logarithms, most of the time, go through torch's vectorised CPU kernels when torch is
importable (numpy's ``log1p`` is a scalar libm call, ~11 ns an element on AVX2; torch's ~2-3 ns), with
torch's intra-op threads held at 1 meanwhile; without torch, numpy computes the same values. Top images are
found from a threshold read off a sample of the images (exact, with the tie rule above).

``precision="float64"`` (the default) evaluates ``log1p(p_j (P' - 1))`` in float64, as the formula
reads, and equals it written element by element to ~1e-13. ``precision="float32"`` is the fast
path: the product and the logarithms in float32, each term as

    log(1 + p_j (P' - 1)) = log(1 - p_j) + log1p(r_j P'),    r_j = p_j / (1 - p_j)

so the large per-rank constant ``sum_j log(1 - p_j)`` is added once in float64 and only the small,
well-conditioned ``log1p(r_j P')`` is rounded to float32 (sums across image ranges in float64).
Its error is the float32 cosine's (~1e-7, times ``alpha``, on terms that grow with ``P'``): at 100
top images ``soft_wpmi`` is within 2.5e-7 of float64 with 20,000 concepts and ~2e-5 with a few hundred
(tested bound 1e-4), so the argmax label can differ only where float64's two best concepts are that
close (``benchmarks/RESULTS.md``: equal labels on 2,048 of 2,048 units at 20,000 concepts).

Both paths are deterministic: a repeated call gives the same bits. A unit's values depend on the
other units passed with it only through the BLAS, whose rounding of a row can depend on how many
rows it multiplies at once, so shards of a layer agree with the whole layer to ~1e-13 (float64) or
~1e-6 (float32).

Calling per shard of units repeats the product for every image in more than one shard's top
images; :func:`top_image_indices` and :func:`soft_wpmi_log_conditional_from_top` split the two
steps, so the top images of every shard and layer of a run can be gathered and scored in one call.

Top-mean cosine: the cosine between the normalised mean embedding of ``B_k`` and each ``T[c]``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Literal

import numpy as np

__all__ = [
    "soft_wpmi",
    "soft_wpmi_log_conditional",
    "soft_wpmi_log_conditional_from_top",
    "top_image_indices",
    "top_mean_cosine",
]

Precision = Literal["float64", "float32"]
_PRECISIONS = ("float64", "float32")

# Elements of one image range's similarity buffer: 2^27 (512 MiB in float32, 1 GiB in float64);
# a range is _BLOCK_ELEMENTS // n_concepts images (6,710 at 20,000 concepts). Fixed by the number of
# concepts alone, so a shard of units meets the same ranges as the whole layer.
_BLOCK_ELEMENTS = 1 << 27
# Elements of one gathered (units, ranks, concepts) chunk: 8 MiB in float32, kept in cache.
_GATHER_ELEMENTS = 1 << 21
# Elements of the rows _exp_rows takes at a time (its max, subtract, exp and sum passes): 512 KiB of float32,
# within a core's L2 (50,000 images x 512 units x 20,000 concepts: 2 MiB of rows 6.8 s, 128 KiB to 1 MiB 5.4 s).
_EXP_ELEMENTS = 1 << 17
# Elements of top_mean_cosine's gathered (units, top_k, D) block: 64 MiB of float64.
_MEAN_ELEMENTS = 1 << 23


def soft_wpmi(
    activations: np.ndarray,
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    *,
    top_k: int = 100,
    alpha: float = 10.0,
    lam: float = 1.0,
    weight_start: float = 0.998,
    weight_end: float = 0.97,
    precision: Precision = "float64",
) -> np.ndarray:
    """Soft weighted pointwise mutual information of every unit with every concept.

    Args:
        activations: ``(n_images, n_units)`` one statistic per image and unit; must be finite.
        image_embeddings: ``(n_images, D)`` CLIP image embeddings, row ``i`` for image ``i``.
        text_embeddings: ``(n_concepts, D)`` CLIP text embeddings of the vocabulary.
        top_k: number of top-activating images per unit (clamped to ``n_images`` with a warning).
        alpha: softmax temperature on cosine similarities (CLIP-Dissect: 10).
        lam: weight of the concept prior ``log p(c)`` (``lam=0`` gives ``log p(c | B_k)``).
        weight_start: weight of the top image, in ``[0, 1)``.
        weight_end: weight of the ``top_k``-th image, in ``[0, 1)``.
        precision: ``"float64"`` (the formula to ~1e-13) or ``"float32"`` (the fast path:
            similarities and logarithms in float32, constants, sums across image ranges and the
            prior in float64; 2.5e-7 to ~2e-5 from float64, see the module docstring).

    Returns:
        ``(n_units, n_concepts)`` float64 scores; higher means the concept describes the unit's
        top images better than it describes the layer's units on average.

    Raises:
        ValueError: on mismatched shapes, non-finite values, zero embedding rows, ``top_k < 1``,
            weights outside ``[0, 1)`` or an unknown ``precision``.

    Example:
        >>> import numpy as np
        >>> e = np.eye(3)
        >>> acts = np.array([[5.0, 0.0], [0.0, 5.0], [0.0, 0.0]])
        >>> soft_wpmi(acts, e, e, top_k=1).argmax(axis=1).tolist()
        [0, 1]
    """
    if not np.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam}")
    log_cond = _log_conditional(
        activations, image_embeddings, text_embeddings, top_k, alpha, weight_start, weight_end,
        precision,
    )
    if log_cond.shape[0] == 0:
        return log_cond
    return log_cond - float(lam) * _log_mean_exp(log_cond, axis=0)[None, :]


def soft_wpmi_log_conditional(
    activations: np.ndarray,
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    *,
    top_k: int = 100,
    alpha: float = 10.0,
    weight_start: float = 0.998,
    weight_end: float = 0.97,
    precision: Precision = "float64",
) -> np.ndarray:
    """``log p(c | B_k)`` of soft-WPMI for every unit and concept (no prior term).

    Units are independent here, so a layer can be processed in shards of units; the prior
    ``log p(c)`` is then the log-mean-exp over the gathered rows (see :func:`soft_wpmi`).

    Args:
        activations: ``(n_images, n_units)``, finite.
        image_embeddings: ``(n_images, D)``.
        text_embeddings: ``(n_concepts, D)``.
        top_k, alpha, weight_start, weight_end, precision: as in :func:`soft_wpmi`.

    Returns:
        ``(n_units, n_concepts)`` float64, every entry ``<= 0``.

    Raises:
        ValueError: as :func:`soft_wpmi`.

    Example:
        >>> import numpy as np
        >>> e = np.eye(2)
        >>> soft_wpmi_log_conditional(np.array([[1.0], [0.0]]), e, e, top_k=1).shape
        (1, 2)
    """
    return _log_conditional(
        activations, image_embeddings, text_embeddings, top_k, alpha, weight_start, weight_end,
        precision,
    )


def _log_conditional(
    activations: np.ndarray,
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    top_k: int,
    alpha: float,
    weight_start: float,
    weight_end: float,
    precision: str,
) -> np.ndarray:
    """Shared body of both public entries; equal call depth keeps warnings at the caller."""
    dtype = _dtype(precision)
    acts, emb, txt = _validate(activations, image_embeddings, text_embeddings, dtype)
    _check_schedule(alpha, weight_start, weight_end)
    k = _effective_top_k(top_k, acts.shape[0], stacklevel=4)
    weights = _weights(k, int(top_k), weight_start, weight_end)
    n_units, n_concepts = acts.shape[1], txt.shape[0]
    if n_units == 0:
        return np.empty((n_units, n_concepts), dtype=np.float64)
    top = _top_indices(acts, k)  # (n_units, k)
    return _sum_log_terms(top, emb, txt, weights, float(alpha))


def top_image_indices(activations: np.ndarray, *, top_k: int = 100) -> np.ndarray:
    """Each unit's top images ``B_k``, as soft-WPMI and :func:`top_mean_cosine` choose them.

    Args:
        activations: ``(n_images, n_units)``, finite.
        top_k: images per unit (clamped to ``n_images`` with a warning).

    Returns:
        ``(n_units, min(top_k, n_images))`` int64: row ``u`` holds unit ``u``'s images by
        activation, highest first, ties by image index (lower first).

    Raises:
        ValueError: on a non-2-D or empty ``activations``, non-finite values or ``top_k < 1``.

    Example:
        >>> import numpy as np
        >>> top_image_indices(np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0]]), top_k=2).tolist()
        [[1, 2], [0, 1]]
    """
    acts = np.asarray(activations)
    if acts.dtype not in (np.float32, np.float64):
        acts = acts.astype(np.float64)
    _check_2d(acts, "activations", "(n_images, n_units)")
    if acts.shape[0] == 0:
        raise ValueError(f"activations has no images (shape {acts.shape})")
    _check_finite(acts, "activations")
    k = _effective_top_k(top_k, acts.shape[0], stacklevel=3)
    if acts.shape[1] == 0:
        return np.empty((0, k), dtype=np.int64)
    return _top_indices(acts, k)


def soft_wpmi_log_conditional_from_top(
    top: np.ndarray,
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    *,
    top_k: int | None = None,
    alpha: float = 10.0,
    weight_start: float = 0.998,
    weight_end: float = 0.97,
    precision: Precision = "float64",
) -> np.ndarray:
    """``log p(c | B_k)`` from top images chosen beforehand (:func:`top_image_indices`).

    Equal to :func:`soft_wpmi_log_conditional` on the activations ``top`` came from, in either
    precision. The image x concept softmax is a property of the images, so the cheapest call is one
    for everything that shares them: stack the ``top`` rows of every shard and every layer of a run
    and split the result, and each top image's softmax row is computed once, not once per shard.

    Args:
        top: ``(n_units, k)`` integer rows of ``image_embeddings``, each unit's top images in rank
            order (rank ``j`` gets weight ``p_j``).
        image_embeddings: ``(n_images, D)``.
        text_embeddings: ``(n_concepts, D)``.
        top_k: length of the weight schedule; default ``k``. ``top_image_indices`` clamps ``k`` to
            ``n_images``: pass the ``top_k`` it was given to keep the clamped ranks' weights.
        alpha, weight_start, weight_end, precision: as in :func:`soft_wpmi`.

    Returns:
        ``(n_units, n_concepts)`` float64, every entry ``<= 0``.

    Raises:
        ValueError: as :func:`soft_wpmi`, and on a ``top`` that is not 2-D integers in
            ``[0, n_images)``, is empty with ``n_units > 0``, or is longer than ``top_k``.

    Example:
        >>> import numpy as np
        >>> acts, e = np.array([[5.0, 0.0], [0.0, 5.0]]), np.eye(2)
        >>> top = top_image_indices(acts, top_k=1)
        >>> bool(np.allclose(soft_wpmi_log_conditional_from_top(top, e, e),
        ...                  soft_wpmi_log_conditional(acts, e, e, top_k=1)))
        True
    """
    dtype = _dtype(precision)
    idx = np.asarray(top)
    _check_2d(idx, "top", "(n_units, k)")
    if not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
        raise ValueError(f"top must hold integer image indices, got dtype {idx.dtype}")
    emb = np.asarray(image_embeddings)
    txt = np.asarray(text_embeddings)
    _check_2d(emb, "image_embeddings", "(n_images, D)")
    _check_2d(txt, "text_embeddings", "(n_concepts, D)")
    _check_dims(emb, txt)
    if emb.shape[0] == 0:
        raise ValueError(f"image_embeddings has no images (shape {emb.shape})")
    if txt.shape[0] == 0:
        raise ValueError(f"text_embeddings has no concepts (shape {txt.shape})")
    n_units, k = idx.shape
    if n_units and k == 0:
        raise ValueError(f"top has {n_units:,} units but no images per unit (shape {idx.shape})")
    if idx.size and (idx.min() < 0 or idx.max() >= emb.shape[0]):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise ValueError(
            f"top holds image index {bad:,}, outside the {emb.shape[0]:,} rows of image_embeddings"
        )
    schedule = k if top_k is None else top_k
    if isinstance(schedule, bool) or not isinstance(schedule, (int, np.integer)) or schedule < k:
        raise ValueError(f"top_k must be an integer >= k = {k} (top's width), got {top_k!r}")
    _check_schedule(alpha, weight_start, weight_end)
    emb, txt = _prepare_embeddings(emb, txt, dtype)
    if n_units == 0:
        return np.empty((0, txt.shape[0]), dtype=np.float64)
    weights = _weights(k, int(schedule), weight_start, weight_end)
    return _sum_log_terms(idx.astype(np.int64, copy=False), emb, txt, weights, float(alpha))


def _dtype(precision: str) -> type:
    if isinstance(precision, str) and precision in _PRECISIONS:
        return np.float64 if precision == "float64" else np.float32
    raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")


def _check_schedule(alpha: float, weight_start: float, weight_end: float) -> None:
    if not np.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha}")
    for name, w in (("weight_start", weight_start), ("weight_end", weight_end)):
        # p_j = 1 would make log(1 + p_j (P' - 1)) = log P', which underflows to -inf.
        if not 0.0 <= w < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {w}")


def _weights(k: int, top_k: int, weight_start: float, weight_end: float) -> np.ndarray:
    """The first ``k`` weights of the ``top_k``-rank schedule (a clamped k keeps its ranks')."""
    ranks = np.arange(k, dtype=np.float64)
    return weight_start + (weight_end - weight_start) * ranks / max(top_k - 1, 1)


def _sum_log_terms(
    top: np.ndarray, emb: np.ndarray, txt: np.ndarray, weights: np.ndarray, alpha: float
) -> np.ndarray:
    """``sum_j log(1 + w_j (P'[top[u, j], c] - 1))`` for every unit ``u`` and concept ``c``.

    ``emb`` and ``txt`` are normalised and of the working dtype (float32 or float64); the result
    is float64. See the module docstring for the evaluation order.
    """
    n_units, k = top.shape
    n_images, n_concepts = emb.shape[0], txt.shape[0]
    exact = emb.dtype == np.float64
    # float32: alpha folded into T, so the product is alpha * E T^T directly.
    txt_t = txt.T if exact else (txt * np.float32(alpha)).T
    # float32: log(1 + w (P - 1)) = log(1 - w) + log(1 + r P), the constant summed once here.
    ratio = weights / (1.0 - weights)
    acc = np.full((n_units, n_concepts), 0.0 if exact else np.log1p(-weights).sum())

    # Every (unit, rank) pair by image; pair id = unit * k + rank, so a stable sort by image keeps
    # each image's pairs in (unit, rank) order.
    flat = top.ravel()
    by_image = np.argsort(flat, kind="stable")
    image_of = flat[by_image]
    rows_per_range = max(1, _BLOCK_ELEMENTS // n_concepts)
    bounds = np.searchsorted(image_of, np.arange(0, n_images + rows_per_range, rows_per_range))
    ranges = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    largest = max(np.unique(image_of[lo:hi]).size for lo, hi in ranges)
    sims = np.empty((largest, n_concepts), dtype=emb.dtype)
    # At least k rows: a unit's pairs in one range (at most k) always fit one chunk.
    gather_rows = min(max(_GATHER_ELEMENTS // n_concepts, k), n_units * k)
    n_threads = _n_threads()
    local_buf = threading.local()

    def buffer() -> np.ndarray:
        buf = getattr(local_buf, "g", None)
        if buf is None:
            buf = local_buf.g = np.empty((gather_rows, n_concepts), dtype=emb.dtype)
        return buf

    with ThreadPoolExecutor(n_threads) as pool, _torch_single_threaded():
        for lo, hi in ranges:
            images, rows = np.unique(image_of[lo:hi], return_inverse=True)
            block = sims[: images.size]
            np.matmul(emb[images], txt_t, out=block)  # BLAS, multi-threaded
            # Unnormalised softmax in place, exp(alpha s - max_c alpha s); z is its row sum.
            step = max(1, -(-images.size // n_threads))
            exp_rows = partial(_exp_rows, block, step, alpha if exact else 1.0)
            z = np.concatenate(list(pool.map(exp_rows, range(0, images.size, step))))
            pair = by_image[lo:hi]
            order = np.argsort(pair)  # (unit, rank) order within the range
            pair, rows = pair[order], rows[order]
            unit, rank = pair // k, pair % k
            if exact:
                first, second = z[rows], weights[rank]  # log1p(w (e / z - 1))
            else:
                first, second = (ratio[rank] / z[rows]).astype(np.float32), None  # log1p(r e / z)
            counts = np.bincount(unit, minlength=n_units)
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            # Units with the same number m of pairs here make one dense (units, m, C) gather; each
            # unit is in exactly one chunk, so chunks write disjoint rows of acc.
            tasks = []
            for m in np.unique(counts[counts > 0]):
                units_m = np.flatnonzero(counts == m)
                per_chunk = max(1, gather_rows // int(m))
                for s in range(0, units_m.size, per_chunk):
                    us = units_m[s : s + per_chunk]
                    tasks.append((us, (starts[us][:, None] + np.arange(m)).ravel()))
            chunk = partial(_pair_chunk, block, rows, first, second, acc, buffer)
            for _ in pool.map(chunk, tasks):
                pass
    return acc


def _pair_chunk(
    block: np.ndarray,
    rows: np.ndarray,
    first: np.ndarray,
    second: np.ndarray | None,
    acc: np.ndarray,
    buffer,
    task: tuple[np.ndarray, np.ndarray],
) -> None:
    """Add one chunk's ``sum_j`` of terms to ``acc[units]``: pairs ``idx`` of ``units``, m each.

    ``block`` holds ``exp(alpha s - max)`` of the range's images; ``second is None`` (float32):
    the term is ``log1p(first * e)`` with ``first = r_j / z_i``; else (float64) it is
    ``log1p(second * (e / first - 1))`` with ``first = z_i`` and ``second = w_j``.
    """
    units, idx = task
    g = buffer()[: idx.size]
    torch = _torch()
    if torch is not None:  # ~2.5x numpy's take on rows of 20,000 concepts
        torch.index_select(torch.from_numpy(block), 0, torch.from_numpy(rows[idx]), out=torch.from_numpy(g))
    else:
        np.take(block, rows[idx], axis=0, out=g)
    if second is None:
        g *= first[idx][:, None]
    else:
        g /= first[idx][:, None]
        g -= 1.0
        g *= second[idx][:, None]
    _log1p_inplace(g)
    part = g if g.shape[0] == units.size else g.reshape(units.size, -1, g.shape[1]).sum(axis=1)
    for u, row in zip(units.tolist(), part):  # row by row: fancy-index += is slower
        acc[u] += row


def _log1p_inplace(x: np.ndarray) -> None:
    """``np.log1p(x, out=x)``, through torch's vectorised kernel when torch is importable.

    numpy's ``log1p`` is a scalar libm call per element (~11 ns on an AVX2 core, float32 or float64);
    torch's is SIMD (Sleef, ~1 ULP in float32; ~2 ns per element), and the logarithms are most of
    soft-WPMI's time. Runs on the calling thread only (the caller's pool is the parallelism).
    """
    torch = _torch()
    if torch is None:
        np.log1p(x, out=x)
        return
    torch.log1p_(torch.from_numpy(x))


_TORCH: list = []
_TORCH_LOCK = threading.Lock()
_TORCH_USERS = [0, 1]  # active _sum_log_terms calls, torch's thread count before the first


@contextlib.contextmanager
def _torch_single_threaded():
    """torch's intra-op threads at 1 while the pool's threads call it (each call would otherwise start a
    team of ``torch.get_num_threads()`` threads per pool thread: oversubscribed cores); restored after."""
    torch = _torch()
    if torch is None:
        yield
        return
    with _TORCH_LOCK:
        if _TORCH_USERS[0] == 0:
            _TORCH_USERS[1] = torch.get_num_threads()
            torch.set_num_threads(1)
        _TORCH_USERS[0] += 1
    try:
        yield
    finally:
        with _TORCH_LOCK:
            _TORCH_USERS[0] -= 1
            if _TORCH_USERS[0] == 0:
                torch.set_num_threads(_TORCH_USERS[1])


def _torch():
    if not _TORCH:
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency of neuronscan
            torch = None
        _TORCH.append(torch)
    return _TORCH[0]


def _exp_rows(block: np.ndarray, step: int, alpha: float, start: int) -> np.ndarray:
    """In place on ``block[start : start + step]``: ``exp(alpha x - max(alpha x))`` per row.

    Returns the rows' sums (float64). Works through the rows a few at a time, in cache.
    """
    rows = block[start : start + step]
    sums = np.empty(rows.shape[0])
    sub = max(1, _EXP_ELEMENTS // rows.shape[1])
    for s in range(0, rows.shape[0], sub):
        r = rows[s : s + sub]
        if alpha != 1.0:
            r *= alpha
        r -= r.max(axis=1, keepdims=True)
        np.exp(r, out=r)
        sums[s : s + sub] = r.sum(axis=1, dtype=np.float64)
    return sums


def _n_threads() -> int:
    """Worker threads for the elementwise work: ``OMP_NUM_THREADS`` if set (as Ray sets it for a
    task's CPUs, and as the BLAS reads it), else the CPUs this process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def top_mean_cosine(
    activations: np.ndarray,
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    *,
    top_k: int = 100,
) -> np.ndarray:
    """Cosine between each unit's mean top-image embedding and each concept's text embedding.

    Args:
        activations: ``(n_images, n_units)``, finite.
        image_embeddings: ``(n_images, D)``.
        text_embeddings: ``(n_concepts, D)``.
        top_k: images averaged per unit (clamped to ``n_images`` with a warning).

    Returns:
        ``(n_units, n_concepts)`` float64 in ``[-1, 1]``; a row is NaN when the unit's top
        embeddings sum to the zero vector (no direction to compare).

    Raises:
        ValueError: on mismatched shapes, non-finite values, zero embedding rows or ``top_k < 1``.

    Example:
        >>> import numpy as np
        >>> e = np.eye(2)
        >>> top_mean_cosine(np.array([[0.0], [1.0]]), e, e, top_k=1).tolist()
        [[0.0, 1.0]]
    """
    acts, emb, txt = _validate(activations, image_embeddings, text_embeddings)
    k = _effective_top_k(top_k, acts.shape[0], stacklevel=3)
    n_units = acts.shape[1]
    if n_units == 0:
        return np.empty((0, txt.shape[0]), dtype=np.float64)
    top = _top_indices(acts, k)
    means = np.empty((n_units, emb.shape[1]), dtype=np.float64)
    step = max(1, _MEAN_ELEMENTS // max(1, k * emb.shape[1]))
    for start in range(0, n_units, step):
        means[start : start + step] = emb[top[start : start + step]].mean(axis=1)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(norms > 0, means / norms, np.nan)
    return means @ txt.T


def _validate(
    activations: np.ndarray,
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check shapes and values once; return activations and row-normalised embeddings.

    Activations keep float32 or float64 (ranking a float32 column in float64 orders it the same;
    other dtypes become float64). Embeddings are normalised in float64 and returned as ``dtype``.
    """
    acts = np.asarray(activations)
    if acts.dtype not in (np.float32, np.float64):
        acts = acts.astype(np.float64)
    emb = np.asarray(image_embeddings)
    txt = np.asarray(text_embeddings)
    _check_2d(acts, "activations", "(n_images, n_units)")
    _check_2d(emb, "image_embeddings", "(n_images, D)")
    _check_2d(txt, "text_embeddings", "(n_concepts, D)")
    if emb.shape[0] != acts.shape[0]:
        raise ValueError(
            f"image_embeddings has {emb.shape[0]:,} rows but activations has "
            f"{acts.shape[0]:,} images (shapes {emb.shape} and {acts.shape}); "
            "both must list the same images in the same order"
        )
    _check_dims(emb, txt)
    if acts.shape[0] == 0:
        raise ValueError(f"activations has no images (shape {acts.shape})")
    if txt.shape[0] == 0:
        raise ValueError(f"text_embeddings has no concepts (shape {txt.shape})")
    _check_finite(acts, "activations")
    emb, txt = _prepare_embeddings(emb, txt, dtype)
    return acts, emb, txt


def _check_2d(arr: np.ndarray, name: str, want: str) -> None:
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D {want}, got shape {arr.shape}")


def _check_dims(emb: np.ndarray, txt: np.ndarray) -> None:
    if txt.shape[1] != emb.shape[1]:
        raise ValueError(
            f"text_embeddings has dimension {txt.shape[1]} but image_embeddings has "
            f"{emb.shape[1]} (shapes {txt.shape} and {emb.shape}); embed both with the same "
            "CLIP model"
        )


def _check_finite(arr: np.ndarray, name: str) -> None:
    if not np.isfinite(arr).all():
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name} has {bad:,} non-finite values (NaN or inf)")


def _prepare_embeddings(
    emb: np.ndarray, txt: np.ndarray, dtype: type
) -> tuple[np.ndarray, np.ndarray]:
    """Finite check and row normalisation of both embedding matrices (shapes already checked)."""
    if dtype == np.float64:
        emb, txt = emb.astype(np.float64, copy=False), txt.astype(np.float64, copy=False)
    _check_finite(emb, "image_embeddings")
    _check_finite(txt, "text_embeddings")
    return (
        _normalise_rows(emb, "image_embeddings", dtype),
        _normalise_rows(txt, "text_embeddings", dtype),
    )


def _normalise_rows(x: np.ndarray, name: str, dtype: type = np.float64) -> np.ndarray:
    """L2-normalise the rows of ``x`` (norms in float64) as ``dtype``; a zero row is an error."""
    if dtype == np.float64 or x.dtype == np.float64:
        norms = np.linalg.norm(x.astype(np.float64, copy=False), axis=1, keepdims=True)
    else:  # float32 and narrower: float64 norms without a float64 copy of x
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))[:, None]
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(
            f"{name} has {zero.size:,} all-zero rows (first: row {int(zero[0])}); "
            "a zero embedding has no direction"
        )
    if dtype == np.float64:
        return x.astype(np.float64, copy=False) / norms
    return (x * (1.0 / norms).astype(np.float32)).astype(np.float32, copy=False)


def _effective_top_k(top_k: int, n_images: int, stacklevel: int) -> int:
    """Validate ``top_k`` and clamp it to ``n_images``, warning at the user's call site."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
        raise ValueError(f"top_k must be an integer, got {top_k!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_k > n_images:
        warnings.warn(
            f"top_k={top_k} exceeds n_images={n_images:,}; using all {n_images:,} images per unit",
            UserWarning,
            stacklevel=stacklevel,
        )
        return n_images
    return int(top_k)


def _top_indices(acts: np.ndarray, k: int) -> np.ndarray:
    """``(n_units, k)`` image indices of each unit's top ``k``, by activation then image index.

    A unit's candidates are the images at or above a threshold read off every ``stride``-th image
    (about ``2 k`` candidates): when there are at least ``k``, its top ``k`` are among them and are
    sorted out of them exactly, all units at once. A unit with too few candidates, or very many
    (ties at the threshold), is ranked on its whole column instead. Either way the result is the
    exact top ``k`` with its tie rule.
    """
    n_images, n_units = acts.shape
    if k == n_images:
        cand = np.broadcast_to(np.arange(n_images)[:, None], (n_images, n_units)).T
        vals = acts.T
        order = np.lexsort((cand, -vals), axis=1)
        return np.take_along_axis(cand, order, axis=1)
    out = np.empty((n_units, k), dtype=np.int64)
    full = np.ones(n_units, dtype=bool)
    stride = n_images // (64 * k)
    if stride >= 2:
        sample = np.ascontiguousarray(acts[::stride].T)  # (units, sampled images)
        rank = sample.shape[1] - min(sample.shape[1], -(-2 * k // stride))
        threshold = np.partition(sample, rank, axis=1)[:, rank]
        # Image-major, so by image within each unit.
        img, unit = np.divmod(np.flatnonzero(acts >= threshold), n_units)
        counts = np.bincount(unit, minlength=n_units)
        full = (counts < k) | (counts > 16 * k)
        keep = ~full[unit]
        img, unit = img[keep], unit[keep]
        # By unit, then value (highest first), then image index (lowest first).
        order = np.lexsort((img, -acts[img, unit], unit))
        img = img[order]
        starts = np.concatenate(([0], np.cumsum(np.bincount(unit, minlength=n_units))[:-1]))
        fast = np.flatnonzero(~full)
        out[fast] = img[starts[fast][:, None] + np.arange(k)]
    for u in np.flatnonzero(full):
        col = np.ascontiguousarray(acts[:, u])
        cand = np.argpartition(col, n_images - k)[n_images - k :]
        # argpartition picks arbitrarily among values tied with the k-th largest; where such ties
        # straddle the cut, take every value above the tie and the lowest-index tied images.
        kth = col[cand].min()
        if np.count_nonzero(col >= kth) > k:
            hi = np.flatnonzero(col > kth)
            cand = np.concatenate((hi, np.flatnonzero(col == kth)[: k - hi.size]))
        out[u] = cand[np.lexsort((cand, -col[cand]))]
    return out


def soft_wpmi_log_prior(log_conditional: np.ndarray) -> np.ndarray:
    """soft-WPMI's prior ``log p(c) = log mean_k exp(log p(c | B_k))`` over the units of a layer: ``(n_concepts,)``.

    ``soft_wpmi = log_conditional - lam * soft_wpmi_log_prior(log_conditional)``; for a layer scored in
    shards, pass the gathered rows of all its units.

    Example:
        >>> float(soft_wpmi_log_prior(np.log(np.array([[0.2], [0.6]])))[0]) == float(np.log(0.4))
        True
    """
    x = np.asarray(log_conditional, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"log_conditional must be (n_units >= 1, n_concepts); got shape {x.shape}")
    return _log_mean_exp(x, axis=0)


def _log_mean_exp(x: np.ndarray, axis: int) -> np.ndarray:
    """``log(mean(exp(x)))`` along ``axis`` without overflow or underflow."""
    m = x.max(axis=axis, keepdims=True)
    out = np.log(np.exp(x - m).mean(axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)
