"""The model split (g, h) and the crops: geometry against hand-computed boxes, h(g(x)) against the model, and a
layer that is not a cut of the model refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuronscan.discover import ModelSplit, crop_activations, crop_grid, extract_crops, position_boxes
from neuronscan.errors import ModelError
from tests.unit.discover._planted import K_TRUE, PlantedModel, S, planted_dictionary, planted_images


def test_crop_grid_follows_craft_stride():
    g = crop_grid(64, 32)  # stride int(0.8 * 32) = 25: starts 0, 25
    assert g.stride == 25 and g.n == 4
    assert g.boxes.tolist() == [[0, 0, 32, 32], [25, 0, 57, 32], [0, 25, 32, 57], [25, 25, 57, 57]]
    g = crop_grid(224, 64)  # CRAFT's ImageNet setting: stride 51, starts 0, 51, 102, 153
    assert g.stride == 51 and g.n == 16 and g.boxes[-1].tolist() == [153, 153, 217, 217]
    assert crop_grid(64, 64).n == 1
    with pytest.raises(ValueError, match="patch_size"):
        crop_grid(64, 65)


def test_extract_crops_are_the_boxes_pixels_in_unfold_order():
    x = torch.arange(2 * 3 * 20 * 20, dtype=torch.float32).reshape(2, 3, 20, 20)
    grid = crop_grid(20, 10)  # stride 8: starts 0, 8
    crops = extract_crops(x, grid)
    assert crops.shape == (2 * grid.n, 3, 10, 10)
    for i in range(2):
        for j, (x0, y0, x1, y1) in enumerate(grid.boxes):
            assert torch.equal(crops[i * grid.n + j], x[i, :, y0:y1, x0:x1])


def test_position_boxes_tile_the_image():
    boxes = position_boxes((8, 8), 64)
    assert boxes.shape == (64, 4) and boxes[0].tolist() == [0, 0, 8, 8] and boxes[9].tolist() == [8, 8, 16, 16]
    cover = np.zeros((64, 64), dtype=int)
    for x0, y0, x1, y1 in boxes:
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()
    assert position_boxes((3, 5), 32)[-1].tolist() == [25, 21, 32, 32]
    assert position_boxes((), 32).tolist() == [[0, 0, 32, 32]]


def test_split_reproduces_shapesnet():
    from neuronscan.demo.model import load_shapesnet

    model = load_shapesnet()
    split = ModelSplit(model, "conv4", input_size=64)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    a = split.g(x)
    assert a.shape == (3, 256, 8, 8) and float(a.min()) >= 0  # post-ReLU
    with torch.no_grad():
        want = model(x)
        got = split.h(a)
    assert torch.allclose(got, want, atol=1e-4)
    assert split._dummy_side == 8  # the layers before the cut run on an 8-pixel blank
    a.requires_grad_(True)
    split.h(a)[:, 0].sum().backward()  # differentiable in the latent
    assert a.grad is not None and float(a.grad.abs().sum()) > 0


def test_split_reproduces_the_planted_model():
    model = PlantedModel(planted_dictionary())
    split = ModelSplit(model, "latent", input_size=S, in_channels=K_TRUE)
    x = planted_images(4)
    with torch.no_grad():
        assert torch.allclose(split.h(split.g(x)), model(x), atol=1e-5)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x))) + x  # the skip bypasses conv2
        return self.head(y.mean(dim=(2, 3)))


def test_a_layer_the_network_bypasses_is_refused():
    torch.manual_seed(0)
    with pytest.raises(ModelError, match="not a cut of the model"):
        ModelSplit(_Residual(), "conv2", input_size=16)
    with pytest.raises(ModelError, match="no module"):
        ModelSplit(_Residual(), "conv9", input_size=16)


def test_crop_activations_pool_g_over_each_resized_crop():
    model = PlantedModel(planted_dictionary())
    split = ModelSplit(model, "latent", input_size=S, in_channels=K_TRUE)
    x = planted_images(3, seed=2)
    whole = crop_activations(split, x, crop_grid(S, S))  # one crop: the image itself, no resize
    assert np.allclose(whole, split.g(x).mean(dim=(2, 3)).numpy(), atol=1e-6)
    grid = crop_grid(S, 8)  # stride 6: 4 crops
    rows = crop_activations(split, x, grid, batch_size=5)
    assert rows.shape == (3 * grid.n, planted_dictionary().shape[1])
    x0, y0, x1, y1 = grid.boxes[3]
    crop = F.interpolate(x[1:2, :, y0:y1, x0:x1], size=(S, S), mode="bilinear", align_corners=False)
    assert np.allclose(rows[grid.n + 3], split.g(crop).mean(dim=(2, 3)).numpy()[0], atol=1e-6)
