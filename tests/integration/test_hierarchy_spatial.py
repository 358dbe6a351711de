"""The spatial (HINT) stage end to end: a tiny shapes-world run probed with the packaged ShapesNet, then
`run_spatial` on one conv layer, on a local Ray."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from neuronscan.config import config_from_dict
from neuronscan.hierarchy._spatial import CONCEPT_SPATIAL_SCHEMA, LOCALISATION_SCHEMA
from pipelines.hierarchy_spatial import SpatialSection, plan_spatial, run_spatial
from pipelines.probe import run_probe

CONCEPTS = ["circle", "round", "shape", "red", "dark"]


@pytest.fixture(scope="module")
def probed(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("spatial")
    cfg = config_from_dict({
        "run": {"out": str(root / "runs"), "run_id": "t"},
        "data": {"shapes_world": {"root": str(root / "world"), "n_images": 120, "seed": 1, "size": 64}},
        "model": {"name": "shapesnet", "layers": ["conv4"], "reduce": ["mean"]},
        "probe": {"batch_size": 60, "topk": 4, "num_gpus": 0},
    })
    run_dir = str(root / "runs" / "shapesnet" / "t")
    run_probe(cfg, run_dir, quiet=True)
    return cfg, run_dir


def _settings(**kw) -> SpatialSection:
    return SpatialSection(**{"layers": ["conv4"], "concepts": CONCEPTS, "per_leaf": 4, "max_images": 12,
                             "eval_images": 6, "cpus_per_actor": 0.5, "torch_threads": 1, **kw})


def test_spatial_stage_writes_its_tables(probed):
    cfg, run_dir = probed
    summary = run_spatial(run_dir, cfg, _settings(), quiet=True)
    ranks = pq.read_table(summary.files["concept_spatial"])
    loc = pq.read_table(summary.files["localisation"])
    assert ranks.schema.equals(CONCEPT_SPATIAL_SCHEMA) and loc.schema.equals(LOCALISATION_SCHEMA)
    ranks, loc = ranks.to_pandas(), loc.to_pandas()

    assert sorted(ranks["concept"].unique()) == sorted(CONCEPTS)
    for _concept, g in ranks.groupby("concept"):
        assert (g["layer"] == "conv4").all()
        assert g["rank"].tolist() == list(range(256))  # every conv4 channel, rank 0 first
        assert sorted(g["unit"]) == list(range(256))
        assert (np.diff(g["shapley"].to_numpy()) <= 0).all() and np.isfinite(g["weight"]).all()
    depth = dict(zip(loc["concept"], loc["depth"]))
    assert depth == {"circle": 2, "round": 1, "shape": 0, "red": 2, "dark": 1}

    loc = loc.set_index("concept")
    for concept in ("circle", "round", "shape", "red"):  # the object's concepts have boxes
        row = loc.loc[concept]
        assert row["n_images"] == 6
        assert 0.0 <= row["mean_iou"] <= 1.0 and 0.0 <= row["frac_iou_50"] <= 1.0
    assert loc.loc["dark", "n_images"] == 0 and np.isnan(loc.loc["dark", "mean_iou"])  # backgrounds have none
    assert loc.loc[["circle", "round", "shape", "red"], "mean_iou"].mean() > 0.2

    info = json.loads(open(summary.files["summary"]).read())
    assert info["n_tasks"] == len(CONCEPTS) and info["settings"]["saliency"] == "guided_backprop"
    assert {t["target"] for t in info["tasks"]} == {"logit"}  # shapesnet's heads name every leaf
    assert all(t["seconds"] > 0 and t["n_failed"] == 0 and t["skipped"] is None for t in info["tasks"])
    shape = next(t for t in info["tasks"] if t["concept"] == "shape")
    assert shape["n_images"] == 12  # 6 leaf classes x at most 4, at most 12 in all
    assert len(summary.task_seconds) == len(CONCEPTS) and summary.seconds_per_concept > 0


def test_a_concept_the_model_does_not_output_uses_its_direction(probed):
    cfg, run_dir = probed
    settings = _settings(concepts=["round"], output_concepts="none", saliency="vanilla")
    summary = run_spatial(run_dir, cfg, settings, quiet=True)
    info = json.loads(open(summary.files["summary"]).read())
    (task,) = info["tasks"]
    assert task["target"] == "direction" and task["n_direction_images"] == task["n_images"] > 0
    loc = pq.read_table(summary.files["localisation"]).to_pandas()
    assert loc["concept"].tolist() == ["round"] and loc["n_images"].tolist() == [6]


def test_the_plan_is_seeded(probed):
    cfg, run_dir = probed
    a = plan_spatial(run_dir, cfg, _settings())
    b = plan_spatial(run_dir, cfg, _settings())
    assert a.tasks == b.tasks
    c = plan_spatial(run_dir, cfg, _settings(seed=1))
    assert [t["train_ids"] for t in a.tasks] != [t["train_ids"] for t in c.tasks]
    for t in a.tasks:
        assert not set(t["train_ids"]) & set(t["eval_ids"])  # localisation is measured on held-out images
