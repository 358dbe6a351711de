"""Train neuronscan-tinyclip, a tiny CLIP of the shapes world, and measure its zero-shot accuracy.

The model is open_clip's own ``CLIP`` (architecture ``neuronscan/clip/data/neuronscan-tinyclip.json``:
CLIP's modified ResNet as the image tower on 64² images, width 16, one block per stage, attention pooling;
a two-layer transformer text tower over a word-level vocabulary, :mod:`neuronscan.clip._tinyclip`; 64-d
embeddings; 1.44M parameters) trained with open_clip's ``ClipLoss`` on shapes-world images paired with
captions drawn from their concepts (:func:`caption`): full sentences ("a red striped circle on a dark
background"), paraphrases, partial captions ("red", "a circle", "striped texture", "a warm colour"), some
wrapped in one of neuronscan's prompt templates, so single concept words embed where their images do.

Each step takes one batch of images (:func:`render_groups`: groups of four that differ in one attribute, hard
negatives) and several kinds of caption for it (:func:`step_kinds`: always a full description, the shape and
the texture, plus one more kind), and averages one ``ClipLoss`` per kind: within a kind no caption
contradicts another image's (a colour-only caption of a circle never competes with "a circle"). The checkpoint is
a float16 state dict with the tokenizer's word list (``tokenizer_vocab``), read with
``torch.load(weights_only=True)`` by ``neuronscan.clip.load_clip('neuronscan-tinyclip')``::

    python -m neuronscan.demo.train_clip --out neuronscan/demo/tinyclip.pt
    python -m neuronscan.demo.train_clip --evaluate neuronscan/demo/tinyclip.pt

Zero-shot accuracy (:func:`zero_shot_accuracy`) classifies held-out images (the images of
``generate_shapes_world(seed=eval_seed)``; training images come from separate streams of ``--seed``)
by the most similar of an attribute's concept names, embedded exactly as the score stage embeds a
vocabulary (``embed_texts`` with the default templates): per attribute (shape, colour, texture,
background), per concept group (round/angular, warm/cool, plain/patterned) and for the whole image
(the best of all 576 full captions). The README states the packaged checkpoint's figures.

Reproducibility: everything derives from ``--seed``; ``torch.use_deterministic_algorithms(True)`` is on
and ``--threads`` fixes the thread count (default 1), so two trainings with the same seed, torch build, CPU
type and threads give the same weights (tested on a short run in one process; the full run's file was not
re-trained to compare its bytes). A different thread count, CPU or torch version changes float rounding.
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import time
from pathlib import Path

import numpy as np
import open_clip
import torch

from neuronscan.clip._model import ClipBundle, embed_images, embed_texts
from neuronscan.clip._tinyclip import (
    SPECIALS,
    TINYCLIP_CHECKPOINT,
    TINYCLIP_MODEL,
    TINYCLIP_WORDS,
    UNK,
    VOCAB_KEY,
    WordTokenizer,
    register,
    vocab_to_tensor,
)
from neuronscan.clip._vocab import DEFAULT_TEMPLATES
from neuronscan.demo.shapes import ATTRIBUTES, CONCEPTS, HIERARCHY, render, render_dataset, sample_attributes

__all__ = [
    "ALWAYS_KINDS", "CAPTION_KINDS", "caption", "caption_kind", "step_kinds", "render_groups", "train_tinyclip",
    "zero_shot_accuracy", "evaluate_checkpoint", "save_checkpoint", "main",
]

_PARENT = dict(HIERARCHY)
# Other words for a concept, drawn as often as its own name in the captions' slot for it.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "ellipse": ("ellipse", "oval"),
    "plain": ("plain", "solid"),
    "striped": ("striped", "stripes"),
    "dotted": ("dotted", "dots", "spotted"),
    "checkered": ("checkered", "checkerboard", "chequered"),
    "light": ("light", "bright"),
    "dark": ("dark", "black"),
    "noise": ("noise", "noisy"),
}
_GROUP_WEIGHTS = (0.45, 0.1, 0.35, 0.1)  # the attribute that varies within a render_groups group
_GROUPS = {"shape": ("round", "angular"), "colour": ("warm", "cool"), "texture": ("plain", "patterned")}

# What a caption describes, and how often a training step draws that kind. Each kind gets its own contrastive
# loss over the batch (its captions are compared with one another only): a caption that names only the colour
# of a circle would otherwise be a negative for every other circle's "a circle" in its batch, and the loss
# would push circles away from the word "circle".
CAPTION_KINDS: dict[str, float] = {
    "full": 0.25,
    "shape": 0.2, "texture": 0.15, "colour": 0.06, "background": 0.06,
    "shape_group": 0.05, "colour_group": 0.04, "texture_group": 0.04,
    "colour+shape": 0.05, "texture+shape": 0.05, "shape+background": 0.025, "colour+texture": 0.025,
}
ALWAYS_KINDS: tuple[str, ...] = ("full", "shape", "texture")
"""Kinds in every training step: the hard attributes, and the full description."""
def _group_index(attribute: str, concept: str) -> int:
    """0 or 1: the concept's group in ``_GROUPS[attribute]`` (a texture is plain or patterned)."""
    if attribute == "texture":
        return int(concept != "plain")
    return _GROUPS[attribute].index(_PARENT[concept])


def _word(concept: str, rng: np.random.Generator) -> str:
    options = _SYNONYMS.get(concept, (concept,))
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def caption_kind(rng: np.random.Generator) -> str:
    """A kind of caption (a key of :data:`CAPTION_KINDS`), drawn with its weight."""
    kinds = list(CAPTION_KINDS)
    return kinds[int(rng.choice(len(kinds), p=np.asarray(list(CAPTION_KINDS.values()))))]


def step_kinds(rng: np.random.Generator, n_kinds: int) -> list[str]:
    """The caption kinds of one training step: :data:`ALWAYS_KINDS`, then distinct others by their weights.

    Example:
        >>> step_kinds(np.random.default_rng(0), 5)[:3]
        ['full', 'shape', 'texture']
    """
    rest = [k for k in CAPTION_KINDS if k not in ALWAYS_KINDS]
    weights = np.asarray([CAPTION_KINDS[k] for k in rest])
    n_rest = min(max(0, n_kinds - len(ALWAYS_KINDS)), len(rest))
    drawn = rng.choice(len(rest), size=n_rest, replace=False, p=weights / weights.sum()) if n_rest else []
    return list(ALWAYS_KINDS)[:n_kinds] + [rest[int(i)] for i in drawn]


def caption(attrs: dict[str, str], rng: np.random.Generator, kind: str | None = None) -> str:
    """One caption of an image with concepts ``attrs`` (one per attribute), drawn from ``rng``.

    Args:
        attrs: the image's concepts.
        rng: draws the phrasing, synonyms and template.
        kind: what the caption names (:data:`CAPTION_KINDS`): ``full`` (every attribute: "a red striped
            circle on a dark background", in four phrasings), one attribute (``shape``: "circle", "a
            circle", "a circle shape"; ``texture``: "striped texture", ...), its concept group
            (``shape_group``: "a round shape"; ``colour_group``: "warm colour"; ``texture_group``: "plain"
            or "patterned") or a pair (``colour+shape``: "a red circle"). Default: drawn by
            :func:`caption_kind`. A quarter are wrapped in one of the prompt templates.

    Example:
        >>> attrs = {"shape": "circle", "colour": "red", "texture": "striped", "background": "dark"}
        >>> [caption(attrs, np.random.default_rng(2), k) for k in ["full", "shape", "texture", "colour_group"]]
        ['a red stripes circle on a dark background', 'circle', 'stripes', 'warm']
    """
    kind = caption_kind(rng) if kind is None else kind
    if kind not in CAPTION_KINDS:
        raise ValueError(f"unknown caption kind {kind!r}; expected one of {list(CAPTION_KINDS)}")
    s, c, t, b = (_word(attrs[a], rng) for a in ATTRIBUTES)
    if kind == "full":
        forms = [f"a {c} {t} {s} on a {b} background", f"a {t} {c} {s} on a {b} background",
                 f"a {c} {s} with a {t} texture on a {b} background", f"a {b} background with a {c} {t} {s}"]
    elif kind.endswith("_group"):
        attribute = kind[: -len("_group")]
        g = _GROUPS[attribute][_group_index(attribute, attrs[attribute])]
        forms = {"shape": [g, f"a {g} shape", f"{g} shape"],
                 "colour": [g, f"a {g} colour", f"{g} colour", f"something {g}"],
                 "texture": [g, f"a {g} shape", f"{g} texture"]}[attribute]
    elif "+" in kind:
        forms = {"colour+shape": [f"a {c} {s}", f"{c} {s}"],
                 "texture+shape": [f"a {t} {s}", f"a {s} with a {t} texture"],
                 "shape+background": [f"a {s} on a {b} background"],
                 "colour+texture": [f"a {c} {t} shape", f"{c} and {t}"]}[kind]
    else:
        forms = {"shape": [s, _article(s), f"a {s} shape", f"{s} shape"],
                 "colour": [c, f"{c} colour", f"a {c} shape", f"something {c}"],
                 "texture": [t, f"{t} texture", f"a {t} pattern", f"a {t} shape"],
                 "background": [b, f"{b} background", f"a {b} background"]}[kind]
    text = forms[int(rng.integers(len(forms)))]
    if rng.random() < 0.25 and not text.startswith("something"):
        template = DEFAULT_TEMPLATES[int(rng.integers(len(DEFAULT_TEMPLATES)))]
        bare = text[2:] if text.startswith("a ") else text[3:] if text.startswith("an ") else text
        text = template.replace("{}", bare)
    return text


def render_groups(
    n_groups: int, group_size: int, rng: np.random.Generator, size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Training images in groups that differ in one attribute only: hard negatives for the contrastive loss.

    Each group shares three concepts and takes ``group_size`` distinct concepts of the fourth (the shape
    for 45 % of groups, the texture 35 %, the colour and the background 10 % each), so a caption can only
    be matched to its image within the group through that attribute. Images are drawn by
    :func:`~neuronscan.demo.shapes.render` exactly as the shapes world draws them.

    Returns:
        ``images`` ``uint8 (n_groups * group_size, size, size, 3)`` and ``labels`` ``int64 (n, 4)``, a group's
        images contiguous.

    Example:
        >>> images, labels = render_groups(2, 4, np.random.default_rng(0), size=32)
        >>> images.shape, int((labels[:4] != labels[0]).any(axis=0).sum())
        ((8, 32, 32, 3), 1)
    """
    if group_size > min(len(v) for v in CONCEPTS.values()):
        raise ValueError(f"group_size must be at most {min(len(v) for v in CONCEPTS.values())}, got {group_size}")
    n = n_groups * group_size
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty((n, len(ATTRIBUTES)), dtype=np.int64)
    for g in range(n_groups):
        base = sample_attributes(rng)
        varying = ATTRIBUTES[int(rng.choice(len(ATTRIBUTES), p=_GROUP_WEIGHTS))]
        values = rng.choice(len(CONCEPTS[varying]), size=group_size, replace=False)
        for k, value in enumerate(values):
            attrs = {**base, varying: CONCEPTS[varying][int(value)]}
            i = g * group_size + k
            images[i] = render(attrs, rng, size)
            labels[i] = [CONCEPTS[a].index(attrs[a]) for a in ATTRIBUTES]
    return images, labels


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, int]:
    """Independent generators for training images and captions, and a torch seed, all from ``seed``."""
    image_seq, caption_seq, torch_seq = np.random.SeedSequence([seed, 0x7C11]).spawn(3)
    return (np.random.default_rng(image_seq), np.random.default_rng(caption_seq),
            int(torch_seq.generate_state(1, dtype=np.uint32)[0]))


def _bundle(model: torch.nn.Module, tokenizer: WordTokenizer) -> ClipBundle:
    """A :class:`ClipBundle` around an in-memory tinyclip, as ``load_clip`` would build it."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = int(cfg.get("size", 64)) if not isinstance(cfg.get("size"), (list, tuple)) else int(cfg["size"][0])
    return ClipBundle(
        model=model, tokenizer=tokenizer, model_name=TINYCLIP_MODEL, weights="in-memory",
        mean=tuple(float(m) for m in cfg["mean"]), std=tuple(float(s) for s in cfg["std"]),
        image_size=(size, size), interpolation=str(cfg.get("interpolation", "bicubic")),
        resize_mode=str(cfg.get("resize_mode", "shortest")), embed_dim=int(model.text_projection.shape[1]),
        device=torch.device("cpu"),
    )


def zero_shot_accuracy(bundle: ClipBundle, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Zero-shot accuracy of a CLIP on shapes-world images, classifying by concept names.

    Args:
        bundle: a loaded CLIP (``load_clip``).
        images: ``uint8 (n, H, W, 3)``.
        labels: ``int64 (n, 4)`` as :func:`~neuronscan.demo.shapes.render_dataset` returns them.

    Returns:
        ``{attribute: accuracy}`` for shape, colour, texture and background (each image against that
        attribute's concept names, embedded with the default templates); ``{attribute}_group`` for
        round/angular, warm/cool and plain/patterned; ``all_four``: the fraction whose most similar of
        the 576 full captions "a {colour} {texture} {shape} on a {background} background" is right.
    """
    emb = embed_images(bundle, images)
    out: dict[str, float] = {}
    for j, attribute in enumerate(ATTRIBUTES):
        text = embed_texts(bundle, CONCEPTS[attribute])
        out[attribute] = float(np.mean((emb @ text.T).argmax(1) == labels[:, j]))
    for attribute, groups in _GROUPS.items():
        j = ATTRIBUTES.index(attribute)
        truth = np.array([_group_index(attribute, c) for c in CONCEPTS[attribute]])[labels[:, j]]
        text = embed_texts(bundle, list(groups))
        out[f"{attribute}_group"] = float(np.mean((emb @ text.T).argmax(1) == truth))
    combos = list(itertools.product(*(range(len(CONCEPTS[a])) for a in ATTRIBUTES)))
    captions = [f"{CONCEPTS['colour'][c]} {CONCEPTS['texture'][t]} {CONCEPTS['shape'][s]} on a "
                f"{CONCEPTS['background'][b]} background" for s, c, t, b in combos]
    text = embed_texts(bundle, captions, ["a {}"])
    best = np.asarray(combos)[(emb @ text.T).argmax(1)]
    out["all_four"] = float(np.mean((best == labels).all(axis=1)))
    return out


def train_tinyclip(
    seed: int = 0,
    n_train: int = 32000,
    epochs: int = 8,
    batch_size: int = 128,
    lr: float = 2e-3,
    threads: int = 1,
    n_val: int = 500,
    model_cfg: dict | None = None,
    word_dropout: float = 0.05,
    group_size: int = 4,
    kinds_per_step: int = 4,
    init_logit_scale: float = 30.0,
    log=print,
) -> tuple[torch.nn.Module, WordTokenizer, dict[str, float]]:
    """Train a tinyclip from scratch with open_clip's ``CLIP`` and ``ClipLoss``.

    Args:
        seed: the only source of randomness (images, captions, initialisation, shuffling, dropout).
        n_train: training images, rendered once; every epoch draws new captions for them.
        epochs: passes over the training images.
        batch_size: image-caption pairs per AdamW step (the contrastive batch).
        lr: peak AdamW learning rate (linear warm-up over the first 5 % of steps, cosine decay to zero).
        threads: torch intra-op threads; fixed because it changes float rounding.
        n_val: held-out images (``render_dataset(n_val, default_rng(1))``) for the per-epoch report.
        model_cfg: an open_clip model config; default the registered ``neuronscan-tinyclip``.
        word_dropout: probability that a caption word is replaced by ``<unk>``.
        group_size: images per :func:`render_groups` group (kept together in a batch); divides ``batch_size``.
        kinds_per_step: caption kinds per step (:func:`step_kinds`), each with its own ``ClipLoss`` over the
            batch's images, averaged.
        init_logit_scale: the contrastive temperature's starting value (learnt from there, at most 100).
        log: called with progress lines.

    Returns:
        The model in eval mode, its tokenizer, and the last epoch's held-out zero-shot accuracies.
    """
    for name, value in {"n_train": n_train, "epochs": epochs, "batch_size": batch_size, "threads": threads,
                        "n_val": n_val}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if batch_size % group_size or n_train < batch_size:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of group_size ({group_size}) and at most "
                         f"n_train ({n_train})")
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        return _train(seed, n_train, epochs, batch_size, lr, n_val, model_cfg, word_dropout, group_size,
                      kinds_per_step, init_logit_scale, log)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.utils.deterministic.fill_uninitialized_memory = saved[2]


def _train(seed, n_train, epochs, batch_size, lr, n_val, model_cfg, word_dropout, group_size, kinds_per_step,
           init_logit_scale, log):
    register()
    image_rng, caption_rng, torch_seed = _streams(seed)
    torch.manual_seed(torch_seed)
    cfg = model_cfg if model_cfg is not None else open_clip.get_model_config(TINYCLIP_MODEL)
    model = open_clip.model.CLIP(**cfg)
    open_clip.set_model_preprocess_cfg(model, {**open_clip.transform.PreprocessCfg().__dict__,
                                               "size": cfg["vision_cfg"]["image_size"]})
    tokenizer = WordTokenizer(TINYCLIP_WORDS, cfg["text_cfg"]["context_length"])
    if tokenizer.vocab_size > cfg["text_cfg"]["vocab_size"]:
        raise ValueError(f"{tokenizer.vocab_size} tokens do not fit text_cfg.vocab_size "
                         f"{cfg['text_cfg']['vocab_size']}")
    # channels_last runs the image tower's small convolutions about 1.5x faster on CPU (oneDNN).
    model = model.to(memory_format=torch.channels_last)
    bundle = _bundle(model, tokenizer)
    mean = torch.tensor(bundle.mean).view(1, 3, 1, 1)
    std = torch.tensor(bundle.std).view(1, 3, 1, 1)

    started = time.perf_counter()
    n_groups = n_train // group_size
    images, labels = render_groups(n_groups, group_size, image_rng, size=cfg["vision_cfg"]["image_size"])
    n_train = n_groups * group_size
    val_images, val_labels = render_dataset(n_val, np.random.default_rng(1), size=cfg["vision_cfg"]["image_size"])
    log(f"rendered {n_train:,} training and {n_val:,} held-out images in {time.perf_counter() - started:.1f} s; "
        f"{sum(p.numel() for p in model.parameters()):,} parameters")

    # At initialisation the image tower maps every image to nearly one direction (cosines ~0.999): a larger
    # starting temperature than CLIP's 1/0.07 amplifies their differences and shortens the plateau before the
    # towers align on shape.
    with torch.no_grad():
        model.logit_scale.fill_(math.log(init_logit_scale))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0}],
                                  lr=lr, betas=(0.9, 0.98), eps=1e-6)
    steps = epochs * (n_groups // (batch_size // group_size))
    warmup = max(1, steps // 20)

    def rate(k: int) -> float:  # linear warm-up, then cosine decay to zero
        if k < warmup:
            return (k + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (k - warmup) / max(1, steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    loss_fn = open_clip.loss.ClipLoss()
    shuffle = torch.Generator().manual_seed(torch_seed)
    unk = SPECIALS.index(UNK)
    accuracy: dict[str, float] = {}
    for epoch in range(1, epochs + 1):
        model.train()
        started = time.perf_counter()
        total, seen = 0.0, 0
        per_batch = batch_size // group_size
        groups = torch.randperm(n_groups, generator=shuffle)[: (n_groups // per_batch) * per_batch]
        for batch in groups.split(per_batch):
            index = (batch.numpy()[:, None] * group_size + np.arange(group_size)).ravel()
            attrs = [{a: CONCEPTS[a][labels[i, j]] for j, a in enumerate(ATTRIBUTES)} for i in index]
            kinds = step_kinds(caption_rng, kinds_per_step)
            tokens = tokenizer([caption(a, caption_rng, kind) for kind in kinds for a in attrs])
            drop = (torch.rand(tokens.shape, generator=shuffle) < word_dropout) & (tokens >= len(SPECIALS))
            tokens = tokens.masked_fill(drop, unk)
            x = torch.from_numpy(images[index]).permute(0, 3, 1, 2).float().div_(255.0)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            # One image pass, one text pass over every kind's captions; one contrastive loss per kind.
            image_features = model.encode_image(x, normalize=True)
            text_features = model.encode_text(tokens, normalize=True).split(len(index))
            logit_scale = model.logit_scale.exp()
            loss = sum(loss_fn(image_features, t, logit_scale) for t in text_features) / len(kinds)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            total += loss.item() * len(index)
            seen += len(index)
        model.eval()
        accuracy = zero_shot_accuracy(bundle, val_images, val_labels)
        summary = "  ".join(f"{a} {accuracy[a]:.3f}" for a in (*ATTRIBUTES, "all_four"))
        log(f"epoch {epoch}/{epochs}  loss {total / seen:.4f}  held-out zero-shot {summary}  "
            f"({time.perf_counter() - started:.1f} s)")
    return model.to(memory_format=torch.contiguous_format).eval(), tokenizer, accuracy


def save_checkpoint(model: torch.nn.Module, tokenizer: WordTokenizer, path: Path) -> None:
    """Write the float16 state dict and the tokenizer's words atomically, bytes independent of the name."""
    state = {name: (t.detach().half() if t.is_floating_point() else t.detach()).contiguous()
             for name, t in model.state_dict().items()}
    state[VOCAB_KEY] = vocab_to_tensor(tokenizer.words)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(buffer.getvalue())
    partial.replace(path)


def evaluate_checkpoint(
    checkpoint: str | Path | None = None, n_images: int = 2000, eval_seed: int = 1
) -> dict[str, float]:
    """Zero-shot accuracies (:func:`zero_shot_accuracy`) of a tinyclip checkpoint, loaded by ``load_clip``,
    on the images of ``generate_shapes_world(seed=eval_seed, n_images=n_images)``.

    Example:
        >>> accuracy = evaluate_checkpoint(n_images=100)
        >>> accuracy["colour"] > 0.9
        True
    """
    from neuronscan.clip import load_clip

    bundle = load_clip(TINYCLIP_MODEL, checkpoint=checkpoint)
    images, labels = render_dataset(n_images, np.random.default_rng(eval_seed))
    return zero_shot_accuracy(bundle, images, labels)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m neuronscan.demo.train_clip",
        description="Train neuronscan-tinyclip on the shapes world, or measure a checkpoint's zero-shot accuracy.",
        epilog="example: python -m neuronscan.demo.train_clip --out neuronscan/demo/tinyclip.pt",
    )
    parser.add_argument("--out", type=Path, default=TINYCLIP_CHECKPOINT, help="checkpoint to write")
    parser.add_argument("--evaluate", type=Path, metavar="CHECKPOINT", help="skip training; evaluate CHECKPOINT")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice of training (default 0)")
    parser.add_argument("--n-train", type=int, default=32000, help="training images (default 32000)")
    parser.add_argument("--epochs", type=int, default=8, help="passes over the training images (default 8)")
    parser.add_argument("--batch-size", type=int, default=128, help="pairs per contrastive batch (default 128)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; fixed for reproducibility")
    parser.add_argument("--eval-images", type=int, default=2000, help="held-out images (default 2000)")
    parser.add_argument("--eval-seed", type=int, default=1, help="shapes-world seed of the held-out images")
    args = parser.parse_args(argv)

    if args.evaluate is not None:
        checkpoint = args.evaluate
    else:
        started, cpu = time.perf_counter(), time.process_time()
        model, tokenizer, _ = train_tinyclip(args.seed, args.n_train, args.epochs, args.batch_size, args.lr,
                                             args.threads)
        save_checkpoint(model, tokenizer, args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) after "
              f"{time.perf_counter() - started:.0f} s ({time.process_time() - cpu:.0f} CPU s)")
        checkpoint = args.out
    torch.set_num_threads(args.threads)
    accuracy = evaluate_checkpoint(checkpoint, args.eval_images, args.eval_seed)
    print(f"zero-shot accuracy on {args.eval_images:,} held-out images (shapes world seed {args.eval_seed}):")
    for key, value in accuracy.items():
        print(f"  {key:<18} {value:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
