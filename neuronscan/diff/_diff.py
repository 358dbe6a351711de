"""Compare two scored runs: what changed per unit, per concept, and whether it should raise an alert.

A diff reads only the score outputs of each run (``neurons.parquet``, ``neuron_concepts.parquet``,
``run.json``; see docs/data-contracts.md), one layer at a time and only the aligned rows in full, so it
runs on a laptop against runs of any size, local or on S3.

Significance is `neuronscan.stats.significant_mask` (``n_significant_*`` counts the same pairs as
``neurons.parquet``); the concepts gained, lost and flagged spurious are the *aligned* ones
(`neuronscan.stats.aligned_mask`: significant and ``auc >= min_auc``), the bar of the score stage's
multimodal and spurious flags.

Per unit (same architecture: the same layers with the same unit counts) a unit ``layer:k`` of run A
is the unit ``layer:k`` of run B. Per concept the comparison needs no unit correspondence, so it works
for any two models. Across architectures, `match_units` pairs units by activation correlation.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from neuronscan.config._schema import DiffSection, ScoreSection
from neuronscan.diff._match import match_units
from neuronscan.errors import InputError
from neuronscan.io import RunDir, get_fs, join, run_alpha, write_json_atomic, write_parquet_atomic
from neuronscan.stats import aligned_mask, best_concepts, significant_mask

__all__ = ["DiffResult", "diff_runs", "write_diff", "format_summary", "thresholds_exceeded", "diff_config_of"]

DEFAULT_ALPHA = ScoreSection.model_fields["alpha"].default
DEFAULT_MIN_AUC = ScoreSection.model_fields["min_auc"].default

UNITS_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("unit", pa.int64()),
        ("best_concept_a", pa.string()),
        ("best_concept_b", pa.string()),
        ("auc_a", pa.float64()),
        ("auc_b", pa.float64()),
        ("delta_auc", pa.float64()),
        ("label_changed", pa.bool_()),
        ("n_significant_a", pa.int64()),
        ("n_significant_b", pa.int64()),
        ("n_aligned_a", pa.int64()),
        ("n_aligned_b", pa.int64()),
        ("gained", pa.list_(pa.string())),
        ("lost", pa.list_(pa.string())),
        ("spurious_gained", pa.list_(pa.string())),
        ("changed", pa.bool_()),
        ("reasons", pa.string()),
    ]
)
"""``diff_units.parquet``: one row per unit compared (same-architecture diffs only)."""

CONCEPTS_SCHEMA = pa.schema(
    [
        ("concept", pa.string()),
        ("in_a", pa.bool_()),
        ("in_b", pa.bool_()),
        ("n_units_a", pa.int64()),
        ("n_units_b", pa.int64()),
        ("delta_n_units", pa.int64()),
        ("layers_a", pa.list_(pa.string())),
        ("layers_b", pa.list_(pa.string())),
        ("best_auc_a", pa.float64()),
        ("best_auc_b", pa.float64()),
        ("delta_best_auc", pa.float64()),
        ("n_units_gained", pa.int64()),
        ("n_units_lost", pa.int64()),
        ("spurious", pa.bool_()),
    ]
)
"""``diff_concepts.parquet``: one row per concept scored in either run."""

MATCHING_SCHEMA = pa.schema(
    [
        ("layer_a", pa.string()),
        ("layer_b", pa.string()),
        ("unit_a", pa.int64()),
        ("unit_b", pa.int64()),
        ("correlation", pa.float64()),
        ("best_concept_a", pa.string()),
        ("best_concept_b", pa.string()),
    ]
)
"""``diff_matching.parquet``: units of two layers paired by activation correlation."""


@dataclass
class DiffResult:
    """What changed between run A (baseline) and run B (new).

    Attributes:
        units: one row per unit of the layers both runs share with equal unit counts (columns of
            `UNITS_SCHEMA`); empty when the architectures differ.
        concepts: one row per concept scored in either run (columns of `CONCEPTS_SCHEMA`).
        matching: units paired by activation correlation (`MATCHING_SCHEMA`) when a layer pair was given.
        summary: counts and settings, JSON-serialisable (written as ``diff.json``).
        same_architecture: both runs have the same layers with the same unit counts (model names may
            differ: a fine-tuned model keeps its units' indices).
        notes: what was compared differently than asked, in words (also in ``summary["notes"]``).
    """

    units: pd.DataFrame
    concepts: pd.DataFrame
    matching: pd.DataFrame | None
    summary: dict[str, Any]
    same_architecture: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class _Run:
    """The parts of a scored run a diff needs."""

    root: str
    info: dict
    layers: dict[str, int]
    neurons: pd.DataFrame  # layer, unit, best_concept, best_auc
    aligned: pd.DataFrame  # layer, unit, concept, auc, q_value — the aligned pairs only
    n_significant: dict[tuple[str, int], int]  # (layer, unit) -> significant concepts, as in neurons.parquet
    concept_best: pd.Series  # concept -> max AUC over every unit of the run


def _read_info(root: str) -> dict:
    return RunDir(root).read_info() or {}


def _config_section(info: dict, section: str) -> dict:
    config = info.get("config")
    value = config.get(section) if isinstance(config, dict) else None
    return value if isinstance(value, dict) else {}


def _number(*candidates: Any) -> float | None:
    for value in candidates:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _model_name(info: dict) -> str | None:
    model = info.get("model")
    if isinstance(model, dict) and isinstance(model.get("name"), str):
        return model["name"]
    return model if isinstance(model, str) else None


def diff_config_of(run_dir: str) -> tuple[DiffSection, list[str]]:
    """The ``diff`` section and ``score.spurious_concepts`` of the config a run was made with.

    Defaults (`DiffSection()`, no spurious concepts) when ``run.json`` has no config.

    Raises:
        InputError: ``run.json`` holds a ``diff`` section that is not valid.
    """
    info = _read_info(run_dir)
    raw = _config_section(info, "diff")
    try:
        section = DiffSection.model_validate(raw)
    except ValueError as exc:
        raise InputError(f"{RunDir(run_dir).info_uri}: config.diff is not valid: {exc}") from exc
    spurious = _config_section(info, "score").get("spurious_concepts") or []
    return section, [str(c) for c in spurious]


def _open_run(root: str, alpha: float, min_auc: float, info: dict) -> _Run:
    """Read a run's unit summaries, significant pairs and per-concept best AUC, one layer at a time."""
    run = RunDir(root)
    fs, path = get_fs(run.neuron_concepts)
    if not fs.exists(path):
        where, base = get_fs(root)
        what = "does not exist" if not where.exists(base) else "has no neuron_concepts.parquet (was it scored?)"
        raise InputError(f"run {root!r} {what}; pass a run directory OUT/<model>/<run_id> of a scored run")
    dataset = ds.dataset(path, filesystem=fs, format="parquet")
    missing = {"layer", "unit", "concept", "auc", "q_value"} - set(dataset.schema.names)
    if missing:
        raise InputError(f"{run.neuron_concepts} lacks column(s) {sorted(missing)}")

    nfs, npath = get_fs(run.neurons)
    neurons = None
    if nfs.exists(npath):
        nset = ds.dataset(npath, filesystem=nfs, format="parquet")
        if {"layer", "unit", "best_concept", "best_auc"} <= set(nset.schema.names):
            neurons = nset.to_table(columns=["layer", "unit", "best_concept", "best_auc"]).to_pandas()

    layer_names = [str(x) for x in pc.unique(dataset.to_table(columns=["layer"]).column("layer")).to_pylist()]
    if neurons is not None:
        order = [str(x) for x in pd.unique(neurons["layer"])]
        layer_names = order + [x for x in layer_names if x not in order]
    aligned, best_frames, concept_best = [], [], []
    n_significant: dict[tuple[str, int], int] = {}
    layers: dict[str, int] = {}
    for layer in layer_names:
        table = dataset.to_table(columns=["unit", "concept", "auc", "q_value"], filter=pc.field("layer") == layer)
        frame = table.to_pandas()
        frame["unit"] = frame["unit"].astype(np.int64)
        auc, q = frame["auc"].to_numpy(float), frame["q_value"].to_numpy(float)
        sig = significant_mask(q, auc, alpha)
        n_significant.update({(layer, int(u)): int(n) for u, n in frame["unit"][sig].value_counts().items()})
        n_units = int(frame["unit"].max()) + 1 if len(frame) else 0
        if neurons is not None:
            n_units = max(n_units, int((neurons["layer"] == layer).sum()))
        layers[layer] = n_units
        finite = frame[np.isfinite(frame["auc"].to_numpy(float))]
        concept_best.append(finite.groupby("concept", sort=False)["auc"].max())
        # Concepts that exist but were never finite (no positives) still count as scored.
        concept_best.append(pd.Series(np.nan, index=pd.Index(frame["concept"].unique(), name="concept")))
        if neurons is None:
            best_frames.append(_derived_best(layer, frame, n_units))
        hits = frame[aligned_mask(q, auc, alpha, min_auc)].reset_index(drop=True)
        hits.insert(0, "layer", layer)
        aligned.append(hits)
    if neurons is None:
        neurons = pd.concat(best_frames, ignore_index=True) if best_frames else pd.DataFrame(
            columns=["layer", "unit", "best_concept", "best_auc"])
    neurons = neurons.astype({"unit": np.int64})
    neurons["best_auc"] = pd.to_numeric(neurons["best_auc"], errors="coerce").astype(float)
    best_series = pd.concat(concept_best) if concept_best else pd.Series(dtype=float)
    best_series = best_series.groupby(level=0, sort=True).max()
    aligned_frame = pd.concat(aligned, ignore_index=True) if aligned else pd.DataFrame(
        columns=["layer", "unit", "concept", "auc", "q_value"])
    aligned_frame["unit"] = aligned_frame["unit"].astype(np.int64)
    return _Run(root, info, layers, neurons, aligned_frame, n_significant, best_series)


def _derived_best(layer: str, frame: pd.DataFrame, n_units: int) -> pd.DataFrame:
    """Best concept per unit from the pairs of one layer (a run without ``neurons.parquet``)."""
    concepts = pd.unique(frame["concept"])
    grid = frame.drop_duplicates(["unit", "concept"]).pivot(index="unit", columns="concept", values="auc")
    grid = grid.reindex(index=np.arange(n_units), columns=concepts)
    best, has_best = best_concepts(grid.to_numpy(float))
    values = grid.to_numpy(float)
    return pd.DataFrame({
        "layer": layer,
        "unit": np.arange(n_units, dtype=np.int64),
        "best_concept": [str(concepts[b]) if h else None for b, h in zip(best, has_best)],
        "best_auc": np.where(has_best, values[np.arange(n_units), best] if len(concepts) else np.nan, np.nan),
    })


def _sets_by_unit(sig: pd.DataFrame) -> dict[tuple[str, int], frozenset[str]]:
    if sig.empty:
        return {}
    grouped = sig.groupby(["layer", "unit"], sort=False)["concept"]
    return {(str(k[0]), int(k[1])): frozenset(v) for k, v in grouped}


def _same_str(a: Any, b: Any) -> bool:
    na = a is None or (isinstance(a, float) and math.isnan(a))
    nb = b is None or (isinstance(b, float) and math.isnan(b))
    return (na and nb) or (not na and not nb and str(a) == str(b))


def _unit_diff(
    run_a: _Run, run_b: _Run, layers: list[str], spurious: frozenset[str], min_abs_delta_auc: float
) -> pd.DataFrame:
    """Per-unit comparison over ``layers`` (present in both runs with the same unit counts)."""
    sets_a, sets_b = _sets_by_unit(run_a.aligned), _sets_by_unit(run_b.aligned)
    frames = []
    for layer in layers:
        n_units = run_a.layers[layer]
        base = pd.DataFrame({"layer": layer, "unit": np.arange(n_units, dtype=np.int64)})
        for tag, run in (("a", run_a), ("b", run_b)):
            best = run.neurons[run.neurons["layer"] == layer][["unit", "best_concept", "best_auc"]]
            best = best.drop_duplicates("unit").rename(
                columns={"best_concept": f"best_concept_{tag}", "best_auc": f"auc_{tag}"})
            base = base.merge(best, on="unit", how="left")
        frames.append(base)
    if not frames:
        return pd.DataFrame({f.name: pd.Series(dtype=object) for f in UNITS_SCHEMA})
    units = pd.concat(frames, ignore_index=True)
    units["auc_a"] = units["auc_a"].astype(float)
    units["auc_b"] = units["auc_b"].astype(float)
    units["delta_auc"] = units["auc_b"] - units["auc_a"]
    units["label_changed"] = [
        not _same_str(a, b) for a, b in zip(units["best_concept_a"], units["best_concept_b"])
    ]
    gained, lost, spur, n_a, n_b, changed, reasons = [], [], [], [], [], [], []
    for row in units.itertuples(index=False):
        key = (row.layer, int(row.unit))
        sa, sb = sets_a.get(key, frozenset()), sets_b.get(key, frozenset())
        g, lo = sorted(sb - sa), sorted(sa - sb)
        s = [c for c in g if c in spurious]
        why = []
        if row.label_changed:
            why.append("label")
        if np.isfinite(row.delta_auc) and abs(row.delta_auc) >= min_abs_delta_auc:
            why.append("delta_auc")
        elif np.isfinite(row.auc_a) != np.isfinite(row.auc_b):
            why.append("delta_auc")  # a unit that died or came alive
        if g:
            why.append("gained")
        if lo:
            why.append("lost")
        if s:
            why.append("spurious")
        gained.append(g)
        lost.append(lo)
        spur.append(s)
        n_a.append(len(sa))
        n_b.append(len(sb))
        changed.append(bool(why))
        reasons.append(",".join(why))
    keys = list(zip(units["layer"], units["unit"].astype(int)))
    units["n_significant_a"] = np.asarray([run_a.n_significant.get(k, 0) for k in keys], dtype=np.int64)
    units["n_significant_b"] = np.asarray([run_b.n_significant.get(k, 0) for k in keys], dtype=np.int64)
    units["n_aligned_a"] = np.asarray(n_a, dtype=np.int64)
    units["n_aligned_b"] = np.asarray(n_b, dtype=np.int64)
    units["gained"] = gained
    units["lost"] = lost
    units["spurious_gained"] = spur
    units["changed"] = np.asarray(changed, dtype=bool)
    units["reasons"] = reasons
    for tag in ("a", "b"):
        col = f"best_concept_{tag}"
        units[col] = [None if (v is None or (isinstance(v, float) and math.isnan(v))) else str(v)
                      for v in units[col]]
    return units[[f.name for f in UNITS_SCHEMA]]


def _concept_diff(run_a: _Run, run_b: _Run, units: pd.DataFrame | None, spurious: frozenset[str]) -> pd.DataFrame:
    """Per-concept coverage in each run: aligned units, their layers, best AUC over all units."""
    concepts = sorted(set(run_a.concept_best.index) | set(run_b.concept_best.index))
    out = pd.DataFrame({"concept": pd.Series(concepts, dtype=object)})
    for tag, run in (("a", run_a), ("b", run_b)):
        out[f"in_{tag}"] = out["concept"].isin(run.concept_best.index).to_numpy(bool)
        sig = run.aligned
        counts = sig.groupby("concept").size() if not sig.empty else pd.Series(dtype=np.int64)
        layers = sig.groupby("concept")["layer"].agg(lambda s: sorted(set(s))) if not sig.empty else pd.Series(
            dtype=object)
        order = {name: i for i, name in enumerate(run.layers)}
        out[f"n_units_{tag}"] = out["concept"].map(counts).fillna(0).astype(np.int64)
        out[f"layers_{tag}"] = [sorted(layers.get(c, []), key=lambda x: order.get(x, len(order))) for c in concepts]
        out[f"best_auc_{tag}"] = out["concept"].map(run.concept_best).astype(float)
    out["delta_n_units"] = out["n_units_b"] - out["n_units_a"]
    out["delta_best_auc"] = out["best_auc_b"] - out["best_auc_a"]
    gained = pd.Series(0, index=out["concept"], dtype=np.int64)
    lost = pd.Series(0, index=out["concept"], dtype=np.int64)
    if units is not None and len(units):
        gained = gained.add(pd.Series([c for g in units["gained"] for c in g], dtype=object).value_counts(),
                            fill_value=0).astype(np.int64)
        lost = lost.add(pd.Series([c for g in units["lost"] for c in g], dtype=object).value_counts(),
                        fill_value=0).astype(np.int64)
    out["n_units_gained"] = out["concept"].map(gained).fillna(0).astype(np.int64).to_numpy()
    out["n_units_lost"] = out["concept"].map(lost).fillna(0).astype(np.int64).to_numpy()
    out["spurious"] = out["concept"].isin(spurious).to_numpy(bool)
    return out[[f.name for f in CONCEPTS_SCHEMA]]


def _round(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def diff_runs(
    run_a: str,
    run_b: str,
    *,
    spurious_concepts: Sequence[str] | None = None,
    min_abs_delta_auc: float = 0.1,
    alpha: float | None = None,
    min_auc: float | None = None,
    match_layers: tuple[str, str] | None = None,
) -> DiffResult:
    """Compare a new run (B) with a baseline (A).

    A concept is *significant* for a unit by `neuronscan.stats.significant_mask` (``q_value <= alpha``,
    ``auc > 0.5``; ``n_significant_*`` counts them as ``neurons.parquet`` does) and *aligned* when also
    ``auc >= min_auc`` (`neuronscan.stats.aligned_mask`) — the bar the score stage uses for its
    ``spurious`` and ``multimodal`` flags. A unit is *changed* when its best concept differs
    (``label_changed``), its best AUC moved by at least ``min_abs_delta_auc``, it gained or lost an
    aligned concept, or it newly aligns with a spurious concept.

    Args:
        run_a: the baseline run directory (local path or ``s3://`` URI) ``OUT/<model>/<run_id>``.
        run_b: the new run directory.
        spurious_concepts: concepts no unit should align with; None takes run B's
            ``score.spurious_concepts`` from its ``run.json``.
        min_abs_delta_auc: |Δ best AUC| that counts as a change.
        alpha: FDR level; None takes run B's (then A's) ``alpha`` from ``run.json``, else 0.05.
        min_auc: AUC an aligned concept needs; None takes run B's ``score.min_auc``, else 0.75.
        match_layers: ``(layer_a, layer_b)``: also pair the units of these layers by activation
            correlation on the probe images both runs share (`match_units`); works across architectures.

    Returns:
        A `DiffResult`. ``units`` is empty when the runs share no layer with equal unit counts.

    Raises:
        InputError: a run is missing or unscored, or an argument is out of range.

    Example:
        >>> old, new = "runs/shapesnet/20260101T020000Z-a1b2c3", "runs/shapesnet/20260102T020000Z-d4e5f6"
        >>> result = diff_runs(old, new)  # doctest: +SKIP
        >>> print(format_summary(result))  # doctest: +SKIP
    """
    if not 0 <= min_abs_delta_auc <= 1:
        raise InputError(f"min_abs_delta_auc must lie in [0, 1], got {min_abs_delta_auc}")
    if alpha is not None and not 0 < alpha < 1:
        raise InputError(f"alpha must lie in (0, 1), got {alpha}")
    if min_auc is not None and not 0 <= min_auc <= 1:
        raise InputError(f"min_auc must lie in [0, 1], got {min_auc}")
    run_a, run_b = str(run_a).rstrip("/"), str(run_b).rstrip("/")
    info_a, info_b = _read_info(run_a), _read_info(run_b)
    notes: list[str] = []
    if alpha is None:
        alpha_b, alpha_a = run_alpha(info_b), run_alpha(info_a)
        alpha = alpha_b if alpha_b is not None else alpha_a if alpha_a is not None else DEFAULT_ALPHA
        if alpha_a is not None and alpha_b is not None and alpha_a != alpha_b:
            notes.append(f"the runs used different alpha ({alpha_a} vs {alpha_b}); both are compared at {alpha}")
    # Runs scored before score.rank_by existed chose best concepts by AUC.
    rank_a, rank_b = (_config_section(info, "score").get("rank_by", "auc") if info else None
                      for info in (info_a, info_b))
    if rank_a and rank_b and rank_a != rank_b:
        notes.append(f"the runs chose best concepts by different metrics ({rank_a} vs {rank_b}): changed labels "
                     f"include that change; rescore run A with `neuronscan score --run A --set "
                     f"score.rank_by={rank_b}` to compare like with like")
    if min_auc is None:
        min_auc = _number(_config_section(info_b, "score").get("min_auc"),
                          _config_section(info_a, "score").get("min_auc"))
        min_auc = DEFAULT_MIN_AUC if min_auc is None else min_auc
    if spurious_concepts is None:
        spurious_concepts = _config_section(info_b, "score").get("spurious_concepts") or []
    spurious = frozenset(str(c) for c in spurious_concepts)

    a = _open_run(run_a, alpha, min_auc, info_a)
    b = _open_run(run_b, alpha, min_auc, info_b)
    model_a, model_b = _model_name(info_a), _model_name(info_b)
    same_model = model_a is None or model_b is None or model_a == model_b
    # Units are compared by index wherever a layer has the same name and unit count in both runs: a
    # fine-tuned or re-exported model keeps its units' indices whatever it is called.
    comparable = [x for x in b.layers if x in a.layers and a.layers[x] == b.layers[x]]
    same_architecture = a.layers == b.layers
    if not same_model:
        notes.append(f"different model names ({model_a} vs {model_b}); "
                     + (f"{len(comparable)} layer(s) with equal unit counts are compared unit by unit"
                        if comparable else "only concept coverage is compared"))
    if not same_architecture:
        mismatched = sorted(x for x in a.layers if x in b.layers and a.layers[x] != b.layers[x])
        if mismatched:
            notes.append("layers with different unit counts are not compared unit by unit: "
                         + ", ".join(f"{x} ({a.layers[x]} vs {b.layers[x]})" for x in mismatched))
    units = _unit_diff(a, b, comparable, spurious, min_abs_delta_auc)
    concepts = _concept_diff(a, b, units, spurious)

    matching = None
    if match_layers is not None:
        layer_a, layer_b = match_layers
        pairs = match_units(run_a, layer_a, run_b, layer_b)
        pairs.insert(0, "layer_b", layer_b)
        pairs.insert(0, "layer_a", layer_a)
        matching = pairs[[f.name for f in MATCHING_SCHEMA]]
    elif not same_architecture:
        notes.append("pass match_layers=(layer_a, layer_b) to pair units across the runs by activation correlation")

    spurious_hits = [
        f"{row.layer}:{int(row.unit):04d} → {', '.join(row.spurious_gained)}"
        for row in units.itertuples(index=False) if len(row.spurious_gained)
    ]
    delta = units["delta_auc"].to_numpy(float) if len(units) else np.array([])
    finite = delta[np.isfinite(delta)]
    summary: dict[str, Any] = {
        "run_a": run_a,
        "run_b": run_b,
        "run_id_a": info_a.get("run_id", run_a.rsplit("/", 1)[-1]),
        "run_id_b": info_b.get("run_id", run_b.rsplit("/", 1)[-1]),
        "model_a": model_a,
        "model_b": model_b,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "same_architecture": bool(same_architecture),
        "settings": {
            "alpha": alpha,
            "min_auc": min_auc,
            "min_abs_delta_auc": min_abs_delta_auc,
            "spurious_concepts": sorted(spurious),
        },
        "layers_compared": comparable,
        "layers_only_a": [x for x in a.layers if x not in b.layers],
        "layers_only_b": [x for x in b.layers if x not in a.layers],
        "n_units_compared": int(len(units)),
        "n_changed": int(units["changed"].sum()) if len(units) else 0,
        "n_label_changed": int(units["label_changed"].sum()) if len(units) else 0,
        "n_delta_auc": int((np.abs(finite) >= min_abs_delta_auc).sum()),
        "n_units_gained": int(sum(1 for g in units["gained"] if len(g))) if len(units) else 0,
        "n_units_lost": int(sum(1 for g in units["lost"] if len(g))) if len(units) else 0,
        "n_spurious_units": len(spurious_hits),
        "spurious": spurious_hits,
        "mean_delta_auc": _round(finite.mean()) if len(finite) else None,
        "max_abs_delta_auc": _round(np.abs(finite).max()) if len(finite) else None,
        "n_concepts_a": int(concepts["in_a"].sum()),
        "n_concepts_b": int(concepts["in_b"].sum()),
        "concepts_only_a": concepts.loc[concepts["in_a"] & ~concepts["in_b"], "concept"].tolist(),
        "concepts_only_b": concepts.loc[concepts["in_b"] & ~concepts["in_a"], "concept"].tolist(),
        "n_significant_pairs_a": int(sum(a.n_significant.values())),
        "n_significant_pairs_b": int(sum(b.n_significant.values())),
        "n_aligned_pairs_a": int(len(a.aligned)),
        "n_aligned_pairs_b": int(len(b.aligned)),
        "spurious_concepts_b": {
            c: int(n) for c, n in zip(concepts["concept"], concepts["n_units_b"]) if c in spurious and n > 0
        },
        "notes": notes,
    }
    if matching is not None:
        corr = matching["correlation"].to_numpy(float)
        summary["matching"] = {
            "layer_a": match_layers[0],
            "layer_b": match_layers[1],
            "n_pairs": int(len(matching)),
            "mean_correlation": _round(corr.mean()) if len(corr) else None,
            "n_label_changed": int(sum(not _same_str(x, y) for x, y in
                                       zip(matching["best_concept_a"], matching["best_concept_b"]))),
        }
    return DiffResult(units, concepts, matching, summary, bool(same_architecture), notes)


def _to_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    columns = {}
    for f in schema:
        values = frame[f.name] if f.name in frame else [None] * len(frame)
        if pa.types.is_list(f.type):
            values = [None if v is None else [str(x) for x in v] for v in values]
        elif isinstance(values, pd.Series):
            values = values.astype(object).where(values.notna(), None).tolist() if pa.types.is_string(
                f.type) else values.to_numpy()
        columns[f.name] = pa.array(values, type=f.type)
    return pa.table(columns, schema=schema)


def write_diff(result: DiffResult, out_dir: str) -> dict[str, str]:
    """Write a diff: ``diff_units.parquet``, ``diff_concepts.parquet``, ``diff_matching.parquet`` (when
    units were matched) and ``diff.json`` (the summary), each atomically.

    ``out_dir`` may be local or ``s3://``; ``neuronscan report RUN --diff OUT_DIR`` shows a local one.

    Returns:
        File name → written path or URI.

    Example:
        >>> write_diff(diff_runs(a, b), "runs/shapesnet/new/diff")  # doctest: +SKIP
    """
    out_dir = str(out_dir).rstrip("/")
    written = {}
    tables = [("diff_units.parquet", result.units, UNITS_SCHEMA),
              ("diff_concepts.parquet", result.concepts, CONCEPTS_SCHEMA)]
    if result.matching is not None:
        tables.append(("diff_matching.parquet", result.matching, MATCHING_SCHEMA))
    for name, frame, schema in tables:
        uri = join(out_dir, name)
        write_parquet_atomic(_to_table(frame, schema), uri)
        written[name] = uri
    uri = join(out_dir, "diff.json")
    write_json_atomic(result.summary, uri)
    written["diff.json"] = uri
    return written


def thresholds_exceeded(result: DiffResult, diff_cfg: DiffSection | Mapping[str, Any] | None) -> list[str]:
    """Reasons this diff should raise an alert under the config's ``diff`` section (empty: all fine).

    - ``max_changed_labels``: more units changed their best concept than this (None: no limit).
    - ``fail_on_spurious``: any unit newly aligns with a concept of ``spurious_concepts``.

    ``min_abs_delta_auc`` defines what a change is (pass it to `diff_runs`); it is no alert by itself.

    Example:
        >>> reasons = thresholds_exceeded(result, cfg.diff)  # doctest: +SKIP
        >>> exit_code = 1 if reasons else 0  # doctest: +SKIP
    """
    if diff_cfg is None:
        cfg = DiffSection()
    elif isinstance(diff_cfg, DiffSection):
        cfg = diff_cfg
    else:
        try:
            cfg = DiffSection.model_validate(dict(diff_cfg))
        except ValueError as exc:
            raise InputError(f"diff settings are not valid: {exc}") from exc
    s = result.summary
    reasons = []
    if cfg.max_changed_labels is not None and s["n_label_changed"] > cfg.max_changed_labels:
        reasons.append(f"{s['n_label_changed']:,} unit(s) changed their best concept "
                       f"(max_changed_labels: {cfg.max_changed_labels:,})")
    if cfg.fail_on_spurious and s["n_spurious_units"] > 0:
        shown = "; ".join(s["spurious"][:5]) + ("; …" if s["n_spurious_units"] > 5 else "")
        reasons.append(f"{s['n_spurious_units']:,} unit(s) newly align with a spurious concept "
                       f"(fail_on_spurious): {shown}")
    return reasons


def _cell(value: Any, width: int) -> str:
    text = "—" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_summary(result: DiffResult, max_rows: int = 20) -> str:
    """A terminal summary: the runs, counts, the largest unit changes and concept coverage changes.

    Example:
        >>> print(format_summary(diff_runs(a, b), max_rows=10))  # doctest: +SKIP
    """
    s = result.summary
    cfg = s["settings"]
    lines = [
        f"diff {s['run_id_a']} (A) → {s['run_id_b']} (B)",
        f"  models: {s['model_a'] or '?'} → {s['model_b'] or '?'}; same architecture: "
        f"{'yes' if result.same_architecture else 'no'}",
        f"  aligned: q ≤ {cfg['alpha']:g} and AUC ≥ {cfg['min_auc']:g}; changed: |Δ AUC| ≥ "
        f"{cfg['min_abs_delta_auc']:g}, new best concept, or gained/lost aligned concepts",
    ]
    if s["n_units_compared"]:
        lines.append(
            f"  units: {s['n_units_compared']:,} compared in {len(s['layers_compared'])} layer(s), "
            f"{s['n_changed']:,} changed ({s['n_label_changed']:,} new best concept, {s['n_delta_auc']:,} with "
            f"|Δ AUC| ≥ {cfg['min_abs_delta_auc']:g}, {s['n_units_gained']:,} gained and {s['n_units_lost']:,} "
            f"lost concepts)"
        )
        if s["mean_delta_auc"] is not None:
            lines.append(f"  Δ best AUC: mean {s['mean_delta_auc']:+.4f}, largest |Δ| {s['max_abs_delta_auc']:.4f}")
    lines.append(f"  concepts: {s['n_concepts_a']:,} in A, {s['n_concepts_b']:,} in B; significant pairs "
                 f"{s['n_significant_pairs_a']:,} → {s['n_significant_pairs_b']:,}, aligned "
                 f"{s['n_aligned_pairs_a']:,} → {s['n_aligned_pairs_b']:,}")
    if cfg["spurious_concepts"]:
        lines.append(f"  spurious concepts watched: {', '.join(cfg['spurious_concepts'])}; newly aligned units: "
                     f"{s['n_spurious_units']:,}")
        lines.extend(f"    ! {hit}" for hit in s["spurious"][:max_rows])
    for note in result.notes:
        lines.append(f"  note: {note}")

    changed = result.units[result.units["changed"]] if len(result.units) else result.units
    if len(changed):
        order = np.argsort(-np.nan_to_num(np.abs(changed["delta_auc"].to_numpy(float)), nan=np.inf), kind="stable")
        order = sorted(order, key=lambda i: (not changed["label_changed"].iloc[i], not len(
            changed["spurious_gained"].iloc[i])))
        shown = changed.iloc[order[:max_rows]]
        lines.append("")
        lines.append(f"changed units ({len(shown):,} of {len(changed):,}):")
        lines.append(f"  {'unit':<22} {'best A':<18} {'best B':<18} {'AUC A':>6} {'AUC B':>6} {'Δ AUC':>7}  why")
        for r in shown.itertuples(index=False):
            uid = f"{r.layer}:{int(r.unit):04d}"
            extra = []
            if len(r.gained):
                extra.append("+" + ",".join(r.gained[:3]) + ("…" if len(r.gained) > 3 else ""))
            if len(r.lost):
                extra.append("-" + ",".join(r.lost[:3]) + ("…" if len(r.lost) > 3 else ""))
            auc_a = "—" if not np.isfinite(r.auc_a) else f"{r.auc_a:.3f}"
            auc_b = "—" if not np.isfinite(r.auc_b) else f"{r.auc_b:.3f}"
            d = "—" if not np.isfinite(r.delta_auc) else f"{r.delta_auc:+.3f}"
            lines.append(f"  {_cell(uid, 22):<22} {_cell(r.best_concept_a, 18):<18} {_cell(r.best_concept_b, 18):<18} "
                         f"{auc_a:>6} {auc_b:>6} {d:>7}  {r.reasons} {' '.join(extra)}".rstrip())

    c = result.concepts
    moved = c[(c["delta_n_units"] != 0) | (c["in_a"] != c["in_b"])]
    if len(moved):
        order = np.argsort(-np.abs(moved["delta_n_units"].to_numpy()), kind="stable")[:max_rows]
        lines.append("")
        lines.append(f"concept coverage changes ({len(order):,} of {len(moved):,}):")
        lines.append(f"  {'concept':<24} {'units A':>8} {'units B':>8} {'best AUC A':>10} {'best AUC B':>10}")
        for r in moved.iloc[order].itertuples(index=False):
            ba = "—" if not np.isfinite(r.best_auc_a) else f"{r.best_auc_a:.3f}"
            bb = "—" if not np.isfinite(r.best_auc_b) else f"{r.best_auc_b:.3f}"
            flag = "  (spurious)" if r.spurious else ""
            lines.append(f"  {_cell(r.concept, 24):<24} {r.n_units_a:>8,} {r.n_units_b:>8,} {ba:>10} {bb:>10}{flag}")

    if result.matching is not None and "matching" in s:
        m = s["matching"]
        mean = "—" if m["mean_correlation"] is None else f"{m['mean_correlation']:.3f}"
        lines.append("")
        lines.append(f"matched units {m['layer_a']} (A) ↔ {m['layer_b']} (B): {m['n_pairs']:,} pairs, mean correlation "
                     f"{mean}, {m['n_label_changed']:,} with a different best concept")
    if not len(changed) and s["n_units_compared"]:
        lines.append("")
        lines.append("no unit changed.")
    return "\n".join(lines)
