"""Spatial hierarchy stage (HINT): per concept and conv layer, responsible regions → concept classifier →
Shapley channel ranking → localisation IoU, on Ray actors. Reads a probed run, writes three files into it.

Dataflow: the driver reads the run (``images.parquet``, ``labels.parquet``, ``hierarchy.parquet``, the boxes),
samples each concept's images (seeded; at most ``per_leaf`` per leaf class and ``max_images`` in all) and its
held-out localisation images, and decides each image's saliency target (`neuronscan.hierarchy._spatial`
``target_outputs``). One task per (concept, layer) goes to a pool of `SpatialActor`\\ s (built like the probe
actors: the model from the run config, GPUs from ``num_gpus``, fractional CPUs); an actor decodes the images,
computes feature maps and saliency, fits the classifier, ranks channels and measures localisation, and returns
arrays. The driver writes, with the atomic writer:

- ``concept_spatial.parquet`` — concept, depth, layer, rank, unit, weight, shapley;
- ``localisation.parquet`` — concept, depth, layer, n_images, mean_iou, frac_iou_50;
- ``spatial.json`` — the settings, and per task its counts, classifier accuracy, skip reason and seconds.

``run.json`` gets ``spatial`` (counts and ``finished``), ``timings.spatial_s`` and ``timings.spatial_phases``,
and ``config.hierarchy.spatial`` (the settings it ran with).

Entry point: `run_spatial` (``pipelines.run_spatial``), with the run config's ``hierarchy.spatial`` section:
``neuronscan run`` calls it after the hierarchy stage when ``hierarchy.spatial.enabled``, and
``neuronscan hierarchy RUN --spatial`` on a probed and scored run.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from neuronscan.hierarchy._spatial import (
    BOX_COLUMNS,
    CONCEPT_SPATIAL_FILE,
    CONCEPT_SPATIAL_SCHEMA,
    LOCALISATION_FILE,
    LOCALISATION_SCHEMA,
    SPATIAL_SUMMARY_FILE,
    SpatialSection,
    sample_concept_images,
    target_outputs,
)
from neuronscan.io import RunDir, read_parquet, write_json_atomic, write_parquet_atomic

__all__ = ["SpatialActor", "SpatialSection", "SpatialSummary", "localisation_by_level", "plan_spatial", "read_boxes",
           "run_spatial"]

log = logging.getLogger("neuronscan")


@dataclass
class SpatialSummary:
    """What the stage did: the files, and the cost (seconds of actor work per (concept, layer) task)."""

    run_dir: str
    layers: list[str]
    n_concepts: int
    n_tasks: int
    n_skipped: int
    seconds: float
    task_seconds: list[float]
    files: dict[str, str]
    localisation: pd.DataFrame = field(repr=False, default=None)
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def seconds_per_concept(self) -> float:
        """Mean actor seconds of one (concept, layer) task: decode, saliency, classifier, localisation."""
        return float(np.mean(self.task_seconds)) if self.task_seconds else float("nan")

    def by_level(self) -> pd.DataFrame:
        """Localisation per layer and level (depth): the mean over concepts with boxes of ``mean_iou`` and
        ``frac_iou_50``, and how many concepts that is (`localisation_by_level`)."""
        return localisation_by_level(self.localisation)


def localisation_by_level(loc: pd.DataFrame | None) -> pd.DataFrame:
    """``localisation.parquet`` per ``(layer, depth)``: ``concepts`` (with at least one localised image),
    ``mean_iou`` and ``frac_iou_50`` (means over those concepts, each concept weighted alike)."""
    cols = ["layer", "depth", "concepts", "mean_iou", "frac_iou_50"]
    if loc is None or not len(loc):
        return pd.DataFrame(columns=cols)
    done = loc[pd.to_numeric(loc["n_images"], errors="coerce").fillna(0) > 0]
    if not len(done):
        return pd.DataFrame(columns=cols)
    out = done.groupby(["layer", "depth"], sort=False).agg(
        concepts=("concept", "size"), mean_iou=("mean_iou", "mean"), frac_iou_50=("frac_iou_50", "mean"))
    return out.reset_index().sort_values(["layer", "depth"], kind="stable").reset_index(drop=True)[cols]


def _concept_seed(seed: int, concept: str, layer: str = "") -> list[int]:
    return [int(seed), zlib.crc32(concept.encode()), zlib.crc32(layer.encode())]


def read_boxes(path: str):
    """Ground-truth boxes from a Parquet file: ``image_id, concept, x0, y0, x1, y1`` and optionally ``width``,
    ``height`` (the image's size in pixels; read from the image when absent). Other columns (a mask) are
    ignored. Rows with an empty box are dropped.

    Raises:
        InputError: the file cannot be read or lacks a required column.
    """
    from neuronscan.errors import InputError

    try:
        table = read_parquet(path)
    except (OSError, FileNotFoundError, ValueError) as exc:
        raise InputError(f"boxes file {path}: {exc}") from exc
    missing = [c for c in BOX_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(f"boxes file {path} lacks column(s) {missing}; expected {list(BOX_COLUMNS)} "
                         "[, width, height]")
    keep = [c for c in (*BOX_COLUMNS, "width", "height") if c in table.column_names]
    df = table.select(keep).to_pandas()
    out = pd.DataFrame({"image_id": df["image_id"].astype("int64"), "concept": df["concept"].astype(str)})
    for c in ("x0", "y0", "x1", "y1"):
        out[c] = df[c].astype("float64")
    for c in ("width", "height"):
        out[c] = df[c].astype("float64") if c in df else np.nan
    nonempty = (out["x1"] > out["x0"]) & (out["y1"] > out["y0"])
    return out[nonempty].reset_index(drop=True)


def _default_boxes(cfg) -> str | None:
    sw = cfg.data.shapes_world
    if sw is not None:
        path = Path(sw.root) / "boxes.parquet"
        return str(path) if path.is_file() else None
    return None


@dataclass
class SpatialPlan:
    """The tasks, one per (concept, layer), and what the driver needs to write the tables."""

    tasks: list[dict]
    layers: list[str]
    concepts: list[str]
    depths: dict[str, int]
    model_kwargs: dict
    image_size: int
    outputs: list[str]
    boxes_path: str | None


def plan_spatial(run_dir: str, cfg, spatial: SpatialSection) -> SpatialPlan:
    """Sample every concept's images and build the tasks; reads the run, writes nothing, starts no Ray.

    Raises:
        InputError / ModelError: the run is not probed, a layer is unknown or not a conv map, a concept has
            no images.
    """
    from neuronscan.concepts import ancestors_map, concept_depths
    from neuronscan.errors import InputError, ModelError
    from neuronscan.hierarchy._spatial import output_concepts
    from neuronscan.models import build_model, list_layers, resolve_layers

    run = RunDir(run_dir)
    if not run.exists(run.images):
        raise InputError(f"{run_dir} has no images.parquet: probe the run first (neuronscan probe CONFIG)")
    images = read_parquet(run.images).to_pandas()
    ok = images[images["status"] == "ok"]
    uri_of = dict(zip(ok["image_id"].astype(np.int64), ok["uri"].astype(str)))
    if cfg.data.folder is None and cfg.data.manifest is None and cfg.data.shapes_world is None:
        raise InputError("the run config has no data source")
    labels = read_parquet(run.labels).to_pandas()
    labels = labels[labels["image_id"].isin(uri_of.keys())]
    edges = (list(read_parquet(run.hierarchy).to_pandas().itertuples(index=False, name=None))
             if run.exists(run.hierarchy) else [])
    anc = ancestors_map(edges)
    depth_of = concept_depths(edges) if edges else {}
    direct: dict[int, set[str]] = {}
    for image_id, concept in zip(labels["image_id"].astype(np.int64), labels["concept"].astype(str)):
        direct.setdefault(int(image_id), set()).add(concept)
    by_concept: dict[str, np.ndarray] = {
        c: np.sort(g["image_id"].to_numpy(np.int64)) for c, g in labels.groupby("concept", sort=True)
    }
    below: dict[str, set[str]] = {}
    for child, parents in anc.items():
        for p in parents:
            below.setdefault(p, set()).add(child)
    known = sorted(set(by_concept) | set(anc))

    def under(c: str) -> set[str]:
        return {c} | below.get(c, set())

    def positives(c: str) -> np.ndarray:
        parts = [by_concept[x] for x in under(c) if x in by_concept]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    if spatial.concepts is not None:
        unknown = [c for c in spatial.concepts if c not in known]
        if unknown:
            raise InputError(f"spatial.concepts: unknown concept(s) {unknown}; the run has {len(known)} concepts")
        concepts = list(spatial.concepts)
    else:
        concepts = [c for c in known if len(positives(c))]

    mcfg = cfg.model
    model_kwargs = dict(name=mcfg.name, source=mcfg.source, weights=mcfg.weights, checkpoint=mcfg.checkpoint,
                        mean=mcfg.mean, std=mcfg.std)
    spec = build_model(**model_kwargs)
    if cfg.data.image_size:
        spec.input_size = cfg.data.image_size
    infos = {info.name: info for info in list_layers(spec)}
    layers = resolve_layers(spatial.layers or list(mcfg.layers), list(infos), model_name=mcfg.name)
    not_maps = [name for name in layers if len(infos[name].shape) != 3]
    if not_maps:
        raise ModelError(f"spatial: layer(s) {not_maps} do not output a conv feature map (C, h, w): "
                         + ", ".join(f"{n} {infos[n].shape}" for n in not_maps))
    outputs = output_concepts(spec, spatial.output_concepts)
    out_index = {name: k for k, name in enumerate(outputs)}

    boxes_path = spatial.boxes or _default_boxes(cfg)
    boxes = read_boxes(boxes_path) if boxes_path else None
    box_groups: dict[str, pd.DataFrame] = {}
    if boxes is not None:
        boxes = boxes[boxes["image_id"].isin(uri_of.keys())]
        # A box of a concept is a box of each of its ancestors.
        rows = [boxes]
        for c, parents in anc.items():
            sub = boxes[boxes["concept"] == c]
            for p in parents:
                if len(sub):
                    rows.append(sub.assign(concept=p))
        allb = pd.concat(rows, ignore_index=True).drop_duplicates(["image_id", "concept", "x0", "y0", "x1", "y1"])
        box_groups = {c: g for c, g in allb.groupby("concept", sort=False)}

    tasks = []
    for concept in concepts:
        pos = positives(concept)
        if len(pos) == 0:
            raise InputError(f"spatial: concept {concept!r} has no ok image")
        for layer in layers:
            rng = np.random.default_rng(_concept_seed(spatial.seed, concept, layer))
            groups = {x: by_concept[x] for x in sorted(under(concept)) if x in by_concept}
            train = sample_concept_images(groups, spatial.per_leaf, spatial.max_images, rng)
            targets = [target_outputs(concept, direct.get(int(i), set()), under(concept), out_index, anc)
                       for i in train]
            neg = np.zeros(0, dtype=np.int64)
            if any(len(t) == 0 for t in targets):
                pool = np.setdiff1d(np.fromiter(uri_of.keys(), dtype=np.int64), pos)
                if len(pool):
                    neg = np.sort(rng.choice(pool, size=min(len(train), len(pool)), replace=False))
            eval_ids = np.zeros(0, dtype=np.int64)
            eval_boxes: list = []
            eval_wh: list = []
            g = box_groups.get(concept)
            if g is not None and spatial.eval_images:
                pool = np.setdiff1d(np.intersect1d(pos, g["image_id"].unique()), train)
                if len(pool) > spatial.eval_images:
                    pool = np.sort(rng.choice(pool, size=spatial.eval_images, replace=False))
                eval_ids = pool.astype(np.int64)
                gi = g.set_index("image_id")
                for i in eval_ids:
                    b = gi.loc[[i]]
                    eval_boxes.append(b[["x0", "y0", "x1", "y1"]].to_numpy(np.float64).tolist())
                    eval_wh.append((float(b["width"].iloc[0]), float(b["height"].iloc[0])))
            tasks.append({
                "concept": concept, "layer": layer,
                "depth": int(depth_of.get(concept, 0)) if edges else -1,
                "seed": int(zlib.crc32(f"{spatial.seed}/{concept}/{layer}".encode())),
                "train_ids": train.tolist(), "train_uris": [uri_of[int(i)] for i in train], "targets": targets,
                "neg_ids": neg.tolist(), "neg_uris": [uri_of[int(i)] for i in neg],
                "eval_ids": eval_ids.tolist(), "eval_uris": [uri_of[int(i)] for i in eval_ids],
                "eval_boxes": eval_boxes, "eval_wh": eval_wh,
            })
    depths = {c: (int(depth_of.get(c, 0)) if edges else -1) for c in concepts}
    return SpatialPlan(tasks, layers, concepts, depths, model_kwargs, int(spec.input_size), outputs, boxes_path)


class SpatialActor:
    """Ray actor: loads the model once, then analyses one (concept, layer) task per call.

    Args:
        model: keyword arguments of :func:`neuronscan.models.build_model`.
        image_size: the model input side (the decoder resizes to it).
        num_gpus: GPUs given to this actor (0 → CPU).
        torch_threads: intra-op threads (default: all cores of the machine).
        data: ``{"max_pixels", "resize"}`` as in the run config's data section.
        settings: a `SpatialSection` as a dict.
    """

    def __init__(self, *, model: dict, image_size: int, num_gpus: float = 0.0, torch_threads: int | None = None,
                 data: dict, settings: dict, n_outputs: int = 0):
        import torch

        from neuronscan.models import build_model

        torch.set_num_threads(torch_threads or os.cpu_count() or 1)
        self.torch = torch
        self.device = torch.device("cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu")
        spec = build_model(**model)
        self.module = spec.module.to(self.device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.modules = dict(self.module.named_modules())
        self.size = int(image_size)
        self.mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self.data = data
        self.settings = SpatialSection.model_validate(settings)
        self.n_outputs = int(n_outputs)

    def _decode(self, ids: list[int], uris: list[str]) -> tuple[np.ndarray, np.ndarray]:
        from pipelines.probe import decode_images

        if not ids:
            return np.zeros((0, self.size, self.size, 3), dtype=np.uint8), np.zeros(0, dtype=bool)
        out = decode_images({"image_id": np.asarray(ids, dtype=np.int64), "uri": np.asarray(uris, dtype=object)},
                            size=self.size, max_pixels=self.data["max_pixels"], resize=self.data["resize"])
        return out["pixels"], np.asarray(out["ok"], dtype=bool)

    def _tensor(self, pixels: np.ndarray):
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device).permute(0, 3, 1, 2).float()
        return (x - self.mean) / self.std

    def _features(self, layer: str, pixels: np.ndarray) -> np.ndarray:
        torch = self.torch
        captured: dict = {}
        handle = self.modules[layer].register_forward_hook(lambda _m, _i, o: captured.__setitem__("f", o))
        chunks = []
        try:
            with torch.no_grad():
                for start in range(0, len(pixels), self.settings.batch_size):
                    self.module(self._tensor(pixels[start : start + self.settings.batch_size]))
                    chunks.append(captured["f"].float().cpu().numpy())
        finally:
            handle.remove()
        return np.concatenate(chunks) if chunks else np.zeros((0,), dtype=np.float32)

    def analyse(self, task: dict) -> dict:
        """One (concept, layer): feature maps and saliency of the sampled images, classifier, ranking, IoUs."""
        from neuronscan.hierarchy._spatial import (
            analyse_concept,
            concept_target,
            downsample,
            map_box_to_input,
            saliency_maps,
        )

        torch = self.torch
        s = self.settings
        t0 = time.perf_counter()
        layer = task["layer"]
        pixels, ok = self._decode(task["train_ids"], task["train_uris"])
        targets = [t for t, o in zip(task["targets"], ok) if o]
        pixels = pixels[ok]
        result = {"concept": task["concept"], "layer": layer, "depth": task["depth"], "n_sampled": len(ok),
                  "n_failed": int((~ok).sum()), "target": "logit", "n_direction_images": 0}
        if len(pixels) == 0:
            return {**result, "skipped": "no sampled image decoded", "seconds": time.perf_counter() - t0}
        use_dir = np.array([len(t) == 0 for t in targets])
        direction = None
        if use_dir.any():
            # The concept's direction: mean pooled feature map of its images minus that of other images.
            pos = self._features(layer, pixels).mean(axis=(2, 3))
            neg_px, neg_ok = self._decode(task["neg_ids"], task["neg_uris"])
            d = pos.mean(0) - (self._features(layer, neg_px[neg_ok]).mean(axis=(2, 3)).mean(0)
                               if neg_ok.any() else 0.0)
            norm = float(np.linalg.norm(d))
            direction = torch.tensor(d / norm if norm > 0 else d, dtype=torch.float32, device=self.device)
            result["target"] = "direction" if use_dir.all() else "logit+direction"
            result["n_direction_images"] = int(use_dir.sum())
        t_decoded = time.perf_counter()
        sal_chunks, feat_chunks = [], []
        for start in range(0, len(pixels), s.batch_size):
            sl = slice(start, start + s.batch_size)
            mask = None
            if not use_dir[sl].all():
                mask = torch.zeros((len(pixels[sl]), max(self.n_outputs, 1)), device=self.device)
                for row, idx in enumerate(targets[sl]):
                    if idx:
                        mask[row, idx] = 1.0
            use = torch.tensor(use_dir[sl], device=self.device) if direction is not None else None
            target = concept_target(mask, direction if use_dir[sl].any() else None, use)
            sal, feats = saliency_maps(self.module, self.modules[layer], self._tensor(pixels[sl]), target,
                                       method=s.saliency, at=s.saliency_at, smoothgrad_samples=s.smoothgrad_samples,
                                       smoothgrad_sigma=s.smoothgrad_sigma, ig_steps=s.ig_steps,
                                       seed=task["seed"] + start)
            sal_chunks.append(sal)
            feat_chunks.append(feats)
        feats = np.concatenate(feat_chunks)
        grid = downsample(np.concatenate(sal_chunks), feats.shape[2:])
        t_saliency = time.perf_counter()

        eval_feats, eval_boxes = None, []
        if task["eval_ids"]:
            ev_px, ev_ok = self._decode(task["eval_ids"], task["eval_uris"])
            keep = []
            for i, (boxes, (w, h), good) in enumerate(zip(task["eval_boxes"], task["eval_wh"], ev_ok)):
                if not good:
                    continue
                if not (w > 0 and h > 0):
                    w, h = _image_size(task["eval_uris"][i])
                mapped = [map_box_to_input(b, w, h, self.size, self.data["resize"]) for b in boxes]
                mapped = [b for b in mapped if b[2] > b[0] and b[3] > b[1]]
                if mapped:
                    keep.append(i)
                    eval_boxes.append(np.asarray(mapped, dtype=np.float64))
            if keep:
                eval_feats = self._features(layer, ev_px[keep])
        analysis = analyse_concept(feats, grid, eval_features=eval_feats, eval_boxes=eval_boxes,
                                   image_size=(self.size, self.size), settings=s, seed=task["seed"])
        clf = analysis.classifier
        t_end = time.perf_counter()
        return {
            **result,
            "skipped": analysis.skipped,
            "n_images": analysis.n_images,
            "n_flat_saliency": analysis.n_flat,
            "n_pos_positions": analysis.n_pos_positions,
            "n_neg_positions": analysis.n_neg_positions,
            "grid": list(feats.shape[2:]),
            "order": analysis.order.tolist(),
            "weight": (clf.coef if clf is not None else np.full(feats.shape[1], np.nan)).tolist(),
            "shapley": analysis.shapley.tolist(),
            "ious": analysis.ious.tolist(),
            "train_accuracy": clf.train_accuracy if clf is not None else None,
            "val_accuracy": clf.val_accuracy if clf is not None else None,
            "sgd_n_iter": clf.n_iter if clf is not None else None,
            "seconds": t_end - t0,
            "phases_s": {"decode": round(t_decoded - t0, 4), "saliency": round(t_saliency - t_decoded, 4),
                         "classifier_and_localisation": round(t_end - t_saliency, 4)},
        }


def _image_size(uri: str) -> tuple[int, int]:
    """(width, height) of a stored image as the decoder sees it (EXIF orientation applied)."""
    import io

    from PIL import Image

    from neuronscan.data import read_blob

    with Image.open(io.BytesIO(read_blob(uri, {}))) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _tables(plan: SpatialPlan, results: list[dict]) -> tuple[pa.Table, pa.Table]:
    rank_rows, loc_rows = [], []
    for r in sorted(results, key=lambda r: (plan.layers.index(r["layer"]), r["concept"])):
        depth = int(r["depth"])
        if not r.get("skipped"):
            order = np.asarray(r["order"], dtype=np.int64)
            weight = np.asarray(r["weight"])
            shap = np.asarray(r["shapley"])
            rank_rows.append(pd.DataFrame({
                "concept": r["concept"], "depth": np.int16(depth), "layer": r["layer"],
                "rank": np.arange(len(order), dtype=np.int32), "unit": order.astype(np.int32),
                "weight": weight[order], "shapley": shap[order]}))
        ious = np.asarray(r.get("ious", []), dtype=np.float64)
        loc_rows.append({"concept": r["concept"], "depth": depth, "layer": r["layer"], "n_images": len(ious),
                         "mean_iou": float(ious.mean()) if len(ious) else float("nan"),
                         "frac_iou_50": float((ious >= 0.5).mean()) if len(ious) else float("nan")})
    ranks = (pd.concat(rank_rows, ignore_index=True) if rank_rows
             else CONCEPT_SPATIAL_SCHEMA.empty_table().to_pandas())
    loc = pd.DataFrame(loc_rows, columns=LOCALISATION_SCHEMA.names)
    return (pa.Table.from_pandas(ranks, schema=CONCEPT_SPATIAL_SCHEMA, preserve_index=False),
            pa.Table.from_pandas(loc.astype({"depth": "int16", "n_images": "int64"}), schema=LOCALISATION_SCHEMA,
                                 preserve_index=False))


def run_spatial(run_dir: str | RunDir, cfg=None, spatial: SpatialSection | dict | None = None, *,
                quiet: bool = False, lock_token: str | None = None, address: str | None = None) -> SpatialSummary:
    """Run the spatial (HINT) method on a probed run and write its tables into the run directory.

    Args:
        run_dir: a probed run (``images.parquet``, ``labels.parquet``; ``hierarchy.parquet`` when it has one).
        cfg: the run's `RunConfig` (or its dict); default: the config recorded in the run's ``run.json``.
        spatial: the method's settings (`SpatialSection` or a dict of its keys); default: the config's
            ``hierarchy.spatial`` section (its ``enabled`` switch is for ``neuronscan run`` and is not read here).
        lock_token: the token of a `RunLock` the caller holds on ``run_dir``; without one the stage takes the
            lock for its duration.
        address: the Ray cluster to join when no Ray is running; default: ``cfg.ray.address``.

    Returns:
        A `SpatialSummary`; ``summary.seconds_per_concept`` is the measured cost of one (concept, layer).
    """
    from neuronscan.config import RunConfig, config_from_dict

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if cfg is None:
        info = run.read_info() or {}
        if "config" not in info:
            from neuronscan.errors import InputError

            raise InputError(f"{run_dir}/run.json holds no config; pass cfg")
        cfg = info["config"]
    if not isinstance(cfg, RunConfig):
        cfg = config_from_dict(cfg)
    if spatial is None:
        spatial = cfg.hierarchy.spatial
    elif isinstance(spatial, dict):
        spatial = SpatialSection.model_validate(spatial)
    address = address or cfg.ray.address
    if lock_token is None:
        from neuronscan.io import RunLock

        with RunLock(run.root, command="neuronscan hierarchy --spatial") as lock:
            return _run_spatial(run, cfg, spatial, quiet=quiet, lock_token=lock.holder["token"], address=address)
    return _run_spatial(run, cfg, spatial, quiet=quiet, lock_token=lock_token, address=address)


def _run_spatial(run: RunDir, cfg, spatial: SpatialSection, *, quiet: bool, lock_token: str,
                 address: str | None) -> SpatialSummary:
    import ray
    from ray.util import ActorPool

    from neuronscan.io import check_holder
    from pipelines._ray import init_ray

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    plan = plan_spatial(str(run), cfg, spatial)
    say(f"spatial: {len(plan.concepts)} concepts x {len(plan.layers)} layer(s) ({', '.join(plan.layers)}), "
        f"saliency {spatial.saliency} at the {spatial.saliency_at}, boxes {plan.boxes_path or 'none'}")
    t_planned = time.perf_counter()
    if not ray.is_initialized():
        init_ray(address, num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory)
    t_ray = time.perf_counter()
    actor_cls = ray.remote(num_cpus=spatial.cpus_per_actor, num_gpus=spatial.num_gpus)(SpatialActor)
    n_actors = max(1, min(spatial.num_actors, len(plan.tasks)))
    kwargs = {"model": plan.model_kwargs, "image_size": plan.image_size, "num_gpus": spatial.num_gpus,
              "torch_threads": spatial.torch_threads, "settings": spatial.model_dump(mode="json"),
              "data": {"max_pixels": cfg.data.max_pixels, "resize": cfg.data.resize},
              "n_outputs": len(plan.outputs)}
    actors = [actor_cls.remote(**kwargs) for _ in range(n_actors)]
    results: list[dict] = []
    try:
        pool = ActorPool(actors)
        for res in pool.map_unordered(lambda a, t: a.analyse.remote(t), plan.tasks):
            results.append(res)
            if not quiet:
                msg = (f"skipped: {res['skipped']}" if res.get("skipped") else
                       f"{len(res.get('ious', []))} eval images, mean IoU "
                       f"{np.mean(res['ious']) if res.get('ious') else float('nan'):.3f}")
                say(f"  spatial {len(results)}/{len(plan.tasks)}: {res['concept']} @ {res['layer']}: "
                    f"{res.get('n_images', 0)} images, {msg}, {res['seconds']:.2f} s")
    finally:
        for a in actors:
            ray.kill(a)
    t_tasks = time.perf_counter()
    ranks, loc = _tables(plan, results)
    check_holder(str(run), lock_token)
    files = {"concept_spatial": run.path(CONCEPT_SPATIAL_FILE), "localisation": run.path(LOCALISATION_FILE),
             "summary": run.path(SPATIAL_SUMMARY_FILE)}
    write_parquet_atomic(ranks, files["concept_spatial"])
    write_parquet_atomic(loc, files["localisation"])
    task_seconds = [float(r["seconds"]) for r in results]
    seconds = time.perf_counter() - t0
    skipped = [r for r in results if r.get("skipped")]
    settings = spatial.model_dump(mode="json")
    timings = {"seconds": round(seconds, 3), "plan_s": round(t_planned - t0, 3),
               "ray_start_s": round(t_ray - t_planned, 3), "tasks_s": round(t_tasks - t_ray, 3),
               "task_seconds_mean": round(float(np.mean(task_seconds)), 4) if task_seconds else None,
               "task_seconds_sum": round(float(np.sum(task_seconds)), 3)}
    loc_frame = loc.to_pandas()
    localised = loc_frame[loc_frame["n_images"] > 0]
    counts = {
        "concepts": len(plan.concepts), "layers": list(plan.layers), "tasks": len(plan.tasks),
        "tasks_skipped": len(skipped), "tasks_localised": int(len(localised)),
        "eval_images": int(localised["n_images"].sum()), "concept_spatial_rows": ranks.num_rows,
        "mean_iou": round(float(localised["mean_iou"].mean()), 4) if len(localised) else None,
        "frac_iou_50": round(float(localised["frac_iou_50"].mean()), 4) if len(localised) else None,
        "boxes": plan.boxes_path, "actors": n_actors,
    }
    finished = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    write_json_atomic({
        "settings": settings,
        "layers": plan.layers, "n_concepts": len(plan.concepts), "n_tasks": len(plan.tasks),
        "boxes": plan.boxes_path, "output_concepts": len(plan.outputs), "actors": n_actors,
        "timings": timings,
        "finished": finished,
        "tasks": [{k: v for k, v in r.items() if k not in ("order", "weight", "shapley", "ious")}
                  for r in sorted(results, key=lambda r: (r["layer"], r["concept"]))],
    }, files["summary"])
    # run.json, as the hierarchy stage records itself: counts, seconds, and the settings it ran with (the rest of
    # config.hierarchy as recorded, since dict values merge only one level deep).
    # A directory without run.json (a probe run from Python) gets none.
    info = run.read_info()
    if info:
        recorded = info.get("config")
        hierarchy_cfg = recorded.get("hierarchy") if isinstance(recorded, dict) else None
        if not isinstance(hierarchy_cfg, dict):
            hierarchy_cfg = cfg.hierarchy.model_dump(mode="json")
        run.update_info({
            "spatial": {**counts, "finished": finished},
            "timings": {"spatial_s": round(seconds, 3),
                        "spatial_phases": {k: v for k, v in timings.items() if k != "seconds"}},
            "config": {"hierarchy": {**hierarchy_cfg, "spatial": settings}},
        })
    say(f"spatial: {len(results)} tasks ({len(skipped)} skipped) in {seconds:.1f} s; "
        f"{np.mean(task_seconds) if task_seconds else float('nan'):.2f} s per (concept, layer) on the actors")
    return SpatialSummary(str(run), plan.layers, len(plan.concepts), len(plan.tasks), len(skipped), seconds,
                          task_seconds, files, loc_frame, counts, timings)
