"""neuronscan-tinyclip: the packaged checkpoint, its loader and tokenizer, its zero-shot accuracy."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from neuronscan.clip import TINYCLIP_MODEL, embed_images, embed_texts, load_clip
from neuronscan.clip._tinyclip import (
    SPECIALS,
    TINYCLIP_CHECKPOINT,
    TINYCLIP_WORDS,
    UNK,
    VOCAB_KEY,
    WordTokenizer,
    vocab_from_tensor,
    vocab_to_tensor,
)
from neuronscan.demo.shapes import ATTRIBUTES, CONCEPTS, render_dataset, sample_attributes
from neuronscan.demo.train_clip import caption, save_checkpoint, train_tinyclip, zero_shot_accuracy

# Held-out zero-shot accuracy floors on 300 images of shapes world seed 1 (chance: 1/6, 1/6, 1/4, 1/4). The
# packaged checkpoint's figures on 2,000 such images are in the README.
FLOORS = {"shape": 0.9, "colour": 0.95, "texture": 0.75, "background": 0.95}


@pytest.fixture(scope="module")
def bundle():
    return load_clip(TINYCLIP_MODEL)


@pytest.fixture(scope="module")
def held_out():
    return render_dataset(300, np.random.default_rng(1))


def test_loads_by_name_from_the_packaged_half_precision_state_dict(bundle):
    assert TINYCLIP_MODEL in open_clip.list_models()
    assert bundle.weights == f"checkpoint:{TINYCLIP_CHECKPOINT}"
    assert bundle.image_size == (64, 64) and bundle.embed_dim == 64
    assert isinstance(bundle.tokenizer, WordTokenizer) and not bundle.model.training
    assert TINYCLIP_CHECKPOINT.stat().st_size < 4 * 2**20
    state = torch.load(TINYCLIP_CHECKPOINT, weights_only=True, map_location="cpu")
    assert all(t.dtype == torch.float16 for k, t in state.items() if k != VOCAB_KEY and t.is_floating_point())
    assert vocab_from_tensor(state[VOCAB_KEY]) == list(bundle.tokenizer.words)


def test_zero_shot_accuracy_per_attribute_is_well_above_chance(bundle, held_out):
    accuracy = zero_shot_accuracy(bundle, *held_out)
    for attribute, floor in FLOORS.items():
        assert accuracy[attribute] >= floor, (attribute, accuracy)


def test_single_words_sit_near_their_images(bundle, held_out):
    images, labels = held_out
    emb = embed_images(bundle, images)
    for j, attribute in enumerate(ATTRIBUTES):
        text = embed_texts(bundle, CONCEPTS[attribute], ["{}"])  # the bare word, no template
        accuracy = float(np.mean((emb @ text.T).argmax(1) == labels[:, j]))
        assert accuracy >= FLOORS[attribute] - 0.15, (attribute, accuracy)


def test_an_explicit_checkpoint_and_errors(tmp_path, bundle):
    again = load_clip(TINYCLIP_MODEL, checkpoint=TINYCLIP_CHECKPOINT)
    tokens = bundle.tokenizer(["a red circle"])
    with torch.inference_mode():
        np.testing.assert_array_equal(again.model.encode_text(tokens).numpy(), bundle.model.encode_text(tokens).numpy())
    with pytest.raises(ValueError, match="has no pretrained tags"):
        load_clip(TINYCLIP_MODEL, pretrained="openai")
    other = tmp_path / "other.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="does not fit open_clip model 'neuronscan-tinyclip'"):
        load_clip(TINYCLIP_MODEL, checkpoint=other)


def test_word_tokenizer():
    tok = WordTokenizer(TINYCLIP_WORDS, context_length=8)
    ids = tok(["A Red_circles!", "zebra", "a b c d e f g h i j"])
    assert ids.shape == (3, 8) and ids.dtype == torch.long
    start, end, unk = SPECIALS.index("<start>"), SPECIALS.index("<end>"), SPECIALS.index(UNK)
    assert ids[0].tolist()[:5] == [start, tok.ids["a"], tok.ids["red"], tok.ids["circle"], end]
    assert ids[1].tolist()[:3] == [start, unk, end]
    assert ids[2].tolist()[-1] == end  # cut to fit, <end> kept
    assert tok.encode("color gray spots crosses") == [tok.ids["colour"], unk, tok.ids["dots"], tok.ids["cross"]]
    assert tok.unknown(["a zebra on grass", "zebra"]) == ["zebra", "grass"]
    assert vocab_from_tensor(vocab_to_tensor(TINYCLIP_WORDS)) == list(TINYCLIP_WORDS)
    with pytest.raises(ValueError, match="lower-case letters"):
        WordTokenizer(["Red"], 8)


def test_captions_use_only_vocabulary_words_and_are_reproducible():
    tok = WordTokenizer(TINYCLIP_WORDS, context_length=16)
    rng = np.random.default_rng(0)
    texts = [caption(sample_attributes(rng), rng) for _ in range(3000)]
    assert tok.unknown(texts) == []
    # <start>, 14 words, <end> fit the context; a few templated full sentences lose their last words.
    assert np.mean([len(tok.encode(t)) > 14 for t in texts]) < 0.02
    assert {"red", "a circle", "striped texture"} <= set(texts)  # partial captions, single words among them
    rng2 = np.random.default_rng(0)
    assert [caption(sample_attributes(rng2), rng2) for _ in range(3000)] == texts


def test_training_is_reproducible_and_saves_a_loadable_checkpoint(tmp_path):
    runs = [train_tinyclip(seed=3, n_train=256, epochs=1, batch_size=64, n_val=32, log=lambda *_: None)
            for _ in range(2)]
    (m1, tok, acc), (m2, _, _) = runs
    assert set(acc) >= set(ATTRIBUTES)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    path = tmp_path / "tiny.pt"
    save_checkpoint(m1, tok, path)
    loaded = load_clip(TINYCLIP_MODEL, checkpoint=path)
    assert loaded.weights == f"checkpoint:{path}"
    assert embed_texts(loaded, ["red"]).shape == (1, 64)
