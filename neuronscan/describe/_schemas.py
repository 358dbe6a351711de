"""Files the describe stage writes in a run directory, and their Arrow schemas (docs/data-contracts.md).

``RunDir(root).path(CROPS_FILE)`` and so on; the report imports the names from here.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["CROPS_FILE", "DESCRIPTIONS_FILE", "DESCRIBE_SUMMARY_FILE", "DESCRIPTIONS_SCHEMA", "crops_schema"]

CROPS_FILE = "describe/crops.parquet"
DESCRIPTIONS_FILE = "descriptions.parquet"
DESCRIBE_SUMMARY_FILE = "describe/describe.json"


def crops_schema(dim: int) -> pa.Schema:
    """``describe/crops.parquet``: one row per (layer, unit, rank) of the described top images.

    ``x0, y0, x1, y1`` are a half-open pixel box of the model input (``data.image_size`` or the model's side);
    ``embedding`` is the crop's L2-normalised CLIP embedding, null when the image could not be read again
    (``error`` then says why).
    """
    return pa.schema(
        [
            ("layer", pa.string()),
            ("unit", pa.int32()),
            ("rank", pa.int32()),
            ("image_id", pa.int64()),
            ("value", pa.float32()),
            ("x0", pa.int32()),
            ("y0", pa.int32()),
            ("x1", pa.int32()),
            ("y1", pa.int32()),
            ("embedding", pa.list_(pa.float32(), dim)),
            ("error", pa.string()),
        ]
    )


DESCRIPTIONS_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("unit", pa.int32()),
        ("patch_label", pa.string()),
        ("patch_score", pa.float64()),
        ("phrase", pa.string()),
        ("concepts", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float64())),
        ("n_crops", pa.int32()),
    ]
)
"""``descriptions.parquet``: per described unit its top vocabulary words by the crops' score (``describe.method``),
best first; ``patch_label``/``patch_score`` are the first of them."""
