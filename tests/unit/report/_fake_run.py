"""Synthetic run directories for the report tests and benchmark: every file of the run contract, real PNGs.

The values are random but self-consistent: ``neurons.parquet`` is derived from ``neuron_concepts.parquet``
(best concept = highest AUC, ``n_significant`` = concepts with q <= alpha), q-values are Benjamini-Hochberg
over all p-values, and each unit has a planted best concept so the report has something to show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw
from scipy.special import ndtr
from scipy.stats import false_discovery_control

from neuronscan.io import layer_dirname

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'

_BASE_CONCEPTS = {
    # concept: depth in a small hierarchy (object > shape/colour/texture > leaves)
    "object": 0,
    "round": 1,
    "angular": 1,
    "warm": 1,
    "cool": 1,
    "circle": 2,
    "square": 2,
    "triangle": 2,
    "red": 2,
    "blue": 2,
    "stripes": 2,
    "dots": 2,
    XSS_SCRIPT: 2,
    XSS_IMG: 2,
}

_COLOURS = [(220, 40, 40), (40, 90, 220), (40, 170, 60), (240, 190, 30), (150, 60, 190), (30, 30, 30)]


@dataclass
class FakeRun:
    """What `write_fake_run` wrote: the run directory and the tables, as written."""

    run_dir: Path
    image_dir: Path
    layers: list[str]
    concepts: list[str]
    images: pd.DataFrame
    neuron_concepts: pd.DataFrame
    neurons: pd.DataFrame
    topk: dict[str, pd.DataFrame] = field(default_factory=dict)
    alpha: float = 0.05


def write_fake_run(
    root: str | Path,
    *,
    layers: dict[str, int] | None = None,
    n_concepts: int | None = None,
    n_images: int = 40,
    n_failed: int = 3,
    n_missing_files: int = 1,
    top_m: int = 10,
    image_size: tuple[int, int] = (48, 40),
    with_depth: bool = True,
    with_clip_score: bool = True,
    drop_neuron_columns: tuple[str, ...] = (),
    minimal_run_json: bool = False,
    run_id: str = "fake-run-0001",
    model_name: str = "shapes_cnn",
    seed: int = 0,
) -> FakeRun:
    """Write a complete synthetic run under ``root/run`` with its images under ``root/images``.

    Args:
        root: folder to write into (created).
        layers: layer name -> number of units; default ``{"conv2": 60, "conv4:mean": 30}``.
        n_concepts: number of concepts; the first are the fixed hierarchy names (including two
            HTML-injection strings), the rest ``concept_NNN``. Default: only the fixed names.
        n_images: probe images; the last ``n_failed`` have status ``failed`` (their files are corrupt),
            and ``n_missing_files`` ok images have no file on disk (the report must tolerate both).
        top_m: top images stored per unit in ``topk/<layer>.parquet``.
        image_size: (width, height) of the PNGs; not square on purpose.
        with_depth, with_clip_score: write the optional ``neuron_concepts`` columns.
        drop_neuron_columns: columns left out of ``neurons.parquet`` (to test lenient reading).
        minimal_run_json: write a ``run.json`` with only ``run_id``.
        run_id, model_name: written to ``run.json`` (tests put markup in them).
        seed: random seed; the same seed writes the same run.

    Returns:
        A `FakeRun` with the written tables.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    run_dir = root / "run"
    image_dir = root / "images"
    (run_dir / "topk").mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    layers = dict(layers) if layers is not None else {"conv2": 60, "conv4:mean": 30}
    alpha = 0.05

    names = list(_BASE_CONCEPTS)
    if n_concepts is not None:
        names = names[:n_concepts] + [f"concept_{i:03d}" for i in range(len(names), n_concepts)]
    depth = {c: _BASE_CONCEPTS.get(c, 2 + i % 2) for i, c in enumerate(names)}

    images = _write_images(rng, image_dir, n_images, n_failed, n_missing_files, image_size)
    _write_table(images, run_dir / "images.parquet", _IMAGE_TYPES)
    n_ok = int((images["status"] == "ok").sum())
    if n_ok < 2:
        raise ValueError(f"a fake run needs at least 2 ok images, got {n_ok}; raise n_images")
    n_pos = rng.integers(1, n_ok // 2 + 1, size=len(names))

    frames = []
    for li, (layer, n_units) in enumerate(layers.items()):
        units = np.repeat(np.arange(n_units, dtype=np.int32), len(names))
        concept_idx = np.tile(np.arange(len(names)), n_units)
        auc = rng.uniform(0.3, 0.72, size=units.size)
        planted = (np.arange(n_units) + 3 * li) % len(names)
        auc[np.arange(n_units) * len(names) + planted] = rng.uniform(0.8, 0.99, size=n_units)
        dead = np.arange(n_units) % 17 == 5
        auc[np.repeat(dead, len(names))] = 0.5
        pos = n_pos[concept_idx]
        neg = n_ok - pos
        # Normal approximation of Mann-Whitney U: enough to give p-values that track the AUC.
        z = (auc - 0.5) * pos * neg / np.sqrt(pos * neg * (n_ok + 1) / 12.0)
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "unit": units,
                    "concept": [names[i] for i in concept_idx],
                    "n_pos": pos.astype(np.int64),
                    "n_neg": neg.astype(np.int64),
                    "auc": auc,
                    "auprc": np.clip(auc * pos / n_ok + rng.uniform(0, 0.2, size=units.size), 0, 1),
                    "p_value": ndtr(-z),
                    "depth": np.array([depth[names[i]] for i in concept_idx], dtype=np.int16),
                    "clip_score": rng.normal(0, 1, size=units.size),
                }
            )
        )
    nc = pd.concat(frames, ignore_index=True)
    nc["q_value"] = false_discovery_control(nc["p_value"].to_numpy(), method="bh")
    columns = ["layer", "unit", "concept", "n_pos", "n_neg", "auc", "auprc", "p_value", "q_value"]
    columns += ["depth"] * with_depth + ["clip_score"] * with_clip_score
    nc = nc[columns]
    _write_table(nc, run_dir / "neuron_concepts.parquet", _NC_TYPES)

    neurons = _neurons_from(nc, names, alpha, rng)
    neurons = neurons.drop(columns=list(drop_neuron_columns))
    _write_table(neurons, run_dir / "neurons.parquet", _NEURON_TYPES)

    topk = {}
    ids = images["image_id"].to_numpy()
    for layer, n_units in layers.items():
        spatial = not layer.endswith(":mean")
        rows = []
        for unit in range(n_units):
            picked = rng.choice(ids, size=min(top_m, len(ids)), replace=False)
            values = np.sort(rng.gamma(2.0, 1.5, size=len(picked)))[::-1]
            for rank, (image_id, value) in enumerate(zip(picked, values)):
                loc = rng.uniform(0, 1, size=2) if spatial else (np.nan, np.nan)
                rows.append((unit, rank, int(image_id), value, loc[0], loc[1]))
        frame = pd.DataFrame(rows, columns=["unit", "rank", "image_id", "value", "loc_y", "loc_x"])
        _write_table(frame, run_dir / "topk" / f"{layer_dirname(layer)}.parquet", _TOPK_TYPES)
        topk[layer] = frame

    info: dict = {"run_id": run_id}
    if not minimal_run_json:
        info.update(
            {
                "model": {"name": model_name, "weights": "demo/shapes_cnn.pt", "params": 123456},
                "data": {"source": "shapes_world", "n_images": n_images, "resize": "shorter_center_crop"},
                "counts": {
                    "images": n_images,
                    "ok": n_ok,
                    "failed": n_images - n_ok,
                    "concepts": len(names),
                    "units": dict(layers),
                },
                "timings": {"probe_s": 12.5, "score_s": 3.25, "report_s": 0.8},
                "failures": {"corrupt": n_failed} if n_failed else {},
                "alpha": alpha,
                "versions": {"neuronscan": "0.1.0"},
            }
        )
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))
    return FakeRun(run_dir, image_dir, list(layers), names, images, nc, neurons, topk, alpha)


def write_fake_diff(fake: FakeRun, out_dir: str | Path, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``diff_units.parquet`` and ``diff_concepts.parquet`` comparing ``fake`` with a perturbed copy."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    a = fake.neurons
    flip = rng.uniform(size=len(a)) < 0.3
    other = rng.choice(fake.concepts, size=len(a))
    best_b = np.where(flip, other, a["best_concept"].to_numpy())
    auc_b = np.clip(a["best_auc"].to_numpy() + rng.normal(0, 0.05, size=len(a)), 0, 1)
    units = pd.DataFrame(
        {
            "layer": a["layer"],
            "unit": a["unit"].astype(np.int32),
            "best_concept_a": a["best_concept"],
            "best_concept_b": best_b,
            "auc_a": a["best_auc"],
            "auc_b": auc_b,
            "delta_auc": auc_b - a["best_auc"].to_numpy(),
            "label_changed": best_b != a["best_concept"].to_numpy(),
            "gained": [[str(b)] if f else [] for b, f in zip(best_b, flip)],
            "lost": [[str(x)] if f else [] for x, f in zip(a["best_concept"], flip)],
        }
    )
    per_a = a.groupby("best_concept").agg(n=("unit", "size"), best=("best_auc", "max"))
    per_b = units.groupby("best_concept_b").agg(n=("unit", "size"), best=("auc_b", "max"))
    concepts = pd.DataFrame({"concept": fake.concepts})
    concepts["n_units_a"] = concepts["concept"].map(per_a["n"]).fillna(0).astype(np.int64)
    concepts["n_units_b"] = concepts["concept"].map(per_b["n"]).fillna(0).astype(np.int64)
    concepts["best_auc_a"] = concepts["concept"].map(per_a["best"]).astype(float)
    concepts["best_auc_b"] = concepts["concept"].map(per_b["best"]).astype(float)
    pq.write_table(pa.Table.from_pandas(units, preserve_index=False), out_dir / "diff_units.parquet")
    pq.write_table(pa.Table.from_pandas(concepts, preserve_index=False), out_dir / "diff_concepts.parquet")
    return units, concepts


_IMAGE_TYPES = {"image_id": pa.int64(), "uri": pa.string(), "status": pa.string(), "error": pa.string()}
_NC_TYPES = {
    "layer": pa.string(),
    "unit": pa.int32(),
    "concept": pa.string(),
    "n_pos": pa.int64(),
    "n_neg": pa.int64(),
    "auc": pa.float64(),
    "auprc": pa.float64(),
    "p_value": pa.float64(),
    "q_value": pa.float64(),
    "depth": pa.int16(),
    "clip_score": pa.float64(),
}
_NEURON_TYPES = {
    "layer": pa.string(),
    "unit": pa.int32(),
    "best_concept": pa.string(),
    "best_auc": pa.float64(),
    "best_auprc": pa.float64(),
    "best_q": pa.float64(),
    "n_significant": pa.int32(),
    "formula": pa.string(),
    "formula_auc": pa.float64(),
    "clip_label": pa.string(),
    "clip_score": pa.float64(),
    "dead": pa.bool_(),
    "multimodal": pa.bool_(),
    "spurious": pa.bool_(),
}
_TOPK_TYPES = {
    "unit": pa.int32(),
    "rank": pa.int32(),
    "image_id": pa.int64(),
    "value": pa.float32(),
    "loc_y": pa.float32(),
    "loc_x": pa.float32(),
}


def _write_table(frame: pd.DataFrame, path: Path, types: dict[str, pa.DataType]) -> None:
    """Write ``frame`` with the contract's Arrow types for the columns it has."""
    schema = pa.schema([(c, types[c]) for c in frame.columns])
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path)


def _write_images(rng, image_dir: Path, n_images: int, n_failed: int, n_missing: int, size) -> pd.DataFrame:
    """Draw ``n_images`` PNGs (a coloured shape on a background); failed ones are corrupt files."""
    rows = []
    for i in range(n_images):
        image_id = 1000 + i
        path = image_dir / f"img_{i:04d}.png"
        failed = i >= n_images - n_failed
        missing = not failed and i >= n_images - n_failed - n_missing
        if failed:
            path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
            rows.append((image_id, str(path), "failed", "corrupt: image file is truncated"))
            continue
        if not missing:
            bg = _COLOURS[int(rng.integers(len(_COLOURS)))]
            fg = _COLOURS[int(rng.integers(len(_COLOURS)))]
            img = Image.new("RGB", size, tuple(int(v * 0.4 + 140) for v in bg))
            draw = ImageDraw.Draw(img)
            w, h = size
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            box = (x0, y0, x0 + w // 2, y0 + h // 2)
            draw.ellipse(box, fill=fg) if i % 2 else draw.rectangle(box, fill=fg)
            img.save(path)
        rows.append((image_id, str(path), "ok", None))
    return pd.DataFrame(rows, columns=["image_id", "uri", "status", "error"])


def _neurons_from(nc: pd.DataFrame, names: list[str], alpha: float, rng) -> pd.DataFrame:
    """One row per unit, consistent with the neuron-concept table."""
    ranked = nc.sort_values("auc", ascending=False, kind="stable")
    top2 = ranked.groupby(["layer", "unit"], sort=False).head(2)
    first = top2.drop_duplicates(["layer", "unit"], keep="first")
    second = top2[top2.duplicated(["layer", "unit"], keep="first")][["layer", "unit", "concept"]]
    first = first.merge(second.rename(columns={"concept": "second"}), on=["layer", "unit"], how="left")
    layer_rank = {layer: i for i, layer in enumerate(pd.unique(nc["layer"]))}
    first = first.assign(_rank=first["layer"].map(layer_rank)).sort_values(["_rank", "unit"]).reset_index(drop=True)
    n_sig = (nc["q_value"] <= alpha).groupby([nc["layer"], nc["unit"]]).sum()
    n = len(first)
    dead = (first["unit"].to_numpy() % 17) == 5
    has_formula = (np.arange(n) % 3) != 0
    formula = [
        f"({b} AND NOT {s})" if f and not d else None
        for b, s, f, d in zip(first["concept"], first["second"], has_formula, dead)
    ]
    clip_label = [None if d or i % 5 == 4 else names[int(rng.integers(len(names)))] for i, d in enumerate(dead)]
    out = pd.DataFrame(
        {
            "layer": first["layer"],
            "unit": first["unit"].astype(np.int32),
            "best_concept": first["concept"],
            "best_auc": first["auc"],
            "best_auprc": first["auprc"],
            "best_q": first["q_value"],
            "n_significant": [int(n_sig[(layer, u)]) for layer, u in zip(first["layer"], first["unit"])],
            "formula": formula,
            "formula_auc": np.where([f is not None for f in formula], np.minimum(first["auc"] + 0.02, 1.0), np.nan),
            "clip_label": clip_label,
            "clip_score": np.where([c is not None for c in clip_label], rng.uniform(0.1, 3.0, size=n), np.nan),
            "dead": dead,
            "multimodal": ~dead & (np.arange(n) % 4 == 1),
            "spurious": ~dead & (np.arange(n) % 9 == 2),
        }
    )
    out["n_significant"] = out["n_significant"].astype(np.int32)
    return out
