"""CRAFT on one class: activations → dictionary → importance → metrics → strategies, for images given as tensors.

`discover_class` is the whole method for one class and knows nothing of files, Ray or configs: the discover
stage (``pipelines/discover.py``) decodes the class's images, calls it in a Ray task and writes the tables.
`activation_rows` gives the factorised rows of any images (the stage uses it for the naming images, so that
each concept's coefficient can be scored like a unit's activation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from neuronscan.discover._extraction import ModelSplit, crop_activations, crop_grid, position_boxes
from neuronscan.discover._factorise import Factorisation, fit_factorisation
from neuronscan.discover._importance import (
    concept_logit_fn,
    gradient_input_importance,
    occlusion_importance,
    sobol_importance,
)
from neuronscan.discover._metrics import (
    concept_curves,
    curve_auc,
    hoyer_sparsity,
    matched_cosine,
    mu_fidelity_from_drops,
    mu_fidelity_subsets,
    reconstruction_error,
    subset_drops,
    zero_fraction,
)
from neuronscan.discover._strategies import strategy_frame

__all__ = ["CraftSettings", "ClassResult", "Rows", "IMPORTANCE_METHODS", "activation_rows", "discover_class",
           "image_statistic"]

IMPORTANCE_METHODS = ("sobol", "gradient_input", "occlusion")


@dataclass(frozen=True)
class CraftSettings:
    """The method's settings (the run config's ``discover`` section holds the same keys)."""

    n_concepts: int = 10
    method: str = "nmf"
    source: str = "crops"
    patch_size: int = 64
    seed: int = 0
    max_iter: int = 500
    sparse_alpha: float = 0.1
    importance_images: int = 50
    sobol_designs: int = 32
    mufidelity_subsets: int = 128
    mufidelity_fraction: float = 0.2
    strategy_importance: str = "gradient_input"
    image_statistic: str = "max"
    stability: bool = True
    n_examples: int = 8
    batch_size: int = 128


@dataclass
class Rows:
    """The factorised rows of some images: ``a`` ``(n · r, C)``, ``r`` rows per image (image-major) and the
    input box of each of an image's rows, ``boxes`` ``(r, 4)`` ``(x0, y0, x1, y1)``."""

    a: np.ndarray
    per_image: int
    boxes: np.ndarray


def activation_rows(split: ModelSplit, x: torch.Tensor, settings: CraftSettings) -> Rows:
    """The rows of images ``x`` ``(n, c, S, S)`` that ``settings.source`` factorises: one per crop (``crops``)
    or one per feature-map position (``positions``)."""
    if settings.source == "crops":
        grid = crop_grid(split.input_size, settings.patch_size)
        return Rows(crop_activations(split, x, grid, batch_size=settings.batch_size), grid.n, grid.boxes)
    maps = _maps(split, x, settings.batch_size)
    grid_hw = tuple(maps.shape[2:])
    a = maps.movedim(1, -1).reshape(-1, maps.shape[1]).cpu().numpy().astype(np.float32)
    return Rows(a, int(np.prod(grid_hw)) if grid_hw else 1, position_boxes(grid_hw, split.input_size))


def image_statistic(u_rows: np.ndarray, per_image: int, statistic: str = "max") -> np.ndarray:
    """Per-image coefficients ``(n, K)`` from per-row ones ``(n · per_image, K)``: the max (or mean) over each
    image's rows."""
    u = np.asarray(u_rows, dtype=np.float64).reshape(-1, per_image, u_rows.shape[-1])
    return u.max(axis=1) if statistic == "max" else u.mean(axis=1)


def _maps(split: ModelSplit, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = [split.g(x[s : s + batch_size]).cpu() for s in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


@dataclass
class ClassResult:
    """What `discover_class` found for one class. Image arrays are in the order of the images given.

    Attributes:
        factorisation: the dictionary (``components`` is W) and its estimator.
        rows: the factorised rows (``rows.a``) and their boxes; ``row_image[j]`` is the image of row j.
        u_rows: U of the fit rows ``(n_rows, K)``; ``u_images`` the per-image statistic ``(n, K)``.
        n_importance: importance and metrics use the first ``n_importance`` images.
        importance: method → ``(n_importance, K)`` per-image importance; ``class_importance`` their means.
        metrics: method → ``{c_deletion, c_insertion, c_mufidelity}`` (means over the images).
        deletion, insertion: method → ``(n_importance, K + 1)`` curves.
        logit, correct: the model's class logit and whether it predicts the class, per importance image.
        quality: reconstruction errors, sparsity, stability and counts.
        stability_pairs: ``(K, 3)`` matched concepts of the two halves and their cosine (None when skipped).
        strategies: `strategy_frame` of the importance images.
        examples: per concept the rows of its top example crops ``(row, coefficient)``, one per image.
        timings: seconds per phase.
    """

    factorisation: Factorisation
    rows: Rows
    row_image: np.ndarray
    u_rows: np.ndarray
    u_images: np.ndarray
    n_importance: int
    importance: dict[str, np.ndarray]
    class_importance: dict[str, np.ndarray]
    metrics: dict[str, dict[str, float]]
    deletion: dict[str, np.ndarray]
    insertion: dict[str, np.ndarray]
    logit: np.ndarray
    correct: np.ndarray
    quality: dict
    stability_pairs: np.ndarray | None
    strategies: object
    examples: list[list[tuple[int, float]]]
    timings: dict = field(default_factory=dict)


def discover_class(split: ModelSplit, x: torch.Tensor, class_index: int, settings: CraftSettings, *,
                   competitors: list[int] | None = None) -> ClassResult:
    """CRAFT for one class on its images ``x`` ``(n, c, S, S)`` (normalised model inputs).

    Args:
        class_index: the class's output (logit) index.
        competitors: the outputs the class competes with for the accuracy that reliability uses (the class's
            own head); default every output.
    """
    t = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[name] = round(now - t, 4)
        t = now

    k = settings.n_concepts
    rows = activation_rows(split, x, settings)
    row_image = np.repeat(np.arange(len(x)), rows.per_image)
    lap("activations")
    fact, u_rows = fit_factorisation(rows.a, settings.method, k, seed=settings.seed, max_iter=settings.max_iter,
                                     sparse_alpha=settings.sparse_alpha)
    fit_error = reconstruction_error(rows.a, fact.decode(u_rows))
    lap("factorise")

    n_imp = min(settings.importance_images, len(x))
    x_imp = x[:n_imp]
    if settings.source == "positions":
        per = rows.per_image
        a_pos = rows.a[: n_imp * per]
        u_pos_flat = u_rows[: n_imp * per]
        grid = _maps(split, x_imp[:1], 1).shape[2:]
    else:
        maps = _maps(split, x_imp, settings.batch_size)
        grid = maps.shape[2:]
        a_pos = maps.movedim(1, -1).reshape(-1, maps.shape[1]).numpy().astype(np.float64)
        u_pos_flat = fact.transform(a_pos)
    position_error = reconstruction_error(a_pos, fact.decode(u_pos_flat))
    u_pos = torch.as_tensor(u_pos_flat.reshape(n_imp, *grid, k), dtype=torch.float32, device=split.device)
    lap("transform")

    fn = concept_logit_fn(split, fact, class_index)
    bs = max(settings.batch_size, 1)
    importance = {
        "gradient_input": gradient_input_importance(fn, u_pos, batch_size=bs),
        "occlusion": occlusion_importance(fn, u_pos, batch_size=bs),
    }
    lap("importance_gradient_occlusion")
    importance["sobol"] = sobol_importance(fn, u_pos, settings.sobol_designs, seed=settings.seed, batch_size=bs)
    lap("importance_sobol")
    importance = {m: importance[m] for m in IMPORTANCE_METHODS}
    class_importance = {m: v.mean(axis=0) if len(v) else np.zeros(k) for m, v in importance.items()}

    subsets = mu_fidelity_subsets(k, settings.mufidelity_subsets, settings.mufidelity_fraction, seed=settings.seed)
    drops = subset_drops(fn, u_pos, subsets, batch_size=bs)  # the same for every method's importance
    metrics, deletion, insertion, curves = {}, {}, {}, {}
    for m in IMPORTANCE_METHODS:
        order = tuple(np.argsort(-class_importance[m], kind="stable").tolist())
        if order not in curves:
            curves[order] = concept_curves(fn, u_pos, np.asarray(order), batch_size=bs)
        deletion[m], insertion[m] = curves[order]
        mufid = mu_fidelity_from_drops(drops, importance[m], subsets)
        metrics[m] = {"c_deletion": float(curve_auc(deletion[m]).mean()) if n_imp else float("nan"),
                      "c_insertion": float(curve_auc(insertion[m]).mean()) if n_imp else float("nan"),
                      "c_mufidelity": float(np.nanmean(mufid)) if np.isfinite(mufid).any() else float("nan")}
    lap("metrics")

    logits = split.logits(x_imp).cpu().numpy()
    comp = list(range(logits.shape[1])) if competitors is None else list(competitors)
    correct = np.asarray(comp)[np.argmax(logits[:, comp], axis=1)] == class_index
    strategies = strategy_frame(importance[settings.strategy_importance], correct)

    stability, pairs = float("nan"), None
    if settings.stability and len(x) >= 2:
        rng = np.random.default_rng(settings.seed + 1)
        half = rng.permutation(len(x))[: len(x) // 2]
        in_half = np.isin(row_image, half)
        if in_half.sum() >= k and (~in_half).sum() >= k:
            f1, _ = fit_factorisation(rows.a[in_half], settings.method, k, seed=settings.seed,
                                      max_iter=settings.max_iter, sparse_alpha=settings.sparse_alpha)
            f2, _ = fit_factorisation(rows.a[~in_half], settings.method, k, seed=settings.seed,
                                      max_iter=settings.max_iter, sparse_alpha=settings.sparse_alpha)
            stability, pairs = matched_cosine(f1.components, f2.components,
                                              absolute=settings.method in ("pca", "ica"))
    lap("stability")

    u_images = image_statistic(u_rows, rows.per_image, settings.image_statistic)
    examples = []
    for c in range(k):
        best_row = {}
        for j in np.argsort(-u_rows[:, c], kind="stable"):
            i = int(row_image[j])
            if i not in best_row:
                best_row[i] = (int(j), float(u_rows[j, c]))
                if len(best_row) >= settings.n_examples:
                    break
        examples.append(list(best_row.values()))
    quality = {
        "n_images": int(len(x)), "n_rows": int(len(rows.a)), "rows_per_image": int(rows.per_image),
        "n_importance_images": int(n_imp), "n_channels": int(rows.a.shape[1]),
        "reconstruction_error": fit_error, "reconstruction_error_positions": position_error,
        "n_iter": int(fact.n_iter), "max_iter": int(settings.max_iter),
        "zero_fraction": zero_fraction(u_rows), "hoyer": hoyer_sparsity(u_rows), "stability": stability,
        "accuracy": float(correct.mean()) if len(correct) else float("nan"),
        "mean_logit": float(logits[:, class_index].mean()) if len(logits) else float("nan"),
        "grid": [int(g) for g in grid],
    }
    lap("finish")
    return ClassResult(fact, rows, row_image, u_rows, u_images, n_imp, importance, class_importance, metrics,
                       deletion, insertion, logits[:, class_index].astype(np.float64), correct, quality, pairs,
                       strategies, examples, timings)
