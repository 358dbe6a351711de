"""Arrow schemas of every file a run directory holds (the data contracts of docs/data-contracts.md)."""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "INPUTS_SCHEMA",
    "LABELS_SCHEMA",
    "HIERARCHY_SCHEMA",
    "IMAGES_SCHEMA",
    "COMMIT_SCHEMA",
    "TOPK_SCHEMA",
    "NEURON_CONCEPTS_SCHEMA",
    "NEURONS_SCHEMA",
    "CLIP_LABELS_SCHEMA",
    "activation_schema",
    "clip_schema",
    "unit_columns",
    "is_unit_column",
]

INPUTS_SCHEMA = pa.schema([("image_id", pa.int64()), ("uri", pa.string()), ("concepts", pa.list_(pa.string()))])
"""``inputs.parquet`` (and any listing): what the probe was asked to read, one row per input."""

LABELS_SCHEMA = pa.schema([("image_id", pa.int64()), ("concept", pa.string())])
"""``labels.parquet``: long format, one row per positive (image, concept)."""

HIERARCHY_SCHEMA = pa.schema([("concept", pa.string()), ("parent", pa.string())])
"""``hierarchy.parquet``: the edges of the concept DAG."""

IMAGES_SCHEMA = pa.schema(
    [("image_id", pa.int64()), ("uri", pa.string()), ("status", pa.string()), ("error", pa.string())]
)
"""``images.parquet``: every input exactly once, ``status`` ``ok``/``failed``, ``error`` "reason: message"."""

COMMIT_SCHEMA = IMAGES_SCHEMA
"""``probe/commits/<part>.parquet``: the images of one committed batch, with their status."""

TOPK_SCHEMA = pa.schema(
    [
        ("unit", pa.int32()),
        ("rank", pa.int32()),
        ("image_id", pa.int64()),
        ("value", pa.float32()),
        ("loc_y", pa.float32()),
        ("loc_x", pa.float32()),
    ]
)
"""``topk/<layer>.parquet``: per unit its top images, with the argmax location as fractions of the image."""

NEURON_CONCEPTS_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("unit", pa.int32()),
        ("concept", pa.string()),
        ("n_pos", pa.int64()),
        ("n_neg", pa.int64()),
        ("auc", pa.float64()),
        ("auprc", pa.float64()),
        ("p_value", pa.float64()),
        ("q_value", pa.float64()),
        ("log_p", pa.float64()),
        ("p_perm", pa.float64()),
        ("n_perm", pa.int32()),
        ("clip_score", pa.float64()),
        ("depth", pa.int16()),
        ("f1", pa.float32()),
        ("iou", pa.float32()),
        ("correlation", pa.float32()),
        ("cosine", pa.float32()),
    ]
)
"""``neuron_concepts.parquet``: the global table, one row per (layer, unit, concept)."""

NEURONS_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("unit", pa.int32()),
        ("best_concept", pa.string()),
        ("best_auc", pa.float64()),
        ("best_auprc", pa.float64()),
        ("best_q", pa.float64()),
        ("best_p_perm", pa.float64()),
        ("n_significant", pa.int32()),
        ("formula", pa.string()),
        ("formula_auc", pa.float64()),
        ("formula_p_exploratory", pa.float64()),
        ("formula_n_evaluated", pa.int64()),
        ("clip_label", pa.string()),
        ("clip_score", pa.float64()),
        ("dead", pa.bool_()),
        ("multimodal", pa.bool_()),
        ("spurious", pa.bool_()),
        ("n_nonfinite", pa.int64()),
        ("best_f1", pa.float64()),
        ("best_iou", pa.float64()),
        ("best_correlation", pa.float64()),
        ("best_cosine", pa.float64()),
        ("sim_concept", pa.string()),
        ("sim_concept_corr", pa.float64()),
        ("sim_formula_corr", pa.float64()),
        ("sim_linear_corr", pa.float64()),
        ("linear_terms", pa.list_(pa.string())),
        ("linear_weights", pa.list_(pa.float64())),
        ("linear_intercept", pa.float64()),
        ("best_depth", pa.int16()),
    ]
)
"""``neurons.parquet``: one row per unit (the summary of `neuronscan.stats.summarize_units`)."""

CLIP_LABELS_SCHEMA = pa.schema(
    [("layer", pa.string()), ("unit", pa.int32()), ("concept", pa.string()), ("clip_score", pa.float64())]
)
"""``clip_labels/<layer>.parquet``: the CLIP score (``probe.clip.method``) of every vocabulary word, when the vocabulary
is not the concepts."""


def unit_columns(n_units: int) -> list[str]:
    """Column names of a layer's units: ``u00000, u00001, …``."""
    return [f"u{k:05d}" for k in range(n_units)]


def is_unit_column(name: str) -> bool:
    """Whether ``name`` is a unit column (``u`` followed by digits)."""
    return name.startswith("u") and name[1:].isdigit()


def activation_schema(n_units: int) -> pa.Schema:
    """``activations/<layer>/part-*.parquet``: ``image_id`` then one float32 column per unit."""
    return pa.schema([("image_id", pa.int64())] + [(c, pa.float32()) for c in unit_columns(n_units)])


def clip_schema(dim: int) -> pa.Schema:
    """``clip/part-*.parquet``: ``image_id`` and an L2-normalised embedding of ``dim`` floats."""
    return pa.schema([("image_id", pa.int64()), ("embedding", pa.list_(pa.float32(), dim))])
