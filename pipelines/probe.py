"""Probe stage: images → decode (CPU tasks) → model with hooks (GPU/CPU actor pool) → part writers (CPU tasks).

Dataflow (Ray Data): the input listing is split into blocks; ``decode_images`` reads bytes through
fsspec and decodes/resizes them, turning every failure into a row with an error; the
``ActivationProbe`` actors (``ActorPoolStrategy``) run the model under ``torch.inference_mode`` with
hooks that reduce each layer on the device and return the values (and argmax locations) of every unit;
Ray Data bundles those rows into parts of `part_rows` images, and ``write_parts`` tasks write, per part:

- ``activations/<layer>/part-<id>.parquet`` — ``image_id`` + one float32 column per unit;
- ``topk/_parts/<layer>/part-<id>.parquet`` — each unit's top-M images of the part;
- ``clip/part-<id>.parquet`` — CLIP image embeddings, when configured;
- ``probe/commits/<id>.parquet`` — every image of the part with its status, written last.

The model's device never waits on Parquet encoding or uploads: the actors only compute. A part counts
only once its commit record exists; a resume skips committed images and deletes the parts that never
committed. At the end the driver writes ``images.parquet`` (every input exactly once), merges the top-M
parts into ``topk/<layer>.parquet`` and checks processed + failed == inputs.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from neuronscan.io import (
    COMMIT_SCHEMA,
    HIERARCHY_SCHEMA,
    IMAGES_SCHEMA,
    INPUTS_SCHEMA,
    LABELS_SCHEMA,
    TOPK_SCHEMA,
    RunDir,
    activation_schema,
    clip_schema,
    get_fs,
    read_parquet,
    redact_uri,
    scrub,
    scrub_obj,
    uri_secrets,
    write_json_atomic,
    write_parquet_atomic,
)

__all__ = ["ActivationProbe", "decode_images", "prepare_probe", "run_probe", "ProbePlan", "ProbeSummary",
           "probe_layers"]

log = logging.getLogger("neuronscan")


def _activation_table(image_ids: np.ndarray, values: np.ndarray) -> pa.Table:
    arrays = [pa.array(image_ids, pa.int64())] + [pa.array(values[:, k]) for k in range(values.shape[1])]
    return pa.Table.from_arrays(arrays, schema=activation_schema(values.shape[1]))


def decode_images(batch: dict[str, np.ndarray], *, size: int, max_pixels: int, resize: str) -> dict[str, np.ndarray]:
    """Read and decode a batch of inputs; failures become rows with ``ok=False`` and an error, never exceptions."""
    from neuronscan.data import DecodeError, decode_batch, read_blob

    uris = batch["uri"]
    blobs: list[bytes | None] = []
    read_errors: list[str | None] = []
    cache: dict = {}
    if any(isinstance(u, str) and u.startswith("s3://") for u in uris):
        cache["s3"] = get_fs("s3://x")[0]
    for uri in uris:
        if uri is None or (isinstance(uri, float) and np.isnan(uri)) or uri == "":
            blobs.append(None)
            read_errors.append("missing: the input has no uri")
            continue
        if str(uri).startswith("s3://") and redact_uri(str(uri)) != str(uri):
            blobs.append(None)
            read_errors.append(f"read_error: {redact_uri(str(uri))}: an s3:// URI cannot carry credentials "
                               "(KEY:SECRET@); give them through the AWS environment or config instead")
            continue
        try:
            blobs.append(read_blob(str(uri), cache))
            read_errors.append(None)
        except DecodeError as exc:
            blobs.append(None)
            read_errors.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - a read failure is a failed row, never a crashed run
            blobs.append(None)
            read_errors.append(f"read_error: {type(exc).__name__}: {exc}")
    pixels, ok, errors = decode_batch(blobs, size=size, max_pixels=max_pixels, resize=resize)
    errors = [r if r is not None else e for r, e in zip(read_errors, errors)]
    # Library messages may echo a credential (botocore names a bucket "KEY:SECRET@bucket"): scrub each
    # row's error of its own URI's userinfo and of credential environment values; store URIs without it.
    errors = [None if e is None else scrub(e, uri_secrets([u])) for e, u in zip(errors, uris)]
    return {
        "image_id": np.asarray(batch["image_id"], dtype=np.int64),
        "uri": np.asarray([("" if u is None else redact_uri(str(u))) for u in uris], dtype=object),
        "ok": ok,
        "error": np.asarray(errors, dtype=object),
        "pixels": pixels,
    }


VALUES, LOCATIONS, CLIP = "v:", "loc:", "clip"
"""Column prefixes of the probe actors' output: per layer statistic its values ``(n, K)`` float32 and argmax
locations ``(n, K, 2)`` float16; ``clip`` the CLIP image embeddings ``(n, D)``."""


class ActivationProbe:
    """Ray Data callable class: loads the model once, then runs it on batches; writes nothing.

    Each call returns the batch's rows (``image_id, uri, ok, error``) with, per layer statistic, the
    values and argmax locations of every unit (NaN rows for images that failed), and CLIP embeddings
    when configured. Encoding and writing happen downstream in `write_parts` tasks, so the model's
    device never waits on Parquet or object-store uploads.

    Args (``fn_constructor_kwargs``):
        model: keyword arguments of :func:`neuronscan.models.build_model`.
        layers, reduce: hooked layers and statistics.
        num_gpus: GPUs given to this actor (0 → CPU).
        torch_threads: intra-op threads (default: all cores of the machine).
        autocast, channels_last: GPU speed options.
        clip: ``{"model", "pretrained", "checkpoint"}`` to also embed images with CLIP.
    """

    def __init__(
        self,
        *,
        model: dict,
        layers: list[str],
        reduce: list[str],
        num_gpus: float = 0.0,
        torch_threads: int | None = None,
        autocast: bool = True,
        channels_last: bool = True,
        clip: dict | None = None,
    ):
        import torch

        from neuronscan.models import ActivationRecorder, build_model

        torch.set_num_threads(torch_threads or os.cpu_count() or 1)
        # Ray batches are read-only; _forward hands them to torch without a copy and never writes to
        # them (the float conversion makes a new tensor). Set once, process-wide (thread-safe use).
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.torch = torch
        self.device = torch.device("cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu")
        spec = build_model(**model)
        self.module = spec.module.to(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self.autocast = autocast and self.device.type == "cuda"
        self.recorder = ActivationRecorder(self.module, layers, reduce)
        # With probe.actor_threads > 1 Ray runs several __call__s at once: the model and its hooks are
        # used by one batch at a time; decoding the next batch's pixels to the device overlaps.
        self._lock = threading.Lock()
        self.clip = None
        if clip:
            from neuronscan.clip import load_clip

            self.clip = load_clip(clip["model"], pretrained=clip.get("pretrained"), checkpoint=clip.get("checkpoint"),
                                  device=str(self.device))

    def _forward(self, pixels: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        torch = self.torch
        # Ray batches are read-only views. torch.from_numpy warns about that but shares the memory;
        # nothing writes to it (the device copy and the float conversion make new tensors), so skip
        # the copy a writable array would cost (~10 ms per batch of 256 at 224 px).
        x = torch.from_numpy(np.asarray(pixels)).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        # A new float tensor in every case (never an alias of the batch), then normalised in place.
        x = x.to(torch.float32, copy=True).sub_(self.mean).div_(self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            outs = self.recorder(x)
            return {name: (values.float().cpu().numpy(), loc.to(torch.float16).cpu().numpy())
                    for name, (values, loc) in outs.items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(batch["image_id"], dtype=np.int64)
        ok = np.asarray(batch["ok"], dtype=bool)
        errors = np.asarray([None if o else str(e) for o, e in zip(ok, batch["error"])], dtype=object)
        out: dict[str, np.ndarray] = {"image_id": ids, "uri": np.asarray(batch["uri"], dtype=object)}
        outs: dict = {}
        emb = None
        if ok.any():
            # All-ok batches (the usual case) go to the model without a copy; a mask index copies.
            pixels = batch["pixels"] if ok.all() else batch["pixels"][ok]
            with self._lock:
                try:
                    outs = self._forward(pixels)
                    if self.clip is not None:
                        from neuronscan.clip import embed_images

                        emb = embed_images(self.clip, pixels).astype(np.float32)
                except Exception as exc:  # noqa: BLE001 - a model failure on a batch fails its images, not the run
                    log.error("forward pass failed on a batch of %d images: %s", int(ok.sum()), exc)
                    errors = np.asarray([f"model_error: {type(exc).__name__}: {exc}" if o else e
                                         for o, e in zip(ok, errors)], dtype=object)
                    ok = np.zeros_like(ok)
                    outs, emb = {}, None
        for name, (values, loc) in outs.items():
            out[VALUES + name] = _scatter(values, ok)
            out[LOCATIONS + name] = _scatter(loc, ok)
        if emb is not None:
            out[CLIP] = _scatter(emb, ok)
        out["ok"] = ok
        out["error"] = errors
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["peak_rss_mib"] = np.full(len(ids), rss_mib, dtype=np.float32)
        return out


def _scatter(rows: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``rows`` (one per ok image) placed at the ok positions of a batch; NaN for the failed ones."""
    if ok.all():
        return rows
    full = np.full((len(ok), *rows.shape[1:]), np.nan, dtype=rows.dtype)
    full[ok] = rows
    return full


def top_entries(image_ids: np.ndarray, values: np.ndarray, loc: np.ndarray, m: int) -> pa.Table:
    """Each unit's top ``m`` images of a part, ordered by value (descending) then image id (ascending).

    The same order as the final merge (`_merge_topk`), so the union of every part's entries holds the
    exact global top-M. NaN counts as -inf. Ties at the cut are resolved by image id, never by row
    order, and a constant unit yields exactly ``m`` entries (not every tied row).
    """
    n, n_units = values.shape
    m = min(m, n)
    if m == 0 or n_units == 0:
        return TOPK_SCHEMA.empty_table()
    order = np.argsort(image_ids, kind="stable")
    sorted_ids = image_ids[order]
    pieces = []
    for start in range(0, n_units, 256):  # a chunk of units at a time bounds the temporaries
        v = values[order, start : start + 256]
        v = np.where(np.isnan(v), -np.inf, v)
        thr = np.partition(v, n - m, axis=0)[n - m]  # the m-th largest value of each unit
        above = v > thr
        tied = v == thr
        # Of the rows tied at the cut, the first (smallest image ids) fill the m places.
        take = above | (tied & (np.cumsum(tied, axis=0) <= (m - above.sum(axis=0))))
        rows, units = np.nonzero(take)
        vals = v[rows, units]
        o = np.lexsort((rows, -vals, units))
        rows, units, vals = rows[o], units[o], vals[o]
        rank = np.arange(len(units)) - np.searchsorted(units, units)
        where = loc[order[rows], start + units].astype(np.float32)
        pieces.append((start + units, rank, sorted_ids[rows], vals, where))
    unit, rank, ids, vals, where = (np.concatenate(x) for x in zip(*pieces))
    return pa.Table.from_arrays(
        [pa.array(unit.astype(np.int32)), pa.array(rank.astype(np.int32)), pa.array(ids.astype(np.int64)),
         pa.array(vals.astype(np.float32)), pa.array(where[:, 0]), pa.array(where[:, 1])],
        schema=TOPK_SCHEMA,
    )


def write_parts(batch: dict[str, np.ndarray], *, out: str, outputs: list[str], topk: int,
                lock_token: str | None = None) -> dict[str, np.ndarray]:
    """Write one part of probe output (a Ray Data task downstream of the actors) and commit it.

    Per layer statistic an activation part and the part's top-M entries, then the CLIP part, and
    **last** ``probe/commits/<part>.parquet`` with every image of the part (failed ones included): a
    part counts only once its commit exists, so a crash loses at most the parts being written.

    Args:
        lock_token: the token of the run's lock (`neuronscan.io.RunLock`) held by this run's driver;
            checked before writing and again before committing, so that a worker that outlived a killed
            driver never commits into the run a resume now holds.
    """
    from neuronscan.io import check_holder

    run = RunDir(out)
    if lock_token is not None:
        check_holder(out, lock_token)
    part = uuid.uuid4().hex
    ids = np.asarray(batch["image_id"], dtype=np.int64)
    ok = np.asarray(batch["ok"], dtype=bool)
    if ok.any():
        ok_ids = ids[ok]
        for name in outputs:
            values = np.asarray(batch[VALUES + name])
            loc = np.asarray(batch[LOCATIONS + name])
            if not ok.all():
                values, loc = values[ok], loc[ok]
            write_parquet_atomic(_activation_table(ok_ids, values), run.activation_part(name, part),
                                 encoded_columns=["image_id"])
            write_parquet_atomic(top_entries(ok_ids, values, loc, topk), run.topk_part(name, part))
        if CLIP in batch:
            emb = np.asarray(batch[CLIP], dtype=np.float32)[ok]
            dim = emb.shape[1]
            table = pa.Table.from_arrays(
                [pa.array(ok_ids, pa.int64()), pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), dim)],
                schema=clip_schema(dim),
            )
            write_parquet_atomic(table, run.clip_part(part))
    if lock_token is not None:
        check_holder(out, lock_token)
    commit = pa.Table.from_arrays(
        [
            pa.array(ids, pa.int64()),
            pa.array([str(u) for u in batch["uri"]], pa.string()),
            pa.array(np.where(ok, "ok", "failed").tolist(), pa.string()),
            pa.array([None if o else (None if e is None else str(e)) for o, e in zip(ok, batch["error"])],
                     pa.string()),
        ],
        schema=COMMIT_SCHEMA,
    )
    write_parquet_atomic(commit, run.commit(part))
    return {"image_id": ids, "ok": ok, "peak_rss_mib": np.asarray(batch["peak_rss_mib"], dtype=np.float32)}


def part_rows(pcfg, n_units: int) -> int:
    """Rows per part file: ``probe.part_rows``, fewer if a part's values would pass ``probe.part_mb``.

    ``n_units`` counts every unit of every layer statistic (a part holds one file per statistic).
    """
    by_size = int(pcfg.part_mb * 2**20 // max(4 * n_units, 1))
    return max(1, min(int(pcfg.part_rows), by_size))


def decode_concurrency(pcfg) -> int | None:
    """Cap on decode tasks in flight: ``probe.decode_tasks``, or None to let Ray Data decide.

    With the default (no cap) and equal CPU requests (``decode_cpus == cpus_per_actor``, no GPU), Ray
    Data fuses decoding into the probe actors: each actor decodes a batch, then runs the model on it.
    On a small CPU-only machine that is the faster arrangement (a decode process beside a
    multi-threaded CPU forward pass slows the forward pass more than it gains). With GPUs the stages
    never fuse and decode tasks run on every free CPU. Where the stages could fuse (same CPU request,
    no GPU), a cap equal to the number of actors is moved up by one: Ray Data would fuse a capped
    decode stage into an actor pool of the same size, and a user who sets a cap wants a decode stage.
    """
    n = pcfg.decode_tasks
    if n is None:
        return None
    fusable = pcfg.num_gpus == 0 and pcfg.decode_cpus == pcfg.cpus_per_actor
    return n + 1 if fusable and n == pcfg.num_actors else n


@dataclass
class ProbeSummary:
    """What the probe did, for run.json and the terminal."""

    run_dir: str
    n_inputs: int
    n_ok: int
    n_failed: int
    layers: dict[str, int]
    failures: dict[str, int]
    seconds: float
    resumed: int = 0
    images_per_second: float = 0.0
    extra: dict = field(default_factory=dict)


def probe_layers(spec, layers: list[str], reduce: list[str]) -> dict[str, int]:
    """Output name → unit count for the chosen layers and statistics (one blank forward pass)."""
    import torch

    from neuronscan.models import ActivationRecorder

    rec = ActivationRecorder(spec.module, layers, reduce)
    try:
        with torch.inference_mode():
            outs = rec(torch.zeros(1, 3, spec.input_size, spec.input_size))
    finally:
        rec.close()
    return {name: int(values.shape[1]) for name, (values, _loc) in outs.items()}


def _merge_topk(run_dir: str, layer: str, topk: int) -> int:
    run = RunDir(run_dir)
    folder = run.topk_parts(layer)
    names = run.part_files(folder)
    if not names:
        table = TOPK_SCHEMA.empty_table()
    else:
        df = pd.concat([read_parquet(f"{folder}/{n}").to_pandas() for n in names], ignore_index=True)
        # A retried batch can write an image twice; keep one entry per (unit, image).
        df = df.sort_values(["unit", "value", "image_id"], ascending=[True, False, True], kind="stable")
        df = df.drop_duplicates(["unit", "image_id"])
        df = df.groupby("unit", sort=True).head(topk).copy()
        df["rank"] = df.groupby("unit").cumcount().astype(np.int32)
        table = pa.Table.from_pandas(df[TOPK_SCHEMA.names], schema=TOPK_SCHEMA, preserve_index=False)
    write_parquet_atomic(table, run.topk(layer))
    return table.num_rows


class _Progress:
    def __init__(self, total: int, label: str, stream=sys.stderr, every: float = 5.0, quiet: bool = False):
        self.total, self.label, self.stream, self.every, self.quiet = total, label, stream, every, quiet
        self.done = self.failed = 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int, n_failed: int) -> None:
        self.done += n
        self.failed += n_failed
        now = time.perf_counter()
        if not self.quiet and (now - self.last >= self.every or self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            pct = 100.0 * self.done / max(self.total, 1)
            print(f"  {self.label}: {self.done:,}/{self.total:,} images ({pct:.0f}%), {rate:,.0f} img/s, "
                  f"{self.failed:,} failed", file=self.stream, flush=True)


@dataclass
class ProbePlan:
    """Everything checked before any work starts: inputs, labels, model layers and their unit counts.

    ``listing`` holds the URIs as given (credentials included, to read them); ``stored_listing`` is
    what ``inputs.parquet`` and every other output holds: the same rows with userinfo removed.
    """

    listing: pd.DataFrame
    labels: pd.DataFrame
    hierarchy: list
    source: dict
    model_kwargs: dict
    layers: list[str]
    outputs: dict[str, int]
    image_size: int
    resumed_plan: bool
    stored_listing: pd.DataFrame = None
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)
    state_sha256: str = ""

    def __post_init__(self):
        if self.stored_listing is None:
            self.stored_listing = redacted_listing(self.listing)


def redacted_listing(listing: pd.DataFrame) -> pd.DataFrame:
    """The listing as outputs hold it: every URI without userinfo (``s3://KEY:SECRET@b/k`` → ``s3://b/k``)."""
    from neuronscan.io import redact_uri

    out = listing.copy()
    out["uri"] = [redact_uri(u) if isinstance(u, str) else u for u in out["uri"].tolist()]
    return out


def prepare_probe(cfg, run_dir: str) -> ProbePlan:
    """Resolve the inputs and the model's layers from ``cfg``; write nothing.

    A resumed run is planned from its config again, so that `pipelines._fingerprint` can tell whether
    the inputs, labels or model changed since the run started.

    Raises:
        InputError / ModelError: a missing folder, an empty labels file, an unknown layer, … — before Ray
            starts or anything is written.
    """
    from neuronscan.models import build_model, list_layers, resolve_layers
    from pipelines._fingerprint import state_sha256
    from pipelines._inputs import plan_inputs

    run = RunDir(run_dir)
    planned = plan_inputs(cfg)
    listing, labels, source, hierarchy = planned.listing, planned.labels, planned.source, planned.hierarchy
    mcfg = cfg.model
    model_kwargs = dict(name=mcfg.name, source=mcfg.source, weights=mcfg.weights, checkpoint=mcfg.checkpoint,
                        mean=mcfg.mean, std=mcfg.std)
    spec = build_model(**model_kwargs)
    if cfg.data.image_size:  # e.g. an exported graph whose spatial size is fixed
        spec.input_size = cfg.data.image_size
    available = [info.name for info in list_layers(spec)]
    layers = resolve_layers(mcfg.layers, available, model_name=mcfg.name)
    outputs = probe_layers(spec, layers, list(mcfg.reduce))
    size = spec.input_size
    return ProbePlan(listing, labels, hierarchy, scrub_obj(source), model_kwargs, layers, outputs, size,
                     run.exists(run.inputs), mean=tuple(spec.mean), std=tuple(spec.std),
                     state_sha256=state_sha256(spec.module))


def run_probe(cfg, run_dir: str, *, quiet: bool = False, plan: ProbePlan | None = None,
              lock_token: str | None = None) -> ProbeSummary:
    """Probe every input of ``cfg`` into ``run_dir``, resuming a previous attempt at the same run dir.

    Args:
        plan: from :func:`prepare_probe` (made here when not given).
        lock_token: the token of the `RunLock` the caller holds on ``run_dir``; without one, the probe
            takes the lock itself for its duration.

    Returns:
        A :class:`ProbeSummary`; ``images.parquet`` holds every input exactly once.

    Raises:
        InputError / ModelError: bad inputs or model settings, before any work starts.
        RuntimeError: the end-of-run check processed + failed == inputs failed (never expected).
    """
    if lock_token is None:
        from neuronscan.io import RunLock

        with RunLock(run_dir, command="neuronscan probe") as lock:
            return _run_probe(cfg, run_dir, quiet=quiet, plan=plan, lock_token=lock.holder["token"])
    return _run_probe(cfg, run_dir, quiet=quiet, plan=plan, lock_token=lock_token)


def _run_probe(cfg, run_dir: str, *, quiet: bool, plan: ProbePlan | None, lock_token: str) -> ProbeSummary:
    import ray

    t0 = time.perf_counter()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    plan = plan or prepare_probe(cfg, run_dir)
    run = RunDir(run_dir)
    t_planned = time.perf_counter()
    listing, source = plan.listing, plan.source
    if plan.resumed_plan:
        say(f"resuming probe in {run_dir}")
    else:
        write_parquet_atomic(pa.Table.from_pandas(plan.labels, schema=LABELS_SCHEMA, preserve_index=False),
                             run.labels)
        if plan.hierarchy:
            hier = pd.DataFrame(plan.hierarchy, columns=["concept", "parent"])
            write_parquet_atomic(pa.Table.from_pandas(hier, schema=HIERARCHY_SCHEMA, preserve_index=False),
                                 run.hierarchy)
        write_json_atomic(source, run.source)
        # The listing is written last: its presence marks a planned run.
        write_parquet_atomic(pa.Table.from_pandas(plan.stored_listing, schema=INPUTS_SCHEMA, preserve_index=False),
                             run.inputs)
    mcfg = cfg.model
    model_kwargs, layers, outputs, size = plan.model_kwargs, plan.layers, plan.outputs, plan.image_size

    commits = run.read_commits()
    committed_parts = set(commits["part"])
    removed = run.remove_uncommitted(committed_parts)
    if removed:
        say(f"removed {removed} part file(s) of batches that never committed")
    done_ids = set(commits["image_id"].tolist())
    todo = listing[~listing["image_id"].isin(done_ids)][["image_id", "uri"]].reset_index(drop=True)
    resumed = len(listing) - len(todo)
    pcfg = cfg.probe
    say(f"probe: {len(listing):,} inputs, {len(todo):,} to do"
        + (f" ({resumed:,} already committed)" if resumed else "")
        + f"; {mcfg.name} layers {', '.join(outputs)} at {size}px")

    rows_per_part = part_rows(pcfg, sum(outputs.values()))
    actor_rss = 0.0
    first_batch: tuple[float, int] | None = None
    t_stream = time.perf_counter()
    if len(todo):
        todo["uri"] = todo["uri"].astype(object).where(todo["uri"].notna(), "")
        block = max(pcfg.batch_size, 1)
        chunks = [todo.iloc[i : i + block] for i in range(0, len(todo), block)]
        ds = ray.data.from_pandas(chunks)
        n_decode = decode_concurrency(pcfg)
        ds = ds.map_batches(
            decode_images,
            fn_kwargs={"size": size, "max_pixels": cfg.data.max_pixels, "resize": cfg.data.resize},
            batch_size=pcfg.batch_size,
            num_cpus=pcfg.decode_cpus,
            **({"compute": ray.data.TaskPoolStrategy(size=n_decode)} if n_decode else {}),
        )
        ds = ds.map_batches(
            ActivationProbe,
            fn_constructor_kwargs={
                "model": model_kwargs,
                "layers": layers,
                "reduce": list(mcfg.reduce),
                "num_gpus": pcfg.num_gpus,
                "torch_threads": pcfg.torch_threads,
                "autocast": pcfg.autocast,
                "channels_last": pcfg.channels_last,
                "clip": pcfg.clip.model_dump() if pcfg.clip else None,
            },
            batch_size=pcfg.batch_size,
            compute=ray.data.ActorPoolStrategy(
                size=pcfg.num_actors,
                **({"max_concurrent_calls_per_actor": pcfg.actor_threads, "enable_true_multi_threading": True}
                   if pcfg.actor_threads > 1 else {}),
            ),
            num_gpus=pcfg.num_gpus,
            num_cpus=pcfg.cpus_per_actor,
            zero_copy_batch=True,
        )
        # Parts of rows_per_part images: Ray Data bundles the actors' batches until a part is full, and a
        # CPU task encodes, writes and commits it, off the model's path.
        ds = ds.map_batches(
            write_parts,
            fn_kwargs={"out": run_dir, "outputs": list(outputs), "topk": pcfg.topk, "lock_token": lock_token},
            batch_size=rows_per_part,
            num_cpus=pcfg.write_cpus,
            zero_copy_batch=True,
        )
        progress = _Progress(len(todo), "probe", every=2.0, quiet=quiet)
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if first_batch is None:
                first_batch = (time.perf_counter(), len(out["image_id"]))
            progress.update(len(out["image_id"]), int((~out["ok"]).sum()))
            if len(out["peak_rss_mib"]):
                actor_rss = max(actor_rss, float(out["peak_rss_mib"].max()))

    t_stream_end = time.perf_counter()
    commits = run.read_commits()
    run.remove_uncommitted(set(commits["part"]))
    images = commits.drop_duplicates("image_id", keep="first").drop(columns=["part"])
    images = images.set_index("image_id").reindex(listing["image_id"])
    lost = images["status"].isna()
    if lost.any():
        raise RuntimeError(
            f"{int(lost.sum())} input(s) have no probe record after the run (e.g. image_id "
            f"{images.index[lost][:5].tolist()}); rerun with the same run id to resume"
        )
    images = images.reset_index()
    stored = plan.stored_listing["uri"]
    images["uri"] = stored.astype(object).where(stored.notna(), "").astype(str).to_numpy()
    write_parquet_atomic(pa.Table.from_pandas(images[IMAGES_SCHEMA.names], schema=IMAGES_SCHEMA, preserve_index=False),
                         run.images)
    n_ok = int((images["status"] == "ok").sum())
    n_failed = int((images["status"] == "failed").sum())
    if n_ok + n_failed != len(listing):
        raise RuntimeError(f"processed {n_ok} + failed {n_failed} != inputs {len(listing)}")
    for name in outputs:
        _merge_topk(run_dir, name, pcfg.topk)
    reasons = images.loc[images["status"] == "failed", "error"].fillna("unknown").str.split(":", n=1).str[0]
    failures = {str(k): int(v) for k, v in reasons.value_counts().sort_index().items()}
    layers_meta = {"layers": outputs, "model": model_kwargs, "image_size": size, "reduce": list(mcfg.reduce),
                   "topk": pcfg.topk, "clip": bool(pcfg.clip), "part_rows": rows_per_part}
    write_json_atomic(layers_meta, run.layers_json)
    seconds = time.perf_counter() - t0
    steady = None
    if first_batch is not None and t_stream_end > first_batch[0] and len(todo) > first_batch[1]:
        # Throughput once the pipeline is warm: excludes Ray's start-up and the actors' model load.
        steady = (len(todo) - first_batch[1]) / (t_stream_end - first_batch[0])
    say(f"probe: processed {n_ok:,} + failed {n_failed:,} = {n_ok + n_failed:,} inputs "
        f"(check: inputs = {len(listing):,}) in {seconds:.1f} s")
    return ProbeSummary(
        run_dir=run_dir, n_inputs=len(listing), n_ok=n_ok, n_failed=n_failed, layers=outputs, failures=failures,
        seconds=seconds, resumed=resumed, images_per_second=(len(todo) / seconds if seconds > 0 else 0.0),
        extra={"source": source, "image_size": size, "actor_peak_rss_mib": round(actor_rss, 1),
               "part_rows": rows_per_part,
               "steady_images_per_second": steady,
               # Where the wall time went: planning, stream start to first batch (actor start-up and
               # model load overlap the first decodes), the rest of the stream, and the final merge.
               "phases_s": {"plan": round(t_planned - t0, 3), "setup": round(t_stream - t_planned, 3),
                            "first_batch": round((first_batch[0] if first_batch else t_stream_end) - t_stream, 3),
                            "stream": round(t_stream_end - (first_batch[0] if first_batch else t_stream_end), 3),
                            "finish": round(time.perf_counter() - t_stream_end, 3)}},
    )
