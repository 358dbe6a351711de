"""The hierarchy stage on a tiny run without Ray (small inputs are done in the driver), its config and help."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from neuronscan.config import config_from_dict
from neuronscan.errors import ConfigError
from neuronscan.io import RunDir
from tests.unit.hierarchy._planted import PARENT_UNIT, planted, write_run


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    from pipelines import init_ray, score_run
    from pipelines._ray import release_ray

    leaf, x, _ = planted(n_images=400, n_units=10, seed=4)
    x[:7, 9] = np.nan  # non-finite activations rank lowest, as in the score stage
    x[7, 8] = np.inf
    root = write_run(tmp_path_factory.mktemp("stage") / "run", layers={"only": x}, leaf=leaf)
    run = RunDir(str(root))
    cfg = config_from_dict(run.read_info()["config"], "run.json")
    init_ray(background=True)  # requested, never begun: inputs this small are scored in the driver
    score_run(cfg, run, quiet=True)
    release_ray()
    return run, cfg


def test_small_runs_need_no_ray(scored, monkeypatch):
    from pipelines import hierarchy as stage

    run, cfg = scored
    ray = sys.modules.get("ray")
    if ray is not None:
        # Another test module in this process may have left a Ray session up (the stage would use it): here
        # Ray reads as down, and beginning it or submitting a task fails the test.
        def _refuse(*_a, **_k):
            raise AssertionError("the hierarchy stage began Ray for a small run")

        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "init", _refuse)
        monkeypatch.setattr(ray, "remote", _refuse)
    summary = stage.hierarchy_run(cfg, run, quiet=True)
    assert summary.timings["in_driver"] is True
    assert summary.counts["nonfinite_values"] == 8
    cu = pd.read_parquet(run.path("concept_units.parquet"))
    assert cu[cu.concept == "P2"].unit.tolist() == [PARENT_UNIT]


def test_layers_select_by_glob_and_an_unknown_layer_is_refused(scored):
    from neuronscan.errors import InputError
    from pipelines import hierarchy as stage

    run, cfg = scored
    cfg = cfg.model_copy(update={"hierarchy": cfg.hierarchy.model_copy(update={"layers": ["nope*"]})})
    with pytest.raises(InputError, match="match none of the run's layers"):
        stage.hierarchy_run(cfg, run, quiet=True)


def _cfg(**hierarchy):
    return {"data": {"folder": "."}, "model": {"name": "m", "layers": ["x"]}, "hierarchy": hierarchy}


def test_the_section_is_off_by_default_and_checked():
    assert config_from_dict(_cfg(), "t").hierarchy.enabled is False
    with pytest.raises(ConfigError, match="max_units"):
        config_from_dict(_cfg(max_units=10, n_candidates=4), "t")
    with pytest.raises(ConfigError, match="hierarchy.holdout"):
        config_from_dict(_cfg(holdout=1.0), "t")
    with pytest.raises(ConfigError, match="hierarchy.multimodal_lca_depth"):
        config_from_dict(_cfg(multimodal_lca_depth=-2), "t")
    with pytest.raises(ConfigError, match="did you mean 'target_auc'"):
        config_from_dict(_cfg(targt_auc=0.9), "t")


def test_the_command_has_help_with_an_example(capsys):
    from neuronscan.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["hierarchy", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "neuronscan hierarchy runs/" in out


def test_the_spatial_subsection_is_off_by_default_and_checked():
    from neuronscan.config._schema import SpatialSection
    from neuronscan.hierarchy import SpatialSection as exported

    assert exported is SpatialSection  # one definition: the run config's hierarchy.spatial
    cfg = config_from_dict(_cfg(), "t")
    assert cfg.hierarchy.spatial.enabled is False and cfg.hierarchy.spatial.saliency == "guided_backprop"
    cfg = config_from_dict(_cfg(spatial={"enabled": True, "layers": ["conv4"], "per_leaf": 3}), "t")
    assert cfg.hierarchy.spatial.enabled and cfg.hierarchy.spatial.layers == ["conv4"]
    assert cfg.model_dump(mode="json")["hierarchy"]["spatial"]["per_leaf"] == 3
    with pytest.raises(ConfigError, match="hierarchy.spatial.saliency"):
        config_from_dict(_cfg(spatial={"saliency": "gradcam"}), "t")
    with pytest.raises(ConfigError, match="did you mean 'per_leaf'"):
        config_from_dict(_cfg(spatial={"per_leef": 3}), "t")
    with pytest.raises(ConfigError, match="hierarchy.spatial.enabled"):
        config_from_dict(_cfg(spatial={"enabled": "yes"}), "t")


def test_localisation_by_level_averages_concepts_with_boxes():
    from pipelines.hierarchy_spatial import localisation_by_level

    loc = pd.DataFrame({"concept": ["a", "b", "bg", "a", "b"], "depth": [1, 1, 1, 1, 1],
                        "layer": ["c3", "c3", "c3", "c4", "c4"], "n_images": [4, 2, 0, 4, 2],
                        "mean_iou": [0.8, 0.6, np.nan, 0.5, 0.3], "frac_iou_50": [1.0, 0.5, np.nan, 0.5, 0.0]})
    out = localisation_by_level(loc)
    assert out[["layer", "depth", "concepts"]].values.tolist() == [["c3", 1, 2], ["c4", 1, 2]]
    assert np.allclose(out["mean_iou"], [0.7, 0.4]) and np.allclose(out["frac_iou_50"], [0.75, 0.25])
    assert localisation_by_level(loc[loc.n_images == 0]).empty and localisation_by_level(None).empty


def test_the_pipelines_entry_names_both_stages_and_the_command_has_spatial(capsys):
    import pipelines
    from neuronscan.cli import main

    assert {"hierarchy_run", "run_spatial"} <= set(pipelines.__all__)
    with pytest.raises(SystemExit):
        main(["hierarchy", "--help"])
    out = capsys.readouterr().out
    assert "--spatial" in out and "localisation.parquet" in out
