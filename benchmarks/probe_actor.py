"""Per-batch cost of the probe actor alone (no Ray, no decode), and of the part writer beside it.

Builds one ``ActivationProbe`` in this process and feeds it synthetic uint8 batches (as the decode
stage would), then times ``__call__`` (the whole actor path: model, hooks, reductions, results back to
the host) serially and with several threads calling at once (what ``probe.actor_threads`` does inside
a Ray actor), next to ``_forward`` alone. The actor writes nothing: ``write_parts`` (Parquet encoding,
top-M, commit) runs in separate Ray tasks; its time per image is measured on one part of the batches.

    python benchmarks/probe_actor.py                                # CPU, resnet18, batch 64
    python benchmarks/probe_actor.py --device cuda --batch-size 256 # on a GPU machine

Prints a summary and writes JSON (default benchmarks/results/probe_actor.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--layers", nargs="+", default=["layer3", "layer4"])
    p.add_argument("--reduce", nargs="+", default=["mean", "max"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 3], help="concurrent __call__s to time")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "probe_actor.json")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from pipelines.probe import ActivationProbe, write_parts

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    b = args.batch_size
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(b, 224, 224, 3), dtype=np.uint8)
    pixels.flags.writeable = False  # as Ray hands batches over
    with tempfile.TemporaryDirectory() as out:
        probe = ActivationProbe(
            model={"name": args.model, "weights": "random"}, layers=args.layers, reduce=args.reduce,
            num_gpus=1 if args.device == "cuda" else 0, channels_last=True,
        )
        counter = iter(range(10**9))

        def batch() -> dict:
            start = next(counter) * b
            return {"image_id": np.arange(start, start + b), "ok": np.ones(b, bool),
                    "error": np.array([""] * b, object), "uri": np.array([f"img{i}" for i in range(b)], object),
                    "pixels": pixels}

        for _ in range(3):  # warm-up: allocator, cuDNN heuristics, first Parquet files
            probe(batch())
        sync()
        forward = []
        for _ in range(args.batches):
            t = time.perf_counter()
            probe._forward(pixels)
            sync()
            forward.append(time.perf_counter() - t)
        calls = {}
        for threads in args.threads:
            batches = [batch() for _ in range(args.batches)]
            t = time.perf_counter()
            if threads == 1:
                for item in batches:
                    probe(item)
            else:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(probe, batches))
            sync()
            calls[threads] = (time.perf_counter() - t) / args.batches
        # One part of every timed batch, written as a write_parts task would (off the actor's path).
        outs = [probe(batch()) for _ in range(args.batches)]
        names = [k[2:] for k in outs[0] if k.startswith("v:")]
        part = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        t = time.perf_counter()
        write_parts(part, out=out, outputs=names, topk=16)
        write_s = time.perf_counter() - t
    fwd = statistics.median(forward)
    result = {
        "benchmark": "probe_actor", "model": args.model, "layers": args.layers, "reduce": args.reduce,
        "batch_size": b, "device": args.device, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "forward_ms_per_batch": fwd * 1e3, "forward_images_per_second": b / fwd,
        "call_ms_per_batch": {str(k): v * 1e3 for k, v in calls.items()},
        "call_images_per_second": {str(k): b / v for k, v in calls.items()},
        "write_part_rows": b * args.batches, "write_part_s": write_s,
        "write_images_per_second": b * args.batches / write_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"_forward: {fwd * 1e3:.1f} ms per batch of {b} ({b / fwd:,.0f} img/s)")
    for k, v in calls.items():
        print(f"__call__ with {k} thread(s): {v * 1e3:.1f} ms per batch ({b / v:,.0f} img/s)")
    print(f"write_parts (another process in a run): {b * args.batches} rows in {write_s:.2f} s "
          f"({b * args.batches / write_s:,.0f} img/s)")
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
