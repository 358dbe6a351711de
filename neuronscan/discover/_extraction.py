"""The model cut in two at a layer, and the activations that concept discovery factorises.

CRAFT (Fel et al. 2023) writes the model as ``f = h ∘ g``: ``g`` maps an input to the (non-negative) latent of a
chosen layer, ``h`` maps that latent to the logits. `ModelSplit` builds both from any ``nn.Module`` with forward
hooks: ``g`` records the layer's output and stops the forward pass there; ``h`` runs the model on a small blank
input with a hook that *replaces* the layer's output by the given latent, so everything after the layer sees
it. That is exact when the rest of the network depends on the input only through the layer (a top-level stage
of a CNN, the last block before pooling); `ModelSplit` checks ``h(g(x)) == f(x)`` on real inputs and refuses a
layer for which it does not hold (a layer inside a residual block, say).

Two sources of activations:

- **crops** (CRAFT): each image is cut into square patches with ``torch.nn.functional.unfold`` (side
  ``patch_size``, stride ``int(0.8 · patch_size)``), each patch resized to the model's input side, passed
  through ``g`` and averaged over the feature map's positions: one row of A per crop;
- **positions** (holistic CRAFT): the whole image through ``g``; one row of A per feature-map position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neuronscan.errors import ModelError

__all__ = ["ModelSplit", "CropGrid", "crop_grid", "extract_crops", "crop_activations", "position_boxes",
           "STRIDE_FRACTION"]

STRIDE_FRACTION = 0.8
"""Crop stride as a fraction of the patch side (CRAFT's)."""


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass once the layer's output is recorded."""


class ModelSplit:
    """``g`` (input → the layer's output) and ``h`` (that output → logits) of ``module`` cut at ``layer``.

    Args:
        module: the model; put in eval mode, its parameters frozen.
        layer: the dotted name of a submodule (``conv4``, ``layer4``).
        input_size: the model's input side (pixels).
        device: where the model runs.
        check: inputs ``(n, c, S, S)`` on which ``h(g(x))`` must equal ``module(x)``; default a seeded random
            batch of 2 images.
        in_channels: channels of the model's input (3 for images).

    Raises:
        ModelError: the layer does not exist, does not output a tensor, or is not a cut of the model
            (``h(g(x))`` differs from ``f(x)`` by more than 1e-3 relative).
    """

    def __init__(self, module: nn.Module, layer: str, *, input_size: int, device: str | torch.device = "cpu",
                 check: torch.Tensor | None = None, in_channels: int = 3):
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        modules = dict(self.module.named_modules())
        if layer not in modules or not layer:
            raise ModelError(f"discover.layer: the model has no module {layer!r}")
        self.layer = layer
        self._target = modules[layer]
        self.input_size = int(input_size)
        self.in_channels = int(in_channels)
        self._replacement: torch.Tensor | None = None
        self._dummy_side = self._find_dummy_side(check)

    # -- g ---------------------------------------------------------------------------------------------
    def g(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output for inputs ``x`` (no gradient): ``(n, C, h, w)`` or ``(n, C)``."""
        captured: dict[str, torch.Tensor] = {}

        def hook(_m, _i, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            captured["a"] = out
            raise _Stop

        handle = self._target.register_forward_hook(hook)
        try:
            with torch.no_grad():
                try:
                    self.module(x.to(self.device))
                except _Stop:
                    pass
        finally:
            handle.remove()
        if "a" not in captured or not isinstance(captured["a"], torch.Tensor):
            raise ModelError(f"discover.layer {self.layer!r} did not output a tensor")
        return captured["a"].float()

    # -- h ---------------------------------------------------------------------------------------------
    def h(self, a: torch.Tensor) -> torch.Tensor:
        """The logits ``(n, n_outputs)`` for layer outputs ``a`` (differentiable in ``a``)."""
        return self._h(a, self._dummy_side)

    def _h(self, a: torch.Tensor, side: int) -> torch.Tensor:
        def hook(_m, _i, _out):
            return self._replacement

        self._replacement = a.to(self.device)
        handle = self._target.register_forward_hook(hook)
        try:
            dummy = torch.zeros(a.shape[0], self.in_channels, side, side, device=self.device)
            out = self.module(dummy)
        finally:
            handle.remove()
            self._replacement = None
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.flatten(1).float()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)``: the whole model (no gradient)."""
        with torch.no_grad():
            out = self.module(x.to(self.device))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.flatten(1).float()

    def _find_dummy_side(self, check: torch.Tensor | None) -> int:
        """The smallest blank-input side on which ``h`` reproduces the model: the layers before the cut then
        cost almost nothing. Tried: 8, 16, 32 pixels, then the input size."""
        if check is None:
            gen = torch.Generator().manual_seed(0)
            check = torch.randn(2, self.in_channels, self.input_size, self.input_size, generator=gen)
        check = check.to(self.device)
        want = self.logits(check)
        a = self.g(check)
        scale = float(want.abs().max()) + 1e-6
        last = None
        for side in sorted({s for s in (8, 16, 32) if s < self.input_size} | {self.input_size}):
            try:
                with torch.no_grad():
                    got = self._h(a, side)
            except (RuntimeError, ValueError) as exc:  # too small for the layers before the cut
                last = exc
                continue
            if got.shape == want.shape and float((got - want).abs().max()) <= 1e-3 * scale:
                return side
            last = (f"largest logit difference {float((got - want).abs().max()):.3g}" if got.shape == want.shape
                    else f"logits of shape {tuple(got.shape)}, not {tuple(want.shape)}")
        detail = f" ({last})" if last is not None else ""
        raise ModelError(
            f"discover.layer {self.layer!r} is not a cut of the model: feeding its output on through the rest of "
            f"the network does not give the model's logits{detail}. Choose a layer the rest of the network sees "
            "the input only through (a top-level stage, the last block before pooling)")


@dataclass(frozen=True)
class CropGrid:
    """Where the crops of one image lie: ``boxes[j] = (x0, y0, x1, y1)`` (pixels of the model input, half-open),
    row-major as ``unfold`` orders them."""

    patch: int
    stride: int
    boxes: np.ndarray

    @property
    def n(self) -> int:
        return len(self.boxes)


def crop_grid(size: int, patch: int, stride: int | None = None) -> CropGrid:
    """The crop grid of a ``size``² image: patches of side ``patch`` every ``stride`` pixels (default
    ``int(0.8 · patch)``), as many as fit (``1 + (size − patch) // stride`` per side).

    Raises:
        ValueError: the patch is larger than the image or smaller than 1 pixel.
    """
    if not 1 <= patch <= size:
        raise ValueError(f"patch_size {patch} must be between 1 and the model's input side {size}")
    stride = max(1, int(patch * STRIDE_FRACTION)) if stride is None else int(stride)
    starts = np.arange(0, size - patch + 1, stride)
    boxes = np.array([(x0, y0, x0 + patch, y0 + patch) for y0 in starts for x0 in starts], dtype=np.int32)
    return CropGrid(patch, stride, boxes)


def extract_crops(x: torch.Tensor, grid: CropGrid) -> torch.Tensor:
    """The crops of images ``x`` ``(n, c, S, S)``: ``(n · grid.n, c, patch, patch)``, image-major, each image's
    crops in ``grid`` order (``unfold``'s)."""
    n, c = x.shape[:2]
    cols = F.unfold(x, kernel_size=grid.patch, stride=grid.stride)  # (n, c·p·p, L)
    if cols.shape[-1] != grid.n:
        raise ValueError(f"unfold gave {cols.shape[-1]} crops per image, the grid has {grid.n}")
    return cols.transpose(1, 2).reshape(n * grid.n, c, grid.patch, grid.patch)


def crop_activations(split: ModelSplit, x: torch.Tensor, grid: CropGrid, *, batch_size: int = 128) -> np.ndarray:
    """One row per crop of images ``x``: ``g`` of the crop resized (bilinear) to the input side, averaged over
    the feature map's positions. Returns ``(n · grid.n, C)`` float32, image-major."""
    crops = extract_crops(x, grid)
    size = split.input_size
    rows = []
    for start in range(0, len(crops), batch_size):
        chunk = crops[start : start + batch_size]
        if chunk.shape[-1] != size:
            chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False)
        a = split.g(chunk)
        rows.append((a.mean(dim=tuple(range(2, a.dim()))) if a.dim() > 2 else a).cpu().numpy())
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)


def position_boxes(grid_hw: tuple[int, ...], size: int) -> np.ndarray:
    """The input pixels each feature-map position covers, as its cell of an even split of the image:
    ``(h · w, 4)`` ``(x0, y0, x1, y1)`` int32, row-major. A vector layer (no grid) gives the whole image."""
    if len(grid_hw) != 2:
        return np.array([(0, 0, size, size)], dtype=np.int32)
    h, w = grid_hw
    ys = np.floor(np.arange(h + 1) * size / h).astype(np.int32)
    xs = np.floor(np.arange(w + 1) * size / w).astype(np.int32)
    return np.array([(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(h) for c in range(w)], dtype=np.int32)
