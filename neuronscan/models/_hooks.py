"""Forward hooks that reduce each chosen layer's output to one statistic per (image, unit) on the device."""

from __future__ import annotations

import math

import torch
from torch import nn

from neuronscan.errors import ModelError

__all__ = ["ActivationRecorder", "reduced_name", "STATS_FOR_RANK"]

# Which statistics apply to which output rank (without batch): conv maps, token sequences, vectors.
STATS_FOR_RANK = {3: ("mean", "max"), 2: ("cls", "patch_mean", "mean", "max"), 1: ()}


def reduced_name(layer: str, stat: str | None) -> str:
    """Name of a layer statistic as it appears in outputs: ``layer4:max``; vectors keep the bare name."""
    return f"{layer}:{stat}" if stat else layer


def _grid_location(idx: torch.Tensor, height: int, width: int) -> torch.Tensor:
    y = (torch.div(idx, width, rounding_mode="floor").float() + 0.5) / height
    x = (torch.remainder(idx, width).float() + 0.5) / width
    return torch.stack([y, x], dim=-1)


class ActivationRecorder:
    """Hook ``layers`` of ``module`` and return, per forward, each layer statistic as (batch, units).

    Conv outputs (B, C, H, W) give ``mean``/``max`` over space; token outputs (B, T, D) give ``cls``
    (token 0), ``patch_mean`` (tokens 1..T-1), ``mean``/``max`` over tokens; vectors (B, D) are kept as is.
    Alongside each statistic comes the argmax location (B, units, 2) as (y, x) fractions of the input,
    or NaN where a layer has no spatial layout.

    Example:
        >>> rec = ActivationRecorder(model, ["layer4"], ["mean", "max"])  # doctest: +SKIP
        >>> outs = rec(images)  # doctest: +SKIP

        ``outs`` maps ``"layer4:mean"`` and ``"layer4:max"`` to ``(values, locations)``.
    """

    def __init__(self, module: nn.Module, layers: list[str], reduce: list[str]):
        self.module = module
        self.layers = list(layers)
        self.reduce = list(reduce)
        self._captured: dict[str, torch.Tensor] = {}
        self._handles = []
        modules = dict(module.named_modules())
        for layer in self.layers:
            if layer not in modules:
                raise ModelError(f"unknown layer {layer!r}")
            self._handles.append(modules[layer].register_forward_hook(self._make_hook(layer)))

    def _make_hook(self, layer: str):
        def hook(_mod, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            if not isinstance(out, torch.Tensor):
                raise ModelError(f"layer {layer!r} returned {type(out).__name__}, not a tensor; pick another layer")
            self._captured[layer] = out

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _reduce_one(self, layer: str, out: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        rank = out.dim() - 1
        batch = out.shape[0]
        if rank == 1:
            loc = torch.full((batch, out.shape[1], 2), float("nan"), device=out.device)
            return {reduced_name(layer, None): (out.float(), loc)}
        allowed = STATS_FOR_RANK.get(rank)
        if allowed is None:
            raise ModelError(f"layer {layer!r} output has shape {tuple(out.shape)}; expected 2-D, 3-D or 4-D")
        bad = [s for s in self.reduce if s not in allowed]
        if bad:
            kind = "a conv map (B, C, H, W)" if rank == 3 else "tokens (B, T, D)"
            raise ModelError(
                f"reduce {bad} does not apply to layer {layer!r}, which outputs {kind}; use {list(allowed)}"
            )
        if rank == 3:
            flat = out.flatten(2)  # (B, C, H*W)
            idx = flat.argmax(dim=-1)
            loc = _grid_location(idx, out.shape[2], out.shape[3])
            res = {}
            for stat in self.reduce:
                values = flat.float().mean(-1) if stat == "mean" else flat.amax(-1).float()
                res[reduced_name(layer, stat)] = (values, loc)
            return res
        n_tokens = out.shape[1]
        patches = out[:, 1:] if n_tokens > 1 else out
        side = math.isqrt(patches.shape[1])
        idx = patches.argmax(dim=1)  # (B, D)
        if side * side == patches.shape[1]:
            loc = _grid_location(idx, side, side)
        else:
            loc = torch.full((batch, out.shape[2], 2), float("nan"), device=out.device)
        res = {}
        for stat in self.reduce:
            if stat == "cls":
                values = out[:, 0]
            elif stat == "patch_mean":
                values = patches.float().mean(1)
            elif stat == "mean":
                values = out.float().mean(1)
            else:
                values = out.amax(1)
            res[reduced_name(layer, stat)] = (values.float(), loc)
        return res

    def __call__(self, images: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        self._captured.clear()
        self.module(images)
        missing = [layer for layer in self.layers if layer not in self._captured]
        if missing:
            raise ModelError(f"layers {missing} did not run in the forward pass")
        result: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer in self.layers:
            result.update(self._reduce_one(layer, self._captured[layer]))
        self._captured.clear()
        return result
