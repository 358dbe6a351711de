"""Credentials never reach an output: a run salted with unique fake secrets, in the environment and in URIs.

A moto S3 server on 127.0.0.1 serves the images; the manifest mixes a plain ``s3://`` URI (read with the
environment's credentials), an ``s3://KEY:SECRET@bucket/…`` URI, and ``http://user:password@127.0.0.1/…``
URIs (one that exists, one that does not). The whole audit runs through the CLI; then every file the run
wrote (Parquet decoded, so compression hides nothing), and its stdout and stderr, are searched for each
secret.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "salted-images"


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


def _texts(path: Path) -> list[str]:
    """What a file holds, as text: raw bytes, and for Parquet every decoded value and the schema metadata."""
    raw = path.read_bytes()
    out = [raw.decode("utf-8", "replace")]
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        out.append(str(table.schema.metadata))
        out.append(repr(table.to_pylist()))
    return out


def test_no_secret_reaches_any_output(moto_endpoint, tmp_path):
    import boto3
    from PIL import Image

    salt = uuid.uuid4().hex[:10]
    secrets = {
        "env key id": f"AKIAENV{salt}",
        "env secret": f"envSecret{salt}xyz",
        "env token": f"envToken{salt}xyz",
        "uri key": f"AKIAURI{salt}",
        "uri secret": f"uriSecret{salt}xyz",
        "http user": f"httpUser{salt}",
        "http password": f"httpPw{salt}xyz",
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           "AWS_ACCESS_KEY_ID": secrets["env key id"], "AWS_SECRET_ACCESS_KEY": secrets["env secret"],
           "AWS_SESSION_TOKEN": secrets["env token"], "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{moto_endpoint}"}
    env.pop("AWS_PROFILE", None)
    s3 = boto3.client("s3", endpoint_url=f"http://{moto_endpoint}", aws_access_key_id="x",
                      aws_secret_access_key="y", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    rng = np.random.default_rng(0)
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, format="PNG")
        s3.put_object(Bucket=BUCKET, Key=f"img/{i}.png", Body=buf.getvalue())
    userinfo = f"{secrets['http user']}:{secrets['http password']}"
    rows = [
        (0, f"s3://{BUCKET}/img/0.png", "cat"),
        (1, f"s3://{secrets['uri key']}:{secrets['uri secret']}@{BUCKET}/img/1.png", "dog"),
        (2, f"http://{userinfo}@{moto_endpoint}/{BUCKET}/img/2.png", "cat"),
        (3, f"http://{userinfo}@{moto_endpoint}/{BUCKET}/img/missing.png", "dog"),
        (4, f"s3://{BUCKET}/img/3.png", "dog"),
    ]
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame([{"image_id": i, "uri": u, "concepts": [c]} for i, u, c in rows]).to_parquet(manifest)
    cfg = tmp_path / "salted.yaml"
    cfg.write_text(f"run: {{out: {tmp_path / 'runs'}, run_id: salted}}\ndata: {{manifest: {manifest}}}\n"
                   "model: {name: tinycnn, layers: [conv1]}\nprobe: {batch_size: 2}\nscore: {n_perm: 0}\n")
    proc = subprocess.run([sys.executable, "-m", "neuronscan", "run", str(cfg)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    run_dir = tmp_path / "runs" / "tinycnn" / "salted"
    images = pd.read_parquet(run_dir / "images.parquet").set_index("image_id")
    # The run used the credentials: the env-credential and http-userinfo images were read.
    assert images.loc[0, "status"] == "ok" and images.loc[2, "status"] == "ok" and images.loc[4, "status"] == "ok"
    assert images.loc[1, "status"] == "failed" and "cannot carry credentials" in images.loc[1, "error"]
    assert images.loc[3, "status"] == "failed"
    # URIs are kept, without their userinfo.
    assert images.loc[2, "uri"] == f"http://***@{moto_endpoint}/{BUCKET}/img/2.png"
    assert images.loc[1, "uri"] == f"s3://***@{BUCKET}/img/1.png"
    assert (run_dir / "report" / "index.html").exists()

    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 10 and any(p.suffix == ".parquet" for p in files)
    outputs = {str(p.relative_to(run_dir)): "\n".join(_texts(p)) for p in files}
    outputs["<stdout>"] = proc.stdout
    outputs["<stderr>"] = proc.stderr
    leaks = [f"{what} in {name}" for name, text in outputs.items() for what, secret in secrets.items()
             if secret in text]
    assert leaks == [], leaks
    # The check can fail: the secrets are in what the run was given.
    given = repr(pq.read_table(manifest).to_pylist()) + json.dumps(env)
    assert all(secret in given for secret in secrets.values())
