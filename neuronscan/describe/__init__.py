"""Patch descriptions: each unit described by the CLIP embeddings of crops around its top images' argmax.

Numbers in, numbers out (torch for the receptive fields, numpy, Pillow; no Ray, no I/O): the describe stage
(``pipelines/describe.py``, ``neuronscan describe RUN``) reads a probed run and calls these.

- `receptive_fields` (``_rf.py``): each layer's receptive field, measured exactly on the model as built for the
  run (the gradient support of a positive surrogate); `ReceptiveField`.
- `crop_boxes`, `union_plan`, `cut_crops` (``_crops.py``): the box around each argmax location (clipped to the
  image, at least ``min_crop``), every image and distinct crop once, the crops cut and resized for CLIP.
- `crop_scores`, `describe_units` (``_describe.py``): every vocabulary word scored for every unit from its crops
  (mean cosine, or soft-WPMI over crops); the top words.
- ``_schemas.py``: the files the stage writes and their Arrow schemas.
"""

from neuronscan.describe._crops import UnionPlan, crop_boxes, cut_crops, min_side, union_plan
from neuronscan.describe._describe import METHODS, crop_scores, describe_units
from neuronscan.describe._rf import ReceptiveField, module_of, receptive_fields
from neuronscan.describe._schemas import (
    CROPS_FILE,
    DESCRIBE_SUMMARY_FILE,
    DESCRIPTIONS_FILE,
    DESCRIPTIONS_SCHEMA,
    crops_schema,
)

__all__ = [
    "CROPS_FILE",
    "DESCRIBE_SUMMARY_FILE",
    "DESCRIPTIONS_FILE",
    "DESCRIPTIONS_SCHEMA",
    "METHODS",
    "ReceptiveField",
    "UnionPlan",
    "crop_boxes",
    "crop_scores",
    "crops_schema",
    "cut_crops",
    "describe_units",
    "min_side",
    "module_of",
    "receptive_fields",
    "union_plan",
]
