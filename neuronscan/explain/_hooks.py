"""Reading and replacing one layer's output in a model (forward hooks), for training and for fidelity."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from neuronscan.errors import ModelError

__all__ = ["LayerTap", "pooled", "shift_to_statistic", "split_layer_name"]


def split_layer_name(name: str) -> tuple[str, str | None]:
    """``conv4:mean`` → ``("conv4", "mean")``; a bare name has no statistic."""
    module, _, stat = str(name).partition(":")
    return module, (stat or None)


def pooled(out: torch.Tensor, stat: str | None) -> torch.Tensor:
    """The probe's statistic of a layer output (`neuronscan.models.ActivationRecorder`): conv maps ``(B, C, h, w)``
    → mean or max over space; a vector ``(B, D)`` is kept."""
    if out.dim() == 2 and stat is None:
        return out
    if out.dim() != 4 or stat not in ("mean", "max"):
        raise ModelError(f"cannot take statistic {stat!r} of an output of shape {tuple(out.shape)}")
    flat = out.flatten(2)
    return flat.mean(-1) if stat == "mean" else flat.amax(-1)


def shift_to_statistic(out: torch.Tensor, stat: str | None, target: torch.Tensor) -> torch.Tensor:
    """A layer output whose statistic equals ``target`` ``(B, C)``: a conv map shifted by a constant per channel,
    ``out + (target - stat(out))`` (a constant moves the spatial mean and the max alike), or ``target`` itself
    for a vector output. Where the model pools the map by its global mean straight into the head (ShapesNet's
    ``conv4``), the head then sees exactly ``target``."""
    if out.dim() == 2 and stat is None:
        return target.to(out.dtype)
    delta = (target - pooled(out, stat)).to(out.dtype)
    return out + delta[:, :, None, None]


class LayerTap:
    """A forward hook on ``layer`` of ``model``: keeps its last output in ``captured`` and, while ``replace`` is set,
    returns ``replace(output)`` in its place (the model runs on from the replacement).

    Example:
        >>> tap = LayerTap(model, "conv3")  # doctest: +SKIP
        >>> logits = model(x); f = tap.captured  # doctest: +SKIP
        >>> tap.replace = lambda out: f_hat; logits_hat = model(x)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, layer: str):
        modules = dict(model.named_modules())
        if layer not in modules:
            raise ModelError(f"unknown layer {layer!r}")
        self.captured: torch.Tensor | None = None
        self.replace: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._handle = modules[layer].register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, out):
        first = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(first, torch.Tensor):
            raise ModelError(f"layer output is {type(first).__name__}, not a tensor")
        self.captured = first
        if self.replace is None:
            return None
        new = self.replace(first)
        if isinstance(out, tuple):
            return (new, *out[1:])
        if isinstance(out, list):
            return [new, *out[1:]]
        return new

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> LayerTap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
