"""Crop boxes: the cell's receptive field, clipped to the image, at least min_crop; the union of crops; cutting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuronscan.describe import ReceptiveField, crop_boxes, cut_crops, min_side, union_plan

CONV4 = ReceptiveField("conv", (8, 8), (39, 39), (8, 8), (-16, -16), 64)


def _loc(i: np.ndarray, n: int) -> np.ndarray:
    return ((i + 0.5) / n).astype(np.float16).astype(np.float32)  # as topk stores it


def test_boxes_by_hand():
    # cell (3, 0): rows [8, 47), cols [-16, 23) → [0, 23); cell (7, 7): rows/cols [40, 79) → [40, 64)
    boxes = crop_boxes(_loc(np.array([3, 7]), 8), _loc(np.array([0, 7]), 8), CONV4, min_crop=0.25)
    assert boxes.tolist() == [[0, 8, 23, 47], [40, 40, 64, 64]]


def test_a_small_field_is_widened_to_min_crop_inside_the_image():
    conv1 = ReceptiveField("conv", (32, 32), (5, 5), (2, 2), (-2, -2), 64)
    # rows of cell 0: [-2, 3) → [0, 3) → 16 wide, shifted inside: [0, 16); cols of cell 31: [60, 65) → [60, 64)
    # → [48, 64); cell 15: [28, 33) → 11 more pixels, 5 before and 6 after: [23, 39)
    boxes = crop_boxes(_loc(np.array([0, 15]), 32), _loc(np.array([31, 15]), 32), conv1, min_crop=0.25)
    assert boxes.tolist() == [[48, 0, 64, 16], [23, 23, 39, 39]]


def test_vit_patches_and_missing_locations():
    vit = ReceptiveField("tokens", (14, 14), (16, 16), (16, 16), (0, 0), 224)
    boxes = crop_boxes(np.array([_loc(np.array([2]), 14)[0], np.nan]), np.array([_loc(np.array([13]), 14)[0], 0.5]),
                       vit, min_crop=0.25)
    # patch (2, 13): rows [32, 48), cols [208, 224); widened to 56: rows [12, 68), cols [168, 224)
    assert boxes.tolist() == [[168, 12, 224, 68], [0, 0, 224, 224]]
    glob = ReceptiveField("global", (1, 1), (64, 64), (64, 64), (0, 0), 64)
    assert crop_boxes(np.array([0.2]), np.array([0.7]), glob, min_crop=0.1).tolist() == [[0, 0, 64, 64]]


@pytest.mark.parametrize("seed", range(5))
def test_random_boxes_are_inside_wide_enough_and_hold_the_clipped_field(seed):
    rng = np.random.default_rng(seed)
    for _ in range(20):
        s = int(rng.integers(16, 300))
        h = int(rng.integers(1, 40))
        stride = max(1, s // h)
        rf = ReceptiveField("conv", (h, h), (int(rng.integers(1, 2 * s)),) * 2, (stride, stride),
                            (int(rng.integers(-s, 4)),) * 2, s)
        min_crop = float(rng.uniform(0.01, 1.0))
        i, j = rng.integers(0, h, 50), rng.integers(0, h, 50)
        boxes = crop_boxes(_loc(i, h), _loc(j, h), rf, min_crop=min_crop)
        x0, y0, x1, y1 = boxes.T
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= s).all() and (y1 <= s).all()
        side = min_side(min_crop, s)
        assert ((x1 - x0) >= side).all() and ((y1 - y0) >= side).all()
        for (bx0, by0, bx1, by1), ii, jj in zip(boxes, i, j):
            fy0, fx0, fy1, fx1 = rf.cell_box(int(ii), int(jj))
            fy0, fx0, fy1, fx1 = max(fy0, 0), max(fx0, 0), min(fy1, s), min(fx1, s)
            if fy1 > fy0 and fx1 > fx0:  # the clipped field is inside the box
                assert by0 <= fy0 and bx0 <= fx0 and by1 >= fy1 and bx1 >= fx1


def test_min_crop_is_checked():
    with pytest.raises(ValueError, match="min_crop"):
        crop_boxes(np.array([0.5]), np.array([0.5]), CONV4, min_crop=0.0)


def test_the_union_keeps_every_image_and_every_distinct_crop_once():
    rows = pd.DataFrame({"layer": ["a", "a", "b", "b", "b"], "unit": [0, 1, 0, 0, 1], "rank": [0, 0, 0, 1, 0],
                         "image_id": [9, 9, 4, 9, 9], "x0": [0, 0, 1, 0, 2], "y0": [0, 0, 1, 0, 2],
                         "x1": [8, 8, 5, 8, 6], "y1": [8, 8, 5, 8, 6]})
    plan = union_plan(rows)
    assert plan.images.tolist() == [4, 9]
    assert len(plan.crops) == 3  # (9, box 0-8) shared by three rows
    assert plan.rows["crop"].tolist() == [1, 1, 0, 1, 2]
    assert plan.image_crops(1).tolist() == [[0, 0, 8, 8], [2, 2, 6, 6]]
    back = plan.crops.iloc[plan.rows["crop"]][["image_id", "x0", "y0", "x1", "y1"]].to_numpy()
    assert (back == rows[["image_id", "x0", "y0", "x1", "y1"]].to_numpy()).all()


def test_cut_crops_scales_boxes_to_the_decoded_side():
    pixels = np.zeros((128, 128, 3), dtype=np.uint8)
    pixels[32:64, 64:96] = 255  # the model-input box x [32, 48), y [16, 32) at half the decoded side
    crops = cut_crops(pixels, np.array([[32, 16, 48, 32], [0, 0, 64, 64]]), input_size=64, out_size=(16, 16))
    assert crops.shape == (2, 16, 16, 3) and crops.dtype == np.uint8
    assert (crops[0] == 255).all()
    assert 0 < crops[1].mean() < 255
