"""The run registry: every audit writes ``ROOT/<model>/<run_id>/run.json``; list and pick runs from it.

The registry is nothing but that folder layout (local disk or ``s3://``), so listing it needs one
directory listing per model and one small read per run — never a scan of the runs' part files.
"""

from __future__ import annotations

import datetime as _dt
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from neuronscan.errors import InputError
from neuronscan.io import RunDir, RunInfoError, get_fs, is_remote, join, run_id_time

__all__ = ["list_runs", "latest_run", "RUN_COLUMNS"]

RUN_COLUMNS = ["model", "run_id", "status", "started", "finished", "n_images", "n_units", "n_concepts", "run_dir"]
"""Columns of `list_runs`."""

def _subdirs(uri: str) -> list[str]:
    """Names of the folders directly under ``uri`` (empty when it does not exist)."""
    fs, path = get_fs(uri)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    names = []
    for entry in entries:
        if entry.get("type") != "directory":
            continue
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        if name and not name.startswith((".", "_")):
            names.append(name)
    return sorted(names)


def _read_run_json(run_dir: str) -> dict | None:
    """``run_dir/run.json`` as a dict; None when there is none; ``{"status": "unreadable"}`` when broken."""
    try:
        return RunDir(run_dir).read_info()
    except RunInfoError:
        return {"status": "unreadable"}


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _row(model: str, run_id: str, run_dir: str, info: dict) -> dict:
    counts = info.get("counts") if isinstance(info.get("counts"), dict) else {}
    units = counts.get("units")
    n_images = next((_int(counts.get(k)) for k in ("scored_images", "ok", "images") if _int(counts.get(k)) is not None),
                    None)
    return {
        "model": model,
        "run_id": run_id,
        "status": str(info.get("status") or "unknown"),
        "started": info.get("started"),
        "finished": info.get("finished"),
        "n_images": n_images,
        "n_units": sum(_int(v) or 0 for v in units.values()) if isinstance(units, dict) else None,
        "n_concepts": _int(counts.get("concepts")),
        "run_dir": run_dir,
    }


def _when(run_id: str, started: Any) -> _dt.datetime | None:
    """When a run started: ``started`` from run.json, else the time in a generated run id."""
    if isinstance(started, str):
        try:
            when = _dt.datetime.fromisoformat(started)
            return when if when.tzinfo else when.replace(tzinfo=_dt.UTC)
        except ValueError:
            pass
    return run_id_time(run_id)


def _order_key(row: pd.Series) -> tuple:
    when = _when(row["run_id"], row["started"])
    # Runs with no known time sort before every dated run, then by id.
    return (when is not None, when or _dt.datetime.min.replace(tzinfo=_dt.UTC), row["run_id"])


def list_runs(root: str) -> pd.DataFrame:
    """Every run under a registry root ``ROOT/<model>/<run_id>/run.json``, or under one model folder.

    Args:
        root: the registry root (``run.out`` of the configs; local path or ``s3://bucket/prefix``), or a
            model folder ``ROOT/<model>``.

    Returns:
        One row per run, oldest first within each model, with columns `RUN_COLUMNS`: ``model``, ``run_id``
        (folder names), ``status`` (``running``/``complete``/…; ``unreadable`` for a broken run.json),
        ``started``/``finished`` (ISO strings), ``n_images`` (images scored), ``n_units`` (all layers),
        ``n_concepts`` (nullable integers) and ``run_dir`` (the run's path or URI). Empty when no run exists.

    Raises:
        InputError: ``root`` is a local path that does not exist.

    Example:
        >>> list_runs("s3://neuronscan-audits/runs")[["model", "run_id", "status"]]  # doctest: +SKIP
    """
    root = str(root).rstrip("/")
    fs, path = get_fs(root)
    if not is_remote(root) and not fs.isdir(path):
        raise InputError(f"run registry {root!r} is not a folder; pass run.out of your config (e.g. runs)")
    children = _subdirs(root)
    with ThreadPoolExecutor(max_workers=8) as pool:
        direct = dict(zip(children, pool.map(lambda c: _read_run_json(join(root, c)), children)))
        model_name = root.rsplit("/", 1)[-1].split("://")[-1] if is_remote(root) else Path(path).resolve().name
        rows = [_row(model_name, c, join(root, c), info) for c, info in direct.items() if info is not None]
        # Folders without run.json are model folders: ROOT/<model>/<run_id>/run.json.
        models = [c for c, info in direct.items() if info is None]
        nested = [(m, r) for m, runs in zip(models, pool.map(lambda m: _subdirs(join(root, m)), models)) for r in runs]
        infos = pool.map(lambda mr: _read_run_json(join(root, *mr)), nested)
        rows += [_row(m, r, join(root, m, r), info) for (m, r), info in zip(nested, infos) if info is not None]
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    for column in ("n_images", "n_units", "n_concepts"):
        frame[column] = pd.array(frame[column].tolist(), dtype="Int64")
    for column in ("model", "run_id", "status", "started", "finished", "run_dir"):
        frame[column] = frame[column].astype(object)
    if frame.empty:
        return frame
    keys = frame.apply(_order_key, axis=1)
    order = sorted(range(len(frame)), key=lambda i: (frame["model"].iloc[i], keys.iloc[i]))
    return frame.iloc[order].reset_index(drop=True)


def latest_run(root_or_model_dir: str, *, before: str | None = None, status: str | None = "complete") -> str | None:
    """The newest run of one model (by ``started``, else the time in its run id), or None.

    ``neuronscan diff --latest ROOT/<model>`` compares ``latest_run(d)`` with
    ``latest_run(d, before=latest_run(d))``: the newest complete run and the complete run before it.

    Args:
        root_or_model_dir: a model folder ``ROOT/<model>``, or a registry root holding a single model.
        before: a run id or run directory: return the newest run that started before it.
        status: only runs with this status (``complete`` by default; None for any).

    Returns:
        The run directory (path or URI), or None when no run qualifies.

    Raises:
        InputError: the folder holds runs of several models, or ``before`` names no run there.

    Example:
        >>> new = latest_run("s3://neuronscan-audits/runs/resnet50")  # doctest: +SKIP
        >>> old = latest_run("s3://neuronscan-audits/runs/resnet50", before=new)  # doctest: +SKIP
    """
    runs = list_runs(root_or_model_dir)
    models = sorted(set(runs["model"]))
    if len(models) > 1:
        root = str(root_or_model_dir).rstrip("/")
        raise InputError(
            f"{root!r} holds runs of {len(models)} models ({', '.join(models[:8])}{', …' if len(models) > 8 else ''}); "
            f"pass one model's folder, e.g. {join(root, models[0])}"
        )
    keys = runs.apply(_order_key, axis=1) if len(runs) else pd.Series(dtype=object)
    keep = pd.Series(True, index=runs.index)
    if before is not None:
        name = str(before).rstrip("/").rsplit("/", 1)[-1]
        hit = runs.index[runs["run_id"] == name]
        if not len(hit):
            shown = ", ".join(runs["run_id"].tail(5))
            raise InputError(f"no run {name!r} under {str(root_or_model_dir)!r}; newest runs there: {shown or 'none'}")
        limit = keys.loc[hit[0]]
        keep &= keys.map(lambda k: k < limit)
    if status is not None:
        keep &= runs["status"] == status
    candidates = runs[keep]
    if candidates.empty:
        return None
    newest = max(candidates.index, key=lambda i: keys.loc[i])
    return str(runs.loc[newest, "run_dir"])
