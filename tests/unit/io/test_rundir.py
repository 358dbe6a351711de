"""RunDir: every path of a run, the committed-part listing, run.json, run ids and the file schemas."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest

from neuronscan.errors import InputError
from neuronscan.io import (
    COMMIT_SCHEMA,
    RunDir,
    RunInfoError,
    activation_schema,
    model_folder,
    new_run_id,
    run_alpha,
    run_id_time,
    unit_columns,
    write_parquet_atomic,
)


def _commit(run: RunDir, part: str, ids: list[int]) -> None:
    table = pa.table({"image_id": pa.array(ids, pa.int64()), "uri": [f"img{i}" for i in ids],
                      "status": ["ok"] * len(ids), "error": pa.array([None] * len(ids), pa.string())},
                     schema=COMMIT_SCHEMA)
    write_parquet_atomic(table, run.commit(part))


def _part(run: RunDir, layer: str, part: str, ids: list[int], n_units: int = 3) -> None:
    values = np.arange(len(ids) * n_units, dtype=np.float32).reshape(len(ids), n_units)
    arrays = [pa.array(ids, pa.int64())] + [pa.array(values[:, k]) for k in range(n_units)]
    write_parquet_atomic(pa.Table.from_arrays(arrays, schema=activation_schema(n_units)),
                         run.activation_part(layer, part))


def test_paths(tmp_path):
    run = RunDir(str(tmp_path / "runs" / "m" / "r1") + "/")
    root = str(tmp_path / "runs" / "m" / "r1")
    assert run.root == root and run.run_id == "r1" and not run.is_remote
    assert run.activation_part("conv4:mean", "abc") == f"{root}/activations/conv4__mean/part-abc.parquet"
    assert run.topk("conv4:mean") == f"{root}/topk/conv4__mean.parquet"
    assert run.topk_part("l:max", "p") == f"{root}/topk/_parts/l__max/part-p.parquet"
    assert run.commit("p") == f"{root}/probe/commits/p.parquet"
    assert run.clip_part("p") == f"{root}/clip/part-p.parquet"
    assert (run.images, run.neurons, run.neuron_concepts, run.info_uri, run.report) == (
        f"{root}/images.parquet", f"{root}/neurons.parquet", f"{root}/neuron_concepts.parquet",
        f"{root}/run.json", f"{root}/report")
    assert RunDir("s3://bucket/runs/m/r").activations("a") == "s3://bucket/runs/m/r/activations/a"
    assert RunDir.for_run("runs", "path/to/model.pt2", "r9").root == "runs/model.pt2/r9"
    assert RunDir.for_run("runs", "timm/vit base", "r9").root == "runs/timm_vit_base/r9"


def test_committed_parts_and_clean_up(tmp_path):
    run = RunDir(str(tmp_path))
    assert run.committed_parts() is None and run.read_commits().empty
    _part(run, "a", "p1", [0, 1])
    _part(run, "a", "p2", [2, 3])
    _commit(run, "p1", [0, 1])
    assert run.committed_parts() == {"p1"}
    commits = run.read_commits()
    assert commits["image_id"].tolist() == [0, 1] and set(commits["part"]) == {"p1"}
    layers = run.layer_parts()
    assert [lp.layer for lp in layers] == ["a"] and len(layers[0].files) == 1
    assert layers[0].units == unit_columns(3)
    assert run.committed_layer_files("a")[0].endswith("part-p1.parquet")
    (tmp_path / "activations" / "a" / ".tmp-x-part-p9.parquet").write_bytes(b"half")
    assert run.remove_uncommitted({"p1"}) == 2  # p2 never committed, and the temp file
    assert run.part_files(run.activations("a")) == ["part-p1.parquet"]
    with pytest.raises(InputError, match="no activations for layer 'b'.*layers there: a"):
        run.committed_layer_files("b")


def test_run_json(tmp_path):
    run = RunDir(str(tmp_path))
    assert run.read_info() is None and run.alpha() is None
    run.update_info({"status": "running", "counts": {"ok": 3}})
    info = run.update_info({"counts": {"failed": 1}, "score": {"alpha": 0.01}})
    assert info["counts"] == {"ok": 3, "failed": 1} and run.read_info() == info
    assert run.alpha() == 0.01
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(RunInfoError, match="cannot be read"):
        run.read_info()
    (tmp_path / "run.json").write_text(json.dumps([1]))
    with pytest.raises(RunInfoError, match="holds a list"):
        run.read_info()


def test_alpha_is_read_from_one_key_first():
    assert run_alpha({"score": {"alpha": 0.01}, "alpha": 0.2, "config": {"score": {"alpha": 0.3}}}) == 0.01
    # runs written before score.alpha existed
    assert run_alpha({"alpha": 0.2}) == 0.2
    assert run_alpha({"score": {"fdr": {"alpha": 0.1}}}) == 0.1
    assert run_alpha({"config": {"score": {"alpha": 0.3}}}) == 0.3
    assert run_alpha({"score": {"alpha": True}, "alpha": 5}) is None


def test_run_ids():
    rid = new_run_id()
    when = run_id_time(rid)
    assert when is not None and abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 5
    assert run_id_time("nightly") is None
    assert new_run_id() != rid
    assert model_folder("") == "model"


def test_parts_that_disagree_on_units_are_an_error(tmp_path):
    """The alphabetically first part lacking a unit column used to renumber every unit after it."""
    from neuronscan.io import list_layer_parts

    run = RunDir(str(tmp_path))
    _part(run, "a", "p2", [2, 3], n_units=3)
    table = pa.table({"image_id": pa.array([0, 1], pa.int64()), "u00000": pa.array([1.0, 2.0], pa.float32()),
                      "u00002": pa.array([1.0, 2.0], pa.float32())})
    write_parquet_atomic(table, run.activation_part("a", "p1"))
    with pytest.raises(InputError, match=r"part-p2\.parquet.*part-p1\.parquet.*extra \['u00001'\]"):
        list_layer_parts(run.activations_dir)
    (tmp_path / "activations" / "a" / "part-p1.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(InputError, match=r"part-p1\.parquet.*cannot be read as Parquet"):
        list_layer_parts(run.activations_dir)
