"""Derived layers in the run directory (`neuronscan.io.RunDir`): a derived part counts only once its commit record
``derived/commits/<part>.parquet`` exists; a probe's resume keeps committed derived parts and deletes uncommitted
ones; a derived layer is removed commit records first; ``@`` in layer names survives the file names; the score
stage reads derived layers with the probed ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from neuronscan.errors import InputError
from neuronscan.io import (
    COMMIT_SCHEMA,
    PartFileError,
    RunDir,
    activation_schema,
    layer_dirname,
    layer_from_dirname,
    list_layer_parts,
    read_part,
    write_parquet_atomic,
)
from neuronscan.io._rundir import DERIVED_COMMIT_SCHEMA, is_derived_layer


def _part(run: RunDir, layer: str, part: str, ids: list[int], n_units: int = 3, offset: float = 0.0) -> None:
    values = np.arange(len(ids) * n_units, dtype=np.float32).reshape(len(ids), n_units) + offset
    arrays = [pa.array(ids, pa.int64())] + [pa.array(values[:, k]) for k in range(n_units)]
    write_parquet_atomic(pa.Table.from_arrays(arrays, schema=activation_schema(n_units)),
                         run.activation_part(layer, part))


def _probe_commit(run: RunDir, part: str, ids: list[int]) -> None:
    table = pa.table({"image_id": pa.array(ids, pa.int64()), "uri": [f"img{i}" for i in ids],
                      "status": ["ok"] * len(ids), "error": pa.array([None] * len(ids), pa.string())},
                     schema=COMMIT_SCHEMA)
    write_parquet_atomic(table, run.commit(part))


def _derived_commit(run: RunDir, layer: str, part: str, ids: list[int]) -> None:
    table = pa.table({"layer": [layer] * len(ids), "image_id": pa.array(ids, pa.int64())}, schema=DERIVED_COMMIT_SCHEMA)
    write_parquet_atomic(table, run.derived_commit(part))


@pytest.fixture
def run(tmp_path) -> RunDir:
    run = RunDir(str(tmp_path / "run"))
    _part(run, "conv4:mean", "p0", [1, 2, 3])
    _probe_commit(run, "p0", [1, 2, 3])
    return run


def test_layer_names_with_at_keep_their_name_on_disk(run):
    assert layer_dirname("conv4:mean@sae") == "conv4__mean@sae"
    assert layer_from_dirname("conv4__mean@sae") == "conv4:mean@sae"
    assert run.activations("conv3:max@part").endswith("/activations/conv3__max@part")
    assert run.explain("conv4:mean@sae").endswith("/explain/conv4__mean@sae")
    assert is_derived_layer("conv4:mean@sae") and not is_derived_layer("conv4:mean")


def test_a_derived_part_counts_only_once_committed(run):
    _part(run, "conv4:mean@sae", "d0", [1, 2, 3], n_units=5)
    assert run.committed_parts() == {"p0"}
    assert [lp.layer for lp in run.layer_parts()] == ["conv4:mean"]
    _derived_commit(run, "conv4:mean@sae", "d0", [1, 2, 3])
    assert run.committed_parts() == {"p0", "d0"}
    layers = {lp.layer: lp for lp in run.layer_parts()}
    assert sorted(layers) == ["conv4:mean", "conv4:mean@sae"]
    assert len(layers["conv4:mean@sae"].units) == 5
    assert run.derived_committed_parts("conv4:mean@sae") == {"d0"}
    assert run.derived_committed_parts("conv3:max@part") == set()
    assert run.committed_layer_files("conv4:mean@sae")[0].endswith("part-d0.parquet")


def test_a_probe_resume_keeps_committed_derived_parts_and_drops_uncommitted_ones(run):
    _part(run, "conv4:mean@sae", "d0", [1, 2, 3])
    _derived_commit(run, "conv4:mean@sae", "d0", [1, 2, 3])
    _part(run, "conv4:mean@sae", "d1", [4])  # its writer died before the commit record
    _part(run, "conv4:mean", "p9", [4])  # an uncommitted probe batch
    # The probe passes the ids of its own commit records only.
    removed = run.remove_uncommitted(set(run.read_commits()["part"]))
    assert removed == 2
    assert run.part_files(run.activations("conv4:mean@sae")) == ["part-d0.parquet"]
    assert run.part_files(run.activations("conv4:mean")) == ["part-p0.parquet"]
    # The probe's own record of images holds no derived commit.
    assert sorted(run.read_commits()["part"].unique()) == ["p0"]


def test_remove_derived_takes_the_commit_records_first(run):
    layer = "conv4:mean@sae"
    _part(run, layer, "d0", [1, 2, 3])
    write_parquet_atomic(pa.table({"x": [1]}), run.topk_part(layer, "d0"))
    write_parquet_atomic(pa.table({"x": [1]}), run.topk(layer))
    _derived_commit(run, layer, "d0", [1, 2, 3])
    _part(run, "conv3:max@part", "e0", [1, 2, 3])
    _derived_commit(run, "conv3:max@part", "e0", [1, 2, 3])
    assert run.remove_derived(layer) == 4
    assert run.derived_committed_parts() == {"e0"}
    assert not run.exists(run.topk(layer)) and not run.part_files(run.activations(layer))
    assert sorted(lp.layer for lp in run.layer_parts()) == ["conv3:max@part", "conv4:mean"]
    with pytest.raises(ValueError, match="not a derived layer"):
        run.remove_derived("conv4:mean")


def test_a_broken_derived_part_names_its_own_commit_record(run):
    layer = "conv4:mean@sae"
    uri = run.activation_part(layer, "d0")
    _part(run, layer, "d0", [1, 2])
    with open(uri, "r+b") as fh:
        fh.truncate(40)
    with pytest.raises(PartFileError, match=r"derived/commits/d0\.parquet and rerun neuronscan explain-train"):
        read_part(uri)


def test_activations_made_elsewhere_list_derived_folders_like_any_layer(tmp_path):
    run = RunDir(str(tmp_path / "acts"))
    _part(run, "conv4:mean@sae", "x", [1, 2])
    assert [lp.layer for lp in list_layer_parts(run.activations_dir)] == ["conv4:mean@sae"]
    with pytest.raises(InputError):
        list_layer_parts(str(tmp_path / "none"))


def test_the_score_stage_scores_a_derived_layer_with_the_probed_ones(run):
    from neuronscan.config import config_from_dict
    from pipelines.score import run_score

    rng = np.random.default_rng(0)
    ids = list(range(1, 41))
    for layer, part, n_units in (("conv4:mean", "p1", 3), ("conv4:mean@sae", "d0", 4)):
        values = rng.normal(size=(len(ids), n_units)).astype(np.float32)
        values[:20, 0] += 3  # unit 0 fires on the first 20 images
        arrays = [pa.array(ids, pa.int64())] + [pa.array(values[:, k]) for k in range(n_units)]
        write_parquet_atomic(pa.Table.from_arrays(arrays, schema=activation_schema(n_units)),
                             run.activation_part(layer, part))
    # Replace the fixture's three-image part by the 40-image one, committed.
    (tmp_path_part := run.activation_part("conv4:mean", "p0"))
    import os

    os.remove(tmp_path_part)
    _probe_commit(run, "p1", ids)
    _part(run, "conv4:mean@sae", "d9", ids, n_units=4)  # uncommitted: must not be read
    _derived_commit(run, "conv4:mean@sae", "d0", ids)
    labels = pd.DataFrame({"image_id": ids, "concept": ["a"] * 20 + ["b"] * 20})
    score_cfg = config_from_dict({"data": {"folder": "."}, "model": {"name": "-", "layers": ["-"]},
                                  "score": {"n_perm": 0, "compositional": {"enabled": False},
                                            "simulation": {"enabled": False}}}).score
    summary = run_score(activations_dir=run.activations_dir, labels=labels, out_dir=run.root, score_cfg=score_cfg,
                        run_dir=run.root, quiet=True)
    assert summary.layers == {"conv4:mean": 3, "conv4:mean@sae": 4}
    neurons = pd.read_parquet(run.neurons)
    best = neurons.set_index(["layer", "unit"])["best_concept"]
    assert best[("conv4:mean@sae", 0)] == "a" and best[("conv4:mean", 0)] == "a"
