"""The probe actor and the part writer, called in-process (no Ray): values out, parts + commit, exact top-M."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import pipelines.probe as probe_mod
from neuronscan.io import RunDir
from pipelines.probe import ActivationProbe, _merge_topk, top_entries, write_parts


def _batch(ids, rng):
    n = len(ids)
    pixels = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    pixels.flags.writeable = False  # Ray hands batches over read-only
    return {"image_id": np.asarray(ids), "ok": np.ones(n, bool), "error": np.array([""] * n, object),
            "uri": np.array([f"img{i}" for i in ids], object), "pixels": pixels}


@pytest.fixture
def actor():
    return ActivationProbe(model={"name": "tinycnn"}, layers=["conv2"], reduce=["max"])


def _write(actor, batch, out, topk=3):
    return write_parts(actor(batch), out=str(out), outputs=["conv2:max"], topk=topk)


def test_a_part_that_failed_to_commit_counts_for_nothing(actor, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    first, second = _batch(range(0, 8), rng), _batch(range(8, 16), rng)
    real_write = probe_mod.write_parquet_atomic

    def failing_commit(table, uri, **kw):
        if "/commits/" in uri:
            raise OSError("disk full")
        return real_write(table, uri, **kw)

    monkeypatch.setattr(probe_mod, "write_parquet_atomic", failing_commit)
    with pytest.raises(OSError):
        _write(actor, second, tmp_path)  # its parts are written, its commit is not
    monkeypatch.setattr(probe_mod, "write_parquet_atomic", real_write)
    run = RunDir(str(tmp_path))
    assert run.committed_parts() in (None, set())
    assert run.remove_uncommitted(set()) == 2  # what a resume does: the activation and top-M parts go
    _write(actor, first, tmp_path)
    _write(actor, second, tmp_path)  # the retry writes its own top entries
    _merge_topk(str(tmp_path), "conv2:max", 3)
    top = pd.read_parquet(tmp_path / "topk" / "conv2__max.parquet")
    acts = pd.concat(pd.read_parquet(f) for f in (tmp_path / "activations" / "conv2__max").glob("*.parquet"))
    assert sorted(acts["image_id"]) == list(range(16))
    for unit in range(3):
        col = f"u{unit:05d}"
        expected = acts.nlargest(3, col)[col].to_numpy()
        got = top[top["unit"] == unit].sort_values("rank")["value"].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_the_actor_writes_nothing_and_returns_every_unit(actor, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    batch = _batch(range(5), np.random.default_rng(3))
    batch["ok"] = np.array([True, False, True, True, True])
    batch["error"] = np.array(["", "not_an_image: x", "", "", ""], object)
    out = actor(batch)
    assert list(tmp_path.iterdir()) == []
    assert out["v:conv2:max"].shape == (5, 16) and out["loc:conv2:max"].shape == (5, 16, 2)
    assert np.isnan(out["v:conv2:max"][1]).all() and np.isfinite(out["v:conv2:max"][[0, 2, 3, 4]]).all()
    assert out["ok"].tolist() == [True, False, True, True, True]
    assert out["error"][1] == "not_an_image: x" and out["error"][0] is None


def _top_oracle(ids, values, m):
    rows = []
    for k in range(values.shape[1]):
        v = np.where(np.isnan(values[:, k]), -np.inf, values[:, k])
        order = sorted(range(len(ids)), key=lambda i: (-v[i], ids[i]))[:m]
        rows += [(k, r, ids[i], v[i]) for r, i in enumerate(order)]
    return rows


@pytest.mark.parametrize("case", ["random", "ties", "constant", "nan", "fewer_rows_than_m"])
def test_top_entries_match_a_sort_by_value_then_image_id(case):
    rng = np.random.default_rng(4)
    n, k, m = (3, 4, 5) if case == "fewer_rows_than_m" else (40, 300, 5)
    ids = rng.permutation(1000)[:n].astype(np.int64)  # rows not in id order
    values = rng.normal(size=(n, k)).astype(np.float32)
    if case == "ties":
        values = np.round(values, 0)
    elif case == "constant":
        values[:, :50] = 0.0
    elif case == "nan":
        values[rng.random((n, k)) < 0.3] = np.nan
        values[:, 7] = np.nan
    loc = rng.random((n, k, 2)).astype(np.float16)
    table = top_entries(ids, values, loc, m).to_pandas()
    got = list(zip(table["unit"], table["rank"], table["image_id"], table["value"]))
    assert got == [(u, r, i, np.float32(v)) for u, r, i, v in _top_oracle(ids, values, m)]
    row_of = {int(i): j for j, i in enumerate(ids)}
    for row in table.itertuples():
        np.testing.assert_array_equal([row.loc_y, row.loc_x], loc[row_of[row.image_id], row.unit].astype(np.float32))


def test_read_only_batches_are_not_copied_or_written(actor):
    rng = np.random.default_rng(1)
    batch = _batch(range(4), rng)
    before = batch["pixels"].copy()
    out = actor(batch)
    assert out["ok"].all()
    np.testing.assert_array_equal(batch["pixels"], before)


def test_model_mean_and_std_reach_the_actors_normalisation(tmp_path):
    model = {"name": "tinycnn", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    probe = ActivationProbe(model=model, layers=["conv2"], reduce=["max"])
    pixels = np.full((1, 8, 8, 3), 191, dtype=np.uint8)
    x = probe.torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    normalised = (x - probe.mean) / probe.std
    # (191 - 127.5) / 63.75 = 0.996...: the configured mean/std on the 0..255 scale, not ImageNet's
    np.testing.assert_allclose(normalised.numpy(), (191 - 127.5) / 63.75, rtol=1e-6)


def test_model_mean_and_std_change_the_activations_as_the_normalisation_says(tmp_path):
    import torch

    from neuronscan.models import ActivationRecorder, build_model

    batch = _batch(range(6), np.random.default_rng(2))
    mean, std = (0.2, 0.4, 0.6), (0.1, 0.2, 0.3)
    runs = {}
    for label, extra in (("default", {}), ("custom", {"mean": mean, "std": std})):
        out = tmp_path / label
        probe = ActivationProbe(model={"name": "tinycnn", **extra}, layers=["conv2"], reduce=["mean"])
        write_parts(probe(batch), out=str(out), outputs=["conv2:mean"], topk=3)
        runs[label] = (pd.concat(pd.read_parquet(f) for f in (out / "activations" / "conv2__mean").glob("*.parquet"))
                       .sort_values("image_id").drop(columns="image_id").to_numpy())
    assert not np.allclose(runs["default"], runs["custom"])
    # the custom run equals the model applied by hand to (pixels / 255 - mean) / std
    spec = build_model("tinycnn")
    x = torch.from_numpy(np.array(batch["pixels"])).permute(0, 3, 1, 2).float() / 255
    for label, (m, s) in (("default", (spec.mean, spec.std)), ("custom", (mean, std))):
        normalised = (x - torch.tensor(m).view(1, 3, 1, 1)) / torch.tensor(s).view(1, 3, 1, 1)
        rec = ActivationRecorder(spec.module, ["conv2"], ["mean"])
        with torch.inference_mode():
            expected = rec(normalised)["conv2:mean"][0].numpy()
        rec.close()
        np.testing.assert_allclose(runs[label], expected, rtol=1e-4, atol=1e-5)


def test_a_writer_whose_run_ended_commits_nothing(actor, tmp_path):
    """A part writer of a killed driver (Ray workers outlive it) must not commit into the run a resume holds."""
    from neuronscan.io import RunLock, RunLockedError

    out = actor(_batch(range(4), np.random.default_rng(5)))
    with RunLock(str(tmp_path)) as lock:
        write_parts(out, out=str(tmp_path), outputs=["conv2:max"], topk=3, lock_token=lock.holder["token"])
        with pytest.raises(RunLockedError, match="not committed"):
            write_parts(out, out=str(tmp_path), outputs=["conv2:max"], topk=3, lock_token="a-dead-driver")
    assert len(RunDir(str(tmp_path)).committed_parts()) == 1
