"""Match the units of two layers (of two runs, any two models) by how alike they respond to the same images.

Two runs of different models, or of the same model after retraining, number their units independently.
On the probe images both runs saw, each unit is a vector of activations; the Pearson correlation of
every unit of layer A with every unit of layer B, followed by an optimal one-to-one assignment
(``scipy.optimize.linear_sum_assignment`` on ``-correlation``), pairs each unit with its closest
counterpart.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.optimize import linear_sum_assignment

from neuronscan.errors import InputError
from neuronscan.io import RunDir, get_fs, is_unit_column

__all__ = ["match_units", "read_layer_activations", "correlation_matrix"]

MATCH_COLUMNS = ["unit_a", "unit_b", "correlation", "best_concept_a", "best_concept_b"]


def read_layer_activations(run_dir: str, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """One layer's activations of a run: sorted unique ``image_ids (n_images,)`` and ``values (n_images, n_units)``.

    Reads ``run_dir/activations/<layer>/part-*.parquet`` (only committed parts when the run has probe
    commit records). An image written twice (a retried batch) keeps its first row.

    Raises:
        InputError: the layer has no part files, or they lack ``image_id`` or unit columns.
    """
    tables = []
    for uri in RunDir(run_dir).committed_layer_files(layer):
        fs, path = get_fs(uri)
        with fs.open(path, "rb") as fh:
            tables.append(pq.read_table(fh))
    table = pa.concat_tables(tables, promote_options="default")
    if "image_id" not in table.column_names:
        raise InputError(f"activations of layer {layer!r} in {run_dir!r} have no image_id column")
    units = sorted(n for n in table.column_names if is_unit_column(n))
    if not units:
        raise InputError(f"activations of layer {layer!r} in {run_dir!r} have no unit columns (u00000, …)")
    ids = table.column("image_id").to_numpy()
    values = np.empty((table.num_rows, len(units)), dtype=np.float32)
    for j, name in enumerate(units):
        values[:, j] = table.column(name).to_numpy(zero_copy_only=False)
    uniq, first = np.unique(ids, return_index=True)
    return uniq, values[first]


def correlation_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``a (n_images, n_units_a)`` with each of ``b (n_images, n_units_b)``.

    Returns ``(n_units_a, n_units_b)`` float64. A constant column (a dead unit) or one with a
    non-finite value correlates 0 with everything: it carries no evidence for any pairing.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"a has shape {a.shape} and b {b.shape}; both need (n_images, n_units) with the same n_images")

    def standardise(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        bad = ~np.isfinite(x).all(axis=0)
        x = np.where(np.isfinite(x), x, 0.0)
        centred = x - x.mean(axis=0)
        norm = np.sqrt((centred**2).sum(axis=0))
        bad |= norm <= 1e-12 * np.maximum(1.0, np.abs(x).max(axis=0, initial=0.0)) * np.sqrt(len(x))
        out = centred / np.where(bad, 1.0, norm)
        out[:, bad] = 0.0
        # float32 halves the memory of the product; correlations keep ~1e-6 precision.
        return out.astype(np.float32)

    return (standardise(a).T @ standardise(b)).astype(np.float64)


def _best_concepts(run_dir: str, layer: str) -> dict[int, str | None]:
    """Best concept per unit of ``layer`` from the run's ``neurons.parquet`` (empty when absent)."""
    fs, path = get_fs(RunDir(run_dir).neurons)
    if not fs.exists(path):
        return {}
    with fs.open(path, "rb") as fh:
        table = pq.read_table(fh, columns=["layer", "unit", "best_concept"])
    frame = table.to_pandas()
    frame = frame[frame["layer"] == layer]
    return dict(zip(frame["unit"].astype(int), frame["best_concept"]))


def match_units(
    run_a: str,
    layer_a: str,
    run_b: str,
    layer_b: str,
    *,
    max_images: int | None = 50_000,
) -> pd.DataFrame:
    """Pair every unit of ``layer_a`` in ``run_a`` with its counterpart in ``layer_b`` of ``run_b``.

    Only probe images present in both runs' activations are used (matched by ``image_id``). The
    assignment maximises the summed Pearson correlation; with unequal unit counts, the larger layer
    keeps ``|n_units_a - n_units_b|`` units unmatched (they get no row).

    Args:
        run_a, run_b: run directories (local paths or ``s3://`` URIs) with ``activations/<layer>/``.
        layer_a, layer_b: layer names as in the runs (``conv4:mean``).
        max_images: use at most this many shared images (evenly spaced by image id) to bound memory
            at ``max_images × (n_units_a + n_units_b) × 4`` bytes; None uses all.

    Returns:
        One row per matched pair, sorted by ``unit_a``: ``unit_a int64, unit_b int64, correlation float64,
        best_concept_a, best_concept_b`` (from each run's ``neurons.parquet``; None when absent).

    Raises:
        InputError: a layer has no activations, or the runs share fewer than 3 probe images.

    Example:
        >>> pairs = match_units("runs/shapesnet/r1", "conv4:mean", "runs/shapesnet/r2", "conv4:mean")  # doctest: +SKIP
        >>> (pairs["unit_a"] == pairs["unit_b"]).mean()  # doctest: +SKIP
        1.0
    """
    ids_a, acts_a = read_layer_activations(run_a, layer_a)
    ids_b, acts_b = read_layer_activations(run_b, layer_b)
    shared, ia, ib = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
    if len(shared) < 3:
        raise InputError(
            f"runs {run_a!r} and {run_b!r} share {len(shared)} probe image(s) (by image_id); matching units needs "
            "activations on the same images — probe both models on the same data"
        )
    if max_images is not None and len(shared) > max_images:
        keep = np.linspace(0, len(shared) - 1, max_images).round().astype(int)
        ia, ib = ia[keep], ib[keep]
    corr = correlation_matrix(acts_a[ia], acts_b[ib])
    rows, cols = linear_sum_assignment(-corr)
    best_a, best_b = _best_concepts(run_a, layer_a), _best_concepts(run_b, layer_b)
    frame = pd.DataFrame(
        {
            "unit_a": rows.astype(np.int64),
            "unit_b": cols.astype(np.int64),
            "correlation": corr[rows, cols],
            "best_concept_a": pd.Series([best_a.get(int(u)) for u in rows], dtype=object),
            "best_concept_b": pd.Series([best_b.get(int(u)) for u in cols], dtype=object),
        }
    )
    return frame.sort_values("unit_a", kind="stable").reset_index(drop=True)
