"""The discover stage end to end on a tiny shapes world probed with the packaged ShapesNet: `discover_run` as Ray
tasks (every table with its schema, the naming layers scored like units), ``neuronscan discover CONFIG`` on a run
that is not probed yet, and ``neuronscan run`` with ``discover.enabled`` (score → discover → report). One local
Ray per module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from neuronscan.cli import main
from neuronscan.config import config_from_dict
from neuronscan.discover._schemas import SCHEMAS, discover_paths
from neuronscan.io import NEURONS_SCHEMA, RunDir, activation_schema
from pipelines.discover import discover_run, plan_discover
from pipelines.probe import run_probe

pytestmark = pytest.mark.timeout(300)

CLASSES = ["red", "circle"]
K = 3
DISCOVER = {"classes": CLASSES, "patch_size": 32, "n_concepts": K, "max_images_per_class": 12, "min_images": 4,
            "importance_images": 6, "sobol_designs": 8, "mufidelity_subsets": 16, "naming_images": 60,
            "cpus_per_task": 1.0, "torch_threads": 1}


def _config(root: Path, run_id: str, **discover) -> dict:
    return {
        "run": {"out": str(root / "runs"), "run_id": run_id},
        "data": {"shapes_world": {"root": str(root / "world"), "n_images": 80, "seed": 1, "size": 64}},
        "model": {"name": "shapesnet", "layers": ["conv4"], "reduce": ["mean"]},
        "probe": {"batch_size": 40, "topk": 4, "num_gpus": 0},
        "score": {"n_perm": 0, "compositional": {"enabled": False}},
        "discover": {**DISCOVER, **discover},
        "ray": {"num_cpus": 2},
    }


@pytest.fixture(scope="module")
def probed(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("discover")
    cfg = config_from_dict(_config(root, "t"))
    run_dir = str(root / "runs" / "shapesnet" / "t")
    run_probe(cfg, run_dir, quiet=True)
    return root, cfg, run_dir


def test_the_stage_writes_every_table_with_its_schema(probed):
    _root, cfg, run_dir = probed
    summary = discover_run(cfg, run_dir, quiet=True)
    paths = discover_paths(RunDir(run_dir))
    tables = {}
    for name, schema in SCHEMAS.items():
        table = pq.read_table(paths[name.removesuffix(".parquet")])
        assert table.schema.remove_metadata().equals(schema), name
        tables[name.removesuffix(".parquet")] = table.to_pandas()
    assert summary.classes == CLASSES and summary.timings["in_driver"] is False  # Ray is running: tasks

    w = tables["dictionary"]
    assert len(w) == len(CLASSES) * K and set(w["layer"]) == {"conv4@craft:red", "conv4@craft:circle"}
    assert all(len(v) == 256 for v in w["weights"]) and (np.stack(w["weights"]) >= 0).all()  # NMF of post-ReLU
    crops = tables["crop_coefficients"]
    assert len(crops) == len(CLASSES) * 12 * 4  # 12 images x 4 crops of 32 px (stride 25)
    assert sorted(crops["row"].unique()) == [0, 1, 2, 3] and set(crops["x0"]) == {0, 25}
    labels = pd.read_parquet(Path(run_dir) / "labels.parquet")
    for c in CLASSES:  # every image of a class carries the class label
        ids = set(crops.loc[crops["class"] == c, "image_id"])
        assert len(ids) == 12 and ids <= set(labels.loc[labels["concept"] == c, "image_id"])
    imp = tables["importance"]
    assert len(imp) == len(CLASSES) * K and (imp["sobol"] >= 0).all()
    for _c, g in imp.groupby("class"):
        for m in ("sobol", "gradient_input", "occlusion"):
            assert sorted(g[f"rank_{m}"]) == list(range(K))
            assert g.sort_values(f"rank_{m}")[m].is_monotonic_decreasing
        assert g["prevalence"].sum() == pytest.approx(1.0)
    assert imp["best_concept"].notna().all() and imp["name_q"].between(0, 1).all()
    assert len(tables["image_importance"]) == len(CLASSES) * 6 * K
    metrics = tables["metrics"]
    assert len(metrics) == len(CLASSES) * 3 and np.isfinite(metrics[["c_deletion", "c_insertion"]]).all().all()
    assert (metrics.loc[metrics.importance == "gradient_input", "c_mufidelity"] > 0.99).all()  # linear head
    q = tables["quality"]
    assert q["reconstruction_error"].between(0, 1).all() and q["stability"].between(-1, 1).all()
    assert (q["n_images"] == 12).all() and (q["rows_per_image"] == 4).all()
    assert len(tables["curves"]) == len(CLASSES) * 3 * 2 * (K + 1)
    assert tables["strategies"].groupby("class")["n_images"].sum().tolist() == [6, 6]
    ex = tables["concept_crops"]
    assert (ex.groupby(["class", "concept"]).size() <= 8).all()
    assert ex.groupby(["class", "concept"])["image_id"].nunique().equals(ex.groupby(["class", "concept"]).size())

    # Naming: the concepts' per-image coefficients are activation parts, scored like units.
    acts = Path(paths["activations"])
    assert sorted(p.name for p in acts.iterdir()) == ["conv4@craft__circle", "conv4@craft__red"]
    part = pq.read_table(acts / "conv4@craft__red" / "part-0.parquet")
    assert part.schema.remove_metadata().equals(activation_schema(K)) and part.num_rows == 60
    neurons = pq.read_table(Path(paths["scored"]) / "neurons.parquet")
    assert neurons.schema.remove_metadata().equals(NEURONS_SCHEMA)
    assert sorted(set(neurons.column("layer").to_pylist())) == ["conv4@craft:circle", "conv4@craft:red"]
    n = neurons.to_pandas().set_index(["layer", "unit"])
    for row in imp.itertuples(index=False):
        assert n.loc[(row.layer, row.concept), "best_concept"] == row.best_concept
    assert (Path(paths["scored"]) / "neuron_concepts.parquet").exists()

    info = json.loads(Path(paths["summary"]).read_text())
    assert info["counts"]["classes"] == 2 and info["counts"]["concepts"] == 2 * K
    assert info["sobol_evaluations_per_image"] == 8 * (K + 2) and info["image_statistic"] == "max"
    assert info["timings"]["tasks_s"] > 0 and info["timings"]["task_phases_s_sum"]["factorise"] > 0
    assert [c["class"] for c in info["classes"]] == CLASSES and len(info["classes"][0]["concepts"]) == K


def test_plan_refuses_what_it_cannot_do(probed):
    from neuronscan.errors import InputError, ModelError

    _root, cfg, run_dir = probed
    with pytest.raises(InputError, match="not outputs"):
        plan_discover(run_dir, cfg, cfg.discover.model_copy(update={"classes": ["warm"]}))  # a parent: no logit
    with pytest.raises(ModelError, match="not a module"):
        plan_discover(run_dir, cfg, cfg.discover.model_copy(update={"layer": "conv9"}))
    plan = plan_discover(run_dir, cfg, cfg.discover.model_copy(update={"classes": "all", "min_images": 8}))
    assert {c["class"] for c in plan.classes} | set(plan.skipped) == set(
        __import__("neuronscan.demo.model", fromlist=["HEAD_CONCEPTS"]).HEAD_CONCEPTS)
    assert all("min_images" in reason for reason in plan.skipped.values())
    assert plan.layer == "conv4"  # discover.layer unset: the last of model.layers, globs resolved
    globbed = cfg.model_copy(update={"model": cfg.model.model_copy(update={"layers": ["conv[23]"]})})
    assert plan_discover(run_dir, globbed).layer == "conv3"


def test_the_command_probes_a_new_run_then_discovers(probed, capsys):
    root, _cfg, _run_dir = probed
    config = root / "discover.yaml"
    config.write_text(yaml.safe_dump(_config(root, "cli", source="positions", method="pca", classes=["red"],
                                             naming_images=40)))
    assert main(["discover", str(config), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "discover: 1 class(es) at conv4 (positions, pca, 3 concepts)" in out and "concept" in out
    run = RunDir(str(root / "runs" / "shapesnet" / "cli"))
    assert run.exists(run.images)  # probed first
    q = pd.read_parquet(run.path("discover", "quality.parquet"))
    assert q["rows_per_image"].tolist() == [64] and q["source"].tolist() == ["positions"]  # conv4: 8 x 8
    info = run.read_info()
    assert info["status"] == "complete" and info["discover"]["classes"] == 1
    assert info["config"]["discover"]["method"] == "pca" and info["timings"]["discover_s"] > 0


def test_the_audit_runs_the_stage_after_score_and_reports_it(probed):
    from pipelines import run_audit

    root, _cfg, run_dir = probed
    cfg = config_from_dict(_config(root, "t", enabled=True, classes=["circle"]))
    info = run_audit(cfg, quiet=True, stages=("score",))
    assert info["discover"]["classes"] == 1 and info["status"] == "complete"
    assert pd.read_parquet(Path(run_dir) / "discover" / "quality.parquet")["class"].tolist() == ["circle"]
    html = (Path(run_dir) / "report" / "index.html").read_text()
    assert '<h2 id="discover">Concept discovery</h2>' in html and "<h3>class circle</h3>" in html


def test_the_command_has_help_with_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["discover", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "neuronscan discover configs/demo_discover.yaml" in out
