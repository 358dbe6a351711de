"""The hierarchy stage end to end: ``neuronscan hierarchy RUN`` on a scored run of planted activations (Ray
tasks), and ``neuronscan run`` with ``hierarchy.enabled`` on a tiny shapes world. One local Ray per module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from neuronscan.cli import main
from neuronscan.config import config_from_dict
from neuronscan.hierarchy import CONCEPT_UNITS_SCHEMA, HIERARCHY_UNITS_SCHEMA, MULTIMODAL_UNITS_SCHEMA
from neuronscan.io import RunDir
from tests.unit.hierarchy._planted import PARENT_UNIT, planted, write_run

pytestmark = pytest.mark.timeout(300)

LAYERS = ("block:mean", "head")


@pytest.fixture(scope="module")
def scored(tmp_path_factory, ray_local):
    import pipelines

    leaf, x, _ = planted(n_images=600, n_units=12, mixed=True, seed=1)
    root = write_run(tmp_path_factory.mktemp("hier") / "run", layers={LAYERS[0]: x, LAYERS[1]: x[:, ::-1].copy()},
                     leaf=leaf, config={"hierarchy": {"concepts_per_task": 3}})
    run = RunDir(str(root))
    pipelines.score_run(config_from_dict(run.read_info()["config"], "run.json"), run, quiet=True)
    return root


def test_the_command_writes_every_table_with_its_schema(scored, capsys):
    assert main(["hierarchy", str(scored)]) == 0
    out = capsys.readouterr().out
    assert "concept_units.parquet" in out and "mean best depth" in out
    for name, schema in (("concept_units", CONCEPT_UNITS_SCHEMA), ("multimodal_units", MULTIMODAL_UNITS_SCHEMA),
                         ("hierarchy_units", HIERARCHY_UNITS_SCHEMA)):
        assert pq.read_schema(scored / f"{name}.parquet").remove_metadata() == schema
    info = json.loads((scored / "run.json").read_text())
    assert info["hierarchy"]["probes"] == 14 and info["config"]["hierarchy"]["concepts_per_task"] == 3
    assert info["timings"]["hierarchy_s"] > 0


def test_planted_parent_and_child_units_are_found_in_each_layer(scored):
    main(["hierarchy", str(scored), "--quiet"])
    cu = pd.read_parquet(scored / "concept_units.parquet")
    for layer, parent_unit, child_unit in ((LAYERS[0], PARENT_UNIT, 3), (LAYERS[1], 11 - PARENT_UNIT, 11 - 3)):
        rows = cu[cu.layer == layer]
        p2 = rows[rows.concept == "P2"]
        assert p2.unit.tolist() == [parent_unit] and bool(p2.reached.iloc[0]) and p2.depth.iloc[0] == 1
        d = rows[rows.concept == "d"]
        assert d.unit.iloc[0] == child_unit and d.depth.iloc[0] == 2
        assert set(rows.concept) == {"P1", "P2", "a", "b", "c", "d", "e"}  # R has no negatives
        sets = rows.groupby("concept")
        assert np.allclose(sets.shapley.sum(), 1.0)
        assert (sets["rank"].max() + 1 == sets.n_units.first()).all()


def test_multimodal_units_and_best_depths(scored):
    main(["hierarchy", str(scored), "--quiet"])
    mm = pd.read_parquet(scored / "multimodal_units.parquet")
    first = mm[mm.layer == LAYERS[0]]
    assert first.unit.tolist() == [6]  # wired to a and d, which meet at the root only
    row = first.iloc[0]
    assert {row.concept_a, row.concept_b} == {"a", "d"} and list(row.lca) == ["R"] and row.lca_depth == 0
    hu = pd.read_parquet(scored / "hierarchy_units.parquet")
    layer = hu[hu.layer == LAYERS[0]].set_index("unit")
    assert layer.loc[PARENT_UNIT, "best_concept"] == "P2" and layer.loc[PARENT_UNIT, "best_depth"] == 1
    assert layer.loc[0, "best_depth"] == 2 and layer.loc[7, "min_lca_depth"] == 1
    assert not layer.loc[7, "multimodal"] and layer.loc[6, "multimodal"]
    # best_concept is the score stage's (neurons.parquet); its depth is the hierarchy's.
    neurons = pd.read_parquet(scored / "neurons.parquet")
    neurons = neurons[neurons.layer == LAYERS[0]].set_index("unit")
    assert (layer.best_concept == neurons.best_concept.reindex(layer.index)).all()
    depth = {"R": 0, "P1": 1, "P2": 1}
    assert (layer.best_depth == layer.best_concept.map(lambda c: depth.get(c, 2))).all()
    summary = json.loads((scored / "hierarchy_summary.json").read_text())
    s = summary["layers"][LAYERS[0]]
    counted = layer[layer.best_aligned].best_depth.value_counts()
    assert s["best_depth_counts"] == {str(d): int(n) for d, n in sorted(counted.items())}
    assert s["mean_best_depth"] == pytest.approx(layer[layer.best_aligned].best_depth.mean(), abs=1e-4)
    assert s["multimodal_units_by_depth"]["-1"] == 0 and s["multimodal_units_by_depth"]["0"] == 1
    assert s["multimodal_units_by_depth"]["1"] == 3  # units 5 (d, e), 6 and 7 (a, b)


def test_a_deeper_lca_setting_flags_siblings_too(scored):
    assert main(["hierarchy", str(scored), "--quiet", "--set", "hierarchy.multimodal_lca_depth=1"]) == 0
    mm = pd.read_parquet(scored / "multimodal_units.parquet")
    assert sorted(mm[mm.layer == LAYERS[0]].unit.unique().tolist()) == [5, 6, 7]
    info = json.loads((scored / "run.json").read_text())
    assert info["config"]["hierarchy"]["multimodal_lca_depth"] == 1


def test_an_unscored_run_is_one_line(tmp_path, capsys):
    leaf, x, _ = planted(n_images=100, n_units=6)
    root = write_run(tmp_path / "raw", layers={"l": x}, leaf=leaf)
    assert main(["hierarchy", str(root), "--quiet"]) == 2
    assert "neuron_concepts.parquet is missing" in capsys.readouterr().err


def test_the_audit_runs_the_stage_when_enabled(tmp_path, ray_local):
    from pipelines import run_audit

    cfg = config_from_dict({
        "run": {"out": str(tmp_path / "runs"), "run_id": "h"},
        "data": {"shapes_world": {"root": str(tmp_path / "world"), "n_images": 96, "seed": 2, "size": 32}},
        "model": {"name": "tinycnn", "layers": ["conv2"], "reduce": ["mean"]},
        "probe": {"batch_size": 32, "topk": 4},
        "score": {"n_perm": 0, "compositional": {"enabled": False}},
        "hierarchy": {"enabled": True, "min_positives": 10, "n_candidates": 8, "max_units": 4},
        "ray": {"num_cpus": 2},
    })
    info = run_audit(cfg, quiet=True, report=False)
    run = Path(info["run_dir"])
    cu = pd.read_parquet(run / "concept_units.parquet")
    assert {"round", "angular"} <= set(cu.concept)  # parents of the shapes world get sets too
    assert info["hierarchy"]["probes"] == cu.groupby(["layer", "concept"]).ngroups + info["hierarchy"][
        "probes_without_candidates"]
    assert (run / "hierarchy_summary.json").exists()
