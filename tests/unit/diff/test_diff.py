"""diff_runs on scored runs written with pandas: exactly the perturbed units are reported."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from neuronscan.config import config_from_dict
from neuronscan.diff import diff_config_of, diff_runs, format_summary, thresholds_exceeded, write_diff
from neuronscan.errors import InputError
from tests.unit.diff._runs import CONCEPTS, LAYERS, planted_aucs, write_scored_run

CIRCLE, SQUARE, RED, WATERMARK = (CONCEPTS.index(c) for c in ("circle", "square", "red", "watermark"))


def _perturbed(aucs: dict[str, np.ndarray], seed: int = 1) -> dict[str, np.ndarray]:
    """B = A with tiny jitter everywhere; conv2 unit 3: red → circle, unit 7: square → watermark."""
    rng = np.random.default_rng(seed)
    out = {layer: a + rng.uniform(-0.004, 0.004, size=a.shape) for layer, a in aucs.items()}
    out["conv2"][3, RED], out["conv2"][3, CIRCLE] = 0.52, 0.93
    out["conv2"][7, SQUARE], out["conv2"][7, WATERMARK] = 0.49, 0.91
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry") / "shapesnet"
    aucs = planted_aucs(LAYERS, CONCEPTS)
    a = write_scored_run(root / "20260101T020000Z-aaaaaa", aucs)
    b = write_scored_run(root / "20260102T020000Z-bbbbbb", _perturbed(aucs))
    return a, b, aucs


def test_reports_exactly_the_perturbed_units(runs):
    a, b, _ = runs
    result = diff_runs(str(a), str(b))
    units = result.units
    assert result.same_architecture
    assert len(units) == sum(LAYERS.values())
    changed = units[units["changed"]]
    assert set(zip(changed["layer"], changed["unit"])) == {("conv2", 3), ("conv2", 7)}
    assert set(zip(*units.loc[units["label_changed"], ["layer", "unit"]].T.to_numpy())) == {("conv2", 3), ("conv2", 7)}
    row3 = units.set_index(["layer", "unit"]).loc[("conv2", 3)]
    assert (row3.best_concept_a, row3.best_concept_b) == ("red", "circle")
    assert list(row3.gained) == ["circle"] and list(row3.lost) == ["red"]
    assert row3.delta_auc == pytest.approx(row3.auc_b - row3.auc_a)
    row7 = units.set_index(["layer", "unit"]).loc[("conv2", 7)]
    assert list(row7.gained) == ["watermark"] and list(row7.lost) == ["square"]
    assert list(row7.spurious_gained) == []  # no spurious concepts configured
    unchanged = units[~units["changed"]]
    assert (unchanged["delta_auc"].abs() < 0.01).all()
    assert all(len(g) == 0 and len(lo) == 0 for g, lo in zip(unchanged["gained"], unchanged["lost"]))
    s = result.summary
    assert (s["n_changed"], s["n_label_changed"], s["n_units_gained"], s["n_units_lost"]) == (2, 2, 2, 2)
    assert s["n_delta_auc"] == 0  # best AUCs barely moved: the labels changed
    assert s["settings"]["alpha"] == 0.05 and s["settings"]["min_auc"] == 0.75
    json.dumps(s)  # the summary is JSON as it stands


def test_identical_runs_have_no_change(runs):
    a, _, _ = runs
    result = diff_runs(str(a), str(a))
    assert not result.units["changed"].any()
    assert (result.units["delta_auc"] == 0).all()
    assert result.summary["n_changed"] == 0
    assert thresholds_exceeded(result, {"max_changed_labels": 0, "fail_on_spurious": True}) == []
    assert "no unit changed" in format_summary(result)


def test_delta_auc_alone_counts_as_change(tmp_path, runs):
    _, _, aucs = runs
    moved = {layer: a.copy() for layer, a in aucs.items()}
    moved["conv4:mean"][2, 2] -= 0.12  # same best concept, AUC 0.88–0.95 → 0.76–0.83: still significant
    a = write_scored_run(tmp_path / "a", aucs)
    b = write_scored_run(tmp_path / "b", moved)
    result = diff_runs(str(a), str(b), min_abs_delta_auc=0.1)
    changed = result.units[result.units["changed"]]
    assert list(zip(changed["layer"], changed["unit"], changed["reasons"])) == [("conv4:mean", 2, "delta_auc")]
    assert not changed["label_changed"].any()
    assert diff_runs(str(a), str(b), min_abs_delta_auc=0.2).summary["n_changed"] == 0


def test_spurious_alignment_and_thresholds(runs):
    a, b, _ = runs
    result = diff_runs(str(a), str(b), spurious_concepts=["watermark"])
    units = result.units.set_index(["layer", "unit"])
    assert list(units.loc[("conv2", 7)].spurious_gained) == ["watermark"]
    assert "spurious" in units.loc[("conv2", 7)].reasons
    assert result.summary["n_spurious_units"] == 1
    assert result.summary["spurious"] == ["conv2:0007 → watermark"]
    concepts = result.concepts.set_index("concept")
    assert concepts.loc["watermark"].spurious and concepts.loc["watermark"].n_units_b == 1
    assert concepts.loc["watermark"].n_units_gained == 1

    cfg = config_from_dict({"data": {"folder": "."}, "model": {"name": "m", "layers": ["x"]},
                            "diff": {"max_changed_labels": 1, "fail_on_spurious": True}}).diff
    reasons = thresholds_exceeded(result, cfg)
    assert len(reasons) == 2
    assert "2 unit(s) changed their best concept (max_changed_labels: 1)" in reasons[0]
    assert "conv2:0007 → watermark" in reasons[1]
    assert thresholds_exceeded(result, {"max_changed_labels": 2, "fail_on_spurious": False}) == []
    assert thresholds_exceeded(result, None) == [reasons[1]]  # defaults: no label limit, fail on spurious
    with pytest.raises(InputError, match="max_changed_labels"):
        thresholds_exceeded(result, {"max_changed_labels": -1})


def test_settings_come_from_run_json(tmp_path, runs):
    _, _, aucs = runs
    config = {"score": {"alpha": 0.05, "min_auc": 0.75, "spurious_concepts": ["watermark"]},
              "diff": {"max_changed_labels": 5, "min_abs_delta_auc": 0.2, "fail_on_spurious": True}}
    a = write_scored_run(tmp_path / "a", aucs)
    b = write_scored_run(tmp_path / "b", _perturbed(aucs), config=config)
    section, spurious = diff_config_of(str(b))
    assert (section.max_changed_labels, section.min_abs_delta_auc, spurious) == (5, 0.2, ["watermark"])
    result = diff_runs(str(a), str(b))  # spurious concepts from B's run.json
    assert result.summary["spurious"] == ["conv2:0007 → watermark"]
    assert diff_runs(str(a), str(b), spurious_concepts=()).summary["n_spurious_units"] == 0
    # alpha below every q-value: nothing is significant, but best concepts still changed
    strict = diff_runs(str(a), str(b), alpha=1e-9)
    assert strict.summary["n_units_gained"] == 0 and strict.summary["n_label_changed"] == 2
    # min_auc above every planted AUC: nothing is aligned either
    assert diff_runs(str(a), str(b), min_auc=0.99).summary["n_aligned_pairs_b"] == 0


def test_without_neurons_parquet_the_best_concept_is_derived(tmp_path, runs):
    a, b, aucs = runs
    b2 = write_scored_run(tmp_path / "b", _perturbed(aucs), with_neurons=False)
    full = diff_runs(str(a), str(b))
    derived = diff_runs(str(a), str(b2))
    cols = ["layer", "unit", "best_concept_a", "best_concept_b", "label_changed", "changed"]
    pd.testing.assert_frame_equal(full.units[cols], derived.units[cols])
    np.testing.assert_allclose(full.units["auc_b"], derived.units["auc_b"])


def test_concept_coverage_works_across_models(tmp_path):
    aucs_a = planted_aucs({"conv2": 10, "conv4:mean": 6}, CONCEPTS)
    aucs_b = planted_aucs({"layer3": 12}, CONCEPTS[:-1] + ["text"], seed=5)
    a = write_scored_run(tmp_path / "a", aucs_a, model="shapesnet")
    b = write_scored_run(tmp_path / "b", aucs_b, CONCEPTS[:-1] + ["text"], model="resnet18")
    result = diff_runs(str(a), str(b))
    assert not result.same_architecture and result.units.empty
    c = result.concepts.set_index("concept")
    assert set(c.index) == set(CONCEPTS) | {"text"}
    # unit k is planted on concept k % 6: conv2 has 10 units, conv4:mean 6, layer3 12
    assert c.loc["circle"].n_units_a == 2 + 1 and c.loc["circle"].n_units_b == 2
    assert list(c.loc["circle"].layers_a) == ["conv2", "conv4:mean"] and list(c.loc["circle"].layers_b) == ["layer3"]
    assert c.loc["stripes"].n_units_a == 2 and c.loc["stripes"].n_units_b == 2  # units 5 (and 11 in layer3)
    assert c.loc["text"].n_units_b == 0 and list(c.loc["text"].layers_b) == [] and not c.loc["text"].in_a
    assert c.loc["watermark"].in_a and not c.loc["watermark"].in_b and c.loc["watermark"].n_units_b == 0
    assert np.isnan(c.loc["watermark"].best_auc_b)
    best_circle = max(aucs_a["conv2"][:, 0].max(), aucs_a["conv4:mean"][:, 0].max())
    assert c.loc["circle"].best_auc_a == pytest.approx(best_circle)
    assert result.summary["concepts_only_b"] == ["text"]
    assert any("different model names" in n for n in result.notes)


def test_layers_with_other_unit_counts_are_skipped(tmp_path, runs):
    _, _, aucs = runs
    wider = dict(aucs, **{"conv4:mean": np.vstack([aucs["conv4:mean"], aucs["conv4:mean"][:2]])})
    result = diff_runs(str(write_scored_run(tmp_path / "a", aucs)), str(write_scored_run(tmp_path / "b", wider)))
    assert not result.same_architecture
    assert result.summary["layers_compared"] == ["conv2"] and set(result.units["layer"]) == {"conv2"}
    assert any("conv4:mean (6 vs 8)" in n for n in result.notes)


def test_write_diff_files_and_report(tmp_path, runs):
    from neuronscan.report import write_report

    a, b, _ = runs
    result = diff_runs(str(a), str(b), spurious_concepts=["watermark"])
    written = write_diff(result, str(tmp_path / "diff"))
    assert sorted(written) == ["diff.json", "diff_concepts.parquet", "diff_units.parquet"]
    units = pq.read_table(tmp_path / "diff" / "diff_units.parquet")
    assert units.schema.field("gained").type.value_type == "string"
    assert units.num_rows == sum(LAYERS.values())
    frame = units.to_pandas()
    assert set(frame.loc[frame["changed"], "unit"]) == {3, 7}
    concepts = pq.read_table(tmp_path / "diff" / "diff_concepts.parquet").to_pandas()
    for column in ("concept", "n_units_a", "n_units_b", "best_auc_a", "best_auc_b", "layers_a", "layers_b"):
        assert column in concepts
    assert json.loads((tmp_path / "diff" / "diff.json").read_text())["n_label_changed"] == 2
    index = write_report(str(b), str(tmp_path / "report"), diff_dir=str(tmp_path / "diff"), max_top_images=0)
    html = index.read_text()
    assert 'id="view-diff"' in html and "conv2:0007" in html and "watermark" in html


def test_format_summary_lists_the_changes(runs):
    a, b, _ = runs
    text = format_summary(diff_runs(str(a), str(b), spurious_concepts=["watermark"]), max_rows=5)
    assert "2 changed" in text and "conv2:0003" in text and "conv2:0007" in text
    assert "! conv2:0007 → watermark" in text
    assert "conv4:mean:0001" not in text


def test_clear_errors(tmp_path, runs):
    a, _, _ = runs
    with pytest.raises(InputError, match="does not exist"):
        diff_runs(str(a), str(tmp_path / "nope"))
    (tmp_path / "probed").mkdir()
    with pytest.raises(InputError, match="no neuron_concepts.parquet"):
        diff_runs(str(a), str(tmp_path / "probed"))
    with pytest.raises(InputError, match="min_abs_delta_auc"):
        diff_runs(str(a), str(a), min_abs_delta_auc=2)


def test_diff_and_registry_never_import_ray():
    import subprocess
    import sys

    code = "import sys, neuronscan.diff, neuronscan.registry; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_n_significant_means_what_neurons_parquet_means(runs):
    """The diff's per-unit n_significant counts the score stage's significant pairs (q <= alpha, AUC > 1/2);
    the aligned count (AUC >= min_auc too) is the one gained and lost concepts come from."""
    a, b, _ = runs
    units = diff_runs(str(a), str(b)).units.set_index(["layer", "unit"])
    for tag, run in (("a", a), ("b", b)):
        neurons = pd.read_parquet(run / "neurons.parquet").set_index(["layer", "unit"])
        assert (units[f"n_significant_{tag}"] == neurons.loc[units.index, "n_significant"]).all()
        pairs = pd.read_parquet(run / "neuron_concepts.parquet")
        aligned = pairs[(pairs["q_value"] <= 0.05) & (pairs["auc"] >= 0.75)].groupby(["layer", "unit"]).size()
        assert (units[f"n_aligned_{tag}"] == aligned.reindex(units.index, fill_value=0)).all()
    assert (units["n_aligned_b"] <= units["n_significant_b"]).all()
    strict = diff_runs(str(a), str(b), min_auc=0.99).units  # min_auc moves the aligned bar only
    assert (strict["n_aligned_b"] == 0).all() and (strict["n_significant_b"] == units["n_significant_b"].values).all()
    assert units["n_significant_b"].sum() > 0


def test_runs_that_ranked_best_concepts_by_different_metrics_are_noted(tmp_path, runs):
    _, _, aucs = runs
    old = {"score": {"alpha": 0.05, "min_auc": 0.75, "spurious_concepts": []}}  # before score.rank_by existed
    new = {"score": {**old["score"], "rank_by": "correlation"}}
    a = write_scored_run(tmp_path / "a", aucs, config=old)
    b = write_scored_run(tmp_path / "b", aucs, config=new)
    notes = diff_runs(str(a), str(b)).notes
    assert any("different metrics (auc vs correlation)" in n and "score.rank_by=correlation" in n for n in notes)
    same = write_scored_run(tmp_path / "c", aucs, config=new)
    assert not any("different metrics" in n for n in diff_runs(str(b), str(same)).notes)
