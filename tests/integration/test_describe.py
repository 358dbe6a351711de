"""The describe stage end to end on a tiny shapes-world run, with a tiny CLIP of random weights (seconds)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from neuronscan.config import config_from_dict

WORDS = ["red", "blue", "green", "circle", "square", "star", "striped", "dotted", "dark", "light", "pattern"]


@pytest.fixture(scope="module")
def random_tinyclip(tmp_path_factory):
    """A state dict of neuronscan-tinyclip with random weights (the packaged checkpoint is not needed)."""
    import open_clip
    import torch

    from neuronscan.clip._tinyclip import TINYCLIP_MODEL, register

    register()
    torch.manual_seed(0)
    model = open_clip.create_model(TINYCLIP_MODEL)
    path = tmp_path_factory.mktemp("clip") / "tinyclip-random.pt"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def probed(ray_local, tmp_path_factory, random_tinyclip):
    """A probed and scored tinycnn run on 40 shapes-world images (conv2 mean/max and the fc vector layer)."""
    from pipelines.audit import run_audit

    root = tmp_path_factory.mktemp("describe")
    cfg = config_from_dict({
        "run": {"out": str(root / "runs"), "run_id": "describe"},
        "data": {"shapes_world": {"root": str(root / "world"), "n_images": 40, "seed": 3}},
        "model": {"name": "tinycnn", "layers": ["conv2", "fc"], "reduce": ["mean", "max"]},
        "probe": {"batch_size": 20, "topk": 4},
        "score": {"n_perm": 0, "compositional": {"enabled": False}},
        "describe": {"model": "neuronscan-tinyclip", "checkpoint": random_tinyclip, "top_m": 3, "min_crop": 0.25,
                     "vocabulary": WORDS, "batch_size": 7, "num_actors": 2, "cpus_per_actor": 0.5,
                     "torch_threads": 1},
    })
    run_audit(cfg, quiet=True, report=False)
    return cfg, root / "runs" / "tinycnn" / "describe"


@pytest.fixture(scope="module")
def described(probed):
    from pipelines.describe import describe_run

    cfg, run_dir = probed
    return cfg, run_dir, describe_run(str(run_dir), cfg, quiet=True)


def test_every_unit_and_rank_gets_its_crop_from_one_read_of_each_image(described):
    cfg, run_dir, summary = described
    crops = pq.read_table(run_dir / "describe" / "crops.parquet").to_pandas()
    expected = []
    for layer in ("conv2:mean", "conv2:max", "fc"):
        top = pd.read_parquet(run_dir / "topk" / f"{layer.replace(':', '__')}.parquet")
        expected.append(top[top["rank"] < 3].assign(layer=layer))
    expected = pd.concat(expected, ignore_index=True)
    key = ["layer", "unit", "rank"]
    merged = expected.merge(crops, on=key, suffixes=("", "_crop"), validate="one_to_one")
    assert len(crops) == len(expected) == len(merged)
    assert (merged["image_id"] == merged["image_id_crop"]).all()
    # one pass over the union: every distinct image decoded exactly once, however many units share it
    c = summary.counts
    assert c["images"] == crops["image_id"].nunique() < len(crops)
    assert c["images_decoded"] == c["images"] and c["max_decodes_per_image"] == 1
    assert c["chunks"] == -(-c["images"] // 7) and c["crops_embedded"] == len(crops)
    emb = np.stack(crops["embedding"].to_numpy())
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert crops["error"].isna().all()


def test_boxes_are_the_receptive_fields_clipped_and_widened(described):
    from neuronscan.describe import ReceptiveField, crop_boxes

    _, run_dir, _ = described
    crops = pq.read_table(run_dir / "describe" / "crops.parquet").to_pandas()
    assert (crops[["x0", "y0"]] >= 0).all().all() and (crops[["x1", "y1"]] <= 32).all().all()
    assert ((crops["x1"] - crops["x0"]) >= 8).all() and ((crops["y1"] - crops["y0"]) >= 8).all()
    # tinycnn's conv2 (3×3 after 3×3 stride 2): a 5-pixel field every 2 pixels from -2, on a 16×16 grid
    conv = crops[crops["layer"] == "conv2:max"]
    top = pd.read_parquet(run_dir / "topk" / "conv2__max.parquet").merge(conv[["unit", "rank"]], on=["unit", "rank"])
    rf = ReceptiveField("conv", (16, 16), (5, 5), (2, 2), (-2, -2), 32)
    want = crop_boxes(top["loc_y"].to_numpy(), top["loc_x"].to_numpy(), rf, min_crop=0.25)
    got = conv.sort_values(["unit", "rank"])[["x0", "y0", "x1", "y1"]].to_numpy()
    np.testing.assert_array_equal(got, want)
    assert (crops.loc[crops["layer"] == "fc", ["x0", "y0", "x1", "y1"]] == [0, 0, 32, 32]).all().all()
    info = pd.read_json(run_dir / "describe" / "describe.json", typ="series")
    assert info["receptive_fields"]["conv2:max"]["size"] == [5, 5]


def test_a_crop_embedding_is_clip_on_that_crop(described, random_tinyclip):
    from neuronscan.clip import embed_images, load_clip
    from neuronscan.data import decode_image, read_blob
    from neuronscan.describe import cut_crops

    _, run_dir, _ = described
    crops = pq.read_table(run_dir / "describe" / "crops.parquet").to_pandas()
    images = pd.read_parquet(run_dir / "images.parquet").set_index("image_id")
    info = pd.read_json(run_dir / "describe" / "describe.json", typ="series")
    bundle = load_clip("neuronscan-tinyclip", checkpoint=random_tinyclip)
    rows = crops[crops["layer"] == "conv2:mean"].head(4)
    for row in rows.itertuples():
        pixels = decode_image(read_blob(images.loc[row.image_id, "uri"]), size=int(info["decode_size"]))
        crop = cut_crops(pixels, np.array([[row.x0, row.y0, row.x1, row.y1]]), input_size=32,
                         out_size=bundle.image_size)
        np.testing.assert_allclose(embed_images(bundle, crop)[0], row.embedding, atol=1e-5)


def test_descriptions_hold_the_top_words_by_standardised_cosine(described, random_tinyclip):
    from neuronscan.clip import embed_texts, load_clip

    _, run_dir, summary = described
    desc = pd.read_parquet(run_dir / "descriptions.parquet")
    crops = pd.read_parquet(run_dir / "describe" / "crops.parquet")
    assert len(desc) == 16 + 16 + 10 and (desc["n_crops"] == 3).all()
    assert desc["patch_label"].isin(WORDS).all()
    assert (desc["concepts"].map(len) == 5).all() and (desc["concepts"].str[0] == desc["patch_label"]).all()
    text = embed_texts(load_clip("neuronscan-tinyclip", checkpoint=random_tinyclip), WORDS)
    for layer in ("conv2:mean", "fc"):  # describe.method zscore: each word's cosines standardised over the layer
        rows = crops[crops["layer"] == layer]
        sims = np.stack(rows["embedding"].to_numpy()).astype(np.float64) @ text.T.astype(np.float64)
        z = (sims - sims.mean(0)) / sims.std(0)
        for row in desc[desc["layer"] == layer].head(4).itertuples():
            scores = z[(rows["unit"] == row.unit).to_numpy()].mean(0)
            assert row.patch_label == WORDS[int(np.argmax(scores))]
            np.testing.assert_allclose(row.patch_score, scores.max(), atol=1e-4)
    info = pd.read_json(run_dir / "run.json", typ="series")
    assert info["describe"]["units_described"] == 42 and info["config"]["describe"]["top_m"] == 3
    assert summary.timings["seconds"] < 120


def test_the_command_prints_both_labels(described, capsys):
    from neuronscan.cli import describe as command

    cfg, run_dir, _ = described
    parser = argparse.ArgumentParser()
    handlers = command.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["describe", str(run_dir), "--no-report", "--quiet", "--set", "describe.method=soft_wpmi",
                              "--units", "2"])
    assert handlers["describe"](args) == 0
    out = capsys.readouterr().out
    assert "CLIP (whole image)" in out and "patch (crops)" in out and "conv2:mean" in out and "fc" in out
    assert "descriptions.parquet" in out
    info = pd.read_json(run_dir / "run.json", typ="series")
    assert info["config"]["describe"]["method"] == "soft_wpmi"


def test_an_image_that_cannot_be_read_again_loses_its_crops_not_the_stage(described):
    """Last in the module: it deletes an image file of the shared run."""
    from pipelines.describe import describe_run

    cfg, run_dir, _ = described
    crops = pd.read_parquet(run_dir / "describe" / "crops.parquet")
    images = pd.read_parquet(run_dir / "images.parquet").set_index("image_id")
    gone = int(crops["image_id"].value_counts().index[0])  # the image most units share
    (Path(images.loc[gone, "uri"])).unlink()
    summary = describe_run(str(run_dir), cfg, quiet=True)
    crops = pd.read_parquet(run_dir / "describe" / "crops.parquet")
    lost = crops["image_id"] == gone
    assert lost.any() and crops.loc[lost, "embedding"].isna().all()
    assert crops.loc[lost, "error"].str.startswith("missing").all() and crops.loc[~lost, "error"].isna().all()
    assert summary.counts["images_failed"] == 1 and summary.counts["crops_embedded"] == int((~lost).sum())
    desc = pd.read_parquet(run_dir / "descriptions.parquet")
    n_lost = crops[lost].groupby(["layer", "unit"]).size().rename("lost").reset_index()
    merged = desc.merge(n_lost, on=["layer", "unit"], how="left").fillna({"lost": 0})
    assert (merged["n_crops"] == 3 - merged["lost"]).all()
