"""The spatial method (HINT, Wang et al. 2022): responsible regions, position-level concept classifiers, Shapley
channel ranking, and faithfulness by localisation.

For one concept and one conv layer with feature map ``F (C, h, w)`` per image:

1. **Saliency** of the concept's target (its logit, see `concept_targets`) with respect to the model input
   (``saliency_at="input"``, the default) or to the layer's feature map (``"layer"``, as HINT's code does), by
   one of `SALIENCY_METHODS`. Channels are combined by their L2 norm, an input map is averaged down to the
   ``h × w`` grid (`downsample`), and each image's grid is normalised to [0, 1] by ``(s − min) / (q − min)``,
   clipped, with ``q`` its ``norm_quantile`` quantile (HINT's normalisation; 1.0 gives min–max).
2. **Responsible regions**: grid positions whose normalised saliency is above ``threshold`` (0.5); the other
   positions of the same images are the background (`responsible_regions`).
3. **The concept classifier**: scikit-learn ``SGDClassifier(loss="modified_huber")`` on the ``C``-dimensional
   channel vectors at responsible (1) vs background (0) positions, classes balanced by seeded subsampling,
   channels standardised over the training positions (`fit_concept_classifier`).
4. **Channel ranking** by the exact Shapley values of that linear classifier, ``φ_c = w_c (x_c − E[x_c])``
   (the value of a coalition S is ``E[f(x_S, X_rest)]`` with channels independent), the expectation over the
   training positions, ranked by mean ``|φ_c|`` over the responsible (positive) training positions
   (`linear_shapley`, shared with ``_collab.py``; `rank_channels`).
5. **Localisation** (`localise`): the classifier's probability at every position of a held-out image,
   upsampled bilinearly to the model input, thresholded at ``loc_threshold``; the predicted box is the
   bounding box of the largest 8-connected component (``loc_box="largest_component"``) or of every pixel
   above the threshold (``"all"``), and its IoU with the concept's ground-truth boxes in that image is the
   largest over them (`box_iou`).

Everything but the saliency (`saliency_maps`, `guided_backprop`: torch) is numpy and scikit-learn, so the
method is tested on planted feature maps without a model. ``pipelines/hierarchy_spatial.py`` runs it over
concepts on Ray actors and writes ``concept_spatial.parquet`` and ``localisation.parquet``. Its settings are
`SpatialSection`, the run config's ``hierarchy.spatial`` (defined in ``neuronscan/config/_schema.py``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

# The settings are the run config's ``hierarchy.spatial`` section (config imports nothing of this package).
from neuronscan.config._schema import SpatialSection

# Exact Shapley values of a linear model with independent features, phi_c = w_c (x_c - E[x_c]): one
# implementation for the package (the collaborative units use it too).
from neuronscan.hierarchy._collab import linear_shapley

__all__ = [
    "SpatialSection",
    "SALIENCY_METHODS",
    "CONCEPT_SPATIAL_FILE",
    "LOCALISATION_FILE",
    "SPATIAL_SUMMARY_FILE",
    "CONCEPT_SPATIAL_SCHEMA",
    "LOCALISATION_SCHEMA",
    "BOX_COLUMNS",
    "ConceptClassifier",
    "ConceptAnalysis",
    "box_iou",
    "map_box_to_input",
    "downsample",
    "normalise_saliency",
    "responsible_regions",
    "balanced_positions",
    "fit_concept_classifier",
    "linear_shapley",
    "rank_channels",
    "upsample_bilinear",
    "box_from_map",
    "localise",
    "analyse_concept",
    "guided_backprop",
    "saliency_maps",
    "output_concepts",
    "concept_target",
    "sample_concept_images",
    "target_outputs",
]

SALIENCY_METHODS = ("guided_backprop", "vanilla", "grad_x_input", "smoothgrad", "integrated_gradients")

CONCEPT_SPATIAL_FILE = "concept_spatial.parquet"
LOCALISATION_FILE = "localisation.parquet"
SPATIAL_SUMMARY_FILE = "spatial.json"

CONCEPT_SPATIAL_SCHEMA = pa.schema(
    [
        ("concept", pa.string()),
        ("depth", pa.int16()),
        ("layer", pa.string()),
        ("rank", pa.int32()),
        ("unit", pa.int32()),
        ("weight", pa.float64()),
        ("shapley", pa.float64()),
    ]
)
"""``concept_spatial.parquet``: per (concept, layer) every channel, ``rank`` 0 the largest mean ``|φ|``."""

LOCALISATION_SCHEMA = pa.schema(
    [
        ("concept", pa.string()),
        ("depth", pa.int16()),
        ("layer", pa.string()),
        ("n_images", pa.int64()),
        ("mean_iou", pa.float64()),
        ("frac_iou_50", pa.float64()),
    ]
)
"""``localisation.parquet``: per (concept, layer) the IoU of the classifier's box on held-out images."""

BOX_COLUMNS = ("image_id", "concept", "x0", "y0", "x1", "y1")
"""Required columns of a boxes file (``width``, ``height`` and a mask are optional)."""


# --- boxes and IoU ---------------------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of half-open boxes ``(x0, y0, x1, y1)``: ``a (..., 4)`` and ``b (..., 4)``, broadcast.

    A box with ``x1 <= x0`` or ``y1 <= y0`` has area 0. Boxes that only touch share no pixel (IoU 0); two
    empty boxes have IoU 0, never NaN.

    Example:
        >>> float(box_iou(np.array([0, 0, 10, 10]), np.array([5, 5, 15, 15])))  # 25 / 175
        0.14285714285714285
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def map_box_to_input(box, width: int, height: int, size: int, resize: str) -> tuple[float, float, float, float]:
    """A box in the stored image's pixels → the ``size × size`` model input the decoder makes of it.

    ``resize`` is ``data.resize``: ``"stretch"`` scales each axis; ``"shorter_center_crop"`` cuts the centred
    square on the shorter side first (as `neuronscan.data.decode_image` does), so the box is shifted, scaled
    and clipped to the crop.

    Example:
        >>> map_box_to_input((10, 0, 30, 20), 40, 20, 10, "shorter_center_crop")  # crop x 10..30
        (0.0, 0.0, 10.0, 10.0)
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if resize == "stretch":
        sx, sy, left, top = size / width, size / height, 0, 0
    else:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        sx = sy = size / side
    out = ((x0 - left) * sx, (y0 - top) * sy, (x1 - left) * sx, (y1 - top) * sy)
    return tuple(float(np.clip(v, 0, size)) for v in out)  # type: ignore[return-value]


# --- responsible regions ----------------------------------------------------------------------------------


def downsample(maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Average ``(N, H, W)`` maps over the cells of an ``(h, w)`` grid (torch's adaptive average pooling).

    Example:
        >>> downsample(np.arange(16.0).reshape(1, 4, 4), (2, 2)).tolist()
        [[[2.5, 4.5], [10.5, 12.5]]]
    """
    maps = np.asarray(maps, dtype=np.float64)
    n, height, width = maps.shape
    h, w = grid
    if (height, width) == (h, w):
        return maps.copy()
    out = np.empty((n, h, w))
    ys = [(i * height // h, -(-(i + 1) * height // h)) for i in range(h)]
    xs = [(j * width // w, -(-(j + 1) * width // w)) for j in range(w)]
    for i, (a, b) in enumerate(ys):
        for j, (c, d) in enumerate(xs):
            out[:, i, j] = maps[:, a:b, c:d].mean(axis=(1, 2))
    return out


def normalise_saliency(grid: np.ndarray, quantile: float = 0.99) -> tuple[np.ndarray, np.ndarray]:
    """Per image ``(s − min) / (q − min)`` clipped to [0, 1], ``q`` the image's ``quantile`` of ``s``.

    Returns:
        The normalised maps ``(N, h, w)`` and ``flat (N,)``: images whose map does not rise above its minimum
        (``q == min``); their maps are all 0, so they have no responsible region.
    """
    grid = np.asarray(grid, dtype=np.float64)
    flat_grid = grid.reshape(len(grid), -1)
    lo = flat_grid.min(axis=1)
    hi = np.quantile(flat_grid, quantile, axis=1)
    flat = ~(hi > lo)
    scale = np.where(flat, 1.0, hi - lo)
    out = np.clip((grid - lo[:, None, None]) / scale[:, None, None], 0.0, 1.0)
    out[flat] = 0.0
    return out, flat


def responsible_regions(grid: np.ndarray, threshold: float = 0.5,
                        quantile: float = 0.99) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``(N, h, w)``: positions whose normalised saliency is above ``threshold``; and the ``flat`` images.

    Example:
        >>> regions, flat = responsible_regions(np.array([[[0.0, 1.0], [0.2, 0.9]]]), 0.5, 1.0)
        >>> regions.astype(int).tolist(), flat.tolist()
        ([[[0, 1], [0, 1]]], [False])
    """
    norm, flat = normalise_saliency(grid, quantile)
    return norm > threshold, flat


# --- the concept classifier and Shapley ranking -------------------------------------------------------------


def balanced_positions(features: np.ndarray, regions: np.ndarray, max_per_class: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Channel vectors at responsible (y=1) and background (y=0) positions, the same number of each.

    ``features (N, C, h, w)``, ``regions (N, h, w)``. Each class is subsampled without replacement (seeded by
    ``rng``) to ``min(n_pos, n_neg, max_per_class)``.

    Returns:
        ``X (2n, C)`` float64 (positives first) and ``y (2n,)`` int.
    """
    features = np.asarray(features)
    n, c = features.shape[:2]
    flat = features.transpose(0, 2, 3, 1).reshape(-1, c)
    mask = np.asarray(regions, dtype=bool).reshape(-1)
    pos, neg = np.flatnonzero(mask), np.flatnonzero(~mask)
    k = min(len(pos), len(neg), int(max_per_class))
    pos = np.sort(rng.choice(pos, size=k, replace=False)) if k < len(pos) else pos
    neg = np.sort(rng.choice(neg, size=k, replace=False)) if k < len(neg) else neg
    x = np.concatenate([flat[pos], flat[neg]]).astype(np.float64)
    y = np.concatenate([np.ones(len(pos), dtype=int), np.zeros(len(neg), dtype=int)])
    return x, y


@dataclass
class ConceptClassifier:
    """A linear concept classifier on channel vectors: ``d(x) = coef · (x − mean) / scale + intercept``.

    ``coef`` is on standardised channels (``mean``/``scale`` over the training positions; a constant channel
    has scale 1); `proba` is the modified-Huber probability ``(clip(d, −1, 1) + 1) / 2`` scikit-learn's
    ``SGDClassifier.predict_proba`` gives for two classes.
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    train_accuracy: float = float("nan")
    val_accuracy: float = float("nan")
    n_iter: int = 0

    @property
    def raw_coef(self) -> np.ndarray:
        """The coefficients on the channels in their own units, ``coef / scale``."""
        return self.coef / self.scale

    def decision(self, x: np.ndarray) -> np.ndarray:
        """``d(x)`` for channel vectors ``x (..., C)``."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.coef + self.intercept

    def proba(self, x: np.ndarray) -> np.ndarray:
        return (np.clip(self.decision(x), -1.0, 1.0) + 1.0) / 2.0


def fit_concept_classifier(x: np.ndarray, y: np.ndarray, *, alpha: float = 0.01, max_iter: int = 1000,
                           val_fraction: float = 0.2, seed: int = 0) -> ConceptClassifier:
    """Fit ``SGDClassifier(loss="modified_huber")`` on standardised channel vectors (HINT's classifier).

    A seeded ``val_fraction`` of the positions is held out to measure accuracy; the rest train it.

    Raises:
        ValueError: ``y`` lacks either class.
    """
    try:
        from sklearn.linear_model import SGDClassifier
    except ImportError as exc:  # scikit-learn is not a core dependency of neuronscan
        raise ImportError("the spatial method needs scikit-learn: pip install scikit-learn") from exc

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=int)
    if len(np.unique(y)) != 2:
        raise ValueError("the concept classifier needs responsible and background positions")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_val = int(round(val_fraction * len(y)))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    if len(np.unique(y[train])) != 2:
        train, val = np.arange(len(y)), order[:0]
    mean = x[train].mean(axis=0)
    scale = x[train].std(axis=0)
    scale[~(scale > 0)] = 1.0
    z = (x - mean) / scale
    clf = SGDClassifier(loss="modified_huber", alpha=alpha, max_iter=max_iter, tol=1e-3, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: n_iter is recorded instead
        clf.fit(z[train], y[train])
    out = ConceptClassifier(mean, scale, clf.coef_[0].astype(np.float64), float(clf.intercept_[0]),
                            n_iter=int(clf.n_iter_))
    out.train_accuracy = float(((out.decision(x[train]) > 0) == (y[train] == 1)).mean())
    if len(val):
        out.val_accuracy = float(((out.decision(x[val]) > 0) == (y[val] == 1)).mean())
    return out


def rank_channels(clf: ConceptClassifier, x_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Channels ordered by mean ``|φ_c|`` over the positive positions ``x_pos (n, C)`` (ties: lower index first).

    The background of the Shapley values is the training positions (their mean is ``clf.mean``).

    Returns:
        ``order (C,)`` (channel indices, most important first) and ``mean |φ| (C,)`` indexed by channel.
    """
    phi = linear_shapley(clf.raw_coef, x_pos, clf.mean)
    score = np.abs(phi).mean(axis=0) if len(phi) else np.zeros(len(clf.coef))
    order = np.lexsort((np.arange(len(score)), -score))
    return order, score


# --- localisation --------------------------------------------------------------------------------------------


def upsample_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(N, h, w)`` → ``(N, H, W)`` bilinearly, pixel centres aligned as torch's ``align_corners=False``."""
    maps = np.asarray(maps, dtype=np.float64)
    _, h, w = maps.shape
    height, width = size

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(u).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, u - i0

    y0, y1, fy = axis(h, height)
    x0, x1, fx = axis(w, width)
    rows = maps[:, y0] * (1 - fy)[None, :, None] + maps[:, y1] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


def box_from_map(binary: np.ndarray, mode: str = "largest_component") -> tuple[int, int, int, int]:
    """Half-open box of a 2-D boolean map: of its largest 8-connected component (ties: the first in raster
    order) or, with ``mode="all"``, of every True pixel; ``(0, 0, 0, 0)`` when nothing is True."""
    from scipy import ndimage

    binary = np.asarray(binary, dtype=bool)
    if mode == "largest_component" and binary.any():
        labels, n = ndimage.label(binary, structure=np.ones((3, 3), dtype=int))
        if n > 1:
            sizes = np.bincount(labels.ravel())[1:]
            binary = labels == (int(np.argmax(sizes)) + 1)
    rows, cols = np.nonzero(binary)
    if len(rows) == 0:
        return (0, 0, 0, 0)
    return (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)


def localise(clf: ConceptClassifier, features: np.ndarray, image_size: tuple[int, int], *,
             threshold: float = 0.5, mode: str = "largest_component") -> np.ndarray:
    """The classifier at every position of ``features (N, C, h, w)``, upsampled to ``image_size`` (H, W),
    thresholded, one box per image ``(N, 4)`` (see `box_from_map`)."""
    features = np.asarray(features)
    n, c, h, w = features.shape
    prob = clf.proba(features.transpose(0, 2, 3, 1).reshape(-1, c)).reshape(n, h, w)
    up = upsample_bilinear(prob, image_size)
    return np.array([box_from_map(m > threshold, mode) for m in up], dtype=np.float64).reshape(n, 4)


@dataclass
class ConceptAnalysis:
    """One (concept, layer): its classifier, channel ranking and localisation IoUs."""

    classifier: ConceptClassifier | None
    order: np.ndarray
    shapley: np.ndarray
    ious: np.ndarray
    n_images: int
    n_flat: int
    n_pos_positions: int
    n_neg_positions: int
    skipped: str | None = None


def analyse_concept(features: np.ndarray, grid_saliency: np.ndarray, *, eval_features: np.ndarray | None = None,
                    eval_boxes: list[np.ndarray] | None = None, image_size: tuple[int, int] | None = None,
                    settings: SpatialSection | None = None, seed: int = 0) -> ConceptAnalysis:
    """Steps 2–5 of the method on arrays: responsible regions, classifier, ranking, localisation.

    Args:
        features: ``(N, C, h, w)`` feature maps of the concept's sampled images.
        grid_saliency: ``(N, h, w)`` saliency on the same grid (before normalisation).
        eval_features: ``(M, C, h, w)`` feature maps of held-out images, with ``eval_boxes`` (per image a
            ``(k, 4)`` array of ground-truth boxes in model-input pixels) and ``image_size`` (H, W) of the input.
    """
    s = settings or SpatialSection()
    rng = np.random.default_rng(seed)
    regions, flat = responsible_regions(grid_saliency, s.threshold, s.norm_quantile)
    x, y = balanced_positions(features, regions, s.max_positions, rng)
    n_pos_all = int(regions.sum())
    n_neg_all = int(regions.size - n_pos_all)
    n_channels = features.shape[1]
    if n_pos_all == 0 or n_neg_all == 0:
        why = "no responsible positions" if n_pos_all == 0 else "no background positions"
        return ConceptAnalysis(None, np.arange(n_channels), np.full(n_channels, np.nan), np.zeros(0), len(features),
                               int(flat.sum()), n_pos_all, n_neg_all, skipped=why)
    clf = fit_concept_classifier(x, y, alpha=s.sgd_alpha, max_iter=s.sgd_max_iter, val_fraction=s.val_fraction,
                                 seed=seed)
    order, score = rank_channels(clf, x[y == 1])
    ious = np.zeros(0)
    if eval_features is not None and len(eval_features):
        pred = localise(clf, eval_features, image_size, threshold=s.loc_threshold, mode=s.loc_box)
        ious = np.array([float(box_iou(p[None], np.asarray(b, dtype=np.float64).reshape(-1, 4)).max())
                         if len(b) else 0.0 for p, b in zip(pred, eval_boxes)])
    return ConceptAnalysis(clf, order, score, ious, len(features), int(flat.sum()), n_pos_all, n_neg_all)


# --- saliency (torch) --------------------------------------------------------------------------------------


@contextlib.contextmanager
def guided_backprop(module) -> Iterator[int]:
    """Within the block, every ``nn.ReLU`` of ``module`` passes back only positive gradients (Guided Backprop).

    A full backward hook replaces each ReLU's input gradient ``g · 1[x > 0]`` by ``max(g, 0) · 1[x > 0]``.
    In-place ReLUs are switched to out-of-place for the block (same values; autograd hooks need it).
    ReLUs called as functions (``F.relu``) are not modules and stay vanilla.

    Yields:
        The number of ReLU modules hooked.

    Raises:
        ValueError: the model has no ``nn.ReLU`` module, so Guided Backprop cannot be applied.
    """
    import torch
    from torch import nn

    relus = [m for m in module.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError("saliency 'guided_backprop' needs nn.ReLU modules and the model has none; "
                         "use 'vanilla', 'grad_x_input', 'smoothgrad' or 'integrated_gradients'")

    def hook(_mod, grad_input, _grad_output):
        return tuple(None if g is None else torch.clamp(g, min=0.0) for g in grad_input)

    inplace = [m.inplace for m in relus]
    handles = []
    try:
        for m in relus:
            m.inplace = False
            handles.append(m.register_full_backward_hook(hook))
        yield len(relus)
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(relus, inplace):
            m.inplace = flag


def saliency_maps(module, layer_module, x, target: Callable, *, method: str = "vanilla", at: str = "input",
                  smoothgrad_samples: int = 25, smoothgrad_sigma: float = 0.15, ig_steps: int = 25,
                  seed: int = 0):
    """Saliency of a per-image scalar target, and the layer's feature maps.

    Args:
        module: the model (eval mode); ``layer_module`` the hooked submodule whose output is ``F (N, C, h, w)``.
        x: normalised input ``(N, 3, H, W)``.
        target: ``target(outputs, F) -> (N,)``, one scalar per image (images are independent in eval mode, so
            the gradient of the sum is each image's own gradient).
        method: one of `SALIENCY_METHODS`. ``vanilla``: ∂t/∂x; ``guided_backprop``: the same under
            `guided_backprop`; ``grad_x_input``: ∂t/∂x ⊙ x; ``smoothgrad``: ∂t/∂x averaged over
            ``smoothgrad_samples`` copies of x plus Gaussian noise of std ``smoothgrad_sigma`` × (max − min of
            the image); ``integrated_gradients``: (x − 0) ⊙ the mean gradient at ``(k + ½)/steps · x``.
        at: ``"input"`` — gradients w.r.t. x, channels combined by L2 norm → ``(N, H, W)``; ``"layer"`` —
            w.r.t. F (× F for grad_x_input, × (F − F(0)) for integrated gradients) → ``(N, h, w)``.

    Returns:
        ``(saliency, features)``: the per-position saliency (numpy float64) and ``F`` (numpy float32).
    """
    import torch

    if method not in SALIENCY_METHODS:
        raise ValueError(f"unknown saliency method {method!r}; expected one of {', '.join(SALIENCY_METHODS)}")
    captured: dict = {}

    def hook(_m, _inp, out):
        captured["f"] = out[0] if isinstance(out, (tuple, list)) else out

    handle = layer_module.register_forward_hook(hook)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    try:
        with torch.no_grad():
            module(x)
            feats = captured["f"].detach()
        if feats.dim() != 4:
            raise ValueError(f"the spatial method needs a conv feature map (N, C, h, w); the layer gives "
                             f"{tuple(feats.shape)}")

        def grads(inp):
            inp = inp.detach().requires_grad_(True)
            out = module(inp)
            f = captured["f"]
            t = target(out, f).sum()
            wrt = [inp] if at == "input" else [f]
            (g,) = torch.autograd.grad(t, wrt, allow_unused=True)
            return torch.zeros_like(wrt[0]) if g is None else g

        if method == "smoothgrad":
            span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
            total = None
            for _ in range(smoothgrad_samples):
                noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * smoothgrad_sigma * span
                g = grads(x + noise)
                total = g if total is None else total + g
            sal = total / smoothgrad_samples
        elif method == "integrated_gradients":
            total = None
            for k in range(ig_steps):
                g = grads(x * ((k + 0.5) / ig_steps))
                total = g if total is None else total + g
            mean_grad = total / ig_steps
            if at == "input":
                sal = mean_grad * x
            else:
                with torch.no_grad():
                    module(torch.zeros_like(x))
                    f0 = captured["f"].detach()
                sal = mean_grad * (feats - f0)
        else:
            context = guided_backprop(module) if method == "guided_backprop" else contextlib.nullcontext()
            with context:
                sal = grads(x)
            if method == "grad_x_input":
                sal = sal * (x if at == "input" else feats)
    finally:
        handle.remove()
    reduced = torch.linalg.vector_norm(sal.detach().double(), dim=1)
    return reduced.cpu().numpy(), feats.float().cpu().numpy()


def output_concepts(spec, setting: str | list[str] = "auto") -> list[str]:
    """Concept names of the model's outputs, in output order; ``[]`` when unknown.

    ``setting``: a list is taken as is; ``"none"`` gives ``[]``; ``"auto"``: the built-in ``shapesnet``'s
    head concepts, or a torchvision model's ``weights.meta["categories"]``.
    """
    if isinstance(setting, list):
        return list(setting)
    if setting == "none":
        return []
    if getattr(spec, "name", "") == "shapesnet" and getattr(spec, "source", "") == "builtin":
        from neuronscan.demo.model import HEAD_CONCEPTS

        return list(HEAD_CONCEPTS)
    if getattr(spec, "source", "") == "torchvision" and spec.weights not in (None, "random"):
        try:
            import torchvision

            return list(torchvision.models.get_weight(str(spec.weights)).meta.get("categories") or [])
        except Exception:  # noqa: BLE001 - unknown weights name: no output concepts
            return []
    return []


def concept_target(logit_mask, direction=None, use_direction=None) -> Callable:
    """The per-image target of a concept's saliency, ``target(outputs, F) -> (N,)``.

    Image i's target is ``Σ_k logit_mask[i, k] · outputs[i, k]`` (the logits of the model outputs that name the
    concept or, for a concept the model does not output, the concept's descendants the image is labelled
    with), or, where ``use_direction[i]``, the alignment ``direction · mean_{y,x} F[i, :, y, x]`` of the
    spatially averaged feature map with the concept's unit direction.
    """
    import torch

    def target(outputs, feats):
        if isinstance(outputs, (tuple, list)):
            outputs = outputs[0]
        parts = []
        if logit_mask is not None:
            parts.append((outputs.flatten(1)[:, : logit_mask.shape[1]] * logit_mask).sum(1))
        if direction is not None:
            align = feats.mean(dim=(2, 3)) @ direction
            if parts:
                return torch.where(use_direction, align, parts[0])
            return align
        return parts[0]

    return target


def target_outputs(concept: str, image_concepts: set[str], under: set[str], outputs: dict[str, int],
                   ancestors: dict[str, set[str]]) -> list[int]:
    """Which model outputs an image's saliency for ``concept`` is taken through (indices into the outputs).

    ``concept`` itself when the model outputs it; otherwise the most specific output concepts at or under
    ``concept`` (``under``) among the image's labels and their ancestors (HINT: a leaf class's own logit for
    its parent concept); ``[]`` when there is none (then the concept's direction is used).
    """
    if concept in outputs:
        return [outputs[concept]]
    labelled = set(image_concepts)
    for c in image_concepts:
        labelled |= ancestors.get(c, set())
    cand = {c for c in labelled if c in under and c in outputs}
    specific = sorted(c for c in cand if not any(c in ancestors.get(o, set()) for o in cand if o != c))
    return [outputs[c] for c in specific]


def sample_concept_images(groups: dict[str, np.ndarray], per_leaf: int, max_images: int,
                          rng: np.random.Generator) -> np.ndarray:
    """HINT's sample: at most ``per_leaf`` images of each class under the concept, at most ``max_images`` in all.

    ``groups`` maps each concept at or under the concept that images are labelled with directly (the leaf
    classes, in a world labelled at its leaves) to those images' ids. Classes are visited in name order;
    each is subsampled without replacement, the union de-duplicated and, above ``max_images``, subsampled.

    Returns:
        Sorted image ids (int64).
    """
    chosen: list[np.ndarray] = []
    for name in sorted(groups):
        ids = np.unique(np.asarray(groups[name], dtype=np.int64))
        chosen.append(np.sort(rng.choice(ids, size=per_leaf, replace=False)) if len(ids) > per_leaf else ids)
    ids = np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    if len(ids) > max_images:
        ids = np.sort(rng.choice(ids, size=max_images, replace=False))
    return ids.astype(np.int64)
