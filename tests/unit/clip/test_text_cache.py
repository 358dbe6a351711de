"""The on-disk text embedding cache: hits, keys, random weights, damaged entries (no downloads)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import numpy as np
import open_clip
import pytest
import torch

from neuronscan.clip import _model, load_clip
from neuronscan.clip._text_cache import cached_embed_texts, default_cache_dir, text_cache_key

TINY = "neuronscan-test-tiny-cache"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
WORDS = ["red", "circle", "striped texture"]


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory):
    path = tmp_path_factory.mktemp("open_clip_cfg") / f"{TINY}.json"
    path.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(path)
    yield TINY
    open_clip.factory._MODEL_CONFIG_PATHS.remove(path)
    open_clip.factory._MODEL_CONFIGS.pop(TINY, None)


@pytest.fixture(scope="module")
def checkpoints(tiny_name, tmp_path_factory):
    """A checkpoint, a byte copy of it elsewhere, and a checkpoint of other weights."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    torch.save(load_clip(tiny_name).model.state_dict(), root / "a.pt")
    (root / "copies").mkdir()
    shutil.copyfile(root / "a.pt", root / "copies" / "a_copy.pt")
    torch.manual_seed(1)
    torch.save(load_clip(tiny_name).model.state_dict(), root / "b.pt")
    return root


@pytest.fixture()
def calls(monkeypatch):
    """Counts the real embed_texts calls the cache makes."""
    seen = []
    real = _model.embed_texts

    def spy(*args, **kwargs):
        seen.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(_model, "embed_texts", spy)
    return seen


def test_second_call_is_read_from_disk(tiny_name, checkpoints, tmp_path, calls):
    bundle = load_clip(tiny_name, checkpoint=checkpoints / "a.pt")
    first = cached_embed_texts(bundle, WORDS, cache_dir=tmp_path)
    assert len(calls) == 1
    again = cached_embed_texts(bundle, WORDS, cache_dir=tmp_path)
    assert len(calls) == 1  # no second embedding
    np.testing.assert_array_equal(again, first)
    assert again.dtype == np.float32 and again.shape == (3, 32)
    np.testing.assert_array_equal(first, _model.embed_texts(bundle, WORDS))
    # Another process (a fresh load of the same file) hits the same entry.
    reloaded = load_clip(tiny_name, checkpoint=checkpoints / "a.pt")
    np.testing.assert_array_equal(cached_embed_texts(reloaded, WORDS, cache_dir=tmp_path), first)
    assert len(calls) == 2  # the reference call above, not the cache
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert len(entries) == 2 and entries[0].endswith(".json") and entries[1].endswith(".npy")
    meta = json.loads((tmp_path / entries[0]).read_text())
    assert meta["model"] == tiny_name and meta["n_concepts"] == 3
    assert meta["weights"].startswith("checkpoint-sha256:")


def test_key_follows_weights_not_paths(tiny_name, checkpoints):
    a = load_clip(tiny_name, checkpoint=checkpoints / "a.pt")
    a_copy = load_clip(tiny_name, checkpoint=checkpoints / "copies" / "a_copy.pt")
    b = load_clip(tiny_name, checkpoint=checkpoints / "b.pt")
    key = text_cache_key(a, WORDS)["key"]
    assert text_cache_key(a_copy, WORDS)["key"] == key  # the same bytes elsewhere
    assert text_cache_key(b, WORDS)["key"] != key  # other weights


def test_key_follows_vocabulary_templates_and_model(tiny_name, checkpoints):
    bundle = load_clip(tiny_name, checkpoint=checkpoints / "a.pt")
    key = text_cache_key(bundle, WORDS)["key"]
    assert text_cache_key(bundle, list(WORDS), None)["key"] == key
    assert text_cache_key(bundle, WORDS, list(_model.DEFAULT_TEMPLATES))["key"] == key
    others = [
        text_cache_key(bundle, WORDS[::-1]),  # order: row i is word i
        text_cache_key(bundle, WORDS[:2]),
        text_cache_key(bundle, ["red", "circle", "striped  texture"]),
        text_cache_key(bundle, ["redcircle", "", "striped texture"]),  # same characters
        text_cache_key(bundle, WORDS, ["a photo of a {}."]),
        text_cache_key(bundle, WORDS, list(_model.DEFAULT_TEMPLATES)[::-1]),
        text_cache_key(dataclasses.replace(bundle, model_name="ViT-B-32"), WORDS),
        text_cache_key(dataclasses.replace(bundle, device=torch.device("cuda")), WORDS),
    ]
    keys = [o["key"] for o in others]
    assert key not in keys and len(set(keys)) == len(keys)


def test_pretrained_tag_is_the_weights_identity(tiny_name, checkpoints):
    bundle = load_clip(tiny_name, checkpoint=checkpoints / "a.pt")
    openai = dataclasses.replace(bundle, weights="pretrained:openai")
    laion = dataclasses.replace(bundle, weights="pretrained:laion2b_s34b_b79k")
    assert text_cache_key(openai, WORDS)["weights"] == "pretrained:openai"
    assert text_cache_key(openai, WORDS)["key"] != text_cache_key(laion, WORDS)["key"]


def test_hub_and_local_dir_sources_hash_the_loaded_weights(tiny_name, checkpoints):
    a = load_clip(tiny_name, checkpoint=checkpoints / "a.pt")
    b = load_clip(tiny_name, checkpoint=checkpoints / "b.pt")
    hub_a = dataclasses.replace(a, weights="local-dir:/models/x", model_name="local-dir:/models/x")
    hub_b = dataclasses.replace(b, weights="local-dir:/models/x", model_name="local-dir:/models/x")
    ka, kb = text_cache_key(hub_a, WORDS), text_cache_key(hub_b, WORDS)
    assert ka["weights"].startswith("state-sha256:")
    assert ka["key"] != kb["key"]  # same name, different content


def test_random_weights_are_never_cached(tiny_name, tmp_path, calls):
    bundle = load_clip(tiny_name)
    assert bundle.weights == "random" and text_cache_key(bundle, WORDS) is None
    emb = cached_embed_texts(bundle, WORDS, cache_dir=tmp_path / "cache")
    cached_embed_texts(bundle, WORDS, cache_dir=tmp_path / "cache")
    assert len(calls) == 2 and not (tmp_path / "cache").exists()
    np.testing.assert_array_equal(emb, _model.embed_texts(bundle, WORDS))


@pytest.mark.parametrize("damage", ["truncated", "wrong_shape", "not_unit", "nan"])
def test_damaged_entry_is_recomputed_and_replaced(tiny_name, checkpoints, tmp_path, calls, caplog,
                                                  damage):
    bundle = load_clip(tiny_name, checkpoint=checkpoints / "a.pt")
    good = cached_embed_texts(bundle, WORDS, cache_dir=tmp_path)
    path = tmp_path / f"{text_cache_key(bundle, WORDS)['key']}.npy"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "wrong_shape":
        np.save(path, good[:2])
    elif damage == "not_unit":
        np.save(path, good * 2.0)
    else:
        bad = good.copy()
        bad[1, 3] = np.nan
        np.save(path, bad)
    with caplog.at_level(logging.WARNING, logger="neuronscan.clip._text_cache"):
        again = cached_embed_texts(bundle, WORDS, cache_dir=tmp_path)
    assert any("recomputing it" in r.getMessage() for r in caplog.records)
    assert len(calls) == 2
    np.testing.assert_array_equal(again, good)
    np.testing.assert_array_equal(np.load(path), good)  # replaced


def test_unwritable_cache_still_returns_embeddings(tiny_name, checkpoints, tmp_path, caplog):
    bundle = load_clip(tiny_name, checkpoint=checkpoints / "a.pt")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="neuronscan.clip._text_cache"):
        emb = cached_embed_texts(bundle, WORDS, cache_dir=blocker / "cache")
    np.testing.assert_array_equal(emb, _model.embed_texts(bundle, WORDS))
    assert any("could not write" in r.getMessage() for r in caplog.records)


def test_bad_inputs_are_refused_as_embed_texts_refuses_them(tiny_name, checkpoints, tmp_path):
    bundle = load_clip(tiny_name, checkpoint=checkpoints / "a.pt")
    with pytest.raises(TypeError, match="single string"):
        cached_embed_texts(bundle, "red", cache_dir=tmp_path)
    with pytest.raises(TypeError, match=r"concepts\[1\] is int"):
        cached_embed_texts(bundle, ["red", 3], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="has no '\\{\\}' placeholder"):
        cached_embed_texts(bundle, WORDS, ["a photo"], cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_generators_are_read_once(tiny_name, checkpoints, tmp_path):
    bundle = load_clip(tiny_name, checkpoint=checkpoints / "a.pt")
    emb = cached_embed_texts(bundle, (w for w in WORDS), (t for t in ["a {}."]), cache_dir=tmp_path)
    np.testing.assert_array_equal(emb, _model.embed_texts(bundle, WORDS, ["a {}."]))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NEURONSCAN_CACHE_DIR", str(tmp_path / "ns"))
    assert default_cache_dir() == tmp_path / "ns" / "text-embeddings"
    monkeypatch.delenv("NEURONSCAN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "neuronscan" / "text-embeddings"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "neuronscan" / "text-embeddings"


def test_default_dir_is_used_without_cache_dir(tiny_name, checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONSCAN_CACHE_DIR", str(tmp_path))
    bundle = load_clip(tiny_name, checkpoint=checkpoints / "a.pt")
    cached_embed_texts(bundle, WORDS)
    key = text_cache_key(bundle, WORDS)["key"]
    assert (tmp_path / "text-embeddings" / f"{key}.npy").is_file()
