"""Score stage on a local Ray: the pipeline's table equals the oracles on data with heavy ties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import false_discovery_control, mannwhitneyu
from sklearn.metrics import average_precision_score, roc_auc_score

from neuronscan.config import config_from_dict
from pipelines.score import run_score

N_IMAGES, CONCEPTS = 180, ["a", "b", "c", "rare", "none"]


def _write_acts(root, layer, values, image_ids, parts=3):
    d = root / layer.replace(":", "__")
    d.mkdir(parents=True)
    for i, idx in enumerate(np.array_split(np.arange(len(image_ids)), parts)):
        cols = {"image_id": pa.array(image_ids[idx], pa.int64())}
        cols |= {f"u{k:05d}": pa.array(values[idx, k].astype(np.float32)) for k in range(values.shape[1])}
        pq.write_table(pa.table(cols), d / f"part-{i:03d}.parquet")


@pytest.fixture(scope="module")
def scored(ray_local, tmp_path_factory):
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("score")
    image_ids = rng.permutation(np.arange(1000, 1000 + N_IMAGES))
    y = {
        "a": rng.random(N_IMAGES) < 0.3,
        "b": rng.random(N_IMAGES) < 0.5,
        "c": rng.random(N_IMAGES) < 0.1,
        "rare": np.arange(N_IMAGES) == 5,
    }
    # ReLU of rounded normals: many exact zeros and ties; unit 0 planted on 'a', unit 3 dead.
    acts = np.maximum(np.round(rng.normal(size=(N_IMAGES, 6)), 1), 0)
    acts[:, 0] += 1.5 * y["a"]
    acts[:, 3] = 0.25
    _write_acts(root / "acts", "layer1:mean", acts[:, :4], image_ids)
    _write_acts(root / "acts", "layer2", acts[:, 4:], image_ids, parts=2)
    rows = [(int(image_ids[i]), c) for c, m in y.items() for i in np.nonzero(m)[0]]
    rows += [(99999, "a")]  # a label for an image that was never probed
    labels = pd.DataFrame(rows, columns=["image_id", "concept"])
    labels = pd.concat([labels, pd.DataFrame([(int(image_ids[0]), "none")], columns=labels.columns)])
    labels.loc[labels["concept"] == "none", "image_id"] = 99998  # 'none' has no probed positive
    cfg = config_from_dict({"data": {"folder": "."}, "model": {"name": "-", "layers": ["-"]},
                            "score": {"n_perm": 200, "units_per_shard": 3, "compositional": {"max_length": 2}}})
    summary = run_score(activations_dir=str(root / "acts"), labels=labels, out_dir=str(root / "out"),
                        score_cfg=cfg.score, quiet=True)
    table = pd.read_parquet(root / "out" / "neuron_concepts.parquet")
    neurons = pd.read_parquet(root / "out" / "neurons.parquet")
    return summary, table, neurons, acts, y, image_ids


def test_schema_and_row_counts(scored):
    summary, table, neurons, *_ = scored
    assert list(table.columns[:9]) == ["layer", "unit", "concept", "n_pos", "n_neg", "auc", "auprc", "p_value",
                                       "q_value"]
    assert str(table["unit"].dtype) == "int32" and str(table["n_pos"].dtype) == "int64"
    assert len(table) == 6 * 5 and len(neurons) == 6
    assert summary.layers == {"layer1:mean": 4, "layer2": 2}
    assert summary.counts["labels"]["labels_for_unprobed_images"] == 2
    assert summary.counts["concepts_without_positives"] == 1


def test_values_equal_oracles(scored):
    _, table, _, acts, y, image_ids = scored
    order = np.argsort(image_ids)  # the table's images are sorted by id; values are per image anyway
    checked = 0
    for row in table.itertuples():
        k = row.unit + (4 if row.layer == "layer2" else 0)
        a = acts[order, k].astype(np.float32).astype(np.float64)
        if row.concept == "none":
            assert np.isnan(row.auc) and np.isnan(row.p_value) and np.isnan(row.q_value)
            continue
        m = y[row.concept][order]
        assert row.n_pos == m.sum() and row.n_neg == (~m).sum()
        assert row.auc == pytest.approx(roc_auc_score(m, a), abs=1e-9)
        assert row.auprc == pytest.approx(average_precision_score(m, a), abs=1e-9)
        if np.ptp(a) == 0:
            continue
        p = mannwhitneyu(a[m], a[~m], alternative="greater", method="asymptotic").pvalue
        assert row.p_value == pytest.approx(p, rel=1e-9, abs=1e-12)
        checked += 1
    assert checked >= 20
    finite = table["p_value"].notna()
    q = false_discovery_control(table.loc[finite, "p_value"].to_numpy(), method="bh")
    np.testing.assert_allclose(table.loc[finite, "q_value"], q, rtol=1e-12)


def test_unit_summaries(scored):
    _, table, neurons, *_ = scored
    planted = neurons[(neurons["layer"] == "layer1:mean") & (neurons["unit"] == 0)].iloc[0]
    assert planted["best_concept"] == "a" and planted["best_q"] < 1e-6
    assert planted["best_p_perm"] == pytest.approx(1 / 201)
    assert isinstance(planted["formula"], str) and planted["formula_auc"] >= planted["best_auc"] - 1e-12
    dead = neurons[(neurons["layer"] == "layer1:mean") & (neurons["unit"] == 3)].iloc[0]
    assert bool(dead["dead"])
    tested = table[table["n_perm"] > 0]
    assert len(tested) >= 6 and tested["p_perm"].between(1 / 201, 1).all()


def test_degenerate_inputs_are_counted_not_fatal(ray_local, tmp_path):
    rng = np.random.default_rng(3)
    ids = np.arange(60, dtype=np.int64)
    acts = rng.normal(size=(60, 3))
    acts[5, 0], acts[6, 0], acts[7, 1] = np.nan, np.inf, -np.inf
    _write_acts(tmp_path / "acts", "l", acts, ids, parts=2)
    # a retried batch: the same image written again in another part
    dup = pa.table({"image_id": pa.array([3], pa.int64()),
                    **{f"u{k:05d}": pa.array([acts[3, k]], pa.float32()) for k in range(3)}})
    pq.write_table(dup, tmp_path / "acts" / "l" / "part-999.parquet")
    labels = pd.DataFrame({"image_id": [0, 1, 2, 3, 500], "concept": ["x", "x", "x", "x", "x"]})
    cfg = config_from_dict({"data": {"folder": "."}, "model": {"name": "-", "layers": ["-"]}})
    summary = run_score(activations_dir=str(tmp_path / "acts"), labels=labels, out_dir=str(tmp_path / "out"),
                        score_cfg=cfg.score, quiet=True)
    assert summary.n_images == 60
    assert summary.counts["duplicate_image_rows"] == 1
    assert summary.counts["labels"]["labels_for_unprobed_images"] == 1
    assert summary.counts["units_with_nonfinite"] == 2
    neurons = pd.read_parquet(tmp_path / "out" / "neurons.parquet")
    assert neurons["n_nonfinite"].tolist() == [2, 1, 0]
    table = pd.read_parquet(tmp_path / "out" / "neuron_concepts.parquet")
    assert table["auc"].notna().all() and len(table) == 3


def test_units_are_their_columns(ray_local, tmp_path):
    """A layer whose parts all lack u00000 reports u00001 as unit 1 (not 0); parts that disagree are an error."""
    from neuronscan.errors import InputError

    rng = np.random.default_rng(3)
    ids = np.arange(60)
    y = rng.random(60) < 0.4
    acts = rng.normal(size=(60, 3))
    acts[:, 2] += 3 * y  # unit 2 is the planted one
    d = tmp_path / "acts" / "conv"
    d.mkdir(parents=True)
    for i, idx in enumerate(np.array_split(ids, 2)):
        cols = {"image_id": pa.array(ids[idx], pa.int64())}
        cols |= {f"u{k:05d}": pa.array(acts[idx, k].astype(np.float32)) for k in (1, 2)}
        pq.write_table(pa.table(cols), d / f"part-{i:03d}.parquet")
    labels = pd.DataFrame({"image_id": ids[y], "concept": "x"})
    cfg = config_from_dict({"data": {"folder": "."}, "model": {"name": "-", "layers": ["-"]},
                            "score": {"n_perm": 0, "compositional": {"enabled": False}}})
    run_score(activations_dir=str(tmp_path / "acts"), labels=labels, out_dir=str(tmp_path / "out"),
              score_cfg=cfg.score, quiet=True)
    neurons = pd.read_parquet(tmp_path / "out" / "neurons.parquet")
    table = pd.read_parquet(tmp_path / "out" / "neuron_concepts.parquet")
    assert neurons["unit"].tolist() == [1, 2] and sorted(table["unit"].unique()) == [1, 2]
    assert neurons.set_index("unit").loc[2, "best_auc"] == pytest.approx(roc_auc_score(y, acts[:, 2]))
    # One part with a unit column fewer: an error that names both files, before any scoring.
    pq.write_table(pa.table({"image_id": pa.array([100], pa.int64()), "u00002": pa.array([0.0], pa.float32())}),
                   d / "part-002.parquet")
    with pytest.raises(InputError, match=r"part-002\.parquet.*part-000\.parquet.*missing \['u00001'\]"):
        run_score(activations_dir=str(tmp_path / "acts"), labels=labels, out_dir=str(tmp_path / "out2"),
                  score_cfg=cfg.score, quiet=True)


def test_quality_metrics_and_rank_by_equal_oracles(scored):
    """F1/IoU at the top quantile, correlation and cosine per pair; best_concept by score.rank_by (correlation)."""
    import math

    from scipy.stats import pointbiserialr
    from sklearn.metrics import f1_score, jaccard_score

    _, table, neurons, acts, y, image_ids = scored
    order = np.argsort(image_ids)
    checked = 0
    for row in table.itertuples():
        if row.concept == "none":
            assert all(np.isnan(getattr(row, m)) for m in ("f1", "iou", "correlation", "cosine"))
            continue
        k = row.unit + (4 if row.layer == "layer2" else 0)
        a = acts[order, k].astype(np.float32).astype(np.float64)
        m = y[row.concept][order]
        top = a >= np.sort(a)[::-1][math.ceil(0.005 * len(a)) - 1]
        assert row.f1 == pytest.approx(f1_score(m, top, zero_division=0.0), abs=1e-6)
        assert row.iou == pytest.approx(jaccard_score(m, top, zero_division=0.0), abs=1e-6)
        if np.ptp(a) > 0:
            assert row.correlation == pytest.approx(pointbiserialr(m, a).statistic, abs=1e-6)
            checked += 1
        assert row.cosine == pytest.approx(a @ m / (np.linalg.norm(a) * np.sqrt(m.sum())), abs=1e-6)
    assert checked >= 20
    for unit in neurons.itertuples():
        rows = table[(table["layer"] == unit.layer) & (table["unit"] == unit.unit)]
        corr = rows["correlation"].to_numpy(np.float64)
        if np.isfinite(corr).any():
            best = rows.iloc[int(np.nanargmax(corr))]
            assert unit.best_concept == best["concept"] and unit.best_auc == best["auc"]
            assert unit.best_correlation == pytest.approx(best["correlation"], abs=1e-6)
        else:
            assert pd.isna(unit.best_concept)
    planted = neurons[(neurons["layer"] == "layer1:mean") & (neurons["unit"] == 0)].iloc[0]
    assert planted["sim_concept"] == "a" and planted["sim_concept_corr"] > 0.5
    assert planted["linear_terms"][0] == "a" and len(planted["linear_terms"]) == len(planted["linear_weights"])
    assert planted["sim_linear_corr"] >= planted["sim_concept_corr"] - 0.05 and planted["sim_formula_corr"] > 0.3


def test_best_depth_is_the_depth_of_the_best_concept(scored, tmp_path):
    """With a hierarchy, neurons.parquet records the depth of each unit's best concept; without, -1."""
    summary, table, neurons, acts, y, image_ids = scored
    assert (neurons["best_depth"] == -1).all()
    root = tmp_path / "acts"
    _write_acts(root, "layer1:mean", acts[:, :4], image_ids)
    labels = pd.DataFrame([(int(image_ids[i]), c) for c, m in y.items() for i in np.nonzero(m)[0]],
                          columns=["image_id", "concept"])
    cfg = config_from_dict({"data": {"folder": "."}, "model": {"name": "-", "layers": ["-"]},
                            "score": {"n_perm": 0, "compositional": {"enabled": False}}})
    edges = [("a", "ab"), ("b", "ab"), ("ab", "top"), ("c", "top")]
    run_score(activations_dir=str(root), labels=labels, out_dir=str(tmp_path / "out"), score_cfg=cfg.score,
              hierarchy=edges, quiet=True)
    got = pd.read_parquet(tmp_path / "out" / "neurons.parquet")
    depth = {"top": 0, "ab": 1, "c": 1, "a": 2, "b": 2, "rare": -1}
    for row in got.itertuples():
        want = -1 if pd.isna(row.best_concept) else depth.get(row.best_concept, 0)
        assert row.best_depth == want, row
    assert (got["best_depth"] >= 0).sum() >= 3
