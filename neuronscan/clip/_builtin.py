"""Built-in concept vocabularies, selected by name: ``builtin:colours,shapes``.

The lists are packaged text files under ``neuronscan/clip/data/`` (one concept per line, ``#``
comments), except ``imagenet`` (the 1,000 ImageNet-1k class names of the packaged
``imagenet_concept_names.csv``, a copy of ``configs/imagenet_concept_names.csv``, with the
``(nXXXXXXXX)`` suffix that tells same-named classes apart removed) and ``english`` (the 20,000 most
frequent English words, from the optional ``wordfreq`` package: no frequency-ranked word list ships
with neuronscan or with this machine's system packages).

Only the standard library is imported.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "BUILTIN_PREFIX",
    "BUILTIN_VOCABULARIES",
    "DEFAULT_BUILTIN",
    "builtin_vocabulary",
    "is_builtin_spec",
    "parse_builtin_spec",
]

BUILTIN_PREFIX = "builtin:"
DATA_DIR = Path(__file__).resolve().parent / "data"

BUILTIN_VOCABULARIES: dict[str, str] = {
    "colours": "colour names: basic terms, light/dark forms, named hues (59)",
    "textures": "the 47 Describable Textures Dataset categories and other surface patterns (65)",
    "materials": "the Materials in Context categories and other materials (59)",
    "shapes": "flat figures, solids and line forms (42)",
    "parts": "parts of people, animals, vehicles, buildings, plants and devices (94)",
    "scenes": "indoor, urban and natural places (90)",
    "imagenet": "the 1,000 ImageNet-1k class names (998 distinct names)",
    "english": "the 20,000 most frequent English words (needs the wordfreq package)",
}
"""Every built-in vocabulary by name, with what it holds (distinct entries)."""

_ALIASES = {"colors": "colours", "object_parts": "parts", "imagenet1k": "imagenet", "english20k": "english"}

DEFAULT_BUILTIN = "builtin:colours,textures,materials,shapes,parts,scenes"
"""The fallback of an LLM-proposed vocabulary: every general visual list."""

_WNID_SUFFIX = re.compile(r"\s*\(n\d{8}\)$")
ENGLISH_WORDS = 20_000


def is_builtin_spec(value: object) -> bool:
    """Whether ``value`` is a ``builtin:`` vocabulary string."""
    return isinstance(value, str) and value.strip().startswith(BUILTIN_PREFIX)


def parse_builtin_spec(spec: str) -> list[str]:
    """The list names of ``builtin:a,b,c``, checked; aliases (``colors``) become their names.

    Raises:
        ValueError: the string does not start with ``builtin:``, names nothing, or names an unknown list.

    Example:
        >>> parse_builtin_spec("builtin: colors, shapes")
        ['colours', 'shapes']
    """
    text = spec.strip()
    if not text.startswith(BUILTIN_PREFIX):
        raise ValueError(f"{spec!r} is not a built-in vocabulary; write builtin:NAME[,NAME...]")
    names = [n.strip().lower() for n in text[len(BUILTIN_PREFIX):].split(",") if n.strip()]
    if not names:
        raise ValueError(f"{spec!r} names no list; write e.g. builtin:colours,shapes "
                         f"(lists: {', '.join(BUILTIN_VOCABULARIES)})")
    out: list[str] = []
    for name in names:
        name = _ALIASES.get(name, name)
        if name not in BUILTIN_VOCABULARIES:
            close = difflib.get_close_matches(name, list(BUILTIN_VOCABULARIES) + list(_ALIASES), n=3)
            close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))[:2]
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"unknown built-in vocabulary {name!r}{hint} Lists: {', '.join(BUILTIN_VOCABULARIES)}")
        if name not in out:
            out.append(name)
    return out


def builtin_vocabulary(names: str | Sequence[str]) -> list[str]:
    """The concepts of one or more built-in lists, in list order, each concept once.

    Args:
        names: a ``builtin:a,b`` string, or list names (``["colours", "shapes"]``).

    Raises:
        ValueError: an unknown list name; ``english`` without the ``wordfreq`` package.

    Example:
        >>> builtin_vocabulary("builtin:colours")[:3]
        ['red', 'orange', 'yellow']
        >>> len(builtin_vocabulary(["imagenet"]))
        998
    """
    if isinstance(names, str):
        spec = names if is_builtin_spec(names) else BUILTIN_PREFIX + names
        chosen = parse_builtin_spec(spec)
    else:
        chosen = parse_builtin_spec(BUILTIN_PREFIX + ",".join(names))
    seen: dict[str, None] = {}
    for name in chosen:
        for concept in _read(name):
            seen.setdefault(concept, None)
    return list(seen)


def _read(name: str) -> list[str]:
    if name == "imagenet":
        with open(DATA_DIR / "imagenet_concept_names.csv", encoding="utf-8", newline="") as f:
            return [_WNID_SUFFIX.sub("", row["concept"]).strip() for row in csv.DictReader(f)]
    if name == "english":
        return _english()
    lines = (DATA_DIR / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    return [" ".join(line.split()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _english() -> list[str]:
    try:
        import wordfreq
    except ImportError:
        raise ValueError(
            "builtin:english needs the wordfreq package (pip install wordfreq): neuronscan ships no "
            "frequency-ranked English word list"
        ) from None
    words = [w for w in wordfreq.top_n_list("en", ENGLISH_WORDS * 2) if w.isalpha() and len(w) > 1]
    return words[:ENGLISH_WORDS]
