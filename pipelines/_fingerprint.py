"""A run's fingerprint: everything that determines its tables, recorded in ``run.json`` and checked on resume.

A resume (the same run id again) appends to the parts already written; if the model, its weights,
layers, statistics, image size, normalisation or inputs changed in between, the tables would mix two
runs and still look whole. So the probe records `fingerprint` before it writes a part, and a later
start of the same run id compares: any difference is refused with the differing keys named.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd

from neuronscan.errors import RunMismatchError

__all__ = ["fingerprint", "differences", "check_fingerprint", "state_sha256", "frame_sha256"]


def state_sha256(module) -> str:
    """SHA-256 of a module's parameters and buffers (names, dtypes, shapes and bytes, in name order).

    The weights themselves, whatever file or tag they came from: a checkpoint moved to another path
    has the same hash, a retrained one with the same file name does not.
    """
    import torch

    h = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}={t!r};".encode())
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def frame_sha256(frame: pd.DataFrame, columns: list[str]) -> str:
    """SHA-256 of a frame's columns (ints as little-endian int64, lists and strings as text), row order kept."""
    h = hashlib.sha256()
    h.update(f"{len(frame)};".encode())
    for col in columns:
        h.update(f"|{col}|".encode())
        values = frame[col]
        if pd.api.types.is_integer_dtype(values):
            h.update(np.ascontiguousarray(values.to_numpy(), dtype="<i8").tobytes())
            continue
        texts = []
        for v in values.tolist():
            if isinstance(v, (list, tuple, np.ndarray)):
                texts.append("\x1f".join(str(x) for x in v))
            else:
                texts.append("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
        h.update("\x00".join(texts).encode())
    return h.hexdigest()


def fingerprint(cfg, plan, *, version: str) -> dict[str, Any]:
    """The fingerprint of a planned probe (`pipelines.probe.ProbePlan`): flat keys → JSON values."""
    mk = plan.model_kwargs
    clip = cfg.probe.clip.model_dump(mode="json", include={"model", "pretrained", "checkpoint"}) if cfg.probe.clip \
        else None
    hierarchy = pd.DataFrame(plan.hierarchy, columns=["concept", "parent"])
    return {
        "neuronscan": version,
        "model.name": mk["name"],
        "model.source": mk["source"],
        "model.weights": mk["weights"],
        "model.state_sha256": plan.state_sha256,
        "model.layers": list(plan.layers),
        "model.reduce": list(cfg.model.reduce),
        "model.mean": [float(x) for x in plan.mean],
        "model.std": [float(x) for x in plan.std],
        "data.image_size": int(plan.image_size),
        "data.resize": cfg.data.resize,
        "data.max_pixels": cfg.data.max_pixels,
        "inputs.count": int(len(plan.listing)),
        "inputs.sha256": frame_sha256(plan.stored_listing, ["image_id", "uri", "concepts"]),
        "labels.sha256": frame_sha256(plan.labels, ["image_id", "concept"]),
        "hierarchy.sha256": frame_sha256(hierarchy, ["concept", "parent"]),
        "probe.topk": int(cfg.probe.topk),
        "probe.clip": clip,
    }


def _show(value: Any) -> str:
    text = str(value)
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"  # a hash: enough to tell two apart
    return text if len(text) <= 80 else text[:79] + "…"


def differences(recorded: dict, now: dict) -> list[str]:
    """``key: recorded → now`` for every key whose value differs (keys only one side has count too)."""
    out = []
    for key in list(recorded) + [k for k in now if k not in recorded]:
        a, b = recorded.get(key, "<not recorded>"), now.get(key, "<not recorded>")
        if a != b:
            out.append(f"{key}: {_show(a)} → {_show(b)}")
    return out


def check_fingerprint(info: dict | None, now: dict, *, root: str, run_id: str) -> None:
    """Refuse to continue a run whose recorded fingerprint differs from ``now``.

    Raises:
        RunMismatchError: names the differing keys and the two ways out (a new run id, or ``--restart``).
    """
    recorded = (info or {}).get("fingerprint")
    if not isinstance(recorded, dict):
        return
    diffs = differences(recorded, now)
    if not diffs:
        return
    listed = "\n".join(f"  - {d}" for d in diffs)
    raise RunMismatchError(
        f"run {run_id} ({root}) was started with other settings; continuing it would mix two runs in one table:\n"
        f"{listed}\n"
        f"Either give a new run id (--run-id NEW, or leave run.run_id unset for a fresh one), or start this "
        f"run again from nothing with --restart (deletes its outputs)."
    )
