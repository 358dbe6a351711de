"""The shapes world: a deterministic synthetic image set with known concepts.

Every image shows one shape of one colour and one texture on one background, so each image has exactly one
leaf concept per attribute (``shape``, ``colour``, ``texture``, ``background``). Position, size, colour jitter,
pattern angle and phase vary at random; shapes are turned at most 20° from upright (with free rotation, each
shape's evidence in a small CNN spreads over many orientation-specific units, and fewer concepts get a unit of
their own). Backgrounds are grey, so colour is a property of the shape only. The leaves sit under a small
concept hierarchy (``round``/``angular``, ``warm``/``cool``, ``patterned``) whose roots are the attribute
names, so scorers can propagate labels to ancestors and report the depth at which a unit's best concept lives.

Everything is drawn with PIL (shape masks) and numpy (backgrounds, textures) from one
``numpy.random.Generator``: the same seed gives byte-identical images and Parquet files.

Example:
    >>> import numpy as np
    >>> from neuronscan.demo.shapes import render, sample_attributes
    >>> rng = np.random.default_rng(0)
    >>> image = render(sample_attributes(rng), rng)
    >>> image.shape, image.dtype
    ((64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

import difflib
import json
import shutil
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from neuronscan.io import HIERARCHY_SCHEMA, INPUTS_SCHEMA, LABELS_SCHEMA

__all__ = [
    "ATTRIBUTES",
    "CONCEPTS",
    "HIERARCHY",
    "ancestors",
    "concept_depth",
    "all_concepts",
    "sample_attributes",
    "render",
    "render_dataset",
    "render_with_mask",
    "generate_shapes_world",
    "BOXES_SCHEMA",
    "OBJECT_ATTRIBUTES",
    "mask_box",
    "mask_to_rle",
    "rle_to_mask",
]

# Bump when the drawing code changes, so an existing world on disk is regenerated rather than trusted.
WORLD_FORMAT_VERSION = 1

ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "texture", "background")

CONCEPTS: dict[str, list[str]] = {
    "shape": ["circle", "ellipse", "square", "triangle", "star", "cross"],
    "colour": ["red", "orange", "yellow", "green", "blue", "purple"],
    "texture": ["plain", "striped", "dotted", "checkered"],
    "background": ["light", "dark", "noise", "gradient"],
}

# (child, parent) edges. The attribute names are the roots: every image is positive for all four, so they
# carry no signal of their own but give every leaf a well-defined depth (leaf under a group: 2, else 1).
HIERARCHY: list[tuple[str, str]] = [
    ("circle", "round"),
    ("ellipse", "round"),
    ("square", "angular"),
    ("triangle", "angular"),
    ("star", "angular"),
    ("cross", "angular"),
    ("red", "warm"),
    ("orange", "warm"),
    ("yellow", "warm"),
    ("green", "cool"),
    ("blue", "cool"),
    ("purple", "cool"),
    ("striped", "patterned"),
    ("dotted", "patterned"),
    ("checkered", "patterned"),
    ("round", "shape"),
    ("angular", "shape"),
    ("warm", "colour"),
    ("cool", "colour"),
    ("plain", "texture"),
    ("patterned", "texture"),
    ("light", "background"),
    ("dark", "background"),
    ("noise", "background"),
    ("gradient", "background"),
]

_BASE_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (235, 215, 35),
    "green": (40, 165, 55),
    "blue": (40, 80, 215),
    "purple": (140, 50, 185),
}
_COLOUR_JITTER = 18  # per channel, uniform in [-j, j]; small enough that hues never cross
_SHADE = 0.5  # texture marks are the shape colour darkened to this fraction
_MAX_ROTATION = 20.0  # degrees either side of the upright pose
# Angle (radians) that turns each outline below into its upright pose: square on an edge, triangle and star
# pointing up (image y grows downwards).
_UPRIGHT = {"circle": 0.0, "ellipse": 0.0, "square": np.pi / 4, "triangle": -np.pi / 2, "star": -np.pi / 2,
            "cross": 0.0}


def all_concepts() -> list[str]:
    """Every concept of the world: the leaves in attribute order, then the inner nodes and roots.

    Example:
        >>> len(all_concepts())
        29
    """
    leaves = [name for attribute in ATTRIBUTES for name in CONCEPTS[attribute]]
    inner: list[str] = []
    for _, parent in HIERARCHY:
        if parent not in inner and parent not in leaves:
            inner.append(parent)
    return leaves + inner


@cache
def _parents() -> dict[str, tuple[str, ...]]:
    parents: dict[str, list[str]] = {}
    for child, parent in HIERARCHY:
        parents.setdefault(child, []).append(parent)
    return {child: tuple(ps) for child, ps in parents.items()}


def _check_concept(concept: str) -> None:
    known = all_concepts()
    if concept not in known:
        close = difflib.get_close_matches(str(concept), known, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown shapes-world concept {concept!r}{hint} Known concepts: {', '.join(known)}")


def ancestors(concept: str) -> set[str]:
    """All transitive parents of ``concept`` in :data:`HIERARCHY` (the concept itself excluded).

    Raises:
        ValueError: ``concept`` is not a shapes-world concept.

    Example:
        >>> sorted(ancestors("red"))
        ['colour', 'warm']
    """
    _check_concept(concept)
    parents = _parents()
    seen: set[str] = set()
    stack = list(parents.get(concept, ()))
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(parents.get(node, ()))
    return seen


def concept_depth(concept: str) -> int:
    """Length of the longest path from ``concept`` up to a root (roots have depth 0).

    Example:
        >>> concept_depth("red"), concept_depth("plain"), concept_depth("shape")
        (2, 1, 0)
    """
    _check_concept(concept)
    parents = _parents()

    def depth(node: str) -> int:
        return max((1 + depth(p) for p in parents.get(node, ())), default=0)

    return depth(concept)


def sample_attributes(rng: np.random.Generator) -> dict[str, str]:
    """Draw one leaf concept per attribute, uniformly and independently.

    Example:
        >>> sorted(sample_attributes(np.random.default_rng(0)))
        ['background', 'colour', 'shape', 'texture']
    """
    return {attribute: CONCEPTS[attribute][int(rng.integers(len(CONCEPTS[attribute])))] for attribute in ATTRIBUTES}


def _validate_attrs(attrs: dict) -> None:
    if not isinstance(attrs, dict):
        raise TypeError(f"attrs must be a dict mapping {list(ATTRIBUTES)} to concept names, got {type(attrs).__name__}")
    missing = [a for a in ATTRIBUTES if a not in attrs]
    extra = sorted(set(attrs) - set(ATTRIBUTES))
    if missing or extra:
        raise ValueError(
            f"attrs must have exactly the keys {list(ATTRIBUTES)}; missing {missing}, unexpected {extra}"
        )
    for attribute in ATTRIBUTES:
        if attrs[attribute] not in CONCEPTS[attribute]:
            raise ValueError(
                f"unknown {attribute} {attrs[attribute]!r}; expected one of {CONCEPTS[attribute]}"
            )


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16 pixels, got {size!r}")
    return int(size)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    return xs, ys


def _outline(shape: str, rng: np.random.Generator, size: int) -> list[tuple[float, float]]:
    """Polygon vertices of a randomly placed, sized and rotated shape."""
    radius = rng.uniform(0.18, 0.34) * size
    cx = rng.uniform(radius + 1, size - 1 - radius)
    cy = rng.uniform(radius + 1, size - 1 - radius)
    theta = _UPRIGHT[shape] + np.deg2rad(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        px, py = radius * np.cos(t), radius * np.sin(t)
    elif shape == "ellipse":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        px, py = radius * np.cos(t), radius * rng.uniform(0.45, 0.65) * np.sin(t)
    elif shape == "star":
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        r = np.where(np.arange(10) % 2 == 0, radius, 0.42 * radius)
        px, py = r * np.cos(t), r * np.sin(t)
    elif shape == "cross":
        arm = 0.34 * radius  # half-width of the arms
        px = np.array([arm, arm, radius, radius, arm, arm, -arm, -arm, -radius, -radius, -arm, -arm])
        py = np.array([radius, arm, arm, -arm, -arm, -radius, -radius, -arm, -arm, arm, arm, radius])
    else:
        n_sides = {"square": 4, "triangle": 3}[shape]
        t = np.linspace(0, 2 * np.pi, n_sides, endpoint=False)
        px, py = radius * np.cos(t), radius * np.sin(t)
    cos, sin = np.cos(theta), np.sin(theta)
    xs = cx + cos * px - sin * py
    ys = cy + sin * px + cos * py
    return list(zip(xs.tolist(), ys.tolist()))


def _background(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Achromatic (size, size) grey levels in [0, 255], so backgrounds never carry a colour concept."""
    if kind == "light":
        return np.full((size, size), rng.uniform(185, 240))
    if kind == "dark":
        return np.full((size, size), rng.uniform(10, 55))
    if kind == "noise":
        return rng.uniform(70, 170) + rng.uniform(-75, 75, size=(size, size))
    xs, ys = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xs - size / 2) + np.sin(angle) * (ys - size / 2)) / size + 0.5
    lo, hi = rng.uniform(10, 80), rng.uniform(175, 245)
    return lo + (hi - lo) * np.clip(ramp, 0.0, 1.0)


def _texture_marks(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Boolean (size, size) mask of the pixels drawn in the darker shade."""
    if kind == "plain":
        return np.zeros((size, size), dtype=bool)
    xs, ys = _grid(size)
    scale = size / 64  # periods below are in pixels of a 64² image
    angle = rng.uniform(0, np.pi)
    u = np.cos(angle) * xs + np.sin(angle) * ys
    v = -np.sin(angle) * xs + np.cos(angle) * ys
    if kind == "striped":
        period = rng.uniform(6.0, 9.0) * scale
        return ((u / period + rng.uniform()) % 1.0) < 0.5
    if kind == "checkered":
        period = rng.uniform(5.0, 8.0) * scale
        cells = np.floor(u / period + rng.uniform()) + np.floor(v / period + rng.uniform())
        return (cells % 2) == 0
    period = rng.uniform(7.0, 10.0) * scale
    du = (u / period + rng.uniform()) % 1.0 - 0.5
    dv = (v / period + rng.uniform()) % 1.0 - 0.5
    return du * du + dv * dv < 0.3**2


def render(attrs: dict, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Draw one image with the given leaf concepts; geometry, jitter and pattern phase come from ``rng``.

    Args:
        attrs: one concept per attribute, e.g. ``{"shape": "star", "colour": "red", "texture": "dotted",
            "background": "noise"}`` (see :data:`CONCEPTS`).
        rng: source of every random choice; the same generator state gives the same pixels.
        size: image side in pixels (at least 16).

    Returns:
        ``uint8`` array of shape ``(size, size, 3)``, RGB.

    Raises:
        ValueError: missing/unknown attribute or concept, or ``size`` < 16.

    Example:
        >>> attrs = {"shape": "star", "colour": "red", "texture": "dotted", "background": "noise"}
        >>> render(attrs, np.random.default_rng(0), size=32).shape
        (32, 32, 3)
    """
    return render_with_mask(attrs, rng, size)[0]


def render_with_mask(attrs: dict, rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render`, and the object's mask: the same pixels from the same generator draws.

    Returns:
        ``image``: ``uint8 (size, size, 3)``, identical to ``render(attrs, rng, size)`` for the same ``rng``
        state; ``mask``: ``bool (size, size)``, True where the shape was drawn.

    Example:
        >>> attrs = {"shape": "square", "colour": "blue", "texture": "plain", "background": "dark"}
        >>> image, mask = render_with_mask(attrs, np.random.default_rng(0), size=32)
        >>> mask.shape, bool(mask.any()), bool(mask.all())
        ((32, 32), True, False)
    """
    _validate_attrs(attrs)
    size = _check_size(size)

    outline = _outline(attrs["shape"], rng, size)
    mask_image = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask_image).polygon(outline, fill=255)
    inside = np.asarray(mask_image) > 0

    base = np.asarray(_BASE_RGB[attrs["colour"]], dtype=np.float64)
    colour = np.clip(base + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, size=3), 0, 255)
    marks = _texture_marks(attrs["texture"], rng, size)
    fill = np.where(marks[..., None], colour * _SHADE, colour)

    background = _background(attrs["background"], rng, size)
    image = np.where(inside[..., None], fill, background[..., None])
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), inside


def render_dataset(
    n_images: int, rng: np.random.Generator, size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n_images`` in memory, drawing attributes and pixels from ``rng`` in the same order as
    :func:`generate_shapes_world`, so ``rng = np.random.default_rng(seed)`` reproduces that world's images.

    Returns:
        ``images``: ``uint8 (n_images, size, size, 3)``; ``labels``: ``int64 (n_images, 4)``, column ``j`` the
        index of the image's concept in ``CONCEPTS[ATTRIBUTES[j]]``.

    Raises:
        ValueError: ``n_images`` < 1 or ``size`` < 16.

    Example:
        >>> images, labels = render_dataset(4, np.random.default_rng(0), size=32)
        >>> images.shape, labels.shape
        ((4, 32, 32, 3), (4, 4))
    """
    n_images, size = _check_positive_int("n_images", n_images), _check_size(size)
    images = np.empty((n_images, size, size, 3), dtype=np.uint8)
    labels = np.empty((n_images, len(ATTRIBUTES)), dtype=np.int64)
    for i in range(n_images):
        attrs = sample_attributes(rng)
        images[i] = render(attrs, rng, size)
        labels[i] = [CONCEPTS[a].index(attrs[a]) for a in ATTRIBUTES]
    return images, labels


# The attributes that belong to the drawn object (and so get its box and mask in boxes.parquet); the background
# is the rest of the image, not an object.
OBJECT_ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "texture")

BOXES_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("concept", pa.string()),
        ("x0", pa.int32()),
        ("y0", pa.int32()),
        ("x1", pa.int32()),
        ("y1", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("mask_rle", pa.list_(pa.int32())),
    ]
)
"""``boxes.parquet``: one row per (image, object concept). ``x0, y0, x1, y1`` are a half-open pixel box
(columns ``x0 … x1 - 1``, rows ``y0 … y1 - 1``); ``width, height`` the image's size; ``mask_rle`` the object's
mask as :func:`mask_to_rle` writes it."""


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Half-open bounding box ``(x0, y0, x1, y1)`` of the True pixels of a 2-D mask (all zeros when it has none).

    Example:
        >>> m = np.zeros((4, 6), dtype=bool); m[1:3, 2:5] = True
        >>> mask_box(m)
        (2, 1, 5, 3)
    """
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return (0, 0, 0, 0)
    return (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Run lengths of a 2-D mask in row-major order, alternating False/True runs, starting with False.

    The first run may be 0 (a mask whose first pixel is True); the runs sum to ``height * width``.

    Example:
        >>> mask_to_rle(np.array([[0, 1, 1], [1, 0, 0]], dtype=bool))
        [1, 3, 2]
    """
    flat = np.asarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """Inverse of :func:`mask_to_rle`: a ``bool (height, width)`` mask.

    Raises:
        ValueError: the runs do not sum to ``height * width`` or one is negative.

    Example:
        >>> rle_to_mask([1, 3, 2], 2, 3).astype(int).tolist()
        [[0, 1, 1], [1, 0, 0]]
    """
    runs = np.asarray(list(rle), dtype=np.int64)
    if (runs < 0).any() or int(runs.sum()) != height * width:
        raise ValueError(f"run lengths must be >= 0 and sum to {height} x {width} = {height * width}, "
                         f"got sum {int(runs.sum())}")
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(height, width)


_OUTPUTS = ("manifest.parquet", "labels.parquet", "hierarchy.parquet", "boxes.parquet")


def _world_params(n_images: int, seed: int, size: int) -> dict:
    return {"format_version": WORLD_FORMAT_VERSION, "n_images": n_images, "seed": seed, "size": size}


def _read_world_json(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / "world.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def generate_shapes_world(
    out_dir: str | Path, n_images: int = 2000, seed: int = 0, size: int = 64
) -> pd.DataFrame:
    """Render a shapes world to disk, or reuse the one already there if it was made with the same parameters.

    Writes under ``out_dir``:

    - ``images/<shape>/<image_id:06d>.png`` (RGB, ``size`` × ``size``);
    - ``manifest.parquet``: ``image_id int64, uri string`` (absolute path), ``concepts list<string>`` — the
      image's four leaf concepts in the order shape, colour, texture, background;
    - ``labels.parquet``: long format ``image_id int64, concept string``, leaf concepts only (scorers propagate
      ancestors from the hierarchy);
    - ``hierarchy.parquet``: ``concept string, parent string`` edges (:data:`HIERARCHY`);
    - ``boxes.parquet`` (:data:`BOXES_SCHEMA`): per image one row for each of the object's concepts (its shape,
      colour and texture, :data:`OBJECT_ATTRIBUTES`) with the object's pixel box and run-length mask;
    - ``world.json``: the parameters, written last, so a crashed run is regenerated instead of trusted.

    The same ``seed`` gives byte-identical files (the manifest's absolute ``uri`` values aside, when written to
    another directory). Image ``i`` depends only on the generator state after images
    ``0..i-1``, so a larger world with the same seed starts with the smaller one's images.

    Args:
        out_dir: directory to write (created if missing). If it holds a different shapes world, that world's
            files are replaced.
        n_images: number of images (>= 1).
        seed: seed of ``numpy.random.default_rng``.
        size: image side in pixels (>= 16).

    Returns:
        The manifest as a DataFrame (columns ``image_id``, ``uri``, ``concepts``).

    Raises:
        ValueError: bad parameters, or ``out_dir/images`` exists but was not written by this function.

    Example:
        >>> import tempfile
        >>> manifest = generate_shapes_world(tempfile.mkdtemp(), n_images=8, seed=0, size=32)
        >>> manifest.columns.tolist(), len(manifest)
        (['image_id', 'uri', 'concepts'], 8)
    """
    n_images, size = _check_positive_int("n_images", n_images), _check_size(size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)

    out_dir = Path(out_dir).expanduser().resolve()
    params = _world_params(n_images, seed, size)
    existing = _read_world_json(out_dir)
    if existing == params and all((out_dir / name).is_file() for name in _OUTPUTS):
        return pq.read_table(out_dir / "manifest.parquet").to_pandas()

    images_dir = out_dir / "images"
    if images_dir.exists():
        if existing is None:
            raise ValueError(
                f"{images_dir} exists but {out_dir / 'world.json'} does not, so it was not written by "
                f"generate_shapes_world; choose an empty or new directory"
            )
        shutil.rmtree(images_dir)
    (out_dir / "world.json").unlink(missing_ok=True)
    for shape in CONCEPTS["shape"]:
        (images_dir / shape).mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    uris: list[str] = []
    concepts: list[list[str]] = []
    boxes: list[tuple] = []
    for image_id in range(n_images):
        attrs = sample_attributes(rng)
        pixels, mask = render_with_mask(attrs, rng, size)
        path = images_dir / attrs["shape"] / f"{image_id:06d}.png"
        Image.fromarray(pixels, mode="RGB").save(path, format="PNG")
        uris.append(str(path))
        concepts.append([attrs[attribute] for attribute in ATTRIBUTES])
        box, rle = mask_box(mask), mask_to_rle(mask)
        boxes.extend((image_id, attrs[attribute], *box, size, size, rle) for attribute in OBJECT_ATTRIBUTES)

    image_ids = np.arange(n_images, dtype=np.int64)
    manifest = pa.table(
        {"image_id": image_ids, "uri": uris, "concepts": concepts}, schema=INPUTS_SCHEMA
    )
    labels = pa.table(
        {
            "image_id": np.repeat(image_ids, len(ATTRIBUTES)),
            "concept": [name for row in concepts for name in row],
        },
        schema=LABELS_SCHEMA,
    )
    hierarchy = pa.table(
        {"concept": [c for c, _ in HIERARCHY], "parent": [p for _, p in HIERARCHY]}, schema=HIERARCHY_SCHEMA
    )
    pq.write_table(manifest, out_dir / "manifest.parquet")
    pq.write_table(labels, out_dir / "labels.parquet")
    pq.write_table(hierarchy, out_dir / "hierarchy.parquet")
    pq.write_table(
        pa.table({name: list(column) for name, column in zip(BOXES_SCHEMA.names, zip(*boxes))}, schema=BOXES_SCHEMA),
        out_dir / "boxes.parquet",
    )
    (out_dir / "world.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    return manifest.to_pandas()
