"""Score at ImageNet scale through `neuronscan score --run`: wall time and peak memory of the whole process tree.

Writes a run directory exactly as the probe leaves it: ``activations/<layer>/part-<id>.parquet`` of the
probe's default part size (`pipelines.probe.part_rows` for the layer's units: 32,768 rows for 2,048 units),
written by the probe's writer (`write_parquet_atomic`: zstd, dictionary/statistics on image_id only, page
checksums), one commit record per part, ``labels.parquet`` and a ``run.json`` with the config. Values are
ReLU-like with exact zeros, some units wired to concepts; labels are ImageNet-like (every image positive
for one of C classes). Then it runs ``python -m neuronscan score --run RUN`` in a child process and samples
the proportional set size (PSS, so Ray's shared object store is not counted twice) of the child and every
process under it.

    python benchmarks/score_scale.py --n-images 1280000 --n-units 2048 --n-concepts 1000
    python benchmarks/score_scale.py --n-images 50000 --n-units 256 --n-concepts 100   # quick look
    python benchmarks/score_scale.py --rows-per-part 256 ...   # the layout of one part per batch of 256

Prints a summary and writes JSON (default benchmarks/results/score_scale.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]


def generate(root: Path, n_images: int, n_units: int, n_concepts: int, rows_per_part: int, seed: int) -> dict:
    """Write the run directory ``root/run`` unless the same dataset is already there."""
    import uuid

    from neuronscan.config import config_from_dict
    from neuronscan.io import COMMIT_SCHEMA, LABELS_SCHEMA, RunDir, write_parquet_atomic

    marker = root / "dataset.json"
    params = {"layout": "probe", "n_images": n_images, "n_units": n_units, "n_concepts": n_concepts,
              "rows_per_part": rows_per_part, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == params:
        return params
    import shutil

    shutil.rmtree(root / "run", ignore_errors=True)
    run = RunDir(str(root / "run"))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_concepts, size=n_images)
    planted = rng.integers(0, n_concepts, size=n_units)  # unit k is wired to concept planted[k] ...
    wired = rng.random(n_units) < 0.25  # ... for a quarter of the units; the rest are noise
    names = ["image_id"] + [f"u{k:05d}" for k in range(n_units)]
    for start in range(0, n_images, rows_per_part):
        stop = min(start + rows_per_part, n_images)
        n = stop - start
        part = uuid.uuid4().hex
        ids = np.arange(start, stop, dtype=np.int64)
        values = rng.standard_normal((n, n_units), dtype=np.float32)
        hit = labels[start:stop, None] == planted[None, :]
        values += (2.0 * hit * wired[None, :]).astype(np.float32)
        np.maximum(values, 0, out=values)  # ReLU: ~half exact zeros, i.e. heavy ties
        arrays = [pa.array(ids)] + [pa.array(values[:, k]) for k in range(n_units)]
        write_parquet_atomic(pa.Table.from_arrays(arrays, names=names), run.activation_part("layer4:mean", part),
                             encoded_columns=["image_id"])
        commit = pa.table({"image_id": ids, "uri": [f"s3://bench/img/{i}.jpg" for i in ids],
                           "status": ["ok"] * n, "error": pa.nulls(n, pa.string())}, schema=COMMIT_SCHEMA)
        write_parquet_atomic(commit, run.commit(part))
    concept = np.array([f"class{c:04d}" for c in range(n_concepts)], dtype=object)[labels]
    write_parquet_atomic(pa.table({"image_id": pa.array(np.arange(n_images, dtype=np.int64)), "concept": concept},
                                  schema=LABELS_SCHEMA), run.labels)
    cfg = config_from_dict({"data": {"folder": "unused"}, "model": {"name": "resnet50", "layers": ["layer4"]}})
    run.update_info({"run_id": "bench", "status": "complete", "config": cfg.model_dump(mode="json")})
    marker.write_text(json.dumps(params))
    return params


def _tree_pss_mib(pid: int) -> float:
    """Sum of PSS over ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total_kib = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total_kib += int(line.split()[1])
                        break
        except OSError:
            continue
    return total_kib / 1024


def run_score(run_dir: Path, extra: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "neuronscan", "score", "--run", str(run_dir), "--no-report", *extra]
    peak = 0.0
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_pss_mib(proc.pid))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = proc.wait()
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if rc != 0:
        raise SystemExit(f"neuronscan score failed with exit code {rc}")
    return {"seconds": seconds, "peak_pss_mib": peak, "command": " ".join(cmd[1:])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=1_280_000)
    p.add_argument("--n-units", type=int, default=2048)
    p.add_argument("--n-concepts", type=int, default=1000)
    p.add_argument("--rows-per-part", type=int, default=None,
                   help="default: the probe's part size for this many units (pipelines.probe.part_rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "neuronscan-score-scale")
    p.add_argument("--set", action="append", default=[], dest="overrides",
                   help="score overrides passed to `neuronscan score --set` (repeatable)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "score_scale.json")
    args = p.parse_args(argv)

    if args.rows_per_part is None:
        from neuronscan.config import config_from_dict
        from pipelines.probe import part_rows

        probe = config_from_dict({"data": {"folder": "x"}, "model": {"name": "m", "layers": ["l"]}}).probe
        args.rows_per_part = part_rows(probe, args.n_units)
    t0 = time.perf_counter()
    params = generate(args.data_dir, args.n_images, args.n_units, args.n_concepts, args.rows_per_part, args.seed)
    gen_s = time.perf_counter() - t0
    run_dir = args.data_dir / "run"
    parts = sorted((run_dir / "activations").rglob("part-*.parquet"))
    disk = sum(f.stat().st_size for f in parts)
    print(f"dataset: {args.n_images:,} images × {args.n_units:,} units × {args.n_concepts:,} concepts, "
          f"{len(parts)} parts of ≤ {args.rows_per_part:,} rows, {disk / 2**30:.1f} GiB on disk "
          f"({gen_s:.0f} s to make)", flush=True)
    extra = [x for ov in args.overrides for x in ("--set", ov)]
    res = run_score(run_dir, extra)
    import pandas as pd

    n_rows = len(pd.read_parquet(run_dir / "neuron_concepts.parquet", columns=["auc"]))
    timings = json.loads((run_dir / "run.json").read_text()).get("timings", {})
    result = {"benchmark": "score_scale", **params, "parts": len(parts), "overrides": args.overrides,
              "activations_gib": disk / 2**30, "rows_written": n_rows, "cpus": os.cpu_count(), **res,
              "run_json_timings": timings}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"neuronscan score: {res['seconds']:.1f} s wall, peak PSS {res['peak_pss_mib'] / 1024:.2f} GiB, "
          f"{n_rows:,} rows → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
