"""Label-free unit labels: CLIP models, image and concept embeddings, concept vocabularies.

The model half (torch, open_clip) and the LLM vocabulary client are imported on first use, so reading
a vocabulary or importing this package for its names stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from neuronscan.clip._builtin import BUILTIN_VOCABULARIES, builtin_vocabulary
from neuronscan.clip._tinyclip import TINYCLIP_MODEL
from neuronscan.clip._vocab import DEFAULT_TEMPLATES, load_vocabulary, resolve_vocabulary

if TYPE_CHECKING:
    from neuronscan.clip._llm import ProposedVocabulary, propose_vocabulary
    from neuronscan.clip._model import ClipBundle, embed_images, embed_texts, load_clip

__all__ = [
    "BUILTIN_VOCABULARIES",
    "DEFAULT_TEMPLATES",
    "TINYCLIP_MODEL",
    "ClipBundle",
    "ProposedVocabulary",
    "builtin_vocabulary",
    "embed_images",
    "embed_texts",
    "load_clip",
    "load_vocabulary",
    "propose_vocabulary",
    "resolve_vocabulary",
]

_MODEL_NAMES = frozenset({"ClipBundle", "embed_images", "embed_texts", "load_clip"})
_LLM_NAMES = frozenset({"ProposedVocabulary", "propose_vocabulary"})


def __getattr__(name: str) -> Any:
    if name in _MODEL_NAMES:
        from neuronscan.clip import _model

        return getattr(_model, name)
    if name in _LLM_NAMES:
        from neuronscan.clip import _llm

        return getattr(_llm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
