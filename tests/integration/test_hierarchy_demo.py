"""``neuronscan run configs/demo_hierarchy.yaml``, shrunk (a 120-image shapes world, one layer, the spatial method
on a few concepts with small samples): the run writes the hierarchy stage's and the spatial method's tables,
records both in run.json, and its report shows them; ``neuronscan hierarchy RUN --spatial`` runs both again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from neuronscan.cli import main
from neuronscan.hierarchy import (
    CONCEPT_SPATIAL_SCHEMA,
    CONCEPT_UNITS_SCHEMA,
    HIERARCHY_UNITS_SCHEMA,
    LOCALISATION_SCHEMA,
    MULTIMODAL_UNITS_SCHEMA,
)

# ~40 s on the shared 2-core machine (Ray start, probe, score, hierarchy, spatial, report): marked slow.
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CONCEPTS = ["circle", "round", "shape", "red", "dark"]


def _overrides(tmp_path: Path) -> list[str]:
    sets = {
        "data.shapes_world.root": str(tmp_path / "world"),
        "data.shapes_world.n_images": 120,
        "model.layers": "[conv4]",
        "model.reduce": "[mean]",
        "probe.batch_size": 60,
        "probe.topk": 4,
        "score.n_perm": 0,
        "score.compositional.enabled": "false",
        "score.simulation.enabled": "false",
        "hierarchy.min_positives": 8,
        "hierarchy.n_candidates": 8,
        "hierarchy.max_units": 4,
        "hierarchy.spatial.layers": "[conv4]",
        "hierarchy.spatial.concepts": "[" + ", ".join(CONCEPTS) + "]",
        "hierarchy.spatial.per_leaf": 3,
        "hierarchy.spatial.max_images": 12,
        "hierarchy.spatial.eval_images": 5,
        "hierarchy.spatial.torch_threads": 1,
        "ray.num_cpus": 2,
    }
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("demo-hierarchy")
    code = main(["run", str(ROOT / "configs" / "demo_hierarchy.yaml"), "--out", str(tmp / "runs"), "--quiet",
                 *_overrides(tmp)])
    assert code == 0
    return tmp / "runs" / "shapesnet" / "demo_hierarchy"


def test_the_run_writes_the_hierarchy_and_spatial_tables(demo_run):
    for name, schema in (("concept_units", CONCEPT_UNITS_SCHEMA), ("multimodal_units", MULTIMODAL_UNITS_SCHEMA),
                         ("hierarchy_units", HIERARCHY_UNITS_SCHEMA), ("concept_spatial", CONCEPT_SPATIAL_SCHEMA),
                         ("localisation", LOCALISATION_SCHEMA)):
        assert pq.read_schema(demo_run / f"{name}.parquet").remove_metadata() == schema, name
    cu = pq.read_table(demo_run / "concept_units.parquet").to_pandas()
    assert {"round", "angular"} <= set(cu.concept) and set(cu.layer) == {"conv4:mean"}
    ranks = pq.read_table(demo_run / "concept_spatial.parquet").to_pandas()
    assert sorted(ranks.concept.unique()) == sorted(CONCEPTS) and set(ranks.layer) == {"conv4"}
    assert (ranks.groupby("concept")["rank"].max() == 255).all()  # every conv4 channel ranked
    loc = pq.read_table(demo_run / "localisation.parquet").to_pandas().set_index("concept")
    assert (loc.loc[["circle", "round", "shape", "red"], "n_images"] == 5).all()  # boxes from the shapes world
    assert loc.loc["dark", "n_images"] == 0 and np.isnan(loc.loc["dark", "mean_iou"])  # a background: no box
    assert ((loc.mean_iou.dropna() >= 0) & (loc.mean_iou.dropna() <= 1)).all()
    spatial = json.loads((demo_run / "spatial.json").read_text())
    assert spatial["boxes"].endswith("boxes.parquet") and spatial["n_tasks"] == len(CONCEPTS)


def test_run_json_records_both_stages(demo_run):
    info = json.loads((demo_run / "run.json").read_text())
    assert info["status"] == "complete"
    assert info["hierarchy"]["probes"] > 0 and info["timings"]["hierarchy_s"] > 0
    s = info["spatial"]
    assert s["tasks"] == len(CONCEPTS) and s["tasks_localised"] == 4 and s["tasks_skipped"] == 0
    assert s["eval_images"] == 20 and 0 <= s["mean_iou"] <= 1 and s["layers"] == ["conv4"]
    assert info["timings"]["spatial_s"] > 0 and info["timings"]["spatial_phases"]["tasks_s"] > 0
    recorded = info["config"]["hierarchy"]
    assert recorded["enabled"] is True and recorded["max_units"] == 4  # the hierarchy settings stay beside it
    assert recorded["spatial"]["enabled"] is True and recorded["spatial"]["per_leaf"] == 3


def test_the_report_shows_the_localisation_and_the_ranking(demo_run):
    html = (demo_run / "report" / "index.html").read_text()
    section = html[html.index('id="view-hierarchy"') :]
    section = section[: section.index("</section>")]
    assert "Concept tree" in section and "Localisation by level" in section
    assert "Spatial channel ranking" in section and "#unit/conv4%3Amean/" in section


def test_the_hierarchy_command_runs_the_spatial_method_again(demo_run, capsys):
    before = json.loads((demo_run / "run.json").read_text())["spatial"]["finished"]
    code = main(["hierarchy", str(demo_run), "--spatial", "--no-report", "--quiet",
                 "--set", "hierarchy.spatial.concepts=[circle, dark]", "--set", "hierarchy.spatial.enabled=false"])
    assert code == 0
    out = capsys.readouterr().out
    assert "spatial: 2 (concept, layer) tasks" in out and "localisation.parquet" in out
    loc = pq.read_table(demo_run / "localisation.parquet").to_pandas()
    assert sorted(loc.concept) == ["circle", "dark"]
    info = json.loads((demo_run / "run.json").read_text())
    assert info["spatial"]["tasks"] == 2 and info["spatial"]["finished"] >= before
    assert info["config"]["hierarchy"]["spatial"]["concepts"] == ["circle", "dark"]
