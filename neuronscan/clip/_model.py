"""Load an open_clip model and embed probe images and concept texts with it.

Weights come from one of three places, in this order of preference:

- ``pretrained``: an open_clip tag (``'openai'``, ``'laion2b_s34b_b79k'``, ...) resolved and
  downloaded by open_clip, from the Hugging Face cache when it is there. Machines without network
  access should set ``HF_HUB_OFFLINE=1``: a missing file then fails at once instead of after
  huggingface_hub's retries (about 45 s per file).
- ``checkpoint``: a local state dict (``torch.save(model.state_dict(), path)``, optionally wrapped
  as ``{'state_dict': ...}`` and/or with DDP ``module.`` prefixes, or a ``.safetensors`` file),
  read with ``torch.load(weights_only=True)`` so no pickled code ever runs.
- neither: random weights, for tests and plumbing only; a warning says the labels are meaningless.

``neuronscan-tinyclip`` (:mod:`neuronscan.clip._tinyclip`), the tiny CLIP of the shapes world, is
registered with open_clip when this module is imported. Its weights are packaged: the name alone loads
``neuronscan/demo/tinyclip.pt``, ``checkpoint`` loads another file written by
``python -m neuronscan.demo.train_clip``; it has no pretrained tags. Its tokenizer is word-level, its
word list read from the checkpoint.

Embeddings are float32 and L2-normalised, as the ``OUT/clip/part-*.parquet`` contract requires.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from neuronscan.clip import _tinyclip
from neuronscan.clip._vocab import DEFAULT_TEMPLATES

__all__ = ["ClipBundle", "embed_images", "embed_texts", "load_clip"]

logger = logging.getLogger(__name__)

_tinyclip.register()

_SCHEMAS = ("hf-hub:", "local-dir:")
# Key prefixes added by wrappers around the model: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class ClipBundle:
    """An open_clip model in eval mode with everything needed to embed images and texts.

    Attributes:
        model: the open_clip model (``encode_image``, ``encode_text``), in eval mode on ``device``.
        tokenizer: maps a list of ``n`` strings to a ``(n, context_length)`` int64 tensor.
        model_name: the open_clip architecture name (or ``hf-hub:`` / ``local-dir:`` source).
        weights: where the weights came from: ``'pretrained:<tag>'``, ``'checkpoint:<path>'``,
            ``'<model_name>'`` for schema sources, or ``'random'``.
        mean: per-channel RGB mean the model was trained with (pixels in ``[0, 1]``).
        std: per-channel RGB standard deviation.
        image_size: ``(height, width)`` the model takes.
        interpolation: resize filter, ``'bicubic'``, ``'bilinear'`` or ``'nearest'``.
        resize_mode: ``'shortest'`` (resize the short side, centre crop), ``'longest'`` (resize
            the long side, pad with black) or ``'squash'`` (resize to the size, ignoring aspect).
        embed_dim: ``D``, the dimension of image and text embeddings.
        device: where the model runs.
    """

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    model_name: str
    weights: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: tuple[int, int]
    interpolation: str
    resize_mode: str
    embed_dim: int
    device: torch.device


def load_clip(
    model_name: str,
    *,
    pretrained: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> ClipBundle:
    """Create an open_clip model with its tokenizer and preprocessing settings.

    Args:
        model_name: an open_clip architecture (``open_clip.list_models()``, e.g. ``'ViT-B-32'``),
            or ``'hf-hub:org/repo'`` / ``'local-dir:/path'``, which carry their own weights.
        pretrained: an open_clip pretrained tag for ``model_name``
            (``open_clip.list_pretrained_tags_by_model(model_name)``).
        checkpoint: a local state-dict file for ``model_name``'s architecture.
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ...

    Returns:
        A :class:`ClipBundle` with the model in eval mode on ``device``.

    Raises:
        ValueError: on an unknown architecture or tag, both ``pretrained`` and ``checkpoint``,
            pretrained weights that are not available offline, an unreadable checkpoint or one
            whose keys or shapes do not match the architecture, or an unavailable device.

    Example:
        >>> bundle = load_clip("ViT-S-32")  # random weights: plumbing only, labels meaningless
        >>> bundle.embed_dim, bundle.image_size
        (384, (224, 224))
    """
    dev = _resolve_device(device)
    has_schema = model_name.startswith(_SCHEMAS)
    if pretrained is not None and checkpoint is not None:
        raise ValueError(
            f"pass either pretrained={pretrained!r} or checkpoint={str(checkpoint)!r}, not both"
        )
    if has_schema and pretrained is not None:
        raise ValueError(
            f"pretrained={pretrained!r} cannot be combined with model_name={model_name!r}: "
            f"'{model_name.split(':', 1)[0]}:' sources bring their own weights"
        )
    if not has_schema:
        _check_architecture(model_name)
    tiny = model_name == _tinyclip.TINYCLIP_MODEL
    if tiny and pretrained is not None:
        raise ValueError(
            f"open_clip model '{model_name}' has no pretrained tags (got pretrained={pretrained!r}): its weights "
            f"are packaged ({_tinyclip.TINYCLIP_CHECKPOINT.name}); leave pretrained unset, or pass a "
            "checkpoint written by python -m neuronscan.demo.train_clip"
        )
    if pretrained is not None:
        _check_tag(model_name, pretrained)
    if tiny and checkpoint is None:
        checkpoint = _tinyclip.TINYCLIP_CHECKPOINT
        if not checkpoint.is_file():
            raise ValueError(
                f"the packaged weights of '{model_name}' ({checkpoint}) are missing; train them with "
                f"python -m neuronscan.demo.train_clip --out {checkpoint}"
            )
    state_dict = _load_state_dict(Path(checkpoint)) if checkpoint is not None else None
    tiny_words: list[str] | None = None
    if tiny and state_dict is not None:
        vocab = state_dict.pop(_tinyclip.VOCAB_KEY, None)
        tiny_words = list(_tinyclip.TINYCLIP_WORDS) if vocab is None else _tinyclip.vocab_from_tensor(vocab)

    quiet = (
        _drop_open_clip_random_init_warning()
        if state_dict is not None
        else contextlib.nullcontext()
    )
    try:
        with quiet:
            # pretrained_text=False: with no CLIP weights, open_clip would otherwise download
            # default text-tower weights for configs with a Hugging Face text model.
            model, _, _ = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=dev, pretrained_text=False
            )
        if tiny:
            words = list(_tinyclip.TINYCLIP_WORDS) if tiny_words is None else tiny_words
            tokenizer = _tinyclip.WordTokenizer(words, int(model.context_length))
            if tokenizer.vocab_size > int(model.vocab_size):
                raise ValueError(
                    f"checkpoint '{checkpoint}' has {tokenizer.vocab_size} tokens but '{model_name}' embeds "
                    f"{int(model.vocab_size)}"
                )
        else:
            tokenizer = open_clip.get_tokenizer(model_name)
    except (RuntimeError, OSError, ValueError) as exc:
        if pretrained is not None or model_name.startswith("hf-hub:"):
            source = f"pretrained weights '{pretrained}'" if pretrained else "weights"
            tag = f", pretrained='{pretrained}'" if pretrained else ""
            raise ValueError(
                f"{source} for open_clip model '{model_name}' are not available offline: they "
                f"are not in the local cache and could not be downloaded ({exc}). On a machine "
                "with network access run model, _, _ = open_clip.create_model_and_transforms("
                f"'{model_name}'{tag}) and torch.save(model.state_dict(), 'clip.pt'); copy "
                "clip.pt here and pass checkpoint='clip.pt' (or copy the Hugging Face cache "
                "directory here)."
            ) from exc
        raise ValueError(f"could not create open_clip model '{model_name}': {exc}") from exc

    if state_dict is not None:
        _apply_state_dict(model, state_dict, Path(checkpoint), model_name)
        weights = f"checkpoint:{checkpoint}"
    elif pretrained is not None:
        weights = f"pretrained:{pretrained}"
    elif has_schema:
        weights = model_name
    else:
        weights = "random"
        logger.warning(
            f"open_clip model '{model_name}' has random weights (no pretrained tag, no "
            "checkpoint): its image and text embeddings are unrelated, so CLIP labels will be "
            "meaningless. Pass pretrained=<tag> or checkpoint=<state dict file>."
        )
    model.eval()

    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    image_size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    with torch.inference_mode():
        embed_dim = int(model.encode_text(tokenizer([""]).to(dev)).shape[-1])
    return ClipBundle(
        model=model,
        tokenizer=tokenizer,
        model_name=model_name,
        weights=weights,
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
        image_size=image_size,
        interpolation=str(cfg.get("interpolation", "bicubic")),
        resize_mode=str(cfg.get("resize_mode", "shortest")),
        embed_dim=embed_dim,
        device=dev,
    )


def embed_images(bundle: ClipBundle, images: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Embed RGB images with the bundle's image tower.

    Each image is resized as the model was trained (``bundle.resize_mode``,
    ``bundle.interpolation``) to ``bundle.image_size`` and normalised with ``bundle.mean`` and
    ``bundle.std``. Runs under ``torch.inference_mode()``, with autocast only on CUDA.

    Args:
        bundle: from :func:`load_clip`.
        images: ``(n_images, height, width, 3)`` uint8 RGB; read-only arrays are fine.
        batch_size: images per forward pass.

    Returns:
        ``(n_images, D)`` float32, each row L2-normalised.

    Raises:
        ValueError: if ``images`` is not ``(n_images, height, width, 3)`` uint8, or
            ``batch_size < 1``.

    Example:
        >>> import numpy as np
        >>> bundle = load_clip("ViT-S-32")
        >>> embed_images(bundle, np.zeros((2, 64, 48, 3), dtype=np.uint8)).shape
        (2, 384)
    """
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(
            f"images must have shape (n_images, height, width, 3), got {arr.shape}; "
            "stack RGB images along a first axis"
        )
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 RGB in [0, 255], got dtype {arr.dtype}")
    if min(arr.shape[1:3]) < 1:
        raise ValueError(f"images must have non-empty height and width, got shape {arr.shape}")
    _check_batch_size(batch_size)

    dev = bundle.device
    mean = torch.tensor(bundle.mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(bundle.std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    out = np.empty((arr.shape[0], bundle.embed_dim), dtype=np.float32)
    with torch.inference_mode(), _autocast(dev):
        for start in range(0, arr.shape[0], batch_size):
            chunk = arr[start : start + batch_size]
            # torch.from_numpy warns on read-only arrays (Ray batches are read-only views).
            chunk = chunk if chunk.flags.writeable else chunk.copy()
            x = torch.from_numpy(np.ascontiguousarray(chunk)).to(dev)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            x = _resize(x, bundle.image_size, bundle.interpolation, bundle.resize_mode)
            x = (x - mean) / std
            feats = bundle.model.encode_image(x).float()
            out[start : start + len(chunk)] = F.normalize(feats, dim=-1).cpu().numpy()
    return out


def embed_texts(
    bundle: ClipBundle,
    concepts: Sequence[str],
    templates: Sequence[str] | None = None,
    *,
    batch_size: int = 256,
) -> np.ndarray:
    """Embed concepts by prompt ensembling: one prompt per template, averaged.

    Underscores in a concept become spaces (``fire_hydrant`` -> ``fire hydrant``). For each
    template, ``"{}"`` is replaced by the concept and the prompt is embedded and L2-normalised;
    the per-template embeddings are averaged and the mean is L2-normalised again.

    Args:
        bundle: from :func:`load_clip`.
        concepts: ``n_concepts`` non-blank strings.
        templates: prompt templates, each containing ``"{}"``; default
            :data:`~neuronscan.clip.DEFAULT_TEMPLATES`.
        batch_size: prompts per forward pass.

    Returns:
        ``(n_concepts, D)`` float32, each row L2-normalised.

    Raises:
        ValueError: on an empty or blank concept list, an empty template list, a template
            without ``"{}"``, or ``batch_size < 1``.
        TypeError: if ``concepts`` or ``templates`` is a single string or holds non-strings.

    Example:
        >>> bundle = load_clip("ViT-S-32")
        >>> embed_texts(bundle, ["red", "circle"], ["a photo of a {}."]).shape
        (2, 384)
    """
    names = _string_list(concepts, "concepts")
    if not names:
        raise ValueError("concepts is empty; pass at least one concept")
    blank = [i for i, name in enumerate(names) if not name.strip()]
    if blank:
        raise ValueError(f"concepts has {len(blank)} blank entries (first at index {blank[0]})")
    tmpl = list(DEFAULT_TEMPLATES) if templates is None else _string_list(templates, "templates")
    if not tmpl:
        raise ValueError(
            "templates is empty; pass at least one template such as 'a photo of a {}.'"
        )
    no_slot = [t for t in tmpl if "{}" not in t]
    if no_slot:
        raise ValueError(
            f"template {no_slot[0]!r} has no '{{}}' placeholder for the concept; every template "
            "must contain '{}', e.g. 'a photo of a {}.'"
        )
    _check_batch_size(batch_size)

    texts = [name.replace("_", " ").strip() for name in names]
    # Template-major order, so the embeddings reshape to (n_templates, n_concepts, D).
    prompts = [t.replace("{}", text) for t in tmpl for text in texts]
    dev = bundle.device
    feats = torch.empty((len(prompts), bundle.embed_dim), dtype=torch.float32)
    with torch.inference_mode(), _autocast(dev):
        for start in range(0, len(prompts), batch_size):
            tokens = bundle.tokenizer(prompts[start : start + batch_size]).to(dev)
            emb = bundle.model.encode_text(tokens).float()
            feats[start : start + len(tokens)] = F.normalize(emb, dim=-1).cpu()
    mean = feats.view(len(tmpl), len(texts), bundle.embed_dim).mean(dim=0)
    return F.normalize(mean, dim=-1).numpy().astype(np.float32, copy=False)


def _resolve_device(device: str) -> torch.device:
    """Parse ``device`` and check it exists here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"invalid device {device!r}; use 'cpu', 'cuda' or 'cuda:<index>'"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} requested but CUDA is not available; use device='cpu'"
        )
    return dev


def _check_architecture(model_name: str) -> None:
    """Raise if ``model_name`` is not an open_clip architecture, showing close matches."""
    known = open_clip.list_models()
    if model_name in known:
        return
    close = difflib.get_close_matches(model_name, known, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown open_clip model {model_name!r}{hint} See open_clip.list_models() for the "
        f"{len(known)} architectures, or use 'hf-hub:org/repo' / 'local-dir:/path'."
    )


def _check_tag(model_name: str, pretrained: str) -> None:
    """Raise if ``pretrained`` is not an open_clip tag for ``model_name``."""
    if open_clip.get_pretrained_cfg(model_name, pretrained):
        return
    if os.path.isfile(pretrained):
        raise ValueError(
            f"pretrained={pretrained!r} is a file; pass local weights as checkpoint={pretrained!r}"
        )
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    listed = ", ".join(repr(t) for t in tags) if tags else "none"
    raise ValueError(
        f"unknown pretrained tag {pretrained!r} for open_clip model {model_name!r}; "
        f"known tags: {listed}"
    )


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict safely and strip wrapper keys and prefixes."""
    if not path.is_file():
        raise ValueError(f"checkpoint '{path}' does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(
                f"checkpoint '{path}' is not a valid safetensors file: {exc}"
            ) from exc
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling can fail in many ways; all mean "not loadable"
            raise ValueError(
                f"checkpoint '{path}' could not be read with torch.load(weights_only=True): "
                f"{exc}. Only plain state dicts are loaded (no pickled objects); re-save it "
                "with torch.save(model.state_dict(), path)."
            ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(
            f"checkpoint '{path}' holds {type(obj).__name__}, not a state dict "
            "(a non-empty mapping of parameter names to tensors)"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"checkpoint '{path}' entry {key!r} is {type(value).__name__}, not a tensor; "
                "save model.state_dict() only"
            )
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        state[name] = value
    return state


def _apply_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, model_name: str
) -> None:
    """Load ``state`` into ``model`` strictly, explaining any mismatch."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches are raised even when strict=False
        raise ValueError(
            f"checkpoint '{path}' does not fit open_clip model '{model_name}': {exc}. Check "
            "that model_name is the architecture the checkpoint was saved from."
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint '{path}' does not fit open_clip model '{model_name}': "
            f"{len(result.missing_keys)} missing keys {result.missing_keys[:3]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:3]}. Check "
            "that model_name is the architecture the checkpoint was saved from."
        )


@contextlib.contextmanager
def _drop_open_clip_random_init_warning() -> Iterator[None]:
    """Silence open_clip's 'initialized randomly' log while a checkpoint is about to be loaded."""

    def keep(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Mixed precision on CUDA (bf16 where supported); a no-op elsewhere."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _resize(
    x: torch.Tensor, size: tuple[int, int], interpolation: str, resize_mode: str
) -> torch.Tensor:
    """Resize ``(B, 3, H, W)`` pixels in ``[0, 1]`` to ``size`` with open_clip's eval geometry."""
    th, tw = size
    h, w = x.shape[-2:]
    # Output sizes follow open_clip's eval transform to the pixel, so the crop sees the same
    # region as the model did in training.
    if resize_mode == "squash":
        new_h, new_w = th, tw
    elif resize_mode == "longest":
        ratio = max(h / th, w / tw)
        new_h, new_w = round(h / ratio), round(w / ratio)
    elif th == tw:  # torchvision Resize(int): short side to size, long side truncated
        short, long_ = min(h, w), max(h, w)
        other = int(th * long_ / short)
        new_h, new_w = (th, other) if h <= w else (other, th)
    else:
        ratio = min(h / th, w / tw)
        new_h, new_w = round(h / ratio), round(w / ratio)
    new_h, new_w = max(1, new_h), max(1, new_w)
    if (new_h, new_w) != (h, w):
        mode = interpolation if interpolation in ("bilinear", "nearest") else "bicubic"
        if mode == "nearest":
            x = F.interpolate(x, size=(new_h, new_w), mode="nearest")
        else:
            x = F.interpolate(
                x, size=(new_h, new_w), mode=mode, align_corners=False, antialias=True
            )
            x = x.clamp_(0.0, 1.0)  # bicubic overshoots; 8-bit image resizers clip
    if new_h < th or new_w < tw:  # 'longest': pad with black, centred
        pad_h, pad_w = max(th - new_h, 0), max(tw - new_w, 0)
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        new_h, new_w = x.shape[-2:]
    top = int(round((new_h - th) / 2.0))
    left = int(round((new_w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]


def _check_batch_size(batch_size: int) -> None:
    """Raise unless ``batch_size`` is a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _string_list(values: Sequence[str], name: str) -> list[str]:
    """``values`` as a list of strings; a bare string is a mistake, not a list of characters."""
    if isinstance(values, str):
        raise TypeError(f"{name} must be a list of strings, got the single string {values!r}")
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise TypeError(f"{name}[{i}] is {type(v).__name__} ({v!r}); expected a string")
    return out
