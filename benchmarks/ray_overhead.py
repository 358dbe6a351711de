"""What an embedded Ray costs the score stage on this machine, in wall time and in CPU time.

Two measurements, each in a child process so that nothing is shared with this one:

1. ``ray``: ``ray.init`` as neuronscan starts an embedded Ray (``pipelines._ray.init_ray``: no dashboard,
   ``num_cpus`` = the machine's cores), then one task per core that imports what a score task imports
   (``pipelines.score``, ``neuronscan.stats``), then ``ray.shutdown()``. Wall time and busy CPU time of the
   whole machine (``/proc/stat``) per step: Ray's start spends CPU in processes of its own (GCS, raylet,
   dashboard and runtime-env agents, the workers it prestarts), which a per-process clock does not see.
2. ``--score-dir``: ``neuronscan score`` on the data of ``benchmarks/score_cli.py``, once per mode: ``ray``
   (the default, shards as Ray tasks of an embedded Ray) and ``local-T`` (``--set score.executor=local --set
   score.local_threads=T``: the shards on T threads of the command's own process, no Ray started). The tables
   are the same bits either way (``tests/integration/test_score_timings.py``); this is what the Ray path
   costs end to end on one machine.

    python benchmarks/score_cli.py --modes bare --repeats 1     # writes the data once (/tmp/neuronscan-score-cli)
    python benchmarks/ray_overhead.py --score-dir /tmp/neuronscan-score-cli

Prints a summary and writes JSON (default benchmarks/results/ray_overhead.json).
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

ROOT = Path(__file__).resolve().parents[1]

_RAY_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])

def busy():
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")

out = {}
b, t = busy(), time.perf_counter()
import ray
out["import_ray"] = (time.perf_counter() - t, busy() - b)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
b, t = busy(), time.perf_counter()
ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=30)
out["ray_init"] = (time.perf_counter() - t, busy() - b)

@ray.remote(num_cpus=1)
def first_task():
    import neuronscan.stats  # noqa: F401
    import pipelines.score  # noqa: F401
    return os.getpid()

b, t = busy(), time.perf_counter()
pids = ray.get([first_task.remote() for _ in range(os.cpu_count())])
out["first_tasks"] = (time.perf_counter() - t, busy() - b)
out["worker_processes"] = len(set(pids))
b, t = busy(), time.perf_counter()
time.sleep(2.0)
out["idle_2s"] = (time.perf_counter() - t, busy() - b)
b, t = busy(), time.perf_counter()
ray.shutdown()
out["shutdown"] = (time.perf_counter() - t, busy() - b)
print(json.dumps(out))
"""



def _busy_cpu_s() -> float:
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def measure_ray() -> dict:
    proc = subprocess.run([sys.executable, "-c", _RAY_CHILD, str(ROOT)], capture_output=True, text=True, check=True)
    steps = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k: ({"wall_s": round(v[0], 3), "machine_cpu_s": round(v[1], 2)} if isinstance(v, list) else v)
            for k, v in steps.items()}


def measure_score(score_dir: Path, mode: str, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"ray-overhead-{mode}-"))
    args = ["score", "--activations", str(score_dir / "run" / "activations"), "--labels",
            str(score_dir / "labels.parquet"), "--out", str(out), "--quiet", *extra]
    if mode.startswith("local-"):
        args += ["--set", "score.executor=local", "--set", f"score.local_threads={int(mode.split('-')[1])}"]
    elif mode != "ray":
        raise SystemExit(f"unknown mode {mode!r}: ray or local-T")
    cmd = [sys.executable, "-m", "neuronscan", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    b, t = _busy_cpu_s(), time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    wall, cpu = time.perf_counter() - t, _busy_cpu_s() - b
    timings = json.loads((out / "score.json").read_text())["timings"]
    return {"wall_s": round(wall, 2), "machine_cpu_s": round(cpu, 1), "phases_s": timings["phases_s"],
            "shard_task_s": timings["shards"]["task_s_sum"], "shard_phases_s": timings["shards"]["phases_s_sum"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--score-dir", type=Path, help="data written by benchmarks/score_cli.py (skip if absent)")
    parser.add_argument("--modes", default="ray,local-1,local-2", help="score runs, comma-separated")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override for the score runs (default: bare, n_perm=0, no formulas)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ray_overhead.json")
    args = parser.parse_args()
    overrides = args.overrides or ["score.n_perm=0", "score.compositional.enabled=false"]
    extra = [x for o in overrides for x in ("--set", o)]
    result = {"benchmark": "ray_overhead", "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                        "platform": platform.platform()}}
    result["ray"] = measure_ray()
    for step, v in result["ray"].items():
        if isinstance(v, dict):
            print(f"ray {step:12s} {v['wall_s']:6.2f} s wall  {v['machine_cpu_s']:5.2f} CPU-s (whole machine)")
    if args.score_dir is not None and (args.score_dir / "labels.parquet").exists():
        result["score_overrides"] = overrides
        result["score"] = {}
        for mode in args.modes.split(","):
            r = measure_score(args.score_dir, mode, extra)
            result["score"][mode] = r
            print(f"score {mode:9s} {r['wall_s']:6.2f} s wall  {r['machine_cpu_s']:5.1f} CPU-s  "
                  f"shards {r['shard_task_s']:.1f} task-s  {r['shard_phases_s']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
