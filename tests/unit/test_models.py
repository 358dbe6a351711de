"""Model registry, layer discovery and hooks (no Ray)."""

from __future__ import annotations

import pytest
import torch

from neuronscan.errors import ModelError
from neuronscan.models import (
    ActivationRecorder,
    build_model,
    list_layers,
    load_state_dict_file,
    registered_models,
    resolve_layers,
)


@pytest.fixture(scope="module")
def resnet18():
    return build_model("resnet18", weights="random")


@pytest.mark.parametrize("name", sorted(registered_models()))
def test_every_registered_model_builds_and_lists_layers(name):
    spec = build_model(name, weights="random")
    infos = list_layers(spec)
    names = [i.name for i in infos]
    for layer in registered_models()[name].default_layers:
        assert layer in names
    assert all(i.n_units > 0 for i in infos)


def test_torchvision_layers_and_units(resnet18):
    infos = {i.name: i for i in list_layers(resnet18)}
    assert infos["layer4"].n_units == 512 and infos["layer4"].shape == (512, 7, 7)
    assert infos["fc"].n_units == 1000


def test_resolve_layers_exact_glob_and_close_matches(resnet18):
    names = [i.name for i in list_layers(resnet18)]
    assert resolve_layers(["layer4", "layer3"], names) == ["layer3", "layer4"]
    assert resolve_layers(["layer?"], names) == ["layer1", "layer2", "layer3", "layer4"]
    with pytest.raises(ModelError, match=r"unknown layer 'layer5'; did you mean 'layer4'.*neuronscan layers resnet18"):
        resolve_layers(["layer5"], names, model_name="resnet18")
    with pytest.raises(ModelError, match="unknown layer 'block.*'"):
        resolve_layers(["block.*"], names)


def test_unknown_model_and_weights():
    with pytest.raises(ModelError, match="did you mean 'resnet18'"):
        build_model("resnet1", weights="random")
    with pytest.raises(ModelError, match="has no weights 'NOPE'"):
        build_model("resnet18", weights="NOPE")


def test_recorder_reduces_conv_tokens_and_vectors(resnet18):
    rec = ActivationRecorder(resnet18.module, ["layer4", "fc"], ["mean", "max"])
    x = torch.randn(3, 3, 64, 64)
    captured = {}
    hook = resnet18.module.layer4.register_forward_hook(lambda m, i, o: captured.setdefault("l4", o))
    with torch.inference_mode():
        outs = rec(x)
    hook.remove()
    raw = captured["l4"]
    torch.testing.assert_close(outs["layer4:mean"][0], raw.mean((2, 3)))
    torch.testing.assert_close(outs["layer4:max"][0], raw.amax((2, 3)))
    assert outs["fc"][0].shape == (3, 1000)
    loc = outs["layer4:max"][1]
    assert loc.shape == (3, 512, 2) and float(loc.min()) > 0 and float(loc.max()) < 1
    # the location is the argmax cell's centre
    flat = raw.flatten(2).argmax(-1)
    h, w = raw.shape[2:]
    torch.testing.assert_close(loc[..., 0], (flat // w + 0.5) / h)
    rec.close()


def test_recorder_token_stats():
    block = torch.nn.Identity()
    model = torch.nn.Sequential()
    model.add_module("blocks", block)
    rec = ActivationRecorder(model, ["blocks"], ["cls", "patch_mean"])
    tokens = torch.randn(2, 1 + 16, 8)
    outs = rec(tokens)
    torch.testing.assert_close(outs["blocks:cls"][0], tokens[:, 0])
    torch.testing.assert_close(outs["blocks:patch_mean"][0], tokens[:, 1:].mean(1))
    bad = ActivationRecorder(model, ["blocks"], ["cls"])
    with pytest.raises(ModelError, match="does not apply"):
        bad(torch.randn(2, 4, 5, 5))


def test_checkpoint_loads_with_weights_only(tmp_path, resnet18):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet18.module.state_dict().items()}}, path)
    state = load_state_dict_file(path)
    assert "fc.weight" in state
    spec = build_model("resnet18", weights="random", checkpoint=str(path))
    torch.testing.assert_close(spec.module.fc.weight, resnet18.module.fc.weight)


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    import datetime

    path = tmp_path / "evil.pt"
    torch.save({"obj": datetime.datetime(2020, 1, 1)}, path)  # any non-tensor global is refused
    with pytest.raises(ModelError, match="weights_only=True"):
        load_state_dict_file(path)
    with pytest.raises(ModelError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pt")


def test_factory_and_torchscript(tmp_path):
    spec = build_model("neuronscan.models._builtin:_TinyCNN", source="factory")
    spec.input_size = 32  # an exported graph fixes its spatial size; configs set it with data.image_size
    assert any(i.name == "conv2" for i in list_layers(spec))
    scripted = torch.jit.script(spec.module)
    path = tmp_path / "tiny.ts"
    scripted.save(str(path))
    # Why TorchScript is refused: torch refuses forward hooks on a loaded TorchScript file (scripted or traced)
    # and on each of its layers. If this ever stops failing, TorchScript models could be probed.
    torch.jit.trace(spec.module, torch.ones(1, 3, 32, 32)).save(str(tmp_path / "traced.ts"))
    for module in (torch.jit.load(str(path)), torch.jit.load(str(tmp_path / "traced.ts")), scripted):
        for _, layer in module.named_modules():
            with pytest.raises(RuntimeError, match="register_forward_hook is not supported on ScriptModules"):
                layer.register_forward_hook(lambda *a: None)
    for name in (str(path), str(tmp_path / "missing.ts"), str(tmp_path / "missing.torchscript")):
        with pytest.raises(ModelError, match=r"cannot probe TorchScript.*\.pt2.*package\.module:function") as info:
            build_model(name)  # source auto: a .ts name is TorchScript even when the file is not there
        assert ("does not exist" in str(info.value)) == ("missing" in name)
    with pytest.raises(ModelError, match="cannot probe TorchScript"):
        build_model(str(tmp_path / "missing.jit"), source="torchscript")


def test_timm_open_clip_and_export_sources(tmp_path):
    pytest.importorskip("timm")
    timm_spec = build_model("timm/resnet18", weights="random")
    assert timm_spec.source == "timm" and timm_spec.input_size == 224
    assert any(i.name == "layer4" and i.n_units == 512 for i in list_layers(timm_spec))

    clip_spec = build_model("open_clip/RN50", weights="random")
    assert clip_spec.source == "open_clip" and clip_spec.input_size == 224
    assert any(i.name == "layer4" for i in list_layers(clip_spec))

    tiny = build_model("tinycnn")
    # probes run batches of any size: export with a dynamic batch dimension
    exported = torch.export.export(tiny.module, (torch.zeros(2, 3, 32, 32),),
                                   dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    path = tmp_path / "tiny.pt2"
    torch.export.save(exported, str(path))
    spec = build_model(str(path))
    assert spec.source == "export"
    x = torch.rand(5, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(spec.module(x), tiny.module(x))
    spec.input_size = 32  # an exported graph fixes its spatial size; configs set it with data.image_size
    assert any(i.name == "conv2" for i in list_layers(spec))


def test_mean_and_std_override_the_models_own():
    default = build_model("tinycnn")
    spec = build_model("tinycnn", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert (spec.mean, spec.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert (default.mean, default.std) != (spec.mean, spec.std)
    # each is independent: the one not given stays the model's own
    only_mean = build_model("tinycnn", mean=[0.1, 0.2, 0.3])
    assert (only_mean.mean, only_mean.std) == ((0.1, 0.2, 0.3), default.std)
    factory = build_model("neuronscan.models._builtin:_TinyCNN", std=(0.5, 0.5, 0.5))
    assert (factory.mean, factory.std) == ((0.485, 0.456, 0.406), (0.5, 0.5, 0.5))  # ImageNet's mean kept
    for key, bad in (("std", (1.0, 0.0, 1.0)), ("mean", (0.5, 0.5)), ("mean", (float("nan"), 0, 0)),
                     ("std", "abc"), ("std", 0.5)):
        with pytest.raises(ModelError, match=rf"model.{key} must be 3 finite numbers \(R, G, B\)"):
            build_model("tinycnn", **{key: bad})
