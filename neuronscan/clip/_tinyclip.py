"""neuronscan-tinyclip: a tiny open_clip CLIP trained on the shapes world, and its word-level tokenizer.

The architecture is an ordinary open_clip ``CLIP`` (CLIP's modified ResNet as the image tower on 64²
images, a causal transformer text tower, 64-d embeddings), registered with open_clip under
:data:`TINYCLIP_MODEL` from the packaged ``data/neuronscan-tinyclip.json``, so
``open_clip.create_model('neuronscan-tinyclip')`` builds it.
Its weights are trained by ``python -m neuronscan.demo.train_clip`` and packaged as
``neuronscan/demo/tinyclip.pt``; :func:`neuronscan.clip.load_clip` loads them by the model name alone.

Text is tokenized by :class:`WordTokenizer`, one token per word: the 49k-entry BPE vocabulary of
open_clip's ``SimpleTokenizer`` would take more parameters than the whole model. The word list is
saved in the checkpoint (key :data:`VOCAB_KEY`, UTF-8 bytes as a ``uint8`` tensor, so the file stays
a plain tensor dict that ``torch.load(weights_only=True)`` reads) and defaults to :data:`TINYCLIP_WORDS`.
A word outside it becomes ``<unk>``, which training uses for dropped words, so it carries no concept.

This module imports torch only inside the tokenizer's call and open_clip only in :func:`register`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "TINYCLIP_MODEL",
    "TINYCLIP_CHECKPOINT",
    "TINYCLIP_CONFIG",
    "TINYCLIP_WORDS",
    "VOCAB_KEY",
    "WordTokenizer",
    "register",
    "vocab_to_tensor",
    "vocab_from_tensor",
]

TINYCLIP_MODEL = "neuronscan-tinyclip"
"""The open_clip model name of the tiny shapes-world CLIP (``clip.model`` in a config)."""

TINYCLIP_CONFIG = Path(__file__).resolve().parent / "data" / f"{TINYCLIP_MODEL}.json"
"""The open_clip architecture config, registered with ``open_clip.add_model_config``."""

TINYCLIP_CHECKPOINT = Path(__file__).resolve().parents[1] / "demo" / "tinyclip.pt"
"""The packaged weights (``python -m neuronscan.demo.train_clip --out neuronscan/demo/tinyclip.pt``)."""

VOCAB_KEY = "tokenizer_vocab"
"""State-dict key of the tokenizer's word list: ``'\\n'.join(words)`` as UTF-8 bytes in a uint8 tensor."""

PAD, SOT, EOT, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS: tuple[str, ...] = (PAD, SOT, EOT, UNK)
"""Ids 0..3; the architecture config pools the text tower at the ``<end>`` token (``pool_type: eos``, id 2)."""

# Every word the shapes-world captions (neuronscan.demo.train_clip) and neuronscan's default prompt
# templates (neuronscan.clip.DEFAULT_TEMPLATES) use. Append only: a word's id is its position.
TINYCLIP_WORDS: tuple[str, ...] = (
    # function words and prompt-template words
    "a", "an", "the", "of", "on", "with", "and", "in", "is", "that", "it", "this", "there", "its",
    "photo", "image", "picture", "close", "up", "cropped", "low", "resolution", "showing", "object",
    "pattern", "something", "thing", "shape", "colour", "coloured", "texture", "textured", "background",
    "surface", "filled", "drawn", "over", "against",
    # shapes and their groups
    "circle", "ellipse", "oval", "square", "triangle", "star", "cross", "round", "angular",
    # colours and their groups
    "red", "orange", "yellow", "green", "blue", "purple", "warm", "cool",
    # textures
    "plain", "solid", "striped", "stripes", "dotted", "dots", "spotted", "checkered", "checkerboard",
    "chequered", "patterned",
    # backgrounds
    "light", "bright", "dark", "black", "noise", "noisy", "gradient",
)

# Spellings that share a word's token.
_ALIASES: dict[str, str] = {
    "color": "colour", "colored": "coloured", "checked": "checkered", "stripy": "striped", "spots": "dots",
}
_WORD = re.compile(r"[a-z0-9]+")


class WordTokenizer:
    """Words to token ids: ``<start> w1 w2 ... <end> <pad> ...``, ``context_length`` ids per text.

    Text is lower-cased; ``_``, ``-`` and ``/`` separate words; anything but letters and digits is
    dropped. A word not in the vocabulary is looked up through a few aliases (``color`` →
    ``colour``) and without a plural ``s``/``es`` (``circles`` → ``circle``) before it becomes
    ``<unk>``. A text longer than ``context_length - 2`` words is cut, keeping ``<end>``.

    Args:
        words: the vocabulary, ids ``4 ..`` in order (ids 0..3 are the special tokens).
        context_length: ids per encoded text, ``<start>`` and ``<end>`` included.

    Example:
        >>> tok = WordTokenizer(["a", "red", "circle"], context_length=6)
        >>> tok(["a red circles!", "zebra"]).tolist()
        [[1, 4, 5, 6, 2, 0], [1, 3, 2, 0, 0, 0]]
    """

    def __init__(self, words: Sequence[str], context_length: int) -> None:
        words = list(words)
        if context_length < 3:
            raise ValueError(f"context_length must be at least 3, got {context_length}")
        bad = [w for w in words if not isinstance(w, str) or _WORD.fullmatch(w) is None]
        if bad:
            raise ValueError(f"vocabulary words must be lower-case letters and digits, got {bad[:3]!r}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary words must be unique")
        self.words: tuple[str, ...] = tuple(words)
        self.context_length = int(context_length)
        self.ids: dict[str, int] = {w: i + len(SPECIALS) for i, w in enumerate(words)}
        self.vocab_size = len(SPECIALS) + len(words)

    def split(self, text: str) -> list[str]:
        """The normalised words of ``text``, before vocabulary look-up."""
        return _WORD.findall(re.sub(r"[_\-/]", " ", str(text).lower()))

    def _id(self, word: str) -> int:
        singular = [word[:-1]] if word.endswith("s") else []
        if word.endswith("es"):
            singular.append(word[:-2])
        for candidate in (word, *singular):
            for form in (candidate, _ALIASES.get(candidate)):
                if form in self.ids:
                    return self.ids[form]
        return SPECIALS.index(UNK)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text without ``<start>``, ``<end>`` or padding."""
        return [self._id(w) for w in self.split(text)]

    def unknown(self, texts: Iterable[str]) -> list[str]:
        """The words of ``texts`` that map to ``<unk>``, each once, in order of appearance."""
        seen: dict[str, None] = {}
        unk = SPECIALS.index(UNK)
        for text in texts:
            for word in self.split(text):
                if self._id(word) == unk:
                    seen.setdefault(word, None)
        return list(seen)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Any:
        """``(n_texts, context_length)`` int64 tensor of token ids (open_clip's tokenizer interface)."""
        import torch

        if isinstance(texts, str):
            texts = [texts]
        length = self.context_length if context_length is None else int(context_length)
        out = torch.zeros((len(texts), length), dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [SPECIALS.index(SOT), *self.encode(text)[: length - 2], SPECIALS.index(EOT)]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def vocab_to_tensor(words: Sequence[str]) -> Any:
    """The word list as a ``uint8`` tensor, for the checkpoint under :data:`VOCAB_KEY`."""
    import torch

    return torch.tensor(list("\n".join(words).encode("utf-8")), dtype=torch.uint8)


def vocab_from_tensor(tensor: Any) -> list[str]:
    """Inverse of :func:`vocab_to_tensor`."""
    data = bytes(tensor.to("cpu").flatten().tolist())
    return data.decode("utf-8").split("\n") if data else []


def register() -> None:
    """Make :data:`TINYCLIP_MODEL` an open_clip architecture (idempotent)."""
    import open_clip

    if TINYCLIP_MODEL not in open_clip.list_models():
        open_clip.add_model_config(TINYCLIP_CONFIG)
