"""Text embeddings of a vocabulary, cached on disk across runs.

Embedding a vocabulary is the slow part of a label-free score (20,000 words x 8 templates = 160,000
prompts through the text tower, minutes on a CPU), and the result depends only on the model and the
prompts. :func:`cached_embed_texts` computes it once with :func:`neuronscan.clip.embed_texts` and
keeps it in ``<cache dir>/<key>.npy``, where the key is a SHA-256 of everything that determines it:

- the open_clip model name (it picks the tokenizer and the architecture) and the weights' identity:
  the tag for ``pretrained:<tag>`` weights, the SHA-256 of the file's bytes for a ``checkpoint``
  (a copy of the file elsewhere is the same entry; the packaged tiny CLIP keeps its word list in
  its checkpoint too), the SHA-256 of the loaded parameters for ``hf-hub:``/``local-dir:`` sources
  (their name does not pin their content);
- the prompt templates, in order, and the vocabulary, in order (row ``i`` is word ``i``);
- the device type (CUDA embeds under autocast, so its values differ from the CPU's in the low bits)
  and the versions of open_clip and of this recipe.

Random weights (``bundle.weights == "random"``) are never cached: two loads are two different
models. Entries are written atomically (a temporary file renamed into place), so concurrent runs and
killed processes leave either a whole entry or none; an entry that cannot be read, or whose shape,
dtype or values are wrong, is recomputed and replaced, with a warning. A sidecar ``<key>.json`` says
in words what the entry is. The directory is ``$NEURONSCAN_CACHE_DIR/text-embeddings``, else
``$XDG_CACHE_HOME/neuronscan/text-embeddings``, else ``~/.cache/neuronscan/text-embeddings``; delete
it at any time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from neuronscan.clip._vocab import DEFAULT_TEMPLATES

if TYPE_CHECKING:
    from neuronscan.clip._model import ClipBundle

__all__ = ["cached_embed_texts", "default_cache_dir", "text_cache_key"]

logger = logging.getLogger(__name__)

# Bump when embed_texts changes what it computes for the same inputs (prompt cleaning, averaging).
_RECIPE = 1
_SUBDIR = "text-embeddings"
# Weights hashes by model object (hashing a checkpoint's bytes takes ~1 s per GB).
_WEIGHTS_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def default_cache_dir() -> Path:
    """Where :func:`cached_embed_texts` keeps its entries when given no ``cache_dir``.

    Returns:
        ``$NEURONSCAN_CACHE_DIR/text-embeddings`` if that variable is set and non-empty, else
        ``$XDG_CACHE_HOME/neuronscan/text-embeddings``, else ``~/.cache/neuronscan/text-embeddings``.

    Example:
        >>> import os
        >>> os.environ["NEURONSCAN_CACHE_DIR"] = "/tmp/ns-cache"
        >>> str(default_cache_dir())
        '/tmp/ns-cache/text-embeddings'
        >>> del os.environ["NEURONSCAN_CACHE_DIR"]
    """
    root = os.environ.get("NEURONSCAN_CACHE_DIR")
    if root:
        return Path(root) / _SUBDIR
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "neuronscan" / _SUBDIR


def text_cache_key(
    bundle: ClipBundle, concepts: Sequence[str], templates: Sequence[str] | None = None
) -> dict | None:
    """What identifies the text embeddings of ``concepts`` under ``bundle`` and ``templates``.

    Args:
        bundle: from :func:`neuronscan.clip.load_clip`.
        concepts: the vocabulary, in order.
        templates: prompt templates; ``None`` means :data:`~neuronscan.clip.DEFAULT_TEMPLATES`,
            the same key as passing them explicitly.

    Returns:
        ``None`` for random weights (not cacheable); else a dict with ``key`` (64 hex digits, the
        file name) and the fields it hashes (``model``, ``weights``, ``templates_sha256``,
        ``vocabulary_sha256``, ``n_concepts``, ``device``, ``open_clip``, ``recipe``).

    Raises:
        ValueError: if a ``checkpoint:`` bundle's file can no longer be read.
    """
    weights = _weights_identity(bundle)
    if weights is None:
        return None
    import open_clip

    tmpl = list(DEFAULT_TEMPLATES) if templates is None else [str(t) for t in templates]
    words = [str(c) for c in concepts]
    fields = {
        "model": bundle.model_name,
        "weights": weights,
        "templates_sha256": _sha256_strings(tmpl),
        "vocabulary_sha256": _sha256_strings(words),
        "n_concepts": len(words),
        "embed_dim": int(bundle.embed_dim),
        "device": bundle.device.type,
        "open_clip": getattr(open_clip, "__version__", "unknown"),
        "recipe": _RECIPE,
    }
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return {"key": key, **fields}


def cached_embed_texts(
    bundle: ClipBundle,
    concepts: Sequence[str],
    templates: Sequence[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """:func:`neuronscan.clip.embed_texts`, read from the disk cache when it holds the same inputs.

    Args:
        bundle: from :func:`neuronscan.clip.load_clip`.
        concepts: ``n_concepts`` non-blank strings.
        templates: prompt templates, each containing ``"{}"``; default
            :data:`~neuronscan.clip.DEFAULT_TEMPLATES`.
        cache_dir: the cache directory (created if missing); default :func:`default_cache_dir`.
        batch_size: prompts per forward pass when the embeddings are computed.

    Returns:
        ``(n_concepts, D)`` float32, each row L2-normalised: the array ``embed_texts`` returns (the
        same bytes when the entry was written on this device).

    Raises:
        ValueError, TypeError: as :func:`neuronscan.clip.embed_texts`.

    Example:
        >>> bundle = load_clip("ViT-B-32", pretrained="openai")  # doctest: +SKIP
        >>> text = cached_embed_texts(bundle, ["red", "circle"])  # doctest: +SKIP
    """
    from neuronscan.clip import _model

    if isinstance(concepts, str):  # embed_texts refuses it with its own message
        return _model.embed_texts(bundle, concepts, templates, batch_size=batch_size)
    concepts = list(concepts)
    if templates is not None and not isinstance(templates, str):
        templates = list(templates)
    ident = None
    # Only proper string lists are keyed; anything else goes to embed_texts to be refused.
    if all(isinstance(c, str) for c in concepts) and (
        templates is None
        or (not isinstance(templates, str) and all(isinstance(t, str) for t in templates))
    ):
        ident = text_cache_key(bundle, concepts, templates)
    if ident is None:
        return _model.embed_texts(bundle, concepts, templates, batch_size=batch_size)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / f"{ident['key']}.npy"
    want = (ident["n_concepts"], ident["embed_dim"])
    if path.is_file():
        cached = _read_entry(path, want)
        if cached is not None:
            logger.debug("text embeddings of %d concepts read from %s", want[0], path)
            return cached
    emb = _model.embed_texts(bundle, concepts, templates, batch_size=batch_size)
    try:
        _write_entry(root, path, emb, ident)
    except OSError as exc:  # a read-only or full disk costs the cache, not the run
        logger.warning("could not write the text embedding cache entry %s: %s", path, exc)
    return emb


def _weights_identity(bundle: ClipBundle) -> str | None:
    """``pretrained:<tag>``, ``checkpoint-sha256:<hex>``, ``state-sha256:<hex>``, or None (random)."""
    weights = bundle.weights
    if weights == "random":
        return None
    if weights.startswith("pretrained:"):
        return weights
    cached = _WEIGHTS_IDS.get(bundle.model)
    if cached is not None:
        return cached
    if weights.startswith("checkpoint:"):
        path = Path(weights[len("checkpoint:") :])
        try:
            ident = f"checkpoint-sha256:{_file_sha256(path)}"
        except OSError as exc:
            raise ValueError(
                f"the checkpoint '{path}' the CLIP model was loaded from cannot be read to key the "
                f"text embedding cache ({exc}); reload the model or call embed_texts directly"
            ) from exc
    else:  # hf-hub: / local-dir: sources name a place, not its content
        ident = f"state-sha256:{_state_sha256(bundle.model)}"
    _WEIGHTS_IDS[bundle.model] = ident
    return ident


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_sha256(module) -> str:
    """SHA-256 of a module's parameters and buffers (names, dtypes, shapes, bytes; name order)."""
    import torch

    h = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}={t!r};".encode())
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sha256_strings(values: list[str]) -> str:
    h = hashlib.sha256(f"{len(values)};".encode())
    for v in values:
        data = v.encode("utf-8", "surrogatepass")
        h.update(f"{len(data)}:".encode())  # length-prefixed: ["ab", "c"] != ["a", "bc"]
        h.update(data)
    return h.hexdigest()


def _read_entry(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The entry's array, or None (with a warning) if it is unreadable or not what the key says."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        logger.warning("text embedding cache entry %s is unreadable (%s); recomputing it", path, exc)
        return None
    problem = None
    if arr.dtype != np.float32 or arr.shape != shape:
        problem = f"holds {arr.dtype} {arr.shape}, expected float32 {shape}"
    elif not np.isfinite(arr).all():
        problem = "holds non-finite values"
    elif not np.allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-3):
        problem = "holds rows that are not unit vectors"
    if problem:
        logger.warning("text embedding cache entry %s %s; recomputing it", path, problem)
        return None
    return arr


def _write_entry(root: Path, path: Path, emb: np.ndarray, ident: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    meta = {**ident, "shape": list(emb.shape), "dtype": str(emb.dtype)}
    for target, write in (
        (path.with_suffix(".json"), lambda fh: fh.write(json.dumps(meta, indent=1).encode())),
        (path, lambda fh: np.save(fh, np.ascontiguousarray(emb, dtype=np.float32))),
    ):
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
