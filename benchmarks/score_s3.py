"""Score a probe-shaped run directory on S3 (a moto server on 127.0.0.1) and count the S3 requests.

Makes a run directory as `benchmarks/score_scale.py` does (the probe's part size and writer, commit records,
labels, run.json), uploads it to ``s3://neuronscan-bench/runs/bench``, runs
``python -m neuronscan score --run s3://…`` in a child process with the AWS environment pointing at moto,
and counts every request the server received, by method, while the child ran. The shard count comes
from the score's own plan (units / score.units_per_shard).

    python benchmarks/score_s3.py                                   # 65,536 images × 256 units × 100 concepts
    python benchmarks/score_s3.py --rows-per-part 256               # one part per batch of 256: many more GETs

Prints a summary and writes JSON (default benchmarks/results/score_s3.json).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BUCKET = "neuronscan-bench"


class _Counter(logging.Handler):
    """Counts werkzeug's access-log lines (one per request the moto server answered), by method."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()
        self.enabled = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.enabled:
            return
        msg = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())  # werkzeug colours some status lines
        for method in ("GET", "HEAD", "PUT", "POST", "DELETE"):
            if f'"{method} ' in msg:
                self.counts[method] += 1
                return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=65_536)
    p.add_argument("--n-units", type=int, default=256)
    p.add_argument("--n-concepts", type=int, default=100)
    p.add_argument("--rows-per-part", type=int, default=None, help="default: the probe's part size")
    p.add_argument("--units-per-shard", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "score_s3.json")
    args = p.parse_args(argv)

    import boto3
    from moto.server import ThreadedMotoServer

    from neuronscan.config import config_from_dict
    from pipelines.probe import part_rows

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from score_scale import generate  # the benchmark beside this one

    if args.rows_per_part is None:
        probe = config_from_dict({"data": {"folder": "x"}, "model": {"name": "m", "layers": ["l"]}}).probe
        args.rows_per_part = part_rows(probe, args.n_units)
    counter = _Counter()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.addHandler(counter)
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False  # counted, not printed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=True)  # verbose: every request is logged
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT),
           "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                          region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp), args.n_images, args.n_units, args.n_concepts, args.rows_per_part, seed=0)
            run_local = Path(tmp) / "run"
            files = [f for f in run_local.rglob("*") if f.is_file()]
            for f in files:
                s3.upload_file(str(f), BUCKET, f"runs/bench/{f.relative_to(run_local)}")
        n_parts = sum(1 for f in files if f.name.startswith("part-"))
        run_uri = f"s3://{BUCKET}/runs/bench"
        cmd = [sys.executable, "-m", "neuronscan", "score", "--run", run_uri, "-q",
               "--set", "score.n_perm=0", "--set", "score.compositional.enabled=false",
               "--set", f"score.units_per_shard={args.units_per_shard}"]
        counter.enabled = True
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        counter.enabled = False
        if proc.returncode != 0:
            raise SystemExit(f"neuronscan score failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    finally:
        server.stop()
    n_shards = math.ceil(args.n_units / args.units_per_shard)
    total = sum(counter.counts.values())
    reads = counter.counts["GET"] + counter.counts["HEAD"]
    result = {
        "benchmark": "score_s3", "n_images": args.n_images, "n_units": args.n_units, "n_concepts": args.n_concepts,
        "rows_per_part": args.rows_per_part, "parts": n_parts, "units_per_shard": args.units_per_shard,
        "shards": n_shards, "seconds": seconds, "requests": dict(counter.counts), "requests_total": total,
        "read_requests_per_shard": reads / n_shards, "read_requests_per_shard_per_part": reads / n_shards / n_parts,
        "command": " ".join(cmd[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{n_parts} parts of ≤ {args.rows_per_part:,} rows, {n_shards} shards: {total:,} S3 requests "
          f"({dict(counter.counts)}) in {seconds:.1f} s; {reads / n_shards:,.1f} GET/HEAD per shard → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
