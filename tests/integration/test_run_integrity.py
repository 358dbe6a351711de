"""Runs that cannot lie: a resume checks what it resumes, one writer per run, a rescore records itself.

Each test reproduces a way a run's outputs could look whole and not be: a resume after a config change,
two writers on one run id, ``score --run --set`` leaving run.json at the old settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from neuronscan.config import config_from_dict
from neuronscan.errors import RunMismatchError
from neuronscan.io import RunDir, RunLock, RunLockedError
from pipelines import run_audit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from neuronscan.demo.shapes import generate_shapes_world

    root = tmp_path_factory.mktemp("integrity")
    generate_shapes_world(str(root / "world"), n_images=64, seed=5, size=32)
    return root


def _checkpoint(path: Path, seed: int) -> str:
    from neuronscan.models import build_model

    module = build_model("tinycnn").module
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
             for k, v in module.state_dict().items()}
    torch.save(state, path)
    return str(path)


def _cfg(root: Path, run_id: str, **model) -> dict:
    return {
        "run": {"out": str(root / "runs"), "run_id": run_id},
        "data": {"shapes_world": {"root": str(root / "world"), "n_images": 64, "seed": 5, "size": 32}},
        "model": {"name": "tinycnn", "layers": ["conv2"], "reduce": ["mean"], **model},
        "probe": {"batch_size": 8, "topk": 4, "part_rows": 8},
        "score": {"n_perm": 0, "compositional": {"enabled": False}},
        "ray": {"num_cpus": 2},
    }


def _neuron_concepts(run_dir: Path) -> pd.DataFrame:
    df = pd.read_parquet(run_dir / "neuron_concepts.parquet")
    return df.sort_values(["layer", "unit", "concept"]).reset_index(drop=True)


def _kill_after_some_commits(run_dir: Path, keep: int) -> None:
    """What a kill leaves: a few committed batches, no images.parquet, no tables, run.json "running"."""
    commits = sorted((run_dir / "probe" / "commits").glob("*.parquet"))
    for c in commits[keep:]:
        c.unlink()
    for name in ("images.parquet", "neuron_concepts.parquet", "neurons.parquet"):
        (run_dir / name).unlink(missing_ok=True)
    RunDir(str(run_dir)).update_info({"status": "running"})


def test_a_resume_with_another_checkpoint_is_refused_naming_the_keys(ray_local, world, tmp_path):
    first = _checkpoint(tmp_path / "a.pt", seed=1)
    second = _checkpoint(tmp_path / "b.pt", seed=2)
    cfg_a = config_from_dict(_cfg(world, "swap", checkpoint=first))
    run_audit(cfg_a, quiet=True, report=False)
    run_dir = world / "runs" / "tinycnn" / "swap"
    _kill_after_some_commits(run_dir, keep=3)
    before = json.loads((run_dir / "run.json").read_text())

    with pytest.raises(RunMismatchError) as err:
        run_audit(config_from_dict(_cfg(world, "swap", checkpoint=second)), quiet=True, report=False)
    msg = str(err.value)
    assert "model.state_sha256" in msg and "--restart" in msg and "new run id" in msg, msg
    assert "model.layers" not in msg  # only what differs is named
    # Nothing was written: run.json still describes the first weights, no new part appeared.
    assert json.loads((run_dir / "run.json").read_text()) == before
    assert len(list((run_dir / "probe" / "commits").glob("*.parquet"))) == 3

    # The same weights resume; the table equals a clean run's.
    run_audit(cfg_a, quiet=True, report=False)
    run_audit(config_from_dict(_cfg(world, "clean_a", checkpoint=first)), quiet=True, report=False)
    pd.testing.assert_frame_equal(_neuron_concepts(run_dir), _neuron_concepts(world / "runs" / "tinycnn" / "clean_a"))

    # --restart: the second weights from nothing, equal to a clean run with them; run.json says so.
    info = run_audit(config_from_dict(_cfg(world, "swap", checkpoint=second)), quiet=True, report=False,
                     restart=True)
    run_audit(config_from_dict(_cfg(world, "clean_b", checkpoint=second)), quiet=True, report=False)
    pd.testing.assert_frame_equal(_neuron_concepts(run_dir), _neuron_concepts(world / "runs" / "tinycnn" / "clean_b"))
    assert info["status"] == "complete" and info["config"]["model"]["checkpoint"] == second
    assert info["fingerprint"]["model.state_sha256"] != before["fingerprint"]["model.state_sha256"]


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"model": {"layers": ["conv1"]}}, "model.layers"),
        ({"model": {"reduce": ["max"]}}, "model.reduce"),
        ({"data": {"limit": 40}}, "inputs.sha256"),
        ({"data": {"image_size": 40}}, "data.image_size"),
        ({"model": {"mean": [0.4, 0.45, 0.5]}}, "model.mean"),
    ],
)
def test_rerunning_a_complete_run_with_other_settings_is_refused(ray_local, world, change, key):
    base = _cfg(world, "complete")
    run_dir = world / "runs" / "tinycnn" / "complete"
    if not (run_dir / "run.json").exists():
        run_audit(config_from_dict(base), quiet=True, report=False)
    before = (run_dir / "run.json").read_text()
    changed = {**base, **{k: {**base.get(k, {}), **v} for k, v in change.items()}}
    with pytest.raises(RunMismatchError, match=key.replace(".", r"\.")):
        run_audit(config_from_dict(changed), quiet=True, report=False)
    assert (run_dir / "run.json").read_text() == before


def test_a_run_records_its_fingerprint_and_a_matching_rerun_is_accepted(ray_local, world):
    base = _cfg(world, "complete")
    run_dir = world / "runs" / "tinycnn" / "complete"
    if not (run_dir / "run.json").exists():
        run_audit(config_from_dict(base), quiet=True, report=False)
    fp = json.loads((run_dir / "run.json").read_text())["fingerprint"]
    assert fp["model.layers"] == ["conv2"] and fp["inputs.count"] == 64 and len(fp["model.state_sha256"]) == 64
    assert fp["model.mean"] and fp["data.image_size"] == 32 and fp["neuronscan"]
    # Settings outside the fingerprint (the batch size, the score section) may change on a rerun.
    again = {**base, "probe": {**base["probe"], "batch_size": 16}}
    info = run_audit(config_from_dict(again), quiet=True, report=False)
    assert info["status"] == "complete" and info["fingerprint"] == fp


def test_a_second_writer_on_a_run_id_is_refused_at_once(tmp_path):
    root = tmp_path / "runs" / "m" / "r1"
    with RunLock(str(root), command="neuronscan run (first)"):
        t = time.perf_counter()
        with pytest.raises(RunLockedError) as err:
            RunLock(str(root), command="neuronscan run (second)").acquire()
        assert time.perf_counter() - t < 1.0
        msg = str(err.value)
        assert "neuronscan run (first)" in msg and f"pid {os.getpid()}" in msg and "since 20" in msg, msg
    # Released: the next writer gets it.
    with RunLock(str(root)):
        pass


def test_a_crashed_holder_leaves_no_stale_lock(tmp_path):
    root = tmp_path / "runs" / "m" / "r2"
    code = ("import os, sys; from neuronscan.io import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); os._exit(9)")
    proc = subprocess.run([sys.executable, "-c", code, str(root)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 9 and "held" in proc.stdout, proc.stderr
    assert (root / "run.lock").exists()
    with RunLock(str(root)):  # the kernel dropped the flock with the process
        pass


def test_two_cli_runs_on_one_run_id_the_second_is_refused(ray_local, world, tmp_path):
    """A nightly job and a manual rerun: the second `neuronscan run` exits 2 at once, naming the first."""
    cfg_path = tmp_path / "cfg.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(_cfg(world, "contended")))
    run_dir = world / "runs" / "tinycnn" / "contended"
    holder = RunLock(str(run_dir), command="neuronscan run (nightly)").acquire()
    try:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "neuronscan", "run", str(cfg_path), "-q"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
        elapsed = time.perf_counter() - t
    finally:
        holder.release()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: run ") and "neuronscan run (nightly)" in proc.stderr, proc.stderr
    assert elapsed < 30, "refused before Ray starts or anything is written"
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.lock"]


def test_rescoring_with_overrides_rewrites_run_json_and_the_report(ray_local, world, tmp_path):
    from neuronscan.cli import main

    run_dir = world / "runs" / "tinycnn" / "rescored"
    run_audit(config_from_dict(_cfg(world, "rescored")), quiet=True, report=True)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["score"]["alpha"] == 0.05 and info["config"]["score"]["alpha"] == 0.05

    assert main(["score", "--run", str(run_dir), "--set", "score.alpha=0.2", "-q"]) == 0
    after = json.loads((run_dir / "run.json").read_text())
    nc = pd.read_parquet(run_dir / "neuron_concepts.parquet")
    expect = int(((nc["q_value"] <= 0.2) & (nc["auc"] > 0.5)).sum())
    assert after["score"]["alpha"] == 0.2 and after["config"]["score"]["alpha"] == 0.2
    assert after["counts"]["significant_pairs"] == expect > info["counts"]["significant_pairs"]
    # The probe's record and the rest of the config are untouched.
    assert after["fingerprint"] == info["fingerprint"] and after["config"]["model"] == info["config"]["model"]
    html = (run_dir / "report" / "index.html").read_text()
    assert "0.2" in html and f"{expect:,}" in html
    np.testing.assert_array_equal(nc["auc"].to_numpy(), pd.read_parquet(run_dir / "neuron_concepts.parquet")["auc"])


# -- part files that are verified -----------------------------------------------------------------------


def _flip(path: Path, n: int = 64) -> None:
    """Flip ``n`` bytes inside the data of the last unit column's chunk (past its page header)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = meta.column(meta.num_columns - 1)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    end = start + chunk.total_compressed_size
    raw = bytearray(path.read_bytes())
    for i in range(end - n - 8, end - 8):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def _score_cli(capsys, *args) -> tuple[int, str]:
    from neuronscan.cli import main

    capsys.readouterr()
    code = main(["score", *map(str, args), "-q"])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def probed(ray_local, world):
    run_audit(config_from_dict(_cfg(world, "parts")), quiet=True, report=False)
    return world / "runs" / "tinycnn" / "parts"


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    (dst / "run.lock").unlink(missing_ok=True)
    return dst


def test_a_part_with_flipped_bytes_is_an_error_naming_the_file(probed, tmp_path, capsys):
    run_dir = _copy_run(probed, tmp_path / "flipped")
    part = sorted((run_dir / "activations" / "conv2__mean").glob("part-*.parquet"))[2]
    _flip(part)
    code, err = _score_cli(capsys, "--run", run_dir)
    assert code == 2, err
    assert err.startswith("error: part file ") and str(part) in err and "Traceback" not in err, err
    assert f"probe/commits/{part.name[5:-8]}.parquet" in err  # how to redo its batch
    # Nothing was rewritten from the corrupt values.
    assert (run_dir / "neuron_concepts.parquet").read_bytes() == (probed / "neuron_concepts.parquet").read_bytes()


def test_the_same_flip_without_checksums_would_pass_silently(tmp_path):
    """Why the checksums matter: pyarrow reads the flipped file of a writer without them as ordinary data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    table = pa.table({"image_id": np.arange(64), "u00000": rng.random(64, dtype=np.float32),
                      "u00001": rng.random(64, dtype=np.float32)})
    plain = tmp_path / "plain.parquet"
    pq.write_table(table, plain, compression="zstd")
    _flip(plain, n=16)
    read = pq.read_table(plain)
    assert not np.array_equal(read.column("u00001").to_numpy(), table.column("u00001").to_numpy())


def test_conflicting_duplicate_rows_are_an_error_naming_both_files(probed, tmp_path, capsys):
    import pyarrow as pa

    from neuronscan.io import write_parquet_atomic

    run_dir = _copy_run(probed, tmp_path / "dups")
    layer = run_dir / "activations" / "conv2__mean"
    first = sorted(layer.glob("part-*.parquet"))[0]
    df = pd.read_parquet(first)
    commit = run_dir / "probe" / "commits" / f"{first.name[5:-8]}.parquet"

    # An identical copy (a retried batch): agreed values are fine, and counted.
    twin = layer / "part-zzsame.parquet"
    write_parquet_atomic(pa.Table.from_pandas(df, preserve_index=False), str(twin))
    (run_dir / "probe" / "commits" / "zzsame.parquet").write_bytes(commit.read_bytes())
    code, err = _score_cli(capsys, "--run", run_dir)
    assert code == 0, err
    assert json.loads((run_dir / "run.json").read_text())["score"]["duplicate_image_rows"] == len(df)
    pd.testing.assert_frame_equal(_neuron_concepts(run_dir), _neuron_concepts(probed))

    # A copy whose values differ: an error naming both files, nothing rewritten.
    twin.unlink()
    changed = df.copy()
    changed.loc[changed.index[1], "u00003"] += 1.0
    other = layer / "part-zzother.parquet"
    write_parquet_atomic(pa.Table.from_pandas(changed, preserve_index=False), str(other))
    (run_dir / "probe" / "commits" / "zzother.parquet").write_bytes(commit.read_bytes())
    (run_dir / "probe" / "commits" / "zzsame.parquet").unlink()
    code, err = _score_cli(capsys, "--run", run_dir)
    assert code == 2, err
    assert f"image {int(df['image_id'].iloc[1])} has different activations" in err, err
    assert str(first) in err and str(other) in err and "u00003" in err, err


def _activations_dir(root: Path, frames: dict[str, pd.DataFrame]) -> tuple[Path, Path]:
    import pyarrow as pa

    from neuronscan.io import write_parquet_atomic

    acts = root / "acts" / "layer"
    acts.mkdir(parents=True)
    for name, df in frames.items():
        write_parquet_atomic(pa.Table.from_pandas(df, preserve_index=False), str(acts / f"part-{name}.parquet"))
    labels = root / "labels.parquet"
    pd.DataFrame({"image_id": np.arange(0, 40, 2), "concept": "even"}).to_parquet(labels)
    return root / "acts", labels


def _units(ids, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"image_id": np.asarray(ids, dtype=np.int64),
                         **{f"u{k:05d}": rng.random(len(ids), dtype=np.float32) for k in range(3)}})


@pytest.mark.parametrize("case", ["string_image_id", "truncated", "not_parquet", "float_image_id", "text_unit"])
def test_a_bad_part_file_is_one_line_naming_it(ray_local, tmp_path, capsys, case):
    good = _units(range(20))
    bad = _units(range(20, 40), seed=1)
    if case == "string_image_id":
        bad["image_id"] = [f"img_{i}" for i in bad["image_id"]]
    elif case == "float_image_id":
        bad["image_id"] = bad["image_id"] + 0.5
    elif case == "text_unit":
        bad["u00001"] = bad["u00001"].astype(str)
    acts, labels = _activations_dir(tmp_path, {"a": good, "b": bad})
    target = acts / "layer" / "part-b.parquet"
    if case == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif case == "not_parquet":
        target.write_text("image_id,u00000\n1,0.5\n")
    code, err = _score_cli(capsys, "--activations", acts, "--labels", labels, "--out", tmp_path / "out")
    assert code == 2, err
    assert err.startswith("error: part file ") and str(target) in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_score_retries_exhausted_is_one_line_naming_the_units(ray_local, tmp_path, capsys, monkeypatch):
    import pipelines.score as score_mod

    def crash(*args, **kwargs):  # the worker dies on every attempt (as when the OOM killer takes it)
        os._exit(1)

    monkeypatch.setattr(score_mod, "score_shard", crash)
    acts, labels = _activations_dir(tmp_path, {"a": _units(range(40))})
    code, err = _score_cli(capsys, "--activations", acts, "--labels", labels, "--out", tmp_path / "out")
    assert code == 2, err
    assert "score task for layer layer units u00000–u00002 failed on all 3 attempts" in err, err
    assert "score.units_per_shard" in err and "Traceback" not in err, err


def test_the_part_size_changes_the_files_not_the_tables(ray_local, world):
    """One part per batch (how runs were written before parts were sized) and one part for the whole run:
    the same neuron_concepts, neurons and top-M tables; the run with one part per batch still scores."""
    tables = {}
    for rows in (8, 64):
        cfg = _cfg(world, f"rows{rows}")
        cfg["probe"] = {**cfg["probe"], "part_rows": rows}
        run_audit(config_from_dict(cfg), quiet=True, report=False)
        run_dir = world / "runs" / "tinycnn" / f"rows{rows}"
        n_parts = len(list((run_dir / "activations" / "conv2__mean").glob("part-*.parquet")))
        assert n_parts == 64 // rows
        top = pd.read_parquet(run_dir / "topk" / "conv2__mean.parquet").sort_values(["unit", "rank"])
        neurons = pd.read_parquet(run_dir / "neurons.parquet").sort_values(["layer", "unit"])
        tables[rows] = (_neuron_concepts(run_dir), neurons.reset_index(drop=True), top.reset_index(drop=True))
    for a, b in zip(tables[8], tables[64]):
        pd.testing.assert_frame_equal(a, b)
