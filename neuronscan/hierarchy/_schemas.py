"""Files the hierarchy stage writes in a run directory, and their Arrow schemas (docs/data-contracts.md).

They sit beside the score stage's tables: ``RunDir(root).path(CONCEPT_UNITS_FILE)`` and so on.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "CONCEPT_UNITS_FILE",
    "MULTIMODAL_UNITS_FILE",
    "HIERARCHY_UNITS_FILE",
    "HIERARCHY_SUMMARY_FILE",
    "CONCEPT_UNITS_SCHEMA",
    "MULTIMODAL_UNITS_SCHEMA",
    "HIERARCHY_UNITS_SCHEMA",
]

CONCEPT_UNITS_FILE = "concept_units.parquet"
MULTIMODAL_UNITS_FILE = "multimodal_units.parquet"
HIERARCHY_UNITS_FILE = "hierarchy_units.parquet"
HIERARCHY_SUMMARY_FILE = "hierarchy_summary.json"

CONCEPT_UNITS_SCHEMA = pa.schema(
    [
        ("concept", pa.string()),
        ("depth", pa.int16()),
        ("layer", pa.string()),
        ("rank", pa.int16()),
        ("unit", pa.int32()),
        ("weight", pa.float64()),
        ("shapley", pa.float64()),
        ("cumulative_auc", pa.float64()),
        ("n_pos", pa.int64()),
        ("unit_auc", pa.float64()),
        ("n_units", pa.int16()),
        ("target_auc", pa.float64()),
        ("full_auc", pa.float64()),
        ("reached", pa.bool_()),
    ]
)
"""``concept_units.parquet``: per (concept, layer) its collaborative units in the order greedy selection
added them (``rank`` 0 first), one row per selected unit."""

MULTIMODAL_UNITS_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("unit", pa.int32()),
        ("concept_a", pa.string()),
        ("concept_b", pa.string()),
        ("lca", pa.list_(pa.string())),
        ("lca_depth", pa.int16()),
        ("auc_a", pa.float64()),
        ("auc_b", pa.float64()),
    ]
)
"""``multimodal_units.parquet``: per multimodal unit the pairs of aligned concepts that meet only at or above
``hierarchy.multimodal_lca_depth`` (``lca`` empty and ``lca_depth`` −1 when they share no ancestor)."""

HIERARCHY_UNITS_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("unit", pa.int32()),
        ("best_concept", pa.string()),
        ("best_depth", pa.int16()),
        ("best_auc", pa.float64()),
        ("best_aligned", pa.bool_()),
        ("n_aligned", pa.int32()),
        ("min_lca_depth", pa.int16()),
        ("n_multimodal_pairs", pa.int32()),
        ("multimodal", pa.bool_()),
        ("n_concept_sets", pa.int32()),
    ]
)
"""``hierarchy_units.parquet``: one row per unit: the depth of its best concept, how shallow its aligned
concepts meet (``min_lca_depth``, null with fewer than two unnested aligned concepts), and in how many
collaborative sets of its layer it sits."""
