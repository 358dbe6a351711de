"""Receptive fields measured on the model equal the ones computed by hand for small conv stacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuronscan.describe import module_of, receptive_fields


class _Stack(nn.Module):
    """conv3 s1 p1 → ReLU → conv3 s2 p1 → BN → functional max-pool 2 → conv5 s1 p2 → conv1 → global pool → linear.

    By hand, cell i of each layer covers input rows (half-open):
      a: [i − 1, i + 2)          size 3, stride 1, offset −1
      b: a-cells [2i − 1, 2i + 2) → [2i − 2, 2i + 3)          size 5, stride 2, offset −2
      c: b-cells [2i, 2i + 2)     → [4i − 2, 4i + 5)          size 7, stride 4, offset −2
      d: c-cells [i − 2, i + 3)   → [4i − 10, 4i + 13)        size 23, stride 4, offset −10
      e (1×1 conv): as d
    """

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.b = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.d = nn.Conv2d(6, 5, 5, padding=2)
        self.e = nn.Conv2d(5, 7, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(7, 3)

    def forward(self, x):
        x = self.bn(self.b(self.act(self.a(x))))
        x = F.max_pool2d(x, 2)
        x = self.e(self.d(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.mark.parametrize(("layer", "size", "stride", "offset", "grid"), [
    ("a", 3, 1, -1, 32), ("b:mean", 5, 2, -2, 16), ("d:max", 23, 4, -10, 8), ("e", 23, 4, -10, 8),
])
def test_a_small_conv_stack_matches_the_hand_computed_fields(layer, size, stride, offset, grid):
    model = _Stack().eval()
    with torch.no_grad():  # trained-looking weights: negative, zero, dead ReLUs change nothing
        for p in model.parameters():
            p.normal_()
        model.a.weight[:2] = 0.0
    rf = receptive_fields(model, [layer], 32)[layer]
    assert rf.kind == "conv" and not rf.clipped
    assert rf.size == (size, size) and rf.stride == (stride, stride) and rf.offset == (offset, offset)
    assert rf.grid == (grid, grid)


def test_a_field_larger_than_the_input_is_measured_on_a_larger_canvas():
    """At a 16-pixel input, layer d's 23-pixel field does not fit; it is measured at 32 or 64 pixels."""
    rf = receptive_fields(_Stack().eval(), ["d"], 16)["d"]
    assert (rf.size, rf.stride, rf.offset, rf.grid) == ((23, 23), (4, 4), (-10, -10), (4, 4))
    assert rf.canvas > 16 and not rf.clipped


def test_pooled_and_vector_layers_are_global():
    fields = receptive_fields(_Stack().eval(), ["pool", "fc"], 32)
    assert {k: v.kind for k, v in fields.items()} == {"pool": "global", "fc": "global"}
    assert fields["fc"].cell_box(0, 0) == (0, 0, 32, 32)


def test_shapesnet_fields_by_hand():
    """ShapesNet: conv1 5×5 s2 p2; conv2 3×3; max-pool 2; conv3 3×3; max-pool 2; conv4 3×3 (module docstring)."""
    from neuronscan.demo.model import ShapesNet

    fields = receptive_fields(ShapesNet().eval(), ["conv1", "conv2:mean", "conv3:max", "conv4:mean", "head"], 64)
    got = {k: (v.size[0], v.stride[0], v.offset[0], v.grid[0]) for k, v in fields.items() if v.kind == "conv"}
    assert got == {"conv1": (5, 2, -2, 32), "conv2:mean": (9, 2, -4, 32), "conv3:max": (19, 4, -8, 16),
                   "conv4:mean": (39, 8, -16, 8)}
    assert fields["head"].kind == "global"
    assert fields["conv4:mean"].cell_box(3, 0) == (8, -16, 47, 23)


def test_the_model_is_not_modified():
    model = _Stack().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    receptive_fields(model, ["d"], 32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert F.max_pool2d.__name__ == "max_pool2d" and F.max_pool2d(torch.arange(4.0).view(1, 1, 2, 2), 2).item() == 3


def test_a_token_layer_uses_its_patch_grid():
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Conv2d(3, 8, 8, stride=8)
            self.blocks = nn.Identity()

        def forward(self, x):
            t = self.proj(x).flatten(2).transpose(1, 2)  # (B, 16, 8)
            return self.blocks(torch.cat([t.mean(1, keepdim=True), t], 1))  # a class token in front

    rf = receptive_fields(Tokens().eval(), ["blocks:cls", "proj"], 32)
    assert rf["blocks:cls"].kind == "tokens" and rf["blocks:cls"].grid == (4, 4)
    assert rf["blocks:cls"].cell_box(1, 2) == (8, 16, 16, 24)
    assert (rf["proj"].size, rf["proj"].stride, rf["proj"].offset) == ((8, 8), (8, 8), (0, 0))


def test_unknown_layers_and_layer_names():
    assert module_of("conv4:mean") == "conv4" and module_of("head") == "head"
    assert module_of("conv4:mean@sae") == "conv4" and module_of("layer4.1:patch_mean") == "layer4.1"
    with pytest.raises(ValueError, match="nope"):
        receptive_fields(_Stack(), ["nope:mean"], 32)


def test_a_model_without_a_surrogate_gets_its_grid_cells(monkeypatch, caplog):
    from neuronscan.describe import _rf, crop_boxes

    def refuse(_module):
        raise RuntimeError("no deep copy of this graph")

    monkeypatch.setattr(_rf, "_positive_surrogate", refuse)
    fields = receptive_fields(_Stack().eval(), ["d:max", "fc"], 32)
    rf = fields["d:max"]
    assert (rf.kind, rf.grid, rf.size, rf.clipped) == ("cells", (8, 8), (4, 4), True)
    assert fields["fc"].kind == "global" and "grid cells" in caplog.text
    assert crop_boxes([0.0625], [0.9375], rf, min_crop=0.125).tolist() == [[28, 0, 32, 4]]
