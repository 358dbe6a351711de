"""The report's Hierarchy view, shown when the run has the hierarchy stage's tables.

Read leniently from the run directory (any of ``concept_units.parquet``, ``multimodal_units.parquet``,
``hierarchy_units.parquet``, ``hierarchy_summary.json``, plus ``hierarchy.parquet`` for the tree), and
rendered as static HTML: per layer the depth of the units' best concepts and the multimodal units by LCA depth
(inline SVG bar charts), a tree of the top parent concepts with each node's collaborative units and their
Shapley shares, and the multimodal pairs. Every run string goes through `html.escape`; unit links are the
``#unit/<layer>/<unit>`` routes of the Units view, the layer percent-encoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from neuronscan.io import RunDir, get_fs, read_json, read_parquet
from neuronscan.report._svg import bar_svg

__all__ = ["HierarchyData", "load_hierarchy", "hierarchy_view"]

N_TREE_PARENTS = 8
"""Parent concepts shown in the tree (the shallowest first, then the most positives)."""
N_TREE_CHILDREN = 24
"""Children listed under each parent."""
N_PAIR_ROWS = 200
"""Rows of the multimodal-pairs table (highest AUCs first)."""
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


def _frame(uri: str, notes: list[str], name: str) -> pd.DataFrame | None:
    fs, path = get_fs(uri)
    if not fs.exists(path):
        return None
    try:
        return read_parquet(uri).to_pandas()
    except (OSError, ValueError) as exc:
        notes.append(f"{name} cannot be read ({exc}); the Hierarchy view leaves it out")
        return None


def load_hierarchy(run_dir: str) -> HierarchyData | None:
    """The hierarchy tables of ``run_dir``, or None when the run has none of them."""
    from neuronscan.hierarchy import (
        CONCEPT_UNITS_FILE,
        HIERARCHY_SUMMARY_FILE,
        HIERARCHY_UNITS_FILE,
        MULTIMODAL_UNITS_FILE,
    )

    run = RunDir(run_dir)
    notes: list[str] = []
    cu = _frame(run.path(CONCEPT_UNITS_FILE), notes, CONCEPT_UNITS_FILE)
    mm = _frame(run.path(MULTIMODAL_UNITS_FILE), notes, MULTIMODAL_UNITS_FILE)
    hu = _frame(run.path(HIERARCHY_UNITS_FILE), notes, HIERARCHY_UNITS_FILE)
    summary = None
    uri = run.path(HIERARCHY_SUMMARY_FILE)
    if run.exists(uri):
        try:
            summary = read_json(uri)
        except (OSError, ValueError) as exc:
            notes.append(f"{HIERARCHY_SUMMARY_FILE} cannot be read ({exc})")
        if not isinstance(summary, dict):
            summary = None
    if cu is None and mm is None and hu is None and summary is None:
        return None
    edges: list[tuple[str, str]] = []
    h = _frame(run.hierarchy, notes, "hierarchy.parquet")
    if h is not None and {"concept", "parent"} <= set(h.columns):
        edges = [(str(c), str(p)) for c, p in zip(h["concept"], h["parent"])]
    return HierarchyData(cu, mm, hu, summary, edges, notes)


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
    out.append(_facts(data))
    out.append(_layer_panel(data, layers))
    out.append(_tree(data))
    out.append(_pairs(data))
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
