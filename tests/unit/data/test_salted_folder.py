"""The salted probe folder end to end: list, read, decode; every file ends as expected and none is lost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuronscan.data import DecodeError, decode_batch, decode_image, list_image_folder, read_blob, read_manifest
from tests.salted_images import CLASSES, make_manifest_with_missing, make_salted_folder, write_manifest

SIZE = 32
MAX_PIXELS = 50_000_000

REQUIRED_KINDS = {
    "good", "random_bytes_jpg", "truncated_jpeg", "truncated_png", "empty_file", "text_file", "html_as_jpg",
    "cmyk_jpeg", "png_16bit", "palette_transparency", "rgba_png", "la_png", "gray_jpeg", "bilevel_png",
    "aspect_1x2000", "aspect_3000x2", "bomb_png", "tiff", "webp", "exif_rotated_jpeg", "symlink", "dangling_symlink",
}


@pytest.fixture(scope="module")
def salted(tmp_path_factory):
    root = tmp_path_factory.mktemp("salted")
    return root, make_salted_folder(root)


def _decode_listing(listing):
    blobs, read_errors = [], []
    for uri in listing["uri"]:
        try:
            blobs.append(read_blob(uri))
            read_errors.append(None)
        except DecodeError as exc:
            blobs.append(None)
            read_errors.append(str(exc))
    images, ok, errors = decode_batch(blobs, size=SIZE, max_pixels=MAX_PIXELS)
    return images, ok, [r or e for r, e in zip(read_errors, errors, strict=True)]


def test_salted_folder_has_every_kind_and_small_files(salted):
    root, frame = salted
    assert REQUIRED_KINDS <= set(frame["kind"])
    assert (frame["kind"] == "good").sum() == 24
    assert set(frame["expected"]) == {"ok", "failed"}
    assert frame["relpath"].is_unique
    assert max((root / rel).lstat().st_size for rel in frame["relpath"]) < 1_000_000


def test_listing_returns_exactly_the_salted_files(salted):
    root, frame = salted
    listing = list_image_folder(str(root))
    assert [uri[len(str(root)) + 1 :] for uri in listing["uri"]] == frame["relpath"].tolist()
    classes = [[rel.split("/")[0]] if "/" in rel else [] for rel in frame["relpath"]]
    assert listing["concepts"].tolist() == classes
    assert {c for cs in classes for c in cs} == set(CLASSES)


@pytest.mark.parametrize("max_pixels", [MAX_PIXELS, 89_478_485])
def test_every_salted_file_decodes_or_fails_as_expected(salted, max_pixels):
    root, frame = salted
    for row in frame.itertuples():
        if row.kind == "dangling_symlink":  # fails when read, before any decoding
            with pytest.raises(DecodeError, match="broken symlink") as info:
                read_blob(str(root / row.relpath))
            assert info.value.reason == row.expected_reason
            continue
        data = read_blob(str(root / row.relpath))
        if row.expected == "ok":
            out = decode_image(data, size=SIZE, max_pixels=max_pixels)
            assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8, row.kind
        else:
            with pytest.raises(DecodeError) as info:
                decode_image(data, size=SIZE, max_pixels=max_pixels)
            assert info.value.reason == row.expected_reason, (row.kind, str(info.value))


def test_pipeline_over_salted_folder_loses_nothing(salted):
    root, frame = salted
    listing = list_image_folder(str(root))
    images, ok, errors = _decode_listing(listing)
    assert images.shape == (len(frame), SIZE, SIZE, 3)
    assert ok.sum() + (~ok).sum() == len(listing) == len(frame)
    assert ok.tolist() == (frame["expected"] == "ok").tolist()
    reasons = [e.split(":")[0] if e else None for e in errors]
    assert reasons == [r if isinstance(r, str) else None for r in frame["expected_reason"]]
    assert (images[~ok] == 0).all()


def test_salted_odd_images_decode_to_sensible_pixels(salted):
    root, frame = salted
    by_kind = frame.set_index("kind")["relpath"]

    def decoded(kind, **kwargs):
        return decode_image((root / by_kind[kind]).read_bytes(), size=SIZE, **kwargs).astype(int)

    for kind in ["png_16bit", "tiff_16bit_big_endian", "tiff_float32"]:
        gray = decoded(kind, resize="stretch")[..., 0]
        assert gray.min() < 40 and gray.max() > 215 and 100 < gray.mean() < 155, kind
    rotated = decoded("exif_rotated_jpeg", resize="stretch")
    assert rotated[0, :, 0].mean() > 200 and rotated[-1, :, 2].mean() > 200
    assert (decoded("rgba_png") == 128).all() and (decoded("la_png") == 128).all()
    assert (decoded("tiny_1x1") == [10, 200, 30]).all()


def test_manifest_with_missing_and_duplicate_uris(tmp_path):
    expected = make_manifest_with_missing(tmp_path)
    listing = read_manifest(str(write_manifest(expected, tmp_path / "manifest.jsonl")))
    images, ok, errors = _decode_listing(listing)
    assert len(ok) == len(expected)
    assert ok.tolist() == (expected["expected"] == "ok").tolist()
    assert [e.split(":")[0] for e, good in zip(errors, ok) if not good] == ["missing", "missing"]
    np.testing.assert_array_equal(images[0], images[-1])  # the duplicate URI decodes like its original
    assert pd.Series(listing["image_id"]).is_unique
