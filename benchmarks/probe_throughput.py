"""Probe throughput: the Ray probe vs a plain single-process PyTorch loop on the same images and model.

Both sides decode the same JPEGs with the same decoder, run the same model with the same hooks and
reductions, and write the activations to Parquet. Runs alternate (plain, ray, plain, ray, …) so drift
in the machine's load hits both; the ratio of medians is reported.

What each side's time covers. The plain loop runs in a fresh interpreter per repeat, timed from before
it imports torch: like a user's script, and like each Ray probe actor, it pays for importing torch and
torchvision, building the model and the first (slow) batches. The Ray side is timed from the call to
``run_probe`` on a Ray that is already up (started once, timed apart as ``ray_init_s``): it pays for
planning, starting the actor (a new process: the same imports, model build and first batches) and Ray
Data's scheduling. ``--plain-in-process`` instead runs the plain loop in this long-lived process, where
from the second repeat on torch, torchvision and the CPU kernels are already loaded.

    python benchmarks/probe_throughput.py --model resnet18 --n-images 512 --repeats 3
    python benchmarks/probe_throughput.py --device cuda --num-gpus 1 --n-images 20000 --batch-size 256

Prints a summary and writes JSON (default benchmarks/results/probe_throughput.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _write_images(root: Path, start: int, stop: int, seed: int) -> None:
    from PIL import Image

    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        d = root / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"{i:06d}.jpg", quality=90)


def make_images(root: Path, n_images: int, seed: int = 0) -> Path:
    """Write ``n_images`` ImageNet-sized JPEGs (375×500, smooth random colour fields) into ROOT/<class>/."""
    from concurrent.futures import ProcessPoolExecutor

    marker = root / f".done-{n_images}-{seed}-v2"
    if marker.exists():
        return root
    step = 500
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_write_images, [root] * len(range(0, n_images, step)), range(0, n_images, step),
                      [min(s + step, n_images) for s in range(0, n_images, step)], [seed] * n_images))
    marker.touch()
    return root


def plain_loop(folder: Path, out: Path, model: str, layers: list[str], reduce: list[str], batch_size: int,
               device: str, channels_last: bool) -> dict:
    """What a user would write without neuronscan: decode, forward with hooks, collect, write Parquet.

    Timed from before its imports: run in a fresh interpreter (the default, see ``plain_in_subprocess``)
    it pays what a user's script pays and what each Ray probe actor pays — importing torch and
    torchvision, building the model, the first (slow) batches — and nothing else.
    """
    t0 = time.perf_counter()
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from neuronscan.data import decode_batch, list_image_folder
    from neuronscan.models import ActivationRecorder, build_model

    torch.set_num_threads(os.cpu_count() or 1)
    spec = build_model(model, weights="random")
    module = spec.module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    rec = ActivationRecorder(module, layers, reduce)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255
    listing = list_image_folder(str(folder))
    collected: dict[str, list[np.ndarray]] = {}
    ids = listing["image_id"].to_numpy()
    t_first = None
    for start in range(0, len(listing), batch_size):
        uris = listing["uri"].iloc[start : start + batch_size]
        blobs = [Path(u).read_bytes() for u in uris]
        pixels, ok, _ = decode_batch(blobs, size=spec.input_size)
        x = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float().sub_(mean).div_(std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            outs = rec(x)
        for name, (values, _loc) in outs.items():
            collected.setdefault(name, []).append(values.float().cpu().numpy())
        if t_first is None:
            t_first, first_rows = time.perf_counter(), len(uris)
    t_loop_end = time.perf_counter()
    for name, chunks in collected.items():
        values = np.concatenate(chunks)
        cols = {"image_id": pa.array(ids)} | {f"u{k:05d}": pa.array(values[:, k]) for k in range(values.shape[1])}
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), out / f"{name.replace(':', '__')}.parquet")
    steady = (len(listing) - first_rows) / (t_loop_end - t_first) if len(listing) > first_rows else None
    return {"seconds": time.perf_counter() - t0, "images": int(len(listing)), "steady_images_per_second": steady}


def plain_in_subprocess(folder: Path, out: Path, args) -> dict:
    """Run :func:`plain_loop` in a fresh Python process (as a user runs a script) and return its result."""
    spec = {"folder": str(folder), "out": str(out), "model": args.model, "layers": args.layers,
            "reduce": args.reduce, "batch_size": args.batch_size, "device": args.device,
            "channels_last": args.plain_channels_last}
    proc = subprocess.run([sys.executable, __file__, "--plain-worker", json.dumps(spec)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"plain loop failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ray_probe(folder: Path, out: Path, args) -> dict:
    from neuronscan.config import config_from_dict
    from pipelines.probe import run_probe

    cfg = config_from_dict(
        {
            "run": {"out": str(out)},
            "data": {"folder": str(folder)},
            "model": {"name": args.model, "weights": "random", "layers": args.layers, "reduce": args.reduce},
            "probe": {"batch_size": args.batch_size, "num_actors": args.num_actors, "num_gpus": args.num_gpus,
                      "cpus_per_actor": args.cpus_per_actor, "decode_cpus": args.decode_cpus,
                      "channels_last": args.channels_last, "actor_threads": args.actor_threads},
        }
    )
    t0 = time.perf_counter()
    summary = run_probe(cfg, str(out / "run"), quiet=True)
    return {"seconds": time.perf_counter() - t0, "images": summary.n_ok + summary.n_failed,
            "steady_images_per_second": summary.extra["steady_images_per_second"],
            "actor_peak_rss_mib": summary.extra["actor_peak_rss_mib"], "phases_s": summary.extra["phases_s"]}


def forward_only(args) -> float:
    """Upper bound: images/s of the bare forward pass on synthetic tensors already on the device."""
    import torch

    from neuronscan.models import build_model

    spec = build_model(args.model, weights="random")
    module = spec.module.to(args.device).eval()
    x = torch.randn(args.batch_size, 3, spec.input_size, spec.input_size, device=args.device)
    amp = args.device == "cuda"
    with torch.inference_mode(), torch.autocast(args.device, dtype=torch.bfloat16, enabled=amp):
        for _ in range(2):
            module(x)
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 5:
            module(x)
            n += x.shape[0]
        if args.device == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _median_or_none(values: list):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--layers", nargs="+", default=["layer3", "layer4"])
    p.add_argument("--reduce", nargs="+", default=["mean", "max"])
    p.add_argument("--n-images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-actors", type=int, default=1)
    p.add_argument("--num-gpus", type=float, default=0.0)
    p.add_argument("--cpus-per-actor", type=float, default=0.5)
    p.add_argument("--decode-cpus", type=float, default=0.5)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--plain-channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last for the plain loop only (default: as --channels-last)")
    p.add_argument("--actor-threads", type=int, default=1, help="probe.actor_threads (batches in flight per actor)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images-dir", type=Path, default=Path(tempfile.gettempdir()) / "neuronscan-bench-images")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "probe_throughput.json")
    p.add_argument("--plain-in-process", action="store_true",
                   help="run the plain loop in this (warm) process instead of a fresh interpreter per repeat")
    p.add_argument("--plain-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.plain_channels_last is None:
        args.plain_channels_last = args.channels_last
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.plain_worker:
        spec = json.loads(args.plain_worker)
        res = plain_loop(Path(spec.pop("folder")), Path(spec.pop("out")), **spec)
        print(json.dumps(res))
        return 0
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    folder = make_images(args.images_dir, args.n_images)
    from pipelines._ray import init_ray

    t_init = time.perf_counter()
    init_ray(None, progress=False)
    ray_init_s = time.perf_counter() - t_init
    runs = {"plain": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            if args.plain_in_process:
                plain = plain_loop(folder, Path(tmp) / f"plain{r}", args.model, args.layers, args.reduce,
                                   args.batch_size, args.device, args.plain_channels_last)
            else:
                plain = plain_in_subprocess(folder, Path(tmp) / f"plain{r}", args)
            ray_res = ray_probe(folder, Path(tmp) / f"ray{r}", args)
            for name, res in (("plain", plain), ("ray", ray_res)):
                res["images_per_second"] = res["images"] / res["seconds"]
                runs[name].append(res)
            print(f"repeat {r + 1}: end to end plain {plain['images_per_second']:.1f} img/s, "
                  f"ray {ray_res['images_per_second']:.1f} img/s; steady plain "
                  f"{_fmt(plain['steady_images_per_second'])}, ray {_fmt(ray_res['steady_images_per_second'])}; "
                  "ray phases (s) "
                  f"{ray_res['phases_s']}", flush=True)
    med = {k: statistics.median(x["images_per_second"] for x in v) for k, v in runs.items()}
    # The Ray probe's driver sees one result per part: a run that fits one part has no steady state.
    steady = {k: _median_or_none([x["steady_images_per_second"] for x in v]) for k, v in runs.items()}
    fwd = forward_only(args)
    result = {
        "benchmark": "probe_throughput",
        "model": args.model, "layers": args.layers, "reduce": args.reduce, "n_images": args.n_images,
        "batch_size": args.batch_size, "device": args.device, "num_gpus": args.num_gpus,
        "channels_last": args.channels_last, "plain_channels_last": args.plain_channels_last,
        "actor_threads": args.actor_threads, "repeats": args.repeats,
        "plain_in": "this process" if args.plain_in_process else "a fresh interpreter per repeat",
        "ray_init_s": ray_init_s, "cpus": os.cpu_count(),
        "runs": runs,
        "median_images_per_second": med,
        "ratio_ray_to_plain": med["ray"] / med["plain"],
        "median_steady_images_per_second": steady,
        "steady_ratio_ray_to_plain": (steady["ray"] / steady["plain"]) if steady["ray"] and steady["plain"] else None,
        "actor_peak_rss_mib": max(x["actor_peak_rss_mib"] for x in runs["ray"]),
        "forward_only_images_per_second": fwd,
        "ratio_ray_to_forward_only": med["ray"] / fwd,
        "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median end to end: plain {med['plain']:.1f} img/s, ray {med['ray']:.1f} img/s, ratio "
          f"{result['ratio_ray_to_plain']:.3f}; steady state: plain {_fmt(steady['plain'])}, "
          f"ray {_fmt(steady['ray'])}, ratio "
          f"{_fmt(result['steady_ratio_ray_to_plain'])}; forward-only {fwd:.1f} img/s; actor peak RSS "
          f"{result['actor_peak_rss_mib']:.0f} MiB → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
