"""Decode probe images into fixed-size RGB arrays, turning every failure into a `DecodeError`.

This is the CPU stage of the probe: bytes in, ``uint8`` arrays out. Bad input never raises anything but
`DecodeError`, so the Ray stage can record a failed row instead of losing the batch.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ALPHA_BACKGROUND", "DEFAULT_MAX_PIXELS", "RESIZE_MODES", "DecodeError", "decode_batch", "decode_image"]

DEFAULT_MAX_PIXELS = 89_478_485
"""Same as Pillow's default ``Image.MAX_IMAGE_PIXELS`` (about a 9459 × 9459 image)."""

RESIZE_MODES = ("shorter_center_crop", "stretch")

ALPHA_BACKGROUND = (128, 128, 128)
"""Mid-grey that transparent pixels are composited onto: it adds no colour and no extreme intensity."""

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
_GRAY_MODES = frozenset({"1", "L"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_RESAMPLE = Image.Resampling.BILINEAR
_EXIF_ORIENTATION = 0x0112


class DecodeError(Exception):
    """An input that cannot become an image array.

    Args:
        reason: short machine-friendly tag, one of ``empty_file``, ``missing``, ``not_an_image``,
            ``truncated``, ``corrupt``, ``too_many_pixels``, ``unsupported_mode``, ``unsupported_format``,
            ``degenerate_size``, ``out_of_memory`` (decoding) or ``not_a_file``, ``permission_denied``,
            ``read_error`` (reading, see `neuronscan.data.read_blob`; a dangling or looping symlink is
            ``missing: broken symlink: <path> -> <target> ...``).
        message: what went wrong, for a human.

    Example:
        >>> str(DecodeError("empty_file", "0 bytes"))
        'empty_file: 0 bytes'
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    def __reduce__(self):
        # Keep both fields when the error crosses a process boundary (Ray pickles exceptions).
        return (type(self), (self.reason, self.message))


def decode_image(
    data: bytes,
    *,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resize: str = "shorter_center_crop",
) -> np.ndarray:
    """Decode one encoded image into a ``(size, size, 3)`` ``uint8`` RGB array.

    Steps: the header is read first and ``width * height`` checked against ``max_pixels`` before any pixel
    is decoded; JPEGs are decoded at the smallest DCT scale that still covers ``size`` (``Image.draft``);
    EXIF orientation is applied; the colour mode is normalised to RGB; and the image is resized with
    bilinear filtering (Pillow's, antialiased when shrinking).

    Colour handling:
        - grayscale (``L``) and 1-bit (``1``) are replicated to three channels;
        - palette (``P``) is expanded, honouring its transparency;
        - alpha (``RGBA``, ``LA``, ``PA`` and any image with a transparency key) is composited onto the
          mid-grey `ALPHA_BACKGROUND` ``(128, 128, 128)``;
        - ``CMYK`` (including Adobe CMYK JPEGs) is converted with Pillow's conversion, without ICC profiles;
        - 16-bit (``I;16``, ``I;16B``) and 32-bit integer (``I``) grayscale are scaled by the bit range the
          pixels actually use: ``v * 255 / (2**b - 1)`` with ``b >= 8`` the smallest bit count holding the
          maximum, so 12-bit data in a 16-bit file maps 4095 to 255 and nothing is clipped; images with
          negative values are scaled min-max;
        - 32-bit float (``F``) in ``[0, 1]`` is scaled by 255, otherwise min-max; NaN becomes the minimum.

    Resize modes:
        - ``"shorter_center_crop"``: the centred square whose side is the shorter side is resized to
          ``size × size`` in one step (``Image.resize(box=...)``). This equals "shorter side to ``size``, then
          centre crop" but never materialises the long side, so a 1 × 5000 image costs ``size²`` pixels,
          not ``size × 5000·size``.
        - ``"stretch"``: the whole image is resized to ``size × size``, ignoring the aspect ratio.

    Multi-frame files (GIF, WebP, TIFF) give their first frame. Truncated files fail
    (``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set). Corrupt EXIF metadata does not
    fail an image whose pixels decode: the pixels are used as stored.

    Args:
        data: the encoded file content.
        size: side of the output square, in pixels (>= 1).
        max_pixels: largest ``width * height`` accepted, checked from the header. Pillow refuses on its own
            any image above ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (about 179 M pixels); raise that process-wide
            to go higher.
        resize: one of `RESIZE_MODES`.

    Returns:
        ``np.ndarray`` of shape ``(size, size, 3)``, dtype ``uint8``, RGB, C-contiguous and writable.

    Raises:
        DecodeError: for any input that cannot be decoded, with ``reason`` saying why.
        ValueError: if ``size``, ``max_pixels`` or ``resize`` are invalid (a caller bug, not bad input).

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buf = io.BytesIO()
        >>> Image.new("L", (64, 32), 200).save(buf, "PNG")
        >>> decode_image(buf.getvalue(), size=16).shape
        (16, 16, 3)
    """
    _check_options(size, max_pixels, resize)
    try:
        return _decode(data, size, max_pixels, resize)
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError("too_many_pixels", str(exc)) from exc
    except MemoryError as exc:
        raise DecodeError("out_of_memory", f"ran out of memory while decoding {len(data):,} bytes") from exc
    except Exception as exc:  # noqa: BLE001 - every decoder failure must become a failed row
        raise DecodeError("corrupt", f"{type(exc).__name__}: {exc}") from exc


def decode_batch(
    blobs: list[bytes | None],
    *,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resize: str = "shorter_center_crop",
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Decode a batch, one output row per input row whatever happens.

    Args:
        blobs: encoded images; ``None`` marks an input that could not be read (reason ``missing``).
        size, max_pixels, resize: as in `decode_image`.

    Returns:
        ``(images, ok, errors)``: ``images`` ``(n_images, size, size, 3)`` ``uint8`` with zeros in failed
        rows; ``ok`` ``(n_images,)`` bool; ``errors`` a list with ``None`` for decoded rows and
        ``"reason: message"`` for failed ones.

    Raises:
        ValueError: if ``size``, ``max_pixels`` or ``resize`` are invalid.

    Example:
        >>> images, ok, errors = decode_batch([None, b""], size=8)
        >>> images.shape, ok.tolist(), errors
        ((2, 8, 8, 3), [False, False], ['missing: no data for this input', 'empty_file: the file has 0 bytes'])
    """
    _check_options(size, max_pixels, resize)
    n_images = len(blobs)
    images = np.zeros((n_images, size, size, 3), dtype=np.uint8)
    ok = np.zeros(n_images, dtype=bool)
    errors: list[str | None] = [None] * n_images
    for i, blob in enumerate(blobs):
        try:
            if blob is None:
                raise DecodeError("missing", "no data for this input")
            images[i] = decode_image(blob, size=size, max_pixels=max_pixels, resize=resize)
            ok[i] = True
        except DecodeError as exc:
            errors[i] = str(exc)
    return images, ok, errors


def _check_options(size: int, max_pixels: int, resize: str) -> None:
    """Reject invalid decode settings (these are caller bugs, so they raise ValueError)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize!r}; expected one of {', '.join(RESIZE_MODES)}")


def _decode(data: bytes, size: int, max_pixels: int, resize: str) -> np.ndarray:
    """Decode without the outer exception translation."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("not_an_image", f"expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise DecodeError("empty_file", "the file has 0 bytes")

    with warnings.catch_warnings():
        # Our own max_pixels check below replaces Pillow's warning-level bomb check.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise DecodeError(
                "not_an_image", f"not a recognised image format ({len(data):,} bytes starting {bytes(data[:16])!r})"
            ) from exc
        except OSError as exc:
            raise DecodeError(_classify_os_error(exc), f"cannot read the image header: {exc}") from exc

    width, height = img.size
    if width * height > max_pixels:
        raise DecodeError(
            "too_many_pixels", f"{width} x {height} = {width * height:,} pixels exceeds max_pixels={max_pixels:,}"
        )
    if width < 1 or height < 1:
        raise DecodeError("degenerate_size", f"image is {width} x {height}")

    if img.format == "JPEG":
        img.draft("RGB", (size, size))
    try:
        img.load()
    except OSError as exc:
        raise DecodeError(_classify_os_error(exc), f"{img.format} pixel data: {exc}") from exc

    img = _apply_exif_orientation(img)
    if img.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(img, size, resize)
    img = _to_resizable_mode(img)
    img = img.resize((size, size), _RESAMPLE, box=_crop_box(img.size, resize))
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, ALPHA_BACKGROUND)
        background.paste(img, (0, 0), img)
        img = background
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


def _classify_os_error(exc: OSError) -> str:
    """Map a Pillow OSError to a DecodeError reason."""
    text = str(exc).lower()
    if "truncated" in text:
        return "truncated"
    if "decoder" in text and "not available" in text:
        return "unsupported_format"
    return "corrupt"


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says; keep the stored pixels if the metadata is unreadable."""
    try:
        # exif_transpose copies even an upright image, so only call it when there is work to do.
        if img.getexif().get(_EXIF_ORIENTATION, 1) in range(2, 9):
            return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - bad metadata must not lose good pixels
        pass
    return img


def _to_resizable_mode(img: Image.Image) -> Image.Image:
    """Convert to RGB, RGBA (with transparency) or L (grayscale, kept 1-channel until after resizing)."""
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return img if img.mode == "RGBA" else img.convert("RGBA")
    if img.mode in _GRAY_MODES:
        return img if img.mode == "L" else img.convert("L")
    if img.mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise DecodeError("unsupported_mode", f"cannot convert mode {img.mode!r} to RGB: {exc}") from exc


def _high_depth_to_rgb(img: Image.Image, size: int, resize: str) -> np.ndarray:
    """Scale 16/32-bit integer or float grayscale to 8 bits by its value range, resize, replicate to RGB."""
    values = np.asarray(img).astype(np.float32)
    finite = np.isfinite(values)
    if not finite.all():
        fill = float(values[finite].min()) if finite.any() else 0.0
        values[~finite] = fill
    low, high = float(values.min()), float(values.max())
    if img.mode == "F" and low >= 0.0 and high <= 1.0:
        offset, scale = 0.0, 255.0
    elif img.mode != "F" and low >= 0:
        bits = max(8, int(high).bit_length())
        offset, scale = 0.0, 255.0 / (2**bits - 1)
    else:
        offset, scale = low, (255.0 / (high - low) if high > low else 0.0)
    scaled = Image.fromarray(((values - offset) * scale).astype(np.float32, copy=False))
    scaled = scaled.resize((size, size), _RESAMPLE, box=_crop_box(scaled.size, resize))
    gray = np.clip(np.rint(np.asarray(scaled)), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _crop_box(image_size: tuple[int, int], resize: str) -> tuple[int, int, int, int]:
    """Source region to resize: the centred square on the shorter side, or the whole image."""
    width, height = image_size
    if resize == "stretch":
        return (0, 0, width, height)
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return (left, top, left + side, top + side)
