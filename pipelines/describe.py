"""Describe stage: each unit described by CLIP embeddings of crops around its top images' argmax locations.

Plan (driver): the layers' receptive fields, measured once per layer on the model as built for the run
(`neuronscan.describe.receptive_fields`); each unit's top ``describe.top_m`` images from ``topk/<layer>.parquet``
and the box around each argmax location (`crop_boxes`); the union of those images, every image and every
distinct (image, box) once (`union_plan`). Pass (Ray actors, ``describe.num_actors`` of them with
``cpus_per_actor`` CPUs and ``num_gpus`` GPUs each): chunks of ``batch_size`` distinct images; an actor reads and
decodes each image of its chunk once (as the probe decodes: ``data.resize``, ``data.max_pixels``), cuts all of its
boxes, and embeds the crops with CLIP. Reduce (driver): the vocabulary's text embeddings (from an actor),
every word scored for every unit from its crops (`crop_scores`), the top words (`describe_units`). Writes
``describe/crops.parquet``, ``descriptions.parquet`` and ``describe/describe.json`` with the atomic writer, and
records ``describe`` in ``run.json``.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import math
import os
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa

from neuronscan.describe import (
    CROPS_FILE,
    DESCRIBE_SUMMARY_FILE,
    DESCRIPTIONS_FILE,
    DESCRIPTIONS_SCHEMA,
    UnionPlan,
    crop_boxes,
    crop_scores,
    crops_schema,
    describe_units,
    module_of,
    receptive_fields,
    union_plan,
)
from neuronscan.errors import InputError
from neuronscan.io import RunDir, read_json, read_parquet, write_json_atomic, write_parquet_atomic

__all__ = ["DescribeActor", "DescribePlan", "DescribeSummary", "assemble", "decode_side", "describe_run", "label_table",
           "plan_describe"]


@dataclass
class DescribePlan:
    """What the pass needs, resolved before any actor starts.

    Attributes:
        layers: the described layers, in probe order.
        fields: layer → its `ReceptiveField`.
        union: every (layer, unit, rank) row with its box and distinct crop (`UnionPlan`).
        uris: image id → URI to read it from (credentials kept, in memory only).
        input_size: the model input side the boxes are in.
        decode_size: the side images are decoded at for cropping.
        clip: ``{"model", "pretrained", "checkpoint"}``.
        vocabulary: the words.
        top_m: top images per unit.
    """

    layers: list[str]
    fields: dict
    union: UnionPlan
    uris: dict[int, str]
    input_size: int
    decode_size: int
    clip: dict
    vocabulary: list[str]
    top_m: int
    rf_seconds: float = 0.0


@dataclass
class DescribeSummary:
    """What `describe_run` did: the files, counts, timings and the descriptions table."""

    run_dir: str
    layers: list[str]
    seconds: float
    files: dict[str, str]
    counts: dict
    timings: dict
    descriptions: pd.DataFrame = field(default_factory=pd.DataFrame)


def _probed_layers(run: RunDir) -> tuple[list[str], int | None]:
    """Probed layer names (probe order) and the probed input side, from probe/layers.json or run.json."""
    layers: list[str] = []
    size = None
    if run.exists(run.layers_json):
        meta = read_json(run.layers_json)
        layers = list((meta.get("layers") or {}).keys())
        size = meta.get("image_size")
    if not layers:
        info = run.read_info() or {}
        units = (info.get("counts") or {}).get("units") or {}
        layers = list(units)
        size = size or (info.get("probe") or {}).get("image_size")
    return [str(x) for x in layers], (int(size) if size else None)


def _select_layers(patterns: list[str] | None, available: list[str]) -> list[str]:
    """Layers matching the patterns (a layer name, a module name for all its statistics, or a glob of either)."""
    if not patterns:
        return list(available)
    chosen: list[str] = []
    for pattern in patterns:
        hits = [layer for layer in available
                if fnmatch.fnmatchcase(layer, pattern) or fnmatch.fnmatchcase(module_of(layer), pattern)]
        if not hits:
            raise InputError(f"describe.layers: {pattern!r} matches no probed layer (probed: {', '.join(available)})")
        chosen += [h for h in hits if h not in chosen]
    return [layer for layer in available if layer in chosen]


def _clip_settings(cfg) -> dict:
    d = cfg.describe
    if d.model is not None:
        return {"model": d.model, "pretrained": d.pretrained, "checkpoint": d.checkpoint}
    if cfg.probe.clip is not None:
        c = cfg.probe.clip
        return {"model": c.model, "pretrained": c.pretrained, "checkpoint": c.checkpoint}
    raise InputError("the describe stage needs a CLIP model: set describe.model (e.g. neuronscan-tinyclip, or "
                     "ViT-B-32 with describe.pretrained) or probe.clip")


def _concepts(run: RunDir) -> list[str]:
    """The run's labelled concepts and hierarchy nodes (the score stage's concept list), sorted."""
    names = set(read_parquet(run.labels, columns=["concept"]).column("concept").to_pylist())
    if run.exists(run.hierarchy):
        h = read_parquet(run.hierarchy).to_pandas()
        names |= set(h["concept"]) | set(h["parent"])
    return sorted(str(n) for n in names if n is not None)


def _vocabulary(run: RunDir, cfg) -> list[str]:
    """``describe.vocabulary``, else ``probe.clip.vocabulary``, else the run's concepts (as the score stage)."""
    from neuronscan.clip import load_vocabulary

    d = cfg.describe
    vocabulary = d.vocabulary if d.vocabulary is not None else (cfg.probe.clip.vocabulary if cfg.probe.clip else None)
    try:
        if vocabulary is None:
            return load_vocabulary(_concepts(run))
        if isinstance(vocabulary, str) and vocabulary.strip() == "llm":  # the words probe.clip's endpoint proposes
            from neuronscan.clip import resolve_vocabulary

            llm = getattr(cfg.probe.clip, "vocabulary_llm", None)
            return resolve_vocabulary(SimpleNamespace(vocabulary="llm", vocabulary_llm=llm), _concepts(run))
        return load_vocabulary(vocabulary)
    except ValueError as exc:
        raise InputError(f"describe.vocabulary: {exc}") from exc


def _uris(run: RunDir, cfg, ids: np.ndarray) -> dict[int, str]:
    """URIs of the images to read: images.parquet's, or the listing's where those were stored redacted."""
    images = read_parquet(run.images).to_pandas()
    images = images[images["image_id"].isin(ids)]
    uris = {int(i): str(u) for i, u in zip(images["image_id"], images["uri"])}
    redacted = [i for i, u in uris.items() if "***@" in u or "<redacted>" in u]
    if redacted:  # the stored URI lost its credentials: read the one the config lists
        from pipelines._inputs import plan_inputs

        listing = plan_inputs(cfg).listing
        listing = listing[listing["image_id"].isin(redacted)]
        uris.update({int(i): str(u) for i, u in zip(listing["image_id"], listing["uri"])})
    return uris


def plan_describe(run_dir: str | RunDir, cfg) -> DescribePlan:
    """Layers, receptive fields, boxes and the union of top images; reads the run, writes nothing.

    Raises:
        InputError: no probed layer or top-image table, a layer pattern that matches nothing, no CLIP model, an
            unreadable vocabulary.
    """
    from neuronscan.models import build_model

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    d = cfg.describe
    clip = _clip_settings(cfg)
    available, probed_size = _probed_layers(run)
    if not available:
        raise InputError(f"{run.root} has no probed layers (probe/layers.json); run the probe first")
    layers = _select_layers(d.layers, available)
    top_m = min(d.top_m, cfg.probe.topk)
    mcfg = cfg.model
    spec = build_model(name=mcfg.name, source=mcfg.source, weights=mcfg.weights, checkpoint=mcfg.checkpoint,
                       mean=mcfg.mean, std=mcfg.std)
    input_size = int(probed_size or cfg.data.image_size or spec.input_size)
    t = time.perf_counter()
    try:
        fields = receptive_fields(spec.module, layers, input_size)
    except ValueError as exc:
        raise InputError(f"describe: {exc}") from exc
    rf_seconds = time.perf_counter() - t
    frames = []
    for layer in layers:
        uri = run.topk(layer)
        if not run.exists(uri):
            raise InputError(f"{uri} is missing: the probe did not finish layer {layer!r}")
        top = read_parquet(uri).to_pandas()
        top = top[top["rank"] < top_m].sort_values(["unit", "rank"], kind="stable")
        boxes = crop_boxes(top["loc_y"].to_numpy(), top["loc_x"].to_numpy(), fields[layer], min_crop=d.min_crop)
        frames.append(pd.DataFrame({
            "layer": layer, "unit": top["unit"].to_numpy(np.int32), "rank": top["rank"].to_numpy(np.int32),
            "image_id": top["image_id"].to_numpy(np.int64), "value": top["value"].to_numpy(np.float32),
            "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3]}))
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["layer", "unit", "rank", "image_id", "value", "x0", "y0", "x1", "y1"])
    union = union_plan(rows)
    uris = _uris(run, cfg, union.images)
    vocabulary = _vocabulary(run, cfg)
    return DescribePlan(layers, fields, union, uris, input_size, input_size, clip, vocabulary, top_m, rf_seconds)


def decode_side(input_size: int, clip_side: int, min_crop: float) -> int:
    """The side images are decoded at for cropping: larger than the model input when CLIP takes larger images
    than a ``min_crop`` crop of it, so such a crop reaches CLIP at up to its own resolution (at most 4x the input
    side; never smaller than the input)."""
    return int(min(4 * input_size, max(input_size, math.ceil(clip_side / min_crop))))


class DescribeActor:
    """Ray actor: loads CLIP once; per call reads and decodes a chunk of images once each and embeds their crops.

    Args:
        clip: ``{"model", "pretrained", "checkpoint"}`` for `neuronscan.clip.load_clip`.
        input_size: the model input side the boxes are in.
        num_gpus: GPUs given to this actor (0 → CPU).
        torch_threads: intra-op threads (default: all cores of the machine).
    """

    def __init__(self, *, clip: dict, input_size: int, num_gpus: float = 0.0, torch_threads: int | None = None,
                 batch_size: int = 64):
        import torch

        from neuronscan.clip import load_clip

        torch.set_num_threads(torch_threads or os.cpu_count() or 1)
        device = "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.bundle = load_clip(clip["model"], pretrained=clip.get("pretrained"), checkpoint=clip.get("checkpoint"),
                                device=device)
        self.input_size = int(input_size)
        self.batch_size = int(batch_size)

    def info(self) -> dict:
        b = self.bundle
        return {"embed_dim": b.embed_dim, "image_size": list(b.image_size), "weights": b.weights,
                "device": str(b.device)}

    def texts(self, vocabulary: list[str]) -> np.ndarray:
        """The vocabulary's text embeddings (one prompt per default template, averaged), from the on-disk text
        cache when it holds them (`neuronscan.clip._text_cache`)."""
        from neuronscan.clip._text_cache import cached_embed_texts

        return cached_embed_texts(self.bundle, vocabulary)

    def embed(self, chunk: dict) -> dict:
        """One chunk: ``image_ids``, ``uris``, ``boxes`` ``(n, 4)``, ``owner`` (row of ``boxes`` → image index),
        ``crop_ids``, ``decode`` (``{"size", "max_pixels", "resize"}``). Returns the crops' embeddings, the images
        decoded (each once) and the errors."""
        from neuronscan.clip import embed_images
        from neuronscan.describe import cut_crops
        from pipelines.probe import decode_images

        t = time.perf_counter()
        ids = np.asarray(chunk["image_ids"], dtype=np.int64)
        how = chunk["decode"]
        decoded = decode_images({"image_id": ids, "uri": np.asarray(chunk["uris"], dtype=object)},
                                size=int(how["size"]), max_pixels=int(how["max_pixels"]), resize=str(how["resize"]))
        t_decode = time.perf_counter() - t
        ok = np.asarray(decoded["ok"], dtype=bool)
        boxes = np.asarray(chunk["boxes"], dtype=np.int64).reshape(-1, 4)
        owner = np.asarray(chunk["owner"], dtype=np.int64)
        crop_ids = np.asarray(chunk["crop_ids"], dtype=np.int64)
        keep = ok[owner] if len(owner) else np.zeros(0, dtype=bool)
        pieces = [cut_crops(decoded["pixels"][k], boxes[owner == k], input_size=self.input_size,
                            out_size=self.bundle.image_size) for k in np.flatnonzero(ok)]
        crops = (np.concatenate(pieces) if pieces else
                 np.zeros((0, *self.bundle.image_size, 3), dtype=np.uint8))
        # Crops come out grouped by image in ok order; the boxes are grouped the same way (owner ascending).
        order = np.argsort(owner[keep], kind="stable")
        emb = (embed_images(self.bundle, crops, batch_size=self.batch_size) if len(crops)
               else np.zeros((0, self.bundle.embed_dim), dtype=np.float32))
        errors = {int(i): str(e) for i, o, e in zip(ids, ok, decoded["error"]) if not o}
        return {"crop_ids": crop_ids[keep][order], "embeddings": emb.astype(np.float32),
                "decoded": ids.copy(), "errors": errors, "seconds": time.perf_counter() - t,
                "decode_seconds": t_decode}


def _chunks(plan: DescribePlan, size: int, decode: dict) -> list[dict]:
    """Chunks of ``size`` distinct images with their boxes (every image in exactly one chunk)."""
    union = plan.union
    crops = union.crops[["x0", "y0", "x1", "y1"]].to_numpy(np.int32)
    out = []
    for start in range(0, len(union.images), size):
        stop = min(start + size, len(union.images))
        a, b = int(union.starts[start]), int(union.starts[stop])
        owner = np.repeat(np.arange(stop - start), np.diff(union.starts[start : stop + 1]))
        ids = union.images[start:stop]
        out.append({"image_ids": ids, "uris": [plan.uris.get(int(i), "") for i in ids], "boxes": crops[a:b],
                    "owner": owner, "crop_ids": np.arange(a, b, dtype=np.int64), "decode": decode})
    return out


def assemble(union: UnionPlan, results: list[dict], dim: int) -> tuple[np.ndarray, dict[int, str], np.ndarray]:
    """The actors' results put together: per row of ``union.rows`` its crop's embedding (NaN where the image
    failed), the errors by image, and how many times each of ``union.images`` was decoded."""
    embeddings = np.full((len(union.crops), dim), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    decodes = np.zeros(len(union.images), dtype=np.int64)
    for res in results:
        embeddings[res["crop_ids"]] = res["embeddings"]
        errors.update(res["errors"])
        np.add.at(decodes, np.searchsorted(union.images, res["decoded"]), 1)
    return embeddings[union.rows["crop"].to_numpy(np.int64)], errors, decodes


def describe_run(run_dir: str | RunDir, cfg=None, *, quiet: bool = False, lock_token: str | None = None,
                 address: str | None = None) -> DescribeSummary:
    """Describe the units of a probed run by their top crops and write the stage's tables into the run.

    Args:
        run_dir: a probed run (``topk/<layer>.parquet``, ``images.parquet``, ``labels.parquet``).
        cfg: the run's `RunConfig` (or its dict); default: the config recorded in ``run.json``. Its ``describe``
            section is the stage's settings (``describe.enabled`` is for ``neuronscan run`` and is not read here).
        lock_token: the token of a `RunLock` the caller holds; without one the stage takes the lock itself.
        address: the Ray cluster to join when no Ray is running; default: ``cfg.ray.address``.
    """
    from neuronscan.config import RunConfig, config_from_dict

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if cfg is None:
        info = run.read_info() or {}
        if "config" not in info:
            raise InputError(f"{run.info_uri} holds no config; pass cfg")
        cfg = info["config"]
    if not isinstance(cfg, RunConfig):
        cfg = config_from_dict(cfg)
    address = address or cfg.ray.address
    if lock_token is None:
        from neuronscan.io import RunLock

        with RunLock(run.root, command="neuronscan describe") as lock:
            return _describe(run, cfg, quiet=quiet, lock_token=lock.holder["token"], address=address)
    return _describe(run, cfg, quiet=quiet, lock_token=lock_token, address=address)


def _describe(run: RunDir, cfg, *, quiet: bool, lock_token: str, address: str | None) -> DescribeSummary:
    import ray
    from ray.util import ActorPool

    from neuronscan.io import check_holder
    from pipelines._ray import init_ray

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    d = cfg.describe
    t0 = time.perf_counter()
    plan = plan_describe(run, cfg)
    union = plan.union
    say(f"describe: {len(plan.layers)} layer(s) ({', '.join(plan.layers)}), top {plan.top_m} images per unit: "
        f"{len(union.rows):,} crops of {len(union.images):,} distinct images ({len(union.crops):,} distinct boxes); "
        f"{len(plan.vocabulary):,} words; CLIP {plan.clip['model']}")
    t_planned = time.perf_counter()
    if not ray.is_initialized():
        init_ray(address, num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory)
    t_ray = time.perf_counter()
    actor_cls = ray.remote(num_cpus=d.cpus_per_actor, num_gpus=d.num_gpus)(DescribeActor)
    n_images = len(union.images)
    n_actors = max(1, min(d.num_actors, math.ceil(n_images / d.batch_size) or 1))
    kwargs = {"clip": plan.clip, "input_size": plan.input_size, "num_gpus": d.num_gpus,
              "torch_threads": d.torch_threads, "batch_size": d.batch_size}
    actors = [actor_cls.remote(**kwargs) for _ in range(n_actors)]
    results: list[dict] = []
    try:
        try:
            clip_info = ray.get(actors[0].info.remote())
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            raise InputError(f"describe: CLIP model {plan.clip['model']!r} could not be loaded: {cause}") from exc
        text_ref = actors[0].texts.remote(plan.vocabulary)
        plan.decode_size = decode_side(plan.input_size, int(max(clip_info["image_size"])), d.min_crop)
        decode = {"size": plan.decode_size, "max_pixels": cfg.data.max_pixels, "resize": cfg.data.resize}
        chunks = _chunks(plan, d.batch_size, decode)
        pool = ActorPool(actors)
        done_images = 0
        last = time.perf_counter()
        for res in pool.map_unordered(lambda a, c: a.embed.remote(c), chunks):
            results.append(res)
            done_images += len(res["decoded"])
            if time.perf_counter() - last > 5 or done_images == len(union.images):
                last = time.perf_counter()
                say(f"  describe: {done_images:,}/{len(union.images):,} images, {len(res['errors'])} failed in the "
                    "last chunk")
        text = np.asarray(ray.get(text_ref), dtype=np.float32)
    finally:
        for a in actors:
            ray.kill(a)
    t_pass = time.perf_counter()

    dim = int(text.shape[1])
    row_emb, errors, decodes = assemble(union, results, dim)
    rows = union.rows
    has = np.isfinite(row_emb).all(axis=1)

    frames = []
    for layer in plan.layers:
        mine = (rows["layer"] == layer).to_numpy()
        units = np.unique(rows.loc[mine, "unit"].to_numpy(np.int64))
        use = mine & has
        index = np.searchsorted(units, rows.loc[use, "unit"].to_numpy(np.int64))
        scores = crop_scores(row_emb[use], index, rows.loc[use, "rank"].to_numpy(np.int64), text,
                             n_units=len(units), method=d.method, top_m=plan.top_m)
        desc = describe_units(scores, plan.vocabulary, top_n=d.top_n, phrase_words=d.phrase_words)
        desc.insert(0, "unit", units.astype(np.int32))
        desc.insert(0, "layer", layer)
        desc["n_crops"] = np.bincount(index, minlength=len(units)).astype(np.int32)
        frames.append(desc)
    descriptions = (pd.concat(frames, ignore_index=True) if frames
                    else DESCRIPTIONS_SCHEMA.empty_table().to_pandas())
    t_reduce = time.perf_counter()

    check_holder(run.root, lock_token)
    files = {"crops": run.path(CROPS_FILE), "descriptions": run.path(DESCRIPTIONS_FILE),
             "summary": run.path(DESCRIBE_SUMMARY_FILE)}
    emb_values = pa.array(np.where(has[:, None], row_emb, 0.0).astype(np.float32).ravel())
    emb_col = pa.FixedSizeListArray.from_arrays(emb_values, dim, mask=pa.array(~has))  # null: not embedded
    image_ids = rows["image_id"].to_numpy(np.int64)
    row_errors = [None if h else errors.get(int(i), "not read: no URI for the image") for i, h in zip(image_ids, has)]
    crops_table = pa.Table.from_arrays(
        [pa.array(rows["layer"].astype(str).to_numpy(object), pa.string()),
         pa.array(rows["unit"].to_numpy(np.int32)), pa.array(rows["rank"].to_numpy(np.int32)),
         pa.array(image_ids), pa.array(rows["value"].to_numpy(np.float32)),
         *(pa.array(rows[c].to_numpy(np.int32)) for c in ("x0", "y0", "x1", "y1")),
         emb_col, pa.array(row_errors, pa.string())],
        schema=crops_schema(dim))
    write_parquet_atomic(crops_table, files["crops"])
    write_parquet_atomic(pa.Table.from_pandas(descriptions[DESCRIPTIONS_SCHEMA.names], schema=DESCRIPTIONS_SCHEMA,
                                              preserve_index=False), files["descriptions"])
    seconds = time.perf_counter() - t0
    actor_seconds = [float(r["seconds"]) for r in results]
    timings = {"seconds": round(seconds, 3), "plan_s": round(t_planned - t0, 3),
               "receptive_fields_s": round(plan.rf_seconds, 3), "ray_start_s": round(t_ray - t_planned, 3),
               "pass_s": round(t_pass - t_ray, 3), "reduce_s": round(t_reduce - t_pass, 3),
               "actor_seconds_sum": round(sum(actor_seconds), 3),
               "decode_seconds_sum": round(sum(float(r["decode_seconds"]) for r in results), 3)}
    counts = {"layers": list(plan.layers), "units": int(len(descriptions)),
              "units_described": int((descriptions["n_crops"] > 0).sum()) if len(descriptions) else 0,
              "crops": int(len(rows)), "crops_embedded": int(has.sum()), "distinct_crops": int(len(union.crops)),
              "images": int(len(union.images)), "images_decoded": int(decodes.sum()),
              "images_failed": int(len(errors)), "max_decodes_per_image": int(decodes.max()) if len(decodes) else 0,
              "vocabulary": len(plan.vocabulary), "top_m": plan.top_m, "method": d.method, "actors": n_actors,
              "chunks": len(chunks)}
    finished = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    settings = d.model_dump(mode="json")
    write_json_atomic({
        "settings": settings, "clip": {**plan.clip, **clip_info}, "input_size": plan.input_size,
        "decode_size": plan.decode_size, "vocabulary": plan.vocabulary,
        "receptive_fields": {k: v.as_dict() for k, v in plan.fields.items()},
        "counts": counts, "timings": timings, "finished": finished,
    }, files["summary"])
    if run.read_info():
        run.update_info({"describe": {**counts, "finished": finished},
                         "timings": {"describe_s": round(seconds, 3),
                                     "describe_phases": {k: v for k, v in timings.items() if k != "seconds"}},
                         "config": {"describe": settings}})
    say(f"describe: {counts['units_described']:,} units described from {counts['crops_embedded']:,} crops of "
        f"{counts['images_decoded']:,} images in {seconds:.1f} s ({counts['images_failed']} images failed)")
    return DescribeSummary(run.root, list(plan.layers), seconds, files, counts, timings, descriptions)


def label_table(run_dir: str | RunDir, descriptions: pd.DataFrame | None = None, *, per_layer: int = 3) -> pd.DataFrame:
    """Per layer the ``per_layer`` units with the highest best AUC and both label-free labels.

    Columns: ``layer, unit, best_concept, best_auc, clip_label`` (whole images, ``probe.clip.method``; from
    ``neurons.parquet``) and ``patch_label, patch_score, phrase`` (crops; from ``descriptions.parquet``).
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if descriptions is None:
        descriptions = read_parquet(run.path(DESCRIPTIONS_FILE)).to_pandas()
    table = descriptions[["layer", "unit", "patch_label", "patch_score", "phrase"]].copy()
    if run.exists(run.neurons):
        cols = ["layer", "unit", "best_concept", "best_auc", "clip_label"]
        neurons = read_parquet(run.neurons).to_pandas()
        neurons = neurons[[c for c in cols if c in neurons.columns]]
        table = table.merge(neurons, on=["layer", "unit"], how="left")
    for c in ("best_concept", "best_auc", "clip_label"):
        if c not in table:
            table[c] = np.nan if c == "best_auc" else None
    order = {layer: i for i, layer in enumerate(pd.unique(descriptions["layer"]))}
    table["_o"] = table["layer"].map(order)
    table = table.sort_values(["_o", "best_auc", "unit"], ascending=[True, False, True], na_position="last",
                              kind="stable")
    table = table.groupby("layer", sort=False).head(per_layer).drop(columns="_o")
    return table[["layer", "unit", "best_concept", "best_auc", "clip_label", "patch_label", "patch_score",
                  "phrase"]].reset_index(drop=True)
