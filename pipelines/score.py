"""Score stage: every unit against every concept, as Ray tasks over unit shards, then one global reduce.

Each shard task reads only its unit columns (plus ``image_id``) from every part file of a layer
(Parquet column projection does the image-major → unit-major transpose), ranks its units once, and
computes AUC, AUPRC, Mann–Whitney p-values, permutation p-values for the pairs that matter, the best
compositional formula per unit and, when CLIP embeddings exist, the soft-WPMI terms. The label matrix
(and CLIP embeddings) are put in the object store once and shared by all tasks. The driver then applies
Benjamini–Hochberg over every p-value of the run and writes ``neuron_concepts.parquet`` and
``neurons.parquet``. Memory per task ≈ n_images × shard × 8 bytes, whatever the number of images.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from neuronscan.concepts import LabelMatrix, ancestors_map, build_label_matrix
from neuronscan.errors import InputError
from neuronscan.io import get_fs, join, layer_from_dirname, write_parquet_atomic

__all__ = ["run_score", "ScoreSummary", "discover_layers", "score_shard", "LayerParts"]

log = logging.getLogger("neuronscan")

NEURON_CONCEPTS_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("unit", pa.int32()),
        ("concept", pa.string()),
        ("n_pos", pa.int64()),
        ("n_neg", pa.int64()),
        ("auc", pa.float64()),
        ("auprc", pa.float64()),
        ("p_value", pa.float64()),
        ("q_value", pa.float64()),
        ("log_p", pa.float64()),
        ("p_perm", pa.float64()),
        ("n_perm", pa.int32()),
        ("clip_score", pa.float64()),
        ("depth", pa.int16()),
    ]
)


@dataclass
class LayerParts:
    """A layer's committed part files and unit columns."""

    layer: str
    files: list[str]
    units: list[str]


@dataclass
class ScoreSummary:
    out_dir: str
    layers: dict[str, int]
    n_images: int
    n_concepts: int
    n_tests: int
    n_significant: int
    seconds: float
    counts: dict = field(default_factory=dict)
    top_units: pd.DataFrame | None = None


def _committed_parts(run_dir: str) -> set[str] | None:
    fs, path = get_fs(join(run_dir, "probe", "commits"))
    if not fs.exists(path):
        return None
    return {p.rsplit("/", 1)[-1][: -len(".parquet")] for p in fs.ls(path, detail=False) if p.endswith(".parquet")}


def discover_layers(activations_dir: str, *, committed: set[str] | None = None) -> list[LayerParts]:
    """Find ``<layer>/part-*.parquet`` under ``activations_dir`` and each layer's unit columns.

    Raises:
        InputError: the folder is missing, holds no layers, or a part file lacks ``image_id``.
    """
    fs, root = get_fs(activations_dir)
    if not fs.exists(root) or not fs.isdir(root):
        raise InputError(f"activations folder {activations_dir!r} does not exist")
    layers = []
    for sub in sorted(fs.ls(root, detail=False)):
        name = sub.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith((".", "_")) or not fs.isdir(sub):
            continue
        files = sorted(
            f for f in fs.ls(sub, detail=False)
            if f.rsplit("/", 1)[-1].startswith("part-") and f.endswith(".parquet")
            and (committed is None or f.rsplit("/", 1)[-1][5:-8] in committed)
        )
        if not files:
            continue
        if "://" in activations_dir:  # object-store listings drop the scheme; readers need it back
            files = [fs.unstrip_protocol(f) for f in files]
        with get_fs(files[0])[0].open(get_fs(files[0])[1], "rb") as fh:
            schema = pq.read_schema(fh)
        if "image_id" not in schema.names:
            raise InputError(f"{files[0]!r} has no image_id column; found {schema.names[:5]}…")
        units = [n for n in schema.names if n.startswith("u") and n[1:].isdigit()]
        if not units:
            raise InputError(f"{files[0]!r} has no unit columns (u00000, u00001, …)")
        layers.append(LayerParts(layer_from_dirname(name), files, units))
    if not layers:
        raise InputError(f"no <layer>/part-*.parquet files under {activations_dir!r}")
    return layers


def _read_columns(files: list[str], columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read ``image_id`` + ``columns`` from every file; return sorted unique ids and (n_images, n_cols) float32.

    An image that appears in several parts (a retried batch) keeps its first occurrence.
    """

    def read(f: str) -> pa.Table:
        fs, path = get_fs(f)
        with fs.open(path, "rb") as fh:
            return pq.read_table(fh, columns=["image_id", *columns])

    with ThreadPoolExecutor(max_workers=4) as pool:
        tables = list(pool.map(read, files))
    n_rows = sum(t.num_rows for t in tables)
    ids = np.empty(n_rows, dtype=np.int64)
    values = np.empty((n_rows, len(columns)), dtype=np.float32)
    row = 0
    while tables:  # copy file by file, freeing each Arrow table as soon as it is copied
        t = tables.pop(0)
        ids[row : row + t.num_rows] = t.column("image_id").to_numpy()
        for j, c in enumerate(columns):
            values[row : row + t.num_rows, j] = t.column(c).to_numpy()
        row += t.num_rows
        del t
    if len(ids) and np.all(ids[1:] > ids[:-1]):  # the usual case: already sorted and unique, no copy
        return ids, values
    uniq, first = np.unique(ids, return_index=True)
    return uniq, values[first]


def read_image_ids(files: list[str]) -> tuple[np.ndarray, int]:
    """Sorted unique image ids of a layer's parts, and how many rows were duplicates."""

    def read(f: str) -> np.ndarray:
        fs, path = get_fs(f)
        with fs.open(path, "rb") as fh:
            return pq.read_table(fh, columns=["image_id"]).column("image_id").to_numpy()

    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = np.concatenate(list(pool.map(read, files)))
    uniq = np.unique(ids)
    return uniq, int(len(ids) - len(uniq))


def score_shard(
    files: list[str],
    columns: list[str],
    first_unit: int,
    image_ids: np.ndarray,
    labels,
    concepts: list[str],
    params: dict,
    clip: dict | None = None,
) -> dict:
    """Score one shard of a layer's units against every concept (runs as a Ray task)."""
    from neuronscan.stats import (
        compositional_search_units,
        permutation_pvalues,
        score_block,
    )

    ids, acts = _read_columns(files, columns)
    if len(ids) != len(image_ids) or not np.array_equal(ids, image_ids):
        raise RuntimeError("a shard read a different set of images than the layer's index; were parts rewritten?")
    comp = params.get("compositional")
    need_ranks = (params["n_perm"] > 0 or bool(comp and comp.get("enabled"))) and len(concepts) > 0
    with warnings.catch_warnings():
        # Degenerate concepts are counted once by the driver; no per-shard warning spam.
        warnings.simplefilter("ignore", UserWarning)
        # Ranked once, inside score_block; the ranks are kept only when later steps need them.
        res = score_block(acts, labels, n_threads=params.get("threads"), return_ranks=need_ranks)
    ranks = res.pop("ranks", None)
    n_units = acts.shape[1]
    out = {
        "first_unit": first_unit,
        "n_units": n_units,
        **{k: res[k] for k in ("auc", "auprc", "p_value", "log_p", "dead", "n_nonfinite")},
        "p_perm": np.full((n_units, len(concepts)), np.nan),
        "n_perm_tested": 0,
    }
    # Permutation tests for the pairs that matter: each unit's top concepts and every pair with p <= alpha.
    n_perm = params["n_perm"]
    if n_perm > 0 and len(concepts):
        auc = np.where(np.isfinite(res["auc"]), res["auc"], -np.inf)
        top = np.argsort(-auc, axis=1, kind="stable")[:, : params["perm_top"]]
        sel = np.zeros_like(auc, dtype=bool)
        np.put_along_axis(sel, top, True, axis=1)
        sel |= np.nan_to_num(res["p_value"], nan=1.0) <= params["alpha"]
        sel &= np.isfinite(res["p_value"])
        unit_idx, concept_idx = np.nonzero(sel)
        cap = params["perm_max_pairs_shard"]
        if len(unit_idx) > cap:
            keep = np.argsort(res["p_value"][unit_idx, concept_idx], kind="stable")[:cap]
            unit_idx, concept_idx = unit_idx[keep], concept_idx[keep]
        if len(unit_idx):
            p_perm, _ = permutation_pvalues(ranks.ranks, labels, unit_idx, concept_idx, n_perm=n_perm,
                                            seed=params["seed"] + first_unit)
            out["p_perm"][unit_idx, concept_idx] = p_perm
            out["n_perm_tested"] = int(len(unit_idx))
    if comp and comp.get("enabled") and len(concepts):
        kwargs = {k: v for k, v in comp.items() if k != "enabled"}
        formulas, n_eval = compositional_search_units(
            ranks.ranks, labels, concepts, tie_term=ranks.tie_term, return_counts=True, **kwargs
        )
        out["formula"] = [f.text if f is not None else None for f in formulas]
        out["formula_auc"] = np.array([f.auc if f is not None else np.nan for f in formulas])
        out["formula_p"] = np.array([f.p_value if f is not None else np.nan for f in formulas])
        out["formula_n_evaluated"] = np.asarray(n_eval, dtype=np.int64)
    if clip is not None:
        from neuronscan.stats import soft_wpmi_log_conditional

        emb_pos = np.minimum(np.searchsorted(clip["image_ids"], ids), len(clip["image_ids"]) - 1)
        have = clip["image_ids"][emb_pos] == ids
        a = acts[have]
        finite = np.isfinite(a)
        if not finite.all():  # NaN/Inf images sink to the bottom of the unit's ranking
            a = np.where(finite, a, np.nanmin(np.where(finite, a, np.nan), axis=0, initial=0.0) - 1.0)
        out["wpmi_logcond"] = soft_wpmi_log_conditional(
            a, clip["embeddings"][emb_pos[have]], clip["text"], top_k=min(clip["top_k"], int(have.sum()))
        )
    return out


def _significant_sets(auc, q, alpha, min_auc):
    return (np.nan_to_num(q, nan=1.0) <= alpha) & (np.nan_to_num(auc, nan=0.0) >= min_auc)


def _multimodal(sig_rows: np.ndarray, concepts: list[str], anc: dict[str, set[str]] | None) -> np.ndarray:
    """A unit is multimodal when two of its significant concepts share no ancestor and neither contains the other."""
    out = np.zeros(sig_rows.shape[0], dtype=bool)
    for k in np.nonzero(sig_rows.sum(1) >= 2)[0]:
        names = [concepts[j] for j in np.nonzero(sig_rows[k])[0]]
        if anc is None:
            out[k] = True
            continue
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                a, b = names[i], names[j]
                fa, fb = anc.get(a, set()) | {a}, anc.get(b, set()) | {b}
                if not (fa & fb):
                    out[k] = True
                    break
            if out[k]:
                break
    return out


def run_score(
    *,
    activations_dir: str,
    labels: pd.DataFrame,
    out_dir: str,
    score_cfg,
    hierarchy: list[tuple[str, str]] | None = None,
    run_dir: str | None = None,
    clip_cfg=None,
    quiet: bool = False,
) -> ScoreSummary:
    """Score every unit of every layer under ``activations_dir`` against every concept in ``labels``.

    Args:
        activations_dir: folder of ``<layer>/part-*.parquet`` (``image_id`` + ``u00000…`` float32).
        labels: long-format ``(image_id, concept)`` positives.
        out_dir: where ``neuron_concepts.parquet`` and ``neurons.parquet`` go.
        score_cfg: a :class:`neuronscan.config.RunConfig` ``score`` section.
        hierarchy: ``(concept, parent)`` edges; labels propagate to ancestors and depth is recorded.
        run_dir: the run root when scoring a probe's output (only committed parts are read; CLIP
            embeddings under ``run_dir/clip`` are used when ``clip_cfg`` is set).
    """
    import ray

    t0 = time.perf_counter()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    committed = _committed_parts(run_dir) if run_dir else None
    layers = discover_layers(activations_dir, committed=committed)
    counts: dict = {"duplicate_image_rows": 0}
    index_cache: dict[bytes, tuple[np.ndarray, LabelMatrix]] = {}
    layer_ids: dict[str, np.ndarray] = {}
    mats: dict[str, LabelMatrix] = {}
    for lp in layers:
        ids, dups = read_image_ids(lp.files)
        counts["duplicate_image_rows"] += dups
        key = ids.tobytes()
        if key not in index_cache:
            index_cache[key] = (ids, build_label_matrix(labels, ids, hierarchy=hierarchy))
        layer_ids[lp.layer], mats[lp.layer] = index_cache[key]
    first = mats[layers[0].layer]
    concepts = first.concepts
    for lp in layers:
        if mats[lp.layer].concepts != concepts:
            raise InputError("layers were probed on different images with different concept sets; score them apart")
    n_pos = np.asarray(first.matrix.sum(0)).ravel().astype(np.int64)
    n_images = len(first.image_ids)
    counts["labels"] = first.report
    counts["concepts_without_positives"] = int((n_pos == 0).sum())
    counts["concepts_all_positive"] = int((n_pos == n_images).sum())
    if counts["labels"].get("labels_for_unprobed_images"):
        say(f"note: {counts['labels']['labels_for_unprobed_images']:,} label rows name images that were not probed "
            f"or failed (e.g. image_id {counts['labels']['unprobed_labelled_images_sample'][:3]}); they are not scored")
    if counts["concepts_without_positives"] or counts["concepts_all_positive"]:
        say(f"note: {counts['concepts_without_positives']} concept(s) have no positive and "
            f"{counts['concepts_all_positive']} have only positives among probed images: their AUC/p are NaN")

    clip_obj = None
    text_concepts: list[str] = []
    if clip_cfg is not None and run_dir is not None:
        clip_obj, text_concepts = _prepare_clip(run_dir, clip_cfg, concepts)

    total_units = sum(len(lp.units) for lp in layers)
    shard = score_cfg.units_per_shard
    params = {
        "alpha": score_cfg.alpha,
        "n_perm": score_cfg.n_perm,
        "perm_top": score_cfg.perm_top,
        "perm_max_pairs_shard": max(1, int(score_cfg.perm_max_pairs * shard / max(total_units, 1))),
        "seed": score_cfg.seed,
        "threads": max(1, int(round(score_cfg.cpus_per_task))),
        "compositional": score_cfg.compositional.model_dump(),
    }
    task = ray.remote(score_shard).options(num_cpus=score_cfg.cpus_per_task, max_retries=2)
    # Layers probed on the same images share one label matrix (and id index) in the object store.
    put_cache: dict[int, tuple] = {}
    clip_ref = ray.put(clip_obj) if clip_obj is not None else None
    futures = []
    for lp in layers:
        mat = mats[lp.layer]
        if id(mat) not in put_cache:
            put_cache[id(mat)] = (ray.put(mat.matrix), ray.put(layer_ids[lp.layer]))
        lab_ref, ids_ref = put_cache[id(mat)]
        for start in range(0, len(lp.units), shard):
            cols = lp.units[start : start + shard]
            futures.append((lp.layer, task.remote(lp.files, cols, start, ids_ref, lab_ref, concepts, params, clip_ref)))
    say(f"score: {total_units:,} units × {len(concepts):,} concepts over {n_images:,} images "
        f"in {len(futures)} shard(s) of ≤ {shard} units")
    results: dict[str, list[dict]] = {lp.layer: [] for lp in layers}
    pending = {ref: layer for layer, ref in futures}
    done = 0
    last = time.perf_counter()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            results[pending.pop(ref)].append(ray.get(ref))
            done += 1
        if time.perf_counter() - last > 5 or not pending:
            last = time.perf_counter()
            say(f"  score: {done}/{len(futures)} shards")

    # Reduce: assemble (units × concepts) arrays per layer, then BH over every p-value of the run.
    assembled = {}
    for lp in layers:
        parts = sorted(results[lp.layer], key=lambda r: r["first_unit"])
        assembled[lp.layer] = {
            key: np.concatenate([p[key] for p in parts])
            for key in ("auc", "auprc", "p_value", "log_p", "p_perm", "dead", "n_nonfinite")
        }
        a = assembled[lp.layer]
        a["n_perm_tested"] = sum(p["n_perm_tested"] for p in parts)
        if parts and "formula" in parts[0]:
            a["formula"] = [t for p in parts for t in p["formula"]]
            for key in ("formula_auc", "formula_p", "formula_n_evaluated"):
                a[key] = np.concatenate([p[key] for p in parts])
        if parts and "wpmi_logcond" in parts[0]:
            logcond = np.concatenate([p["wpmi_logcond"] for p in parts])
            from scipy.special import logsumexp

            # soft-WPMI prior: log p(c) = log-mean-exp of log p(c | B_k) over the layer's units (lambda = 1).
            log_prior = logsumexp(logcond, axis=0) - np.log(logcond.shape[0])
            a["wpmi"] = logcond - log_prior
    from neuronscan.stats import bh_qvalues

    all_p = np.concatenate([assembled[lp.layer]["p_value"].ravel() for lp in layers])
    all_q = bh_qvalues(all_p)
    offset = 0
    for lp in layers:
        a = assembled[lp.layer]
        size = a["p_value"].size
        a["q_value"] = all_q[offset : offset + size].reshape(a["p_value"].shape)
        offset += size

    frames = []
    neuron_rows = []
    anc = ancestors_map(hierarchy) if hierarchy else None
    depth = first.depth
    concept_arr = np.asarray(concepts, dtype=object)
    same_vocab = text_concepts == concepts
    spurious = set(score_cfg.spurious_concepts)
    for lp in layers:
        a = assembled[lp.layer]
        n_units, n_c = a["auc"].shape
        # Layers may have been probed on different images (activations made elsewhere): count per layer.
        layer_pos = np.asarray(mats[lp.layer].matrix.sum(0)).ravel().astype(np.int64)
        layer_images = len(layer_ids[lp.layer])
        unit = np.repeat(np.arange(n_units, dtype=np.int32), n_c)
        cidx = np.tile(np.arange(n_c), n_units)
        p_perm = a["p_perm"].ravel()
        cols = {
            "layer": np.full(n_units * n_c, lp.layer, dtype=object),
            "unit": unit,
            "concept": concept_arr[cidx],
            "n_pos": layer_pos[cidx],
            "n_neg": layer_images - layer_pos[cidx],
            "auc": a["auc"].ravel(),
            "auprc": a["auprc"].ravel(),
            "p_value": a["p_value"].ravel(),
            "q_value": a["q_value"].ravel(),
            "log_p": a["log_p"].ravel(),
            "p_perm": p_perm,
            "n_perm": np.where(np.isnan(p_perm), 0, score_cfg.n_perm).astype(np.int32),
            "clip_score": (a["wpmi"].ravel() if ("wpmi" in a and same_vocab) else np.full(n_units * n_c, np.nan)),
            "depth": (depth[cidx] if depth is not None else np.full(n_units * n_c, -1, dtype=np.int16)),
        }
        frames.append(pa.Table.from_pydict(cols, schema=NEURON_CONCEPTS_SCHEMA))

        auc_f = np.where(np.isfinite(a["auc"]), a["auc"], -np.inf)
        best = np.argmax(auc_f, axis=1) if n_c else np.zeros(n_units, dtype=int)
        rows = np.arange(n_units)
        has_best = np.isfinite(auc_f[rows, best]) if n_c else np.zeros(n_units, bool)
        sig = _significant_sets(a["auc"], a["q_value"], score_cfg.alpha, score_cfg.min_auc)
        n_sig = ((np.nan_to_num(a["q_value"], nan=1.0) <= score_cfg.alpha) & (np.nan_to_num(a["auc"]) > 0.5)).sum(1)
        nd = {
            "layer": [lp.layer] * n_units,
            "unit": rows.astype(np.int32),
            "best_concept": [concepts[b] if h else None for b, h in zip(best, has_best)],
            "best_auc": np.where(has_best, a["auc"][rows, best] if n_c else np.nan, np.nan),
            "best_auprc": np.where(has_best, a["auprc"][rows, best] if n_c else np.nan, np.nan),
            "best_q": np.where(has_best, a["q_value"][rows, best] if n_c else np.nan, np.nan),
            "best_p_perm": np.where(has_best, a["p_perm"][rows, best] if n_c else np.nan, np.nan),
            "n_significant": n_sig.astype(np.int32),
            "formula": a.get("formula", [None] * n_units),
            "formula_auc": a.get("formula_auc", np.full(n_units, np.nan)),
            "formula_p_exploratory": a.get("formula_p", np.full(n_units, np.nan)),
            "formula_n_evaluated": a.get("formula_n_evaluated", np.zeros(n_units, np.int64)),
            "clip_label": [None] * n_units,
            "clip_score": np.full(n_units, np.nan),
            "dead": a["dead"].astype(bool),
            "multimodal": _multimodal(sig, concepts, anc),
            "spurious": np.array([bool(spurious & {concepts[j] for j in np.nonzero(sig[k])[0]}) for k in rows]),
            "n_nonfinite": a["n_nonfinite"].astype(np.int64),
        }
        if "wpmi" in a and len(text_concepts):
            wbest = np.argmax(a["wpmi"], axis=1)
            nd["clip_label"] = [text_concepts[j] for j in wbest]
            nd["clip_score"] = a["wpmi"][rows, wbest]
        neuron_rows.append(pd.DataFrame(nd))
        if "wpmi" in a and not same_vocab:
            _write_clip_labels(out_dir, lp.layer, a["wpmi"], text_concepts)

    table = pa.concat_tables(frames)
    write_parquet_atomic(table, join(out_dir, "neuron_concepts.parquet"))
    neurons = pd.concat(neuron_rows, ignore_index=True)
    write_parquet_atomic(pa.Table.from_pandas(neurons, preserve_index=False), join(out_dir, "neurons.parquet"))

    n_tests = int(np.isfinite(all_p).sum())
    n_significant = int((np.nan_to_num(all_q, nan=1.0) <= score_cfg.alpha).sum())
    counts.update(
        {
            "tests": n_tests,
            "significant_pairs": n_significant,
            "dead_units": int(neurons["dead"].sum()),
            "units_with_nonfinite": int((neurons["n_nonfinite"] > 0).sum()),
            "permutation_tested_pairs": int(sum(assembled[lp.layer]["n_perm_tested"] for lp in layers)),
            "n_perm": score_cfg.n_perm,
            "fdr": {"method": "benjamini-hochberg", "scope": "all p-values of the run", "alpha": score_cfg.alpha},
            "compositional_p_values": "exploratory (not corrected for the formulas searched; "
            "formula_n_evaluated gives the count for a Bonferroni bound)",
        }
    )
    top = (
        neurons.dropna(subset=["best_auc"]).sort_values(["layer", "best_auc"], ascending=[True, False])
        .groupby("layer", sort=False).head(3)
    )
    return ScoreSummary(
        out_dir=out_dir,
        layers={lp.layer: len(lp.units) for lp in layers},
        n_images=n_images,
        n_concepts=len(concepts),
        n_tests=n_tests,
        n_significant=n_significant,
        seconds=time.perf_counter() - t0,
        counts=counts,
        top_units=top,
    )


def _prepare_clip(run_dir: str, clip_cfg, concepts: list[str]) -> tuple[dict | None, list[str]]:
    from neuronscan.clip import embed_texts, load_clip, load_vocabulary

    fs, path = get_fs(join(run_dir, "clip"))
    if not fs.exists(path):
        return None, []
    files = sorted(f for f in fs.ls(path, detail=False) if f.endswith(".parquet"))
    tables = []
    for f in files:
        with fs.open(f, "rb") as fh:
            tables.append(pq.read_table(fh))
    if not tables:
        return None, []
    table = pa.concat_tables(tables)
    ids = table.column("image_id").to_numpy()
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    uniq, first = np.unique(ids, return_index=True)
    vocab = load_vocabulary(clip_cfg.vocabulary) if clip_cfg.vocabulary else list(concepts)
    bundle = load_clip(clip_cfg.model, pretrained=clip_cfg.pretrained, checkpoint=clip_cfg.checkpoint)
    text = embed_texts(bundle, vocab)
    return {"image_ids": uniq, "embeddings": emb[first], "text": text, "top_k": clip_cfg.top_k}, vocab


def _write_clip_labels(out_dir: str, layer: str, wpmi: np.ndarray, vocab: list[str]) -> None:
    n_units, n_c = wpmi.shape
    table = pa.table(
        {
            "layer": np.full(n_units * n_c, layer, dtype=object),
            "unit": np.repeat(np.arange(n_units, dtype=np.int32), n_c),
            "concept": np.asarray(vocab, dtype=object)[np.tile(np.arange(n_c), n_units)],
            "clip_score": wpmi.ravel(),
        }
    )
    from neuronscan.io import layer_dirname

    write_parquet_atomic(table, join(out_dir, "clip_labels", f"{layer_dirname(layer)}.parquet"))
