"""Probe stage on a local Ray: salted folder, in-process equality, resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from neuronscan.config import config_from_dict
from neuronscan.data import decode_batch
from neuronscan.models import ActivationRecorder, build_model
from pipelines.probe import run_probe
from tests.salted_images import make_salted_folder

ROOT = Path(__file__).resolve().parents[2]


def _cfg(data: dict, out: Path, **probe) -> object:
    return config_from_dict(
        {
            "run": {"out": str(out), "run_id": "t"},
            "data": {**data, "max_pixels": 50_000_000},
            "model": {"name": "tinycnn", "layers": ["conv1", "conv2"], "reduce": ["mean", "max"]},
            "probe": {"batch_size": 8, "topk": 4, **probe},
        }
    )


def _activations(run_dir: Path, layer: str) -> pd.DataFrame:
    files = sorted((run_dir / "activations" / layer.replace(":", "__")).glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files]).sort_values("image_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def salted(tmp_path_factory):
    root = tmp_path_factory.mktemp("salted")
    expected = make_salted_folder(root / "images")
    return root, expected


def test_salted_folder_every_input_accounted_for(ray_local, salted, capsys):
    root, expected = salted
    run_dir = root / "run"
    summary = run_probe(_cfg({"folder": str(root / "images")}, root), str(run_dir))
    images = pd.read_parquet(run_dir / "images.parquet")
    n_inputs = len(expected)
    assert summary.n_inputs == n_inputs == len(images) == images["image_id"].nunique()
    assert summary.n_ok + summary.n_failed == n_inputs
    print(f"salted folder: processed {summary.n_ok} + failed {summary.n_failed} = {n_inputs} inputs")
    images["relpath"] = images["uri"].map(lambda u: str(Path(u).relative_to(root / "images")))
    merged = expected.merge(images, on="relpath", how="outer", validate="one_to_one", indicator=True)
    assert (merged["_merge"] == "both").all()
    assert (merged["expected"] == merged["status"]).all(), merged[merged["expected"] != merged["status"]]
    failed = merged[merged["status"] == "failed"]
    reasons = failed["error"].str.split(":", n=1).str[0]
    assert (reasons == failed["expected_reason"]).all(), failed[["relpath", "error", "expected_reason"]]
    assert (merged.loc[merged["status"] == "ok", "error"].isna()).all()
    (dangling,) = merged.loc[merged["kind"] == "dangling_symlink", "error"]
    assert dangling.startswith("missing: broken symlink:"), dangling
    assert summary.failures and sum(summary.failures.values()) == summary.n_failed
    for layer, n_units in summary.layers.items():
        acts = _activations(run_dir, layer)
        assert list(acts.columns) == ["image_id"] + [f"u{k:05d}" for k in range(n_units)]
        assert len(acts) == summary.n_ok
        assert set(acts["image_id"]) == set(images.loc[images["status"] == "ok", "image_id"])
        assert all(acts[c].dtype == np.float32 for c in acts.columns[1:])
        top = pd.read_parquet(run_dir / "topk" / f"{layer.replace(':', '__')}.parquet")
        assert len(top) == 4 * n_units
        # top-k equals the true top images of each unit
        unit = "u00001"
        true_top = acts.nlargest(4, unit)[unit].to_numpy()
        got = top[top["unit"] == 1].sort_values("rank")["value"].to_numpy()
        np.testing.assert_allclose(got, true_top, rtol=1e-6)
        assert top["loc_y"].between(0, 1).all() and top["loc_x"].between(0, 1).all()


def test_activations_equal_in_process_model(ray_local, salted):
    root, expected = salted
    run_dir = root / "run"
    images = pd.read_parquet(run_dir / "images.parquet")
    ok = images[images["status"] == "ok"].sort_values("image_id")
    blobs = [Path(u).read_bytes() for u in ok["uri"]]
    spec = build_model("tinycnn")
    pixels, good, _ = decode_batch(blobs, size=spec.input_size, max_pixels=50_000_000)
    assert good.all()
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    x = (x / 255.0 - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    rec = ActivationRecorder(spec.module, ["conv1", "conv2"], ["mean", "max"])
    with torch.inference_mode():
        outs = rec(x)
    for layer, (values, _loc) in outs.items():
        acts = _activations(run_dir, layer)
        np.testing.assert_array_equal(acts["image_id"].to_numpy(), ok["image_id"].to_numpy())
        # Same decode and weights; only batch composition and channels_last differ: float32 round-off.
        np.testing.assert_allclose(acts.iloc[:, 1:].to_numpy(), values.numpy(), rtol=1e-4, atol=1e-5)


def test_rerun_same_run_dir_skips_committed_work(ray_local, salted):
    root, _ = salted
    run_dir = root / "run"
    before = pd.read_parquet(run_dir / "images.parquet")
    summary = run_probe(_cfg({"folder": str(root / "images")}, root), str(run_dir))
    assert summary.resumed == summary.n_inputs
    after = pd.read_parquet(run_dir / "images.parquet")
    pd.testing.assert_frame_equal(before, after)


def test_several_batches_in_flight_per_actor_give_the_same_tables(ray_local, salted):
    # probe.actor_threads = 3: three __call__s at once in one actor (model under a lock, writes outside).
    root, _ = salted
    run_dir = root / "run_threads"
    summary = run_probe(_cfg({"folder": str(root / "images")}, root, batch_size=4, actor_threads=3), str(run_dir))
    base = pd.read_parquet(root / "run" / "images.parquet")
    images = pd.read_parquet(run_dir / "images.parquet")
    pd.testing.assert_frame_equal(images, base)
    assert summary.n_ok + summary.n_failed == summary.n_inputs == len(base)
    for layer in summary.layers:
        got, ref = _activations(run_dir, layer), _activations(root / "run", layer)
        np.testing.assert_array_equal(got["image_id"].to_numpy(), ref["image_id"].to_numpy())
        np.testing.assert_allclose(got.iloc[:, 1:].to_numpy(), ref.iloc[:, 1:].to_numpy(), rtol=1e-4, atol=1e-5)
        name = layer.replace(":", "__")
        top, top_ref = (pd.read_parquet(d / "topk" / f"{name}.parquet").sort_values(["unit", "rank"]) for d in
                        (run_dir, root / "run"))
        np.testing.assert_allclose(top["value"].to_numpy(), top_ref["value"].to_numpy(), rtol=1e-4, atol=1e-5)


def test_resume_after_killed_run(ray_local, tmp_path):
    world = {"shapes_world": {"root": str(tmp_path / "world"), "n_images": 240, "seed": 3}}
    cfg_path = tmp_path / "cfg.yaml"
    import yaml

    cfg_dict = {
        "run": {"out": str(tmp_path / "runs"), "run_id": "killed"},
        "data": world,
        "model": {"name": "tinycnn", "layers": ["conv2"], "reduce": ["mean"]},
        "probe": {"batch_size": 8, "topk": 4, "part_rows": 16},  # 15 parts: the kill lands between commits
        "ray": {"num_cpus": 2},
    }
    cfg_path.write_text("# neuronscan probe cfg.yaml\n" + yaml.safe_dump(cfg_dict))
    run_dir = tmp_path / "runs" / "tinycnn" / "killed"
    commits = run_dir / "probe" / "commits"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuronscan", "probe", str(cfg_path), "-q"],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and (not commits.exists() or len(list(commits.glob("*.parquet"))) < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_committed = len(list(commits.glob("*.parquet")))
    assert 3 <= n_committed < 30, "the kill should land mid-run"
    assert not (run_dir / "images.parquet").exists()
    summary = run_probe(config_from_dict(cfg_dict), str(run_dir))
    assert summary.resumed >= 3 * 8 and summary.n_ok == 240 and summary.n_failed == 0
    fresh_dict = {**cfg_dict, "run": {**cfg_dict["run"], "run_id": "fresh"}}
    run_probe(config_from_dict(fresh_dict), str(tmp_path / "runs" / "tinycnn" / "fresh"))
    resumed = _activations(run_dir, "conv2:mean")
    fresh = _activations(tmp_path / "runs" / "tinycnn" / "fresh", "conv2:mean")
    assert len(resumed) == 240 and resumed["image_id"].is_unique
    pd.testing.assert_frame_equal(resumed, fresh, rtol=1e-5)
    # no orphan parts survive the resume
    parts = {p.name[5:-8] for p in (run_dir / "activations" / "conv2__mean").glob("part-*.parquet")}
    assert parts == {p.stem for p in commits.glob("*.parquet")} - _all_failed_commits(commits)


def _all_failed_commits(commits: Path) -> set[str]:
    return {p.stem for p in commits.glob("*.parquet") if (pd.read_parquet(p)["status"] != "ok").all()}


def test_symlinked_tree_dangling_link_fails_and_every_input_is_accounted_for(ray_local, tmp_path):
    from PIL import Image

    images, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    for folder, name, colour in ((images / "red", "r.png", (220, 20, 20)), (elsewhere, "b.png", (20, 20, 220))):
        folder.mkdir(parents=True)
        Image.new("RGB", (40, 30), colour).save(folder / name)
    (images / "red" / "dangling.jpg").symlink_to(tmp_path / "gone" / "dangling.jpg")
    (images / "red" / "link.png").symlink_to(images / "red" / "r.png")  # a link to a good image reads through
    (images / "red" / "up").symlink_to("..")  # a folder loop: not followed, its files are listed already
    (images / "blue").symlink_to(elsewhere)  # a symlinked class folder is followed
    summary = run_probe(_cfg({"folder": str(images)}, tmp_path), str(tmp_path / "run"))
    table = pd.read_parquet(tmp_path / "run" / "images.parquet")
    table["relpath"] = table["uri"].map(lambda u: str(Path(u).relative_to(images)))
    assert sorted(table["relpath"]) == ["blue/b.png", "red/dangling.jpg", "red/link.png", "red/r.png"]
    assert summary.n_ok + summary.n_failed == summary.n_inputs == len(table) == 4
    assert (summary.n_ok, summary.n_failed) == (3, 1)
    (error,) = table.loc[table["status"] == "failed", "error"]
    assert error == (f"missing: broken symlink: '{images}/red/dangling.jpg' -> '{tmp_path}/gone/dangling.jpg' "
                     "does not exist")
    assert table.loc[table["relpath"] == "red/dangling.jpg", "status"].item() == "failed"
    assert summary.failures == {"missing": 1}
