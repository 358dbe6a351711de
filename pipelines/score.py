"""Score stage: every unit against every concept, as Ray tasks over unit shards, then one global reduce.

Each shard task reads only its unit columns (plus ``image_id``) from every part file of a layer
(Parquet column projection does the image-major → unit-major transpose), ranks its units once, and
computes AUC, AUPRC, Mann–Whitney p-values, permutation p-values for the pairs that matter, the best
compositional formula per unit and, when CLIP embeddings exist, the soft-WPMI terms. The label matrix,
its layout for the AUPRC kernel (and CLIP embeddings) are put in the object store once and shared by all
tasks. The driver then applies Benjamini–Hochberg over every p-value of the run and writes
``neuron_concepts.parquet`` and ``neurons.parquet``. Memory per task ≈ n_images × shard × 8 bytes,
whatever the number of images.

Every phase is timed (`ScoreSummary.timings`): the driver's wall time per phase, which adds up to the
whole call, and the shard tasks' own seconds per phase summed over the shards.

An embedded Ray requested with ``init_ray(background=True)`` starts once discovery has read the first
layer's image ids, and overlaps the rest of discovery (the wait for it is the ``ray_wait`` phase). Inputs of
at most `_DRIVER_ONLY_VALUES` unit × image values are scored by the driver alone and start no Ray; with
larger inputs the driver scores shards of at most that size itself while the Ray start is under way
(``shards_while_ray_starts``) and hands the rest to Ray tasks once it is up. The numbers are those a Ray
task computes (the same function on the same inputs).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from neuronscan.concepts import LabelMatrix, ancestors_map, build_label_matrix
from neuronscan.errors import InputError, NeuronscanError
from neuronscan.io import (
    CLIP_LABELS_SCHEMA,
    NEURON_CONCEPTS_SCHEMA,
    NEURONS_SCHEMA,
    LayerParts,
    PartFileError,
    RunDir,
    is_remote,
    join,
    list_layer_parts,
    read_part,
    write_parquet_atomic,
)

__all__ = ["run_score", "ScoreSummary", "ShardParams", "score_shard", "ScoreTaskError", "TASK_RETRIES"]

TASK_RETRIES = 2
"""Times a score task whose worker died (killed, out of memory) is run again before the run fails."""


class ScoreTaskError(NeuronscanError):
    """A score task failed on every attempt (its worker died each time); the message names its units."""

log = logging.getLogger("neuronscan")


@dataclass
class ScoreSummary:
    """What `run_score` did.

    Attributes:
        seconds: wall time of the call.
        timings: where it went (see `_Timings.as_dict`): ``total_s``; ``phases_s``, the driver's wall
            seconds per phase in order (they add up to ``total_s``; ``shards_while_ray_starts`` is the
            driver scoring shards itself while an embedded Ray starts, ``ray_wait`` the rest of that start
            that neither discovery nor those shards covered, ``shards_in_driver`` the scoring of small
            inputs without Ray); ``ray_start_s``, how long the Ray start took; ``shards_in_driver`` and
            ``shards_while_ray_starts``, how many shards the driver scored; ``bh_s`` and, with CLIP,
            ``wpmi_s`` (soft-WPMI over every shard's top images) or ``clip_corr_s`` (CLIP correlations from
            the shards' moments) are parts of ``reduce``; ``write_neuron_concepts_s``, the whole write of the
            pair table (it overlaps ``unit_summary`` and ``write_neurons``); ``shards``, the shards' own
            seconds per phase summed over them (``read``, ``rank``, ``scores``
            = rank sums + AUC + AUPRC + p, ``metrics``, ``permutation``, ``compositional``, ``simulation``,
            ``wpmi`` = the shard's CLIP part: choosing soft-WPMI's top images or the correlation moments,
            ``other``), their
            count and the slowest.
    """

    out_dir: str
    layers: dict[str, int]
    n_images: int
    n_concepts: int
    n_tests: int
    n_significant: int
    seconds: float
    counts: dict = field(default_factory=dict)
    top_units: pd.DataFrame | None = None
    timings: dict = field(default_factory=dict)


SHARD_PHASES = ("read", "rank", "scores", "metrics", "permutation", "compositional", "simulation", "wpmi", "other")
"""The phases a shard task times (seconds, summed over shards in `ScoreSummary.timings`)."""


class _Timings:
    """Wall seconds per phase of the driver, in the order the phases ran, plus the shards' own seconds."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.shards: dict[str, float] = dict.fromkeys(SHARD_PHASES, 0.0)
        self.shard_tasks: list[float] = []
        self.shard_cpu = 0.0
        self.extra: dict = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t

    def add_shard(self, timings: dict[str, float]) -> None:
        for key in SHARD_PHASES:
            self.shards[key] += timings.get(key, 0.0)
        self.shard_tasks.append(timings.get("task", 0.0))
        self.shard_cpu += timings.get("cpu", 0.0)

    def as_dict(self) -> dict:
        total = time.perf_counter() - self.t0
        phases = {k: round(v, 3) for k, v in self.phases.items()}
        phases["other"] = round(max(0.0, total - sum(self.phases.values())), 3)
        tasks = self.shard_tasks
        return {
            "total_s": round(total, 3),
            "phases_s": phases,
            **self.extra,
            "shards": {
                "count": len(tasks),
                "task_s_sum": round(sum(tasks), 3),
                "task_cpu_s_sum": round(self.shard_cpu, 3),
                "task_s_max": round(max(tasks), 3) if tasks else 0.0,
                "phases_s_sum": {k: round(v, 3) for k, v in self.shards.items()},
            },
        }


@dataclass(frozen=True)
class ShardParams:
    """What every shard task of a run needs besides its data (the ``score`` config, resolved once).

    Attributes:
        alpha: FDR level; pairs with p <= alpha are permutation-tested.
        n_perm: permutations per tested pair (0: none).
        perm_top: permutation-test each unit's top concepts by AUC.
        perm_max_pairs_shard: cap on permutation-tested pairs per shard (the run's cap spread over shards).
        seed: permutation seed, the same for every shard: a pair's p_perm does not depend on the sharding.
        threads: ranking threads per task.
        compositional: keyword arguments of `compositional_search_units`; None when turned off.
        top_quantile: the top fraction of a unit's images F1 and IoU count as active.
        simulation: keyword arguments of `simulation_scores`; None when turned off.
    """

    alpha: float
    n_perm: int
    perm_top: int
    perm_max_pairs_shard: int
    seed: int
    threads: int
    compositional: dict | None
    top_quantile: float = 0.005
    simulation: dict | None = None

    @classmethod
    def from_config(cls, score_cfg, total_units: int) -> ShardParams:
        comp = score_cfg.compositional
        shard = score_cfg.units_per_shard
        return cls(
            alpha=score_cfg.alpha,
            n_perm=score_cfg.n_perm,
            perm_top=score_cfg.perm_top,
            perm_max_pairs_shard=max(1, int(score_cfg.perm_max_pairs * shard / max(total_units, 1))),
            seed=score_cfg.seed,
            threads=max(1, int(round(score_cfg.cpus_per_task))),
            compositional=comp.model_dump(exclude={"enabled"}) if comp.enabled else None,
            top_quantile=score_cfg.top_quantile,
            simulation=(score_cfg.simulation.model_dump(exclude={"enabled"}) if score_cfg.simulation.enabled
                        else None),
        )


def _read_columns(files: list[str], columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read ``image_id`` + ``columns`` from every file; return sorted unique ids and (n_images, n_cols) float32.

    An image that appears in several parts (a retried batch) keeps its first occurrence (discovery has
    checked that every occurrence holds the same values). Page checksums are verified on read.

    Raises:
        PartFileError: a file is unreadable or fails its checksums (names the file).
    """

    def read(f: str) -> pa.Table:
        return _read_local_part(f, ["image_id", *columns])

    if len(files) == 1:
        tables = [read(files[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(4, len(files))) as pool:
            tables = list(pool.map(read, files))
    n_rows = sum(t.num_rows for t in tables)
    ids = np.empty(n_rows, dtype=np.int64)
    # Unit-major, returned as its (n_images, n_cols) transpose: each column is copied contiguously
    # (~15x faster than scattering it with a stride of n_cols), and the kernels rank a unit's values
    # from contiguous memory.
    by_unit = np.empty((len(columns), n_rows), dtype=np.float32)
    row = 0
    while tables:  # copy file by file, freeing each Arrow table as soon as it is copied
        t = tables.pop(0)
        ids[row : row + t.num_rows] = t.column("image_id").to_numpy()
        for j, c in enumerate(columns):
            by_unit[j, row : row + t.num_rows] = t.column(c).to_numpy()
        row += t.num_rows
        del t
    values = by_unit.T
    if len(ids) and np.all(ids[1:] > ids[:-1]):  # the usual case: already sorted and unique, no copy
        return ids, values
    uniq, first = np.unique(ids, return_index=True)
    return uniq, by_unit[:, first].T


def _read_local_part(uri: str, columns: list[str]) -> pa.Table:
    """`read_part` (page checksums verified), through Arrow's own file reader for a local file.

    Opening the file by path lets Arrow read the projected column chunks itself instead of through a
    Python file object: ~3x faster for a shard's 64 of 2,048 columns. Any failure is reported by
    `read_part`, which names the file.
    """
    if not is_remote(uri):
        import pyarrow.parquet as pq

        try:
            with pq.ParquetFile(uri, page_checksum_verification=True) as part:
                return part.read(columns=columns, use_threads=False)
        except (OSError, ValueError, pa.ArrowException):
            pass  # read_part raises the error that names the file (or reads it, if this path was the problem)
    return read_part(uri, columns)


def read_image_ids(files: list[str], units: list[str] | None = None) -> tuple[np.ndarray, int]:
    """Sorted unique image ids of a layer's parts, and how many rows were duplicates.

    An image in several parts (a batch retried after its first write) must hold the same values in
    each; with ``units`` given, that is checked.

    Raises:
        PartFileError: a file is unreadable, or two files hold different values for one image (names both).
    """

    def read(f: str) -> np.ndarray:
        return _read_local_part(f, ["image_id"]).column("image_id").to_numpy()

    with ThreadPoolExecutor(max_workers=4) as pool:
        per_file = list(pool.map(read, files))
    ids = np.concatenate(per_file)
    uniq = np.unique(ids)
    n_dups = int(len(ids) - len(uniq))
    if n_dups and units is not None:
        _check_duplicate_rows(files, per_file, units)
    return uniq, n_dups


def _check_duplicate_rows(files: list[str], per_file: list[np.ndarray], units: list[str]) -> None:
    """Every image that appears in several files holds equal values (NaN equal to NaN) in each."""
    ids = np.concatenate(per_file)
    owner = np.repeat(np.arange(len(files)), [len(a) for a in per_file])
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    repeated = np.zeros(len(ids), dtype=bool)
    repeated[1:] = sorted_ids[1:] == sorted_ids[:-1]
    repeated[:-1] |= repeated[1:]
    dup_ids = np.unique(sorted_ids[repeated])
    involved = sorted(set(owner[order[repeated]].tolist()))
    rows: dict[int, list[tuple[str, np.ndarray]]] = {}
    for k in involved:
        table = read_part(files[k], ["image_id", *units])
        tid = table.column("image_id").to_numpy()
        keep = np.isin(tid, dup_ids)
        values = np.column_stack([table.column(c).to_numpy()[keep] for c in units])
        for image_id, row in zip(tid[keep].tolist(), values):
            rows.setdefault(image_id, []).append((files[k], row))
    for image_id, seen in rows.items():
        first_file, first = seen[0]
        for other_file, other in seen[1:]:
            if not np.array_equal(first, other, equal_nan=True):
                j = int(np.flatnonzero(~((first == other) | (np.isnan(first) & np.isnan(other))))[0])
                raise PartFileError(
                    f"image {image_id} has different activations in {first_file!r} and {other_file!r} "
                    f"({units[j]}: {first[j]!r} vs {other[j]!r}); parts of two probes were mixed in one folder or "
                    "a part was rewritten. Remove the wrong part (or probe into a new run id)"
                )


def score_shard(
    files: list[str],
    columns: list[str],
    first_unit: int,
    image_ids: np.ndarray,
    labels,
    concepts: list[str],
    params: ShardParams,
    clip: dict | None = None,
    layout=None,
    draws=None,
) -> dict:
    """Score one shard of a layer's units against every concept (runs as a Ray task).

    ``layout`` is ``labels`` laid out for the AUPRC kernel (`neuronscan.stats.prepare_labels`), built
    once by the driver; without it the task builds its own. ``draws`` are the run's permutations
    (`neuronscan.stats.permutation_draws`, drawn once by the driver); without them the task draws the
    same rows itself. The result's ``timings`` holds the task's
    seconds per phase (`SHARD_PHASES`) and in all (``task``).
    """
    from neuronscan.stats import (
        METRIC_KEYS,
        compositional_search_units,
        label_metrics,
        permutation_pvalues,
        score_block,
        simulation_scores,
    )

    clock = time.perf_counter
    t_task, cpu_task = clock(), time.process_time()
    timings = dict.fromkeys(SHARD_PHASES, 0.0)
    ids, acts = _read_columns(files, columns)
    timings["read"] = clock() - t_task
    if len(ids) != len(image_ids) or not np.array_equal(ids, image_ids):
        raise PartFileError(f"the part files of a layer changed while it was scored (first file: {files[0]!r}): "
                            "a shard read other images than discovery did; score the run again")
    comp = params.compositional
    need_ranks = (params.n_perm > 0 or comp is not None) and len(concepts) > 0
    kernel: dict[str, float] = {}
    with warnings.catch_warnings():
        # Degenerate concepts are counted once by the driver; no per-shard warning spam.
        warnings.simplefilter("ignore", UserWarning)
        # Ranked once, inside score_block; the ranks are kept only when later steps need them.
        res = score_block(acts, labels if layout is None else layout, n_threads=params.threads,
                          return_ranks=need_ranks, timings=kernel)
    timings["rank"] = kernel.get("rank_s", 0.0)
    timings["scores"] = kernel.get("scores_s", 0.0)
    ranks = res.pop("ranks", None)
    n_units = acts.shape[1]
    out = {
        "first_unit": first_unit,
        "n_units": n_units,
        **{k: res[k] for k in ("auc", "auprc", "p_value", "log_p", "dead", "n_nonfinite")},
        "p_perm": np.full((n_units, len(concepts)), np.nan),
        "n_perm_tested": 0,
    }
    t = clock()
    metrics = label_metrics(acts, labels, top_quantile=params.top_quantile)
    out.update({key: metrics[key].astype(np.float32) for key in METRIC_KEYS})
    timings["metrics"] = clock() - t
    if params.n_perm > 0 and len(concepts):
        t = clock()
        unit_idx, concept_idx = _permutation_pairs(res["auc"], res["p_value"], params)
        if len(unit_idx):
            p_perm, _ = permutation_pvalues(ranks.ranks, labels, unit_idx, concept_idx, n_perm=params.n_perm,
                                            seed=params.seed, draws=draws)
            out["p_perm"][unit_idx, concept_idx] = p_perm
            out["n_perm_tested"] = int(len(unit_idx))
        timings["permutation"] = clock() - t
    if comp is not None and len(concepts):
        t = clock()
        formulas, n_eval = compositional_search_units(
            ranks, labels, concepts, return_counts=True, concept_rank_sums=_rank_sums(res, len(ids)), **comp
        )
        out["formula"] = [f.text if f is not None else None for f in formulas]
        out["formula_auc"] = np.array([f.auc if f is not None else np.nan for f in formulas])
        out["formula_p"] = np.array([f.p_value if f is not None else np.nan for f in formulas])
        out["formula_n_evaluated"] = np.asarray(n_eval, dtype=np.int64)
        timings["compositional"] = clock() - t
    if params.simulation is not None and len(concepts):
        t = clock()
        masks = None
        if comp is not None:
            masks = [_formula_mask(f, labels, len(ids)) if f is not None else None for f in formulas]
        sim = simulation_scores(acts, labels, ids, formula_masks=masks, **params.simulation)
        out["sim"] = {key: sim[key] for key in ("concept", "concept_corr", "linear_corr", "formula_corr",
                                                "linear_terms", "linear_weights", "linear_intercept")}
        timings["simulation"] = clock() - t
    if clip is not None:
        t = clock()
        if clip.get("method") == "correlation":
            out["clip_moments"] = _clip_moments(ids, acts, clip)
        else:
            out["wpmi_top"] = _wpmi_top(ids, acts, clip)
        timings["wpmi"] = clock() - t
    timings["task"] = clock() - t_task
    timings["cpu"] = time.process_time() - cpu_task  # the worker's CPU meanwhile: below "task" when it waited
    timings["other"] = max(0.0, timings["task"] - sum(timings[k] for k in SHARD_PHASES if k != "other"))
    out["timings"] = timings
    return out


def _score_shard_task(fn, keep_heap: bool, *args) -> dict:
    """A Ray task: ``fn`` (`score_shard`, as the driver resolved it) on ``args``, in a worker that keeps freed
    memory for its next shard when ``keep_heap`` (``score.keep_worker_heap``)."""
    if keep_heap:
        from pipelines._ray import keep_freed_memory

        keep_freed_memory()
    return fn(*args)


def _formula_mask(formula, labels, n_images: int) -> np.ndarray:
    """A formula's positive set from the CSC label matrix (`Formula.mask` without re-validating the labels)."""
    csc = labels.tocsc() if not isinstance(labels, (sp.csc_matrix, sp.csc_array)) else labels

    def atom(concept: int, negated: bool) -> np.ndarray:
        m = np.zeros(n_images, dtype=bool)
        m[csc.indices[csc.indptr[concept] : csc.indptr[concept + 1]]] = True
        return ~m if negated else m

    out = atom(*formula.atoms[0])
    for op, a in zip(formula.ops, formula.atoms[1:]):
        out = (out & atom(*a)) if op == "AND" else (out | atom(*a))
    return out


def _rank_sums(res: dict, n_images: int) -> np.ndarray:
    """``(n_units, n_concepts)`` rank sums of the concepts' positives, from `score_block`'s exact U statistics
    (``R = U + n (n + 1) / 2``, half-integers, exact in float64); a concept with no positive sums to 0, one
    with no negative to ``N (N + 1) / 2``."""
    n_pos = res["n_pos"].astype(np.float64)
    sums = res["u"] + n_pos * (n_pos + 1) / 2
    undefined = ~np.isfinite(sums)
    if undefined.any():
        full = np.broadcast_to(np.where(n_pos >= n_images, n_images * (n_images + 1) / 2, 0.0), sums.shape)
        sums = np.where(undefined, full, sums)
    return sums


def _permutation_pairs(auc: np.ndarray, p_value: np.ndarray, params: ShardParams) -> tuple[np.ndarray, np.ndarray]:
    """The pairs that matter: each unit's top concepts by AUC and every pair with p <= alpha (capped)."""
    auc = np.where(np.isfinite(auc), auc, -np.inf)
    top = np.argsort(-auc, axis=1, kind="stable")[:, : params.perm_top]
    sel = np.zeros_like(auc, dtype=bool)
    np.put_along_axis(sel, top, True, axis=1)
    sel |= np.nan_to_num(p_value, nan=1.0) <= params.alpha
    sel &= np.isfinite(p_value)
    unit_idx, concept_idx = np.nonzero(sel)
    if len(unit_idx) > params.perm_max_pairs_shard:
        keep = np.argsort(p_value[unit_idx, concept_idx], kind="stable")[: params.perm_max_pairs_shard]
        unit_idx, concept_idx = unit_idx[keep], concept_idx[keep]
    return unit_idx, concept_idx


def _embedding_rows(ids: np.ndarray, emb_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's row in the run's embedding matrix (``emb_ids`` sorted) and whether it has one."""
    emb_pos = np.minimum(np.searchsorted(emb_ids, ids), len(emb_ids) - 1)
    return emb_pos, emb_ids[emb_pos] == ids


def _wpmi_top(ids: np.ndarray, acts: np.ndarray, clip: dict) -> np.ndarray:
    """soft-WPMI's top images ``B_k`` of the shard's units, among the images with an embedding, as rows of
    the run's embedding matrix (``clip["image_ids"]``, sorted); the driver's reduce scores every shard's
    rows in one call (`_wpmi_scores`), so each top image's softmax row is computed once per run."""
    from neuronscan.stats import top_image_indices

    emb_pos, have = _embedding_rows(ids, clip["image_ids"])
    a = acts[have]
    finite = np.isfinite(a)
    if not finite.all():  # NaN/Inf images sink to the bottom of the unit's ranking
        a = np.where(finite, a, np.nanmin(np.where(finite, a, np.nan), axis=0, initial=0.0) - 1.0)
    top = top_image_indices(a, top_k=min(clip["top_k"], int(have.sum())))
    return emb_pos[have][top].astype(np.int32)


def _clip_moments(ids: np.ndarray, acts: np.ndarray, clip: dict) -> dict:
    """The shard's units' CLIP-correlation moments (`clip_moments`) over its images that have an embedding,
    and those images as a packed mask over the run's embedding rows: the driver's reduce needs the
    embeddings' covariance over the same images (one per distinct image set, usually one per run). The
    embeddings come centred on the run's mean (``clip["centred_embeddings"]``), which leaves the moments
    unchanged and keeps float32 from cancelling."""
    from neuronscan.stats import clip_moments

    emb_ids = clip["image_ids"]
    emb_pos, have = _embedding_rows(ids, emb_ids)
    rows = emb_pos[have]
    order = np.argsort(rows, kind="stable")  # embedding-row order: the block reads walk the matrix forwards
    rows = rows[order]
    a = acts[have][order]
    mask = np.zeros(len(emb_ids), dtype=bool)
    mask[rows] = True
    if not len(rows):  # none of the shard's images has an embedding: no correlation is defined
        dim = clip["centred_embeddings"].shape[1]
        return {"moments": np.zeros((acts.shape[1], dim)), "constant": np.ones(acts.shape[1], dtype=bool),
                "images": np.packbits(mask), "n": 0}
    moments, constant = clip_moments(a, clip["centred_embeddings"][rows], centred=True)
    return {"moments": moments, "constant": constant, "images": np.packbits(mask), "n": int(have.sum())}


def centred_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """``embeddings`` minus their mean, float32: what every shard's `_clip_moments` multiplies by."""
    mean = np.asarray(embeddings).mean(axis=0, dtype=np.float64).astype(np.float32)
    return np.subtract(embeddings, mean, dtype=np.float32)


def _clip_correlations(parts_by_layer: dict[str, list[dict]], clip: dict) -> dict[str, np.ndarray]:
    """Each layer's ``(units, words)`` CLIP correlations from its shards' moments; one embedding covariance per
    distinct image set."""
    from neuronscan.stats import clip_correlation_from_moments, embedding_covariance

    n_emb = len(clip["image_ids"])
    # Every shard of every layer that saw the same images is scored in one product (the words' variances,
    # a C x D x D product, once per image set).
    groups: dict[bytes, list[tuple[str, int]]] = {}
    for layer, parts in parts_by_layer.items():
        for i, p in enumerate(parts):
            groups.setdefault(p["images"].tobytes(), []).append((layer, i))
    scores: dict[tuple[str, int], np.ndarray] = {}
    for key, members in groups.items():
        mask = np.unpackbits(np.frombuffer(key, dtype=np.uint8), count=n_emb).astype(bool)
        cov = embedding_covariance(clip["embeddings"][mask])
        parts = [parts_by_layer[layer][i] for layer, i in members]
        r = clip_correlation_from_moments(np.concatenate([p["moments"] for p in parts]),
                                          np.concatenate([p["constant"] for p in parts]), cov, clip["text"])
        start = 0
        for member, p in zip(members, parts):
            scores[member] = r[start : start + len(p["constant"])]
            start += len(p["constant"])
    return {layer: np.concatenate([scores[(layer, i)] for i in range(len(parts))])
            for layer, parts in parts_by_layer.items()}


def _wpmi_scores(tops: dict[str, np.ndarray], clip: dict) -> dict[str, np.ndarray]:
    """Each layer's soft-WPMI scores ``log p(c | B_k) - log p(c)`` (prior over the layer's units, lambda = 1),
    from its units' top-image rows: one soft-WPMI call for all layers that share a top-set size."""
    from neuronscan.stats import soft_wpmi_log_conditional_from_top, soft_wpmi_log_prior

    out: dict[str, np.ndarray] = {}
    by_width: dict[int, list[str]] = {}
    for layer, top in tops.items():
        by_width.setdefault(top.shape[1], []).append(layer)
    for layers in by_width.values():
        stacked = np.concatenate([tops[layer] for layer in layers])
        logcond = soft_wpmi_log_conditional_from_top(stacked, clip["embeddings"], clip["text"],
                                                     precision=clip["precision"])
        start = 0
        for layer in layers:
            rows = logcond[start : start + len(tops[layer])]
            start += len(rows)
            out[layer] = rows - soft_wpmi_log_prior(rows)
    return out


@dataclass
class _Layers:
    """What discovery found: each layer's parts, image ids, label matrix and its kernel layout, and the
    concepts they share."""

    parts: list[LayerParts]
    image_ids: dict[str, np.ndarray]
    labels: dict[str, LabelMatrix]
    layouts: dict[str, object]
    concepts: list[str]
    counts: dict

    @property
    def total_units(self) -> int:
        return sum(len(lp.units) for lp in self.parts)


def _discover(activations_dir: str, labels: pd.DataFrame, hierarchy, committed: set[str] | None, say,
              timings: _Timings, start_ray: bool = True) -> _Layers:
    """List the layers' parts, read their image ids once, and build one label matrix (and its layout for the
    AUPRC kernel) per distinct id set. With ``start_ray``, a requested background Ray start begins once the
    first layer's ids are read (unless the inputs are small, `_begin_ray_unless_small`)."""
    from neuronscan.stats import prepare_labels

    with timings.phase("list_parts"):
        parts = list_layer_parts(activations_dir, committed=committed)
    if not isinstance(labels["concept"].dtype, pd.CategoricalDtype):
        with timings.phase("label_matrix"):
            # The same rows with the concept names stored once: building the matrix iterates over the
            # concepts, ~2x faster over a categorical than over Arrow-backed strings.
            labels = labels.assign(concept=labels["concept"].astype("category"))
    counts: dict = {"duplicate_image_rows": 0}
    index_cache: dict[bytes, tuple[np.ndarray, LabelMatrix, object]] = {}
    layer_ids: dict[str, np.ndarray] = {}
    mats: dict[str, LabelMatrix] = {}
    layouts: dict[str, object] = {}
    for i, lp in enumerate(parts):
        with timings.phase("read_image_ids"):
            ids, dups = read_image_ids(lp.files, lp.units)
        if i == 0 and start_ray:
            _begin_ray_unless_small(len(ids) * sum(len(p.units) for p in parts))
        counts["duplicate_image_rows"] += dups
        key = ids.tobytes()
        if key not in index_cache:
            with timings.phase("label_matrix"):
                mat = build_label_matrix(labels, ids, hierarchy=hierarchy)
            with timings.phase("label_layout"):
                layout = prepare_labels(mat.matrix, len(ids))
            index_cache[key] = (ids, mat, layout)
        layer_ids[lp.layer], mats[lp.layer], layouts[lp.layer] = index_cache[key]
    first = mats[parts[0].layer]
    concepts = first.concepts
    if any(mats[lp.layer].concepts != concepts for lp in parts):
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
    return _Layers(parts, layer_ids, mats, layouts, concepts, counts)


_SHARED_DRAWS_MAX_BYTES = 256 << 20
"""Largest permutation index matrix the driver draws once for all shards (4 bytes × n_perm × the longest
draw: 95 MiB at 50,000 images and 1,000 permutations when some concept holds half the images). Above it,
each shard draws the same rows itself."""


def _permutation_draws(found: _Layers, params: ShardParams) -> dict[int, object]:
    """The run's permutations, drawn once per label matrix (keyed by ``id`` of the `LabelMatrix`), while an
    embedded Ray starts in the background: every shard then uses them instead of drawing its own.

    Without permutation tests, or when the matrix would exceed `_SHARED_DRAWS_MAX_BYTES`, none: the
    shards draw the same rows themselves (same p-values, more time).
    """
    from neuronscan.stats import permutation_draws

    out: dict[int, object] = {}
    if params.n_perm <= 0:
        return out
    for lp in found.parts:
        mat = found.labels[lp.layer]
        if id(mat) in out:
            continue
        n_images = len(found.image_ids[lp.layer])
        n_pos = np.diff(mat.matrix.indptr)  # CSC: positives per concept
        scored = n_pos[(n_pos > 0) & (n_pos < n_images)]
        longest = int(np.minimum(scored, n_images - scored).max()) if scored.size else 0
        if longest == 0 or 4 * params.n_perm * longest > _SHARED_DRAWS_MAX_BYTES:
            out[id(mat)] = None
            continue
        out[id(mat)] = permutation_draws(n_images, params.n_perm, seed=params.seed, length=longest)
    return out


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; all of the machine's off Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _progress(say, total: int):
    """A callback for the shard loop: print ``score: i/total shards`` at most every 5 s, and at the end."""
    state = {"last": time.perf_counter()}

    def report(done: int) -> None:
        if time.perf_counter() - state["last"] > 5 or done >= total:
            state["last"] = time.perf_counter()
            say(f"  score: {done}/{total} shards")

    return report


_DRIVER_ONLY_VALUES = 1 << 22
"""Unit × image values the driver scores alone rather than start an embedded Ray for them (~1 s of
ranking and scores on one core, a few with permutations and formulas; starting and stopping Ray on 2
cores: ~6.5 s)."""


def _begin_ray_unless_small(n_values: int) -> None:
    """Begin a requested background start of Ray now (it overlaps the rest of discovery and the driver's
    first shards), unless the inputs are small enough for the driver alone. A start on a cluster has begun."""
    from pipelines._ray import begin_ray_start

    if n_values > _DRIVER_ONLY_VALUES:
        begin_ray_start()


def _wait_for_ray(timings: _Timings) -> None:
    """Wait for a Ray start begun in the background (``init_ray(background=True)``) and record its timing."""
    from pipelines._ray import wait_for_ray

    with timings.phase("ray_wait"):
        started = wait_for_ray()
    if started["start_s"] is not None:
        timings.extra["ray_start_s"] = round(started["start_s"], 3)


@dataclass(frozen=True)
class _Shard:
    """One shard of a layer's units: what a score task is given besides the run-wide inputs."""

    layer: str
    files: list[str]
    columns: list[str]
    first_unit: int

    @property
    def what(self) -> tuple[str, str, str]:
        return self.layer, self.columns[0], self.columns[-1]


def _shards(found: _Layers, shard: int) -> list[_Shard]:
    return [_Shard(lp.layer, lp.files, lp.units[start : start + shard], start)
            for lp in found.parts for start in range(0, len(lp.units), shard)]


def _score_shards(found: _Layers, shards: list[_Shard], params: ShardParams, score_cfg, clip_obj: dict | None,
                  timings: _Timings, say, draws: dict[int, object]) -> list[tuple[_Shard, dict]]:
    """Every shard's result: as Ray tasks (`_dispatch`); or scored here, on a thread pool with
    ``score.executor: local``, or one by one when the inputs are too small to be worth starting an embedded
    Ray for (its requested start was not begun, `_begin_ray_unless_small`).

    Here, the driver calls the function a task runs, on the same inputs: the numbers are the same.
    """
    from pipelines._ray import local_ray_starting, ray_start_begun

    progress = _progress(say, len(shards))
    done: list[tuple[_Shard, dict]] = []

    def in_driver(s: _Shard) -> None:
        mat = found.labels[s.layer]
        result = score_shard(s.files, s.columns, s.first_unit, found.image_ids[s.layer], mat.matrix,
                             found.concepts, params, clip_obj, found.layouts[s.layer], draws.get(id(mat)))
        timings.add_shard(result.pop("timings", {}))
        done.append((s, result))
        progress(len(done))

    if getattr(score_cfg, "executor", "ray") == "local":
        # No Ray: every shard in this process, several at once (the kernels release the GIL in their sorts,
        # gathers and products). Results are kept in shard order, as Ray's are.
        threads = max(1, min(len(shards), getattr(score_cfg, "local_threads", None) or _usable_cpus()))

        def score_one(s: _Shard) -> tuple[_Shard, dict]:
            mat = found.labels[s.layer]
            return s, score_shard(s.files, s.columns, s.first_unit, found.image_ids[s.layer], mat.matrix,
                                  found.concepts, params, clip_obj, found.layouts[s.layer], draws.get(id(mat)))

        with timings.phase("shards_in_driver"), ThreadPoolExecutor(max_workers=threads) as pool:
            for s, result in pool.map(score_one, shards):
                timings.add_shard(result.pop("timings", {}))
                done.append((s, result))
                progress(len(done))
        timings.extra["shards_in_driver"] = len(done)
        timings.extra["local_threads"] = threads
        return done
    starting = local_ray_starting()
    if starting is not None and not ray_start_begun():
        with timings.phase("shards_in_driver"):
            for s in shards:
                in_driver(s)
        timings.extra["shards_in_driver"] = len(done)
        return done
    remaining = list(shards)
    if starting is not None:
        # An embedded Ray is starting: the driver scores small shards itself until it is up (a large one
        # would hold the driver, and its memory, long after the workers could have taken it).
        with timings.phase("shards_while_ray_starts"):
            while (remaining and not starting.done()
                   and len(found.image_ids[remaining[0].layer]) * len(remaining[0].columns) <= _DRIVER_ONLY_VALUES):
                in_driver(remaining.pop(0))
        timings.extra["shards_while_ray_starts"] = len(done)
    if not remaining:
        return done
    _wait_for_ray(timings)
    return done + _dispatch(found, remaining, params, score_cfg, clip_obj, timings,
                            lambda n: progress(len(done) + n), draws)


def _dispatch(found: _Layers, shards: list[_Shard], params: ShardParams, score_cfg, clip_obj: dict | None,
              timings: _Timings, progress, draws: dict[int, object]) -> list[tuple[_Shard, dict]]:
    """Run one Ray task per shard of units; return each shard's result."""
    import ray

    unit_cap = score_cfg.units_per_shard
    task = ray.remote(_score_shard_task).options(num_cpus=score_cfg.cpus_per_task, max_retries=TASK_RETRIES)
    keep_heap = bool(getattr(score_cfg, "keep_worker_heap", True))
    with timings.phase("put"):
        # Layers probed on the same images share one label matrix, layout and id index in the object store.
        put_cache: dict[int, tuple] = {}
        clip_ref = ray.put(clip_obj) if clip_obj is not None and shards else None
        futures = []
        for s in shards:
            mat = found.labels[s.layer]
            if id(mat) not in put_cache:
                put_cache[id(mat)] = (ray.put(mat.matrix), ray.put(found.image_ids[s.layer]),
                                      ray.put(found.layouts[s.layer]), ray.put(draws.get(id(mat))))
            lab_ref, ids_ref, layout_ref, draws_ref = put_cache[id(mat)]
            futures.append((s, task.remote(score_shard, keep_heap, s.files, s.columns, s.first_unit, ids_ref, lab_ref,
                                           found.concepts, params, clip_ref, layout_ref, draws_ref)))
    results: list[tuple[_Shard, dict]] = []
    pending = {ref: s for s, ref in futures}
    with timings.phase("shards"):
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                s = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except BaseException as exc:
                    for other in pending:
                        ray.cancel(other, force=True)
                    raise _task_failure(exc, s.what, unit_cap) from None
                timings.add_shard(result.pop("timings", {}))
                results.append((s, result))
            progress(len(results))
    return results


def _task_failure(exc: BaseException, what: tuple[str, str, str], shard: int) -> BaseException:
    """The error a failed score task ends the run with: a user's problem as one line, a bug as itself."""
    import ray

    layer, first, last = what
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        return cause if isinstance(cause, NeuronscanError) else exc
    if isinstance(exc, ray.exceptions.RayError):
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        return ScoreTaskError(
            f"score task for layer {layer} units {first}–{last} failed on all {TASK_RETRIES + 1} attempts "
            f"({type(exc).__name__}: {first_line}). A worker that dies is most often out of memory: lower "
            f"score.units_per_shard (now {shard}) or give each task more memory, then score again "
            "(neuronscan score --run RUN_DIR)"
        )
    return exc


def _reduce(found: _Layers, results: dict[str, list[dict]], timings: _Timings | None = None,
            clip: dict | None = None) -> tuple[dict[str, dict], np.ndarray, np.ndarray]:
    """Assemble (units × concepts) arrays per layer, the CLIP scores (``clip``: soft-WPMI from the shards' top
    images, or CLIP correlations from their moments), then BH over every p-value of the run.

    Returns:
        ``(assembled, all_p, all_q)``: per layer its arrays (with ``q_value``), and the run's p and q.
    """
    from neuronscan.stats import bh_qvalues

    assembled = {}
    wpmi_tops: dict[str, np.ndarray] = {}
    moments: dict[str, list[dict]] = {}
    for lp in found.parts:
        parts = sorted(results[lp.layer], key=lambda r: r["first_unit"])
        a = {key: np.concatenate([p[key] for p in parts])
             for key in ("auc", "auprc", "p_value", "log_p", "p_perm", "dead", "n_nonfinite", *_METRIC_COLUMNS)}
        # A unit is its column: u00042 is unit 42, whatever its position among the layer's columns.
        a["unit_ids"] = np.asarray([int(c[1:]) for c in lp.units], dtype=np.int32)
        a["n_perm_tested"] = sum(p["n_perm_tested"] for p in parts)
        if parts and "formula" in parts[0]:
            a["formula"] = [t for p in parts for t in p["formula"]]
            for key in ("formula_auc", "formula_p", "formula_n_evaluated"):
                a[key] = np.concatenate([p[key] for p in parts])
        if parts and "sim" in parts[0]:
            a["sim"] = {key: (np.concatenate([p["sim"][key] for p in parts]) if isinstance(parts[0]["sim"][key],
                                                                                           np.ndarray)
                              else [v for p in parts for v in p["sim"][key]])
                        for key in parts[0]["sim"]}
        if parts and "wpmi_top" in parts[0]:
            wpmi_tops[lp.layer] = np.concatenate([p["wpmi_top"] for p in parts])
        if parts and "clip_moments" in parts[0]:
            moments[lp.layer] = [p["clip_moments"] for p in parts]
        assembled[lp.layer] = a
    if (wpmi_tops or moments) and clip is not None:
        t = time.perf_counter()
        scores = _wpmi_scores(wpmi_tops, clip) if wpmi_tops else _clip_correlations(moments, clip)
        for layer, clip_scores in scores.items():
            assembled[layer]["clip"] = clip_scores
        if timings is not None:
            timings.extra["wpmi_s" if wpmi_tops else "clip_corr_s"] = round(time.perf_counter() - t, 3)
    all_p = np.concatenate([assembled[lp.layer]["p_value"].ravel() for lp in found.parts])
    t = time.perf_counter()
    all_q = bh_qvalues(all_p)
    if timings is not None:
        timings.extra["bh_s"] = round(time.perf_counter() - t, 3)
    offset = 0
    for lp in found.parts:
        a = assembled[lp.layer]
        size = a["p_value"].size
        a["q_value"] = all_q[offset : offset + size].reshape(a["p_value"].shape)
        offset += size
    return assembled, all_p, all_q


def _strings(indices: np.ndarray, values: list[str]) -> pa.Array:
    """``values[indices]`` as an Arrow string array, built in Arrow (no Python object per row)."""
    dictionary = pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(values, pa.string()))
    return dictionary.cast(pa.string())


def _pair_table(layer: str, a: dict, n_pos: np.ndarray, n_images: int, concepts: list[str], depth, n_perm: int,
                clip_same_vocab: bool) -> pa.Table:
    """One layer's rows of ``neuron_concepts.parquet``."""
    n_units, n_c = a["auc"].shape
    n_rows = n_units * n_c
    cidx = np.tile(np.arange(n_c, dtype=np.int32), n_units)
    p_perm = a["p_perm"].ravel()
    cols = {
        "layer": _strings(np.zeros(n_rows, dtype=np.int32), [layer]),
        "unit": np.repeat(a["unit_ids"], n_c),
        "concept": _strings(cidx, list(concepts)),
        "n_pos": n_pos[cidx],
        "n_neg": n_images - n_pos[cidx],
        "auc": a["auc"].ravel(),
        "auprc": a["auprc"].ravel(),
        "p_value": a["p_value"].ravel(),
        "q_value": a["q_value"].ravel(),
        "log_p": a["log_p"].ravel(),
        "p_perm": p_perm,
        "n_perm": np.where(np.isnan(p_perm), 0, n_perm).astype(np.int32),
        "clip_score": (a["clip"].ravel() if ("clip" in a and clip_same_vocab) else np.full(n_rows, np.nan)),
        "depth": (depth[cidx] if depth is not None else np.full(n_rows, -1, dtype=np.int16)),
        **{key: a[key].ravel() for key in _METRIC_COLUMNS},
    }
    return pa.Table.from_arrays([pa.array(cols[f.name], f.type) if not isinstance(cols[f.name], pa.Array)
                                 else cols[f.name] for f in NEURON_CONCEPTS_SCHEMA], schema=NEURON_CONCEPTS_SCHEMA)


_METRIC_COLUMNS = ("f1", "iou", "correlation", "cosine")
"""Pair metrics of `neuronscan.stats.label_metrics` (float32 in the pair table)."""

_RANK_COLUMN = {"auc": "auc", "auprc": "auprc", "f1": "f1", "iou": "iou", "correlation": "correlation",
                "cosine": "cosine"}
"""``score.rank_by`` → the assembled array that chooses each unit's best concept."""


def _best_depth(best: list, concepts: list[str], depth: np.ndarray | None) -> np.ndarray:
    """The hierarchy depth of each unit's best concept (int16; -1 without a hierarchy or a best concept)."""
    out = np.full(len(best), -1, dtype=np.int16)
    if depth is not None:
        index = {c: i for i, c in enumerate(concepts)}
        for k, name in enumerate(best):
            if name is not None:
                out[k] = depth[index[name]]
    return out


def _simulation_columns(sim: dict | None, concepts: list[str], n_units: int) -> dict:
    """The ``sim_*`` and ``linear_*`` columns of ``neurons.parquet`` (NaN / empty without simulation)."""
    if sim is None:
        nan = np.full(n_units, np.nan)
        return {"sim_concept": [None] * n_units, "sim_concept_corr": nan, "sim_formula_corr": nan,
                "sim_linear_corr": nan, "linear_terms": [[] for _ in range(n_units)],
                "linear_weights": [[] for _ in range(n_units)], "linear_intercept": nan}
    return {
        "sim_concept": [concepts[c] if c >= 0 else None for c in sim["concept"]],
        "sim_concept_corr": sim["concept_corr"],
        "sim_formula_corr": sim["formula_corr"],
        "sim_linear_corr": sim["linear_corr"],
        "linear_terms": [[concepts[c] for c in terms] for terms in sim["linear_terms"]],
        "linear_weights": sim["linear_weights"],
        "linear_intercept": sim["linear_intercept"],
    }


# Columns of neuron_concepts.parquet with few distinct values: dictionary-encoded, with statistics. The float
# columns (3M distinct values at 50k images x 2,048 units x 1,481 concepts) gain nothing from either and
# cost most of the write time.
_ENCODED_PAIR_COLUMNS = ["layer", "unit", "concept", "n_pos", "n_neg", "n_perm", "depth"]


def _unit_frame(layer: str, a: dict, concepts: list[str], text_concepts: list[str], score_cfg, anc,
                depth: np.ndarray | None = None) -> pd.DataFrame:
    """One layer's rows of ``neurons.parquet`` (the summary of `neuronscan.stats.summarize_units`)."""
    from neuronscan.stats import summarize_units

    n_units = a["auc"].shape[0]
    summary = summarize_units(
        auc=a["auc"], auprc=a["auprc"], q_value=a["q_value"], p_perm=a["p_perm"], concepts=concepts,
        alpha=score_cfg.alpha, min_auc=score_cfg.min_auc, ancestors=anc,
        spurious_concepts=score_cfg.spurious_concepts, rank_by=a[_RANK_COLUMN[score_cfg.rank_by]],
        extra={f"best_{key}": a[key] for key in _METRIC_COLUMNS},
    )
    nd = {
        "layer": [layer] * n_units,
        "unit": a["unit_ids"],
        **{k: summary[k] for k in ("best_concept", "best_auc", "best_auprc", "best_q", "best_p_perm",
                                   "n_significant", *(f"best_{m}" for m in _METRIC_COLUMNS))},
        **_simulation_columns(a.get("sim"), concepts, n_units),
        "best_depth": _best_depth(summary["best_concept"], concepts, depth),
        "formula": a.get("formula", [None] * n_units),
        "formula_auc": a.get("formula_auc", np.full(n_units, np.nan)),
        "formula_p_exploratory": a.get("formula_p", np.full(n_units, np.nan)),
        "formula_n_evaluated": a.get("formula_n_evaluated", np.zeros(n_units, np.int64)),
        "clip_label": [None] * n_units,
        "clip_score": np.full(n_units, np.nan),
        "dead": a["dead"].astype(bool),
        "multimodal": summary["multimodal"],
        "spurious": summary["spurious"],
        "n_nonfinite": a["n_nonfinite"].astype(np.int64),
    }
    if "clip" in a and len(text_concepts):
        scores = a["clip"]
        defined = np.isfinite(scores).any(axis=1)  # a constant unit has no CLIP correlation, hence no label
        wbest = np.argmax(np.where(np.isfinite(scores), scores, -np.inf), axis=1)
        nd["clip_label"] = [text_concepts[j] if ok else None for j, ok in zip(wbest, defined)]
        nd["clip_score"] = np.where(defined, scores[np.arange(n_units), wbest], np.nan)
    return pd.DataFrame(nd)


def _write(out: RunDir, found: _Layers, assembled: dict[str, dict], score_cfg, hierarchy,
           text_concepts: list[str], timings: _Timings) -> pd.DataFrame:
    """Write ``neuron_concepts.parquet``, ``neurons.parquet`` (and CLIP labels); return the neurons frame.

    The pair table is written on a helper thread (Arrow's writer releases the GIL) while the per-unit
    summaries are built and written.
    """
    concepts = found.concepts
    anc = ancestors_map(hierarchy) if hierarchy else None
    depth = found.labels[found.parts[0].layer].depth
    same_vocab = text_concepts == concepts
    frames = []
    with timings.phase("pair_table"):
        for lp in found.parts:
            a = assembled[lp.layer]
            # Layers may have been probed on different images (activations made elsewhere): count per layer.
            layer_pos = np.asarray(found.labels[lp.layer].matrix.sum(0)).ravel().astype(np.int64)
            frames.append(_pair_table(lp.layer, a, layer_pos, len(found.image_ids[lp.layer]), concepts, depth,
                                      score_cfg.n_perm, same_vocab))
        table = frames[0] if len(frames) == 1 else pa.concat_tables(frames)
        del frames

    def write_pairs() -> float:
        t = time.perf_counter()
        write_parquet_atomic(table, out.neuron_concepts, encoded_columns=_ENCODED_PAIR_COLUMNS)
        return time.perf_counter() - t

    with ThreadPoolExecutor(max_workers=1) as pool:
        pairs_written = pool.submit(write_pairs)
        with timings.phase("unit_summary"):
            neuron_rows = [_unit_frame(lp.layer, assembled[lp.layer], concepts, text_concepts, score_cfg, anc, depth)
                           for lp in found.parts]
            neurons = pd.concat(neuron_rows, ignore_index=True)
        with timings.phase("write_neurons"):
            write_parquet_atomic(pa.Table.from_pandas(neurons, schema=NEURONS_SCHEMA, preserve_index=False),
                                 out.neurons)
            for lp in found.parts:
                a = assembled[lp.layer]
                if "clip" in a and not same_vocab:
                    _write_clip_labels(out, lp.layer, a["clip"], text_concepts, a["unit_ids"])
        with timings.phase("write_neuron_concepts"):
            # Only the part of the write that the steps above did not cover is a phase of its own.
            timings.extra["write_neuron_concepts_s"] = round(pairs_written.result(), 3)
    return neurons


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
    stop_ray: bool = False,
) -> ScoreSummary:
    """Score every unit of every layer under ``activations_dir`` against every concept in ``labels``.

    Four steps: discover the layers and their images, score the shards of units (Ray tasks; small inputs
    in the driver, see `_score_shards`), reduce (assemble the layers, BH over every p-value of the run),
    write the two tables.

    Args:
        activations_dir: folder of ``<layer>/part-*.parquet`` (``image_id`` + ``u00000…`` float32).
        labels: long-format ``(image_id, concept)`` positives.
        out_dir: where ``neuron_concepts.parquet`` and ``neurons.parquet`` go.
        score_cfg: a :class:`neuronscan.config.RunConfig` ``score`` section.
        hierarchy: ``(concept, parent)`` edges; labels propagate to ancestors and depth is recorded.
        run_dir: the run root when scoring a probe's output (only committed parts are read; CLIP
            embeddings under ``run_dir/clip`` are used when ``clip_cfg`` is set).
        stop_ray: the caller needs Ray no more: once the shards are in, stop the Ray that ``init_ray``
            started (`pipelines._ray.release_ray`), so that its shutdown overlaps the writes.
    """
    timings = _Timings()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    run = RunDir(run_dir) if run_dir else None
    committed = None
    if run is not None:
        with timings.phase("list_parts"):
            committed = run.committed_parts()
    local = getattr(score_cfg, "executor", "ray") == "local"
    found = _discover(activations_dir, labels, hierarchy, committed, say, timings, start_ray=not local)
    concepts = found.concepts
    clip_obj, text_concepts = (None, [])
    if clip_cfg is not None and run is not None:
        with timings.phase("clip"):
            clip_obj, text_concepts = _prepare_clip(run, clip_cfg, concepts)
    params = ShardParams.from_config(score_cfg, found.total_units)
    shards = _shards(found, score_cfg.units_per_shard)
    n_images = len(found.image_ids[found.parts[0].layer])
    say(f"score: {found.total_units:,} units × {len(concepts):,} concepts over {n_images:,} images "
        f"in {len(shards)} shard(s) of ≤ {score_cfg.units_per_shard} units")
    with timings.phase("perm_draws"):
        draws = _permutation_draws(found, params)
    # soft-WPMI's shards need only the embedded images' ids (the embeddings and the text stay in the driver's
    # reduce); CLIP correlation's need the embeddings too (put in the object store once, read in place).
    shard_clip = None
    if clip_obj is not None:
        shard_clip = {"image_ids": clip_obj["image_ids"], "top_k": clip_obj["top_k"], "method": clip_obj["method"]}
        if clip_obj["method"] == "correlation":  # centred once here, not in every shard (see _clip_moments)
            shard_clip["centred_embeddings"] = centred_embeddings(clip_obj["embeddings"])
    scored = _score_shards(found, shards, params, score_cfg, shard_clip, timings, say, draws)
    results: dict[str, list[dict]] = {lp.layer: [] for lp in found.parts}
    for s, result in scored:
        results[s.layer].append(result)
    del scored
    with timings.phase("reduce"):
        assembled, all_p, all_q = _reduce(found, results, timings, clip_obj)
        del results  # the shards' arrays are views of the object store; the assembled ones are copies
    if stop_ray:
        from pipelines._ray import release_ray

        release_ray()
    neurons = _write(RunDir(out_dir), found, assembled, score_cfg, hierarchy, text_concepts, timings)

    from neuronscan.stats import significant_mask

    with timings.phase("summary"):
        n_tests = int(np.isfinite(all_p).sum())
        n_significant = int(sum(significant_mask(assembled[lp.layer]["q_value"], assembled[lp.layer]["auc"],
                                                 score_cfg.alpha).sum() for lp in found.parts))
        counts = found.counts
        counts.update(
            {
                "alpha": score_cfg.alpha,
                "min_auc": score_cfg.min_auc,
                "tests": n_tests,
                "significant_pairs": n_significant,
                "dead_units": int(neurons["dead"].sum()),
                "units_with_nonfinite": int((neurons["n_nonfinite"] > 0).sum()),
                "permutation_tested_pairs": int(sum(a["n_perm_tested"] for a in assembled.values())),
                "n_perm": score_cfg.n_perm,
                "fdr": {"method": "benjamini-hochberg", "scope": "all p-values of the run"},
                "compositional_p_values": "exploratory (not corrected for the formulas searched; "
                "formula_n_evaluated gives the count for a Bonferroni bound)",
            }
        )
        top = (
            neurons.dropna(subset=["best_auc"]).sort_values(["layer", "best_auc"], ascending=[True, False])
            .groupby("layer", sort=False).head(3)
        )
    recorded = timings.as_dict()
    return ScoreSummary(
        out_dir=out_dir,
        layers={lp.layer: len(lp.units) for lp in found.parts},
        n_images=len(found.image_ids[found.parts[0].layer]),
        n_concepts=len(concepts),
        n_tests=n_tests,
        n_significant=n_significant,
        seconds=recorded["total_s"],
        counts=counts,
        top_units=top,
        timings=recorded,
    )


def _prepare_clip(run: RunDir, clip_cfg, concepts: list[str]) -> tuple[dict | None, list[str]]:
    from neuronscan.clip import load_clip, resolve_vocabulary
    from neuronscan.clip._text_cache import cached_embed_texts

    # A crashed batch's parts never count; page checksums are verified as for activations.
    tables = [read_part(join(run.clip, n)) for n in run.committed_part_files(run.clip)]
    if not tables:
        return None, []
    table = pa.concat_tables(tables)
    ids = table.column("image_id").to_numpy()
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    uniq, first = np.unique(ids, return_index=True)
    vocab = resolve_vocabulary(clip_cfg, concepts)  # the concepts, a file, builtin: lists, or an LLM's words
    bundle = load_clip(clip_cfg.model, pretrained=clip_cfg.pretrained, checkpoint=clip_cfg.checkpoint)
    text = cached_embed_texts(bundle, vocab)  # on disk by (model, weights, prompts, vocabulary): random weights never
    return {"image_ids": uniq, "embeddings": emb[first], "text": text, "top_k": clip_cfg.top_k,
            "precision": clip_cfg.precision, "method": clip_cfg.method}, vocab


def _write_clip_labels(out: RunDir, layer: str, wpmi: np.ndarray, vocab: list[str], unit_ids: np.ndarray) -> None:
    n_units, n_c = wpmi.shape
    table = pa.table(
        {
            "layer": np.full(n_units * n_c, layer, dtype=object),
            "unit": np.repeat(unit_ids, n_c),
            "concept": np.asarray(vocab, dtype=object)[np.tile(np.arange(n_c), n_units)],
            "clip_score": wpmi.ravel(),
        },
        schema=CLIP_LABELS_SCHEMA,
    )
    write_parquet_atomic(table, out.clip_labels(layer))
