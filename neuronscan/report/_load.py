"""Read a run directory for the report, leniently: missing files and optional columns become defaults.

Everything here reads the documented Parquet contracts (docs/data-contracts.md) and returns
pandas frames with every column the report uses, so the renderer never checks for absent columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds

from neuronscan.io import RunDir, RunInfoError, get_fs, run_alpha
from neuronscan.stats import significant_mask

DEFAULT_ALPHA = 0.05

NEURON_DEFAULTS: dict[str, object] = {
    "best_concept": None,
    "best_auc": np.nan,
    "best_auprc": np.nan,
    "best_q": np.nan,
    "n_significant": np.nan,
    "formula": None,
    "formula_auc": np.nan,
    "best_correlation": np.nan,
    "sim_concept_corr": np.nan,
    "sim_formula_corr": np.nan,
    "sim_linear_corr": np.nan,
    "linear_terms": None,
    "linear_weights": None,
    "clip_label": None,
    "clip_score": np.nan,
    "dead": False,
    "multimodal": False,
    "spurious": False,
}
"""Columns of ``neurons.parquet`` the report shows, with the value used when a column is absent."""

_CONCEPT_COLUMNS = ("unit", "concept", "auc", "auprc", "q_value", "depth")


@dataclass
class RunData:
    """A run directory opened for reporting.

    Attributes:
        root: the run directory (local path or fsspec URI).
        info: ``run.json`` as a dict (empty when the file is missing or unreadable).
        images: ``images.parquet`` with ``image_id, uri, status, error`` (None when missing).
        neurons: ``neurons.parquet`` with every column of `NEURON_DEFAULTS` (None when missing).
        concepts: the ``neuron_concepts.parquet`` dataset, read one layer at a time (None when missing).
        layers: layer names in run order.
        alpha: significance level for q-values.
        notes: what was missing or unreadable, shown in the report.
    """

    root: str
    info: dict
    images: pd.DataFrame | None
    neurons: pd.DataFrame | None
    concepts: ds.Dataset | None
    layers: list[str]
    alpha: float
    notes: list[str] = field(default_factory=list)

    @property
    def concept_columns(self) -> frozenset[str]:
        """Columns present in ``neuron_concepts.parquet``."""
        return frozenset(self.concepts.schema.names) if self.concepts is not None else frozenset()


def open_run(run_dir: str) -> RunData:
    """Open a run directory; raise only when there is no run there at all.

    Raises:
        ValueError: if ``run_dir`` does not exist or holds none of ``run.json``, ``neurons.parquet`` and
            ``neuron_concepts.parquet``.
    """
    fs, path = get_fs(run_dir)
    if not fs.isdir(path):
        raise ValueError(f"run directory {run_dir!r} does not exist; pass the OUT folder of a neuronscan run")
    notes: list[str] = []
    info = _read_info(run_dir, notes)
    run = RunDir(run_dir)
    images = _read_frame(run.images, "images.parquet", notes, columns=("image_id", "uri", "status", "error"))
    neurons = _read_frame(run.neurons, "neurons.parquet", notes)
    concepts = _open_dataset(run.neuron_concepts, "neuron_concepts.parquet", notes)
    if not info and neurons is None and concepts is None:
        raise ValueError(
            f"{run_dir!r} has none of run.json, neurons.parquet, neuron_concepts.parquet; "
            "is it the OUT folder of a neuronscan run?"
        )
    if images is not None:
        images = _with_columns(images, {"image_id": -1, "uri": None, "status": "ok", "error": None})
    if neurons is not None:
        neurons = _with_columns(neurons, {"layer": None, "unit": -1, **NEURON_DEFAULTS})
        neurons = neurons[neurons["layer"].notna()].copy()
        neurons["unit"] = neurons["unit"].astype(np.int64)
        for flag in ("dead", "multimodal", "spurious"):
            neurons[flag] = neurons[flag].fillna(False).astype(bool)
    alpha = _alpha(info, notes)
    layers = _layers(info, neurons, concepts)
    return RunData(run_dir, info, images, neurons, concepts, layers, alpha, notes)


def layer_neurons(run: RunData, layer: str, concepts: pd.DataFrame | None) -> pd.DataFrame:
    """One row per unit of ``layer``, sorted by unit, from ``neurons.parquet`` or derived from ``concepts``.

    When ``neurons.parquet`` is missing the best concept of each unit is its highest-AUC concept and
    ``n_significant`` counts its significant concepts (`neuronscan.stats.significant_mask`).
    """
    if run.neurons is not None:
        frame = run.neurons[run.neurons["layer"] == layer]
        return frame.sort_values("unit", kind="stable").reset_index(drop=True)
    if concepts is None or concepts.empty:
        return pd.DataFrame({"layer": pd.Series([], dtype=object), "unit": pd.Series([], dtype=np.int64)}).pipe(
            _with_columns, NEURON_DEFAULTS
        )
    ranked = concepts.sort_values(["unit", "auc"], ascending=[True, False], na_position="last", kind="stable")
    best = ranked.drop_duplicates("unit", keep="first")
    sig = significant_mask(concepts["q_value"].to_numpy(float), concepts["auc"].to_numpy(float), run.alpha)
    n_sig = pd.Series(sig, index=concepts.index).groupby(concepts["unit"]).sum()
    frame = pd.DataFrame(
        {
            "layer": layer,
            "unit": best["unit"].to_numpy(np.int64),
            "best_concept": best["concept"].to_numpy(object),
            "best_auc": best["auc"].to_numpy(float),
            "best_auprc": best["auprc"].to_numpy(float),
            "best_q": best["q_value"].to_numpy(float),
            "n_significant": best["unit"].map(n_sig).to_numpy(float),
        }
    )
    return _with_columns(frame, NEURON_DEFAULTS)


def layer_concepts(run: RunData, layer: str) -> pd.DataFrame | None:
    """Rows of ``neuron_concepts.parquet`` for one layer with ``unit, concept, auc, auprc, q_value, depth``.

    Reads only that layer's rows and the columns the report shows, so memory is bounded by one layer.
    """
    if run.concepts is None:
        return None
    present = [c for c in _CONCEPT_COLUMNS if c in run.concept_columns]
    table = run.concepts.to_table(columns=present, filter=pc.field("layer") == layer)
    frame = table.to_pandas()
    frame = _with_columns(frame, {"unit": -1, "concept": None, "auc": np.nan, "auprc": np.nan, "q_value": np.nan})
    if "depth" not in frame:
        frame["depth"] = np.nan
    frame = frame[frame["concept"].notna()]
    frame["unit"] = frame["unit"].astype(np.int64)
    for column in ("auc", "auprc", "q_value", "depth"):
        frame[column] = frame[column].astype(float)
    return frame.reset_index(drop=True)


def layer_topk(run: RunData, layer: str, max_rank: int) -> pd.DataFrame | None:
    """``topk/<layer>.parquet`` rows with ``rank < max_rank``, sorted by unit then rank (None when missing)."""
    uri = RunDir(run.root).topk(layer)
    name = uri.rsplit("/", 2)[-2] + "/" + uri.rsplit("/", 1)[-1]  # topk/<layer>.parquet, for the notes
    frame = _read_frame(uri, name, run.notes, quiet=True)
    if frame is None:
        run.notes.append(f"{name} is missing: units of layer {layer!r} show no top images")
        return None
    defaults = {"unit": -1, "rank": 0, "image_id": -1, "value": np.nan, "loc_y": np.nan, "loc_x": np.nan}
    frame = _with_columns(frame, defaults)
    frame = frame[frame["rank"] < max_rank]
    return frame.sort_values(["unit", "rank"], kind="stable").reset_index(drop=True)


def _read_info(run_dir: str, notes: list[str]) -> dict:
    """``run.json`` as a dict; a missing or malformed file is a note, not an error."""
    try:
        info = RunDir(run_dir).read_info()
    except (OSError, RunInfoError) as exc:
        notes.append(str(exc) if isinstance(exc, RunInfoError) else f"run.json could not be read: {exc}")
        return {}
    if info is None:
        notes.append("run.json is missing")
        return {}
    return info


def _open_dataset(uri: str, name: str, notes: list[str]) -> ds.Dataset | None:
    """A Parquet file or folder of part files as a dataset, or None (with a note naming it) when missing."""
    fs, path = get_fs(uri)
    if not fs.exists(path):
        notes.append(f"{name} is missing")
        return None
    return ds.dataset(path, filesystem=fs, format="parquet")


def _read_frame(
    uri: str, name: str, notes: list[str], quiet: bool = False, columns: tuple[str, ...] | None = None
) -> pd.DataFrame | None:
    """A Parquet file or folder as a DataFrame (only ``columns`` that exist, when given), or None when missing.

    A missing file adds a note naming it (``name``) unless ``quiet``.
    """
    fs, path = get_fs(uri)
    if not fs.exists(path):
        if not quiet:
            notes.append(f"{name} is missing")
        return None
    dataset = ds.dataset(path, filesystem=fs, format="parquet")
    present = None if columns is None else [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=present).to_pandas()


def _with_columns(frame: pd.DataFrame, defaults: dict[str, object]) -> pd.DataFrame:
    """``frame`` with each absent column of ``defaults`` added, filled with its default."""
    missing = {c: v for c, v in defaults.items() if c not in frame.columns}
    if not missing:
        return frame
    frame = frame.copy()
    for column, value in missing.items():
        frame[column] = pd.Series([value] * len(frame), index=frame.index, dtype=object if value is None else None)
    return frame


def _alpha(info: dict, notes: list[str]) -> float:
    """The run's significance level (`neuronscan.io.run_alpha`), else 0.05."""
    alpha = run_alpha(info)
    if alpha is not None:
        return alpha
    notes.append(f"run.json gives no alpha; significance uses q <= {DEFAULT_ALPHA}")
    return DEFAULT_ALPHA


def _layers(info: dict, neurons: pd.DataFrame | None, concepts: ds.Dataset | None) -> list[str]:
    """Layer names in run order: neurons.parquet, then run.json counts; neuron_concepts only if both lack them."""
    layers: list[str] = []
    if neurons is not None:
        layers.extend(str(x) for x in pd.unique(neurons["layer"]))
    counts = info.get("counts")
    units = counts.get("units") if isinstance(counts, dict) else None
    if isinstance(units, dict):
        layers.extend(str(k) for k in units if str(k) not in layers)
    if not layers and concepts is not None and "layer" in concepts.schema.names:
        column = concepts.to_table(columns=["layer"]).column("layer")
        layers.extend(str(x) for x in pc.unique(column).to_pylist() if x is not None and str(x) not in layers)
    return layers


@dataclass
class Descriptions:
    """The describe stage's tables (``descriptions.parquet``, the boxes of ``describe/crops.parquet``)."""

    descriptions: pd.DataFrame
    boxes: pd.DataFrame
    input_size: int


def load_descriptions(run: RunData) -> Descriptions | None:
    """The run's patch descriptions and crop boxes, or None when the describe stage did not run.

    Boxes come as fractions of the model input (``describe/describe.json`` ``input_size``); the crops' embeddings
    are not read.
    """
    from neuronscan.describe import CROPS_FILE, DESCRIBE_SUMMARY_FILE, DESCRIPTIONS_FILE

    rd = RunDir(run.root)
    desc = _read_frame(rd.path(DESCRIPTIONS_FILE), DESCRIPTIONS_FILE, run.notes, quiet=True)
    if desc is None:
        return None
    desc = _with_columns(desc, {"layer": None, "unit": -1, "patch_label": None, "patch_score": np.nan,
                                "phrase": None, "n_crops": 0})
    boxes = _read_frame(rd.path(CROPS_FILE), CROPS_FILE, run.notes,
                        columns=("layer", "unit", "rank", "x0", "y0", "x1", "y1"))
    size = 0
    try:
        from neuronscan.io import read_json

        size = int(read_json(rd.path(DESCRIBE_SUMMARY_FILE)).get("input_size") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        run.notes.append(f"{DESCRIBE_SUMMARY_FILE} is missing or unreadable: crops are not drawn")
    if boxes is None or size <= 0 or not {"x0", "y0", "x1", "y1"} <= set(boxes.columns):
        boxes = pd.DataFrame(columns=["layer", "unit", "rank", "x0", "y0", "x1", "y1"])
    else:
        boxes = boxes.copy()
        for c in ("x0", "y0", "x1", "y1"):
            boxes[c] = boxes[c].astype(float) / size
    return Descriptions(desc, boxes, size)


def describe_payload(described: Descriptions | None, layer: str) -> dict[int, dict]:
    """Per unit of ``layer`` the card fields of its patch description: ``pl`` (patch label), ``ps`` (its score),
    ``ph`` (phrase), ``pn`` (crops), ``pb`` (``[rank, x0, y0, x1, y1]`` boxes as fractions of the image)."""
    if described is None:
        return {}
    out: dict[int, dict] = {}
    desc = described.descriptions[described.descriptions["layer"] == layer]
    for row in desc.itertuples(index=False):
        label = row.patch_label if isinstance(row.patch_label, str) else None
        phrase = row.phrase if isinstance(row.phrase, str) else label
        score = float(row.patch_score) if pd.notna(row.patch_score) else None
        out[int(row.unit)] = {"pl": label, "ps": round(score, 4) if score is not None and np.isfinite(score) else None,
                              "ph": phrase, "pn": int(row.n_crops) if pd.notna(row.n_crops) else 0, "pb": []}
    boxes = described.boxes[described.boxes["layer"] == layer].sort_values(["unit", "rank"], kind="stable")
    for unit, rank, x0, y0, x1, y1 in zip(*(boxes[c] for c in ("unit", "rank", "x0", "y0", "x1", "y1"))):
        entry = out.get(int(unit))
        if entry is not None:
            entry["pb"].append([int(rank), *(round(float(v), 4) for v in (x0, y0, x1, y1))])
    return out
