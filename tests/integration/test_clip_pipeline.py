"""CLIP image embeddings in the probe pass, and label-free soft-WPMI labels in the score stage (random weights)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from neuronscan.config import config_from_dict


def test_clip_embeddings_and_labels(ray_local, tmp_path):
    from pipelines.audit import run_audit

    raw = {
        "run": {"out": str(tmp_path / "runs"), "run_id": "clip"},
        "data": {"shapes_world": {"root": str(tmp_path / "world"), "n_images": 48, "seed": 2}},
        "model": {"name": "tinycnn", "layers": ["conv2"], "reduce": ["mean"]},
        "probe": {"batch_size": 16, "topk": 4, "clip": {"model": "ViT-S-32", "top_k": 10}},
        "score": {"n_perm": 0, "compositional": {"enabled": False}},
    }
    cfg = config_from_dict(raw)
    result = run_audit(cfg, quiet=True, report=False)
    run_dir = tmp_path / "runs" / "tinycnn" / "clip"
    assert result["counts"]["ok"] == 48
    emb = pq.read_table(run_dir / "clip").to_pandas()
    assert len(emb) == 48 and emb["image_id"].is_unique
    vectors = np.stack(emb["embedding"].to_numpy())
    assert vectors.dtype == np.float32 and vectors.shape[1] > 0
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    table = pd.read_parquet(run_dir / "neuron_concepts.parquet")
    assert table["clip_score"].notna().all()
    neurons = pd.read_parquet(run_dir / "neurons.parquet")
    assert neurons["clip_label"].notna().all() and set(neurons["clip_label"]) <= set(table["concept"])
    # the label is the argmax of the unit's clip_score row
    for row in neurons.itertuples():
        scores = table[(table["unit"] == row.unit)].set_index("concept")["clip_score"]
        assert scores.idxmax() == row.clip_label

    # Rescored with an LLM vocabulary whose endpoint cannot be reached: the built-in fallback, with a warning.
    from neuronscan.clip import load_vocabulary
    from neuronscan.io import RunDir
    from pipelines import score_run

    llm = {"url": "http://127.0.0.1:9/v1", "model": "m", "timeout_s": 2, "retries": 0,
           "cache_dir": str(tmp_path / "cache"), "fallback": "builtin:colours"}
    cfg2 = config_from_dict({**raw, "probe": {**raw["probe"], "clip": {"model": "ViT-S-32", "top_k": 10,
                                                                      "vocabulary": "llm", "vocabulary_llm": llm}}})
    score_run(cfg2, RunDir(str(run_dir)), quiet=True)
    colours = set(load_vocabulary("builtin:colours"))
    neurons = pd.read_parquet(run_dir / "neurons.parquet")
    assert neurons["clip_label"].notna().all() and set(neurons["clip_label"]) <= colours


def test_soft_wpmi_labels_equal_the_kernel_on_the_runs_own_files(ray_local, tmp_path):
    """The score stage's clip_score is soft_wpmi on what the run stored (activations, image embeddings) and the
    vocabulary's text embeddings, in both precisions; every shard's top images are scored in one call."""
    from neuronscan.clip import embed_texts, load_clip
    from neuronscan.io import RunDir
    from neuronscan.stats import soft_wpmi
    from pipelines import score_run
    from pipelines.audit import run_audit

    vocab = ["circle", "square", "star", "red", "blue", "striped", "dotted", "dark"]
    raw = {
        "run": {"out": str(tmp_path / "runs"), "run_id": "tiny"},
        "data": {"shapes_world": {"root": str(tmp_path / "world"), "n_images": 60, "seed": 3}},
        "model": {"name": "tinycnn", "layers": ["conv1", "conv2"], "reduce": ["mean"]},
        "probe": {"batch_size": 20, "topk": 4,
                  "clip": {"model": "neuronscan-tinyclip", "top_k": 12, "vocabulary": vocab}},
        "score": {"n_perm": 0, "compositional": {"enabled": False}, "units_per_shard": 5},
    }
    run_audit(config_from_dict(raw), quiet=True, report=False)
    run_dir = tmp_path / "runs" / "tinycnn" / "tiny"
    emb = pq.read_table(run_dir / "clip").to_pandas().sort_values("image_id")
    text = embed_texts(load_clip("neuronscan-tinyclip"), vocab)
    for precision, atol in (("float32", 1e-4), ("float64", 1e-10)):
        clip = {**raw["probe"]["clip"], "precision": precision}
        cfg = config_from_dict({**raw, "probe": {**raw["probe"], "clip": clip}})
        summary = score_run(cfg, RunDir(str(run_dir)), quiet=True)
        assert summary.timings["wpmi_s"] >= 0
        clip_labels = pd.read_parquet(run_dir / "clip_labels")
        assert set(clip_labels["layer"]) == {"conv1:mean", "conv2:mean"}
        for layer, got in clip_labels.groupby("layer"):
            acts = pq.read_table(RunDir(str(run_dir)).activations(layer)).to_pandas().set_index("image_id")
            acts = acts.loc[emb["image_id"]].sort_index(axis=1)
            want = soft_wpmi(acts.to_numpy(), np.stack(emb["embedding"].to_numpy()), text, top_k=12,
                             precision="float64")
            units = [int(c[1:]) for c in acts.columns]
            got = got.pivot(index="unit", columns="concept", values="clip_score").loc[units, vocab].to_numpy()
            np.testing.assert_allclose(got, want, atol=atol, rtol=0)
            assert len(units) > 5  # a layer in more than one shard
