"""The probe actor's per-batch contract, called in-process (no Ray): parts, commit, running top-M."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pipelines.probe as probe_mod
from pipelines.probe import ActivationProbe, _merge_topk


def _batch(ids, rng):
    n = len(ids)
    pixels = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    pixels.flags.writeable = False  # Ray hands batches over read-only
    return {"image_id": np.asarray(ids), "ok": np.ones(n, bool), "error": np.array([""] * n, object),
            "uri": np.array([f"img{i}" for i in ids], object), "pixels": pixels}


@pytest.fixture
def actor(tmp_path):
    return ActivationProbe(model={"name": "tinycnn"}, layers=["conv2"], reduce=["max"], out=str(tmp_path), topk=3)


def test_a_batch_that_failed_to_commit_displaces_nothing(actor, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    first, second = _batch(range(0, 8), rng), _batch(range(8, 16), rng)
    real_write = probe_mod.write_parquet_atomic

    def failing_commit(table, uri, **kw):
        if "/commits/" in uri:
            raise OSError("disk full")
        return real_write(table, uri, **kw)

    monkeypatch.setattr(probe_mod, "write_parquet_atomic", failing_commit)
    with pytest.raises(OSError):
        actor(second)  # its parts are written, its commit is not: a resume deletes those parts
    monkeypatch.setattr(probe_mod, "write_parquet_atomic", real_write)
    for name in ("activations", "topk"):
        for f in Path(tmp_path, name).rglob("part-*.parquet"):
            f.unlink()  # what a resume does with the parts of uncommitted batches
    actor(first)
    actor(second)  # the retry must still write its own top entries
    _merge_topk(str(tmp_path), "conv2:max", 3)
    top = pd.read_parquet(tmp_path / "topk" / "conv2__max.parquet")
    acts = pd.concat(pd.read_parquet(f) for f in (tmp_path / "activations" / "conv2__max").glob("*.parquet"))
    assert sorted(acts["image_id"]) == list(range(16))
    for unit in range(3):
        col = f"u{unit:05d}"
        expected = acts.nlargest(3, col)[col].to_numpy()
        got = top[top["unit"] == unit].sort_values("rank")["value"].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_read_only_batches_are_not_copied_or_written(actor):
    rng = np.random.default_rng(1)
    batch = _batch(range(4), rng)
    before = batch["pixels"].copy()
    out = actor(batch)
    assert out["ok"].all()
    np.testing.assert_array_equal(batch["pixels"], before)


def test_model_mean_and_std_reach_the_actors_normalisation(tmp_path):
    model = {"name": "tinycnn", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    probe = ActivationProbe(model=model, layers=["conv2"], reduce=["max"], out=str(tmp_path), topk=3)
    pixels = np.full((1, 8, 8, 3), 191, dtype=np.uint8)
    x = probe.torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    normalised = (x - probe.mean) / probe.std
    # (191 - 127.5) / 63.75 = 0.996...: the configured mean/std on the 0..255 scale, not ImageNet's
    np.testing.assert_allclose(normalised.numpy(), (191 - 127.5) / 63.75, rtol=1e-6)


def test_model_mean_and_std_change_the_activations_as_the_normalisation_says(tmp_path):
    import torch

    from neuronscan.models import ActivationRecorder, build_model

    batch = _batch(range(6), np.random.default_rng(2))
    mean, std = (0.2, 0.4, 0.6), (0.1, 0.2, 0.3)
    runs = {}
    for label, extra in (("default", {}), ("custom", {"mean": mean, "std": std})):
        out = tmp_path / label
        ActivationProbe(model={"name": "tinycnn", **extra}, layers=["conv2"], reduce=["mean"], out=str(out),
                        topk=3)(batch)
        runs[label] = (pd.concat(pd.read_parquet(f) for f in (out / "activations" / "conv2__mean").glob("*.parquet"))
                       .sort_values("image_id").drop(columns="image_id").to_numpy())
    assert not np.allclose(runs["default"], runs["custom"])
    # the custom run equals the model applied by hand to (pixels / 255 - mean) / std
    spec = build_model("tinycnn")
    x = torch.from_numpy(np.array(batch["pixels"])).permute(0, 3, 1, 2).float() / 255
    for label, (m, s) in (("default", (spec.mean, spec.std)), ("custom", (mean, std))):
        normalised = (x - torch.tensor(m).view(1, 3, 1, 1)) / torch.tensor(s).view(1, 3, 1, 1)
        rec = ActivationRecorder(spec.module, ["conv2"], ["mean"])
        with torch.inference_mode():
            expected = rec(normalised)["conv2:mean"][0].numpy()
        rec.close()
        np.testing.assert_allclose(runs[label], expected, rtol=1e-4, atol=1e-5)
