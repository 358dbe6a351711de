"""Receptive fields of a model's layers, measured exactly on the model as built for the run.

A conv layer's *theoretical* receptive field — the input pixels that can change one output position — is what
stride/kernel arithmetic gives for a plain chain of convolutions and pools. Real models are not plain chains
(functional pooling, residual branches, dilations, grouped convolutions), so neuronscan measures it instead:

1. a **positive surrogate** of the model (a deep copy in float64 on the CPU): every convolution and linear
   weight set to ``1 / fan_in`` and every bias to 0, every normalisation layer (BatchNorm, LayerNorm,
   GroupNorm, InstanceNorm) replaced by the identity; max pooling runs as average pooling with the same window
   (``torch.nn.functional.max_pool2d`` and ``adaptive_max_pool2d`` are patched while the surrogate runs).
   On an all-ones input every activation is then positive, ReLU-like functions pass their gradient, and a
   pooling window passes it to every element, so **the gradient of an output position w.r.t. the input is
   nonzero exactly on the pixels connected to it** — its theoretical receptive field, with no dependence on
   the trained weights (a dead ReLU or a max-pool's argmax does not shrink it).
2. For each layer, the gradients of two neighbouring output cells near the centre (one backward pass, a batch
   of two) give the field's size (the support's extent), stride (the shift between the two supports) and
   offset (where cell 0's field starts). When the support touches the canvas border it may be clipped, so the
   canvas is doubled (up to ``max_scale`` × the input side) until it does not. A layer whose support is the
   whole canvas at every size (after a global pooling, squeeze-excitation or attention) is *global*: its
   crops are whole images.

Token layers (``(B, T, D)``, a ViT) use their patch grid: cell (i, j) of a ``g × g`` grid is
``[⌊iS/g⌋, ⌊(i+1)S/g⌋)`` (attention makes their theoretical field global; the patch is what the argmax
location names). Vector layers (``(B, D)``) have no layout: global.

torch only; no Ray, no I/O.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ReceptiveField", "module_of", "receptive_fields"]

logger = logging.getLogger(__name__)

STATISTICS = ("mean", "max", "cls", "patch_mean")
"""Suffixes ``:<stat>`` of the probe's layer names (`neuronscan.models.reduced_name`)."""


@dataclass(frozen=True)
class ReceptiveField:
    """Where one layer's output cells look in the model input (pixels of the square ``input_size`` input).

    Attributes:
        kind: ``conv`` (a feature map: ``size``/``stride``/``offset`` hold), ``tokens`` (a square patch grid),
            ``cells`` (a feature map whose field could not be measured: its grid cells), ``global`` (no spatial
            layout, or every cell sees the whole input).
        grid: ``(h, w)`` output cells at ``input_size``; ``(1, 1)`` for ``global``.
        size: ``(rows, cols)`` of one cell's field (``conv``); the input side for ``global``.
        stride: ``(rows, cols)`` between neighbouring cells' fields (``conv``).
        offset: ``(row, col)`` where cell (0, 0)'s field starts; negative where it reaches into the padding.
        input_size: the model input side the grid is for.
        clipped: the field could not be measured away from the canvas border (the model refused a larger
            input); ``size`` is then a lower bound.
        canvas: the input side the field was measured at.
    """

    kind: str
    grid: tuple[int, int]
    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    input_size: int
    clipped: bool = False
    canvas: int = 0

    def cell_box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """The field of cell (i, j) as a half-open pixel box ``(y0, x0, y1, x1)`` (not clipped to the input)."""
        s = self.input_size
        if self.kind == "global":
            return 0, 0, s, s
        if self.kind in ("tokens", "cells"):
            h, w = self.grid
            return (i * s) // h, (j * s) // w, ((i + 1) * s) // h, ((j + 1) * s) // w
        y0 = self.offset[0] + i * self.stride[0]
        x0 = self.offset[1] + j * self.stride[1]
        return y0, x0, y0 + self.size[0], x0 + self.size[1]

    def as_dict(self) -> dict:
        """JSON-ready fields (for ``describe/describe.json``)."""
        return {"kind": self.kind, "grid": list(self.grid), "size": list(self.size), "stride": list(self.stride),
                "offset": list(self.offset), "input_size": self.input_size, "clipped": self.clipped,
                "canvas": self.canvas}


def module_of(layer: str) -> str:
    """The hooked module of a probe layer name: ``conv4:mean`` → ``conv4``, ``head`` → ``head``.

    A derived layer (``conv4:mean@sae``) maps to the module it was learnt from.
    """
    name = str(layer).split("@", 1)[0]
    base, sep, stat = name.rpartition(":")
    return base if sep and stat in STATISTICS else name


class _Stop(Exception):
    """Raised by the last forward hook: the rest of the model (its head) never runs."""


def _positive_surrogate(module):
    """A float64 CPU copy with positive averaging weights, identity norms and zero biases (see module doc)."""
    import torch
    from torch import nn

    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
    model = copy.deepcopy(module).to("cpu", torch.float32).eval()

    def replace(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, norms):
                setattr(parent, name, nn.Identity())
            else:
                replace(child)

    replace(model)
    with torch.no_grad():
        for m in model.modules():
            weight = getattr(m, "weight", None)
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(weight, torch.Tensor):
                # 1 / (inputs per output channel x sqrt(kernel taps)): a layer scales a pixel's gradient by
                # between 1/sqrt(taps) (one path) and sqrt(taps) (all paths), so even a 100-layer chain stays
                # inside float32's range.
                transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
                per_tap = weight.shape[0] if transposed else weight.shape[1]
                taps = max(1, int(np.prod(weight.shape[2:]))) if weight.dim() > 2 else 1
                weight.fill_(1.0 / (max(1, int(per_tap)) * math.sqrt(taps)))
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
        for p in model.parameters():
            p.requires_grad_(False)
    return model


@contextlib.contextmanager
def _max_pool_as_average() -> Iterator[None]:
    """While active, ``F.max_pool2d`` / ``F.adaptive_max_pool2d`` average over the same windows."""
    import torch.nn.functional as F

    orig_max, orig_adaptive = F.max_pool2d, F.adaptive_max_pool2d

    def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        dil = dilation if isinstance(dilation, (tuple, list)) else (dilation, dilation)
        if return_indices or tuple(dil) != (1, 1):
            return orig_max(input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                            return_indices=return_indices)
        return F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode=ceil_mode, count_include_pad=True)

    def adaptive_max_pool2d(input, output_size, return_indices=False):
        if return_indices:
            return orig_adaptive(input, output_size, return_indices=True)
        return F.adaptive_avg_pool2d(input, output_size)

    F.max_pool2d, F.adaptive_max_pool2d = max_pool2d, adaptive_max_pool2d
    try:
        yield
    finally:
        F.max_pool2d, F.adaptive_max_pool2d = orig_max, orig_adaptive


def _run(model, modules: Sequence[str], side: int, batch: int, requires_grad: bool):
    """Forward an all-ones ``(batch, 3, side, side)`` input; return the input and each module's output."""
    import torch

    named = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    wanted = set(modules)

    def hook_for(name: str):
        def hook(_m, _i, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            captured[name] = out
            if wanted <= set(captured):
                raise _Stop

        return hook

    handles = [named[name].register_forward_hook(hook_for(name)) for name in modules]
    x = torch.ones(batch, 3, side, side, dtype=torch.float32, requires_grad=requires_grad)
    try:
        with torch.set_grad_enabled(requires_grad):
            model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [m for m in modules if m not in captured]
    if missing:
        raise ValueError(f"layers {missing} did not run in the forward pass")
    return x, captured


def _support(grad) -> tuple[int, int, int, int] | None:
    """Bounding box ``(y0, x0, y1, x1)`` of the nonzero pixels of a ``(3, H, W)`` gradient (None if empty)."""
    mask = (grad.abs().sum(0) > 0).numpy()
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _measure(out, x):
    """Supports of the most central cell of a conv output ``(2, C, h, w)`` and of its upper-left neighbour."""
    import torch

    h, w = int(out.shape[2]), int(out.shape[3])
    cy, cx = h // 2, w // 2  # the cell whose grid centre is nearest the canvas centre (the lower one of two)
    ny, nx = max(cy - 1, 0), max(cx - 1, 0)
    loss = out[0, :, cy, cx].sum() + out[1, :, ny, nx].sum()
    (grad,) = torch.autograd.grad(loss, x, retain_graph=True)
    return (h, w), (cy, cx), (ny, nx), _support(grad[0]), _support(grad[1])


def receptive_fields(module, layers: Sequence[str], input_size: int, *, max_scale: int = 4,
                     max_canvas: int = 2048) -> dict[str, ReceptiveField]:
    """The receptive field of each probe layer (``conv4:mean``, ``blocks.11``, ``head``) of ``module``.

    Args:
        module: the model as built for the run (`neuronscan.models.build_model(...).module`); not modified.
        layers: probe layer names (statistic suffixes and derived-layer suffixes are stripped, `module_of`).
        input_size: the side of the square model input the run probed at.
        max_scale: largest canvas, as a multiple of ``input_size``, tried to measure a field unclipped.
        max_canvas: largest canvas side in pixels.

    Returns:
        layer name → `ReceptiveField` (layers of one module share it).

    Raises:
        ValueError: a layer's module is not in the model, or did not run.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1))
        >>> rf = receptive_fields(net, ["1:mean"], 16)["1:mean"]
        >>> rf.size, rf.stride, rf.offset, rf.grid
        ((5, 5), (2, 2), (-2, -2), (8, 8))
    """
    named = dict(module.named_modules())
    by_module: dict[str, list[str]] = {}
    for layer in layers:
        name = module_of(layer)
        if name not in named:
            raise ValueError(f"layer {layer!r}: module {name!r} is not in the model")
        by_module.setdefault(name, []).append(layer)
    if not by_module:
        return {}
    modules = list(by_module)
    try:
        found = _measured(_positive_surrogate(module), modules, input_size, max_scale, max_canvas)
    except Exception as exc:  # noqa: BLE001 - no surrogate of this model (an exported graph, a custom op)
        logger.warning("receptive fields of %s could not be measured on a positive surrogate (%s: %s); the crops "
                       "are the layers' grid cells", ", ".join(modules), type(exc).__name__, exc)
        found = _grid_cells(module, modules, input_size)
    return {layer: found[name] for name, names in by_module.items() for layer in names}


def _grid_cells(module, modules: list[str], input_size: int) -> dict[str, ReceptiveField]:
    """Fallback: each layer's output grid on the real model, a cell per position (``kind="cells"``)."""
    import torch

    named = dict(module.named_modules())
    outs: dict[str, tuple] = {}
    handles = [named[m].register_forward_hook(
        lambda _m, _i, o, name=m: outs.__setitem__(name, tuple((o[0] if isinstance(o, (tuple, list)) else o).shape)))
        for m in modules]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in handles:
            h.remove()
    found = {}
    for name in modules:
        shape = outs.get(name)
        if shape is None:
            raise ValueError(f"layer {name!r} did not run in the forward pass")
        if len(shape) == 4:
            h, w = int(shape[2]), int(shape[3])
            found[name] = ReceptiveField("cells", (h, w), (input_size // h, input_size // w),
                                         (input_size // h, input_size // w), (0, 0), input_size, clipped=True,
                                         canvas=input_size)
        else:
            found[name] = _global(input_size)
    return found


def _measured(surrogate, modules: list[str], input_size: int, max_scale: int,
              max_canvas: int) -> dict[str, ReceptiveField]:
    """Every module's field on the positive surrogate (see the module docstring)."""
    found: dict[str, ReceptiveField] = {}
    with _max_pool_as_average():
        _, outs = _run(surrogate, modules, input_size, 1, requires_grad=False)
        conv: dict[str, tuple[int, int]] = {}
        for name, out in outs.items():
            if out.dim() == 4:
                conv[name] = (int(out.shape[2]), int(out.shape[3]))
            elif out.dim() == 3:
                # As the probe's hooks locate a token layer's argmax: tokens 1.. (0 is the class token) on a
                # square grid, else no location.
                patches = int(out.shape[1]) - 1 if int(out.shape[1]) > 1 else int(out.shape[1])
                side = math.isqrt(patches)
                if side * side == patches:
                    cell = max(1, input_size // side)
                    found[name] = ReceptiveField("tokens", (side, side), (cell, cell), (cell, cell), (0, 0),
                                                 input_size, canvas=input_size)
                else:
                    found[name] = _global(input_size)
            else:
                found[name] = _global(input_size)
        pending = dict(conv)
        canvas = input_size
        last: dict[str, tuple] = {}
        whole: dict[str, int] = {}
        limit = min(max_canvas, max(input_size, max_scale * input_size))
        while pending:
            try:
                x, outs = _run(surrogate, list(pending), canvas, 2, requires_grad=True)
            except Exception:  # noqa: BLE001 - a model that takes only its own input size: keep what we have
                if canvas == input_size:
                    raise
                break
            for name in list(pending):
                out = outs[name]
                if out.dim() != 4:
                    found[name] = _global(input_size)
                    del pending[name]
                    continue
                measured = _measure(out, x)
                last[name] = (canvas, *measured)
                (h, w), _c, _n, a, _b = measured
                if a is None:
                    found[name] = _global(input_size)
                    del pending[name]
                    continue
                if a == (0, 0, canvas, canvas):
                    whole[name] = whole.get(name, 0) + 1
                    if whole[name] >= 2 or (h, w) == (1, 1):
                        found[name] = _global(input_size)
                        del pending[name]
                    continue
                if 0 < a[0] and 0 < a[1] and a[2] < canvas and a[3] < canvas:
                    found[name] = _conv_field(pending[name], input_size, canvas, measured, clipped=False)
                    del pending[name]
            if canvas >= limit:
                break
            canvas = min(limit, canvas * 2)
        for name in pending:
            if name in whole or name not in last:
                found[name] = _global(input_size)
                continue
            canvas_used, *measured = last[name]
            found[name] = _conv_field(pending[name], input_size, canvas_used, tuple(measured), clipped=True)
    return found


def _global(input_size: int) -> ReceptiveField:
    return ReceptiveField("global", (1, 1), (input_size, input_size), (input_size, input_size), (0, 0), input_size,
                          canvas=input_size)


def _conv_field(grid: tuple[int, int], input_size: int, canvas: int, measured: tuple, *,
                clipped: bool) -> ReceptiveField:
    """A conv field from the supports ``a`` of cell ``c`` and ``b`` of its neighbour ``n`` on a ``canvas`` input.

    The stride is the shift between the two supports, taken on the edge neither touches the canvas border at;
    the offset is where ``a`` starts (its far edge minus the size when ``a`` is clipped there).
    """
    hw, (cy, cx), (ny, nx), a, b = measured
    size = (a[2] - a[0], a[3] - a[1])
    stride, offset = [], []
    for axis, (c, n) in enumerate(((cy, ny), (cx, nx))):
        lo_a, hi_a = a[axis], a[axis + 2]
        step = None
        if b is not None and n != c:
            lo_b, hi_b = b[axis], b[axis + 2]
            if lo_a > 0 and lo_b > 0:
                step = (lo_a - lo_b) // (c - n)
            elif hi_a < canvas and hi_b < canvas:
                step = (hi_a - hi_b) // (c - n)
        if step is None:  # one cell along this axis, or both edges clipped: the grid's own spacing
            step = max(1, round(canvas / max(1, hw[axis])))
        stride.append(max(1, int(step)))
        start = lo_a if (lo_a > 0 or hi_a >= canvas) else hi_a - size[axis]
        offset.append(int(start) - c * stride[axis])
    return ReceptiveField("conv", grid, size, (stride[0], stride[1]), (offset[0], offset[1]), input_size,
                          clipped=clipped, canvas=canvas)
