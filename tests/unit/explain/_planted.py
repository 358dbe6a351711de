"""Planted truth for the explainer tests: a layer whose per-image features are a known sparse non-negative mix of
part detectors, written as a probed run directory (commit records, activation parts, images, labels, run.json).

``x = c @ D.T + noise``: ``D`` is ``(n_units, n_parts)``, each column a *part detector* driving ``units_per_part``
units (non-negative, unit norm); every image shows ``active`` parts, drawn at random, with coefficients in
``[1, 2]``. An SAE that recovers the parts has a decoder column close to each column of ``D``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

LAYER = "planted:mean"


def planted_parts(n_images: int = 4000, n_units: int = 32, n_parts: int = 16, *, active: int = 3,
                  units_per_part: int = 4, noise: float = 0.01, seed: int = 0):
    """``(x float32 (n_images, n_units), D (n_units, n_parts), c (n_images, n_parts))``."""
    rng = np.random.default_rng(seed)
    d = np.zeros((n_units, n_parts))
    for j in range(n_parts):
        units = rng.choice(n_units, size=units_per_part, replace=False)
        d[units, j] = rng.uniform(0.5, 1.0, size=units_per_part)
    d /= np.linalg.norm(d, axis=0, keepdims=True)
    c = np.zeros((n_images, n_parts))
    for i in range(n_images):
        on = rng.choice(n_parts, size=active, replace=False)
        c[i, on] = rng.uniform(1.0, 2.0, size=active)
    x = c @ d.T + rng.normal(0.0, noise, size=(n_images, n_units))
    return x.astype(np.float32), d, c


def write_planted_run(root: Path, x: np.ndarray, *, layer: str = LAYER, n_parts: int = 2, c: np.ndarray | None = None,
                      config: dict | None = None) -> Path:
    """A probed run directory with ``x`` as the committed parts of ``layer`` (image ids 10, 11, …); labels name
    the image's strongest part (``part<j>``) when ``c`` is given."""
    import json

    from neuronscan.io import (
        COMMIT_SCHEMA,
        IMAGES_SCHEMA,
        LABELS_SCHEMA,
        RunDir,
        activation_schema,
        write_parquet_atomic,
    )

    run = RunDir(str(root))
    n = len(x)
    ids = np.arange(n, dtype=np.int64) + 10
    images = pd.DataFrame({"image_id": ids, "uri": [f"mem://{i}.png" for i in ids], "status": "ok", "error": None})
    write_parquet_atomic(pa.Table.from_pandas(images, schema=IMAGES_SCHEMA, preserve_index=False), run.images)
    for k, rows in enumerate(np.array_split(np.arange(n), n_parts)):
        part = f"p{k:03d}"
        arrays = [pa.array(ids[rows], pa.int64())] + [pa.array(x[rows, u]) for u in range(x.shape[1])]
        write_parquet_atomic(pa.Table.from_arrays(arrays, schema=activation_schema(x.shape[1])),
                             run.activation_part(layer, part), encoded_columns=["image_id"])
        write_parquet_atomic(pa.Table.from_pandas(images.iloc[rows], schema=COMMIT_SCHEMA, preserve_index=False),
                             run.commit(part))
    if c is not None:
        labels = pd.DataFrame({"image_id": ids, "concept": [f"part{j}" for j in c.argmax(1)]})
    else:
        labels = pd.DataFrame({"image_id": ids, "concept": "all"})
    write_parquet_atomic(pa.Table.from_pandas(labels, schema=LABELS_SCHEMA, preserve_index=False), run.labels)
    cfg = config or planted_config()
    (Path(root) / "run.json").write_text(json.dumps({"config": cfg}))
    return Path(root)


def planted_config(**explain) -> dict:
    """A run config (as run.json holds it) whose explain section trains an sae on the planted layer."""
    section = {"layer": LAYER, "family": "sae", "width": 1.0, "sparsity": {"activation": "topk", "k": 3},
               "epochs": 30, "batch_size": 128, "lr": 0.01, "seed": 0, "accuracy": False, **explain}
    return {"data": {"folder": "unused"}, "model": {"name": "shapesnet", "layers": ["conv4"]}, "explain": section}


def write_world_run(root: Path, world: Path, *, n_images: int = 24, config: dict | None = None) -> Path:
    """A run directory over a small shapes world (images.parquet, labels.parquet, run.json; no activation parts):
    what the part family needs (the model runs on the images)."""
    import json

    from neuronscan.demo import generate_shapes_world
    from neuronscan.io import IMAGES_SCHEMA, LABELS_SCHEMA, RunDir, write_parquet_atomic

    manifest = generate_shapes_world(world, n_images=n_images, seed=3, size=64)
    run = RunDir(str(root))
    images = pd.DataFrame({"image_id": manifest["image_id"].astype("int64"), "uri": manifest["uri"].astype(str),
                           "status": "ok", "error": None})
    write_parquet_atomic(pa.Table.from_pandas(images, schema=IMAGES_SCHEMA, preserve_index=False), run.images)
    labels = pd.read_parquet(Path(world) / "labels.parquet")
    write_parquet_atomic(pa.Table.from_pandas(labels[["image_id", "concept"]], schema=LABELS_SCHEMA,
                                              preserve_index=False), run.labels)
    (Path(root) / "run.json").write_text(json.dumps({"config": config or {}}))
    return Path(root)


def world_config(world: Path, **explain) -> dict:
    """A run config over ``world`` whose explain section trains a part explainer of ShapesNet's conv4."""
    section = {"layer": "conv4", "family": "part", "width": 0.125, "epochs": 3, "batch_size": 8, "lr": 0.001,
               "seed": 0, "stability_min_images": 2, "part": {"hidden": 0.125}, **explain}
    return {"data": {"shapes_world": {"root": str(world), "n_images": 24, "seed": 3, "size": 64}},
            "model": {"name": "shapesnet", "layers": ["conv4"]}, "probe": {"topk": 4}, "explain": section}
