"""Probe folders and manifests salted with every kind of bad or odd input, and what each must decode to.

Used by the unit tests of `neuronscan.data` and by pipeline tests that check "processed + failed == inputs".
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

CLASSES = ("circle", "square", "triangle")
"""Class folders of a salted image folder (the concepts of its images)."""

EXIF_ORIENTATION = 0x0112

_COLUMNS = ["relpath", "kind", "expected", "expected_reason"]


def make_salted_folder(root: Path, n_good: int = 24, size: tuple[int, int] = (48, 40), seed: int = 0) -> pd.DataFrame:
    """Write an ImageNet-layout folder of valid images plus one file of every bad or odd kind.

    Layout: ``root/<class>/<file>`` with the classes in `CLASSES`, ``notes.txt`` directly under ``root`` (no
    class), and hidden entries (``.DS_Store``, ``circle/._good_000.png``, ``.cache/thumb.png``) that a lister
    must skip, so they are not in the returned frame.

    Args:
        root: folder to write into (created if needed).
        n_good: number of plain valid images (PNG and JPEG alternately), spread over the classes.
        size: ``(width, height)`` of the images.
        seed: seed of the pixel noise.

    Returns:
        DataFrame ``relpath, kind, expected, expected_reason`` sorted by ``relpath``: every file a lister must
        return. ``expected`` is ``'ok'`` or ``'failed'``; ``expected_reason`` is the `DecodeError` reason (None
        when ok) when decoding with any ``max_pixels`` from 50,000,000 up to Pillow's default.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    width, height = size
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str | None]] = []

    def put(relpath: str, data: bytes, kind: str, reason: str | None = None) -> None:
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows.append((relpath, kind, "ok" if reason is None else "failed", reason))

    for i in range(n_good):
        fmt, ext = ("PNG", "png") if i % 2 == 0 else ("JPEG", "jpg")
        put(f"{CLASSES[i % len(CLASSES)]}/good_{i:03d}.{ext}", encode(noise_rgb(rng, width, height), fmt), "good")

    odd_ok = [
        ("cmyk.jpg", "cmyk_jpeg", encode(Image.new("CMYK", (width, height), (0, 255, 255, 0)), "JPEG")),
        ("gray16.png", "png_16bit", encode(gradient_16bit(width, height), "PNG")),
        ("gray16_big_endian.tif", "tiff_16bit_big_endian", encode(gradient_16bit(width, height, ">u2"), "TIFF")),
        ("float32.tif", "tiff_float32", encode(gradient_float(width, height), "TIFF")),
        ("palette_transparent.png", "palette_transparency", _palette_with_transparency(width, height)),
        ("rgba.png", "rgba_png", encode(Image.new("RGBA", (width, height), (255, 0, 0, 0)), "PNG")),
        ("la.png", "la_png", encode(Image.new("LA", (width, height), (200, 0)), "PNG")),
        ("gray.jpg", "gray_jpeg", encode(noise_rgb(rng, width, height).convert("L"), "JPEG")),
        ("bilevel.png", "bilevel_png", encode(noise_rgb(rng, width, height).convert("1"), "PNG")),
        ("tall_1x2000.png", "aspect_1x2000", encode(noise_rgb(rng, 1, 2000), "PNG")),
        ("wide_3000x2.png", "aspect_3000x2", encode(noise_rgb(rng, 3000, 2), "PNG")),
        ("tiny_1x1.png", "tiny_1x1", encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG")),
        ("rgb.tif", "tiff", encode(noise_rgb(rng, width, height), "TIFF")),
        ("image.webp", "webp", encode(noise_rgb(rng, width, height), "WEBP")),
        ("image.gif", "gif", encode(noise_rgb(rng, width, height).convert("P"), "GIF")),
        ("exif_rotated.jpg", "exif_rotated_jpeg", exif_rotated_jpeg(width, height)),
    ]
    for i, (name, kind, data) in enumerate(odd_ok):
        put(f"{CLASSES[i % len(CLASSES)]}/{name}", data, kind)

    valid_jpeg = encode(noise_rgb(rng, width, height), "JPEG", quality=95)
    valid_png = encode(noise_rgb(rng, width, height), "PNG")
    bad = [
        ("circle/corrupt.jpg", "random_bytes_jpg", _random_non_image_bytes(rng), "not_an_image"),
        ("square/truncated.jpg", "truncated_jpeg", valid_jpeg[: len(valid_jpeg) // 2], "truncated"),
        ("triangle/truncated.png", "truncated_png", valid_png[: len(valid_png) // 2], "truncated"),
        ("circle/empty.jpg", "empty_file", b"", "empty_file"),
        ("notes.txt", "text_file", b"probe set notes: 24 images, 3 classes\n", "not_an_image"),
        ("square/error_page.jpg", "html_as_jpg", b"<!DOCTYPE html><html><body>403 Forbidden</body></html>\n",
         "not_an_image"),
        ("triangle/bomb_20000x20000.png", "bomb_png", bilevel_png_bomb(20_000, 20_000), "too_many_pixels"),
        ("circle/bomb_12000x12000.png", "bomb_png_header", bilevel_png_bomb(12_000, 12_000), "too_many_pixels"),
    ]
    for relpath, kind, data, reason in bad:
        put(relpath, data, kind, reason)

    # Symlinked dataset trees: a link to a good image reads through; a dangling link is an input that fails.
    (root / "circle" / "link_to_good.png").symlink_to(root / CLASSES[0] / "good_000.png")
    rows.append(("circle/link_to_good.png", "symlink", "ok", None))
    (root / "square" / "dangling_link.jpg").symlink_to(root / "gone" / "missing.jpg")
    rows.append(("square/dangling_link.jpg", "dangling_symlink", "failed", "missing"))

    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "circle" / "._good_000.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / ".cache").mkdir(exist_ok=True)
    (root / ".cache" / "thumb.png").write_bytes(encode(noise_rgb(rng, 4, 4), "PNG"))

    return pd.DataFrame(rows, columns=_COLUMNS).sort_values("relpath", ignore_index=True)


def make_manifest_with_missing(
    root: Path, n_good: int = 4, size: tuple[int, int] = (48, 40), seed: int = 0
) -> pd.DataFrame:
    """Write ``n_good`` images under ``root/images`` and return a manifest that also has bad rows.

    Rows: ``n_good`` valid images; a URI to a file that does not exist; a null URI; and a second row for the
    first image's URI (a duplicate URI with its own ``image_id``). ``image_id`` starts at 100 so that tests can
    tell kept ids from assigned ones.

    Returns:
        DataFrame ``image_id, uri, concepts, expected, expected_reason`` (the last two are for tests; a
        manifest reader ignores them). Write it with `write_manifest`.
    """
    images = Path(root) / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_good):
        path = images / f"img_{i:03d}.png"
        path.write_bytes(encode(noise_rgb(rng, *size), "PNG"))
        rows.append((str(path), [CLASSES[i % len(CLASSES)], "shape"], "ok", None))
    rows.append((str(images / "does_not_exist.png"), ["circle"], "failed", "missing"))
    rows.append((None, [], "failed", "missing"))
    rows.append((rows[0][0], list(rows[0][1]), "ok", None))
    frame = pd.DataFrame(rows, columns=["uri", "concepts", "expected", "expected_reason"])
    frame.insert(0, "image_id", np.arange(100, 100 + len(frame), dtype=np.int64))
    return frame


def write_manifest(frame: pd.DataFrame, path: Path) -> Path:
    """Write a manifest as Parquet, CSV (concepts joined by ``|``) or JSONL, chosen by ``path``'s suffix."""
    path = Path(path)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        out = frame.copy()
        if "concepts" in out.columns:
            out["concepts"] = ["|".join(c) for c in out["concepts"]]
        out.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        with path.open("w") as f:
            for record in frame.to_dict("records"):
                clean = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in record.items()}
                f.write(json.dumps(clean, default=_json_default) + "\n")
    else:
        raise ValueError(f"unsupported manifest suffix {path.suffix!r}; use .parquet, .csv or .jsonl")
    return path


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    """Encode a PIL image to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise_rgb(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """RGB image of a colour gradient plus noise (so JPEG/PNG data is not trivially small)."""
    ramp = np.linspace(0, 160, width, dtype=np.float64)[None, :, None]
    noise = rng.integers(0, 96, (height, width, 3))
    return Image.fromarray((ramp + noise).astype(np.uint8), "RGB")


def gradient_16bit(width: int, height: int, dtype: str = "<u2") -> Image.Image:
    """12-bit data (0..4095) in a 16-bit grayscale image, rising left to right."""
    row = np.linspace(0, 4095, width).round()
    return Image.fromarray(np.tile(row, (height, 1)).astype(dtype))


def gradient_float(width: int, height: int) -> Image.Image:
    """32-bit float grayscale in [0, 1], rising left to right."""
    row = np.linspace(0.0, 1.0, width, dtype=np.float32)
    return Image.fromarray(np.tile(row, (height, 1)))


def exif_rotated_jpeg(width: int, height: int) -> bytes:
    """JPEG stored with red left half and blue right half, EXIF orientation 6 (display rotated 90° clockwise).

    Displayed correctly it is ``height × width`` with red on top and blue at the bottom.
    """
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return encode(Image.fromarray(pixels, "RGB"), "JPEG", quality=95, exif=exif.tobytes())


def bilevel_png_bomb(width: int, height: int) -> bytes:
    """A real, valid all-black 1-bit PNG of ``width × height``, tiny on disk (written row by row, never in RAM)."""
    row = b"\x00" + bytes((width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _palette_with_transparency(width: int, height: int) -> bytes:
    """Palette PNG: index 0 (red) fully transparent on the left half, index 1 (blue) opaque on the right."""
    indices = np.zeros((height, width), dtype=np.uint8)
    indices[:, width // 2 :] = 1
    image = Image.fromarray(indices, "P")
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    return encode(image, "PNG", transparency=0)


def _random_non_image_bytes(rng: np.random.Generator) -> bytes:
    """Random bytes that no image format claims (re-drawn in the rare case a lenient format accepts them)."""
    while True:
        data = rng.bytes(4096)
        try:
            Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            return data


def _json_default(value):
    """JSON for numpy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
