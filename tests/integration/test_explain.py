"""``neuronscan run configs/demo_explain.yaml``, shrunk (a 120-image shapes world, conv3 and conv4, two epochs, two
explainers): the run trains both with Ray Train (two data-parallel workers) between the probe and score, writes
their components as the derived layers conv4:mean@sae and conv3:max@part, scores them with the units
(neurons.parquet), records the figures (metrics.json, run.json) and shows them in the report; ``neuronscan
explain-train`` then resumes the SAE for one more epoch from its last checkpoint and skips the complete part
explainer."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from neuronscan.cli import main
from neuronscan.io import RunDir

# ~2-3 min on the shared 2-core machine (Ray start, probe, two Ray Train fits of ~40 s each, score, report).
pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SAE, PART = "conv4:mean@sae", "conv3:max@part"


def _overrides(tmp_path: Path, **extra) -> list[str]:
    sets = {
        "data.shapes_world.root": str(tmp_path / "world"),
        "data.shapes_world.n_images": 120,
        "model.layers": "[conv3, conv4]",
        "probe.batch_size": 60,
        "probe.topk": 4,
        "score.n_perm": 0,
        "score.compositional.enabled": "false",
        "score.simulation.enabled": "false",
        "explain.epochs": 2,
        "explain.batch_size": 32,
        # Two data-parallel workers (DDP over gloo) of half a CPU each, for both explainers: one fit.
        "explain.num_workers": 2,
        "explain.cpus_per_worker": 0.5,
        "explain.also": "[{family: part, layer: conv3, width: 0.25, epochs: 2, batch_size: 32, num_workers: 2, "
                        "cpus_per_worker: 0.5, part: {hidden: 0.25}}]",
        "ray.num_cpus": 2,
        **extra,
    }
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("demo-explain")
    code = main(["run", str(ROOT / "configs" / "demo_explain.yaml"), "--out", str(tmp / "runs"), "--quiet",
                 *_overrides(tmp)])
    assert code == 0
    return tmp, RunDir(str(tmp / "runs" / "shapesnet" / "demo_explain"))


def _metrics(run: RunDir, layer: str) -> dict:
    return json.loads(Path(run.explain(layer), "metrics.json").read_text())


def test_the_run_scores_the_components_beside_the_units(demo_run):
    _tmp, run = demo_run
    neurons = pd.read_parquet(run.neurons)
    counts = neurons.groupby("layer").size().to_dict()
    assert counts[SAE] == 512 and counts[PART] == 16  # width 2 × 256, 0.25 × 64
    assert counts["conv4:mean"] == 256 and counts["conv3:max"] == 64
    concepts = pd.read_parquet(run.neuron_concepts, columns=["layer"])
    assert {SAE, PART} <= set(concepts["layer"])
    # Every ok image once in each derived layer, and committed.
    for layer in (SAE, PART):
        files = run.committed_layer_files(layer)
        ids = pd.concat([pd.read_parquet(f, columns=["image_id"]) for f in files])["image_id"]
        assert sorted(ids) == list(range(120))
        assert run.exists(run.topk(layer))
    info = run.read_info()
    assert set(info["explain"]["layers"]) == {SAE, PART}
    assert info["status"] == "complete" and "explain_s" in info["timings"]
    assert info["config"]["explain"]["also"][0]["family"] == "part"


def test_metrics_and_readme(demo_run):
    _tmp, run = demo_run
    sae, part = _metrics(run, SAE), _metrics(run, PART)
    for m in (sae, part):
        assert m["fidelity"]["accuracy"]["original"] > 0.9
        assert 0 <= m["fidelity"]["accuracy"]["mean_ablated"] <= 1
        assert m["dead"]["count"] <= m["components"]
        interp = m["interpretability"]
        assert interp["components"]["units"] == m["components"]
        assert interp["raw_units"]["layer"] == m["compare_layer"]
        assert 0 <= interp["raw_units"]["frac_significant"] <= 1
        assert len(m["training"]["history"]) == 2 and m["training"]["workers"] == 2
        assert Path(run.explain(m["derived_layer"]), "README.md").read_text().startswith(f"# {m['derived_layer']}")
    assert sae["sparsity"]["mean_l0"] <= 8 and sae["compare_layer"] == "conv4:mean"
    assert part["compare_layer"] == "conv3:max" and part["stability"]["raw_units_measured"] > 0
    weights = torch.load(Path(run.explain(SAE), "explainer.pt"), weights_only=True)
    assert weights["family"] == "sae" and weights["state_dict"]["W_dec"].shape == (256, 512)


def test_the_report_shows_the_derived_layers(demo_run):
    _tmp, run = demo_run
    root = Path(run.root) / "report"
    html = (root / "index.html").read_text()
    assert SAE in html and PART in html
    files = sorted(p.name for p in (root / "data").glob("units-*.js"))
    assert any(name.endswith("conv4__mean_sae.js") for name in files), files
    assert any(name.endswith("conv3__max_part.js") for name in files), files


def test_explain_train_resumes_from_the_last_checkpoint_and_skips_what_is_complete(demo_run, capsys):
    tmp, run = demo_run
    before = _metrics(run, PART)["finished"]
    code = main(["explain-train", str(ROOT / "configs" / "demo_explain.yaml"), "--out", str(tmp / "runs"),
                 *_overrides(tmp, **{"explain.epochs": 3})])
    assert code == 0
    out = capsys.readouterr()
    assert "conv4:mean@sae" in out.out and "metrics.json" in out.out
    sae = _metrics(run, SAE)
    assert [h["epoch"] for h in sae["training"]["history"]] == [1, 2, 3]
    assert _metrics(run, PART)["finished"] == before  # skipped: complete with the same settings
    assert "skipped" in out.err and "resuming after epoch 2" in out.err
    neurons = pd.read_parquet(run.neurons)
    assert (neurons["layer"] == SAE).sum() == 512


def test_explain_train_needs_a_probed_run(tmp_path, capsys):
    code = main(["explain-train", str(ROOT / "configs" / "demo_explain.yaml"), "--out", str(tmp_path / "none")])
    assert code == 2
    assert "no probed run" in capsys.readouterr().err
