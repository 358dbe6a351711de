"""Models that ship with neuronscan."""

from __future__ import annotations

import torch
from torch import nn

from neuronscan.errors import ModelError
from neuronscan.models._spec import ModelSpec, register_model


@register_model(
    "shapesnet",
    description="small CNN trained on the synthetic shapes world (the offline demo model; packaged checkpoint)",
    default_layers=("conv2", "conv3", "conv4"),
)
def _shapesnet(weights: str | None = None) -> ModelSpec:
    from neuronscan.demo.model import INPUT_SIZE, MEAN, STD, ShapesNet, load_shapesnet

    if weights in ("random", "none"):
        torch.manual_seed(0)
        module = ShapesNet()
    else:
        try:
            module = load_shapesnet()
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            raise ModelError(str(exc)) from exc
    return ModelSpec(module, INPUT_SIZE, tuple(MEAN), tuple(STD), name="shapesnet", source="builtin",
                     weights=weights or "packaged")


class _TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.conv2(self.conv1(x))), 1))


@register_model("tinycnn", description="two-conv random CNN (seeded) for smoke tests",
                default_layers=("conv1", "conv2"))
def _tinycnn(weights: str | None = None) -> ModelSpec:
    torch.manual_seed(0)
    return ModelSpec(_TinyCNN(), 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), name="tinycnn", source="builtin",
                     weights="seeded")
