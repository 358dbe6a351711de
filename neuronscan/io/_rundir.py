"""The run directory: every path of a run, its committed parts, and ``run.json``.

A run lives in ``OUT/<model>/<run_id>/`` (a local path or an ``s3://`` URI)::

    run.json                               config, fingerprint, versions, counts, timings, status (RunDir.info_uri)
    run.lock                               who is writing the run (neuronscan.io.RunLock)
    inputs.parquet  labels.parquet  hierarchy.parquet   the planned inputs (written before probing)
    probe/source.json  probe/layers.json   where the inputs came from; the probed layers
    probe/commits/<part>.parquet           one per committed part: its images and their status
    activations/<layer>/part-<part>.parquet   image_id + u00000… float32
    activations/<layer>@<name>/part-<part>.parquet   a derived layer (an explainer's components), same schema
    derived/commits/<part>.parquet         one per committed part of a derived layer: its layer and image ids
    explain/<layer>@<name>/                an explainer's checkpoints, metrics.json, README.md
    topk/_parts/<layer>/part-<part>.parquet   top-M entries of one batch (merged at the end)
    topk/<layer>.parquet                   per unit its top images
    clip/part-<part>.parquet               CLIP image embeddings (when configured)
    images.parquet                         every input exactly once
    neuron_concepts.parquet  neurons.parquet  clip_labels/<layer>.parquet   the score stage's tables
    report/index.html                      the report
    diff/                                  diff_units/diff_concepts.parquet, diff.json against an earlier run

A part file counts only once ``probe/commits/<part>.parquet`` exists — or, for a derived layer written after
the probe (``explain-train``), ``derived/commits/<part>.parquet``: `RunDir.committed_parts` is the one listing of
committed batches that the probe, the score stage and the diff read. Every other module
asks this one for paths instead of joining strings, so a new stage adds its files here.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from neuronscan.errors import InputError
from neuronscan.io._fs import (
    get_fs,
    is_remote,
    join,
    layer_dirname,
    layer_from_dirname,
    read_parquet,
    write_json_atomic,
)
from neuronscan.io._schemas import is_unit_column

__all__ = [
    "RunDir",
    "LayerParts",
    "RunInfoError",
    "PartFileError",
    "list_layer_parts",
    "read_part",
    "new_run_id",
    "run_id_time",
    "model_folder",
    "run_alpha",
    "DERIVED_COMMIT_SCHEMA",
    "is_derived_layer",
]

RUN_ID_TIME = "%Y%m%dT%H%M%SZ"
"""The UTC time at the start of a generated run id (``20260102T020000Z-a1b2c3``)."""

_PART_PREFIX, _PARQUET = "part-", ".parquet"

DERIVED_COMMIT_SCHEMA = pa.schema([("layer", pa.string()), ("image_id", pa.int64())])
"""``derived/commits/<part>.parquet``: the images of one committed part of a derived layer (``<layer>@<name>``)."""


def is_derived_layer(layer: str) -> bool:
    """Whether a layer name is a derived layer (``conv4:mean@sae``: components learnt from a probed layer)."""
    return "@" in str(layer)


class RunInfoError(InputError):
    """``run.json`` exists but is not a readable JSON object."""


class PartFileError(InputError):
    """A part file is unreadable, fails its page checksums, or holds columns of the wrong type; names the file."""


def _redo_hint(uri: str) -> str:
    """How to redo the batch of a probe's part file (``RUN/activations/<layer>/part-<id>.parquet``)."""
    m = re.search(r"^(.*)/activations/([^/]+)/part-([^/]+)\.parquet$", str(uri))
    if not m:
        return "write it again"
    if is_derived_layer(m.group(2)):
        return (f"delete {m.group(1)}/derived/commits/{m.group(3)}.parquet and rerun neuronscan explain-train to "
                "write the derived layer again")
    return (f"delete {m.group(1)}/probe/commits/{m.group(3)}.parquet and rerun the probe with the same run id "
            "to redo its batch")


def read_part(uri: str, columns: list[str] | None = None) -> pa.Table:
    """Read columns of a part file, verifying its page checksums.

    Raises:
        PartFileError: the file is truncated, not Parquet, lacks a column or fails a checksum.
    """
    try:
        return read_parquet(uri, columns)
    except (OSError, ValueError, pa.ArrowException) as exc:  # ArrowInvalid is a ValueError, IOError an OSError
        raise PartFileError(f"part file {uri!r} cannot be read ({_short(exc)}); {_redo_hint(uri)}") from exc


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def new_run_id() -> str:
    """A unique run id: the UTC time and a random suffix, ``20260102T020000Z-a1b2c3``."""
    return _dt.datetime.now(_dt.UTC).strftime(RUN_ID_TIME) + "-" + uuid.uuid4().hex[:6]


def run_id_time(run_id: str) -> _dt.datetime | None:
    """The time in a generated run id (UTC), or None for a run id a user chose."""
    try:
        return _dt.datetime.strptime(run_id.split("-", 1)[0], RUN_ID_TIME).replace(tzinfo=_dt.UTC)
    except ValueError:
        return None


def model_folder(model_name: str) -> str:
    """The registry folder of a model: its name made file-safe (a model file counts by its file name)."""
    name = model_name.rsplit("/", 1)[-1] if model_name.endswith((".pt2", ".ts")) else model_name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _number_in(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1:
        return float(value)
    return None


def run_alpha(info: dict) -> float | None:
    """The FDR level a run was scored at, from its ``run.json`` (None when it gives none).

    The score stage writes it once, as ``score.alpha``. Runs written before that key existed gave it
    at the top level, under ``score.fdr`` or only in the config; those are read in that order.
    """
    score = info.get("score") if isinstance(info.get("score"), dict) else {}
    fdr = score.get("fdr") if isinstance(score.get("fdr"), dict) else {}
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    config_score = config.get("score") if isinstance(config.get("score"), dict) else {}
    for value in (score.get("alpha"), info.get("alpha"), fdr.get("alpha"), config_score.get("alpha")):
        if _number_in(value) is not None:
            return float(value)
    return None


@dataclass
class LayerParts:
    """A layer's part files (URIs) and its unit columns, in unit order."""

    layer: str
    files: list[str]
    units: list[str]


def _part_id(name: str) -> str | None:
    """``part-<id>.parquet`` → ``<id>``; None for any other name (temp files, hidden files)."""
    if name.startswith(_PART_PREFIX) and name.endswith(_PARQUET):
        return name[len(_PART_PREFIX) : -len(_PARQUET)]
    return None


def _names(uri: str) -> list[str]:
    fs, path = get_fs(uri)
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def list_layer_parts(activations_dir: str, *, committed: set[str] | None = None) -> list[LayerParts]:
    """Every ``<layer>/part-*.parquet`` under ``activations_dir`` and each layer's unit columns.

    Args:
        committed: part ids to keep (`RunDir.committed_parts`); None keeps every part (activations made
            elsewhere, or a run without commit records).

    Raises:
        InputError: the folder is missing or holds no layers, or a part file lacks ``image_id`` or unit
            columns.
    """
    fs, root = get_fs(activations_dir)
    if not fs.exists(root) or not fs.isdir(root):
        raise InputError(f"activations folder {activations_dir!r} does not exist")
    layers = []
    for sub in sorted(fs.ls(root, detail=False)):
        name = sub.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith((".", "_")) or not fs.isdir(sub):
            continue
        files = []
        for f in sorted(fs.ls(sub, detail=False)):
            part = _part_id(f.rsplit("/", 1)[-1])
            if part is not None and (committed is None or part in committed):
                files.append(f)
        if not files:
            continue
        if is_remote(activations_dir):  # object-store listings drop the scheme; readers need it back
            files = [fs.unstrip_protocol(f) for f in files]
        layers.append(LayerParts(layer_from_dirname(name), files, _unit_columns_of(files)))
    if not layers:
        raise InputError(f"no <layer>/part-*.parquet files under {activations_dir!r}")
    return layers


def _read_schema(uri: str):
    fs, path = get_fs(uri)
    try:
        with fs.open(path, "rb") as fh:
            return pq.read_schema(fh)
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) on a broken footer
        raise PartFileError(f"part file {uri!r} cannot be read as Parquet ({_short(exc)}); {_redo_hint(uri)}") from exc


def _check_types(uri: str, schema: pa.Schema, units: list[str]) -> None:
    """``image_id`` must be an integer column and every unit column a float one."""
    id_type = schema.field("image_id").type
    if not pa.types.is_integer(id_type):
        raise PartFileError(f"part file {uri!r}: image_id is {id_type}, not an integer column (int64)")
    bad = [n for n in units if not pa.types.is_floating(schema.field(n).type)]
    if bad:
        raise PartFileError(f"part file {uri!r}: unit column(s) {bad[:5]} are {schema.field(bad[0]).type}, "
                            "not float32/float64")


def _unit_columns_of(files: list[str]) -> list[str]:
    """The unit columns every part file of a layer shares, in file order; an error names any file that differs.

    Units are identified by column name (``u00042`` is unit 42), so all parts of a layer must hold the same
    unit columns: a part missing one would otherwise shift every unit after it.
    """
    with ThreadPoolExecutor(max_workers=8) as pool:
        schemas = list(pool.map(_read_schema, files))
    first = schemas[0]
    if "image_id" not in first.names:
        raise InputError(f"{files[0]!r} has no image_id column; found {first.names[:5]}…")
    units = [n for n in first.names if is_unit_column(n)]
    if not units:
        raise InputError(f"{files[0]!r} has no unit columns (u00000, u00001, …)")
    _check_types(files[0], first, units)
    for uri, schema in zip(files[1:], schemas[1:]):
        other = [n for n in schema.names if is_unit_column(n)]
        if "image_id" not in schema.names or set(other) != set(units):
            missing = sorted(set(units) - set(other))[:5]
            extra = sorted(set(other) - set(units))[:5]
            detail = "no image_id column" if "image_id" not in schema.names else (
                f"missing {missing or 'none'}, extra {extra or 'none'}")
            raise InputError(
                f"part files of one layer disagree on their columns: {uri!r} has {len(other):,} unit columns "
                f"and {files[0]!r} has {len(units):,} ({detail}); every part of a layer must hold the same units"
            )
        _check_types(uri, schema, units)
    return units


class RunDir:
    """One run directory ``OUT/<model>/<run_id>`` (local or ``s3://``): its paths, parts and ``run.json``.

    Example:
        >>> run = RunDir("runs/shapesnet/demo")
        >>> run.activations("conv4:mean")
        'runs/shapesnet/demo/activations/conv4__mean'
        >>> run.topk("conv4:mean")
        'runs/shapesnet/demo/topk/conv4__mean.parquet'
    """

    def __init__(self, root: str):
        self.root = str(root).rstrip("/")

    def __repr__(self) -> str:
        return f"RunDir({self.root!r})"

    def __str__(self) -> str:
        return self.root

    @classmethod
    def for_run(cls, out: str, model_name: str, run_id: str) -> RunDir:
        """The run directory ``out/<model folder>/<run_id>``."""
        return cls(join(out, model_folder(model_name), run_id))

    @property
    def run_id(self) -> str:
        return self.root.rsplit("/", 1)[-1]

    @property
    def is_remote(self) -> bool:
        return is_remote(self.root)

    def path(self, *parts: str) -> str:
        """Any path under the run (prefer the named ones below)."""
        return join(self.root, *parts)

    # -- files -----------------------------------------------------------------------------------------
    @property
    def info_uri(self) -> str:
        return self.path("run.json")

    @property
    def inputs(self) -> str:
        return self.path("inputs.parquet")

    @property
    def labels(self) -> str:
        return self.path("labels.parquet")

    @property
    def hierarchy(self) -> str:
        return self.path("hierarchy.parquet")

    @property
    def images(self) -> str:
        return self.path("images.parquet")

    @property
    def source(self) -> str:
        return self.path("probe", "source.json")

    @property
    def layers_json(self) -> str:
        return self.path("probe", "layers.json")

    @property
    def commits_dir(self) -> str:
        return self.path("probe", "commits")

    def commit(self, part: str) -> str:
        return self.path("probe", "commits", f"{part}{_PARQUET}")

    @property
    def derived_commits_dir(self) -> str:
        return self.path("derived", "commits")

    def derived_commit(self, part: str) -> str:
        """The commit record of one part of a derived layer (written after its part files)."""
        return self.path("derived", "commits", f"{part}{_PARQUET}")

    def explain(self, layer: str) -> str:
        """``explain/<layer>@<name>/``: one explainer's checkpoints, ``metrics.json`` and ``README.md``."""
        return self.path("explain", layer_dirname(layer))

    @property
    def activations_dir(self) -> str:
        return self.path("activations")

    def activations(self, layer: str) -> str:
        return self.path("activations", layer_dirname(layer))

    def activation_part(self, layer: str, part: str) -> str:
        return self.path("activations", layer_dirname(layer), f"{_PART_PREFIX}{part}{_PARQUET}")

    def topk(self, layer: str) -> str:
        return self.path("topk", f"{layer_dirname(layer)}{_PARQUET}")

    def topk_parts(self, layer: str) -> str:
        return self.path("topk", "_parts", layer_dirname(layer))

    def topk_part(self, layer: str, part: str) -> str:
        return join(self.topk_parts(layer), f"{_PART_PREFIX}{part}{_PARQUET}")

    @property
    def clip(self) -> str:
        return self.path("clip")

    def clip_part(self, part: str) -> str:
        return self.path("clip", f"{_PART_PREFIX}{part}{_PARQUET}")

    @property
    def neuron_concepts(self) -> str:
        return self.path("neuron_concepts.parquet")

    @property
    def neurons(self) -> str:
        return self.path("neurons.parquet")

    def clip_labels(self, layer: str) -> str:
        return self.path("clip_labels", f"{layer_dirname(layer)}{_PARQUET}")

    @property
    def report(self) -> str:
        return self.path("report")

    @property
    def diff(self) -> str:
        """Where ``neuronscan diff`` writes by default when this run is the new one (B)."""
        return self.path("diff")

    def exists(self, uri: str | None = None) -> bool:
        """Whether the run directory (or one of its paths) exists."""
        fs, path = get_fs(uri or self.root)
        return fs.exists(path)

    @property
    def lock(self) -> str:
        """``run.lock``: who is writing the run (see `neuronscan.io.RunLock`)."""
        return self.path("run.lock")

    def clear(self) -> int:
        """Delete every file of the run but its lock (``--restart``); return how many were deleted."""
        fs, root = get_fs(self.root)
        if not fs.exists(root):
            return 0
        lock = get_fs(self.lock)[1]
        files = [f for f in fs.find(root, withdirs=False) if f.rstrip("/") != lock]
        if files:
            fs.rm(files)
        for sub in sorted(fs.ls(root, detail=False), reverse=True):  # leftover empty folders (local)
            if sub.rstrip("/") != lock and fs.isdir(sub):
                fs.rm(sub, recursive=True)
        return len(files)

    # -- committed parts -------------------------------------------------------------------------------
    def committed_parts(self) -> set[str] | None:
        """Ids of committed parts — probe batches and parts of derived layers — or None when the run has no probe
        commit records (all parts count)."""
        fs, path = get_fs(self.commits_dir)
        if not fs.exists(path):
            return None
        names = _names(self.commits_dir)
        probed = {n[: -len(_PARQUET)] for n in names if n.endswith(_PARQUET) and not n.startswith(".")}
        return probed | self.derived_committed_parts()

    def derived_committed_parts(self, layer: str | None = None) -> set[str]:
        """Ids of the committed parts of derived layers (of ``layer`` only, when given: reads the records)."""
        names = [n for n in _names(self.derived_commits_dir) if n.endswith(_PARQUET) and not n.startswith(".")]
        if layer is None:
            return {n[: -len(_PARQUET)] for n in names}
        out = set()
        for n in names:
            layers = read_parquet(join(self.derived_commits_dir, n), columns=["layer"]).column("layer").unique()
            if layer in layers.to_pylist():
                out.add(n[: -len(_PARQUET)])
        return out

    def remove_derived(self, layer: str) -> int:
        """Delete a derived layer: its commit records first (its parts stop counting at once), then its part
        files, top-M parts and ``topk/<layer>.parquet``. Returns how many files went."""
        if not is_derived_layer(layer):
            raise ValueError(f"{layer!r} is not a derived layer (<layer>@<name>)")
        removed = 0
        for part in sorted(self.derived_committed_parts(layer)):
            fs, path = get_fs(self.derived_commit(part))
            fs.rm(path)
            removed += 1
        for folder in (self.activations(layer), self.topk_parts(layer)):
            fs, path = get_fs(folder)
            if fs.exists(path):
                files = fs.find(path)
                if files:
                    fs.rm(files)
                removed += len(files)
        fs, path = get_fs(self.topk(layer))
        if fs.exists(path):
            fs.rm(path)
            removed += 1
        return removed

    def read_commits(self) -> pd.DataFrame:
        """Every commit record: ``image_id, uri, status, error`` and ``part`` (the batch it belongs to)."""
        names = [n for n in _names(self.commits_dir) if n.endswith(_PARQUET) and not n.startswith(".")]
        if not names:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                                 [("image_id", "int64"), ("uri", "str"), ("status", "str"), ("error", "str"),
                                  ("part", "str")]})
        frames = []
        for name in names:
            df = read_parquet(join(self.commits_dir, name)).to_pandas()
            df["part"] = name[: -len(_PARQUET)]
            frames.append(df)
        return pd.concat(frames, ignore_index=True)

    def remove_uncommitted(self, committed: set[str]) -> int:
        """Delete part files whose batch never committed, and stale temp files; return how many.

        ``committed`` holds the probe's batches; the committed parts of derived layers always count too.
        """
        committed = set(committed) | self.derived_committed_parts()
        removed = 0
        for sub in (self.activations_dir, self.path("topk", "_parts"), self.clip):
            fs, path = get_fs(sub)
            if not fs.exists(path):
                continue
            for f in fs.find(path):
                name = f.rsplit("/", 1)[-1]
                part = _part_id(name)
                if name.startswith(".tmp-") or (part is not None and part not in committed):
                    fs.rm(f)
                    removed += 1
        return removed

    def layer_parts(self) -> list[LayerParts]:
        """Every probed layer with its committed part files (see `list_layer_parts`)."""
        return list_layer_parts(self.activations_dir, committed=self.committed_parts())

    def part_files(self, folder: str) -> list[str]:
        """Sorted ``part-*.parquet`` file names directly in ``folder`` (no temp or hidden files)."""
        return [n for n in _names(folder) if _part_id(n) is not None]

    def committed_part_files(self, folder: str) -> list[str]:
        """`part_files` of ``folder`` whose batch committed (all of them in a run without commit records)."""
        committed = self.committed_parts()
        return [n for n in self.part_files(folder) if committed is None or _part_id(n) in committed]

    def committed_layer_files(self, layer: str) -> list[str]:
        """Committed ``part-*.parquet`` URIs of one layer.

        Raises:
            InputError: the run has no activations for ``layer``, or none of them committed.
        """
        uri = self.activations(layer)
        fs, path = get_fs(uri)
        if not fs.isdir(path):
            have = [layer_from_dirname(n) for n in _names(self.activations_dir)]
            hint = f"; layers there: {', '.join(have)}" if have else ""
            raise InputError(f"run {self.root!r} has no activations for layer {layer!r} (looked in {uri}){hint}")
        files = [join(uri, n) for n in self.committed_part_files(uri)]
        if not files:
            raise InputError(f"layer {layer!r} of run {self.root!r} has no committed part-*.parquet files")
        return files

    # -- run.json --------------------------------------------------------------------------------------
    def read_info(self) -> dict | None:
        """``run.json`` as a dict, or None when the run has none.

        Raises:
            RunInfoError: the file exists but is not a JSON object.
        """
        fs, path = get_fs(self.info_uri)
        try:
            raw = fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError):
            return None
        try:
            info = json.loads(raw)
        except ValueError as exc:
            raise RunInfoError(f"{self.info_uri} cannot be read: {exc}") from exc
        if not isinstance(info, dict):
            raise RunInfoError(f"{self.info_uri} holds a {type(info).__name__}, not an object")
        return info

    def update_info(self, patch: dict[str, Any]) -> dict:
        """Merge ``patch`` into ``run.json`` (top-level keys; dict values merged one level deep).

        Every URI in it loses its userinfo (`neuronscan.io.scrub_obj`): ``run.json`` never holds a credential.
        """
        from neuronscan.io._redact import scrub_obj

        patch = scrub_obj(patch, env=False)
        current = self.read_info() or {}
        for key, value in patch.items():
            if isinstance(value, dict) and isinstance(current.get(key), dict):
                current[key] = {**current[key], **value}
            else:
                current[key] = value
        write_json_atomic(current, self.info_uri)
        return current

    def alpha(self) -> float | None:
        """The FDR level the run was scored at (`run_alpha` of its ``run.json``), or None."""
        info = self.read_info()
        return run_alpha(info) if info else None
