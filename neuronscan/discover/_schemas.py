"""Files the discover stage writes under ``RUN/discover/``, and their Arrow schemas (docs/data-contracts.md).

Paths are ``RunDir(root).path(DISCOVER_DIR, <file>)``; `discover_paths` lists them. ``class`` is the class's
name as the run's labels spell it; ``layer`` the name its concepts are scored under,
``<layer>@craft:<class slug>`` (`naming_layer`).
"""

from __future__ import annotations

import re

import pyarrow as pa

__all__ = [
    "DISCOVER_DIR",
    "FILES",
    "SUMMARY_FILE",
    "DICTIONARY_SCHEMA",
    "CROP_COEFFICIENTS_SCHEMA",
    "IMAGE_COEFFICIENTS_SCHEMA",
    "IMPORTANCE_SCHEMA",
    "IMAGE_IMPORTANCE_SCHEMA",
    "METRICS_SCHEMA",
    "CURVES_SCHEMA",
    "QUALITY_SCHEMA",
    "STRATEGIES_SCHEMA",
    "CONCEPT_CROPS_SCHEMA",
    "SCHEMAS",
    "class_slug",
    "naming_layer",
    "discover_paths",
]

DISCOVER_DIR = "discover"
SUMMARY_FILE = "discover.json"
ACTIVATIONS_DIR = "activations"
SCORED_DIR = "scored"

_BOX = [("x0", pa.int32()), ("y0", pa.int32()), ("x1", pa.int32()), ("y1", pa.int32())]

DICTIONARY_SCHEMA = pa.schema([
    ("class", pa.string()), ("class_index", pa.int32()), ("layer", pa.string()), ("concept", pa.int32()),
    ("norm", pa.float64()), ("weights", pa.list_(pa.float32())),
])
"""``dictionary.parquet``: W, one row per (class, concept); ``weights`` has one value per channel of the layer."""

CROP_COEFFICIENTS_SCHEMA = pa.schema([
    ("class", pa.string()), ("image_id", pa.int64()), ("row", pa.int32()), *_BOX,
    ("coefficients", pa.list_(pa.float32())),
])
"""``crop_coefficients.parquet``: U of every factorised row (a crop, or a feature-map position) of the class's
images; ``row`` is the crop's (position's) index in its image, the box its pixels in the model input."""

IMAGE_COEFFICIENTS_SCHEMA = pa.schema([
    ("class", pa.string()), ("image_id", pa.int64()), ("coefficients", pa.list_(pa.float32())),
])
"""``image_coefficients.parquet``: per class image, the max (``image_statistic``) of U over its rows."""

IMPORTANCE_SCHEMA = pa.schema([
    ("class", pa.string()), ("layer", pa.string()), ("concept", pa.int32()),
    ("sobol", pa.float64()), ("gradient_input", pa.float64()), ("occlusion", pa.float64()),
    ("rank_sobol", pa.int32()), ("rank_gradient_input", pa.int32()), ("rank_occlusion", pa.int32()),
    ("prevalence", pa.float64()), ("reliability", pa.float64()),
    ("best_concept", pa.string()), ("name_auc", pa.float64()), ("name_auprc", pa.float64()),
    ("name_q", pa.float64()), ("name_score", pa.float64()),
])
"""``importance.parquet``: per (class, concept) its class-level importance by each method (the mean over the
importance images), its rank by each (0 = most important), prevalence and reliability, and its name."""

IMAGE_IMPORTANCE_SCHEMA = pa.schema([
    ("class", pa.string()), ("image_id", pa.int64()), ("concept", pa.int32()),
    ("sobol", pa.float64()), ("gradient_input", pa.float64()), ("occlusion", pa.float64()),
])
"""``image_importance.parquet``: the per-image importances behind `IMPORTANCE_SCHEMA`."""

METRICS_SCHEMA = pa.schema([
    ("class", pa.string()), ("importance", pa.string()),
    ("c_deletion", pa.float64()), ("c_insertion", pa.float64()), ("c_mufidelity", pa.float64()),
])
"""``metrics.parquet``: per (class, importance method) C-Deletion, C-Insertion, C-µFidelity."""

CURVES_SCHEMA = pa.schema([
    ("class", pa.string()), ("importance", pa.string()), ("kind", pa.string()), ("step", pa.int32()),
    ("logit", pa.float64()),
])
"""``curves.parquet``: the mean deletion / insertion curve (``kind``) per class and method; ``step`` j = j
concepts removed (deletion) or inserted (insertion)."""

QUALITY_SCHEMA = pa.schema([
    ("class", pa.string()), ("class_index", pa.int32()), ("layer", pa.string()), ("method", pa.string()),
    ("source", pa.string()), ("n_images", pa.int64()), ("n_rows", pa.int64()), ("rows_per_image", pa.int32()),
    ("n_importance_images", pa.int64()), ("reconstruction_error", pa.float64()),
    ("reconstruction_error_positions", pa.float64()), ("n_iter", pa.int64()), ("zero_fraction", pa.float64()),
    ("hoyer", pa.float64()),
    ("stability", pa.float64()), ("accuracy", pa.float64()), ("mean_logit", pa.float64()),
    ("seconds", pa.float64()),
])
"""``quality.parquet``: one row per class — the dictionary's reconstruction error, sparsity and stability."""

STRATEGIES_SCHEMA = pa.schema([
    ("class", pa.string()), ("concept", pa.int32()), ("best_concept", pa.string()), ("n_images", pa.int64()),
    ("prevalence", pa.float64()), ("reliability", pa.float64()), ("runner_up", pa.int32()),
    ("mean_share", pa.float64()),
])
"""``strategies.parquet``: per class, its images grouped by dominant concept (one row per concept)."""

CONCEPT_CROPS_SCHEMA = pa.schema([
    ("class", pa.string()), ("concept", pa.int32()), ("rank", pa.int32()), ("image_id", pa.int64()), *_BOX,
    ("coefficient", pa.float64()),
])
"""``concept_crops.parquet``: each concept's example crops: its highest-coefficient row of each image, the top
``n_examples`` images."""

SCHEMAS: dict[str, pa.Schema] = {
    "dictionary.parquet": DICTIONARY_SCHEMA,
    "crop_coefficients.parquet": CROP_COEFFICIENTS_SCHEMA,
    "image_coefficients.parquet": IMAGE_COEFFICIENTS_SCHEMA,
    "importance.parquet": IMPORTANCE_SCHEMA,
    "image_importance.parquet": IMAGE_IMPORTANCE_SCHEMA,
    "metrics.parquet": METRICS_SCHEMA,
    "curves.parquet": CURVES_SCHEMA,
    "quality.parquet": QUALITY_SCHEMA,
    "strategies.parquet": STRATEGIES_SCHEMA,
    "concept_crops.parquet": CONCEPT_CROPS_SCHEMA,
}
FILES = tuple(SCHEMAS)


def class_slug(name: str) -> str:
    """A class name made safe for a folder name (letters, digits, ``.``, ``_``, ``-``; others become ``_``)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_") or "class"


def naming_layer(layer: str, slug: str) -> str:
    """The layer name a class's concepts are scored under: ``conv4@craft:red`` (folder ``conv4@craft__red``)."""
    return f"{layer}@craft:{slug}"


def discover_paths(run) -> dict[str, str]:
    """Every file and folder of ``RUN/discover/`` for a `neuronscan.io.RunDir`: table name → URI."""
    out = {name.removesuffix(".parquet"): run.path(DISCOVER_DIR, name) for name in FILES}
    out["summary"] = run.path(DISCOVER_DIR, SUMMARY_FILE)
    out["activations"] = run.path(DISCOVER_DIR, ACTIVATIONS_DIR)
    out["scored"] = run.path(DISCOVER_DIR, SCORED_DIR)
    return out
