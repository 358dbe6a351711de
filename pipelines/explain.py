"""Explain stage: train explainers of a layer — sparse autoencoders and Zhang et al.'s part explainer — with Ray
Train, then write their components' activations into the run as a derived layer that the score stage and the
report treat like any probed layer.

Per explainer (an `ExplainerSection` of the run config's ``explain`` section), `explain_run`:

1. **plans** in the driver, with no Ray: the derived layer's name (``conv4:mean@sae``; a part explainer's
   ``conv3:max@part``), its folder ``RUN/explain/<layer>@<name>/``, the training data — for ``sae`` the committed
   activation parts of the layer (the probe's per-image statistic), for ``part`` the run's ok images, on which the
   workers run the model again (built as the probe builds it) to get the layer's feature maps — the landmarks
   (object box centres, for location stability) and the model outputs each image is labelled with (accuracy);
2. unless the explainer is already complete with the same settings, **trains** on a ``TorchTrainer``
   (``ScalingConfig(num_workers, use_gpu, resources_per_worker={"CPU": cpus_per_worker})``; data-parallel, the
   model wrapped by ``ray.train.torch.prepare_model``). Every epoch's image order comes from ``(seed, epoch)``;
   after each epoch worker 0 saves ``checkpoints/epoch-NNNN.pt`` (``torch.save`` of the explainer's and Adam's
   state dicts and the loss history; read back with ``torch.load(weights_only=True)``), so a killed run, or a
   worker group Ray Train restarts, resumes from the last epoch with the weights an uninterrupted run would have;
3. **exports**, in the same workers: the components' activations on every ok image as
   ``activations/<derived>/part-<id>.parquet`` (the activation contract) with their top-M images
   (``topk/<derived>.parquet``), each part committed by ``derived/commits/<id>.parquet`` written after it (a part
   counts only once committed: `neuronscan.io.RunDir.committed_parts`); the fidelity, sparsity and stability sums
   are added over the workers, and worker 0 writes ``metrics.json``, ``README.md``, ``explainer.pt`` (final
   weights) and ``state.json``.

`explain_interpretability` (called by `pipelines.audit.score_run` after every scoring of a run with explainers)
adds to each ``metrics.json`` how interpretable the components are against the raw units, from ``neurons.parquet``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from neuronscan.errors import InputError, ModelError
from neuronscan.io import (
    RunDir,
    get_fs,
    is_remote,
    join,
    read_json,
    read_parquet,
    read_part,
    unit_columns,
    write_bytes_atomic,
    write_json_atomic,
    write_parquet_atomic,
)
from neuronscan.io._rundir import DERIVED_COMMIT_SCHEMA

__all__ = ["ExplainPlan", "ExplainSummary", "explain_interpretability", "explain_run", "plan_explainer",
           "train_local", "derived_layer_name"]

log = logging.getLogger("neuronscan")

METRICS_FILE, STATE_FILE, README_FILE, WEIGHTS_FILE = "metrics.json", "state.json", "README.md", "explainer.pt"
_KEEP_CHECKPOINTS = 2
RELATIVE_L0_FRACTION = 0.1
"""``mean_l0_relative`` counts a component on an image when it is at least this fraction of its largest value."""
# Settings that decide how the work is spread or what is measured, not the weights: a resume may change them.
_NOT_FINGERPRINTED = ("epochs", "num_workers", "use_gpu", "cpus_per_worker", "torch_threads", "max_failures",
                      "accuracy", "stability_min_images")


def derived_layer_name(settings) -> str:
    """``<layer>@<name>`` (sae), ``<layer>:<reduce>@<name>`` (part: the statistic of each component's map)."""
    base = settings.layer if settings.family == "sae" else f"{settings.layer}:{settings.part.reduce}"
    return f"{base}@{settings.resolved_name}"


@dataclass
class ExplainPlan:
    """Everything a training worker needs (plain data: it travels in ``train_loop_config``)."""

    settings: dict
    family: str
    source_layer: str
    derived: str
    compare_layer: str | None
    run_dir: str
    folder: str
    n_units: int
    width: int
    ordinary: int
    map_shape: list[int] | None
    files: list[str]
    units: list[str]
    ids: list[int]
    uris: list[str]
    train_ids: list[int]
    landmarks: list[list[float]]
    label_outputs: list[list[int]]
    groups: dict[str, list[int]]
    model_kwargs: dict
    image_size: int
    data: dict
    topk: int
    part_rows: int
    fingerprint: str
    lock_token: str | None = None


@dataclass
class ExplainSummary:
    """One explainer's outcome: its derived layer, metrics and what the stage did (trained, resumed, skipped)."""

    derived: str
    folder: str
    metrics: dict
    action: str
    seconds: float
    epochs_run: int = 0
    extra: dict = field(default_factory=dict)


# -- planning (driver) -------------------------------------------------------------------------------------------


def _model_kwargs(cfg) -> dict:
    m = cfg.model
    return dict(name=m.name, source=m.source, weights=m.weights, checkpoint=m.checkpoint, mean=m.mean, std=m.std)


def _output_groups(spec) -> tuple[list[str], dict[str, list[int]]]:
    """The model's output concepts and the groups accuracy is counted over (ShapesNet: its four heads)."""
    if getattr(spec, "name", "") == "shapesnet" and getattr(spec, "source", "") == "builtin":
        from neuronscan.demo.model import HEAD_CONCEPTS, HEAD_SLICES

        return list(HEAD_CONCEPTS), {k: [s.start, s.stop] for k, s in HEAD_SLICES.items()}
    if getattr(spec, "source", "") == "torchvision" and spec.weights not in (None, "random"):
        try:
            import torchvision

            cats = list(torchvision.models.get_weight(str(spec.weights)).meta.get("categories") or [])
        except Exception:  # noqa: BLE001 - unknown weights: no output concepts
            cats = []
        if cats:
            return cats, {"all": [0, len(cats)]}
    return [], {}


def _landmarks(cfg, ids: np.ndarray, image_size: int) -> np.ndarray:
    """Per image the centre (y, x) of its largest ground-truth box, as fractions of the model input (NaN without
    one); the shapes world's ``boxes.parquet``, mapped as the decoder maps the image."""
    out = np.full((len(ids), 2), np.nan)
    sw = cfg.data.shapes_world
    path = os.path.join(sw.root, "boxes.parquet") if sw is not None else None
    if not path or not os.path.isfile(path):
        return out
    from neuronscan.hierarchy._spatial import map_box_to_input
    from pipelines.hierarchy_spatial import read_boxes

    boxes = read_boxes(path)
    boxes = boxes[boxes["image_id"].isin(ids)].copy()
    if not len(boxes):
        return out
    boxes["area"] = (boxes["x1"] - boxes["x0"]) * (boxes["y1"] - boxes["y0"])
    boxes = boxes.sort_values(["image_id", "area"], ascending=[True, False]).drop_duplicates("image_id")
    pos = {int(i): k for k, i in enumerate(ids)}
    for r in boxes.itertuples(index=False):
        w, h = r.width, r.height
        if not (w > 0 and h > 0):
            w = h = image_size
        x0, y0, x1, y1 = map_box_to_input((r.x0, r.y0, r.x1, r.y1), int(w), int(h), image_size, cfg.data.resize)
        if x1 > x0 and y1 > y0:
            out[pos[int(r.image_id)]] = [(y0 + y1) / 2 / image_size, (x0 + x1) / 2 / image_size]
    return out


def _fingerprint(settings: dict, extra: dict) -> str:
    kept = {k: v for k, v in settings.items() if k not in _NOT_FINGERPRINTED}
    blob = json.dumps({"settings": kept, **extra}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def plan_explainer(cfg, run: RunDir, settings, *, lock_token: str | None = None) -> ExplainPlan:
    """Resolve one explainer on a probed run; reads the run and builds the model, writes nothing, starts no Ray.

    Raises:
        InputError: the run is not probed, or the layer was not probed (sae).
        ModelError: the layer is not a module of the model, or (part) not a conv feature map.
    """
    from neuronscan.models import build_model, list_layers

    if not run.exists(run.images):
        raise InputError(f"{run.root} has no images.parquet: probe the run first (neuronscan probe CONFIG)")
    images = read_parquet(run.images).to_pandas()
    ok = images[images["status"] == "ok"].sort_values("image_id")
    if not len(ok):
        raise InputError(f"{run.root}: no ok image to explain")
    model_kwargs = _model_kwargs(cfg)
    spec = build_model(**model_kwargs)
    if cfg.data.image_size:
        spec.input_size = cfg.data.image_size
    infos = {info.name: info for info in list_layers(spec)}
    s = settings
    derived = derived_layer_name(s)
    files: list[str] = []
    units: list[str] = []
    map_shape = None
    if s.family == "sae":
        probed = {lp.layer: lp for lp in run.layer_parts() if "@" not in lp.layer}
        if s.layer not in probed:
            raise InputError(f"explain.layer {s.layer!r} was not probed in {run.root}; probed layers: "
                             f"{', '.join(probed) or 'none'} (an sae explains a layer statistic such as conv4:mean)")
        files, units = probed[s.layer].files, probed[s.layer].units
        n_units = len(units)
        module = s.layer.partition(":")[0]
        if module in infos and len(infos[module].shape) in (1, 3):
            map_shape = [int(x) for x in infos[module].shape]
        ids = read_ids(files)
        compare = s.layer
    else:
        if s.layer not in infos:
            raise ModelError(f"explain.layer {s.layer!r} is not a module of {cfg.model.name}; a part explainer "
                             "takes a conv module's name (e.g. conv3), without a statistic")
        shape = infos[s.layer].shape
        if len(shape) != 3:
            raise ModelError(f"explain.layer {s.layer!r} outputs {tuple(shape)}, not a conv feature map (C, h, w)")
        map_shape = [int(x) for x in shape]
        n_units = map_shape[0]
        ids = ok["image_id"].to_numpy(np.int64)
        try:
            probed = {lp.layer for lp in run.layer_parts()}
        except InputError:  # nothing probed as parts (the part family needs only the images)
            probed = set()
        compare = next((c for c in (f"{s.layer}:{s.part.reduce}", f"{s.layer}:mean", f"{s.layer}:max")
                        if c in probed), None)
    ok = ok.set_index("image_id").reindex(ids)
    uris = ok["uri"].fillna("").astype(str).tolist()
    width = max(1, int(round(s.width * n_units)))
    ordinary = int(round(s.part.ordinary_width * n_units)) if s.family == "part" else 0
    train = np.asarray(ids, dtype=np.int64)
    if s.max_images is not None and len(train) > s.max_images:
        rng = np.random.default_rng([s.seed, 0x5EED])
        train = np.sort(rng.choice(train, size=s.max_images, replace=False))
    outputs, groups = _output_groups(spec)
    label_outputs: list[list[int]] = [[] for _ in ids]
    if outputs and s.accuracy:
        index = {c: k for k, c in enumerate(outputs)}
        labels = read_parquet(run.labels).to_pandas()
        pos = {int(i): k for k, i in enumerate(ids)}
        for image_id, concept in zip(labels["image_id"].astype(np.int64), labels["concept"].astype(str)):
            k, j = pos.get(int(image_id)), index.get(concept)
            if k is not None and j is not None:
                label_outputs[k].append(j)
    else:
        groups = {}
    landmarks = _landmarks(cfg, np.asarray(ids), int(spec.input_size))
    settings_dict = s.model_dump(mode="json")
    info = run.read_info() or {}
    fp = _fingerprint(settings_dict, {
        "family": s.family, "derived": derived, "model": model_kwargs,
        "state": (info.get("fingerprint") or {}).get("model.state_sha256"),
        "train_ids": hashlib.sha256(np.asarray(train, dtype=np.int64).tobytes()).hexdigest(),
        "files": sorted(f.rsplit("/", 1)[-1] for f in files),
    })
    # Ray Train runs its workers in a folder of its own: every local path they get is absolute.
    root = RunDir(run.root if run.is_remote else os.path.abspath(run.root))
    files = [f if is_remote(f) else os.path.abspath(f) for f in files]
    uris = [u if not u or "://" in u or os.path.isabs(u) else os.path.abspath(u) for u in uris]
    return ExplainPlan(
        settings=settings_dict, family=s.family, source_layer=s.layer, derived=derived, compare_layer=compare,
        run_dir=root.root, folder=root.explain(derived), n_units=n_units, width=width, ordinary=ordinary,
        map_shape=map_shape, files=list(files), units=list(units), ids=[int(i) for i in ids], uris=uris,
        train_ids=[int(i) for i in train], landmarks=landmarks.tolist(), label_outputs=label_outputs,
        groups=groups, model_kwargs=model_kwargs, image_size=int(spec.input_size),
        data={"max_pixels": cfg.data.max_pixels, "resize": cfg.data.resize}, topk=int(cfg.probe.topk),
        part_rows=int(min(cfg.probe.part_rows, 32768)), fingerprint=fp, lock_token=lock_token,
    )


def read_ids(files: list[str]) -> np.ndarray:
    """The image ids of a layer's part files, in file order (first row per image kept)."""
    parts = [read_part(f, ["image_id"]).column("image_id").to_numpy().astype(np.int64) for f in files]
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


# -- the stage (driver) ------------------------------------------------------------------------------------------


def _read_state(folder: str) -> dict | None:
    uri = join(folder, STATE_FILE)
    fs, path = get_fs(uri)
    if not fs.exists(path):
        return None
    try:
        state = read_json(uri)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _checkpoints(folder: str) -> list[tuple[int, str]]:
    """``(epoch, uri)`` of the saved checkpoints, oldest first."""
    uri = join(folder, "checkpoints")
    fs, path = get_fs(uri)
    if not fs.exists(path):
        return []
    out = []
    for p in fs.ls(path, detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("epoch-") and name.endswith(".pt"):
            try:
                out.append((int(name[6:-3]), join(uri, name)))
            except ValueError:
                continue
    return sorted(out)


def _clear_folder(folder: str) -> None:
    fs, path = get_fs(folder)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def explain_run(cfg, run: RunDir | str, *, quiet: bool = False, lock_token: str | None = None) -> list[ExplainSummary]:
    """Train (or resume) every explainer of ``cfg.explain`` on a probed run and write its derived layer.

    Whatever ``explain.enabled`` says: the caller decides that the stage runs. An explainer whose ``state.json``
    records the same settings, every epoch and a finished export (with its derived parts committed) is skipped.

    Raises:
        InputError: no explainer configured; the run is not probed; a layer is unknown.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    explainers = cfg.explain.explainers()
    if not explainers:
        raise InputError("the config's explain section names no explainer: set explain.layer (and explain.family), "
                         "or list explainers under explain.also")
    t0 = time.perf_counter()
    # Plan every explainer first (a typo in the second costs no training of the first), then train those that
    # share Ray Train's scaling settings in one fit: one worker group, one start-up.
    plans = [(plan_explainer(cfg, run, e, lock_token=lock_token), e) for e in explainers]
    prepared = [(plan, e, _prepare_one(plan, e, say)) for plan, e in plans]
    groups: dict[tuple, list] = {}
    for plan, e, (action, _resumed) in prepared:
        if action != "skipped":
            groups.setdefault((e.num_workers, e.use_gpu, e.cpus_per_worker, e.max_failures), []).append((plan, e))
    seconds: dict[str, float] = {}
    for members in groups.values():
        t = time.perf_counter()
        _fit([plan for plan, _e in members], members[0][1], quiet=quiet)
        for plan, _e in members:
            seconds[plan.derived] = (time.perf_counter() - t) / len(members)
    summaries = []
    for plan, e, (action, resumed) in prepared:
        metrics = read_json(join(plan.folder, METRICS_FILE))
        if action != "skipped":
            fid = metrics["fidelity"]
            say(f"explain: {plan.derived}: explained variance {fid['explained_variance']:.3f}, mean L0 "
                f"{metrics['sparsity']['mean_l0']:.2f}, dead {metrics['dead']['count']:,} of "
                f"{metrics['components']:,}; {metrics['training']['seconds']:.1f} s of epochs")
        summaries.append(ExplainSummary(plan.derived, plan.folder, metrics, action, seconds.get(plan.derived, 0.0),
                                        epochs_run=0 if action == "skipped" else e.epochs - resumed))
    run.update_info({
        "explain": {"layers": {x.derived: _brief(x.metrics) for x in summaries}, "finished": _now()},
        "timings": {"explain_s": round(time.perf_counter() - t0, 3)},
        "config": {"explain": cfg.explain.model_dump(mode="json")},
    })
    return summaries


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _brief(metrics: dict) -> dict:
    fid = metrics.get("fidelity", {})
    acc = fid.get("accuracy") or {}
    out = {
        "family": metrics.get("family"),
        "components": metrics.get("components"),
        "explained_variance": fid.get("explained_variance"),
        "accuracy_reconstructed": acc.get("reconstructed"),
        "accuracy_original": acc.get("original"),
        "mean_l0": metrics.get("sparsity", {}).get("mean_l0"),
        "dead": metrics.get("dead", {}).get("count"),
    }
    interp = metrics.get("interpretability") or {}
    if interp.get("components"):
        out["frac_significant"] = interp["components"].get("frac_significant")
        out["frac_significant_raw"] = (interp.get("raw_units") or {}).get("frac_significant")
    return out


def _prepare_one(plan: ExplainPlan, settings, say) -> tuple[str, int]:
    """Decide what one explainer needs: ``("skipped", 0)`` when complete with these settings, else
    ``("trained" | "resumed", epochs already done)`` after clearing whatever other settings left behind."""
    run = RunDir(plan.run_dir)
    state = _read_state(plan.folder)
    committed = run.derived_committed_parts(plan.derived)
    if (state and state.get("fingerprint") == plan.fingerprint and state.get("epochs") == settings.epochs
            and state.get("exported") and committed and run.exists(join(plan.folder, METRICS_FILE))):
        say(f"explain: {plan.derived} is complete ({settings.epochs} epochs, {len(committed)} committed part(s)); "
            "skipped")
        return "skipped", 0
    ckpts = _checkpoints(plan.folder)
    if state is None or state.get("fingerprint") != plan.fingerprint:
        # Checkpoints of other settings (or of unknown ones) must not be resumed, and the derived layer and
        # metrics of other settings must not stay in the run beside them: start again.
        if ckpts and _peek_fingerprint(ckpts[-1][1]) != plan.fingerprint:
            say(f"explain: {plan.derived}: the checkpoints in {plan.folder} were trained with other settings; "
                "training again from scratch")
            _clear_folder(join(plan.folder, "checkpoints"))
            ckpts = []
        if state is not None or committed:
            run.remove_derived(plan.derived)
            for name in (METRICS_FILE, README_FILE, WEIGHTS_FILE):
                fs, path = get_fs(join(plan.folder, name))
                if fs.exists(path):
                    fs.rm(path)
    resumed = ckpts[-1][0] if ckpts else 0
    write_json_atomic({"fingerprint": plan.fingerprint, "derived": plan.derived, "epochs": settings.epochs,
                       "exported": False, "settings": plan.settings, "started": _now()},
                      join(plan.folder, STATE_FILE))
    say(f"explain: {plan.derived} ({plan.family}, {plan.width:,} components of {plan.n_units:,} units) on "
        f"{len(plan.train_ids):,} images, {settings.epochs} epochs"
        + (f", resuming after epoch {resumed}" if resumed else "")
        + f"; {settings.num_workers} Ray Train worker(s), {'GPU' if settings.use_gpu else 'CPU'}")
    return ("resumed" if resumed else "trained"), min(resumed, settings.epochs)


def _peek_fingerprint(uri: str) -> str | None:
    try:
        return _load_checkpoint(uri).get("fingerprint")
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is one to replace
        return None


def _fit(plans: list[ExplainPlan], settings, *, quiet: bool = False) -> None:
    """One ``TorchTrainer.fit`` of `_train_worker` over ``plans`` (each trained, then exported, in turn), with the
    scaling settings of ``settings`` (the same for every plan)."""
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchTrainer

    first = plans[0]
    storage = join(first.folder, "ray_train")
    if not is_remote(storage):
        storage = os.path.abspath(storage)
    name = f"explain-{_dt.datetime.now(_dt.UTC).strftime('%Y%m%dT%H%M%S%f')}"
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"plans": [asdict(p) for p in plans], "quiet": quiet},
        scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=settings.use_gpu,
                                     resources_per_worker={"CPU": settings.cpus_per_worker}),
        run_config=TrainRunConfig(name=name, storage_path=storage,
                                  failure_config=FailureConfig(max_failures=settings.max_failures)),
    )
    names = ", ".join(p.derived for p in plans)
    try:
        trainer.fit()
    except Exception as exc:
        cause = exc
        while getattr(cause, "__cause__", None) is not None and not isinstance(cause, (InputError, ModelError)):
            cause = cause.__cause__
        if isinstance(cause, (InputError, ModelError)):
            raise cause from exc
        raise RuntimeError(f"training explainer(s) {names} failed: {type(exc).__name__}: {exc}; rerun to resume "
                           "from the last checkpoint (RUN/explain/<layer>@<name>/checkpoints)") from exc
    finally:
        if not is_remote(storage):
            _clear_folder(storage)


def train_local(plan: ExplainPlan | dict, *, stop_after: int | None = None) -> None:
    """Run the training worker in this process, without Ray (one worker, CPU or the first GPU): the same code and
    files as a one-worker ``TorchTrainer``. ``stop_after``: return after that many epochs (no export), as a
    killed run would — the tests' way to interrupt a run."""
    config = {"plans": [asdict(plan) if isinstance(plan, ExplainPlan) else dict(plan)], "local": True, "quiet": True}
    if stop_after is not None:
        config["stop_after"] = int(stop_after)
    _train_worker(config)


# -- the worker --------------------------------------------------------------------------------------------------


class _Session:
    """Rank, device and collectives of one training worker: Ray Train's, or a single local process."""

    def __init__(self, local: bool, use_gpu: bool):
        import torch

        self.local = local
        if local:
            self.rank, self.world = 0, 1
            self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        else:
            import ray.train
            import ray.train.torch

            ctx = ray.train.get_context()
            self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
            self.device = ray.train.torch.get_device()

    def wrap(self, model):
        if self.local:
            return model.to(self.device)
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over the workers (float64)."""
        values = np.asarray(values, dtype=np.float64)
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.as_tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.cpu().numpy()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def report(self, metrics: dict) -> None:
        if not self.local:
            import ray.train

            ray.train.report(metrics)


def _load_checkpoint(uri: str) -> dict:
    import torch

    fs, path = get_fs(uri)
    with fs.open(path, "rb") as fh:
        return torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)


def _save_torch(obj, uri: str) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(uri, buf.getvalue())


def _train_worker(config: dict) -> None:
    """Ray Train's ``train_loop_per_worker``: per plan, train from its last checkpoint, then export its derived
    layer."""
    import torch

    if not config.get("local"):
        # Ray Train logs every report at INFO (one line per epoch and explainer): the driver prints the outcome.
        logging.getLogger("ray.train").setLevel(logging.WARNING)
    for raw in config["plans"]:
        plan = ExplainPlan(**raw)
        s = plan.settings
        sess = _Session(bool(config.get("local")), bool(s["use_gpu"]))
        threads = s.get("torch_threads") or max(1, int(math.floor(s["cpus_per_worker"])))
        torch.set_num_threads(threads)
        job = (_SaeJob if plan.family == "sae" else _PartJob)(plan, sess, quiet=bool(config.get("quiet")))
        if job.train(stop_after=config.get("stop_after")):
            job.export()


class _Job:
    """The training and export of one explainer in one worker; `_SaeJob` and `_PartJob` fill in the family."""

    def __init__(self, plan: ExplainPlan, sess: _Session, *, quiet: bool = False):
        self.plan, self.sess, self.s = plan, sess, plan.settings
        self.run = RunDir(plan.run_dir)

    # family hooks
    def prepare(self) -> None: ...

    def build(self): ...

    def step(self, rows: np.ndarray, n_global: int) -> dict[str, float]: ...

    def export(self) -> None: ...

    def _check_lock(self) -> None:
        if self.plan.lock_token is not None:
            from neuronscan.io import check_holder

            check_holder(self.plan.run_dir, self.plan.lock_token)

    def train(self, stop_after: int | None = None) -> bool:
        """Epochs from the last checkpoint to ``epochs``; False when stopped early by ``stop_after``."""
        import torch

        self.prepare()
        model = self.build()
        opt = torch.optim.Adam(model.parameters(), lr=self.s["lr"])
        start, history = 0, []
        ckpts = _checkpoints(self.plan.folder)
        if ckpts:
            state = _load_checkpoint(ckpts[-1][1])
            if state.get("fingerprint") == self.plan.fingerprint:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                start, history = int(state["epoch"]), list(state.get("history", []))
        self.raw = model
        self.model = self.sess.wrap(model)
        _opt_to(opt, self.sess.device)
        self.opt = opt
        epochs = int(self.s["epochs"])
        n = len(self.train_rows)
        batch = int(self.s["batch_size"])
        ran = 0
        for epoch in range(start, epochs):
            t = time.perf_counter()
            order = self.train_rows[np.random.default_rng([int(self.s["seed"]), epoch]).permutation(n)]
            sums: dict[str, float] = {}
            steps = 0
            for b in range(0, n, batch):
                rows = order[b : b + batch]
                if len(rows) < self.sess.world:
                    continue  # every worker needs a row: DDP steps together
                parts = self.step(rows[self.sess.rank :: self.sess.world], len(rows))
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                steps += 1
            keys = sorted(sums)
            total = self.sess.all_sum(np.asarray([sums[k] for k in keys] + [steps], dtype=np.float64))
            record = {k: float(total[i] / max(total[-1], 1)) for i, k in enumerate(keys)}
            record.update({"epoch": epoch + 1, "seconds": round(time.perf_counter() - t, 3)})
            history.append(record)
            if self.sess.rank == 0:
                self._check_lock()
                self._save(epoch + 1, model, opt, history)
            self.sess.report({k: v for k, v in record.items() if isinstance(v, (int, float))})
            ran += 1
            if stop_after is not None and ran >= stop_after and epoch + 1 < epochs:
                return False
        self.history = history
        self.sess.barrier()
        return True

    def _save(self, epoch: int, model, opt, history: list) -> None:
        folder = join(self.plan.folder, "checkpoints")
        _save_torch({"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "history": history, "fingerprint": self.plan.fingerprint}, join(folder, f"epoch-{epoch:04d}.pt"))
        for _e, uri in _checkpoints(self.plan.folder)[:-_KEEP_CHECKPOINTS]:
            fs, path = get_fs(uri)
            fs.rm(path)

    # -- export helpers --------------------------------------------------------------------------------------
    def _reset_derived(self) -> None:
        if self.sess.rank == 0:
            self._check_lock()
            self.run.remove_derived(self.plan.derived)
        self.sess.barrier()

    def _write_part(self, ids: np.ndarray, values: np.ndarray, loc: np.ndarray) -> None:
        """One part of the derived layer: activations, top-M entries, then (last) its commit record."""
        import uuid

        from pipelines.probe import _activation_table, top_entries

        part = uuid.uuid4().hex
        values = np.ascontiguousarray(values, dtype=np.float32)
        self._check_lock()
        write_parquet_atomic(_activation_table(ids, values), self.run.activation_part(self.plan.derived, part),
                             encoded_columns=["image_id"])
        write_parquet_atomic(top_entries(ids, values, loc, self.plan.topk),
                             self.run.topk_part(self.plan.derived, part))
        self._check_lock()
        commit = pa.Table.from_arrays([pa.array([self.plan.derived] * len(ids), pa.string()),
                                       pa.array(ids, pa.int64())], schema=DERIVED_COMMIT_SCHEMA)
        write_parquet_atomic(commit, self.run.derived_commit(part))

    def _finish(self, metrics: dict, weights: dict) -> None:
        """Worker 0, after the export: merge the top-M parts, write the weights, metrics, README and state."""
        from pipelines.probe import _merge_topk

        if self.sess.rank != 0:
            return
        self._check_lock()
        _merge_topk(self.plan.run_dir, self.plan.derived, self.plan.topk)
        metrics["sparsity"].update(self._relative_l0())
        _save_torch(weights, join(self.plan.folder, WEIGHTS_FILE))
        old = _read_metrics(self.plan.folder)
        if old and old.get("fingerprint") == self.plan.fingerprint and old.get("interpretability"):
            metrics["interpretability"] = old["interpretability"]  # the scoring it had stays until the next
        write_json_atomic(metrics, join(self.plan.folder, METRICS_FILE))
        write_readme(self.plan.folder, metrics)
        write_json_atomic({"fingerprint": self.plan.fingerprint, "derived": self.plan.derived,
                           "epochs": int(self.s["epochs"]), "exported": True, "settings": self.plan.settings,
                           "finished": _now()}, join(self.plan.folder, STATE_FILE))

    def _relative_l0(self, fraction: float = RELATIVE_L0_FRACTION) -> dict:
        """Components per image at or above ``fraction`` of their own largest value over the images (a ReLU map
        is rarely 0 everywhere, so the part family's plain L0 is nearly its width): read back from the parts."""
        files = self.run.committed_layer_files(self.plan.derived)
        units = unit_columns(self.plan.width)
        _ids, z = _read_matrix(files, units)
        top = z.max(0) if len(z) else np.zeros(self.plan.width)
        on = (z >= fraction * top) & (top > 0)
        return {"relative_fraction": fraction, "mean_l0_relative": float(on.sum(1).mean()) if len(z) else 0.0}

    def _base_metrics(self) -> dict:
        p = self.plan
        return {
            "derived_layer": p.derived, "family": p.family, "layer": p.source_layer, "compare_layer": p.compare_layer,
            "units": p.n_units, "components": p.width, "images": len(p.ids), "train_images": len(p.train_ids),
            "fingerprint": p.fingerprint, "settings": p.settings,
            "training": {"epochs": int(self.s["epochs"]), "workers": self.sess.world, "device": str(self.sess.device),
                         "seconds": round(sum(h.get("seconds", 0.0) for h in self.history), 3),
                         "history": self.history},
            "finished": _now(),
        }

    def _iter_images(self, ids: list[int], uris: list[str], chunk: int):
        """Decoded images ``(ids, uint8 pixels)`` of this worker's share, ``chunk`` at a time; failures skipped."""
        from pipelines.probe import decode_images

        for start in range(0, len(ids), chunk):
            sl = slice(start, start + chunk)
            out = decode_images({"image_id": np.asarray(ids[sl], dtype=np.int64),
                                 "uri": np.asarray(uris[sl], dtype=object)},
                                size=self.plan.image_size, max_pixels=self.plan.data["max_pixels"],
                                resize=self.plan.data["resize"])
            good = np.asarray(out["ok"], dtype=bool)
            yield np.asarray(out["image_id"])[good], np.asarray(out["pixels"])[good], np.flatnonzero(good) + start


def _opt_to(opt, device) -> None:
    for state in opt.state.values():
        for k, v in state.items():
            if hasattr(v, "to") and k != "step":
                state[k] = v.to(device)


def _read_metrics(folder: str) -> dict | None:
    uri = join(folder, METRICS_FILE)
    fs, path = get_fs(uri)
    if not fs.exists(path):
        return None
    try:
        return read_json(uri)
    except (OSError, ValueError):
        return None


class _ModelRunner:
    """The audited model on a worker's device, frozen, with a tap on one module (read or replace its output)."""

    def __init__(self, plan: ExplainPlan, device, module: str):
        import torch

        from neuronscan.explain import LayerTap
        from neuronscan.models import build_model

        spec = build_model(**plan.model_kwargs)
        self.torch = torch
        self.device = device
        self.module = spec.module.to(device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255.0
        self.tap = LayerTap(self.module, module)

    def tensor(self, pixels: np.ndarray):
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device).permute(0, 3, 1, 2).float()
        return (x - self.mean) / self.std

    def outputs(self, x):
        out = self.module(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    def run(self, x, replace=None):
        """The model's outputs on ``x``, with the tapped module's output replaced by ``replace(out)`` when given;
        ``self.tap.captured`` holds that module's own output."""
        self.tap.replace = replace
        try:
            return self.outputs(x).flatten(1)
        finally:
            self.tap.replace = None


class _SaeJob(_Job):
    """A sparse autoencoder on the committed parts of a probed layer statistic."""

    def prepare(self) -> None:
        import torch

        from neuronscan.explain import fit_normaliser

        p = self.plan
        ids, x = _read_matrix(p.files, p.units)
        self.all_ids = ids
        pos = {int(i): k for k, i in enumerate(ids)}
        rows = np.asarray([pos[i] for i in p.train_ids if i in pos], dtype=np.int64)
        self.train_rows = rows
        self.x = torch.from_numpy(x).to(self.sess.device)
        self.norm = fit_normaliser(torch.from_numpy(x[rows]))
        sp = self.s["sparsity"]
        self.aux_k = sp["aux_k"] or 2 * sp["k"]
        self.dead_after = sp["dead_after"] or len(rows)

    def build(self):
        from neuronscan.explain import SparseAutoencoder

        sp = self.s["sparsity"]
        mean, scale = self.norm
        return SparseAutoencoder(self.plan.n_units, self.plan.width, activation=sp["activation"], k=sp["k"],
                                 threshold=sp["threshold"], bandwidth=sp["bandwidth"], mean=mean, scale=scale,
                                 seed=int(self.s["seed"]))

    def step(self, rows: np.ndarray, n_global: int) -> dict[str, float]:
        import torch

        from neuronscan.explain import normalise_decoder, remove_parallel_grad, sae_loss

        sp = self.s["sparsity"]
        x = self.x[torch.as_tensor(rows, device=self.sess.device)]
        out = self.model(x)
        parts = sae_loss(self.raw, out, aux_k=self.aux_k, aux_coefficient=sp["aux_coefficient"],
                         dead_after=self.dead_after, l0_coefficient=sp["l0_coefficient"])
        self.opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        remove_parallel_grad(self.raw)
        self.opt.step()
        normalise_decoder(self.raw)
        fired = self.sess.all_sum((out["z"] > 0).any(0).detach().cpu().numpy().astype(np.float64)) > 0
        with torch.no_grad():
            self.raw.since_fired += int(n_global)
            self.raw.since_fired[torch.as_tensor(fired, device=self.raw.since_fired.device)] = 0
        return {k: float(v.detach()) for k, v in parts.items()}

    def export(self) -> None:
        import torch

        from neuronscan.explain import AccuracyCounts, VarianceSums, head_groups

        p, sess, sae = self.plan, self.sess, self.raw
        sae.eval()
        self._reset_derived()
        ev = VarianceSums(p.n_units)
        fires = np.zeros(p.width)
        l0 = np.zeros(2)  # Σ active components, images
        for f in p.files[sess.rank :: sess.world]:
            ids, x = _read_matrix([f], p.units, dedupe=False)
            with torch.no_grad():
                xt = torch.from_numpy(x).to(sess.device)
                z = torch.cat([sae.encode(xt[i : i + 4096]) for i in range(0, len(xt), 4096)]) if len(xt) else \
                    torch.zeros((0, p.width), device=sess.device)
                x_hat = sae.decode(z)
            z_np = z.cpu().numpy()
            ev.add(x, x_hat.cpu().numpy())
            active = z_np > 0
            fires += active.sum(0)
            l0 += [active.sum(), len(z_np)]
            loc = np.full((len(ids), p.width, 2), np.nan, dtype=np.float32)
            self._write_part(ids, z_np, loc)
        acc = None
        if p.groups and p.map_shape is not None:
            acc = AccuracyCounts(head_groups(0, {k: slice(*v) for k, v in p.groups.items()}))
            self._accuracy(acc)
        total = sess.all_sum(np.concatenate([ev.vector(), fires, l0] + ([acc.vector()] if acc else [])))
        d = len(ev.vector())
        ev = VarianceSums.from_vector(total[:d])
        fires = total[d : d + p.width]
        l0 = total[d + p.width : d + p.width + 2]
        if acc is not None:
            acc.load_vector(total[d + p.width + 2 :])
        metrics = self._base_metrics()
        metrics["fidelity"] = {"explained_variance": ev.explained_variance(), "mse": ev.mse(),
                               "explained_on": f"{p.source_layer}, the per-image statistic",
                               "accuracy": acc.summary() if acc else None}
        metrics["sparsity"] = {"mean_l0": float(l0[0] / max(l0[1], 1)), "fraction_active":
                               float(l0[0] / max(l0[1] * p.width, 1))}
        metrics["dead"] = {"count": int((fires == 0).sum()), "fraction": float((fires == 0).mean())}
        metrics["firing_images"] = fires.astype(int).tolist()
        metrics["stability"] = {"note": "not measured: an sae on a per-image statistic has no spatial map"}
        self._finish(metrics, {"family": "sae", "settings": p.settings, "state_dict": sae.state_dict()})

    def _accuracy(self, acc) -> None:
        """The model's accuracy with the layer's statistic replaced by the SAE's reconstruction (the map shifted
        per channel), by the training mean, and as it is."""
        import torch

        from neuronscan.explain import pooled, shift_to_statistic, split_layer_name

        p, sess, sae = self.plan, self.sess, self.raw
        module, stat = split_layer_name(p.source_layer)
        runner = _ModelRunner(p, sess.device, module)
        mine = list(range(sess.rank, len(p.ids), sess.world))
        ids = [p.ids[i] for i in mine]
        uris = [p.uris[i] for i in mine]
        labels = [p.label_outputs[i] for i in mine]
        bs = int(self.s["batch_size"])
        for _ids, pixels, where in self._iter_images(ids, uris, max(bs, 256)):
            targets = acc.targets([set(labels[i]) for i in where])
            for b in range(0, len(pixels), bs):
                t = {g: v[b : b + bs] for g, v in targets.items()}
                with torch.no_grad():
                    x = runner.tensor(pixels[b : b + bs])
                    logits = runner.run(x)
                    feat = runner.tap.captured
                    stat_x = pooled(feat, stat)
                    recon = sae.decode(sae.encode(stat_x.float()))
                    rec_logits = runner.run(x, lambda out, r=recon: shift_to_statistic(out, stat, r))
                    mean = sae.mean.expand_as(stat_x)
                    abl_logits = runner.run(x, lambda out, m=mean: shift_to_statistic(out, stat, m))
                acc.add("original", logits.cpu().numpy(), t, count=True)
                acc.add("reconstructed", rec_logits.cpu().numpy(), t, count=False)
                acc.add("mean_ablated", abl_logits.cpu().numpy(), t, count=False)
        runner.tap.close()


def _read_matrix(files: list[str], units: list[str], *, dedupe: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, values)`` of part files (float32 ``(n, K)``), the first row per image when ``dedupe``."""
    tables = [read_part(f, ["image_id", *units]) for f in files]
    if not tables:
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(units)), dtype=np.float32)
    table = pa.concat_tables(tables)
    ids = table.column("image_id").to_numpy().astype(np.int64)
    x = np.stack([table.column(u).to_numpy().astype(np.float32) for u in units], 1)
    x = np.where(np.isfinite(x), x, 0.0).astype(np.float32)
    if dedupe:
        _, first = np.unique(ids, return_index=True)
        keep = np.sort(first)
        ids, x = ids[keep], x[keep]
    return ids, x


class _PartJob(_Job):
    """Zhang's explainer on a conv module's feature maps, the model run on the run's images."""

    def prepare(self) -> None:
        import torch

        from neuronscan.explain import positive_templates

        p = self.plan
        self.runner = _ModelRunner(p, self.sess.device, p.source_layer)
        pos = {int(i): k for k, i in enumerate(p.ids)}
        rows = [pos[i] for i in p.train_ids]
        ids = [p.ids[r] for r in rows]
        uris = [p.uris[r] for r in rows]
        pix, kept = [], []
        for _i, pixels, where in self._iter_images(ids, uris, 256):
            pix.append(pixels)
            kept.extend(where.tolist())
        self.pixels = np.concatenate(pix) if pix else np.zeros((0, p.image_size, p.image_size, 3), np.uint8)
        self.train_rows = np.arange(len(self.pixels))
        if not len(self.pixels):
            raise InputError(f"explain {p.derived}: no training image decoded")
        c, h, w = p.map_shape
        pt = self.s["part"]
        self.templates = positive_templates(h, w, beta=pt["beta"], tau=pt["tau"], device=self.sess.device)
        # Scales of the two losses and the mean map (for the ablation), from the first 512 training images.
        with torch.no_grad():
            feats, logits = [], []
            for b in range(0, min(len(self.pixels), 512), 128):
                logits.append(self.runner.run(self.runner.tensor(self.pixels[b : b + 128])))
                feats.append(self.runner.tap.captured.float())
            f = torch.cat(feats)
            lg = torch.cat(logits)
        self.var_f = float(f.var().clamp_min(1e-12))
        self.var_logits = float(lg.var().clamp_min(1e-12))
        self.mean_map = f.mean(0, keepdim=True)
        self.target = self.s["target"] or "both"

    def build(self):
        from neuronscan.explain import PartExplainer

        p, pt = self.plan, self.s["part"]
        hidden = max(1, int(round(pt["hidden"] * p.n_units)))
        return PartExplainer(p.n_units, p.width, ordinary=p.ordinary, kernel_size=pt["kernel_size"], hidden=hidden,
                             beta=pt["beta"], mask=pt["mask"], seed=int(self.s["seed"]))

    def step(self, rows: np.ndarray, n_global: int) -> dict[str, float]:
        import torch

        from neuronscan.explain import part_template_loss

        pt = self.s["part"]
        runner = self.runner
        x = runner.tensor(self.pixels[rows])
        with torch.no_grad():
            logits_t = runner.run(x)
            f = runner.tap.captured.detach().float()
        out = self.model(f)
        loss = torch.zeros((), device=f.device)
        parts: dict[str, float] = {}
        if self.target in ("features", "both"):
            rec = (out["recon"] - f).pow(2).mean() / self.var_f
            loss = loss + pt["reconstruction_weight"] * rec
            parts["reconstruction"] = float(rec.detach())
        if self.target in ("output", "both"):
            recon = out["recon"]
            logits_s = runner.run(x, lambda _o: recon)
            dist = (logits_s - logits_t).pow(2).mean() / self.var_logits
            loss = loss + pt["distill_weight"] * dist
            parts["distillation"] = float(dist.detach())
        if pt["part_weight"] > 0:
            part = part_template_loss(out["parts"], beta=pt["beta"], tau=pt["tau"], alpha=pt["alpha"],
                                      templates=self.templates)
            loss = loss + pt["part_weight"] * part
            parts["part"] = float(part.detach())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        parts["loss"] = float(loss.detach())
        return parts

    def export(self) -> None:
        import torch

        from neuronscan.explain import AccuracyCounts, DistanceSums, VarianceSums, head_groups, peak_fractions, pooled

        p, sess, ex = self.plan, self.sess, self.raw
        ex.eval()
        self._reset_derived()
        c, h, w = p.map_shape
        reduce = self.s["part"]["reduce"]
        ev_map = VarianceSums(c * h * w)
        ev_pool = VarianceSums(c)
        fires = np.zeros(p.width)
        l0 = np.zeros(2)
        comp_d, unit_d = DistanceSums(p.width), DistanceSums(c)
        energy = np.zeros(2)  # Σ |interpretable track's share|, Σ total (decoder inputs' energy)
        acc = AccuracyCounts(head_groups(0, {k: slice(*v) for k, v in p.groups.items()})) if p.groups else None
        mine = list(range(sess.rank, len(p.ids), sess.world))
        ids = [p.ids[i] for i in mine]
        uris = [p.uris[i] for i in mine]
        labels = [p.label_outputs[i] for i in mine]
        landmarks = np.asarray([p.landmarks[i] for i in mine], dtype=np.float64).reshape(-1, 2)
        bs = int(self.s["batch_size"])
        runner = self.runner
        for chunk_ids, pixels, where in self._iter_images(ids, uris, p.part_rows):
            values, locs = [], []
            targets = acc.targets([set(labels[i]) for i in where]) if acc else None
            for b in range(0, len(pixels), bs):
                with torch.no_grad():
                    x = runner.tensor(pixels[b : b + bs])
                    logits = runner.run(x)
                    f = runner.tap.captured.float()
                    out = ex(f)
                    recon = out["recon"]
                    stat = out["masked"].flatten(2).amax(-1) if reduce == "max" else out["masked"].flatten(2).mean(-1)
                    if acc is not None:
                        rec_logits = runner.run(x, lambda _o, r=recon: r)
                        abl_logits = runner.run(x, lambda o, m=self.mean_map: m.expand_as(o).to(o.dtype))
                parts = out["parts"].cpu().numpy()
                f_np = f.cpu().numpy()
                n = len(f_np)
                ev_map.add(f_np.reshape(n, -1), recon.cpu().numpy().reshape(n, -1))
                ev_pool.add(pooled(f, reduce).cpu().numpy(), pooled(recon, reduce).cpu().numpy())
                stat_np = stat.cpu().numpy()
                active = stat_np > 0
                fires += active.sum(0)
                l0 += [active.sum(), n]
                peaks = peak_fractions(parts)
                lm = landmarks[where[b : b + bs]]
                comp_d.add(peaks, active, lm)
                unit_d.add(peak_fractions(f_np), f_np.reshape(n, c, -1).max(-1) > 0, lm)
                energy += [float(out["masked"].pow(2).sum()),
                           float(out["masked"].pow(2).sum() + out["ordinary"].pow(2).sum())]
                values.append(stat_np)
                locs.append(peaks.astype(np.float32))
                if acc is not None:
                    t = {g: v[b : b + bs] for g, v in targets.items()}
                    acc.add("original", logits.cpu().numpy(), t, count=True)
                    acc.add("reconstructed", rec_logits.cpu().numpy(), t, count=False)
                    acc.add("mean_ablated", abl_logits.cpu().numpy(), t, count=False)
            if values:
                self._write_part(np.asarray(chunk_ids, dtype=np.int64), np.concatenate(values), np.concatenate(locs))
        vecs = [ev_map.vector(), ev_pool.vector(), fires, l0, comp_d.vector(), unit_d.vector(), energy]
        if acc is not None:
            vecs.append(acc.vector())
        sizes = [len(v) for v in vecs]
        total = sess.all_sum(np.concatenate(vecs))
        pieces = np.split(total, np.cumsum(sizes)[:-1])
        ev_map, ev_pool = VarianceSums.from_vector(pieces[0]), VarianceSums.from_vector(pieces[1])
        fires, l0 = pieces[2], pieces[3]
        comp_d, unit_d = DistanceSums.from_vector(pieces[4]), DistanceSums.from_vector(pieces[5])
        energy = pieces[6]
        if acc is not None:
            acc.load_vector(pieces[7])
        min_images = int(self.s["stability_min_images"])
        comp_inst, unit_inst = comp_d.instability(min_images), unit_d.instability(min_images)
        metrics = self._base_metrics()
        metrics["fidelity"] = {
            "explained_variance": ev_map.explained_variance(), "mse": ev_map.mse(),
            "explained_on": f"{p.source_layer} feature maps, every channel and position",
            "explained_variance_pooled": ev_pool.explained_variance(),
            "pooled_statistic": reduce,
            "interpretable_energy_fraction": float(energy[0] / energy[1]) if energy[1] > 0 else float("nan"),
            "accuracy": acc.summary() if acc else None,
        }
        metrics["sparsity"] = {"mean_l0": float(l0[0] / max(l0[1], 1)),
                               "fraction_active": float(l0[0] / max(l0[1] * p.width, 1))}
        metrics["dead"] = {"count": int((fires == 0).sum()), "fraction": float((fires == 0).mean())}
        metrics["firing_images"] = fires.astype(int).tolist()
        has_landmarks = bool(np.isfinite(np.asarray(p.landmarks, dtype=np.float64)).any())
        metrics["stability"] = {
            "landmark": "centre of the image's largest ground-truth box (shapes world: the object)"
            if has_landmarks else None,
            "min_images": min_images,
            "components_measured": int(np.isfinite(comp_inst).sum()),
            "components_mean_instability": _nanmean(comp_inst),
            "raw_units_measured": int(np.isfinite(unit_inst).sum()),
            "raw_units_mean_instability": _nanmean(unit_inst),
            "components_instability": [None if not np.isfinite(v) else float(v) for v in comp_inst],
        }
        self._finish(metrics, {"family": "part", "settings": p.settings, "state_dict": ex.state_dict()})
        runner.tap.close()


def _nanmean(v: np.ndarray) -> float | None:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


# -- interpretability (after score) ------------------------------------------------------------------------------


def explain_interpretability(run: RunDir | str, *, alpha: float | None = None) -> dict[str, dict]:
    """Add to every explainer's ``metrics.json`` (and README) how interpretable its components are, beside the raw
    units of the layer it explains, from the score stage's ``neurons.parquet`` (and concept depths from
    ``neuron_concepts.parquet``); returns derived layer → that section. Nothing when the run has no explainer or no
    score tables."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from neuronscan.explain import interpretability

    run = run if isinstance(run, RunDir) else RunDir(run)
    folder = run.path("explain")
    fs, path = get_fs(folder)
    if not fs.exists(path) or not run.exists(run.neurons):
        return {}
    found = {}
    for sub in sorted(fs.ls(path, detail=False)):
        name = sub.rstrip("/").rsplit("/", 1)[-1]
        uri = join(folder, name)
        metrics = _read_metrics(uri)
        if metrics is not None and metrics.get("derived_layer"):
            found[metrics["derived_layer"]] = (uri, metrics)
    if not found:
        return {}
    neurons = read_parquet(run.neurons).to_pandas()
    alpha = alpha if alpha is not None else run.alpha()
    wanted = set(found) | {m.get("compare_layer") for _u, m in found.values() if m.get("compare_layer")}
    concepts = None
    if run.exists(run.neuron_concepts):
        dataset = ds.dataset(get_fs(run.neuron_concepts)[1], filesystem=get_fs(run.neuron_concepts)[0],
                             format="parquet")
        if "depth" in dataset.schema.names:
            concepts = dataset.to_table(columns=["layer", "concept", "depth"],
                                        filter=pc.field("layer").isin(sorted(wanted))).to_pandas()
    out = {}
    for derived, (uri, metrics) in found.items():
        cmp_layer = metrics.get("compare_layer")
        sub = concepts[concepts["layer"] == derived] if concepts is not None else None
        section = {"alpha": alpha, "scored": _now(), "components": interpretability(neurons, derived, sub)}
        if cmp_layer:
            raw = concepts[concepts["layer"] == cmp_layer] if concepts is not None else None
            section["raw_units"] = interpretability(neurons, cmp_layer, raw)
        metrics["interpretability"] = section
        write_json_atomic(metrics, join(uri, METRICS_FILE))
        write_readme(uri, metrics)
        out[derived] = section
    info = run.read_info() or {}
    layers = dict((info.get("explain") or {}).get("layers") or {})
    for derived, (_uri, metrics) in found.items():
        layers[derived] = _brief(metrics)
    run.update_info({"explain": {"layers": layers}})
    return out


def write_readme(folder: str, metrics: dict) -> None:
    """``README.md`` of an explainer's folder: what it is, its files and its figures."""
    fid = metrics.get("fidelity") or {}
    acc = fid.get("accuracy") or {}
    sp = metrics.get("sparsity") or {}
    dead = metrics.get("dead") or {}
    st = metrics.get("stability") or {}
    interp = metrics.get("interpretability") or {}
    tr = metrics.get("training") or {}

    def f(v, nd=3):
        return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else (
            f"{v:.{nd}f}" if isinstance(v, float) else str(v))

    family = {"sae": "sparse autoencoder", "part": "part explainer (Zhang et al. 2019)"}.get(metrics.get("family"), "")
    lines = [
        f"# {metrics.get('derived_layer')}: {family} of {metrics.get('layer')}",
        "",
        f"{metrics.get('components')} components of {metrics.get('units')} units, trained on "
        f"{metrics.get('train_images')} of {metrics.get('images')} images for {tr.get('epochs')} epochs "
        f"({tr.get('workers')} worker(s), {tr.get('device')}, {f(tr.get('seconds'), 1)} s of epochs). The components' "
        f"activations are the derived layer `{metrics.get('derived_layer')}` of the run "
        "(`activations/`, `topk/`), scored and reported like the probed layers.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| explained variance ({fid.get('explained_on', '')}) | {f(fid.get('explained_variance'))} |",
    ]
    if "explained_variance_pooled" in fid:
        lines.append(f"| explained variance of the per-image {fid.get('pooled_statistic')} | "
                     f"{f(fid.get('explained_variance_pooled'))} |")
    if acc:
        lines.append(f"| model accuracy: original / reconstructed / mean-ablated | {f(acc.get('original'))} / "
                     f"{f(acc.get('reconstructed'))} / {f(acc.get('mean_ablated'))} |")
    lines += [f"| mean L0 (components > 0 per image) | {f(sp.get('mean_l0'), 2)} |",
              f"| dead components | {dead.get('count')} ({f(dead.get('fraction'))}) |"]
    if st.get("components_mean_instability") is not None:
        lines.append(f"| location instability: components / raw units | {f(st.get('components_mean_instability'))}"
                     f" / {f(st.get('raw_units_mean_instability'))} |")
    comp, raw = interp.get("components") or {}, interp.get("raw_units") or {}
    if comp:
        lines += [f"| live units with a significant concept (q ≤ {interp.get('alpha')}): components / "
                  f"{raw.get('layer', 'raw units')} | {f(comp.get('frac_significant'))} / "
                  f"{f(raw.get('frac_significant'))} |",
                  f"| mean best AUPRC: components / raw units | {f(comp.get('mean_best_auprc'))} / "
                  f"{f(raw.get('mean_best_auprc'))} |",
                  f"| mean significant concepts per unit: components / raw units | "
                  f"{f(comp.get('mean_n_significant'), 2)} / {f(raw.get('mean_n_significant'), 2)} |",
                  f"| mean depth of the best concept: components / raw units | "
                  f"{f(comp.get('mean_best_depth'), 2)} / {f(raw.get('mean_best_depth'), 2)} |",
                  f"| mean AUC of the best formula (exploratory): components / raw units | "
                  f"{f(comp.get('mean_formula_auc'))} / {f(raw.get('mean_formula_auc'))} |"]
    else:
        lines.append("| interpretability | not scored yet (`neuronscan score --run RUN`) |")
    lines += [
        "",
        "Files: `metrics.json` (every figure, the settings, the loss per epoch), `explainer.pt` (the final weights: "
        "`torch.load(..., weights_only=True)` → `{family, settings, state_dict}`), `checkpoints/epoch-NNNN.pt` "
        "(the last two epochs: weights, Adam's state, history), `state.json` (what the stage finished).",
        "",
    ]
    write_bytes_atomic(join(folder, README_FILE), "\n".join(lines).encode())


def explain_frame(summaries: list[ExplainSummary]) -> pd.DataFrame:
    """One row per explainer with its headline figures (for the terminal)."""
    rows = []
    for x in summaries:
        rows.append({"layer": x.derived, "action": x.action, "seconds": round(x.seconds, 1), **_brief(x.metrics)})
    return pd.DataFrame(rows)

