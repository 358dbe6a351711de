"""Benchmark the all-pairs score kernel: AUC + AUPRC + Mann-Whitney p + BH q for every pair.

Synthetic data: ReLU-like float32 activations (``max(0, z)``, z normal with a per-unit offset, so
15-70% exact zeros per unit: one large tie group, as after a ReLU), a quarter of the units wired
to one concept each (shifted up on its images), and random sparse labels at ``--density``.

Reports, per repeat, the wall and CPU time of ``score_block`` + ``bh_qvalues`` over all pairs; a
phase breakdown (labels, ranking, rank sums + AP, U/AUC/p, BH) from the same kernels called one
phase at a time; and the per-pair cost of the reference implementations
(``scipy.stats.mannwhitneyu`` + ``sklearn.metrics.roc_auc_score`` +
``average_precision_score``) on a random subset of pairs, extrapolated to all pairs.
``--check`` also compares those pairs, and BH over every p-value, with the references.

    python benchmarks/score_kernel.py                      # full size, ~1-2 min
    python benchmarks/score_kernel.py --n-images 5000 --n-units 64 --repeats 1 --check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy
import scipy.sparse as sp

from neuronscan.stats import bh_qvalues, score_block
from neuronscan.stats._auc import auc_from_ranks
from neuronscan.stats._auprc import ConceptLayout, block_rank_sums_and_ap
from neuronscan.stats._mannwhitney import mannwhitney_pvalues
from neuronscan.stats._ranking import rank_block, resolve_threads, run_blocks, unit_blocks
from neuronscan.stats._score import _MAX_BLOCK
from neuronscan.stats._validate import as_labels


def make_data(
    n_images: int, n_units: int, n_concepts: int, density: float, seed: int
) -> tuple[np.ndarray, sp.csc_array]:
    """ReLU-like float32 activations ``(n_images, n_units)`` and 0/1 CSC labels."""
    rng = np.random.default_rng(seed)
    labels = sp.random_array(
        (n_images, n_concepts), density=density, format="csc", dtype=np.int8, rng=rng
    )
    labels.data[:] = 1
    acts = rng.standard_normal((n_images, n_units), dtype=np.float32)
    acts += rng.uniform(-0.5, 1.0, n_units).astype(np.float32)
    wired = rng.choice(n_units, size=n_units // 4, replace=False)
    targets = rng.integers(0, n_concepts, size=wired.size)
    for unit, concept in zip(wired, targets):
        rows = labels.indices[labels.indptr[concept] : labels.indptr[concept + 1]]
        acts[rows, unit] += 1.0
    np.maximum(acts, 0.0, out=acts)
    return acts, labels


def timed_run(acts: np.ndarray, labels: sp.csc_array, n_threads: int | None) -> tuple[dict, dict]:
    """One end-to-end run: score_block + bh_qvalues over all pairs."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = score_block(acts, labels, n_threads=n_threads)
    wall1 = time.perf_counter()
    out["q_value"] = bh_qvalues(out["p_value"])
    wall2, cpu2 = time.perf_counter(), time.process_time()
    timing = {
        "wall_s": wall2 - wall0,
        "cpu_s": cpu2 - cpu0,
        "score_block_s": wall1 - wall0,
        "bh_s": wall2 - wall1,
    }
    return out, timing


def phase_breakdown(acts: np.ndarray, labels: sp.csc_array, n_threads: int | None) -> dict:
    """Wall time of each phase, run one phase at a time over all units (same kernels)."""
    n_images, n_units = acts.shape
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    layout = ConceptLayout.build(as_labels(labels, n_images))
    phases["labels_layout"] = time.perf_counter() - t0

    blocks = unit_blocks(n_units, _MAX_BLOCK)  # the block size score_block uses
    ranked: dict[int, tuple] = {}

    def rank(bounds: tuple[int, int]) -> None:
        ranked[bounds[0]] = rank_block(acts[:, bounds[0] : bounds[1]], with_below=True)

    t0 = time.perf_counter()
    run_blocks(rank, blocks, n_threads)
    phases["rank_units"] = time.perf_counter() - t0

    sums: dict[int, tuple] = {}

    def rank_sums_ap(bounds: tuple[int, int]) -> None:
        r2, _, _, _, below = ranked[bounds[0]]
        sums[bounds[0]] = block_rank_sums_and_ap(r2, below, layout)

    t0 = time.perf_counter()
    run_blocks(rank_sums_ap, blocks, n_threads)
    phases["rank_sums_and_auprc"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rank_sum2 = np.concatenate([sums[k0][0] for k0, _ in blocks])
    tie_term = np.concatenate([ranked[k0][1] for k0, _ in blocks])
    _, u = auc_from_ranks(rank_sum2 * 0.5, layout.n_pos, n_images)
    p, _ = mannwhitney_pvalues(u, layout.n_pos, n_images, tie_term)
    phases["u_auc_pvalues"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bh_qvalues(p)
    phases["bh_qvalues"] = time.perf_counter() - t0
    return phases


def oracle_pairs(
    acts: np.ndarray, labels: sp.csc_array, out: dict, n_pairs: int, seed: int, check: bool
) -> dict:
    """Time (and optionally check) the reference implementations on random scored pairs."""
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(seed + 1)
    n_images, n_units = acts.shape
    scored = np.flatnonzero((out["n_pos"] > 0) & (out["n_neg"] > 0))
    units = rng.integers(0, n_units, n_pairs)
    concepts = rng.choice(scored, n_pairs)
    dense = {c: labels[:, [c]].toarray().ravel().astype(bool) for c in np.unique(concepts)}
    cost = {"mannwhitneyu": 0.0, "roc_auc_score": 0.0, "average_precision_score": 0.0}
    err = {"auc": 0.0, "auprc": 0.0, "p_value": 0.0}
    for unit, concept in zip(units, concepts):
        y = dense[concept]
        x = acts[:, unit].astype(np.float64)  # compare in float64 (see docs/algorithms.md)
        t0 = time.perf_counter()
        p = mannwhitneyu(x[y], x[~y], alternative="greater", method="asymptotic").pvalue
        t1 = time.perf_counter()
        auc = roc_auc_score(y, x)
        t2 = time.perf_counter()
        ap = average_precision_score(y, x)
        t3 = time.perf_counter()
        cost["mannwhitneyu"] += t1 - t0
        cost["roc_auc_score"] += t2 - t1
        cost["average_precision_score"] += t3 - t2
        if check:
            err["auc"] = max(err["auc"], abs(out["auc"][unit, concept] - auc))
            err["auprc"] = max(err["auprc"], abs(out["auprc"][unit, concept] - ap))
            err["p_value"] = max(err["p_value"], abs(out["p_value"][unit, concept] - p))
    per_pair = {k: v / n_pairs for k, v in cost.items()}
    per_pair["total"] = sum(per_pair.values())
    result = {
        "n_pairs": n_pairs,
        "per_pair_s": per_pair,
        "extrapolated_all_pairs_s": per_pair["total"] * n_units * len(out["n_pos"]),
    }
    if check:
        result["max_abs_err"] = err
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=50_000)
    parser.add_argument("--n-units", type=int, default=2_048)
    parser.add_argument("--n-concepts", type=int, default=1_481)
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-threads", type=int, default=None, help="default: CPUs available")
    parser.add_argument("--oracle-pairs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="compare pairs with the references")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/score_kernel.json"))
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    acts, labels = make_data(args.n_images, args.n_units, args.n_concepts, args.density, args.seed)
    print(
        f"data: {args.n_images:,} images x {args.n_units:,} units, {args.n_concepts:,} concepts, "
        f"{labels.nnz:,} positives, zeros {np.mean(acts == 0):.1%} "
        f"({time.perf_counter() - t0:.1f} s to generate)"
    )
    load_before = os.getloadavg()
    runs = []
    out: dict = {}
    for i in range(args.repeats):
        out, timing = timed_run(acts, labels, args.n_threads)
        runs.append(timing)
        print(
            f"repeat {i + 1}: {timing['wall_s']:.2f} s wall "
            f"(score_block {timing['score_block_s']:.2f} s, BH {timing['bh_s']:.2f} s), "
            f"{timing['cpu_s']:.2f} s CPU"
        )
    walls = [r["wall_s"] for r in runs]
    phases = phase_breakdown(acts, labels, args.n_threads)
    print("phases (one at a time): " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
    oracle = oracle_pairs(acts, labels, out, args.oracle_pairs, args.seed, args.check)
    median = statistics.median(walls)
    oracle["speedup_vs_median"] = oracle["extrapolated_all_pairs_s"] / median
    print(
        f"reference per pair: {oracle['per_pair_s']['total'] * 1e3:.2f} ms -> "
        f"{oracle['extrapolated_all_pairs_s'] / 3600:.1f} h for all pairs; "
        f"speed-up {oracle['speedup_vs_median']:,.0f}x"
    )
    if args.check:
        from scipy.stats import false_discovery_control

        finite = ~np.isnan(out["p_value"])
        ref_q = false_discovery_control(out["p_value"][finite], method="bh")
        oracle["max_abs_err"]["q_value"] = float(np.max(np.abs(out["q_value"][finite] - ref_q)))
        print("max abs error vs references: " + json.dumps(oracle["max_abs_err"]))

    result = {
        "benchmark": "score_kernel",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {"n_positives": int(labels.nnz), "zero_fraction": float(np.mean(acts == 0))},
        "machine": {
            "cpus": os.cpu_count(),
            "threads_used": resolve_threads(args.n_threads, args.n_units),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
        "n_pairs": args.n_units * args.n_concepts,
        "wall_s": {"median": median, "min": min(walls), "repeats": runs},
        "phases_s": phases,
        "reference": oracle,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median {median:.2f} s, min {min(walls):.2f} s ({args.repeats} repeats) -> {args.out}")
    if args.check and max(oracle["max_abs_err"].values()) > 1e-9:
        print("CHECK FAILED: error above 1e-9", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
