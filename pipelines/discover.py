"""Discover stage (CRAFT, holistic CRAFT): per class, concepts → importance → metrics → strategies → names.

Dataflow: the driver reads the probed run (``images.parquet``, ``labels.parquet``, ``hierarchy.parquet``),
resolves the classes (model outputs that the labels name), samples each class's images (seeded, at most
``max_images_per_class``) and a set of naming images (at most ``naming_images`` of the run's), and starts one
Ray task per class (``cpus_per_task`` CPUs, ``num_gpus`` GPUs) plus one for the naming images. A class task
builds the model (once per worker process), decodes the class's images, and runs
`neuronscan.discover.discover_class`; the naming task computes the naming images' factorised rows. The driver
then projects the naming rows on each class's dictionary (per-image coefficient: max or mean over the rows),
writes them as activation parts under ``RUN/discover/activations/<layer>@craft__<class>/``, scores them against
the run's labels with `pipelines.score.run_score` (into ``RUN/discover/scored/``), and writes the tables of
`neuronscan.discover._schemas` and ``discover.json`` with the atomic writers. ``run.json`` gets ``discover``
(counts, ``finished``), ``timings.discover_s`` and ``timings.discover_phases``, and ``config.discover``.

Small inputs with no Ray running (at most `_DRIVER_ONLY_IMAGES` class images, no GPU asked for) are done in the
driver: the same functions on the same inputs.

Entry point: `discover_run`; ``neuronscan run`` calls it after the score stage when ``discover.enabled``, and
``neuronscan discover CONFIG`` through `pipelines.run_audit` (stage ``discover``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import sys
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from neuronscan.discover._schemas import (
    CONCEPT_CROPS_SCHEMA,
    CROP_COEFFICIENTS_SCHEMA,
    CURVES_SCHEMA,
    DICTIONARY_SCHEMA,
    IMAGE_COEFFICIENTS_SCHEMA,
    IMAGE_IMPORTANCE_SCHEMA,
    IMPORTANCE_SCHEMA,
    METRICS_SCHEMA,
    QUALITY_SCHEMA,
    STRATEGIES_SCHEMA,
    class_slug,
    discover_paths,
    naming_layer,
)
from neuronscan.errors import InputError
from neuronscan.io import (
    RunDir,
    activation_schema,
    join,
    layer_dirname,
    read_parquet,
    write_json_atomic,
    write_parquet_atomic,
)

__all__ = ["DiscoverPlan", "DiscoverSummary", "discover_run", "plan_discover", "craft_settings"]

log = logging.getLogger("neuronscan")

_DRIVER_ONLY_IMAGES = 256
"""Class images (all classes together) that the driver handles itself when no Ray is running."""

_TASK_RETRIES = 1


@dataclass
class DiscoverPlan:
    """The classes to analyse and what every task needs (reads the run, writes nothing)."""

    classes: list[dict]
    skipped: dict[str, str]
    naming_ids: np.ndarray
    naming_uris: list[str]
    common: dict
    labels: pd.DataFrame
    hierarchy: list[tuple[str, str]]
    layer: str
    outputs: list[str]


@dataclass
class DiscoverSummary:
    """What the stage did: per class its quality row and top concepts, the files, and where the time went."""

    run_dir: str
    layer: str
    classes: list[str]
    skipped: dict[str, str]
    seconds: float
    files: dict[str, str]
    importance: pd.DataFrame = field(repr=False, default=None)
    quality: pd.DataFrame = field(repr=False, default=None)
    metrics: pd.DataFrame = field(repr=False, default=None)
    strategies: pd.DataFrame = field(repr=False, default=None)
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def craft_settings(section):
    """The `neuronscan.discover.CraftSettings` of a run config's ``discover`` section."""
    from dataclasses import fields

    from neuronscan.discover import CraftSettings

    return CraftSettings(**{f.name: getattr(section, f.name) for f in fields(CraftSettings)})


def plan_discover(run_dir: str | RunDir, cfg, section=None) -> DiscoverPlan:
    """Resolve the classes and sample their images and the naming images; starts no Ray.

    Raises:
        InputError: the run is not probed, a class is unknown or has too few images, no class qualifies.
        ModelError: the layer is unknown.
    """
    from neuronscan.discover import competing_outputs, output_names
    from neuronscan.errors import ModelError
    from neuronscan.models import build_model, list_layers, resolve_layers

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    s = section if section is not None else cfg.discover
    if not run.exists(run.images):
        raise InputError(f"{run.root} has no images.parquet: probe the run first (neuronscan probe CONFIG)")
    images = read_parquet(run.images).to_pandas()
    ok = images[images["status"] == "ok"]
    uri_of = dict(zip(ok["image_id"].astype(np.int64).tolist(), ok["uri"].astype(str)))
    labels = read_parquet(run.labels).to_pandas()
    labels = labels[labels["image_id"].isin(uri_of.keys())].reset_index(drop=True)
    edges = (list(read_parquet(run.hierarchy).to_pandas().itertuples(index=False, name=None))
             if run.exists(run.hierarchy) else [])

    mcfg = cfg.model
    model_kwargs = dict(name=mcfg.name, source=mcfg.source, weights=mcfg.weights, checkpoint=mcfg.checkpoint,
                        mean=mcfg.mean, std=mcfg.std)
    spec = build_model(**model_kwargs)
    if cfg.data.image_size:
        spec.input_size = cfg.data.image_size
    infos = {info.name: info for info in list_layers(spec)}
    layer = s.layer or resolve_layers(list(mcfg.layers), list(infos), model_name=mcfg.name)[-1]
    if layer not in infos:
        raise ModelError(f"discover.layer {layer!r} is not a module of {mcfg.name} (give a module name such as "
                         f"{', '.join(list(infos)[-3:])}; `neuronscan layers {mcfg.name}` lists them)")
    if s.source == "crops" and s.patch_size > spec.input_size:
        raise InputError(f"discover.patch_size {s.patch_size} is larger than the model's input side "
                         f"{spec.input_size}")
    outputs = output_names(spec, s.output_names)
    if not outputs:
        raise InputError(f"discover: the names of {mcfg.name}'s outputs are unknown; give them as "
                         "discover.output_names (in output order)")
    by_class = {c: g["image_id"].to_numpy(np.int64) for c, g in labels.groupby("concept", sort=True)}
    skipped: dict[str, str] = {}
    if s.classes == "all":
        wanted = [c for c in dict.fromkeys(outputs)]
        for c in wanted:
            n = len(by_class.get(c, ()))
            if n < s.min_images:
                skipped[c] = f"{n} image(s) (< min_images {s.min_images})"
        wanted = [c for c in wanted if c not in skipped]
    else:
        unknown = [c for c in s.classes if c not in outputs]
        if unknown:
            raise InputError(f"discover.classes: {unknown} are not outputs of {mcfg.name} "
                             f"(e.g. {', '.join(outputs[:5])})")
        few = {c: len(by_class.get(c, ())) for c in s.classes if len(by_class.get(c, ())) < 2}
        if few:
            raise InputError(f"discover.classes: too few labelled ok images for {few} (need at least 2)")
        wanted = list(dict.fromkeys(s.classes))
    if not wanted:
        raise InputError(f"discover: no class has {s.min_images} or more labelled ok images "
                         f"({len(skipped)} output(s) checked)")

    slugs: dict[str, int] = {}
    classes = []
    for name in wanted:
        rng = np.random.default_rng([s.seed, zlib.crc32(name.encode())])
        pool = np.sort(by_class[name])
        ids = rng.choice(pool, size=min(s.max_images_per_class, len(pool)), replace=False).astype(np.int64)
        slug = class_slug(name)
        slugs[slug] = slugs.get(slug, 0) + 1
        if slugs[slug] > 1:
            slug = f"{slug}-{slugs[slug]}"
        index = outputs.index(name)
        classes.append({"class": name, "slug": slug, "layer": naming_layer(layer, slug), "index": index,
                        "competitors": competing_outputs(spec, outputs, index), "image_ids": ids.tolist(),
                        "uris": [uri_of[int(i)] for i in ids]})
    all_ok = np.fromiter(uri_of.keys(), dtype=np.int64)
    naming = np.zeros(0, dtype=np.int64)
    if s.naming_images and len(all_ok):
        rng = np.random.default_rng([s.seed, 0x4E41])
        naming = np.sort(rng.choice(all_ok, size=min(s.naming_images, len(all_ok)), replace=False))
    common = {"model": model_kwargs, "image_size": int(spec.input_size), "layer": layer,
              "settings": s.model_dump(mode="json"),
              "data": {"max_pixels": cfg.data.max_pixels, "resize": cfg.data.resize}}
    return DiscoverPlan(classes, skipped, naming, [uri_of[int(i)] for i in naming], common, labels, edges, layer,
                        outputs)


# ------------------------------------------------------------------------------------------------ tasks

_CACHE: dict = {}
"""Per worker process: the model split, built once for the stage's (model, layer, size)."""


def _split(common: dict):
    import torch

    from neuronscan.discover import ModelSplit
    from neuronscan.models import build_model

    s = common["settings"]
    key = (repr(sorted(common["model"].items())), common["layer"], common["image_size"], s["num_gpus"])
    if _CACHE.get("key") != key:
        threads = s["torch_threads"] or max(1, int(round(s["cpus_per_task"])))
        torch.set_num_threads(threads)
        spec = build_model(**common["model"])
        device = "cuda" if s["num_gpus"] > 0 and torch.cuda.is_available() else "cpu"
        split = ModelSplit(spec.module, common["layer"], input_size=common["image_size"], device=device)
        mean = torch.tensor(spec.mean, device=split.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(spec.std, device=split.device).view(1, 3, 1, 1) * 255.0
        _CACHE.clear()
        _CACHE.update(key=key, split=split, mean=mean, std=std)
    return _CACHE["split"], _CACHE["mean"], _CACHE["std"]


def _load(common: dict, ids: list[int], uris: list[str]):
    """Decode images and normalise them for the model: ``(tensor (n_ok, 3, S, S), ok ids, n_failed)``."""
    import torch

    from pipelines.probe import decode_images

    split, mean, std = _split(common)
    size = common["image_size"]
    if not ids:
        return torch.zeros(0, 3, size, size, device=split.device), np.zeros(0, np.int64), 0
    out = decode_images({"image_id": np.asarray(ids, dtype=np.int64), "uri": np.asarray(uris, dtype=object)},
                        size=size, max_pixels=common["data"]["max_pixels"], resize=common["data"]["resize"])
    ok = np.asarray(out["ok"], dtype=bool)
    pixels = np.ascontiguousarray(out["pixels"][ok])
    x = torch.from_numpy(pixels).to(split.device).permute(0, 3, 1, 2).float()
    return (x - mean) / std, np.asarray(ids, dtype=np.int64)[ok], int((~ok).sum())


def class_task(common: dict, cls: dict) -> dict:
    """One class: decode its images and run `neuronscan.discover.discover_class` (a Ray task, or the driver)."""
    from neuronscan.discover import discover_class

    t0 = time.perf_counter()
    settings = craft_settings(_Settings(common["settings"]))
    split, _mean, _std = _split(common)
    x, ids, n_failed = _load(common, cls["image_ids"], cls["uris"])
    t_loaded = time.perf_counter()
    if len(ids) < 2:
        return {"class": cls["class"], "skipped": f"{len(ids)} image(s) decoded", "n_failed": n_failed,
                "seconds": time.perf_counter() - t0}
    result = discover_class(split, x, cls["index"], settings, competitors=cls["competitors"])
    result.timings = {"load": round(t_loaded - t0, 4), **result.timings}
    return {"class": cls["class"], "skipped": None, "image_ids": ids, "n_failed": n_failed, "result": result,
            "seconds": time.perf_counter() - t0}


def naming_task(common: dict, ids: list[int], uris: list[str]) -> dict:
    """The naming images' factorised rows (crops or positions), ``rows_per_image`` each."""
    from neuronscan.discover import activation_rows

    t0 = time.perf_counter()
    settings = craft_settings(_Settings(common["settings"]))
    split, _mean, _std = _split(common)
    chunks, kept, failed, per, boxes = [], [], 0, 1, None
    step = 512
    for start in range(0, len(ids), step):
        x, ok_ids, n_failed = _load(common, ids[start : start + step], uris[start : start + step])
        failed += n_failed
        if len(ok_ids):
            rows = activation_rows(split, x, settings)
            chunks.append(rows.a)
            per, boxes = rows.per_image, rows.boxes
            kept.append(ok_ids)
    a = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return {"image_ids": np.concatenate(kept) if kept else np.zeros(0, np.int64), "a": a, "per_image": per,
            "boxes": boxes, "n_failed": failed, "seconds": time.perf_counter() - t0}


class _Settings:
    """Attribute access to the ``discover`` section's dict (what tasks receive)."""

    def __init__(self, d: dict):
        self.__dict__.update(d)


# ------------------------------------------------------------------------------------------------ driver


def discover_run(cfg, run_dir: str | RunDir, *, section=None, quiet: bool = False, lock_token: str | None = None,
                 address: str | None = None) -> DiscoverSummary:
    """Run concept discovery on a probed run and write ``RUN/discover/``.

    Args:
        cfg: the run's `RunConfig`.
        section: the method's settings (a ``DiscoverSection``); default ``cfg.discover`` (its ``enabled``
            switch is for ``neuronscan run`` and is not read here).
        lock_token: the token of a `RunLock` the caller holds on the run; without one the stage takes the lock.
        address: the Ray cluster to join when no Ray is running and the work is not small; default
            ``cfg.ray.address``.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    section = section if section is not None else cfg.discover
    address = address or cfg.ray.address
    if lock_token is None:
        from neuronscan.io import RunLock

        with RunLock(run.root, command="neuronscan discover") as lock:
            return _discover(cfg, run, section, quiet=quiet, lock_token=lock.holder["token"], address=address)
    return _discover(cfg, run, section, quiet=quiet, lock_token=lock_token, address=address)


def _discover(cfg, run: RunDir, s, *, quiet: bool, lock_token: str, address: str | None) -> DiscoverSummary:
    import ray

    from neuronscan.io import check_holder

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    plan = plan_discover(run, cfg, s)
    n_class_images = sum(len(c["image_ids"]) for c in plan.classes)
    say(f"discover: {len(plan.classes)} class(es) at {plan.layer} ({s.source}"
        + (f", {s.patch_size}px patches" if s.source == "crops" else "")
        + f"), {s.method} with {s.n_concepts} concepts, {n_class_images:,} class images, "
        f"{len(plan.naming_ids):,} naming images"
        + (f"; {len(plan.skipped)} output(s) skipped" if plan.skipped else ""))
    t_plan = time.perf_counter()
    in_driver = not ray.is_initialized() and n_class_images <= _DRIVER_ONLY_IMAGES and s.num_gpus == 0
    if not in_driver and not ray.is_initialized():
        from pipelines._ray import init_ray

        init_ray(address, num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory)
    t_ray = time.perf_counter()

    results: dict[str, dict] = {}
    naming: dict | None = None
    if in_driver:
        if len(plan.naming_ids):
            naming = naming_task(plan.common, plan.naming_ids.tolist(), plan.naming_uris)
        for i, cls in enumerate(plan.classes):
            results[cls["class"]] = res = class_task(plan.common, cls)
            _say_class(say, i + 1, len(plan.classes), res)
    else:
        remote = ray.remote(num_cpus=s.cpus_per_task, num_gpus=s.num_gpus, max_retries=_TASK_RETRIES)
        class_remote = remote(class_task)
        common_ref = ray.put(plan.common)
        naming_ref = (remote(naming_task).remote(common_ref, plan.naming_ids.tolist(), plan.naming_uris)
                      if len(plan.naming_ids) else None)
        pending = {class_remote.remote(common_ref, cls): cls["class"] for cls in plan.classes}
        done = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ready[0])
            results[name] = res = ray.get(ready[0])
            done += 1
            _say_class(say, done, len(plan.classes), res)
        if naming_ref is not None:
            naming = ray.get(naming_ref)
    t_tasks = time.perf_counter()

    check_holder(run.root, lock_token)
    paths = discover_paths(run)
    analysed = [c for c in plan.classes if not results[c["class"]].get("skipped")]
    for c in plan.classes:
        if results[c["class"]].get("skipped"):
            plan.skipped[c["class"]] = results[c["class"]]["skipped"]
    names = _name_concepts(cfg, s, plan, analysed, results, naming, paths, quiet=quiet, address=address)
    t_named = time.perf_counter()
    tables = _tables(plan, analysed, results, names, s)
    for key, table in tables.items():
        write_parquet_atomic(table, paths[key])
    t_written = time.perf_counter()

    seconds = time.perf_counter() - t0
    task_phases: dict[str, float] = {}
    for r in results.values():
        for k, v in (r["result"].timings.items() if r.get("result") is not None else ()):
            task_phases[k] = round(task_phases.get(k, 0.0) + v, 3)
    timings = {"seconds": round(seconds, 3), "plan_s": round(t_plan - t0, 3), "ray_start_s": round(t_ray - t_plan, 3),
               "tasks_s": round(t_tasks - t_ray, 3), "naming_s": round(names["seconds"], 3),
               "write_s": round(t_written - t_named, 3), "in_driver": in_driver,
               "task_seconds_sum": round(sum(r["seconds"] for r in results.values()), 3),
               "naming_task_s": round(naming["seconds"], 3) if naming else None,
               "task_phases_s_sum": task_phases}
    imp = tables["importance"].to_pandas()
    quality = tables["quality"].to_pandas()
    counts = {"classes": len(analysed), "classes_skipped": len(plan.skipped), "concepts": int(len(imp)),
              "class_images": int(quality["n_images"].sum()) if len(quality) else 0,
              "rows": int(quality["n_rows"].sum()) if len(quality) else 0,
              "naming_images": int(len(naming["image_ids"])) if naming else 0,
              "named_concepts": int(imp["best_concept"].notna().sum()),
              "failed_images": int(sum(r.get("n_failed", 0) for r in results.values()))
              + (naming["n_failed"] if naming else 0)}
    finished = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    settings = s.model_dump(mode="json")
    write_json_atomic({
        "settings": settings, "layer": plan.layer, "counts": counts, "timings": timings, "finished": finished,
        "image_statistic": s.image_statistic, "sobol_evaluations_per_image": s.sobol_designs * (s.n_concepts + 2),
        "skipped": plan.skipped,
        "classes": [_class_summary(c, results[c["class"]], imp) for c in analysed],
        "naming": names["summary"],
    }, paths["summary"])
    if run.read_info():
        run.update_info({"discover": {**counts, "finished": finished},
                         "timings": {"discover_s": round(seconds, 3),
                                     "discover_phases": {k: v for k, v in timings.items() if k != "seconds"}},
                         "config": {"discover": settings}})
    say(f"discover: {len(analysed)} class(es), {len(imp)} concepts ({counts['named_concepts']} named) in "
        f"{seconds:.1f} s (tasks {t_tasks - t_ray:.1f} s, naming {names['seconds']:.1f} s)")
    return DiscoverSummary(run.root, plan.layer, [c["class"] for c in analysed], plan.skipped, seconds,
                           {k: v for k, v in paths.items()}, imp, quality, tables["metrics"].to_pandas(),
                           tables["strategies"].to_pandas(), counts, timings)


def _say_class(say, i: int, n: int, res: dict) -> None:
    if res.get("skipped"):
        say(f"  discover {i}/{n}: {res['class']}: skipped ({res['skipped']})")
        return
    r = res["result"]
    q = r.quality
    top = np.argsort(-r.class_importance["sobol"])[:3]
    tops = ", ".join(f"{int(c)} ({r.class_importance['sobol'][c]:.2f})" for c in top)
    say(f"  discover {i}/{n}: {res['class']}: {q['n_images']} images, {q['n_rows']:,} rows, reconstruction error "
        f"{q['reconstruction_error']:.3f}, top concepts by Sobol {tops}, {res['seconds']:.1f} s")


def _name_concepts(cfg, s, plan: DiscoverPlan, analysed: list[dict], results: dict, naming: dict | None,
                   paths: dict, *, quiet: bool, address: str | None = None) -> dict:
    """Per-image coefficients of the naming images as activation parts, scored against the run's labels."""
    import ray

    from neuronscan.discover import image_statistic
    from pipelines._ray import init_ray
    from pipelines.score import run_score

    t0 = time.perf_counter()
    out: dict = {"seconds": 0.0, "summary": None, "neurons": None}
    if naming is None or not len(naming["image_ids"]) or not analysed:
        return out
    fs_root = paths["activations"]
    from neuronscan.io import get_fs

    fs, root = get_fs(fs_root)
    if fs.exists(root):
        fs.rm(root, recursive=True)  # a rerun's classes replace the last run's
    ids = naming["image_ids"]
    for c in analysed:
        fact = results[c["class"]]["result"].factorisation
        u = image_statistic(fact.transform(naming["a"]), naming["per_image"], s.image_statistic).astype(np.float32)
        arrays = [pa.array(ids, pa.int64())] + [pa.array(u[:, k]) for k in range(u.shape[1])]
        table = pa.Table.from_arrays(arrays, schema=activation_schema(u.shape[1]))
        write_parquet_atomic(table, join(fs_root, layer_dirname(c["layer"]), "part-0.parquet"),
                             encoded_columns=["image_id"])
    score_cfg = cfg.score.model_copy(update={
        "n_perm": s.naming_n_perm,
        "compositional": cfg.score.compositional.model_copy(update={"enabled": s.naming_compositional})})
    labels = plan.labels[plan.labels["image_id"].isin(ids)].reset_index(drop=True)
    if not ray.is_initialized():
        # Requested, not begun: the score stage starts it only when the inputs are too large for the driver.
        init_ray(address, num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory,
                 background=True)
    summary = run_score(activations_dir=fs_root, labels=labels, out_dir=paths["scored"], score_cfg=score_cfg,
                        hierarchy=plan.hierarchy or None, quiet=True)
    neurons = read_parquet(join(paths["scored"], "neurons.parquet")).to_pandas()
    out.update(seconds=time.perf_counter() - t0, neurons=neurons, rank_by=score_cfg.rank_by,
               summary={"n_images": int(len(ids)), "rank_by": score_cfg.rank_by, "n_perm": s.naming_n_perm,
                        "compositional": s.naming_compositional, "tests": summary.n_tests,
                        "significant_pairs": summary.n_significant, "score_s": round(summary.seconds, 3),
                        "statistic": s.image_statistic})
    if not quiet:
        print(f"  discover naming: {summary.n_tests:,} concept-label tests on {len(ids):,} images, "
              f"{summary.n_significant:,} significant, {summary.seconds:.1f} s", file=sys.stderr, flush=True)
    return out


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values), dtype=np.int32)
    ranks[order] = np.arange(len(values), dtype=np.int32)
    return ranks


def _tables(plan: DiscoverPlan, analysed: list[dict], results: dict, names: dict, s) -> dict[str, pa.Table]:
    from neuronscan.discover import IMPORTANCE_METHODS, dominant_concepts, prevalence, reliability

    neurons = names.get("neurons")
    name_of: dict[tuple[str, int], dict] = {}
    if neurons is not None and len(neurons):
        metric = f"best_{names['rank_by']}"
        for row in neurons.itertuples(index=False):
            name_of[(row.layer, int(row.unit))] = {
                "best_concept": row.best_concept if isinstance(row.best_concept, str) else None,
                "name_auc": float(row.best_auc), "name_auprc": float(row.best_auprc), "name_q": float(row.best_q),
                "name_score": float(getattr(row, metric, np.nan))}
    blank = {"best_concept": None, "name_auc": np.nan, "name_auprc": np.nan, "name_q": np.nan, "name_score": np.nan}
    frames: dict[str, list[pd.DataFrame]] = {k: [] for k in ("dictionary", "crop_coefficients", "image_coefficients",
                                                            "importance", "image_importance", "metrics", "curves",
                                                            "quality", "strategies", "concept_crops")}
    for c in analysed:
        res = results[c["class"]]
        r = res["result"]
        ids = np.asarray(res["image_ids"], dtype=np.int64)
        name, layer = c["class"], c["layer"]
        w = r.factorisation.components
        k = w.shape[0]
        concepts = np.arange(k, dtype=np.int32)
        frames["dictionary"].append(pd.DataFrame({
            "class": name, "class_index": np.int32(c["index"]), "layer": layer, "concept": concepts,
            "norm": np.linalg.norm(w, axis=1), "weights": [row.astype(np.float32) for row in w]}))
        boxes = np.tile(r.rows.boxes, (len(ids), 1))
        frames["crop_coefficients"].append(pd.DataFrame({
            "class": name, "image_id": ids[r.row_image], "row": np.tile(np.arange(r.rows.per_image, dtype=np.int32),
                                                                        len(ids)),
            "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3],
            "coefficients": list(r.u_rows.astype(np.float32))}))
        frames["image_coefficients"].append(pd.DataFrame({
            "class": name, "image_id": ids, "coefficients": list(r.u_images.astype(np.float32))}))
        strat_imp = r.importance[s.strategy_importance]
        dom = dominant_concepts(strat_imp)
        prev, rel = prevalence(dom, k), reliability(dom, r.correct, k)
        named = [name_of.get((layer, int(j)), blank) for j in concepts]
        imp = {"class": name, "layer": layer, "concept": concepts}
        for m in IMPORTANCE_METHODS:
            imp[m] = r.class_importance[m]
        for m in IMPORTANCE_METHODS:
            imp[f"rank_{m}"] = _ranks(r.class_importance[m])
        imp.update(prevalence=prev, reliability=rel)
        for key in blank:
            imp[key] = [n[key] for n in named]
        frames["importance"].append(pd.DataFrame(imp))
        n_imp = r.n_importance
        frames["image_importance"].append(pd.DataFrame({
            "class": name, "image_id": np.repeat(ids[:n_imp], k), "concept": np.tile(concepts, n_imp),
            **{m: r.importance[m].ravel() for m in IMPORTANCE_METHODS}}))
        frames["metrics"].append(pd.DataFrame([{"class": name, "importance": m, **r.metrics[m]}
                                               for m in IMPORTANCE_METHODS]))
        for m in IMPORTANCE_METHODS:
            for kind, curves in (("deletion", r.deletion[m]), ("insertion", r.insertion[m])):
                frames["curves"].append(pd.DataFrame({"class": name, "importance": m, "kind": kind,
                                                      "step": np.arange(k + 1, dtype=np.int32),
                                                      "logit": curves.mean(axis=0)}))
        q = r.quality
        frames["quality"].append(pd.DataFrame([{
            "class": name, "class_index": c["index"], "layer": layer, "method": s.method, "source": s.source,
            **{key: q[key] for key in ("n_images", "n_rows", "rows_per_image", "n_importance_images",
                                       "reconstruction_error", "reconstruction_error_positions", "n_iter",
                                       "zero_fraction",
                                       "hoyer", "stability", "accuracy", "mean_logit")},
            "seconds": res["seconds"]}]))
        strat = r.strategies.copy()
        strat.insert(0, "class", name)
        strat.insert(2, "best_concept", [n["best_concept"] for n in named])
        frames["strategies"].append(strat)
        crop_rows = []
        for j, examples in enumerate(r.examples):
            for rank, (row, coef) in enumerate(examples):
                b = r.rows.boxes[row % r.rows.per_image]
                crop_rows.append({"class": name, "concept": j, "rank": rank, "image_id": int(ids[r.row_image[row]]),
                                  "x0": int(b[0]), "y0": int(b[1]), "x1": int(b[2]), "y1": int(b[3]),
                                  "coefficient": coef})
        frames["concept_crops"].append(pd.DataFrame(crop_rows))
    schemas = {"dictionary": DICTIONARY_SCHEMA, "crop_coefficients": CROP_COEFFICIENTS_SCHEMA,
               "image_coefficients": IMAGE_COEFFICIENTS_SCHEMA, "importance": IMPORTANCE_SCHEMA,
               "image_importance": IMAGE_IMPORTANCE_SCHEMA, "metrics": METRICS_SCHEMA, "curves": CURVES_SCHEMA,
               "quality": QUALITY_SCHEMA, "strategies": STRATEGIES_SCHEMA, "concept_crops": CONCEPT_CROPS_SCHEMA}
    out = {}
    for key, schema in schemas.items():
        parts = [f for f in frames[key] if len(f)]
        if not parts:
            out[key] = schema.empty_table()
            continue
        df = pd.concat(parts, ignore_index=True)
        out[key] = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    return out


def _class_summary(c: dict, res: dict, imp: pd.DataFrame) -> dict:
    r = res["result"]
    rows = imp[imp["class"] == c["class"]].sort_values("rank_sobol")
    return {
        "class": c["class"], "layer": c["layer"], "index": c["index"], "n_failed": res["n_failed"],
        "seconds": round(res["seconds"], 3), "timings": r.timings,
        "quality": {k: (_f(v) if isinstance(v, float) else v) for k, v in r.quality.items()},
        "metrics": r.metrics,
        "concepts": [{"concept": int(x.concept), "name": x.best_concept, "name_q": _f(x.name_q),
                      "name_auc": _f(x.name_auc), "sobol": _f(x.sobol), "gradient_input": _f(x.gradient_input),
                      "occlusion": _f(x.occlusion), "prevalence": _f(x.prevalence),
                      "reliability": _f(x.reliability)} for x in rows.itertuples(index=False)],
    }


def _f(v) -> float | None:
    """A finite float to 6 significant digits (q-values far below 1e-6 keep their magnitude), else None."""
    v = float(v)
    return float(f"{v:.6g}") if np.isfinite(v) else None

