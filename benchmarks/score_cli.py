"""`neuronscan score` end to end at N = 50,000, K = 2,048, C = 1,481: wall time and where it goes.

Writes the activations as the probe writes them (``neuronscan.io.RunDir`` paths,
``write_parquet_atomic(..., encoded_columns=["image_id"])``: zstd, page checksums, parts of 32,768 rows,
the probe's default part size, i.e. 2 parts per layer) and long-format labels, from the same synthetic
data as ``benchmarks/score_kernel.py`` (ReLU-like activations with 41 % exact zeros, 1 % label density).
Then runs the real command line in a child process, once per repeat and mode:

- ``defaults``: ``python -m neuronscan score --activations … --labels … --out …`` (permutation tests and
  exact compositional labels on);
- ``bare``: the same with ``--set score.n_perm=0 --set score.compositional.enabled=false``;
- ``kernels``: bare and ``--set score.simulation.enabled=false`` (``--modes defaults,bare,kernels``).

The wall time is the child's, from ``exec`` to exit (Python start-up and imports included). The phase
breakdown is the one the command writes to ``OUT/score.json`` (``timings``); ``exit_s`` is what follows it
(stopping Ray, interpreter exit). ``cpu_s`` is the CPU time of the command and every process under it, and
``others_cpu_s`` what the rest of the machine used meanwhile (from ``/proc/stat``): a run with others
near 0 had the machine to itself.

    python benchmarks/score_cli.py                       # full size, 3 repeats per mode, ~5 min
    python benchmarks/score_cli.py --n-images 5000 --n-units 128 --repeats 1   # quick look
    git archive 5812084 | tar -x -C /tmp/before          # the code before the score timings work, then:
    python benchmarks/score_cli.py --baseline-root /tmp/before   # both, alternating; checks equal tables

Prints a summary and writes JSON (default benchmarks/results/score_cli.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
    # bare without the simulation scores either: the pair kernels, quality metrics and the dataflow alone
    "kernels": ["--set", "score.n_perm=0", "--set", "score.compositional.enabled=false",
                "--set", "score.simulation.enabled=false"],
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


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all processes, from /proc/stat); 0 off Linux."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class _TreeCPU:
    """CPU seconds of a process and every process under it, sampled from /proc every 0.2 s.

    Ray's workers are children of its raylet, which the command stops without reaping them itself, so
    ``getrusage(RUSAGE_CHILDREN)`` misses them; sampling sees them (all but their last 0.2 s).
    """

    def __init__(self, pid: int) -> None:
        import threading

        self.pid, self.ticks, self.stop = pid, {}, threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        fields = fh.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        stack = [self.pid]
        while stack:
            pid = stack.pop()
            stack.extend(children.get(pid, []))
            if pid in stats:
                self.ticks[pid] = max(self.ticks.get(pid, 0), stats[pid][1])

    def _run(self) -> None:
        while not self.stop.is_set():
            self._sample()
            self.stop.wait(0.2)

    def seconds(self) -> float:
        self.stop.set()
        self.thread.join()
        return sum(self.ticks.values()) / self.tick


def run_cli(root: Path, out: Path, extra: list[str], code_root: Path = ROOT) -> dict:
    """Run ``neuronscan score`` in a child process; return its wall time and the phases it recorded."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(code_root)}
    cmd = [sys.executable, "-m", "neuronscan", "score", "--activations", str(root / "run" / "activations"),
           "--labels", str(root / "labels.parquet"), "--out", str(out), "--quiet", *extra]
    load = os.getloadavg()[0]
    busy0 = _busy_cpu_s()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=code_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree = _TreeCPU(proc.pid)
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    # CPU the command used (with every process under it: Ray's) and what other processes on the machine
    # used meanwhile: the honest measure of how busy the machine was.
    ours = tree.seconds()
    others = max(0.0, _busy_cpu_s() - busy0 - ours)
    if proc.returncode != 0:
        sys.stderr.write(stdout + stderr)
        raise SystemExit(f"neuronscan score failed with exit code {proc.returncode}")
    score_json = out / "score.json"
    timings = json.loads(score_json.read_text()).get("timings", {}) if score_json.exists() else {}
    # After score.json is written the process still stops the embedded Ray (its exit hook) and exits.
    exit_s = seconds - timings["total_s"] if "total_s" in timings else None
    return {"wall_s": seconds, "exit_s": exit_s, "cpu_s": ours, "others_cpu_s": others, "loadavg_1min_before": load,
            "timings": timings, "command": " ".join(["python", *cmd[1:]])}


def _phase_line(timings: dict) -> str:
    wall = timings.get("phases_s", {})
    return " · ".join(f"{k} {v:.2f}" for k, v in wall.items())


def same_tables(a: Path, b: Path) -> bool:
    """Whether two outputs hold the same tables, bit for bit (NaN payloads included)."""
    import pyarrow.parquet as pq

    for name in ("neuron_concepts.parquet", "neurons.parquet"):
        ta, tb = pq.read_table(a / name), pq.read_table(b / name)
        if not ta.schema.equals(tb.schema) or ta.num_rows != tb.num_rows:
            return False
        for col in ta.column_names:
            x, y = ta.column(col), tb.column(col)
            if pa.types.is_floating(x.type):
                if not np.array_equal(x.to_numpy().view(np.uint64), y.to_numpy().view(np.uint64)):
                    return False
            elif not x.equals(y):
                return False
    return True


def _summarize(runs: list[dict]) -> dict:
    walls = [r["wall_s"] for r in runs]
    best = min(runs, key=lambda r: r["wall_s"])
    return {"min_s": min(walls), "max_s": max(walls), "spread_s": max(walls) - min(walls), "walls_s": walls,
            "loadavg_1min_before": [r["loadavg_1min_before"] for r in runs],
            "cpu_s": [r["cpu_s"] for r in runs], "others_cpu_s": [r["others_cpu_s"] for r in runs],
            "fastest_timings": best["timings"], "fastest_exit_s": best["exit_s"], "command": best["command"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=50_000)
    p.add_argument("--n-units", type=int, default=2_048)
    p.add_argument("--n-concepts", type=int, default=1_481)
    p.add_argument("--density", type=float, default=0.01)
    p.add_argument("--rows-per-part", type=int, default=32_768)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="defaults,bare", help="comma-separated: defaults, bare, kernels")
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "neuronscan-score-cli")
    p.add_argument("--baseline-root", type=Path, default=None,
                   help="also run the command line of another checkout (e.g. `git archive <commit>` unpacked), "
                   "alternating with this one, and check that both write the same tables")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "score_cli.json")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown mode(s) {unknown}; choose from {sorted(MODES)}")
    roots = {"current": ROOT}
    if args.baseline_root is not None:
        roots = {"baseline": args.baseline_root.resolve(), **roots}

    t0 = time.perf_counter()
    params = generate(args.data_dir, args.n_images, args.n_units, args.n_concepts, args.density,
                      args.rows_per_part, args.seed)
    disk = sum(f.stat().st_size for f in (args.data_dir / "run" / "activations").rglob("*.parquet"))
    print(f"dataset: {args.n_images:,} images × {args.n_units:,} units × {args.n_concepts:,} concepts, "
          f"{disk / 2**20:.0f} MiB of activations in parts of {args.rows_per_part:,} rows "
          f"({time.perf_counter() - t0:.0f} s to make or check)", flush=True)
    results: dict[str, dict[str, list[dict]]] = {name: {m: [] for m in modes} for name in roots}
    identical: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):  # alternate modes (and code) so that a busy spell hits all of them
            for mode in modes:
                for name, code_root in roots.items():
                    out = Path(tmp) / f"{name}-{mode}-{i}"
                    res = run_cli(args.data_dir, out, MODES[mode], code_root)
                    results[name][mode].append(res)
                    recorded = res["timings"].get("total_s")
                    print(f"{name} {mode} repeat {i + 1}: {res['wall_s']:.2f} s wall, {res['cpu_s']:.1f} CPU-s "
                          f"(other processes meanwhile: {res['others_cpu_s']:.1f} CPU-s"
                          + (f"; score.json total {recorded:.2f} s + exit {res['exit_s']:.2f} s" if recorded else "")
                          + ")", flush=True)
                    if res["timings"]:
                        print(f"  phases (s): {_phase_line(res['timings'])}", flush=True)
                if len(roots) > 1 and i == 0:
                    identical[mode] = same_tables(Path(tmp) / f"baseline-{mode}-0", Path(tmp) / f"current-{mode}-0")
                    print(f"  {mode}: tables bit-identical to the baseline's: {identical[mode]}", flush=True)
                for name in roots:  # keep one output per mode and code for the comparison only
                    if i > 0:
                        shutil.rmtree(Path(tmp) / f"{name}-{mode}-{i}", ignore_errors=True)
    summary = {name: {mode: _summarize(runs) for mode, runs in per_mode.items()} for name, per_mode in results.items()}
    for name, per_mode in summary.items():
        for mode, sm in per_mode.items():
            print(f"{name} {mode}: min {sm['min_s']:.2f} s, spread {sm['spread_s']:.2f} s over "
                  f"{len(sm['walls_s'])} repeat(s)")
            if sm["fastest_timings"]:
                print(f"  fastest run's phases (s): {_phase_line(sm['fastest_timings'])}; "
                      f"exit after score.json {sm['fastest_exit_s']:.2f}")
    result = {
        "benchmark": "score_cli",
        **params,
        "activations_mib": disk / 2**20,
        "repeats": args.repeats,
        "code_roots": {name: str(path) for name, path in roots.items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_after": os.getloadavg()},
        "tables_identical_to_baseline": identical or None,
        "summary": summary,
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"→ {args.out}")
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
