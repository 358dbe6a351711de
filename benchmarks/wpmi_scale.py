"""soft-WPMI at scale: neuronscan against CLIP-Dissect's own ``soft_wpmi`` on the same inputs.

Synthetic, seeded inputs at the size of a real label-free run: ``--n-images`` (50,000) random
L2-normalised image embeddings and ``--n-concepts`` (20,000) text embeddings of dimension ``--dim``
(512), and ReLU activations (``max(0, N(0, 1))``, float32) of ``--n-units`` (2,048) units. Each
implementation runs in a child process of its own, one after another, so its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) is its own and includes the inputs it needs:

- ``neuronscan32`` / ``neuronscan64``: ``neuronscan.stats.soft_wpmi(acts, image_emb, text_emb,
  precision="float32" | "float64")`` on all units at once;
- ``pipeline``: the score stage's own code (``pipelines/score.py``): each shard of ``--shard-units`` (64,
  ``score.units_per_shard``) units picks its top images (``_wpmi_top``), then the driver's reduce scores all of
  them in one call and applies the layer's prior (``_wpmi_scores``), in ``probe.clip.precision``'s default
  (float32);
- ``neuronscan32_shards``: the score stage before that, ``soft_wpmi_log_conditional`` per shard of
  ``--shard-units`` units, then the prior over the layer (each shard repeats the image x concept softmax);
- ``clipdissect``: CLIP-Dissect's ``soft_wpmi`` (copied below from Trustworthy-ML-Lab/CLIP-dissect,
  ``similarity.py`` at commit 21e7697feaea3bf7d7bc2d2cc8e4047d5f5fd502, with only its progress bar and
  print removed, on ``device="cpu"``), given the similarity matrix ``image_emb @ text_emb.T`` as its
  ``utils.get_similarity_from_activations`` computes it (float32; timed apart as ``similarity_s``);
- ``correlation`` (not soft-WPMI, timed beside it): the score stage's default CLIP label, ``probe.clip.method:
  correlation``, through its own code: each shard's moments (``_clip_moments``, shards one after another in this
  process) and the driver's reduce (``_clip_correlations``: the embeddings' covariance, the product with the text);
- ``previous`` (opt-in, ``--previous-src FILE``): an older ``neuronscan/stats/_wpmi.py``, e.g.
  ``git show c87cb31:neuronscan/stats/_wpmi.py > /tmp/wpmi_before.py``.

neuronscan is run with CLIP-Dissect's weight schedule: CLIP-Dissect weights rank ``j`` of ``k`` by
``p_start - j / k (p_start - p_end)`` (it stops one step short of ``p_end``), which is neuronscan's
``linspace(weight_start, weight_end, k)`` with ``weight_end = p_start - (k - 1) / k (p_start - p_end)``.
CLIP-Dissect also adds ``min_prob = 1e-7`` inside its logarithm and computes in float32; neuronscan adds
nothing. The labels (argmax concept per unit) are compared, and where they differ the float64 margin
between the two concepts is reported beside CLIP-Dissect's own deviation from the float64 scores.

Every child's record carries the load average before and after it and ``others_cpu_s``: the CPU seconds
the rest of the machine used while it ran (busy time from ``/proc/stat`` minus the child's own), so a
reader can tell an idle machine (near 0) from a shared one. The parent samples each child's RSS
(``rss_timeline_s_gib``, every 2 s) and stops a child whose RSS passes ``--max-child-gib`` (recorded as
``stopped``), so a shared machine is not pushed into reclaim; ``--child-env`` sets the children's
environment (glibc's ``MALLOC_MMAP_THRESHOLD_`` keeps CLIP-Dissect's per-unit loop from growing the heap).
Each run is stored under ``runs[--label]`` of the JSON, beside earlier runs.

    python benchmarks/wpmi_scale.py                    # full size: CLIP-Dissect needs > 12 GiB (see RESULTS.md)
    python benchmarks/wpmi_scale.py --n-images 25000 --child-env MALLOC_MMAP_THRESHOLD_=131072 --max-child-gib 12
    python benchmarks/wpmi_scale.py --n-images 5000 --n-units 128 --n-concepts 2000   # quick look

Prints a summary and writes JSON (default benchmarks/results/wpmi_scale.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("neuronscan32", "neuronscan64", "pipeline", "neuronscan32_shards", "clipdissect", "previous", "correlation")
# Not soft-WPMI: timed beside it, never compared with it.
OTHER_METHODS = ("correlation",)
CLIP_DISSECT = {
    "repository": "https://github.com/Trustworthy-ML-Lab/CLIP-dissect",
    "commit": "21e7697feaea3bf7d7bc2d2cc8e4047d5f5fd502",
    "files": ["similarity.py (soft_wpmi)", "utils.py (get_similarity_from_activations)"],
}


# ---- CLIP-Dissect, as published ---------------------------------------------------------------


def clip_dissect_similarity(image_features, text_features):
    """utils.get_similarity_from_activations, the part before ``similarity_fn`` (CLIP-Dissect)."""
    import torch

    image_features = image_features.float()
    text_features = text_features.float()
    with torch.no_grad():
        image_features /= image_features.norm(dim=-1, keepdim=True)
        text_features /= text_features.norm(dim=-1, keepdim=True)
        clip_feats = image_features @ text_features.T
    return clip_feats


def clip_dissect_soft_wpmi(clip_feats, target_feats, top_k=100, a=10, lam=1, device="cuda",
                           min_prob=1e-7, p_start=0.998, p_end=0.97):
    """similarity.soft_wpmi of CLIP-Dissect (commit 21e7697), less its tqdm bar and print."""
    import torch

    with torch.no_grad():
        torch.cuda.empty_cache()
        clip_feats = torch.nn.functional.softmax(a * clip_feats, dim=1)

        inds = torch.topk(target_feats, dim=0, k=top_k)[1]
        prob_d_given_e = []

        p_in_examples = p_start - (torch.arange(start=0, end=top_k) / top_k * (p_start - p_end)).unsqueeze(1).to(device)
        for orig_id in range(target_feats.shape[1]):

            curr_clip_feats = clip_feats.gather(0, inds[:, orig_id:orig_id + 1].expand(-1, clip_feats.shape[1])).to(device)  # noqa: E501

            curr_p_d_given_e = 1 + p_in_examples * (curr_clip_feats - 1)
            curr_p_d_given_e = torch.sum(torch.log(curr_p_d_given_e + min_prob), dim=0, keepdim=True)
            prob_d_given_e.append(curr_p_d_given_e)
            torch.cuda.empty_cache()

        prob_d_given_e = torch.cat(prob_d_given_e, dim=0)
        # logsumexp trick to avoid underflow
        prob_d = (torch.logsumexp(prob_d_given_e, dim=0, keepdim=True)
                  - torch.log(prob_d_given_e.shape[0] * torch.ones([1]).to(device)))
        mutual_info = prob_d_given_e - lam * prob_d
    return mutual_info


# ---- data and measurement ---------------------------------------------------------------------


def generate(root: Path, n_images: int, n_units: int, n_concepts: int, dim: int, seed: int) -> dict:
    """Write ``root/{image_emb,text_emb,acts}.npy`` unless the same parameters are already there."""
    params = {"n_images": n_images, "n_units": n_units, "n_concepts": n_concepts, "dim": dim,
              "seed": seed, "activations": "max(0, N(0, 1)) float32",
              "embeddings": "N(0, 1) rows, L2-normalised, float32"}
    marker = root / "dataset.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        return params
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, shape in (("image_emb", (n_images, dim)), ("text_emb", (n_concepts, dim))):
        x = rng.standard_normal(shape, dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.save(root / f"{name}.npy", x)
    acts = rng.standard_normal((n_images, n_units), dtype=np.float32)
    np.maximum(acts, 0.0, out=acts)
    np.save(root / "acts.npy", acts)
    marker.write_text(json.dumps(params))
    return params


def matched_weight_end(top_k: int, p_start: float = 0.998, p_end: float = 0.97) -> float:
    """neuronscan's weight_end that reproduces CLIP-Dissect's schedule over ``top_k`` ranks."""
    return p_start - (top_k - 1) / top_k * (p_start - p_end)


def _rss_gib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all processes, from /proc/stat); 0 off Linux."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def child(impl: str, data: Path, out: Path, top_k: int, shard_units: int, previous_src: Path | None) -> dict:
    """Run one implementation on the saved inputs; save its scores; return its measurements."""
    import torch

    emb = np.load(data / "image_emb.npy")
    txt = np.load(data / "text_emb.npy")
    acts = np.load(data / "acts.npy")
    rec = {"impl": impl, "torch_threads": torch.get_num_threads(), "inputs_rss_gib": _rss_gib()}
    w_end = matched_weight_end(top_k)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if impl in ("neuronscan32", "neuronscan64"):
        from neuronscan.stats import soft_wpmi

        precision = "float32" if impl == "neuronscan32" else "float64"
        scores = soft_wpmi(acts, emb, txt, top_k=top_k, weight_end=w_end, precision=precision)
    elif impl == "pipeline":
        import neuronscan.stats as stats
        from pipelines.score import _wpmi_scores, _wpmi_top

        rec["import_s"] = time.perf_counter() - t0  # pipelines' imports, not timed below
        cpu0, t0 = time.process_time(), time.perf_counter()
        ids = np.arange(acts.shape[0], dtype=np.int64)
        clip = {"image_ids": ids, "embeddings": emb, "text": txt, "top_k": top_k, "precision": "float32"}
        tops = [_wpmi_top(ids, acts[:, s : s + shard_units], clip) for s in range(0, acts.shape[1], shard_units)]
        rec["top_images_s"] = time.perf_counter() - t0
        # The stage calls the kernel with the default schedule; give it CLIP-Dissect's, as for the others.
        kernel = stats.soft_wpmi_log_conditional_from_top
        stats.soft_wpmi_log_conditional_from_top = lambda *a, **k: kernel(*a, **k, weight_end=w_end)
        try:
            scores = _wpmi_scores({"layer": np.concatenate(tops)}, clip)["layer"]
        finally:
            stats.soft_wpmi_log_conditional_from_top = kernel
    elif impl == "correlation":
        from pipelines.score import _clip_correlations, _clip_moments, centred_embeddings

        rec["import_s"] = time.perf_counter() - t0
        cpu0, t0 = time.process_time(), time.perf_counter()
        ids = np.arange(acts.shape[0], dtype=np.int64)
        clip = {"image_ids": ids, "embeddings": emb, "text": txt, "centred_embeddings": centred_embeddings(emb)}
        parts = [_clip_moments(ids, acts[:, s : s + shard_units], clip) for s in range(0, acts.shape[1], shard_units)]
        rec["moments_s"] = time.perf_counter() - t0
        scores = _clip_correlations({"layer": parts}, clip)["layer"]
    elif impl == "neuronscan32_shards":
        from scipy.special import logsumexp

        from neuronscan.stats import soft_wpmi_log_conditional

        parts = [
            soft_wpmi_log_conditional(acts[:, s : s + shard_units], emb, txt, top_k=top_k, weight_end=w_end,
                                      precision="float32")
            for s in range(0, acts.shape[1], shard_units)
        ]
        logcond = np.concatenate(parts)
        scores = logcond - (logsumexp(logcond, axis=0) - np.log(logcond.shape[0]))
    elif impl == "previous":
        import importlib.util

        spec = importlib.util.spec_from_file_location("wpmi_previous", previous_src)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        scores = module.soft_wpmi(acts, emb, txt, top_k=top_k, weight_end=w_end)
    elif impl == "clipdissect":
        image_features, text_features = torch.from_numpy(emb), torch.from_numpy(txt)
        target_feats = torch.from_numpy(acts)
        clip_feats = clip_dissect_similarity(image_features, text_features)
        rec["similarity_s"] = time.perf_counter() - t0
        del image_features, text_features
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        scores = clip_dissect_soft_wpmi(clip_feats, target_feats, top_k=top_k, device="cpu").numpy()
        del clip_feats
    else:
        raise ValueError(impl)
    rec["wall_s"] = time.perf_counter() - t0
    rec["cpu_s"] = time.process_time() - cpu0
    rec["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    np.save(out, np.asarray(scores, dtype=np.float64))
    return rec


def _child_rss_gib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def run_child(impl: str, args, data: Path, out: Path) -> dict:
    """Run ``impl`` in a child process; watch its RSS (and stop it above ``--max-child-gib``)."""
    cmd = [sys.executable, __file__, "--child", impl, "--data-dir", str(data), "--child-out", str(out),
           "--top-k", str(args.top_k), "--shard-units", str(args.shard_units)]
    if args.previous_src:
        cmd += ["--previous-src", str(args.previous_src)]
    load_before = os.getloadavg()
    busy0 = _busy_cpu_s()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    extra_env = dict(item.split("=", 1) for item in args.child_env)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **extra_env, "PYTHONPATH": str(ROOT)})
    watched, stopped, timeline, last = 0.0, False, [], -1.0
    while proc.poll() is None:
        rss = _child_rss_gib(proc.pid)
        watched = max(watched, rss)
        now = time.perf_counter() - t0
        if now - last >= 2.0:  # RSS every 2 s: where the memory goes
            timeline.append((round(now, 1), round(rss, 2)))
            last = now
        if watched > args.max_child_gib and not stopped:
            proc.kill()  # a shared machine must not be pushed into reclaim
            stopped = True
        time.sleep(0.25)
    stdout, stderr = proc.communicate()
    elapsed = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    common = {
        "process_s": elapsed,
        "process_cpu_s": child_cpu,
        "others_cpu_s": max(0.0, _busy_cpu_s() - busy0 - child_cpu),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "watched_peak_rss_gib": watched,
        "rss_timeline_s_gib": timeline,
    }
    if stopped:
        return {"impl": impl, "stopped": f"RSS passed --max-child-gib {args.max_child_gib} GiB", **common}
    if proc.returncode != 0:
        sys.stderr.write(stdout + stderr)
        raise SystemExit(f"{impl} failed with exit code {proc.returncode}")
    return {**json.loads(stdout.strip().splitlines()[-1]), **common}


def compare(results: dict, files: dict, data: Path, top_k: int) -> dict:
    """Label agreement and value differences between implementations."""
    scores = {impl: np.load(path) for impl, path in files.items() if impl not in OTHER_METHODS}
    labels = {impl: s.argmax(axis=1) for impl, s in scores.items()}
    out: dict = {}
    ref = "neuronscan64" if "neuronscan64" in scores else None
    names = list(scores)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            out[f"{a}_vs_{b}"] = {
                "labels_agree": int((labels[a] == labels[b]).sum()),
                "n_units": int(labels[a].size),
                "max_abs_score_diff": float(np.abs(scores[a] - scores[b]).max()),
                "p99_abs_score_diff": float(np.quantile(np.abs(scores[a] - scores[b]), 0.99)),
            }
    if ref is not None:
        s64 = scores[ref]
        top2 = np.sort(s64, axis=1)[:, -2:]
        out["float64_top2_margin"] = {
            "min": float((top2[:, 1] - top2[:, 0]).min()),
            "median": float(np.median(top2[:, 1] - top2[:, 0])),
        }
        for other in names:
            if other == ref:
                continue
            diff = np.flatnonzero(labels[other] != labels[ref])
            key = f"{other}_vs_{ref}" if f"{other}_vs_{ref}" in out else f"{ref}_vs_{other}"
            out[key]["disagreements"] = [
                {
                    "unit": int(u),
                    "label_float64": int(labels[ref][u]),
                    f"label_{other}": int(labels[other][u]),
                    # > 0: float64 prefers its label by this much; the other implementation's error
                    # on these two entries must exceed it to flip the label.
                    "float64_margin": float(s64[u, labels[ref][u]] - s64[u, labels[other][u]]),
                    f"{other}_margin": float(scores[other][u, labels[other][u]] - scores[other][u, labels[ref][u]]),
                }
                for u in diff[:50]
            ]
    for impl, sc in scores.items():  # small enough to keep: lets a reader recheck any unit
        two = np.argsort(sc, axis=1)[:, -2:]
        rows = np.arange(sc.shape[0])
        out.setdefault("per_unit", {})[impl] = {
            "label": labels[impl].tolist(),
            "runner_up": two[:, 0].tolist(),
            "margin": np.round(sc[rows, two[:, 1]] - sc[rows, two[:, 0]], 9).tolist(),
        }
    if "clipdissect" in scores:
        acts = np.load(data / "acts.npy", mmap_mode="r")
        # CLIP-Dissect's torch.topk and neuronscan's tie rule pick the same sets unless activations tie
        # at the cut: count units where the k-th and (k+1)-th largest activations are equal.
        srt = -np.sort(-np.asarray(acts), axis=0)[: top_k + 1]
        out["units_with_ties_at_top_k_cut"] = int((srt[top_k - 1] == srt[top_k]).sum())
    return out


def dumps(doc) -> str:
    """JSON with one key per line but lists of numbers on one line (the per-unit labels and margins)."""
    text = json.dumps(doc, indent=1)
    return re.sub(r"\[[-+0-9.,eE\s]*\]", lambda m: "[" + ", ".join(m.group(0)[1:-1].split()).replace(",,", ",") + "]",
                  text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=50_000)
    p.add_argument("--n-units", type=int, default=2_048)
    p.add_argument("--n-concepts", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-units", type=int, default=64)
    p.add_argument("--impls", default="neuronscan32,neuronscan64,clipdissect",
                   help=f"comma-separated, run in this order: {', '.join(IMPLS)}")
    p.add_argument("--previous-src", type=Path, default=None, help="an older _wpmi.py for the 'previous' impl")
    p.add_argument("--max-child-gib", type=float, default=16.0,
                   help="stop an implementation whose RSS passes this (recorded as stopped)")
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "neuronscan-wpmi-scale")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "wpmi_scale.json")
    p.add_argument("--child-env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment for every child, e.g. MALLOC_MMAP_THRESHOLD_=131072 (glibc: large "
                   "blocks always mmapped, so freed ones go back to the system); repeatable")
    p.add_argument("--label", default=None,
                   help="key of this run in the JSON's runs (default: IMAGESxUNITSxCONCEPTS); other runs are kept")
    p.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        rec = child(args.child, args.data_dir, args.child_out, args.top_k, args.shard_units, args.previous_src)
        print(json.dumps(rec))
        return 0
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown:
        p.error(f"unknown impl(s) {unknown}; choose from {list(IMPLS)}")
    if "previous" in impls and args.previous_src is None:
        p.error("the 'previous' impl needs --previous-src")

    import torch

    t0 = time.perf_counter()
    params = generate(args.data_dir, args.n_images, args.n_units, args.n_concepts, args.dim, args.seed)
    params.update({"top_k": args.top_k, "alpha": 10.0, "lam": 1.0, "p_start": 0.998, "p_end": 0.97,
                   "neuronscan_weight_end": matched_weight_end(args.top_k), "shard_units": args.shard_units,
                   "child_env": args.child_env})
    print(f"inputs: {args.n_images:,} images × {args.n_units:,} units × {args.n_concepts:,} concepts, "
          f"D = {args.dim}, top_k = {args.top_k} ({time.perf_counter() - t0:.1f} s)")
    results, files = {}, {}
    with tempfile.TemporaryDirectory(prefix="wpmi-scores-") as tmp:
        for impl in impls:
            rec = run_child(impl, args, args.data_dir, Path(tmp) / f"{impl}.npy")
            results[impl] = rec
            if "stopped" in rec:
                print(f"{impl:>20}: stopped after {rec['process_s']:.1f} s, {rec['stopped']}", flush=True)
                continue
            files[impl] = Path(tmp) / f"{impl}.npy"
            extra = f" (+ similarity matrix {rec['similarity_s']:.1f} s)" if "similarity_s" in rec else ""
            print(f"{impl:>20}: {rec['wall_s']:7.1f} s{extra}, CPU {rec['cpu_s']:.1f} s, "
                  f"peak RSS {rec['peak_rss_gib']:.2f} GiB (inputs {rec['inputs_rss_gib']:.2f}); "
                  f"load {rec['loadavg_before'][0]:.2f} -> {rec['loadavg_after'][0]:.2f}, "
                  f"other processes {rec['others_cpu_s']:.1f} CPU-s", flush=True)
        comparison = compare(results, files, args.data_dir, args.top_k)
    for key, val in comparison.items():
        if isinstance(val, dict) and "labels_agree" in val:
            print(f"{key}: labels agree on {val['labels_agree']:,} of {val['n_units']:,}, "
                  f"max |score diff| {val['max_abs_score_diff']:.2e}")
    run = {
        "command": "python " + " ".join([str(Path(__file__).relative_to(ROOT)), *(argv or sys.argv[1:])]),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "params": params,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "torch": torch.__version__},
        "results": results,
        "comparison": comparison,
    }
    label = args.label or f"{args.n_images}x{args.n_units}x{args.n_concepts}"
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    if "runs" not in doc:  # a file from before runs were keyed
        doc = {"runs": {}}
    doc.update({"benchmark": "wpmi_scale", "clip_dissect": CLIP_DISSECT})
    doc["runs"][label] = run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(doc) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
