"""CLIP image embeddings in the probe pass, and label-free labels (CLIP correlation, soft-WPMI) in the score stage."""

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
    neurons = pd.read_parquet(run_dir / "neurons.parquet")
    # CLIP correlation (the default): a dead (constant) unit correlates with nothing and has no label
    dead = set(neurons.loc[neurons["dead"], "unit"])
    assert table["clip_score"].isna().eq(table["unit"].isin(dead)).all()
    alive = neurons[~neurons["dead"]]
    assert len(alive) > 0 and alive["clip_label"].notna().all()
    assert neurons.loc[neurons["dead"], "clip_label"].isna().all()
    assert set(alive["clip_label"]) <= set(table["concept"])
    # the label is the argmax of the unit's clip_score row
    for row in alive.itertuples():
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
    labels = neurons.loc[~neurons["dead"], "clip_label"]
    assert labels.notna().all() and set(labels) <= colours


def test_soft_wpmi_labels_equal_the_kernel_on_the_runs_own_files(ray_local, tmp_path):
    """The score stage's clip_score is soft_wpmi (both precisions) or the naive CLIP correlation on what the run
    stored (activations, image embeddings) and the vocabulary's text embeddings, across shards and layers."""
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
    for method, precision, atol in (("soft_wpmi", "float32", 1e-4), ("soft_wpmi", "float64", 1e-10),
                                    ("correlation", "float32", 1e-6)):
        clip = {**raw["probe"]["clip"], "precision": precision, "method": method}
        cfg = config_from_dict({**raw, "probe": {**raw["probe"], "clip": clip}})
        summary = score_run(cfg, RunDir(str(run_dir)), quiet=True)
        assert summary.timings["wpmi_s" if method == "soft_wpmi" else "clip_corr_s"] >= 0
        clip_labels = pd.read_parquet(run_dir / "clip_labels")
        assert set(clip_labels["layer"]) == {"conv1:mean", "conv2:mean"}
        for layer, got in clip_labels.groupby("layer"):
            acts = pq.read_table(RunDir(str(run_dir)).activations(layer)).to_pandas().set_index("image_id")
            acts = acts.loc[emb["image_id"]].sort_index(axis=1)
            image_emb = np.stack(emb["embedding"].to_numpy())
            if method == "soft_wpmi":
                want = soft_wpmi(acts.to_numpy(), image_emb, text, top_k=12, precision="float64")
            else:  # Pearson r of each unit with each word's similarity, the naive way
                sims = image_emb.astype(np.float64) @ text.astype(np.float64).T
                both = np.corrcoef(acts.to_numpy().astype(np.float64).T, sims.T)
                want = both[: acts.shape[1], acts.shape[1] :]
            units = [int(c[1:]) for c in acts.columns]
            got = got.pivot(index="unit", columns="concept", values="clip_score").loc[units, vocab].to_numpy()
            np.testing.assert_allclose(got, want, atol=atol, rtol=0)
            assert len(units) > 5  # a layer in more than one shard
