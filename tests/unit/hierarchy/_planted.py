"""Planted truth for the hierarchy tests: units wired to known leaves, one unit to a parent.

The hierarchy (depth in brackets)::

    R [0]
    ├── P1 [1]: a, b, c [2]
    └── P2 [1]: d, e [2]

Every image shows one leaf (uniformly drawn), so it is positive for its leaf, the leaf's parent and R (R has
no negatives). Unit k fires (1 + noise) on the images of ``WIRING[k]`` and is noise elsewhere; units beyond
the wired ones are pure noise. Unit 5 is the parent unit of P2 (fires on d and e); P1 has no unit of its own.
With ``mixed=True`` two more units are wired: 6 to a and d (leaves meeting only at the root) and 7 to a and
b (siblings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

EDGES = [("a", "P1"), ("b", "P1"), ("c", "P1"), ("d", "P2"), ("e", "P2"), ("P1", "R"), ("P2", "R")]
LEAVES = ["a", "b", "c", "d", "e"]
WIRING = {0: {"a"}, 1: {"b"}, 2: {"c"}, 3: {"d"}, 4: {"e"}, 5: {"d", "e"}}
MIXED = {6: {"a", "d"}, 7: {"a", "b"}}
PARENT_UNIT = 5


def planted(n_images: int = 600, n_units: int = 12, *, noise: float = 0.3, mixed: bool = False,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[int, set[str]]]:
    """``(leaf of each image, activations (n_images, n_units) float32, wiring)``."""
    rng = np.random.default_rng(seed)
    leaf = np.asarray(LEAVES, dtype=object)[rng.integers(0, len(LEAVES), n_images)]
    wiring = {**WIRING, **(MIXED if mixed else {})}
    x = rng.normal(0.0, noise, size=(n_images, n_units))
    for unit, leaves in wiring.items():
        x[:, unit] += np.isin(leaf, list(leaves))
    return leaf, x.astype(np.float32), wiring


def labels_of(leaf: np.ndarray, concept: str) -> np.ndarray:
    """Positives of ``concept`` (a leaf, a parent, or the root) with labels propagated up."""
    members = {"P1": {"a", "b", "c"}, "P2": {"d", "e"}, "R": set(LEAVES)}.get(concept, {concept})
    return np.isin(leaf, list(members))


def write_run(root: Path, *, layers: dict[str, np.ndarray], leaf: np.ndarray, config: dict | None = None,
              n_parts: int = 2) -> Path:
    """A probed run directory (no commit records: every part counts) with ``run.json`` holding a config."""
    import json

    from neuronscan.io import HIERARCHY_SCHEMA, LABELS_SCHEMA, activation_schema, layer_dirname

    root.mkdir(parents=True, exist_ok=True)
    n = len(leaf)
    ids = np.arange(n, dtype=np.int64) * 3 + 7  # ids are not row numbers
    for layer, x in layers.items():
        folder = root / "activations" / layer_dirname(layer)
        folder.mkdir(parents=True)
        schema = activation_schema(x.shape[1])
        for p, rows in enumerate(np.array_split(np.arange(n), n_parts)):
            cols = [pa.array(ids[rows])] + [pa.array(x[rows, k]) for k in range(x.shape[1])]
            pq.write_table(pa.Table.from_arrays(cols, schema=schema), folder / f"part-{p:04d}.parquet",
                           write_page_checksum=True)
    labels = pd.DataFrame({"image_id": ids, "concept": leaf.astype(str)})
    pq.write_table(pa.Table.from_pandas(labels, schema=LABELS_SCHEMA, preserve_index=False),
                   root / "labels.parquet", write_page_checksum=True)
    pq.write_table(pa.table({"concept": [c for c, _ in EDGES], "parent": [p for _, p in EDGES]},
                            schema=HIERARCHY_SCHEMA), root / "hierarchy.parquet", write_page_checksum=True)
    cfg = {"data": {"folder": "."}, "model": {"name": "planted", "layers": list(layers)},
           "score": {"n_perm": 0, "compositional": {"enabled": False}},
           "hierarchy": {"min_positives": 20}}
    for key, value in (config or {}).items():
        cfg.setdefault(key, {}).update(value)
    (root / "run.json").write_text(json.dumps({"run_id": root.name, "config": cfg}))
    return root
