"""Model registry: build a probe-ready model from a name, and find its hookable layers.

A model is named in one of these ways (``model.source: auto`` picks by the name's form):
- a registered name (``neuronscan models``), e.g. ``shapesnet``;
- a torchvision classification model, e.g. ``resnet50`` (``model.weights``: a weights enum member such as
  ``IMAGENET1K_V2`` or ``DEFAULT``, or ``random``);
- ``timm/<name>`` (when timm is installed) and ``open_clip/<arch>`` (the visual tower; ``model.weights`` is the
  open_clip ``pretrained`` tag);
- a ``torch.export`` archive (``*.pt2``). A TorchScript file (``*.ts``, ``*.torchscript``) is refused with a
  message naming these alternatives: forward hooks do not fire inside a scripted module;
- a factory ``package.module:function`` returning an ``nn.Module`` or a :class:`ModelSpec`.

``model.checkpoint`` loads a local state dict into the built model with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import logging
from pathlib import Path

import torch
from torch import nn

# Importing the built-ins registers them; _builtin imports only _spec, so this is no cycle.
import neuronscan.models._builtin  # noqa: F401
from neuronscan.errors import ModelError
from neuronscan.models._files import describe, file_kind, torch_error_summary
from neuronscan.models._spec import IMAGENET_MEAN, IMAGENET_STD, LayerInfo, ModelSpec, _Entry, register_model
from neuronscan.models._spec import REGISTRY as _REGISTRY

__all__ = [
    "ModelSpec",
    "LayerInfo",
    "register_model",
    "registered_models",
    "build_model",
    "list_layers",
    "resolve_layers",
    "load_state_dict_file",
]

log = logging.getLogger(__name__)

def registered_models() -> dict[str, _Entry]:
    """Every registered model (name → entry with its builder, description and default layers)."""
    return dict(_REGISTRY)


_SAVE_HINT = "neuronscan loads plain state dicts only (torch.save(model.state_dict(), path))"


def _checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a state-dict file, from its bytes alone; None when torch.load should try."""
    kind = file_kind(path)
    where = f"checkpoint {str(path)!r}"
    if kind == "missing":
        return f"{where} does not exist"
    if kind in ("torch.save", "pickle"):
        return None
    if kind == "export":
        return (f"{where} is a torch.export archive (.pt2), not a state dict: give it as model.name (it carries its "
                "own weights) and leave model.checkpoint unset")
    if kind == "torchscript":
        return (f"{where} is a TorchScript archive, not a state dict: save its weights with "
                "torch.save(torch.jit.load(path).state_dict(), 'weights.pt') and give that file")
    return f"{where} is {describe(path, kind)}, not a PyTorch checkpoint; {_SAVE_HINT}"


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a local checkpoint safely (``weights_only=True``), unwrapping common containers.

    Raises:
        ModelError: the file is missing, empty, truncated, not a torch.save file, or holds something other
            than tensors; the message names the file and what it holds.
    """
    path = Path(path)
    problem = _checkpoint_problem(path)
    if problem:
        raise ModelError(problem)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, unsupported globals, corrupt records
        raise ModelError(
            f"could not load checkpoint {str(path)!r} with weights_only=True: {torch_error_summary(exc)}. "
            f"{_SAVE_HINT}."
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a state dict")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _apply_checkpoint(module: nn.Module, checkpoint: str | None) -> None:
    if not checkpoint:
        return
    state = load_state_dict_file(checkpoint)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"checkpoint {checkpoint!r} does not match the model: {exc}") from exc


def _detect_source(name: str) -> str:
    if name in _REGISTRY:
        return "builtin"
    if name.startswith("timm/"):
        return "timm"
    if name.startswith("open_clip/"):
        return "open_clip"
    lower = name.lower()
    if lower.endswith(".pt2"):
        return "export"
    # .ts/.torchscript name TorchScript whether or not the file is there (the refusal says what to give
    # instead); .jit/.pt only when the file exists, since a .pt is more often a state dict.
    if lower.endswith((".ts", ".torchscript")) or (lower.endswith((".jit", ".pt")) and Path(name).exists()):
        return "torchscript"
    if ":" in name and "/" not in name.split(":", 1)[1]:
        return "factory"
    return "torchvision"


def _torchvision(name: str, weights: str | None) -> ModelSpec:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available + list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ModelError(f"unknown model {name!r}{hint} Run `neuronscan models` to list models.")
    weights_obj = None
    if weights not in (None, "random", "none"):
        try:
            enum = torchvision.models.get_model_weights(name)
            weights_obj = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        except KeyError as exc:
            members = [m.name for m in torchvision.models.get_model_weights(name)]
            raise ModelError(
                f"model {name!r} has no weights {weights!r}; choose one of {', '.join(members + ['DEFAULT', 'random'])}"
            ) from exc
    try:
        module = torchvision.models.get_model(name, weights=weights_obj)
    except Exception as exc:  # offline download failure, hash mismatch
        raise ModelError(
            f"could not load torchvision weights {weights_obj} for {name!r}: {exc}. Offline? Put the weights file in "
            "$TORCH_HOME/hub/checkpoints, or pass model.checkpoint=PATH, or model.weights=random."
        ) from exc
    size, mean, std = 224, IMAGENET_MEAN, IMAGENET_STD
    if weights_obj is not None:
        tf = weights_obj.transforms()
        size = int(getattr(tf, "crop_size", [224])[0])
        mean = tuple(getattr(tf, "mean", mean))
        std = tuple(getattr(tf, "std", std))
    elif "vit" in name or "swin" in name:
        size = 224
    return ModelSpec(module, size, mean, std, name=name, source="torchvision",
                     weights=str(weights_obj) if weights_obj else "random")


def _timm(name: str, weights: str | None) -> ModelSpec:
    try:
        import timm
    except ImportError as exc:
        raise ModelError("timm is not installed: pip install timm") from exc
    arch = name.split("/", 1)[1]
    pretrained = weights not in (None, "random", "none")
    try:
        module = timm.create_model(arch, pretrained=pretrained)
    except Exception as exc:
        raise ModelError(f"could not create timm model {arch!r} (pretrained={pretrained}): {exc}") from exc
    cfg = getattr(module, "pretrained_cfg", {}) or {}
    size = int((cfg.get("input_size") or (3, 224, 224))[-1])
    return ModelSpec(
        module, size, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)), name=name,
        source="timm",
        weights="pretrained" if pretrained else "random",
    )


def _open_clip(name: str, weights: str | None) -> ModelSpec:
    import open_clip

    arch = name.split("/", 1)[1]
    pretrained = None if weights in (None, "random", "none") else weights
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    except Exception as exc:
        raise ModelError(
            f"could not create open_clip model {arch!r} with pretrained={pretrained!r}: {exc}. Offline? "
            "Pass model.checkpoint=PATH to a local state dict."
        ) from exc
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    return ModelSpec(visual, int(size), mean, std, name=name, source="open_clip", weights=pretrained or "random")


def _factory(name: str, weights: str | None) -> ModelSpec:
    mod_name, _, fn_name = name.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import factory {name!r}: {exc}") from exc
    out = fn()
    if isinstance(out, ModelSpec):
        return out
    if isinstance(out, nn.Module):
        return ModelSpec(out, name=name, source="factory")
    raise ModelError(f"factory {name!r} returned {type(out).__name__}; expected nn.Module or neuronscan ModelSpec")


def _torchscript_refusal(name: str) -> str:
    # torch.jit.load gives a RecursiveScriptModule: register_forward_hook on it or on any of its submodules
    # raises "RuntimeError: register_forward_hook is not supported on ScriptModules" (torch 2.14, scripted and
    # traced alike). Converting it (torch._export.converter.TS2EPConverter) inlines the submodules' calls into
    # one flat graph, so hooks on the unflattened layers never fire either: no layer could be recorded.
    kind = file_kind(name)
    if kind in ("torch.save", "pickle"):  # a .pt/.jit that holds a state dict or a pickled module, not TorchScript
        return (f"{name!r} is a torch.save checkpoint, not a model neuronscan can build: give its architecture as "
                f"model.name (a registered or torchvision name, or package.module:function) and {name!r} as "
                "model.checkpoint")
    if kind == "export":
        return (f"{name!r} is a torch.export archive: name it *.pt2, or set model.source: export")
    if kind == "missing":
        missing = " (and the file does not exist)"
    elif kind == "torchscript":
        missing = ""
    else:
        missing = f" (though the file is not TorchScript either: it is {describe(name, kind)})"
    return (
        f"{name!r} is a TorchScript file{missing}; neuronscan cannot probe TorchScript models: their layers "
        "run inside the compiled graph, where forward hooks do not fire. Give the model another way: "
        "a torch.export archive (torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 224, 224),)), "
        "'model.pt2'); model.name: model.pt2), or a factory returning the nn.Module (model.name: "
        "package.module:function). A .pt state dict goes in model.checkpoint with its architecture as model.name."
    )


def _load_export(name: str) -> ModelSpec:
    """A ``torch.export`` archive, unflattened (so forward hooks on named layers fire); one clear error if not."""
    kind = file_kind(name)
    where = f"torch.export archive {name!r}"
    if kind == "missing":
        raise ModelError(f"{where} does not exist")
    if kind == "torchscript":
        raise ModelError(_torchscript_refusal(name))
    if kind in ("torch.save", "pickle"):
        raise ModelError(f"{name!r} is a torch.save checkpoint, not a torch.export archive: give its architecture "
                         f"as model.name and {name!r} as model.checkpoint, or export the model with "
                         "torch.export.save(torch.export.export(model, (example_input,)), 'model.pt2')")
    if kind != "export":
        raise ModelError(f"{where} is {describe(name, kind)}, not an archive torch.export.save wrote; save one with "
                         "torch.export.save(torch.export.export(model, (example_input,)), 'model.pt2')")
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.ERROR)  # torch logs a full traceback as a warning before raising its own error
    try:
        program = torch.export.load(name)
    except Exception as exc:  # corrupt records, another torch's serialisation format
        raise ModelError(f"could not load {where} with torch {torch.__version__}: {torch_error_summary(exc)}; the "
                         "file is corrupt, or another torch version exported it: export it again") from exc
    finally:
        export_log.setLevel(level)
    try:
        module = torch.export.unflatten(program)
    except Exception as exc:
        raise ModelError(f"could not rebuild the layers of {where}: {torch_error_summary(exc)}") from exc
    return ModelSpec(module, name=name, source="export")


def _normalisation(key: str, value) -> tuple[float, float, float]:
    """``mean``/``std`` as 3 finite floats (std > 0), or a ModelError saying what is expected."""
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        numbers = ()
    finite = all(-float("inf") < v < float("inf") for v in numbers)  # NaN fails every comparison
    if len(numbers) != 3 or not finite or (key == "std" and not all(v > 0 for v in numbers)):
        raise ModelError(f"model.{key} must be 3 finite numbers (R, G, B){' > 0' if key == 'std' else ''} "
                         f"on the 0..1 pixel scale, got {value!r}")
    return numbers


RANDOM_WEIGHTS_SEED = 0
"""Seed of random initialisation in `build_model`: random weights are the same in every process."""


def _build(name: str, source: str, weights: str | None) -> ModelSpec:
    if source == "builtin":
        if name not in _REGISTRY:
            raise ModelError(f"no registered model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
        spec = _REGISTRY[name].builder(weights=weights)
    elif source == "torchvision":
        spec = _torchvision(name, weights)
    elif source == "timm":
        spec = _timm(name if name.startswith("timm/") else f"timm/{name}", weights)
    elif source == "open_clip":
        spec = _open_clip(name if name.startswith("open_clip/") else f"open_clip/{name}", weights)
    elif source == "torchscript":
        raise ModelError(_torchscript_refusal(name))
    elif source == "export":
        spec = _load_export(name)
    elif source == "factory":
        spec = _factory(name, weights)
    else:
        raise ModelError(f"unknown model source {source!r}")
    return spec


def build_model(
    name: str,
    *,
    source: str = "auto",
    weights: str | None = None,
    checkpoint: str | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> ModelSpec:
    """Build a model in eval mode from its name (see the module docstring for the accepted forms).

    Args:
        mean, std: per-channel input normalisation on the 0..1 pixel scale, replacing what the model's
            source gives (its weights' transforms, else ImageNet's) — for a local checkpoint, a ``.pt2``
            or a factory whose weights do not carry it.

    Raises:
        ModelError: unknown name (with close matches), weights not available, checkpoint mismatch.

    Example:
        >>> spec = build_model("resnet18", weights="random")  # doctest: +SKIP
    """
    if source == "auto":
        source = _detect_source(name)
    # Weights a source initialises at random ("random", an architecture without a checkpoint) come from
    # a fixed seed: every probe actor, and a resumed run, builds the same model (the caller's RNG is kept).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        spec = _build(name, source, weights)
    _apply_checkpoint(spec.module, checkpoint)
    if source != "export":  # an exported graph is already frozen in the mode it was exported in
        spec.module.eval()
    spec.name = spec.name or name
    for key, value in (("mean", mean), ("std", std)):
        if value is not None:
            setattr(spec, key, _normalisation(key, value))
    return spec


def list_layers(spec: ModelSpec, *, device: str = "cpu") -> list[LayerInfo]:
    """Every named submodule whose output is a tensor, with its output shape and unit count.

    Found by one forward pass of a blank image at the model's input size. Units are channels for conv
    maps (B, C, H, W), the feature dimension for token sequences (B, T, D) and vectors (B, D).
    """
    module = spec.module
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    handles = []
    for name, sub in module.named_modules():
        if not name:
            continue

        kind = type(sub).__name__

        def hook(_m, _inp, out, name=name, kind=kind):
            if isinstance(out, torch.Tensor) and out.dim() >= 2:
                shapes[name] = (tuple(out.shape[1:]), kind)

        try:
            handles.append(sub.register_forward_hook(hook))
        except (RuntimeError, AttributeError):  # scripted submodules do not take hooks
            continue
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, spec.input_size, spec.input_size, device=device))
    finally:
        for h in handles:
            h.remove()
    out = []
    for name, _ in module.named_modules():
        if name in shapes:
            shape, kind = shapes[name]
            n_units = shape[0] if len(shape) == 3 else shape[-1]
            out.append(LayerInfo(name, kind, shape, int(n_units)))
    return out


def resolve_layers(requested: list[str], available: list[str], *, model_name: str = "MODEL") -> list[str]:
    """Expand globs (``layer*``, ``blocks.*``) and check exact names; keep the model's order.

    Raises:
        ModelError: a name or glob matches nothing; the message shows close matches.
    """
    chosen: list[str] = []
    problems = []
    for req in requested:
        if any(ch in req for ch in "*?["):
            hits = [a for a in available if fnmatch.fnmatchcase(a, req)]
        else:
            hits = [req] if req in available else []
        if not hits:
            close = difflib.get_close_matches(req, available, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            problems.append(f"unknown layer {req!r}{hint}")
        chosen += [h for h in hits if h not in chosen]
    if problems:
        raise ModelError("; ".join(problems) + f". Run `neuronscan layers {model_name}` to list layers.")
    order = {name: i for i, name in enumerate(available)}
    return sorted(chosen, key=order.__getitem__)
