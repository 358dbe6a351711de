"""Hierarchy stage: collaborative units per concept at every level, and multimodal units per level.

Reads a scored run: the pooled activations the probe wrote (``activations/<layer>/part-*.parquet``,
committed parts only, page checksums verified), its labels and hierarchy (labels propagated to ancestors,
as the score stage does), ``neuron_concepts.parquet`` and ``neurons.parquet``. No model pass.

1. **Collaborative units** (`neuronscan.hierarchy.collaborative_units`): for every (layer, concept) with at
   least ``hierarchy.min_positives`` positives and negatives, greedy forward selection of units for a joint
   linear probe until its held-out AUC reaches the target; Shapley shares of the selected units. One Ray
   task per ``hierarchy.concepts_per_task`` concepts of a layer (``hierarchy.cpus_per_task`` CPUs each), the
   layer's activations put in the object store once; small inputs with no Ray running are done here in
   the driver (the same function on the same inputs). → ``concept_units.parquet``.
2. **Multimodal units** (`neuronscan.hierarchy.multimodal_pairs`): per unit, its aligned concepts (q ≤
   alpha, AUC ≥ ``score.min_auc``) that meet only at or above ``hierarchy.multimodal_lca_depth``. →
   ``multimodal_units.parquet``, ``hierarchy_units.parquet`` (best-concept depth per unit) and
   ``hierarchy_summary.json`` (per layer: depth distribution of best concepts, multimodal units by depth,
   collaborative-set sizes by depth).

``run.json`` gets ``hierarchy`` (counts and settings), ``timings.hierarchy_s`` and ``config.hierarchy``.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from neuronscan.concepts import build_label_matrix
from neuronscan.errors import InputError
from neuronscan.hierarchy import (
    CONCEPT_UNITS_FILE,
    CONCEPT_UNITS_SCHEMA,
    HIERARCHY_SUMMARY_FILE,
    HIERARCHY_UNITS_FILE,
    HIERARCHY_UNITS_SCHEMA,
    MULTIMODAL_UNITS_FILE,
    MULTIMODAL_UNITS_SCHEMA,
    NO_PAIR,
    CollabParams,
    ConceptDag,
    collaborative_units,
    multimodal_pairs,
)
from neuronscan.io import LayerParts, RunDir, read_parquet, read_part, write_json_atomic, write_parquet_atomic

__all__ = ["hierarchy_run", "HierarchySummary", "collaborative_task", "TASK_RETRIES"]

TASK_RETRIES = 2
"""Times a hierarchy task whose worker died is run again before the stage fails."""

_DRIVER_ONLY_WORK = 1 << 27
"""Unit × training-row values (summed over the (layer, concept) probes) that the driver handles alone
when no Ray is running, rather than start one (~10 s of work on one core)."""


@dataclass
class HierarchySummary:
    """What `hierarchy_run` did: the files it wrote, its counts, the per-layer summary and its seconds."""

    files: dict[str, str]
    counts: dict
    layers: dict[str, dict]
    seconds: float
    timings: dict = field(default_factory=dict)


def _params(hcfg) -> CollabParams:
    return CollabParams(
        min_positives=hcfg.min_positives, max_positives=hcfg.max_positives, max_negatives=hcfg.max_negatives,
        holdout=hcfg.holdout, n_candidates=hcfg.n_candidates, max_units=hcfg.max_units,
        target_auc=hcfg.target_auc, target_fraction=hcfg.target_fraction, l2=hcfg.l2, seed=hcfg.seed,
    )


def _read_layer(lp: LayerParts) -> tuple[np.ndarray, np.ndarray, dict]:
    """A layer's image ids (sorted, unique: an image in two parts keeps its first row) and its ``(N, K)``
    float32 activations, non-finite values replaced by the unit's finite extremes (NaN and −inf by the
    lowest, +inf by the highest: the order the score stage ranks them in)."""
    tables = [read_part(f, ["image_id", *lp.units]) for f in lp.files]
    n_rows = sum(t.num_rows for t in tables)
    ids = np.empty(n_rows, dtype=np.int64)
    by_unit = np.empty((len(lp.units), n_rows), dtype=np.float32)
    row = 0
    for t in tables:
        ids[row : row + t.num_rows] = t.column("image_id").to_numpy()
        for j, c in enumerate(lp.units):
            by_unit[j, row : row + t.num_rows] = t.column(c).to_numpy()
        row += t.num_rows
    del tables
    uniq, first = np.unique(ids, return_index=True)
    if len(uniq) != n_rows:
        by_unit = by_unit[:, first]
    finite = np.isfinite(by_unit)
    n_nonfinite = int(by_unit.size - finite.sum())
    if n_nonfinite:
        for j in np.flatnonzero(~finite.all(1)):
            v = by_unit[j]
            ok = finite[j]
            lo, hi = (float(v[ok].min()), float(v[ok].max())) if ok.any() else (0.0, 0.0)
            by_unit[j] = np.where(ok, v, np.where(v == np.inf, hi, lo))
    return uniq, np.ascontiguousarray(by_unit.T), {"duplicate_image_rows": int(n_rows - len(uniq)),
                                                   "nonfinite_values": n_nonfinite}


def collaborative_task(x: np.ndarray, layer: str, unit_ids: np.ndarray, jobs: list[tuple[str, int, np.ndarray]],
                       params: CollabParams) -> dict:
    """The collaborative sets of some concepts of one layer (runs as a Ray task, or in the driver).

    Args:
        x: ``(n_images, n_units)`` finite activations of the layer.
        unit_ids: the unit index of each column.
        jobs: ``(concept, depth, positive row indices)`` per concept.

    Returns:
        Columns of ``concept_units.parquet`` (one entry per selected unit), ``sets`` (per concept: its set size,
        full and final AUC, reached, or None for too few positives) and the task's ``seconds``.
    """
    t0 = time.perf_counter()
    cols: dict[str, list] = {f.name: [] for f in CONCEPT_UNITS_SCHEMA}
    sets = []
    y = np.zeros(x.shape[0], dtype=bool)
    for concept, depth, positives in jobs:
        y[:] = False
        y[positives] = True
        res = collaborative_units(x, y, concept, params)
        if res is None:
            sets.append(None)
            continue
        n = len(res.units)
        sets.append({"concept": concept, "depth": depth, "n_units": n, "full_auc": res.full_auc,
                     "final_auc": float(res.cumulative_auc[-1]) if n else float("nan"), "reached": res.reached})
        cols["concept"] += [concept] * n
        cols["depth"] += [depth] * n
        cols["layer"] += [layer] * n
        cols["rank"] += list(range(n))
        cols["unit"] += [int(unit_ids[u]) for u in res.units]
        cols["weight"] += res.weights.tolist()
        cols["shapley"] += res.shapley.tolist()
        cols["cumulative_auc"] += res.cumulative_auc.tolist()
        cols["n_pos"] += [res.n_pos] * n
        cols["unit_auc"] += res.unit_auc.tolist()
        cols["n_units"] += [n] * n
        cols["target_auc"] += [res.target_auc] * n
        cols["full_auc"] += [res.full_auc] * n
        cols["reached"] += [res.reached] * n
    return {"columns": cols, "sets": sets, "seconds": time.perf_counter() - t0}


@dataclass
class _LayerJobs:
    layer: str
    unit_ids: np.ndarray
    x: np.ndarray | None
    jobs: list[tuple[str, int, np.ndarray]]
    n_train_max: int


def _select_layers(parts: list[LayerParts], wanted: list[str] | None) -> list[LayerParts]:
    if not wanted:
        return parts
    keep = [lp for lp in parts if any(fnmatch.fnmatchcase(lp.layer, w) for w in wanted)]
    if not keep:
        raise InputError(f"hierarchy.layers {wanted} match none of the run's layers "
                         f"({', '.join(lp.layer for lp in parts)})")
    return keep


def _discover(run: RunDir, hcfg, params: CollabParams, labels: pd.DataFrame, hierarchy, counts: dict):
    """Each selected layer's activations and its jobs (one per concept with enough positives and negatives)."""
    parts = _select_layers(run.layer_parts(), hcfg.layers)
    cache: dict[bytes, tuple] = {}
    out: list[_LayerJobs] = []
    counts.update({"duplicate_image_rows": 0, "nonfinite_values": 0})
    concepts = depth = None
    for lp in parts:
        ids, x, read_counts = _read_layer(lp)
        for key, value in read_counts.items():
            counts[key] += value
        key = ids.tobytes()
        if key not in cache:
            mat = build_label_matrix(labels, ids, hierarchy=hierarchy)
            csc = mat.matrix.tocsc()
            positives = [np.sort(csc.indices[csc.indptr[j] : csc.indptr[j + 1]]) for j in range(csc.shape[1])]
            cache[key] = (mat, positives)
        mat, positives = cache[key]
        concepts, depth = mat.concepts, mat.depth
        n = len(ids)
        jobs = []
        for j, concept in enumerate(mat.concepts):
            n_pos = len(positives[j])
            if n_pos >= params.min_positives and n - n_pos >= params.min_positives:
                d = int(mat.depth[j]) if mat.depth is not None else -1
                jobs.append((concept, d, positives[j]))
        unit_ids = np.asarray([int(c[1:]) for c in lp.units], dtype=np.int32)
        n_train = min(n, params.max_positives + params.max_negatives)
        out.append(_LayerJobs(lp.layer, unit_ids, x, jobs, n_train))
    counts["concepts"] = len(concepts or [])
    counts["concepts_probed"] = len({c for lj in out for c, _, _ in lj.jobs})
    return out, concepts or [], depth


def _chunks(jobs: list, size: int) -> list[list]:
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def _run_jobs(layers: list[_LayerJobs], params: CollabParams, hcfg, address: str | None, say,
              timings: dict) -> list[tuple[str, dict]]:
    """Every task's result, as Ray tasks or (small inputs, no Ray running) in the driver."""
    work = sum(len(lj.jobs) * len(lj.unit_ids) * lj.n_train_max for lj in layers)
    loaded = sys.modules.get("ray")  # importing Ray takes ~1 s: a run with no Ray up may not need it
    ray_up = loaded is not None and loaded.is_initialized()
    n_tasks = sum(len(_chunks(lj.jobs, hcfg.concepts_per_task)) for lj in layers)
    total = sum(len(lj.jobs) for lj in layers)
    say(f"hierarchy: {total:,} (layer, concept) probes over {len(layers)} layer(s) in {n_tasks} task(s)")
    results: list[tuple[str, dict]] = []
    if not ray_up and work <= _DRIVER_ONLY_WORK:
        t = time.perf_counter()
        for lj in layers:
            for chunk in _chunks(lj.jobs, hcfg.concepts_per_task):
                results.append((lj.layer, collaborative_task(lj.x, lj.layer, lj.unit_ids, chunk, params)))
            lj.x = None
        timings["in_driver"] = True
        timings["collaborative_s"] = round(time.perf_counter() - t, 3)
        return results
    import ray

    from pipelines._ray import init_ray

    t = time.perf_counter()
    if not ray.is_initialized():
        init_ray(address)
    timings["ray_start_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    task = ray.remote(collaborative_task).options(num_cpus=hcfg.cpus_per_task, max_retries=TASK_RETRIES)
    pending = {}
    for lj in layers:
        if not lj.jobs:
            lj.x = None
            continue
        x_ref = ray.put(lj.x)
        lj.x = None  # the object store holds it now
        for chunk in _chunks(lj.jobs, hcfg.concepts_per_task):
            pending[task.remote(x_ref, lj.layer, lj.unit_ids, chunk, params)] = lj.layer
    last = time.perf_counter()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            layer = pending.pop(ref)
            try:
                results.append((layer, ray.get(ref)))
            except BaseException:
                for other in pending:
                    ray.cancel(other, force=True)
                raise
        if time.perf_counter() - last > 5 or not pending:
            last = time.perf_counter()
            say(f"  hierarchy: {len(results)}/{n_tasks} tasks")
    timings["in_driver"] = False
    timings["collaborative_s"] = round(time.perf_counter() - t, 3)
    return results


def _concept_units_table(results: list[tuple[str, dict]], layer_order: list[str]) -> pa.Table:
    cols: dict[str, list] = {f.name: [] for f in CONCEPT_UNITS_SCHEMA}
    for _, res in results:
        for k in cols:
            cols[k] += res["columns"][k]
    table = pa.table({f.name: pa.array(cols[f.name], f.type) for f in CONCEPT_UNITS_SCHEMA},
                     schema=CONCEPT_UNITS_SCHEMA)
    if table.num_rows:
        order = {name: i for i, name in enumerate(layer_order)}
        frame = table.to_pandas()
        frame["_layer"] = frame["layer"].map(order)
        frame = frame.sort_values(["_layer", "depth", "concept", "rank"], kind="stable").drop(columns="_layer")
        table = pa.Table.from_pandas(frame, schema=CONCEPT_UNITS_SCHEMA, preserve_index=False)
    return table


def _layer_arrays(frame: pd.DataFrame, concepts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One layer's ``neuron_concepts`` rows as ``(unit_ids, auc (U, C), q (U, C))`` over ``concepts``."""
    units = np.unique(frame["unit"].to_numpy(np.int64))
    col = {c: j for j, c in enumerate(concepts)}
    u = np.searchsorted(units, frame["unit"].to_numpy(np.int64))
    c = frame["concept"].map(col).to_numpy()
    keep = ~pd.isna(c)
    u, c = u[keep], c[keep].astype(np.int64)
    auc = np.full((len(units), len(concepts)), np.nan)
    q = np.full((len(units), len(concepts)), np.nan)
    auc[u, c] = frame["auc"].to_numpy(float)[keep]
    q[u, c] = frame["q_value"].to_numpy(float)[keep]
    return units, auc, q


def _multimodal(run: RunDir, cfg, hierarchy, concept_units: pd.DataFrame, layer_order: list[str],
                counts: dict) -> tuple[pa.Table, pa.Table, dict]:
    """``multimodal_units`` and ``hierarchy_units`` tables, and the per-layer summary."""
    from neuronscan.stats import aligned_mask, best_concepts

    hcfg = cfg.hierarchy
    info = run.read_info() or {}
    alpha = run.alpha() or cfg.score.alpha
    score_info = info.get("score") if isinstance(info.get("score"), dict) else {}
    min_auc = score_info.get("min_auc", cfg.score.min_auc)
    counts.update({"alpha": alpha, "min_auc": min_auc, "multimodal_lca_depth": hcfg.multimodal_lca_depth})
    if not run.exists(run.neuron_concepts):
        raise InputError(f"{run.neuron_concepts} is missing: score the run first (neuronscan score --run {run.root})")
    pairs_frame = read_parquet(run.neuron_concepts, ["layer", "unit", "concept", "auc", "q_value"]).to_pandas()
    neurons = read_parquet(run.neurons).to_pandas() if run.exists(run.neurons) else None
    concepts = sorted(pairs_frame["concept"].astype(str).unique())
    dag = ConceptDag(hierarchy or [], concepts)
    with_hierarchy = bool(hierarchy)
    sets_per_unit = (concept_units.groupby(["layer", "unit"]).size() if len(concept_units)
                     else pd.Series(dtype=np.int64))
    mm_cols: dict[str, list] = {f.name: [] for f in MULTIMODAL_UNITS_SCHEMA}
    hu_frames = []
    layers: dict[str, dict] = {}
    by_layer = dict(tuple(pairs_frame.groupby("layer", sort=False)))
    ordered = [name for name in layer_order if name in by_layer]  # the layers hierarchy.layers selects
    for layer in ordered:
        units, auc, q = _layer_arrays(by_layer[layer], concepts)
        aligned = aligned_mask(q, auc, alpha, min_auc)
        found = multimodal_pairs(aligned, auc, concepts, dag, max_lca_depth=hcfg.multimodal_lca_depth,
                                 max_pairs_per_unit=hcfg.multimodal_max_pairs)
        for k, rows in found.pairs.items():
            for a, b, lcas, d, auc_a, auc_b in rows:
                mm_cols["layer"].append(layer)
                mm_cols["unit"].append(int(units[k]))
                mm_cols["concept_a"].append(a)
                mm_cols["concept_b"].append(b)
                mm_cols["lca"].append(lcas)
                mm_cols["lca_depth"].append(d)
                mm_cols["auc_a"].append(auc_a)
                mm_cols["auc_b"].append(auc_b)
        best, has_best = best_concepts(auc)
        best_names = [concepts[b] if h else None for b, h in zip(best, has_best)]
        dead = np.zeros(len(units), dtype=bool)
        if neurons is not None:
            nl = neurons[neurons["layer"] == layer].set_index("unit")
            idx = pd.Index(units)
            if "best_concept" in nl:
                known = nl["best_concept"].reindex(idx)
                best_names = [b if isinstance(b, str) else (None if pd.isna(b) else str(b))
                              for b in known.to_numpy(object)]
            if "dead" in nl:
                dead = nl["dead"].reindex(idx).fillna(False).to_numpy(bool)
        col = {c: j for j, c in enumerate(concepts)}
        rows_idx = np.arange(len(units))
        best_col = np.array([col.get(b, -1) if b is not None else -1 for b in best_names], dtype=np.int64)
        has = best_col >= 0
        best_auc = np.where(has, auc[rows_idx, np.maximum(best_col, 0)], np.nan)
        best_aligned = has & aligned[rows_idx, np.maximum(best_col, 0)]
        best_depth = np.array([dag.depth(b) if (b is not None and with_hierarchy) else -1 for b in best_names],
                              dtype=np.int16)
        n_sets = np.array([int(sets_per_unit.get((layer, int(u)), 0)) for u in units], dtype=np.int32)
        min_lca = pd.array(np.where(found.min_lca_depth == NO_PAIR, 0, found.min_lca_depth), dtype="Int16")
        min_lca[found.min_lca_depth == NO_PAIR] = pd.NA
        hu_frames.append(pd.DataFrame({
            "layer": layer, "unit": units.astype(np.int32), "best_concept": best_names, "best_depth": best_depth,
            "best_auc": best_auc, "best_aligned": best_aligned, "n_aligned": found.n_aligned,
            "min_lca_depth": min_lca, "n_multimodal_pairs": found.n_pairs, "multimodal": found.n_pairs > 0,
            "n_concept_sets": n_sets,
        }))
        layers[layer] = _layer_summary(layer, best_depth, best_aligned, has & ~dead, found, dag, concept_units,
                                       with_hierarchy)
    mm = pa.table({f.name: pa.array(mm_cols[f.name], f.type) for f in MULTIMODAL_UNITS_SCHEMA},
                  schema=MULTIMODAL_UNITS_SCHEMA)
    hu_frame = pd.concat(hu_frames, ignore_index=True) if hu_frames else pd.DataFrame(
        {f.name: pd.Series(dtype=object) for f in HIERARCHY_UNITS_SCHEMA})
    hu = pa.Table.from_pandas(hu_frame, schema=HIERARCHY_UNITS_SCHEMA, preserve_index=False)
    counts["multimodal_units"] = int(sum(s["multimodal_units"] for s in layers.values()))
    counts["multimodal_pairs"] = int(sum(s["multimodal_pairs"] for s in layers.values()))
    return mm, hu, layers


def _layer_summary(layer: str, best_depth: np.ndarray, best_aligned: np.ndarray, alive_with_best: np.ndarray,
                   found, dag: ConceptDag, concept_units: pd.DataFrame, with_hierarchy: bool) -> dict:
    """The numbers of ``hierarchy_summary.json`` for one layer."""
    aligned_units = best_aligned & alive_with_best
    depths = best_depth[aligned_units].astype(int)
    max_depth = max(dag.depths.values(), default=0) if with_hierarchy else 0
    mm_by_depth = {str(d): int(((found.min_lca_depth != NO_PAIR) & (found.min_lca_depth <= d)).sum())
                   for d in range(-1, max_depth + 1)}
    out = {
        "units": int(len(best_depth)),
        "units_with_best": int(alive_with_best.sum()),
        "units_best_aligned": int(aligned_units.sum()),
        "best_depth_counts": {str(d): int((depths == d).sum()) for d in sorted(set(depths.tolist()))},
        "mean_best_depth": round(float(depths.mean()), 4) if len(depths) else None,
        "mean_best_depth_all": (round(float(best_depth[alive_with_best].mean()), 4)
                                if alive_with_best.any() and with_hierarchy else None),
        "multimodal_units": int((found.n_pairs > 0).sum()),
        "multimodal_pairs": int(found.n_pairs.sum()),
        "multimodal_units_by_depth": mm_by_depth,
    }
    cu = concept_units[concept_units["layer"] == layer] if len(concept_units) else concept_units
    by_depth = {}
    if len(cu):
        sets = cu.groupby("concept").agg(depth=("depth", "first"), n_units=("n_units", "first"),
                                         final_auc=("cumulative_auc", "last"), reached=("reached", "first"))
        for d, g in sets.groupby("depth"):
            by_depth[str(int(d))] = {"concepts": int(len(g)), "mean_units": round(float(g["n_units"].mean()), 3),
                                     "mean_final_auc": round(float(g["final_auc"].mean()), 4),
                                     "reached": int(g["reached"].sum())}
    out["collaborative_by_depth"] = by_depth
    return out


def _hierarchy_of(run: RunDir) -> list[tuple[str, str]] | None:
    if not run.exists(run.hierarchy):
        return None
    h = read_parquet(run.hierarchy).to_pandas()
    return list(zip(h["concept"].astype(str), h["parent"].astype(str))) or None


def hierarchy_run(cfg, run_dir: str | RunDir, *, quiet: bool = False, address: str | None = None) -> HierarchySummary:
    """Run the hierarchy stage on a scored run with the settings of ``cfg.hierarchy`` (module docstring).

    Args:
        cfg: the run's `neuronscan.config.RunConfig` (``hierarchy``; ``score.alpha``/``min_auc`` when run.json
            does not give them).
        run_dir: the run directory (its lock is the caller's).
        address: the Ray cluster to join when the work is too large for the driver and no Ray is running.

    Raises:
        InputError: the run has no labels, activations or ``neuron_concepts.parquet``.
    """
    t0 = time.perf_counter()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    hcfg = cfg.hierarchy
    params = _params(hcfg)
    if not run.exists(run.labels):
        raise InputError(f"{run.labels} is missing: is {run.root!r} a probed run?")
    labels = read_parquet(run.labels).to_pandas()
    hierarchy = _hierarchy_of(run)
    counts: dict = {}
    timings: dict = {}
    t = time.perf_counter()
    layers, _, _ = _discover(run, hcfg, params, labels, hierarchy, counts)
    timings["read_s"] = round(time.perf_counter() - t, 3)
    layer_order = [lj.layer for lj in layers]
    results = _run_jobs(layers, params, hcfg, address, say, timings)
    t = time.perf_counter()
    table = _concept_units_table(results, layer_order)
    files = {name: run.path(name) for name in (CONCEPT_UNITS_FILE, MULTIMODAL_UNITS_FILE, HIERARCHY_UNITS_FILE,
                                               HIERARCHY_SUMMARY_FILE)}
    write_parquet_atomic(table, files[CONCEPT_UNITS_FILE])
    sets = [s for _, res in results for s in res["sets"] if s is not None]
    counts["probes"] = len(sets)
    counts["probes_without_candidates"] = sum(1 for s in sets if s["n_units"] == 0)
    counts["probes_reached"] = sum(1 for s in sets if s["reached"])
    counts["concept_unit_rows"] = table.num_rows
    concept_units = table.to_pandas()
    mm, hu, per_layer = _multimodal(run, cfg, hierarchy, concept_units, layer_order, counts)
    write_parquet_atomic(mm, files[MULTIMODAL_UNITS_FILE])
    write_parquet_atomic(hu, files[HIERARCHY_UNITS_FILE])
    timings["multimodal_and_writes_s"] = round(time.perf_counter() - t, 3)
    seconds = time.perf_counter() - t0
    timings["total_s"] = round(seconds, 3)
    settings = hcfg.model_dump(mode="json")
    summary = {
        "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "counts": counts,
        "layers": per_layer,
        "timings": timings,
    }
    write_json_atomic(summary, files[HIERARCHY_SUMMARY_FILE])
    run.update_info({
        "hierarchy": {**counts, "finished": summary["finished"]},
        "timings": {"hierarchy_s": round(seconds, 3)},
        "config": {"hierarchy": settings},
    })
    say(f"hierarchy: {counts['probes']:,} probes ({counts['probes_reached']:,} reached the target), "
        f"{counts['multimodal_units']:,} units multimodal at LCA depth ≤ {hcfg.multimodal_lca_depth}, "
        f"in {seconds:.1f} s")
    return HierarchySummary(files, counts, per_layer, seconds, timings)
