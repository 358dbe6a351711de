"""The report's Hierarchy view, shown when the run has the hierarchy stage's or the spatial method's tables.

Read leniently from the run directory (any of ``concept_units.parquet``, ``multimodal_units.parquet``,
``hierarchy_units.parquet``, ``hierarchy_summary.json``, plus ``hierarchy.parquet`` for the tree; and of the
spatial method's ``localisation.parquet``, ``concept_spatial.parquet`` (its top channels only) and
``spatial.json``), and rendered as static HTML: per layer the depth of the units' best concepts and the
multimodal units by LCA depth (inline SVG bar charts), a tree of the top parent concepts with each node's
collaborative units and their Shapley shares, the multimodal pairs; then the localisation IoU per level and per
concept for each conv layer, and the spatial channel ranking of a few concepts. Every run string goes through
`html.escape`; unit links are the ``#unit/<layer>/<unit>`` routes of the Units view, the layer percent-encoded
(a spatial layer, a bare module name such as ``conv4``, links to the first report layer of that module, e.g.
``conv4:mean``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from neuronscan.io import RunDir, get_fs, read_json, read_parquet
from neuronscan.report._svg import bar_svg

__all__ = ["HierarchyData", "load_hierarchy", "hierarchy_view"]

N_TREE_PARENTS = 8
"""Parent concepts shown in the tree (the shallowest first, then the most positives)."""
N_TREE_CHILDREN = 24
"""Children listed under each parent."""
N_PAIR_ROWS = 200
"""Rows of the multimodal-pairs table (highest AUCs first)."""
N_LOC_ROWS = 300
"""Concepts of the per-concept localisation table (by level, then name)."""
N_SPATIAL_CONCEPTS = 6
"""Concepts whose spatial channel ranking is shown (taken level by level, the best localised first)."""
N_SPATIAL_CHANNELS = 8
"""Top channels per concept and layer read from ``concept_spatial.parquet`` and shown."""
_DASH = "—"
_BAR_W = 60


@dataclass
class HierarchyData:
    """The hierarchy stage's outputs of a run (each None when its file is missing)."""

    concept_units: pd.DataFrame | None
    multimodal: pd.DataFrame | None
    units: pd.DataFrame | None
    summary: dict | None
    edges: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    localisation: pd.DataFrame | None = None
    """``localisation.parquet``: per (concept, layer) ``n_images``, ``mean_iou``, ``frac_iou_50``."""
    spatial: pd.DataFrame | None = None
    """The top `N_SPATIAL_CHANNELS` rows per (concept, layer) of ``concept_spatial.parquet``, with ``total``: the
    sum of ``shapley`` over all the layer's channels."""
    spatial_summary: dict | None = None
    """``spatial.json``."""

    @property
    def has_collaborative(self) -> bool:
        """Whether the hierarchy stage's tables (not only the spatial method's) are there."""
        return any(x is not None for x in (self.concept_units, self.multimodal, self.units, self.summary))


def _frame(uri: str, notes: list[str], name: str) -> pd.DataFrame | None:
    fs, path = get_fs(uri)
    if not fs.exists(path):
        return None
    try:
        return read_parquet(uri).to_pandas()
    except (OSError, ValueError) as exc:
        notes.append(f"{name} cannot be read ({exc}); the Hierarchy view leaves it out")
        return None


def _json(run: RunDir, name: str, notes: list[str]) -> dict | None:
    uri = run.path(name)
    if not run.exists(uri):
        return None
    try:
        value = read_json(uri)
    except (OSError, ValueError) as exc:
        notes.append(f"{name} cannot be read ({exc})")
        return None
    return value if isinstance(value, dict) else None


def _top_channels(uri: str, notes: list[str], name: str) -> pd.DataFrame | None:
    """The first `N_SPATIAL_CHANNELS` ranks of each (concept, layer) of ``concept_spatial.parquet``, and
    ``total``, the layer's summed ``shapley`` (read in Arrow: the file has a row per channel of every concept)."""
    fs, path = get_fs(uri)
    if not fs.exists(path):
        return None
    columns = ["concept", "depth", "layer", "rank", "unit", "shapley"]
    try:
        table = read_parquet(uri, columns)
        totals = table.group_by(["concept", "layer"]).aggregate([("shapley", "sum")]).to_pandas()
        top = table.filter(pc.less(table["rank"], N_SPATIAL_CHANNELS)).to_pandas()
    except (OSError, ValueError, KeyError) as exc:
        notes.append(f"{name} cannot be read ({exc}); the Hierarchy view leaves it out")
        return None
    totals = totals.rename(columns={"shapley_sum": "total"})
    return top.merge(totals, on=["concept", "layer"], how="left").sort_values(
        ["concept", "layer", "rank"], kind="stable").reset_index(drop=True)


def load_hierarchy(run_dir: str) -> HierarchyData | None:
    """The hierarchy and spatial tables of ``run_dir``, or None when the run has none of them."""
    from neuronscan.hierarchy import (
        CONCEPT_SPATIAL_FILE,
        CONCEPT_UNITS_FILE,
        HIERARCHY_SUMMARY_FILE,
        HIERARCHY_UNITS_FILE,
        LOCALISATION_FILE,
        MULTIMODAL_UNITS_FILE,
        SPATIAL_SUMMARY_FILE,
    )

    run = RunDir(run_dir)
    notes: list[str] = []
    cu = _frame(run.path(CONCEPT_UNITS_FILE), notes, CONCEPT_UNITS_FILE)
    mm = _frame(run.path(MULTIMODAL_UNITS_FILE), notes, MULTIMODAL_UNITS_FILE)
    hu = _frame(run.path(HIERARCHY_UNITS_FILE), notes, HIERARCHY_UNITS_FILE)
    summary = _json(run, HIERARCHY_SUMMARY_FILE, notes)
    loc = _frame(run.path(LOCALISATION_FILE), notes, LOCALISATION_FILE)
    ranks = _top_channels(run.path(CONCEPT_SPATIAL_FILE), notes, CONCEPT_SPATIAL_FILE)
    spatial_summary = _json(run, SPATIAL_SUMMARY_FILE, notes)
    if all(x is None for x in (cu, mm, hu, summary, loc, ranks, spatial_summary)):
        return None
    edges: list[tuple[str, str]] = []
    h = _frame(run.hierarchy, notes, "hierarchy.parquet")
    if h is not None and {"concept", "parent"} <= set(h.columns):
        edges = [(str(c), str(p)) for c, p in zip(h["concept"], h["parent"])]
    return HierarchyData(cu, mm, hu, summary, edges, notes, loc, ranks, spatial_summary)


# ------------------------------------------------------------------------------------------------ render


def _fmt(value: Any, digits: int = 3) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return _DASH
    return f"{x:.{digits}f}" if math.isfinite(x) else _DASH


def _int(value: Any) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return _DASH
    return f"{int(x):,}" if math.isfinite(x) else _DASH


def _plain(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _DASH
    if isinstance(value, float):
        return f"{value:,.6g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _kv(rows: list[tuple[str, Any]]) -> str:
    if not rows:
        return f'<p class="muted">{_DASH}</p>'
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(_plain(v))}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _panel(title: str, body: str) -> str:
    return f'<div class="panel"><h3>{escape(title)}</h3>{body}</div>'


def _uid(layer: str, unit: Any) -> str:
    try:
        return f"{layer}:{int(unit):04d}"
    except (TypeError, ValueError):
        return f"{layer}:{unit}"


def _unit_link(layer: str, unit: Any) -> str:
    href = f"#unit/{quote(str(layer), safe='')}/{int(unit)}"
    return f'<a class="unit-link" href="{escape(href)}">{escape(_uid(layer, unit))}</a>'


def _share_bar(share: float) -> str:
    w = max(0.0, min(1.0, float(share) if math.isfinite(float(share)) else 0.0)) * _BAR_W
    return (f'<svg class="share" width="{_BAR_W}" height="8" viewBox="0 0 {_BAR_W} 8" aria-hidden="true">'
            f'<rect width="{_BAR_W}" height="8" fill="#e5e7eb"/><rect width="{w:.1f}" height="8" fill="#7c3aed"/>'
            "</svg>")


def hierarchy_view(data: HierarchyData, layers: list[str]) -> str:
    """The whole ``<section id="view-hierarchy">``."""
    out = ['<section class="view" id="view-hierarchy" hidden>']
    if data.notes:
        items = "".join(f"<li>{escape(n)}</li>" for n in data.notes)
        out.append(f'<div class="panel notes"><h3>Notes</h3><ul>{items}</ul></div>')
    if data.has_collaborative:
        out.append(_facts(data))
        out.append(_layer_panel(data, layers))
        out.append(_tree(data))
        out.append(_pairs(data))
    out.append(_spatial(data, layers))
    out.append("</section>")
    return "\n".join(out)


def _facts(data: HierarchyData) -> str:
    summary = data.summary or {}
    settings = summary.get("settings") if isinstance(summary.get("settings"), dict) else {}
    counts = summary.get("counts") if isinstance(summary.get("counts"), dict) else {}
    setting_rows = [(k, settings.get(k)) for k in ("target_auc", "target_fraction", "max_units", "n_candidates",
                                                    "holdout", "min_positives", "l2", "seed",
                                                    "multimodal_lca_depth") if k in settings]
    count_rows = [(k, counts.get(k)) for k in ("concepts_probed", "probes", "probes_reached",
                                                "probes_without_candidates", "multimodal_units", "multimodal_pairs",
                                                "alpha", "min_auc") if k in counts]
    what = ("<p>Collaborative units: for each concept with enough images, at every level of the hierarchy, the "
            "units of a layer that greedy forward selection adds to a joint linear probe until its held-out AUC "
            "reaches the target; a unit's share is its mean |Shapley value| on held-out positives. "
            "Multimodal: a unit aligned with two concepts whose lowest common ancestor is at depth ≤ "
            f"{escape(_plain(settings.get('multimodal_lca_depth', 0)))} (−1: no common ancestor).</p>")
    return ('<div class="panels">' + _panel("Hierarchy", what) + _panel("Settings", _kv(setting_rows))
            + _panel("Counts", _kv(count_rows)) + "</div>")


def _layer_panel(data: HierarchyData, layers: list[str]) -> str:
    summary = data.summary or {}
    per_layer = summary.get("layers") if isinstance(summary.get("layers"), dict) else {}
    if not per_layer and data.units is not None and len(data.units):
        per_layer = _summary_from_units(data.units)
    if not per_layer:
        return ""
    names = [n for n in layers if n in per_layer] + [n for n in per_layer if n not in layers]
    rows, charts = [], []
    for name in names:
        s = per_layer[name] if isinstance(per_layer[name], dict) else {}
        rows.append(
            f"<tr><td>{escape(str(name))}</td><td class=\"num\">{_int(s.get('units_best_aligned'))}</td>"
            f"<td class=\"num\">{_fmt(s.get('mean_best_depth'), 2)}</td>"
            f"<td class=\"num\">{_int(s.get('multimodal_units'))}</td>"
            f"<td class=\"num\">{_int(s.get('multimodal_pairs'))}</td></tr>"
        )
        depth_counts = _int_keys(s.get("best_depth_counts"))
        levels = list(range(min(depth_counts), max(depth_counts) + 1)) if depth_counts else []
        by_depth = _int_keys(s.get("multimodal_units_by_depth"))
        mm_levels = sorted(by_depth)
        charts.append(
            bar_svg([str(d) for d in levels], [depth_counts.get(d, 0) for d in levels],
                      title=f"{name}: depth of best concept", x_label="depth (units whose best concept is aligned)")
            + bar_svg(["none" if d < 0 else str(d) for d in mm_levels], [by_depth[d] for d in mm_levels],
                      title=f"{name}: multimodal units", x_label="at LCA depth ≤ d", color="#0891b2")
        )
    head = ('<th>layer</th><th class="num">units with an aligned best concept</th>'
            '<th class="num">mean depth of best concept</th><th class="num">multimodal units</th>'
            '<th class="num">multimodal pairs</th>')
    return (f'<div class="panel"><h3>Depth of best concepts and multimodal units per layer</h3>'
            f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            + f'<div class="layer-charts"><div class="charts">{"".join(charts)}</div></div></div>')


def _int_keys(value: Any) -> dict[int, int]:
    out: dict[int, int] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            try:
                out[int(k)] = int(v)
            except (TypeError, ValueError):
                continue
    return out


def _summary_from_units(units: pd.DataFrame) -> dict:
    """Per-layer numbers from ``hierarchy_units`` alone (when the summary file is missing)."""
    out = {}
    for layer, g in units.groupby("layer", sort=False):
        aligned = g[g.get("best_aligned", pd.Series(False, index=g.index)).fillna(False).astype(bool)]
        depth = pd.to_numeric(aligned.get("best_depth"), errors="coerce").dropna().astype(int)
        out[str(layer)] = {
            "units_best_aligned": int(len(aligned)),
            "mean_best_depth": float(depth.mean()) if len(depth) else None,
            "best_depth_counts": {str(d): int(n) for d, n in depth.value_counts().sort_index().items()},
            "multimodal_units": int(g.get("multimodal", pd.Series(False, index=g.index)).fillna(False).sum()),
            "multimodal_pairs": int(pd.to_numeric(g.get("n_multimodal_pairs"), errors="coerce").fillna(0).sum()),
        }
    return out


@dataclass
class _Set:
    layer: str
    n_units: int
    auc: float
    reached: bool
    units: list[tuple[int, float]]  # (unit, shapley share), in selection order


def _sets(cu: pd.DataFrame | None) -> dict[str, list[_Set]]:
    """Per concept its collaborative sets, the best first (highest held-out AUC, then fewest units)."""
    out: dict[str, list[_Set]] = {}
    if cu is None or not len(cu) or not {"concept", "layer", "unit", "rank"} <= set(cu.columns):
        return out
    cu = cu.sort_values(["concept", "layer", "rank"], kind="stable")
    for (concept, layer), g in cu.groupby(["concept", "layer"], sort=False):
        auc = float(pd.to_numeric(g["cumulative_auc"], errors="coerce").iloc[-1]) if "cumulative_auc" in g \
            else float("nan")
        shares = pd.to_numeric(g["shapley"], errors="coerce") if "shapley" in g else pd.Series(np.nan, g.index)
        reached = bool(g["reached"].iloc[-1]) if "reached" in g else False
        out.setdefault(str(concept), []).append(
            _Set(str(layer), len(g), auc, reached, [(int(u), float(s)) for u, s in zip(g["unit"], shares)]))
    for sets in out.values():
        sets.sort(key=lambda s: (-(s.auc if math.isfinite(s.auc) else -1.0), s.n_units))
    return out


def _units(n: int) -> str:
    return f"{n} unit{'s' * (n != 1)}"


def _node(name: str, depth: Any, n_pos: Any, sets: list[_Set]) -> str:
    """One concept of the tree: its best set's units with Shapley shares, and its sets in the other layers."""
    head = (f'<span class="cname">{escape(name)}</span> <span class="muted">depth {escape(_int(depth))}'
            f" · {escape(_int(n_pos))} images</span>")
    if not sets:
        return f'{head} <span class="muted">· no probe (too few images, or every image)</span>'
    best = sets[0]
    chips = "".join(
        f'<span class="chip-unit">{_unit_link(best.layer, u)} {_share_bar(s)} '
        f'<span class="num">{escape(_fmt(100 * s, 0) if math.isfinite(s) else _DASH)}%</span></span>'
        for u, s in best.units)
    verdict = "reached" if best.reached else "not reached"
    others = " · ".join(f"{escape(s.layer)}: {_units(s.n_units)}, AUC {escape(_fmt(s.auc))}" for s in sets[1:])
    more = f'<span class="muted other-sets">other layers: {others}</span>' if others else ""
    return (f'{head}<span class="set">{escape(best.layer)}: {_units(best.n_units)}, '
            f'held-out AUC {escape(_fmt(best.auc))} ({verdict})</span><span class="chips">{chips}</span>{more}')


def _tree(data: HierarchyData) -> str:
    sets = _sets(data.concept_units)
    if not sets:
        return ""
    cu = data.concept_units
    depth = cu.groupby("concept")["depth"].first().to_dict() if "depth" in cu else {}
    n_pos = cu.groupby("concept")["n_pos"].first().to_dict() if "n_pos" in cu else {}
    children: dict[str, list[str]] = {}
    for child, parent in data.edges:
        children.setdefault(parent, []).append(child)
    parents = [p for p in children if p in sets]
    parents.sort(key=lambda p: (depth.get(p, 0), -float(n_pos.get(p, 0)), p))
    shown = parents[:N_TREE_PARENTS]
    if not shown:  # no hierarchy (or no parent with a set): the concepts with the largest sets
        ranked = sorted(sets, key=lambda c: (-sets[c][0].n_units, c))[:N_TREE_PARENTS]
        items = "".join(f'<li class="node">{_node(c, depth.get(c), n_pos.get(c), sets[c])}</li>' for c in ranked)
        return _panel("Collaborative units", f'<ul class="tree">{items}</ul>')
    blocks = []
    for p in shown:
        kids = sorted(children.get(p, []), key=lambda c: (c not in sets, -float(n_pos.get(c, 0)), c))
        items = "".join(f'<li class="node">{_node(c, depth.get(c), n_pos.get(c), sets.get(c, []))}</li>'
                        for c in kids[:N_TREE_CHILDREN])
        if len(kids) > N_TREE_CHILDREN:
            items += f'<li class="muted">… {len(kids) - N_TREE_CHILDREN:,} more</li>'
        blocks.append(f'<li class="node"><details open><summary>{_node(p, depth.get(p), n_pos.get(p), sets[p])}'
                      f'</summary><ul class="tree">{items}</ul></details></li>')
    note = (f'<p class="muted">The {len(shown)} shallowest parent concepts with a collaborative set (of '
            f"{len(parents):,}), each with its children; a node shows the set of its best layer (the highest "
            "held-out AUC), its units in the order they were added, and each unit's Shapley share.</p>")
    return _panel("Concept tree: collaborative units and Shapley shares",
                  note + f'<ul class="tree">{"".join(blocks)}</ul>')


def _pairs(data: HierarchyData) -> str:
    mm = data.multimodal
    if mm is None:
        return ""
    need = {"layer", "unit", "concept_a", "concept_b"}
    if not need <= set(mm.columns):
        return _panel("Multimodal pairs", f'<p class="muted">{_DASH}</p>')
    mm = mm.copy()
    for column in ("auc_a", "auc_b", "lca_depth"):
        mm[column] = pd.to_numeric(mm[column], errors="coerce") if column in mm else np.nan
    if "lca" not in mm:
        mm["lca"] = None
    order = mm.sort_values(["auc_b", "auc_a"], ascending=False, na_position="last", kind="stable").head(N_PAIR_ROWS)
    rows = []
    for r in order.itertuples(index=False):
        lca = r.lca
        lca_text = ", ".join(str(x) for x in lca) if isinstance(lca, (list, tuple, np.ndarray)) else _plain(lca)
        rows.append(
            f"<tr><td class=\"uid\">{_unit_link(r.layer, r.unit)}</td><td>{escape(str(r.concept_a))}</td>"
            f'<td class="num">{_fmt(r.auc_a)}</td><td>{escape(str(r.concept_b))}</td>'
            f'<td class="num">{_fmt(r.auc_b)}</td><td>{escape(lca_text or "none")}</td>'
            f'<td class="num">{_int(r.lca_depth)}</td></tr>'
        )
    head = ('<th>unit</th><th>concept A</th><th class="num">AUC A</th><th>concept B</th><th class="num">AUC B</th>'
            '<th>lowest common ancestor</th><th class="num">LCA depth</th>')
    body = "".join(rows) or '<tr><td class="muted" colspan="7">no multimodal unit</td></tr>'
    n_units = mm.groupby(["layer", "unit"]).ngroups
    return (
        f'<div class="panel"><h3>Multimodal pairs ({len(rows):,} of {len(mm):,} pairs, {n_units:,} units)</h3>'
        '<div class="hfilter"><label>filter pairs <input type="search" id="h-filter" '
        'placeholder="unit or concept" autocomplete="off"></label></div>'
        f'<table class="grid hfilterable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    )


# ------------------------------------------------------------------------------------------------ spatial


def _report_layer(layer: str, layers: list[str]) -> str | None:
    """The report layer whose unit cards show channel ``layer``'s units: itself, else the first ``layer:stat``."""
    if layer in layers:
        return layer
    return next((name for name in layers if name.split(":", 1)[0] == layer), None)


def _channel(layer: str, unit: Any, layers: list[str]) -> str:
    target = _report_layer(layer, layers)
    if target is None:
        return f'<span class="num">{escape(_uid(layer, unit))}</span>'
    href = f"#unit/{quote(str(target), safe='')}/{int(unit)}"
    return f'<a class="unit-link" href="{escape(href)}">{escape(_uid(layer, unit))}</a>'


def _spatial_layers(data: HierarchyData) -> list[str]:
    summary = data.spatial_summary or {}
    named = [str(x) for x in summary.get("layers", [])] if isinstance(summary.get("layers"), list) else []
    seen = list(named)
    for frame in (data.localisation, data.spatial):
        if frame is not None and "layer" in frame:
            seen += [str(x) for x in pd.unique(frame["layer"]) if str(x) not in seen]
    return list(dict.fromkeys(seen))


def _grids(data: HierarchyData) -> dict[str, str]:
    """Each layer's feature-map grid (``h×w``), from ``spatial.json``'s tasks."""
    out: dict[str, str] = {}
    tasks = (data.spatial_summary or {}).get("tasks")
    for t in tasks if isinstance(tasks, list) else []:
        grid = t.get("grid") if isinstance(t, dict) else None
        if isinstance(grid, list) and len(grid) == 2 and str(t.get("layer")) not in out:
            out[str(t.get("layer"))] = f"{_int(grid[0])}×{_int(grid[1])}"
    return out


def _spatial(data: HierarchyData, layers: list[str]) -> str:
    """Localisation per level and per concept, and the channel ranking of a few concepts (HINT's method)."""
    if data.localisation is None and data.spatial is None and data.spatial_summary is None:
        return ""
    summary = data.spatial_summary or {}
    settings = summary.get("settings") if isinstance(summary.get("settings"), dict) else {}
    timings = summary.get("timings") if isinstance(summary.get("timings"), dict) else {}
    tasks = summary.get("tasks") if isinstance(summary.get("tasks"), list) else []
    setting_rows = [(k, settings.get(k)) for k in ("saliency", "saliency_at", "threshold", "loc_threshold",
                                                    "loc_box", "per_leaf", "max_images", "eval_images", "seed")
                    if k in settings]
    if summary.get("boxes") is not None or "boxes" in summary:
        setting_rows.append(("boxes", summary.get("boxes") or "none"))
    count_rows = [("concepts", summary.get("n_concepts")), ("tasks (concept, layer)", summary.get("n_tasks")),
                  ("tasks skipped", sum(1 for t in tasks if isinstance(t, dict) and t.get("skipped"))),
                  ("seconds per task", timings.get("task_seconds_mean")), ("seconds", timings.get("seconds"))]
    count_rows = [(k, v) for k, v in count_rows if v is not None] if summary else []
    what = ("<p>HINT's spatial method, per concept and conv layer: the grid positions where the saliency of the "
            "concept's logit is high are its responsible regions; a linear classifier on the channel vector at "
            "each position separates them from the background; its channels are ranked by mean |Shapley value| "
            "over the responsible positions. Localisation: on held-out images the classifier's map, upsampled "
            "and thresholded, gives a box; its IoU with the ground-truth box (of the concept, or of a concept "
            "under it) is averaged per concept, and per level over the concepts that have boxes.</p>")
    out = ['<div class="panels">' + _panel("Spatial concepts (HINT)", what) + _panel("Spatial settings",
           _kv(setting_rows)) + _panel("Spatial counts", _kv(count_rows)) + "</div>"]
    names = _spatial_layers(data)
    grids = _grids(data)
    out.append(_localisation(data.localisation, names, grids))
    out.append(_channel_ranking(data, names, layers))
    return "\n".join(x for x in out if x)


def _loc_frame(loc: pd.DataFrame | None) -> pd.DataFrame | None:
    if loc is None or not {"concept", "layer", "mean_iou"} <= set(loc.columns):
        return None
    loc = loc.copy()
    loc["concept"] = loc["concept"].astype(str)
    loc["layer"] = loc["layer"].astype(str)
    for column in ("depth", "n_images", "mean_iou", "frac_iou_50"):
        loc[column] = pd.to_numeric(loc[column], errors="coerce") if column in loc else np.nan
    loc["depth"] = loc["depth"].fillna(-1).astype(int)
    loc["n_images"] = loc["n_images"].fillna(0)
    return loc


def _layer_head(layer: str, grids: dict[str, str]) -> str:
    grid = grids.get(layer)
    return escape(f"{layer} ({grid})" if grid else layer)


def _localisation(loc: pd.DataFrame | None, names: list[str], grids: dict[str, str]) -> str:
    loc = _loc_frame(loc)
    if loc is None:
        return ""
    names = [n for n in names if n in set(loc["layer"])]
    done = loc[loc["n_images"] > 0]
    levels = sorted(set(loc["depth"]))
    head = "<th>level</th><th class=\"num\">concepts with boxes</th>" + "".join(
        f'<th class="num">{_layer_head(n, grids)} mean IoU</th><th class="num">{escape(n)} IoU ≥ 0.5</th>'
        for n in names)
    rows = []
    for d in levels:
        at = done[done["depth"] == d]
        cells = []
        for n in names:
            g = at[at["layer"] == n]
            cells.append(f'<td class="num">{_fmt(g["mean_iou"].mean() if len(g) else np.nan, 2)}</td>'
                         f'<td class="num">{_fmt(g["frac_iou_50"].mean() if len(g) else np.nan, 2)}</td>')
        rows.append(f'<tr><td>{escape(_int(d))}</td><td class="num">{_int(at["concept"].nunique())}</td>'
                    + "".join(cells) + "</tr>")
    level_note = ('<p class="muted">Per level (concept depth; −1 without a hierarchy): the mean over its concepts '
                  "with ground-truth boxes of each concept's mean IoU and of its fraction of images with IoU ≥ "
                  "0.5.</p>")
    by_level = (f'<div class="panel"><h3>Localisation by level</h3>{level_note}<table class="grid loc-levels">'
                f'<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')

    concepts = (loc.groupby("concept")["depth"].first().reset_index()
                .sort_values(["depth", "concept"], kind="stable"))
    by_key = {(r.concept, r.layer): r for r in loc.itertuples(index=False)}
    head = "<th>concept</th><th class=\"num\">level</th>" + "".join(
        f'<th class="num">{escape(n)} mean IoU</th><th class="num">{escape(n)} IoU ≥ 0.5</th>'
        f'<th class="num">{escape(n)} images</th>' for n in names)
    rows = []
    for c in concepts.head(N_LOC_ROWS).itertuples(index=False):
        cells = []
        for n in names:
            r = by_key.get((c.concept, n))
            if r is None or not r.n_images:
                cells.append(f'<td class="num muted">{_DASH}</td><td class="num muted">{_DASH}</td>'
                             f'<td class="num">{_int(r.n_images if r is not None else np.nan)}</td>')
                continue
            share = float(r.mean_iou) if math.isfinite(float(r.mean_iou)) else 0.0
            cells.append(f'<td class="num">{_share_bar(share)} {_fmt(r.mean_iou, 2)}</td>'
                         f'<td class="num">{_fmt(r.frac_iou_50, 2)}</td><td class="num">{_int(r.n_images)}</td>')
        rows.append(f'<tr><td class="cname">{escape(c.concept)}</td><td class="num">{escape(_int(c.depth))}</td>'
                    + "".join(cells) + "</tr>")
    more = (f'<p class="muted">… {len(concepts) - N_LOC_ROWS:,} more concepts in localisation.parquet</p>'
            if len(concepts) > N_LOC_ROWS else "")
    per_concept = (f'<div class="panel"><h3>Localisation per concept ({len(concepts):,} concepts; images: '
                   f'held-out images with a box)</h3><table class="grid loc-concepts"><thead><tr>{head}</tr></thead>'
                   f'<tbody>{"".join(rows)}</tbody></table>{more}</div>')
    return by_level + per_concept


def _shown_concepts(data: HierarchyData) -> list[str]:
    """Up to `N_SPATIAL_CONCEPTS` concepts with a ranking: one per level in turn, the best localised first."""
    ranks = data.spatial
    if ranks is None or not len(ranks) or not {"concept", "layer", "unit", "rank"} <= set(ranks.columns):
        return []
    ranks = ranks.assign(concept=ranks["concept"].astype(str))
    depth = (pd.to_numeric(ranks.groupby("concept")["depth"].first(), errors="coerce").fillna(-1).astype(int)
             if "depth" in ranks else pd.Series(dtype=int))
    loc = _loc_frame(data.localisation)
    iou = (loc[loc["n_images"] > 0].groupby("concept")["mean_iou"].mean() if loc is not None
           else pd.Series(dtype=float))

    def order(c: str) -> tuple[float, str]:
        v = float(iou.get(c, np.nan))
        return (-v if math.isfinite(v) else 1.0, c)  # the best localised first, concepts without boxes last

    by_level: dict[int, list[str]] = {}
    for c in pd.unique(ranks["concept"]):
        by_level.setdefault(int(depth.get(c, -1)), []).append(c)
    queues = [sorted(by_level[d], key=order) for d in sorted(by_level)]
    shown: list[str] = []
    while len(shown) < N_SPATIAL_CONCEPTS and any(queues):
        for q in queues:
            if q and len(shown) < N_SPATIAL_CONCEPTS:
                shown.append(q.pop(0))
    return shown


def _channel_ranking(data: HierarchyData, names: list[str], layers: list[str]) -> str:
    shown = _shown_concepts(data)
    if not shown:
        return ""
    ranks = data.spatial.copy()
    ranks["concept"] = ranks["concept"].astype(str)
    ranks["layer"] = ranks["layer"].astype(str)
    loc = _loc_frame(data.localisation)
    loc_by = {(r.concept, r.layer): r for r in loc.itertuples(index=False)} if loc is not None else {}
    n_concepts = ranks["concept"].nunique()
    items = []
    for concept in shown:
        g = ranks[ranks["concept"] == concept]
        depth = g["depth"].iloc[0] if "depth" in g else None
        blocks = []
        for layer in [n for n in names if n in set(g["layer"])]:
            rows = g[g["layer"] == layer].sort_values("rank", kind="stable")
            shap = pd.to_numeric(rows["shapley"], errors="coerce") if "shapley" in rows else pd.Series(np.nan)
            total = float(pd.to_numeric(rows["total"], errors="coerce").iloc[0]) if "total" in rows else np.nan
            shares = shap / total if math.isfinite(total) and total > 0 else shap * np.nan
            top = float(shap.max()) if len(shap) and np.isfinite(shap).any() else np.nan
            # The text is each channel's share of the layer's total; the bar is relative to the top channel.
            bars = shap / top if math.isfinite(top) and top > 0 else shap * 0.0
            chips = "".join(
                f'<span class="chip-unit">{_channel(layer, u, layers)} {_share_bar(b if math.isfinite(b) else 0.0)}'
                f' <span class="num">{escape(_fmt(100 * s, 0) if math.isfinite(s) else _DASH)}%</span></span>'
                for u, s, b in zip(rows["unit"], shares.astype(float), bars.astype(float)))
            held = float(np.nansum(shares)) if np.isfinite(shares).any() else np.nan
            r = loc_by.get((concept, layer))
            iou = (f", mean IoU {escape(_fmt(r.mean_iou, 2))} on {escape(_int(r.n_images))} images"
                   if r is not None and r.n_images else ", no localisation (no boxes)")
            blocks.append(f'<span class="set">{escape(layer)}: the top {len(rows)} channels hold '
                          f"{escape(_fmt(100 * held, 0))}% of the mean |Shapley value|{iou}</span>"
                          f'<span class="chips">{chips}</span>')
        items.append(f'<li class="node"><span class="cname">{escape(concept)}</span> <span class="muted">depth '
                     f"{escape(_int(depth))}</span>{''.join(blocks)}</li>")
    note = (f'<p class="muted">{len(shown)} of {n_concepts:,} concepts, one level after another, the best '
            "localised first: per layer its top channels by mean |Shapley value| of the concept classifier over "
            "the responsible positions, each with its share of the layer's total (the bars are relative to the "
            "top channel).</p>")
    return _panel("Spatial channel ranking", note + f'<ul class="tree spatial-ranking">{"".join(items)}</ul>')
