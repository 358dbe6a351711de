"""Training resumes from its last checkpoint: stopped after epoch 1 (as a killed run would be) and run again, an
explainer ends with the same weights, bit for bit, as an uninterrupted run with the same seed — for both families;
a change of settings trains anew; a complete explainer is skipped; checkpoints are plain state dicts that
``torch.load(weights_only=True)`` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from neuronscan.config import config_from_dict
from neuronscan.io import RunDir
from pipelines.explain import _checkpoints, _prepare_one, plan_explainer, train_local
from tests.unit.explain._planted import (
    planted_config,
    planted_parts,
    world_config,
    write_planted_run,
    write_world_run,
)

pytestmark = pytest.mark.timeout(600)


def _state(folder: str) -> dict:
    return torch.load(Path(folder) / "explainer.pt", weights_only=True)["state_dict"]


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _plan(cfg_raw: dict, root: Path):
    cfg = config_from_dict(cfg_raw)
    return cfg, plan_explainer(cfg, RunDir(str(root)), cfg.explain.explainers()[0])


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_an_interrupted_sae_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, activation):
    x, _d, c = planted_parts(n_images=600)
    raw = planted_config(epochs=4, sparsity={"activation": activation, "k": 3})
    write_planted_run(tmp_path / "a", x, c=c, config=raw)
    write_planted_run(tmp_path / "b", x, c=c, config=raw)
    _cfg, whole = _plan(raw, tmp_path / "a")
    train_local(whole)
    _cfg, part = _plan(raw, tmp_path / "b")
    train_local(part, stop_after=1)
    assert [e for e, _ in _checkpoints(part.folder)] == [1]
    assert not (Path(part.folder) / "explainer.pt").exists()
    assert not RunDir(str(tmp_path / "b")).derived_committed_parts()
    _cfg, again = _plan(raw, tmp_path / "b")
    assert again.fingerprint == part.fingerprint
    train_local(again)
    _same(_state(whole.folder), _state(again.folder))
    hist = [json.loads((Path(f) / "metrics.json").read_text())["training"]["history"] for f in (whole.folder,
                                                                                                 again.folder)]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in hist[0]] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in hist[1]]
    # The last two checkpoints are kept; each is a plain dict of tensors and numbers.
    assert [e for e, _ in _checkpoints(again.folder)] == [3, 4]
    ck = torch.load(_checkpoints(again.folder)[-1][1], weights_only=True)
    assert ck["epoch"] == 4 and ck["fingerprint"] == again.fingerprint and "optimizer" in ck


def test_an_interrupted_part_explainer_resumes_to_the_same_weights(tmp_path):
    world = tmp_path / "world"
    raw = world_config(world)
    write_world_run(tmp_path / "a", world, config=raw)
    write_world_run(tmp_path / "b", world, config=raw)
    _cfg, whole = _plan(raw, tmp_path / "a")
    assert whole.derived == "conv4:max@part" and whole.width == 32 and whole.map_shape == [256, 8, 8]
    train_local(whole)
    _cfg, part = _plan(raw, tmp_path / "b")
    train_local(part, stop_after=1)
    _cfg, again = _plan(raw, tmp_path / "b")
    train_local(again)
    _same(_state(whole.folder), _state(again.folder))
    # The derived layer: every image once, with its top images located at the components' peaks.
    run = RunDir(str(tmp_path / "b"))
    files = run.committed_layer_files("conv4:max@part")
    acts = pd.concat([pd.read_parquet(f) for f in files])
    assert sorted(acts["image_id"]) == list(range(24)) and acts.shape[1] == 1 + 32
    topk = pd.read_parquet(run.topk("conv4:max@part"))
    assert topk["loc_y"].between(0, 1).all() and topk.groupby("unit").size().max() == 4
    metrics = json.loads((Path(again.folder) / "metrics.json").read_text())
    assert metrics["stability"]["components_measured"] > 0 and metrics["stability"]["raw_units_measured"] > 0
    acc = metrics["fidelity"]["accuracy"]
    assert acc["original"] > 0.5 and acc["images_counted"]["shape"] == 24


def test_other_settings_train_anew_and_a_complete_explainer_is_skipped(tmp_path):
    x, _d, c = planted_parts(n_images=400)
    raw = planted_config(epochs=2)
    write_planted_run(tmp_path / "r", x, c=c, config=raw)
    cfg, plan = _plan(raw, tmp_path / "r")
    settings = cfg.explain.explainers()[0]
    assert _prepare_one(plan, settings, print) == ("trained", 0)
    train_local(plan)
    assert _prepare_one(plan, settings, print) == ("skipped", 0)
    run = RunDir(str(tmp_path / "r"))
    assert run.derived_committed_parts("planted:mean@sae")
    # More epochs resume from the last checkpoint.
    more = planted_config(epochs=3)
    cfg3, plan3 = _plan(more, tmp_path / "r")
    assert plan3.fingerprint == plan.fingerprint
    assert _prepare_one(plan3, cfg3.explain.explainers()[0], print) == ("resumed", 2)
    # Another learning rate: the checkpoints, the derived layer and its metrics of the old settings go.
    other = planted_config(epochs=2, lr=0.02)
    cfg2, plan2 = _plan(other, tmp_path / "r")
    assert plan2.fingerprint != plan.fingerprint
    assert _prepare_one(plan2, cfg2.explain.explainers()[0], print) == ("trained", 0)
    assert _checkpoints(plan2.folder) == []
    assert not run.derived_committed_parts("planted:mean@sae")
    assert not (Path(plan2.folder) / "metrics.json").exists()


def test_a_relative_run_directory_reaches_the_workers_as_absolute_paths(tmp_path, monkeypatch):
    """Ray Train runs its workers in a folder of its own: a run given as runs/… must not be looked up there."""
    import os

    x, _d, c = planted_parts(n_images=50)
    raw = planted_config(epochs=1)
    monkeypatch.chdir(tmp_path)
    write_planted_run(Path("runs/r"), x, c=c, config=raw)
    _cfg, plan = _plan(raw, Path("runs/r"))
    assert plan.run_dir == str(tmp_path / "runs" / "r")
    assert plan.folder.startswith(plan.run_dir + "/explain/")
    assert all(os.path.isabs(f) for f in plan.files)
    monkeypatch.chdir(tmp_path.parent)
    train_local(plan)  # from another folder
    assert RunDir(plan.run_dir).derived_committed_parts("planted:mean@sae")
