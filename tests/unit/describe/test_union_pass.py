"""The union pass in one process: each image decoded once, every (unit, rank) gets the embedding of its own crop.

The actor's CLIP is replaced by a stand-in whose "embedding" of a crop is its mean colour, so the test can say which
crop each row got; decoding is the probe's, counted.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from neuronscan.describe import union_plan

SIZE = 32


@pytest.fixture
def images(tmp_path):
    """Six 32² images, each a different colour left and right of its middle column."""
    rng = np.random.default_rng(0)
    uris = {}
    for image_id in range(6):
        pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
        pixels[:, : SIZE // 2] = rng.integers(0, 256, 3)
        pixels[:, SIZE // 2 :] = rng.integers(0, 256, 3)
        path = tmp_path / f"{image_id}.png"
        Image.fromarray(pixels).save(path)
        uris[image_id] = str(path)
    return uris


def _rows() -> pd.DataFrame:
    """Two layers whose units share images and boxes: 24 rows, 6 images, 12 distinct crops (a half and the whole)."""
    left, right, whole = (0, 0, 16, 32), (16, 0, 32, 32), (0, 0, 32, 32)
    spec = []
    for layer in ("a:mean", "a:max"):
        for unit in range(4):
            for rank in range(3):
                image = (unit + rank) % 6
                box = whole if layer == "a:max" else (left if (unit + rank) % 2 else right)
                spec.append((layer, unit, rank, image, *box))
    return pd.DataFrame(spec, columns=["layer", "unit", "rank", "image_id", "x0", "y0", "x1", "y1"])


def test_each_image_is_decoded_once_and_every_row_gets_its_crop(images, monkeypatch):
    import pipelines.probe as probe
    from neuronscan import clip
    from pipelines.describe import DescribeActor, DescribePlan, _chunks, assemble

    decoded: Counter[int] = Counter()
    real_decode = probe.decode_images

    def counting_decode(batch, **kwargs):
        decoded.update(int(i) for i in batch["image_id"])
        return real_decode(batch, **kwargs)

    def mean_colour(_bundle, crops, batch_size=64):
        emb = crops.reshape(len(crops), -1, 3).mean(axis=1).astype(np.float32) + 1.0
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)

    monkeypatch.setattr(probe, "decode_images", counting_decode)
    monkeypatch.setattr(clip, "embed_images", mean_colour, raising=False)
    rows = _rows()
    union = union_plan(rows)
    plan = DescribePlan(["a:mean", "a:max"], {}, union, images, SIZE, SIZE, {}, ["x"], 3)
    chunks = _chunks(plan, 4, {"size": SIZE, "max_pixels": 10**8, "resize": "shorter_center_crop"})
    assert len(chunks) == 2 and sum(len(c["image_ids"]) for c in chunks) == 6
    actor = DescribeActor.__new__(DescribeActor)  # no CLIP to load: the stand-in embeds
    actor.bundle = SimpleNamespace(image_size=(4, 4), embed_dim=3)
    actor.input_size, actor.batch_size = SIZE, 64
    results = [actor.embed(c) for c in chunks]

    assert decoded == Counter(range(6)) and len(union.crops) == 12 < len(rows) == 24
    row_emb, errors, decodes = assemble(union, results, 3)
    assert errors == {} and decodes.tolist() == [1] * 6
    for row, emb in zip(rows.itertuples(index=False), row_emb):
        pixels = np.asarray(Image.open(images[row.image_id]).convert("RGB"))
        crop = pixels[row.y0 : row.y1, row.x0 : row.x1]
        want = mean_colour(None, crop[None])[0]
        np.testing.assert_allclose(emb, want, atol=1e-2)


def test_an_unreadable_image_fails_its_crops_only(images, monkeypatch):
    from neuronscan import clip
    from pipelines.describe import DescribeActor, DescribePlan, _chunks, assemble

    monkeypatch.setattr(clip, "embed_images", lambda _b, crops, batch_size=64: np.ones((len(crops), 3), np.float32),
                        raising=False)
    images = {**images, 2: images[2] + ".gone"}
    union = union_plan(_rows())
    plan = DescribePlan(["a:mean", "a:max"], {}, union, images, SIZE, SIZE, {}, ["x"], 3)
    actor = DescribeActor.__new__(DescribeActor)
    actor.bundle = SimpleNamespace(image_size=(4, 4), embed_dim=3)
    actor.input_size, actor.batch_size = SIZE, 64
    chunks = _chunks(plan, 6, {"size": SIZE, "max_pixels": 10**8, "resize": "shorter_center_crop"})
    row_emb, errors, _ = assemble(union, [actor.embed(c) for c in chunks], 3)
    lost = (union.rows["image_id"] == 2).to_numpy()
    assert list(errors) == [2] and errors[2].startswith("missing")
    assert np.isnan(row_emb[lost]).all() and np.isfinite(row_emb[~lost]).all()
