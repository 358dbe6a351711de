"""Crop boxes around each top image's argmax location, the union of the images they come from, and the crops.

A unit's top image carries the argmax location ``(loc_y, loc_x)`` of its feature map, as fractions of the model
input (the centre of the argmax cell, `neuronscan.models.ActivationRecorder`). `crop_boxes` turns it back into
the cell and takes the cell's receptive field (`ReceptiveField.cell_box`), clipped to the image; a box thinner
than ``min_crop`` of the image side is widened around its centre to that width and shifted inside the image, so
it always contains the clipped field. Boxes are half-open pixel boxes of the model input
(``x0 … x1 − 1``, ``y0 … y1 − 1``); a location that is NaN (a layer with no spatial layout) is the whole image.

`union_plan` deduplicates: every image once, every distinct (image, box) once, however many units and ranks
share it, so one pass reads each image once and embeds each crop once. `cut_crops` cuts the boxes out of a
decoded image (the model input decoded at a larger side when CLIP takes larger images) and resizes each to the
CLIP input.

numpy and Pillow only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from neuronscan.describe._rf import ReceptiveField

__all__ = ["UnionPlan", "crop_boxes", "cut_crops", "min_side", "union_plan"]


def min_side(min_crop: float, input_size: int) -> int:
    """The smallest box side in pixels: ``ceil(min_crop · input_size)``, at least 1, at most the side."""
    return int(min(input_size, max(1, math.ceil(min_crop * input_size - 1e-9))))


def _widen(lo: np.ndarray, hi: np.ndarray, side: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[lo, hi)`` clipped to ``[0, limit)`` and widened to at least ``side``, inside the image."""
    lo = np.clip(lo, 0, limit - 1)
    hi = np.maximum(np.clip(hi, 0, limit), lo + 1)  # a field entirely outside the image keeps one pixel
    width = hi - lo
    short = width < side
    grow = side - width
    new_lo = np.clip(lo - grow // 2, 0, limit - side)
    lo = np.where(short, new_lo, lo)
    hi = np.where(short, new_lo + side, hi)
    return lo, hi


def crop_boxes(loc_y: np.ndarray, loc_x: np.ndarray, rf: ReceptiveField, *, min_crop: float) -> np.ndarray:
    """The crop box of each argmax location: ``(n, 4)`` int32 ``x0, y0, x1, y1`` in model-input pixels.

    Args:
        loc_y, loc_x: argmax locations as fractions of the input (``topk/<layer>.parquet``); NaN → whole image.
        rf: the layer's receptive field (`receptive_fields`).
        min_crop: smallest box side as a fraction of the input side (0 < min_crop ≤ 1).

    Returns:
        Boxes with ``0 ≤ x0 < x1 ≤ S``, ``0 ≤ y0 < y1 ≤ S`` and sides ≥ ``min_side(min_crop, S)``, each
        containing its cell's field clipped to the image.

    Example:
        >>> from neuronscan.describe._rf import ReceptiveField
        >>> rf = ReceptiveField("conv", (8, 8), (39, 39), (8, 8), (-16, -16), 64)
        >>> crop_boxes(np.array([0.4375]), np.array([0.0625]), rf, min_crop=0.25).tolist()
        [[0, 8, 23, 47]]
    """
    if not 0 < min_crop <= 1:
        raise ValueError(f"min_crop must be in (0, 1], got {min_crop!r}")
    ly = np.asarray(loc_y, dtype=np.float64).ravel()
    lx = np.asarray(loc_x, dtype=np.float64).ravel()
    if ly.shape != lx.shape:
        raise ValueError(f"loc_y and loc_x differ in length: {ly.shape} vs {lx.shape}")
    s = rf.input_size
    side = min_side(min_crop, s)
    h, w = rf.grid
    whole = ~(np.isfinite(ly) & np.isfinite(lx)) | (rf.kind == "global")
    # The cell whose centre the location is: loc = (i + 0.5) / h (stored as float16: round, do not floor).
    i = np.clip(np.rint(np.nan_to_num(ly) * h - 0.5), 0, h - 1).astype(np.int64)
    j = np.clip(np.rint(np.nan_to_num(lx) * w - 0.5), 0, w - 1).astype(np.int64)
    if rf.kind in ("tokens", "cells"):
        y0, y1 = (i * s) // h, ((i + 1) * s) // h
        x0, x1 = (j * s) // w, ((j + 1) * s) // w
    else:
        y0 = rf.offset[0] + i * rf.stride[0]
        x0 = rf.offset[1] + j * rf.stride[1]
        y1, x1 = y0 + rf.size[0], x0 + rf.size[1]
    y0 = np.where(whole, 0, y0)
    x0 = np.where(whole, 0, x0)
    y1 = np.where(whole, s, y1)
    x1 = np.where(whole, s, x1)
    y0, y1 = _widen(y0, y1, side, s)
    x0, x1 = _widen(x0, x1, side, s)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int32)


@dataclass
class UnionPlan:
    """Every image once and every distinct (image, box) once, for one pass over the union of top images.

    Attributes:
        rows: one row per (layer, unit, rank) with ``image_id, x0, y0, x1, y1`` and ``crop`` (index into
            ``crops``).
        crops: one row per distinct crop: ``image_id, x0, y0, x1, y1``, sorted by image then box.
        images: the distinct image ids, ascending; ``crops`` of image ``images[k]`` are
            ``crops.iloc[starts[k]:starts[k + 1]]``.
        starts: ``len(images) + 1`` offsets into ``crops``.
    """

    rows: pd.DataFrame
    crops: pd.DataFrame
    images: np.ndarray
    starts: np.ndarray

    def image_crops(self, k: int) -> np.ndarray:
        """The ``(n, 4)`` boxes ``x0, y0, x1, y1`` of the k-th image."""
        part = self.crops.iloc[self.starts[k] : self.starts[k + 1]]
        return part[["x0", "y0", "x1", "y1"]].to_numpy(np.int32)


def union_plan(rows: pd.DataFrame) -> UnionPlan:
    """Deduplicate the crops of ``rows`` (columns ``image_id, x0, y0, x1, y1`` and any others).

    Example:
        >>> rows = pd.DataFrame({"image_id": [5, 5, 2], "x0": [0, 0, 1], "y0": [0, 0, 1], "x1": [4, 4, 3],
        ...                      "y1": [4, 4, 3]})
        >>> plan = union_plan(rows)
        >>> plan.images.tolist(), plan.rows["crop"].tolist(), len(plan.crops)
        ([2, 5], [1, 1, 0], 2)
    """
    keys = ["image_id", "x0", "y0", "x1", "y1"]
    missing = [k for k in keys if k not in rows.columns]
    if missing:
        raise ValueError(f"rows lack columns {missing}")
    crops = rows[keys].drop_duplicates().sort_values(keys, kind="stable").reset_index(drop=True)
    crops["crop"] = np.arange(len(crops), dtype=np.int64)
    out = rows.drop(columns=[c for c in ("crop",) if c in rows.columns]).merge(crops, on=keys, how="left")
    out["crop"] = out["crop"].astype(np.int64)
    ids = crops["image_id"].to_numpy(np.int64)
    images, first = np.unique(ids, return_index=True)
    starts = np.append(first, len(crops)).astype(np.int64)
    return UnionPlan(out, crops.drop(columns=["crop"]), images, starts)


def cut_crops(pixels: np.ndarray, boxes: np.ndarray, *, input_size: int, out_size: tuple[int, int]) -> np.ndarray:
    """Cut model-input ``boxes`` out of one decoded image and resize each to ``out_size``.

    Args:
        pixels: ``(D, D, 3)`` uint8, the image decoded as the probe decodes it but at side ``D ≥ 1`` (the box
            coordinates are scaled by ``D / input_size``, rounded outwards).
        boxes: ``(n, 4)`` ``x0, y0, x1, y1`` in pixels of the ``input_size`` model input.
        out_size: ``(height, width)`` of the CLIP input; crops are resized to it (bilinear, Pillow's
            antialiasing when shrinking), whatever their aspect.

    Returns:
        ``(n, height, width, 3)`` uint8.
    """
    from PIL import Image

    arr = np.asarray(pixels)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"pixels must be (D, D, 3) uint8, got {arr.dtype} {arr.shape}")
    d_y, d_x = arr.shape[0], arr.shape[1]
    out_h, out_w = int(out_size[0]), int(out_size[1])
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    out = np.empty((len(boxes), out_h, out_w, 3), dtype=np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        a_y = max(0, min(d_y - 1, math.floor(y0 * d_y / input_size)))
        a_x = max(0, min(d_x - 1, math.floor(x0 * d_x / input_size)))
        b_y = max(a_y + 1, min(d_y, math.ceil(y1 * d_y / input_size)))
        b_x = max(a_x + 1, min(d_x, math.ceil(x1 * d_x / input_size)))
        crop = arr[a_y:b_y, a_x:b_x]
        if crop.shape[:2] != (out_h, out_w):
            crop = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((out_w, out_h), Image.BILINEAR))
        out[k] = crop
    return out
