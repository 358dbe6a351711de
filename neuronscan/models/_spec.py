"""What a built model is (`ModelSpec`, `LayerInfo`) and the table of registered builders.

The built-in models (`neuronscan/models/_builtin.py`) register here; the registry proper
(`neuronscan/models/_registry.py`) imports both, so neither imports the other back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

__all__ = ["ModelSpec", "LayerInfo", "register_model", "REGISTRY", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelSpec:
    """A model ready to probe: the module (eval mode) and the input it expects."""

    module: nn.Module
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    name: str = ""
    source: str = ""
    weights: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LayerInfo:
    """A hookable module: its dotted name, type, output shape (without batch) and unit count."""

    name: str
    type: str
    shape: tuple[int, ...]
    n_units: int


@dataclass(frozen=True)
class _Entry:
    name: str
    builder: Callable[..., ModelSpec]
    description: str
    default_layers: tuple[str, ...]


REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, *, description: str = "", default_layers: tuple[str, ...] = ()):
    """Register a builder ``fn(weights: str | None) -> ModelSpec`` under ``name``.

    Example:
        >>> @register_model("tiny", description="two convs")  # doctest: +SKIP
        ... def _tiny(weights=None): return ModelSpec(nn.Sequential(nn.Conv2d(3, 4, 3)), input_size=32)
    """

    def deco(fn: Callable[..., ModelSpec]) -> Callable[..., ModelSpec]:
        if name in REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        REGISTRY[name] = _Entry(name, fn, description or (fn.__doc__ or "").strip().split("\n")[0], default_layers)
        return fn

    return deco
