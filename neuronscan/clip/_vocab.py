"""Concept vocabularies and prompt templates for CLIP text embeddings.

A vocabulary is given as a list of concepts, a text file (one concept per line), ``builtin:NAME[,NAME...]``
(packaged lists, :mod:`neuronscan.clip._builtin`), or ``llm``: words proposed by an OpenAI-compatible
chat endpoint (:mod:`neuronscan.clip._llm`), which needs the ``clip.vocabulary_llm`` settings and so
goes through :func:`resolve_vocabulary`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from neuronscan.clip._builtin import builtin_vocabulary, is_builtin_spec

__all__ = ["DEFAULT_TEMPLATES", "LLM_VOCABULARY", "load_vocabulary", "resolve_vocabulary"]

LLM_VOCABULARY = "llm"
"""The ``clip.vocabulary`` value that asks the ``clip.vocabulary_llm`` endpoint for the words."""

# Each concept is embedded once per template; the normalised embeddings are averaged. The set
# mixes object, attribute and texture phrasings because a unit's concept can be any of them.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a low resolution photo of a {}.",
    "an image showing {}.",
    "a {} object.",
    "a {} pattern.",
)
_INLINE_COMMENT = re.compile(r"\s#")


def load_vocabulary(path_or_list: str | os.PathLike[str] | Iterable[str]) -> list[str]:
    """Read a concept vocabulary: one concept per line, cleaned and de-duplicated.

    Each entry is stripped and its inner whitespace collapsed to single spaces. Blank entries
    and comments (a line starting with ``#``, or anything after whitespace + ``#``) are dropped;
    duplicates are dropped keeping the first occurrence, so the order is the file's order.

    Args:
        path_or_list: a UTF-8 text file (``str`` or path-like), ``builtin:NAME[,NAME...]`` (a string
            naming packaged lists, e.g. ``builtin:colours,shapes``; see
            :data:`~neuronscan.clip.BUILTIN_VOCABULARIES`), or an iterable of strings, which is cleaned
            the same way.

    Returns:
        The concepts, in order, at least one.

    Raises:
        ValueError: if the file does not exist or is not a file, a built-in list is unknown, the
            string is ``llm`` (use :func:`resolve_vocabulary`), or nothing is left after cleaning.
        TypeError: if an entry of the iterable is not a string.

    Example:
        >>> load_vocabulary(["red", "  circle ", "# shapes", "red", "dotted  texture"])
        ['red', 'circle', 'dotted texture']
    """
    if isinstance(path_or_list, str) and is_builtin_spec(path_or_list):
        entries = builtin_vocabulary(path_or_list)
        source = f"built-in vocabulary '{path_or_list.strip()}'"
    elif isinstance(path_or_list, str) and path_or_list.strip() == LLM_VOCABULARY and not Path(path_or_list).exists():
        raise ValueError(
            "vocabulary 'llm' is proposed by the clip.vocabulary_llm endpoint: read it with "
            "resolve_vocabulary(clip_settings, concepts), not load_vocabulary"
        )
    elif isinstance(path_or_list, (str, os.PathLike)):
        path = Path(path_or_list)
        if not path.is_file():
            raise ValueError(
                f"vocabulary file '{path}' does not exist or is not a file; pass a text file "
                "with one concept per line, or a list of concepts"
            )
        entries: Iterable[str] = path.read_text(encoding="utf-8").splitlines()
        source = f"vocabulary file '{path}'"
    else:
        entries = list(path_or_list)
        for i, entry in enumerate(entries):
            if not isinstance(entry, str):
                raise TypeError(
                    f"vocabulary entry {i} is {type(entry).__name__} ({entry!r}); "
                    "concepts must be strings"
                )
        source = "vocabulary list"

    seen: dict[str, None] = {}
    for entry in entries:
        concept = _strip_comment(entry)
        if concept:
            seen.setdefault(concept, None)
    if not seen:
        raise ValueError(f"{source} has no concepts after removing blank lines and comments")
    return list(seen)


def resolve_vocabulary(clip_settings: Any, concepts: Iterable[str] = ()) -> list[str]:
    """The vocabulary a ``clip`` config section asks for.

    ``clip_settings.vocabulary`` unset: the run's labelled ``concepts``; ``llm``: the words that the
    ``clip_settings.vocabulary_llm`` endpoint proposes (from its cache when the same request was made
    before; its built-in fallback, with a warning, when the endpoint cannot be used); anything else:
    :func:`load_vocabulary`.

    Args:
        clip_settings: a :class:`~neuronscan.config.ClipSection` (or any object with ``vocabulary``
            and ``vocabulary_llm`` attributes).
        concepts: the labelled concepts of the run; the LLM prompt may quote them (``{concepts}``).

    Raises:
        ValueError: as :func:`load_vocabulary`; ``llm`` without ``vocabulary_llm`` settings.

    Example:
        >>> from types import SimpleNamespace
        >>> resolve_vocabulary(SimpleNamespace(vocabulary=None), ["red", "circle"])
        ['red', 'circle']
    """
    vocabulary = getattr(clip_settings, "vocabulary", None)
    if vocabulary is None:
        return load_vocabulary(list(concepts))
    if isinstance(vocabulary, str) and vocabulary.strip() == LLM_VOCABULARY:
        llm = getattr(clip_settings, "vocabulary_llm", None)
        if llm is None:
            raise ValueError("clip.vocabulary is 'llm' but clip.vocabulary_llm (url, model, ...) is not set")
        from neuronscan.clip._llm import propose_vocabulary

        return load_vocabulary(propose_vocabulary(llm, concepts=list(concepts)).words)
    return load_vocabulary(vocabulary)


def _strip_comment(line: str) -> str:
    """The concept on one line: comment removed, whitespace collapsed."""
    text = line.strip()
    if text.startswith("#"):
        return ""
    text = _INLINE_COMMENT.split(text, maxsplit=1)[0]
    return " ".join(text.split())
