"""The probe on a GPU, as a user runs it: `neuronscan run` end to end on JPEGs, against forward-only.

1. Writes ``--n-images`` ImageNet-sized JPEGs (375×500) into ``DIR/<class>/`` (once; reused).
2. Runs ``python -m neuronscan probe CONFIG`` in a child process: resnet50 (random weights, fixed seed) at
   layer1–layer4, mean + max, plus CLIP ViT-B/16 image embeddings (``probe.clip``), on the GPU with bf16
   autocast — the configuration the issue targets. End-to-end wall time from the command's start, and the
   steady-state images/s from its ``run.json``.
3. Forward-only on synthetic tensors already on the GPU, same model, hooks, reductions, CLIP and batch size:
   the ceiling the probe is compared against (steady probe img/s ÷ forward-only img/s).
4. JPEG decode alone, CPU (the probe's decoder, PIL + resize, on every core) against
   ``torchvision.io.decode_jpeg(device="cuda")`` in batches, images/s each.

    python benchmarks/probe_gpu.py                        # on a GPU machine: 50,000 images, batch 256
    python benchmarks/probe_gpu.py --device cpu --n-images 64 --batch-size 16 --model tinycnn \\
        --layers conv1 conv2 --clip none                 # smoke run of the script itself on a CPU

Prints a summary and writes JSON (default benchmarks/results/probe_gpu.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def probe_cli(folder: Path, out: Path, args) -> dict:
    import yaml

    cfg = {
        "run": {"out": str(out), "run_id": "gpu"},
        "data": {"folder": str(folder)},
        "model": {"name": args.model, "weights": "random", "layers": args.layers, "reduce": args.reduce},
        "probe": {"batch_size": args.batch_size, "num_actors": 1, "num_gpus": 1 if args.device == "cuda" else 0,
                  "actor_threads": args.actor_threads, "cpus_per_actor": 1.0, "decode_cpus": 1.0},
    }
    if args.clip != "none":
        cfg["probe"]["clip"] = {"model": args.clip, "pretrained": None}
    path = out / "probe_gpu.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "neuronscan", "probe", str(path), "--restart"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"neuronscan probe failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    info = json.loads((out / args.model / "gpu" / "run.json").read_text())
    return {"seconds": seconds, "images": info["counts"]["inputs"], "ok": info["counts"]["ok"],
            "run_json_probe": info.get("probe", {}), "timings": info.get("timings", {})}


def forward_only(args) -> dict:
    import torch

    from neuronscan.models import ActivationRecorder, build_model

    device = torch.device(args.device)
    spec = build_model(args.model, weights="random")
    module = spec.module.to(device).to(memory_format=torch.channels_last)
    rec = ActivationRecorder(module, args.layers, args.reduce)
    clip = None
    if args.clip != "none":
        from neuronscan.clip import load_clip

        clip = load_clip(args.clip, pretrained=None, device=args.device)
    x = torch.randint(0, 256, (args.batch_size, spec.input_size, spec.input_size, 3), dtype=torch.uint8,
                      device=device)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255

    def step():
        y = x.permute(0, 3, 1, 2).float().sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outs = rec(y)
            res = [v.float().cpu() for v, _ in outs.values()]
        if clip is not None:
            from neuronscan.clip import embed_images

            embed_images(clip, x.cpu().numpy())
        return res

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    n = max(5, args.forward_batches)
    t = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    return {"images_per_second": n * args.batch_size / seconds, "batches": n}


def decode_compare(folder: Path, args) -> dict:
    import torch

    from neuronscan.data import decode_batch

    files = sorted(folder.rglob("*.jpg"))[: args.decode_images]
    blobs = [f.read_bytes() for f in files]
    t = time.perf_counter()
    for i in range(0, len(blobs), args.batch_size):
        decode_batch(blobs[i : i + args.batch_size], size=224)
    cpu = len(blobs) / (time.perf_counter() - t)
    out = {"images": len(blobs), "cpu_one_process_images_per_second": cpu,
           "cpu_all_cores_estimate_images_per_second": cpu * (os.cpu_count() or 1)}
    if args.device == "cuda":
        from torchvision.io import decode_jpeg

        datas = [torch.frombuffer(b, dtype=torch.uint8) for b in blobs]
        decode_jpeg(datas[: args.batch_size], device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(0, len(datas), args.batch_size):
            imgs = decode_jpeg(datas[i : i + args.batch_size], device="cuda")
            torch.nn.functional.interpolate(torch.stack([im[:, :224, :224] for im in imgs]).float(), size=224)
        torch.cuda.synchronize()
        out["gpu_decode_jpeg_images_per_second"] = len(datas) / (time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--layers", nargs="+", default=["layer1", "layer2", "layer3", "layer4"])
    p.add_argument("--reduce", nargs="+", default=["mean", "max"])
    p.add_argument("--clip", default="ViT-B-16", help="open_clip architecture for probe.clip, or 'none'")
    p.add_argument("--actor-threads", type=int, default=2)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--forward-batches", type=int, default=20)
    p.add_argument("--decode-images", type=int, default=2048)
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "neuronscan-probe-gpu")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "probe_gpu.json")
    args = p.parse_args(argv)

    from probe_throughput import make_images

    t = time.perf_counter()
    folder = make_images(args.data_dir / "images", args.n_images)
    make_s = time.perf_counter() - t
    device_info = {"device": args.device}
    if args.device == "cuda":
        import torch

        device_info |= {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                        "driver": subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                                 capture_output=True, text=True).stdout.strip()}
    probe = probe_cli(folder, args.data_dir / "runs", args)
    fwd = forward_only(args)
    steady = probe["run_json_probe"].get("steady_images_per_second")
    result = {
        "benchmark": "probe_gpu", **device_info, "n_images": args.n_images, "batch_size": args.batch_size,
        "model": args.model, "layers": args.layers, "reduce": args.reduce, "clip": args.clip,
        "images_made_s": make_s, "probe": probe, "forward_only": fwd,
        "steady_over_forward_only": (steady / fwd["images_per_second"]) if steady else None,
        "decode": decode_compare(folder, args),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"probe end to end: {probe['seconds']:.1f} s for {probe['images']:,} images; steady "
          f"{steady or float('nan'):,.0f} img/s; forward-only {fwd['images_per_second']:,.0f} img/s "
          f"(ratio {result['steady_over_forward_only'] or float('nan'):.2f})")
    print(f"decode: {json.dumps(result['decode'])}")
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
