"""S3 input and output against a moto server on 127.0.0.1: probe from an s3:// manifest into an s3:// run root."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuronscan.config import config_from_dict
from neuronscan.io import get_fs, read_parquet

BUCKET = "neuronscan-test"


@pytest.fixture(scope="module")
def s3_ray(moto_s3, ray_local):
    """Moto first, so the module's Ray workers inherit the AWS_* environment."""
    moto_s3(BUCKET)
    return ray_local


def _put_images(n: int) -> pd.DataFrame:
    from PIL import Image

    fs, _ = get_fs(f"s3://{BUCKET}")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
        key = f"{BUCKET}/images/{'cat' if i % 2 else 'dog'}/{i:03d}.png"
        fs.pipe_file(key, buf.getvalue())
        rows.append({"image_id": 100 + i, "uri": f"s3://{key}", "concepts": ["cat" if i % 2 else "dog"]})
    rows.append({"image_id": 999, "uri": f"s3://{BUCKET}/images/missing.png", "concepts": ["dog"]})
    manifest = pd.DataFrame(rows)
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(manifest, preserve_index=False), sink)
    fs.pipe_file(f"{BUCKET}/manifest.parquet", sink.getvalue())
    return manifest


def test_probe_and_score_on_s3(s3_ray):
    from pipelines.audit import run_audit

    manifest = _put_images(20)
    cfg = config_from_dict({
        "run": {"out": f"s3://{BUCKET}/runs", "run_id": "s3run"},
        "data": {"manifest": f"s3://{BUCKET}/manifest.parquet"},
        "model": {"name": "tinycnn", "layers": ["conv2"], "reduce": ["mean"]},
        "probe": {"batch_size": 8, "topk": 3},
        "score": {"n_perm": 50},
    })
    result = run_audit(cfg, quiet=True, report=False)
    run_dir = f"s3://{BUCKET}/runs/tinycnn/s3run"
    assert result["run_dir"] == run_dir
    images = read_parquet(f"{run_dir}/images.parquet").to_pandas()
    assert len(images) == len(manifest) == 21
    missing = images[images["image_id"] == 999].iloc[0]
    assert missing["status"] == "failed" and missing["error"].startswith("missing")
    assert result["counts"]["ok"] == 20 and result["counts"]["failed"] == 1
    table = read_parquet(f"{run_dir}/neuron_concepts.parquet").to_pandas()
    assert len(table) == 16 * 2 and set(table["concept"]) == {"cat", "dog"}
    assert table["auc"].notna().all()
    fs, path = get_fs(f"{run_dir}/activations/conv2__mean")
    parts = fs.ls(path, detail=False)
    assert parts and all(p.rsplit("/", 1)[-1].startswith("part-") for p in parts)
    # credentials never end up in outputs
    run_json = fs.cat_file(f"{BUCKET}/runs/tinycnn/s3run/run.json").decode()
    assert "testing" not in run_json.replace("s3://neuronscan-test", "")


def test_an_s3_run_has_one_writer_and_a_stale_lease_is_taken_over(moto_s3, monkeypatch):
    """On S3 the lock is a lease created with a conditional write: a second writer is refused at once."""
    import json
    import time

    from neuronscan.io import RunLock, RunLockedError
    from neuronscan.io import _lock as lock_mod

    moto_s3(BUCKET)
    root = f"s3://{BUCKET}/runs/tinycnn/locked"
    fs, _ = get_fs(root)
    first = RunLock(root, command="neuronscan run (nightly)").acquire()
    try:
        lease = json.loads(fs.cat_file(f"{BUCKET}/runs/tinycnn/locked/run.lock"))
        assert lease["command"] == "neuronscan run (nightly)" and lease["token"] == first.holder["token"]
        with pytest.raises(RunLockedError, match=r"neuronscan run \(nightly\) on host .*, pid \d+, since 20"):
            RunLock(root, command="neuronscan run (manual)").acquire()
    finally:
        first.release()
    assert not fs.exists(f"{BUCKET}/runs/tinycnn/locked/run.lock")  # released: the lease is gone

    # A holder that died stops renewing its lease; once it is older than the TTL the next writer takes it.
    fs.pipe_file(f"{BUCKET}/runs/tinycnn/locked/run.lock",
                 json.dumps({"command": "neuronscan run (crashed)", "token": "dead", "heartbeat": time.time() - 10}
                            ).encode())
    with pytest.raises(RunLockedError, match="crashed"):
        RunLock(root).acquire()
    monkeypatch.setattr(lock_mod, "S3_LEASE_TTL_S", 5.0)
    with RunLock(root, command="neuronscan run (next)") as taken:
        lease = json.loads(fs.cat_file(f"{BUCKET}/runs/tinycnn/locked/run.lock"))
        assert lease["token"] == taken.holder["token"]
