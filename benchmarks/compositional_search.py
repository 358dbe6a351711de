"""Benchmark: compositional labels (exact search and INVERT beam search) for every unit of a layer.

Synthetic layer: ``n_concepts`` concepts, of which ``--n-common`` are common (support 5-40 %, like
colours or backgrounds) and the rest rare (mean support ``--density``); a fraction
``--planted-fraction`` of the units respond to a planted formula over the common concepts
("A", "A AND B", "A OR B", "(A AND B) OR C", "(A OR B) AND NOT C"), the rest are noise; every unit
is ReLU'd, so ties at 0 are common. Reported:

1. Wall and CPU time of ``compositional_search_units`` over all units (or ``--units-sample``
   units, with the full-layer time extrapolated and labelled as such), for each search in
   ``--searches`` (``exact``: the optimum of the space; ``beam``: INVERT's beam of
   ``--beam-size``), after ranking the activations (timed separately: the score stage ranks once
   for all kernels).
2. On a reduced layer (``--exhaustive-images`` images, ``--exhaustive-concepts`` concepts, rare
   ones at >= 5 % support), against an exhaustive enumeration of the same space (same atom set,
   operators, length, support bounds), for each floor in ``--exhaustive-min-fractions``: the
   fraction of units where the exact search equals the exhaustive optimum (same AUC within 1e-12,
   and the same positive set when the optimum is unique; must be 1.0), and how often the beam's
   best formula reaches the optimum, with the AUC gap when it does not.
3. For planted units whose planted set has its support in bounds (others cannot be found and are
   only counted), by template and search: how often the best formula has exactly the planted
   positive set, a set with Jaccard >= 0.9 to it, or an AUC at least that of the planted set (the
   search objective met even when a formula fits the noise slightly better than the truth).

Example (the full-size run)::

    python benchmarks/compositional_search.py --n-images 50000 --n-units 2048 --n-concepts 1481 \\
        --density 0.01 --max-length 3 --beam-size 5 --out benchmarks/results/compositional_search.json

A quick check of the script (seconds)::

    python benchmarks/compositional_search.py --n-images 5000 --n-units 16 --n-concepts 200 \\
        --exhaustive-units 10 --exhaustive-images 500 --exhaustive-concepts 16 \\
        --exhaustive-candidates 6 --compare-beam-sizes 5 --out /tmp/compositional_search.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import scipy
import scipy.sparse as sp
from scipy.stats import rankdata

from neuronscan.stats._compositional import (
    DEFAULT_MAX_FRACTION,
    DEFAULT_MIN_FRACTION,
    compositional_search,
    compositional_search_units,
)
from neuronscan.stats._reference import exhaustive_search

TEMPLATES = ("A", "A AND B", "A OR B", "(A AND B) OR C", "(A OR B) AND NOT C")


def make_labels(
    rng: np.random.Generator, n_images: int, n_concepts: int, n_common: int, density: float
) -> sp.csc_array:
    """Sparse (n_images, n_concepts) labels: common concepts first, then rare ones."""
    support = np.concatenate(
        [
            rng.uniform(0.05, 0.4, n_common),
            rng.uniform(0.5 * density, 1.5 * density, n_concepts - n_common),
        ]
    )
    rows, cols = [], []
    for c, p in enumerate(support):
        k = rng.binomial(n_images, p)
        rows.append(rng.choice(n_images, size=k, replace=False))
        cols.append(np.full(k, c))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return sp.csc_array((np.ones(rows.size), (rows, cols)), shape=(n_images, n_concepts))


def make_units(rng, labels: sp.csc_array, n_units: int, n_common: int, planted_fraction: float):
    """Activations (n_images, n_units) float32; per unit the planted mask and template, or None."""
    n_images = labels.shape[0]

    def column(c: int) -> np.ndarray:
        out = np.zeros(n_images, dtype=bool)
        out[labels.indices[labels.indptr[c] : labels.indptr[c + 1]]] = True
        return out

    acts = np.empty((n_images, n_units), dtype=np.float32)
    planted: list[np.ndarray | None] = []
    templates: list[str | None] = []
    for k in range(n_units):
        noise = rng.standard_normal(n_images)
        if rng.random() < planted_fraction:
            a, b, c = (column(int(j)) for j in rng.choice(n_common, size=3, replace=False))
            template = TEMPLATES[k % len(TEMPLATES)]
            mask = {
                "A": a,
                "A AND B": a & b,
                "A OR B": a | b,
                "(A AND B) OR C": (a & b) | c,
                "(A OR B) AND NOT C": (a | b) & ~c,
            }[template]
            acts[:, k] = np.maximum(2.5 * mask + noise, 0.0)
            planted.append(mask)
            templates.append(template)
        else:
            acts[:, k] = np.maximum(noise, 0.0)
            planted.append(None)
            templates.append(None)
    return acts, planted, templates


def _auc_of(r: np.ndarray, mask: np.ndarray) -> float:
    """AUC of a positive set from average ranks (the rank-sum formula)."""
    n, n_images = np.count_nonzero(mask), mask.size
    return float((r[mask].sum() - n * (n + 1) / 2) / (n * (n_images - n)))


def _compare(ranks, labels, names, planted, args, min_fraction: float) -> dict:
    """Exact search and beam search (each size in --compare-beam-sizes) vs exhaustive enumeration
    of the same space."""
    kw = dict(
        max_length=args.max_length, max_fraction=args.max_fraction, min_fraction=min_fraction,
        n_candidates=args.exhaustive_candidates,
    )
    n_units = ranks.shape[1]
    with_exact = args.max_length <= 3  # the exact search's limit
    gaps = {b: [] for b in args.compare_beam_sizes}
    t_beam = {b: 0.0 for b in args.compare_beam_sizes}
    exact_equal, exact_identical, exact_gap, exact_count_equal = [], [], [], []
    is_planted, t_exh, t_exact = [], 0.0, 0.0
    for k in range(n_units):
        t0 = time.perf_counter()
        exh, n_exh = exhaustive_search(ranks[:, k], labels, names, top_k=2, **kw)
        t_exh += time.perf_counter() - t0
        if with_exact:
            t0 = time.perf_counter()
            exact, n_exact = compositional_search(
                ranks[:, k], labels, names, top_k=1, search="exact", **kw
            )
            t_exact += time.perf_counter() - t0
            exact_count_equal.append(n_exact == n_exh)
        if not exh:
            if with_exact:
                exact_equal.append(not exact)
                exact_identical.append(not exact)
            continue
        is_planted.append(planted[k] is not None)
        if with_exact:
            same_auc = bool(exact) and abs(exact[0].auc - exh[0].auc) <= 1e-12
            unique = len(exh) == 1 or exh[1].auc < exh[0].auc - 1e-12
            same_set = not unique or (
                bool(exact) and np.array_equal(exact[0].mask(labels), exh[0].mask(labels))
            )
            exact_equal.append(same_auc and same_set)
            exact_identical.append(bool(exact) and exact[0] == exh[0])
            exact_gap.append(exh[0].auc - exact[0].auc if exact else np.inf)
        for b in args.compare_beam_sizes:
            t0 = time.perf_counter()
            beam, _ = compositional_search(
                ranks[:, k], labels, names, beam_size=b, top_k=1, search="beam", **kw
            )
            t_beam[b] += time.perf_counter() - t0
            gaps[b].append(exh[0].auc - beam[0].auc)
    planted_arr = np.array(is_planted, dtype=bool)

    def summary(b: int) -> dict:
        gap = np.array(gaps[b])
        hit = gap <= 1e-12

        def frac(sel: np.ndarray) -> float | None:
            return None if sel.sum() == 0 else round(float(hit[sel].mean()), 4)

        return {
            "beam_size": b,
            "beam_ge_exhaustive_fraction": frac(np.ones_like(hit)),
            "planted_units": frac(planted_arr),
            "null_units": frac(~planted_arr),
            "beam_never_above_exhaustive": bool(np.all(gap >= -1e-12)),
            "auc_gap_mean": round(float(gap.mean()), 6),
            "auc_gap_max": round(float(gap.max()), 6),
            "beam_ms_per_unit": round(1e3 * t_beam[b] / n_units, 3),
        }

    return {
        "space": (
            f"all formulas of length <= {args.max_length} over A = top {args.exhaustive_candidates} "
            f"atoms + top {args.exhaustive_candidates} in-bounds atoms, AND/OR, every prefix with "
            f"support in "
            f"[{min_fraction}, {args.max_fraction}]"
        ),
        "min_fraction": min_fraction,
        "min_images": int(np.ceil(min_fraction * ranks.shape[0])),
        "n_images": ranks.shape[0],
        "n_concepts": len(names),
        "units_compared": int(planted_arr.size),
        "planted_units_compared": int(planted_arr.sum()),
        "exhaustive_s_per_unit": round(t_exh / n_units, 4),
        "exact": None if not with_exact else {
            "search": "exact",
            # all units, including those with no formula in bounds (both must return nothing)
            "exact_equals_exhaustive_fraction": round(float(np.mean(exact_equal)), 4),
            "identical_formula_fraction": round(float(np.mean(exact_identical)), 4),
            "same_n_formulas_evaluated_fraction": round(float(np.mean(exact_count_equal)), 4),
            "auc_gap_max": round(float(np.max(exact_gap, initial=0.0)), 6),
            "exact_ms_per_unit": round(1e3 * t_exact / n_units, 3),
        },
        "by_beam_size": [summary(b) for b in args.compare_beam_sizes],
    }


def _search_layer(ranks, labels, names, planted, templates, args, search: str, search_kw: dict):
    """Time one search over every unit of the layer; (timing, planted recovery)."""
    n_search = ranks.shape[1]
    t0, c0 = time.perf_counter(), time.process_time()
    best, counts = compositional_search_units(
        ranks, labels, names, n_candidates=args.n_candidates, n_threads=args.threads,
        block_size=args.block_size, return_counts=True, search=search, **search_kw,
    )
    t_search, cpu_search = time.perf_counter() - t0, time.process_time() - c0
    per_template = {
        t: {"units": 0, "out_of_bounds": 0, "exact": 0, "jaccard_ge_0.9": 0, "auc_ge_planted": 0}
        for t in TEMPLATES
    }
    for k, (mask, template) in enumerate(zip(planted, templates)):
        if mask is None:
            continue
        row = per_template[template]
        if not args.min_fraction <= mask.mean() <= args.max_fraction:
            row["out_of_bounds"] += 1  # outside the searched space: no formula can match it
            continue
        row["units"] += 1
        if best[k] is None:
            continue
        found = best[k].mask(labels)
        row["exact"] += bool(np.array_equal(found, mask))
        jaccard = np.count_nonzero(found & mask) / np.count_nonzero(found | mask)
        row["jaccard_ge_0.9"] += bool(jaccard >= 0.9)
        row["auc_ge_planted"] += bool(best[k].auc >= _auc_of(ranks[:, k], mask) - 1e-12)
    timing = {
        "search": search,
        "beam_size": args.beam_size if search == "beam" else None,
        "search_s": round(t_search, 3),
        "search_cpu_s": round(cpu_search, 3),
        "per_unit_ms": round(1e3 * t_search / n_search, 3),
        "per_unit_cpu_ms": round(1e3 * cpu_search / n_search, 3),
        "mean_formulas_evaluated_per_unit": float(np.mean(counts)),
        "units_with_no_formula_in_bounds": int(sum(f is None for f in best)),
        "best_length_histogram": {
            str(L): int(sum(f is not None and f.length == L for f in best))
            for L in range(1, args.max_length + 1)
        },
    }
    if n_search < args.n_units:
        timing["EXTRAPOLATED_full_layer_search_s"] = round(t_search * args.n_units / n_search, 1)
    n_planted = sum(row["units"] for row in per_template.values())
    planted_result = {
        "planted_units_in_bounds": n_planted,
        "planted_units_out_of_bounds": sum(row["out_of_bounds"] for row in per_template.values()),
    }
    for key in ("exact", "jaccard_ge_0.9", "auc_ge_planted"):
        planted_result[f"{key}_fraction"] = round(
            sum(row[key] for row in per_template.values()) / max(n_planted, 1), 4
        )
    planted_result["by_template"] = per_template
    return timing, planted_result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=50_000)
    parser.add_argument("--n-units", type=int, default=2048)
    parser.add_argument("--n-concepts", type=int, default=1481)
    parser.add_argument("--n-common", type=int, default=30, help="common concepts (support 5-40%%)")
    parser.add_argument("--density", type=float, default=0.01,
                        help="mean support of the rare concepts")
    parser.add_argument("--planted-fraction", type=float, default=0.25)
    parser.add_argument("--max-length", type=int, default=3)
    parser.add_argument("--beam-size", type=int, default=5, help="beam for --searches beam")
    parser.add_argument("--searches", nargs="+", choices=["exact", "beam"],
                        default=["exact", "beam"], help="searches timed on the full layer")
    parser.add_argument("--n-candidates", type=int, default=32)
    parser.add_argument("--min-fraction", type=float, default=DEFAULT_MIN_FRACTION)
    parser.add_argument("--max-fraction", type=float, default=DEFAULT_MAX_FRACTION)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--units-sample", type=int, default=None,
                        help="search only this many units and extrapolate the full-layer time")
    parser.add_argument("--exhaustive-units", type=int, default=100)
    parser.add_argument("--exhaustive-images", type=int, default=2000)
    parser.add_argument("--exhaustive-concepts", type=int, default=40)
    parser.add_argument("--exhaustive-candidates", type=int, default=12,
                        help="n_candidates (M) for both searches in the comparison")
    parser.add_argument("--exhaustive-min-fractions", type=float, nargs="+",
                        default=[0.025, DEFAULT_MIN_FRACTION],
                        help="support floors for the comparison; 0.025 of 2,000 images is the same "
                             "50-image floor as the default 0.001 of 50,000")
    parser.add_argument("--compare-beam-sizes", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/compositional_search.json"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    search_kw = dict(
        max_length=args.max_length, beam_size=args.beam_size, min_fraction=args.min_fraction,
        max_fraction=args.max_fraction,
    )

    # ---- 1. full-size timing
    t0 = time.perf_counter()
    labels = make_labels(rng, args.n_images, args.n_concepts, args.n_common, args.density)
    n_search = args.n_units if args.units_sample is None else min(args.units_sample, args.n_units)
    acts, planted, templates = make_units(
        rng, labels, n_search, args.n_common, args.planted_fraction
    )
    t_generate = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    ranks = rankdata(acts, axis=0)
    t_rank, cpu_rank = time.perf_counter() - t0, time.process_time() - c0
    del acts
    names = [f"c{j:04d}" for j in range(args.n_concepts)]
    timing = {
        "units_searched": n_search,
        "threads": args.threads,
        "rank_s": round(t_rank, 3),
        "rank_cpu_s": round(cpu_rank, 3),
        "generate_s": round(t_generate, 3),
        "by_search": {},
    }
    planted_by_search = {}
    for search in args.searches:
        if search == "exact" and args.max_length > 3:
            timing["by_search"][search] = planted_by_search[search] = "skipped: max_length > 3"
            continue
        timing["by_search"][search], planted_by_search[search] = _search_layer(
            ranks, labels, names, planted, templates, args, search, search_kw
        )
    timing["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    del ranks

    # ---- 2. exact and beam vs exhaustive enumeration of the same space, reduced size
    rng_small = np.random.default_rng(args.seed + 1)
    small_common = min(args.n_common, args.exhaustive_concepts // 2)
    small_labels = make_labels(
        rng_small, args.exhaustive_images, args.exhaustive_concepts, small_common,
        max(args.density, 0.05),
    )
    small_acts, small_planted, _ = make_units(
        rng_small, small_labels, args.exhaustive_units, small_common, args.planted_fraction
    )
    small_ranks = rankdata(small_acts, axis=0)
    small_names = [f"c{j:03d}" for j in range(args.exhaustive_concepts)]
    comparisons = [
        _compare(small_ranks, small_labels, small_names, small_planted, args, floor)
        for floor in args.exhaustive_min_fractions
    ]

    result = {
        "benchmark": "compositional_search",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "platform": platform.platform(),
        },
        "labels_nnz": int(labels.nnz),
        "timing": timing,
        "planted_recovery": planted_by_search,
        "vs_exhaustive": comparisons,
    }
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
