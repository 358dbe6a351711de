"""`neuronscan score` end to end at N = 50,000, K = 2,048, C = 1,481: wall time and where it goes.

Writes the activations as the probe writes them (``neuronscan.io.RunDir`` paths,
``write_parquet_atomic(..., encoded_columns=["image_id"])``: zstd, page checksums, parts of 32,768 rows,
the probe's default part size, i.e. 2 parts per layer) and long-format labels, from the same synthetic
data as ``benchmarks/score_kernel.py`` (ReLU-like activations with 41 % exact zeros, 1 % label density).
Then runs the real command line in a child process, once per repeat and mode:

- ``defaults``: ``python -m neuronscan score --activations … --labels … --out …`` (permutation tests and
  exact compositional labels on);
- ``bare``: the same with ``--set score.n_perm=0 --set score.compositional.enabled=false``.

The wall time is the child's, from ``exec`` to exit (Python start-up and imports included). The phase
breakdown is the one the command writes to ``OUT/score.json`` (``timings``).

    python benchmarks/score_cli.py                       # full size, 3 repeats per mode, ~5 min
    python benchmarks/score_cli.py --n-images 5000 --n-units 128 --repeats 1   # quick look

Prints a summary and writes JSON (default benchmarks/results/score_cli.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from score_kernel import make_data  # noqa: E402  (same synthetic data as the kernel benchmark)

from neuronscan.io import RunDir, activation_schema, write_parquet_atomic  # noqa: E402

MODES = {
    "defaults": [],
    "bare": ["--set", "score.n_perm=0", "--set", "score.compositional.enabled=false"],
}
LAYER = "layer4:mean"


def generate(root: Path, n_images: int, n_units: int, n_concepts: int, density: float, rows_per_part: int,
             seed: int) -> dict:
    """Write ``root/run/activations/<layer>/part-*.parquet`` and ``root/labels.parquet`` unless already there."""
    marker = root / "dataset.json"
    params = {"n_images": n_images, "n_units": n_units, "n_concepts": n_concepts, "density": density,
              "rows_per_part": rows_per_part, "seed": seed, "layer": LAYER}
    if marker.exists() and json.loads(marker.read_text()) == params:
        return params
    acts, labels = make_data(n_images, n_units, n_concepts, density, seed)
    run = RunDir(str(root / "run"))
    schema = activation_schema(n_units)
    ids = np.arange(n_images, dtype=np.int64)
    for part, start in enumerate(range(0, n_images, rows_per_part)):
        stop = min(start + rows_per_part, n_images)
        arrays = [pa.array(ids[start:stop])] + [pa.array(acts[start:stop, k]) for k in range(n_units)]
        write_parquet_atomic(pa.Table.from_arrays(arrays, schema=schema), run.activation_part(LAYER, f"{part:05d}"),
                             encoded_columns=["image_id"])
    coo = labels.tocoo()
    names = np.array([f"concept{c:04d}" for c in range(n_concepts)], dtype=object)
    order = np.lexsort((coo.col, coo.row))
    table = pa.table({"image_id": pa.array(coo.row[order].astype(np.int64)),
                      "concept": pa.array(names[coo.col[order]], pa.string())})
    write_parquet_atomic(table, str(root / "labels.parquet"))
    marker.write_text(json.dumps(params))
    return params


def run_cli(root: Path, out: Path, extra: list[str], code_root: Path = ROOT) -> dict:
    """Run ``neuronscan score`` in a child process; return its wall time and the phases it recorded."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(code_root)}
    cmd = [sys.executable, "-m", "neuronscan", "score", "--activations", str(root / "run" / "activations"),
           "--labels", str(root / "labels.parquet"), "--out", str(out), "--quiet", *extra]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=code_root, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"neuronscan score failed with exit code {proc.returncode}")
    score_json = out / "score.json"
    timings = json.loads(score_json.read_text()).get("timings", {}) if score_json.exists() else {}
    # After score.json is written the process still stops the embedded Ray (its exit hook) and exits.
    exit_s = seconds - timings["total_s"] if "total_s" in timings else None
    return {"wall_s": seconds, "exit_s": exit_s, "loadavg_1min_before": load, "timings": timings,
            "command": " ".join(["python", *cmd[1:]])}


def _phase_line(timings: dict) -> str:
    wall = timings.get("phases_s", {})
    return " · ".join(f"{k} {v:.2f}" for k, v in wall.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=50_000)
    p.add_argument("--n-units", type=int, default=2_048)
    p.add_argument("--n-concepts", type=int, default=1_481)
    p.add_argument("--density", type=float, default=0.01)
    p.add_argument("--rows-per-part", type=int, default=32_768)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="defaults,bare", help="comma-separated: defaults, bare")
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "neuronscan-score-cli")
    p.add_argument("--code-root", type=Path, default=ROOT,
                   help="run the command line of another checkout (e.g. `git archive HEAD~1` unpacked) to compare")
    p.add_argument("--keep-outputs", type=Path, default=None, help="keep each run's output folder under this folder")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "score_cli.json")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown mode(s) {unknown}; choose from {sorted(MODES)}")

    t0 = time.perf_counter()
    params = generate(args.data_dir, args.n_images, args.n_units, args.n_concepts, args.density,
                      args.rows_per_part, args.seed)
    disk = sum(f.stat().st_size for f in (args.data_dir / "run" / "activations").rglob("*.parquet"))
    print(f"dataset: {args.n_images:,} images × {args.n_units:,} units × {args.n_concepts:,} concepts, "
          f"{disk / 2**20:.0f} MiB of activations in parts of {args.rows_per_part:,} rows "
          f"({time.perf_counter() - t0:.0f} s to make or check)", flush=True)
    results: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        outputs = args.keep_outputs or Path(tmp)
        for i in range(args.repeats):  # alternate the modes so a busy spell hits both
            for mode in modes:
                out = outputs / f"{mode}-{i}"
                res = run_cli(args.data_dir, out, MODES[mode], args.code_root.resolve())
                results[mode].append(res)
                recorded = res["timings"].get("total_s")
                print(f"{mode} repeat {i + 1}: {res['wall_s']:.2f} s wall (load {res['loadavg_1min_before']:.2f}"
                      + (f"; score.json total {recorded:.2f} s + exit {res['exit_s']:.2f} s" if recorded else "")
                      + ")", flush=True)
                if res["timings"]:
                    print(f"  phases (s): {_phase_line(res['timings'])}", flush=True)
    summary = {}
    for mode, runs in results.items():
        walls = [r["wall_s"] for r in runs]
        best = min(runs, key=lambda r: r["wall_s"])
        summary[mode] = {"min_s": min(walls), "max_s": max(walls), "spread_s": max(walls) - min(walls),
                         "walls_s": walls, "fastest_timings": best["timings"], "command": best["command"]}
        print(f"{mode}: min {min(walls):.2f} s, spread {max(walls) - min(walls):.2f} s over {len(walls)} repeat(s)")
        if best["timings"]:
            print(f"  fastest run's phases (s): {_phase_line(best['timings'])}")
    result = {
        "benchmark": "score_cli",
        **params,
        "activations_mib": disk / 2**20,
        "repeats": args.repeats,
        "code_root": str(args.code_root.resolve()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_after": os.getloadavg()},
        "summary": summary,
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
