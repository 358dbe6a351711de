"""Write a run's audit report: one static, self-contained ``index.html`` plus thumbnails and data files.

Layout of the report folder::

    index.html           overview (inline SVG charts), the app shell, inline CSS and JS; the Hierarchy view
                         (`neuronscan.report._hierarchy`) when the run has the hierarchy stage's tables
    data/units-*.js      one per layer: every unit's card data, loaded when the layer is shown
    data/concepts.js     per concept, its best units across layers, loaded when Concepts is opened
    thumbs/<id>.jpg      top-image thumbnails; thumbs/placeholder.png for images that cannot be shown

The page makes no network request (a Content-Security-Policy forbids it) and works from ``file://``.
Data is escaped twice over: Python escapes every text put into HTML, and JSON is embedded with ``<``, ``>``
and ``&`` as ``\\u003c``-style escapes; the script only ever sets ``textContent``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from neuronscan.io import RunDir, is_remote, layer_dirname
from neuronscan.report._assets import CSS, JS
from neuronscan.report._discover import DiscoverData, discover_panels, load_discover
from neuronscan.report._hierarchy import HierarchyData, hierarchy_view, load_hierarchy
from neuronscan.report._load import RunData, layer_concepts, layer_neurons, layer_topk, open_run
from neuronscan.report._svg import bar_svg, histogram_svg, layer_bars_svg
from neuronscan.report._thumbs import PLACEHOLDER, RESIZE_MODES, Thumbnails, write_placeholder

__all__ = ["write_report"]

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
"""Unit cards and concept rows per page."""
N_TOP_CONCEPTS = 5
"""Concepts listed on each unit card, best AUC first."""
N_CONCEPT_UNITS = 10
"""Best units listed for each concept."""
N_DIFF_ROWS = 200
"""Rows of each diff table (largest changes first)."""
_GENERATOR = "neuronscan report"
_DASH = "—"


def write_report(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    diff_dir: str | os.PathLike | None = None,
    max_top_images: int = 8,
    thumb_size: int = 64,
) -> Path:
    """Write the static HTML audit report of a run.

    The report is built in a temporary folder beside ``out_dir`` and moved into place at the end, so an
    interrupted call never leaves a half report. An existing report in ``out_dir`` is replaced.

    Args:
        run_dir: the run's OUT folder (local path or fsspec URI) with ``run.json``, ``images.parquet``,
            ``neurons.parquet``, ``neuron_concepts.parquet`` and ``topk/<layer>.parquet``. Missing files and
            optional columns are tolerated and listed in the report.
        out_dir: local folder for the report; default ``run_dir/report`` (required for a remote run).
        diff_dir: folder with ``diff_units.parquet`` and/or ``diff_concepts.parquet`` comparing this run
            with another; adds a Diff section.
        max_top_images: top-activating images shown per unit (0 for none).
        thumb_size: side of the square thumbnails, in pixels (16 to 512).

    Returns:
        Path of the written ``index.html``.

    Raises:
        ValueError: if ``run_dir`` holds no run, ``out_dir`` is a non-empty folder that is not a neuronscan
            report, ``diff_dir`` holds no diff table, or an argument is out of range.

    Example:
        >>> from neuronscan.report import write_report
        >>> write_report("runs/demo")  # doctest: +SKIP
        PosixPath('runs/demo/report/index.html')
    """
    if isinstance(max_top_images, bool) or not isinstance(max_top_images, int) or max_top_images < 0:
        raise ValueError(f"max_top_images must be an integer >= 0, got {max_top_images!r}")
    if isinstance(thumb_size, bool) or not isinstance(thumb_size, int) or not 16 <= thumb_size <= 512:
        raise ValueError(f"thumb_size must be an integer between 16 and 512 pixels, got {thumb_size!r}")
    run_dir = os.fspath(run_dir)
    if run_dir.startswith("file://"):
        run_dir = run_dir[len("file://") :]
    if out_dir is None:
        if is_remote(run_dir):
            raise ValueError(f"run {run_dir!r} is remote; pass out_dir, a local folder for the report")
        out = Path(RunDir(run_dir).report)
    else:
        out = Path(out_dir)
    _check_replaceable(out)
    diff = _read_diff(os.fspath(diff_dir)) if diff_dir is not None else None
    run = open_run(run_dir)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _build(run, staging, diff, max_top_images, thumb_size)
        _commit(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("report of %s (%d layers) written to %s", run_dir, len(run.layers), out)
    return out / "index.html"


@dataclass
class _LayerSummary:
    """Per-layer numbers for the overview."""

    name: str
    n_units: int
    n_significant: int
    n_dead: int
    n_multimodal: int
    n_spurious: int
    best_auc: np.ndarray
    best_depth: np.ndarray


def _build(run: RunData, root: Path, diff: dict[str, pd.DataFrame] | None, max_top: int, thumb_size: int) -> None:
    """Write every file of the report into ``root``."""
    (root / "data").mkdir(parents=True)
    (root / "thumbs").mkdir()
    write_placeholder(root / "thumbs" / PLACEHOLDER, thumb_size)
    resize = _resize_mode(run)
    concept_index = _ConceptIndex(N_CONCEPT_UNITS)
    summaries: list[_LayerSummary] = []
    entries: list[dict[str, Any]] = []
    has_depth = "depth" in run.concept_columns
    from neuronscan.report._load import describe_payload, load_descriptions

    described = load_descriptions(run)  # patch descriptions (the describe stage), when it ran
    with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
        thumbs = Thumbnails(run.images, root / "thumbs", thumb_size, resize, pool)
        for i, layer in enumerate(run.layers):
            concepts = layer_concepts(run, layer)
            neurons = layer_neurons(run, layer, concepts)
            scored = concepts is not None
            if concepts is None:
                concepts = _concepts_from_neurons(neurons)
            topk = layer_topk(run, layer, max_top) if max_top > 0 else None
            payload, summary = _layer_payload(layer, neurons, concepts, scored, topk, thumbs, run.alpha)
            patches = describe_payload(described, layer)
            for record in payload["units"]:
                record.update(patches.get(record["u"], {}))
            file = f"data/units-{i:03d}-{_file_slug(layer)}.js"
            key = f"units:{i}"
            _write_data_js(root / file, key, payload)
            entries.append({"name": layer, "file": file, "key": key, "n_units": summary.n_units})
            summaries.append(summary)
            concept_index.add(i, concepts, neurons, run.alpha)
    if thumbs.failures:
        reasons = ", ".join(f"{n:,} {reason}" for reason, n in thumbs.failures.most_common())
        run.notes.append(f"{sum(thumbs.failures.values()):,} top images are shown as placeholders ({reasons})")
    concepts_payload = concept_index.payload(run.layers)
    concepts_entry = None
    if concepts_payload is not None:
        _write_data_js(root / "data" / "concepts.js", "concepts", concepts_payload)
        concepts_entry = {"file": "data/concepts.js", "key": "concepts"}
    index = {
        "page_size": PAGE_SIZE,
        "alpha": run.alpha,
        "thumb": thumb_size,
        "layers": entries,
        "concepts": concepts_entry,
    }
    hierarchy = load_hierarchy(run.root)
    discover = load_discover(run.root)  # the discover stage's tables (RUN/discover/), when it ran
    html = _page(run, summaries, has_depth, diff, index, sum(thumbs.made.values()), hierarchy, discover)
    (root / "index.html").write_text(html, encoding="utf-8")


def _layer_payload(
    layer: str,
    neurons: pd.DataFrame,
    concepts: pd.DataFrame,
    scored: bool,
    topk: pd.DataFrame | None,
    thumbs: Thumbnails,
    alpha: float,
) -> tuple[dict[str, Any], _LayerSummary]:
    """Card data of every unit of one layer, and the layer's overview numbers."""
    top_concepts: dict[int, list[list[Any]]] = {}
    if len(concepts):
        ranked = concepts.sort_values(["unit", "auc"], ascending=[True, False], na_position="last", kind="stable")
        head = ranked.groupby("unit", sort=False).head(N_TOP_CONCEPTS)
        columns = (head[c] for c in ("unit", "concept", "auc", "auprc", "q_value"))
        for unit, name, auc, auprc, q in zip(*columns):
            top_concepts.setdefault(int(unit), []).append([str(name), _num(auc), _num(auprc), _sig(q)])

    units = neurons["unit"].to_numpy(np.int64)
    if scored and len(concepts):
        min_q = concepts.groupby("unit")["q_value"].min()
        significant = pd.Series(units).map(min_q).to_numpy(float) <= alpha
    else:
        n_sig = pd.to_numeric(neurons["n_significant"], errors="coerce").to_numpy(float)
        best_q = pd.to_numeric(neurons["best_q"], errors="coerce").to_numpy(float)
        significant = (n_sig > 0) | (best_q <= alpha)
    depth_of = concepts.dropna(subset=["depth"]).drop_duplicates(["unit", "concept"])
    best_depth = (
        neurons[["unit", "best_concept"]]
        .merge(
            depth_of[["unit", "concept", "depth"]],
            left_on=["unit", "best_concept"],
            right_on=["unit", "concept"],
            how="left",
        )
        ["depth"]
        .to_numpy(float)
    )

    top_images: dict[int, list[list[Any]]] = {}
    images: dict[str, list[Any]] = {}
    if topk is not None and len(topk):
        made = thumbs.ensure(topk["image_id"].to_numpy(np.int64))
        images = {str(i): [thumbs.uri(i), int(ok)] for i, ok in made.items()}
        columns = (topk[c] for c in ("unit", "image_id", "value", "loc_y", "loc_x"))
        for unit, image_id, value, y, x in zip(*columns):
            top_images.setdefault(int(unit), []).append([str(int(image_id)), _sig(value, 4), _num(y, 3), _num(x, 3)])

    dead = neurons["dead"].to_numpy(bool)
    records = []
    for row, g, d in zip(neurons.itertuples(index=False), significant, best_depth):
        unit = int(row.unit)
        records.append(
            {
                "u": unit,
                "b": _text(row.best_concept),
                "a": _num(row.best_auc),
                "p": _num(row.best_auprc),
                "q": _sig(row.best_q),
                "s": _int(row.n_significant),
                "f": _text(row.formula),
                "fa": _num(row.formula_auc),
                "r": _num(row.best_correlation),
                "sim": [_num(row.sim_concept_corr), _num(row.sim_formula_corr), _num(row.sim_linear_corr)],
                "lt": [[_text(t), _num(w, 3)] for t, w in zip(_list(row.linear_terms), _list(row.linear_weights))],
                "c": _text(row.clip_label),
                "cs": _num(row.clip_score),
                "d": bool(row.dead),
                "m": bool(row.multimodal),
                "x": bool(row.spurious),
                "g": bool(g),
                "dp": _int(d),
                "t": top_concepts.get(unit, []),
                "i": top_images.get(unit, []),
            }
        )
    summary = _LayerSummary(
        name=layer,
        n_units=len(neurons),
        n_significant=int(np.sum(significant & ~dead)),
        n_dead=int(dead.sum()),
        n_multimodal=int(neurons["multimodal"].to_numpy(bool).sum()),
        n_spurious=int(neurons["spurious"].to_numpy(bool).sum()),
        best_auc=pd.to_numeric(neurons["best_auc"], errors="coerce").to_numpy(float),
        best_depth=best_depth[~dead],
    )
    return {"layer": layer, "units": records, "images": images}, summary


def _list(value: Any) -> list:
    """A list cell of ``neurons.parquet`` (numpy array, list, or missing) as a list."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return list(value)


class _ConceptIndex:
    """Accumulates, layer by layer, each concept's best units and counts for the Concepts view."""

    def __init__(self, top_n: int) -> None:
        self.top_n = top_n
        self.tops: list[pd.DataFrame] = []
        self.n_significant: Counter[str] = Counter()
        self.n_best: Counter[str] = Counter()
        self.depth: dict[str, float] = {}

    def add(self, layer_index: int, concepts: pd.DataFrame, neurons: pd.DataFrame, alpha: float) -> None:
        """Fold in one layer's concept scores (one row per unit and concept)."""
        if not len(concepts):
            return
        ranked = concepts.sort_values("auc", ascending=False, na_position="last", kind="stable")
        top = ranked.groupby("concept", sort=False).head(self.top_n)
        self.tops.append(
            pd.DataFrame(
                {
                    "concept": top["concept"].astype(str).to_numpy(object),
                    "layer": layer_index,
                    "unit": top["unit"].to_numpy(np.int64),
                    "auc": top["auc"].to_numpy(float),
                    "auprc": top["auprc"].to_numpy(float),
                    "q": top["q_value"].to_numpy(float),
                }
            )
        )
        significant = concepts.loc[concepts["q_value"] <= alpha, "concept"].astype(str)
        self.n_significant.update(significant.value_counts().to_dict())
        live = neurons.loc[~neurons["dead"].to_numpy(bool), "best_concept"].dropna().astype(str)
        self.n_best.update(live.value_counts().to_dict())
        depth = concepts.dropna(subset=["depth"]).drop_duplicates("concept")
        for name, value in zip(depth["concept"].astype(str), depth["depth"]):
            self.depth.setdefault(name, float(value))

    def payload(self, layers: list[str]) -> dict[str, Any] | None:
        """Concepts sorted by their best AUC, each with its best units across layers; None if no scores."""
        if not self.tops:
            return None
        ranked = pd.concat(self.tops, ignore_index=True)
        ranked = ranked.sort_values("auc", ascending=False, na_position="last", kind="stable")
        head = ranked.groupby("concept", sort=False).head(self.top_n)
        entries = []
        for name, group in head.groupby("concept", sort=False):
            units = [
                [int(li), int(u), _num(a), _num(p), _sig(q)]
                for li, u, a, p, q in zip(group["layer"], group["unit"], group["auc"], group["auprc"], group["q"])
            ]
            entries.append(
                {
                    "n": name,
                    "dp": _int(self.depth.get(name)),
                    "s": int(self.n_significant.get(name, 0)),
                    "nb": int(self.n_best.get(name, 0)),
                    "a": units[0][2],
                    "u": units,
                }
            )
        return {"layers": layers, "concepts": entries}


def _concepts_from_neurons(neurons: pd.DataFrame) -> pd.DataFrame:
    """Stand-in concept scores when ``neuron_concepts.parquet`` is missing: each unit's best concept only."""
    frame = pd.DataFrame(
        {
            "unit": neurons["unit"].to_numpy(np.int64),
            "concept": neurons["best_concept"].to_numpy(object),
            "auc": pd.to_numeric(neurons["best_auc"], errors="coerce").to_numpy(float),
            "auprc": pd.to_numeric(neurons["best_auprc"], errors="coerce").to_numpy(float),
            "q_value": pd.to_numeric(neurons["best_q"], errors="coerce").to_numpy(float),
            "depth": np.nan,
        }
    )
    return frame[frame["concept"].notna()].reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ page


def _page(
    run: RunData,
    summaries: list[_LayerSummary],
    has_depth: bool,
    diff: dict[str, pd.DataFrame] | None,
    index: dict[str, Any],
    n_thumbs: int,
    hierarchy: HierarchyData | None = None,
    discover: DiscoverData | None = None,
) -> str:
    """The whole ``index.html`` (with a Hierarchy view when the run has the hierarchy stage's tables)."""
    info = run.info
    model = info.get("model") if isinstance(info.get("model"), dict) else {}
    run_id = _plain(info.get("run_id"))
    model_name = _plain(model.get("name"))
    css_hash = _csp_hash(CSS)
    js_hash = _csp_hash(JS)
    # 'self' lets the page load its own data/*.js and thumbs/ (also from file://); nothing else loads.
    csp = (
        f"default-src 'none'; script-src 'self' '{js_hash}'; style-src '{css_hash}'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'"
    )
    nav = [("overview", "Overview"), ("units", "Units"), ("concepts", "Concepts")]
    if hierarchy is not None:
        nav.append(("hierarchy", "Hierarchy"))
    if diff is not None:
        nav.append(("diff", "Diff"))
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{escape(csp)}">',
        '<meta name="referrer" content="no-referrer">',
        f'<meta name="generator" content="{_GENERATOR}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>neuronscan · {escape(run_id)}</title>",
        f"<style>{CSS}</style>",
        "</head><body>",
        '<header class="top"><span class="brand">neuronscan</span>',
        f"<h1>{escape(run_id)}</h1>",
        f'<span class="model">{escape(model_name)}</span>',
        "<nav>" + "".join(f'<a href="#{v}" data-view="{v}">{label}</a>' for v, label in nav) + "</nav>",
        "</header><main>",
        '<noscript><div class="panel notes">Unit cards and concepts need JavaScript; '
        "the overview below is complete without it.</div></noscript>",
        _overview(run, summaries, has_depth, n_thumbs, discover),
        _units_view(run.layers),
        _concepts_view(),
    ]
    if hierarchy is not None:
        out.append(hierarchy_view(hierarchy, run.layers))
    if diff is not None:
        out.append(_diff_view(diff))
    out += [
        "</main>",
        f'<script type="application/json" id="ns-index">{_json_for_html(index)}</script>',
        f"<script>{JS}</script>",
        "</body></html>",
    ]
    return "\n".join(out) + "\n"


def _overview(run: RunData, summaries: list[_LayerSummary], has_depth: bool, n_thumbs: int,
              discover: DiscoverData | None = None) -> str:
    """The Overview section: run facts, layer table and charts (and the Concept discovery panels)."""
    info = run.info
    counts = info.get("counts") if isinstance(info.get("counts"), dict) else {}
    out = ['<section class="view" id="view-overview">']
    if run.notes:
        items = "".join(f"<li>{escape(n)}</li>" for n in run.notes)
        out.append(f'<div class="panel notes"><h3>Notes</h3><ul>{items}</ul></div>')
    out.append('<div class="panels">')
    run_rows = [
        ("run id", info.get("run_id")),
        ("model", (info.get("model") or {}).get("name") if isinstance(info.get("model"), dict) else None),
        ("alpha (q ≤)", run.alpha),
        ("layers", len(run.layers)),
        ("units", sum(s.n_units for s in summaries)),
        ("thumbnails", n_thumbs),
    ]
    out.append(_panel("Run", _kv(run_rows)))
    count_rows = [(k, counts.get(k)) for k in ("images", "ok", "failed", "concepts")]
    units = counts.get("units")
    if isinstance(units, dict):
        count_rows += [(f"units · {layer}", n) for layer, n in units.items()]
    out.append(_panel("Counts", _kv(count_rows)))
    out.append(_panel("Model", _kv(_flatten(info.get("model")))))
    out.append(_panel("Data", _kv(_flatten(info.get("data")))))
    failures = info.get("failures")
    if isinstance(failures, dict) and not failures:
        failures_html = '<p class="muted">no failures</p>'
    else:
        failures_html = _kv(_flatten(failures))
    out.append(_panel("Failures", failures_html))
    timings = info.get("timings")
    timing_rows = []
    if isinstance(timings, dict):
        timing_rows = [(k, _seconds(v) if str(k).endswith("_s") else v) for k, v in timings.items()]
    out.append(_panel("Timings", _kv(timing_rows)))
    out.append("</div>")
    out.append(_layer_table(summaries, has_depth))
    out.append(_layer_charts(summaries, has_depth))
    if discover is not None:
        out.append(discover_panels(discover))
    if info:
        pretty = json.dumps(info, indent=2, default=str, ensure_ascii=False)
        out.append(
            f'<div class="panel"><details><summary>run.json</summary><pre>{escape(pretty)}</pre></details></div>'
        )
    out.append("</section>")
    return "\n".join(out)


def _layer_table(summaries: list[_LayerSummary], has_depth: bool) -> str:
    """One row per layer: units, significant, dead, multimodal, spurious, median best AUC, mean depth."""
    head = ["layer", "units", "significant", "dead", "multimodal", "spurious", "median best AUC"]
    head += ["mean depth of best concept"] * has_depth
    rows = []
    for s in summaries:
        auc = s.best_auc[np.isfinite(s.best_auc)]
        depth = s.best_depth[np.isfinite(s.best_depth)]
        pct = f" ({100 * s.n_significant / s.n_units:.0f}%)" if s.n_units else ""
        cells = [
            f"<td>{escape(s.name)}</td>",
            f'<td class="num">{s.n_units:,}</td>',
            f'<td class="num">{s.n_significant:,}{pct}</td>',
            f'<td class="num">{s.n_dead:,}</td>',
            f'<td class="num">{s.n_multimodal:,}</td>',
            f'<td class="num">{s.n_spurious:,}</td>',
            f'<td class="num">{np.median(auc):.3f}</td>' if len(auc) else f'<td class="num">{_DASH}</td>',
        ]
        if has_depth:
            cells.append(f'<td class="num">{depth.mean():.2f}</td>' if len(depth) else f'<td class="num">{_DASH}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f'<th class="{"" if h == "layer" else "num"}">{h}</th>' for h in head)
    body = "".join(rows) or f'<tr><td colspan="{len(head)}" class="muted">no layers</td></tr>'
    return (
        f'<div class="panel"><h3>Layers</h3><table class="grid"><thead><tr>{header}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _layer_charts(summaries: list[_LayerSummary], has_depth: bool) -> str:
    """Cross-layer significance bars, then per layer the best-AUC histogram and best-concept depths."""
    if not summaries:
        return ""
    rows = [(s.name, s.n_significant, s.n_units - s.n_significant - s.n_dead, s.n_dead) for s in summaries]
    out = ['<div class="panel"><h3>Units with a significant concept (q ≤ alpha)</h3>']
    out.append(f'<div class="charts">{layer_bars_svg(rows, title="units per layer")}</div>')
    for s in summaries:
        auc = s.best_auc[np.isfinite(s.best_auc)]
        lo = max(0.0, min(0.5, math.floor(auc.min() * 10) / 10)) if len(auc) else 0.5
        charts = [
            histogram_svg(
                auc, lo=lo, hi=1.0, n_bins=max(4, round((1.0 - lo) / 0.025)),
                title=f"{s.name}: best AUC per unit", x_label="best AUC", reference=0.5,
            )
        ]
        if has_depth:
            depth = s.best_depth[np.isfinite(s.best_depth)].astype(int)
            levels = list(range(int(depth.min()), int(depth.max()) + 1)) if len(depth) else []
            charts.append(
                bar_svg(
                    [str(d) for d in levels], [int((depth == d).sum()) for d in levels],
                    title=f"{s.name}: depth of best concept", x_label="depth in the concept hierarchy",
                )
            )
        out.append(f'<div class="layer-charts"><div class="charts">{"".join(charts)}</div></div>')
    out.append("</div>")
    return "\n".join(out)


def _units_view(layers: list[str]) -> str:
    """The Units section: filter bar, pagers and the (script-filled) card grid."""
    options = "".join(f'<option value="{i}">{escape(name)}</option>' for i, name in enumerate(layers))
    if len(layers) > 1:
        options += '<option value="all">all layers</option>'
    pager = (
        '<span class="pager"><button type="button" class="prev">‹ prev</button>'
        '<span class="page-label"></span><button type="button" class="next">next ›</button></span>'
    )
    return f"""<section class="view" id="view-units" hidden>
<div class="filters">
<label>layer <select id="f-layer">{options}</select></label>
<label>concept <input type="search" id="f-concept" placeholder="best, top, formula or CLIP" autocomplete="off"></label>
<label>best AUC ≥ <input type="number" id="f-auc" min="0" max="1" step="0.01" value="0"></label>
<label><input type="checkbox" id="f-sig"> significant</label>
<label><input type="checkbox" id="f-dead"> hide dead</label>
<label><input type="checkbox" id="f-multi"> multimodal</label>
<label><input type="checkbox" id="f-spur"> spurious</label>
<label>sort <select id="f-sort"><option value="unit">unit</option><option value="auc">best AUC</option>
<option value="nsig">significant concepts</option></select></label>
</div>
<div class="bar"><span><span class="count" id="ns-count" data-count="0"></span>
<span class="chip" id="ns-focus" hidden></span>
<span class="status" id="ns-status"></span></span>{pager}</div>
<div class="cards" id="ns-cards"></div>
<div class="bar"><span></span>{pager}</div>
</section>"""


def _concepts_view() -> str:
    """The Concepts section: filter, sort and the (script-filled) concept list."""
    pager = (
        '<span class="pager"><button type="button" class="prev">‹ prev</button>'
        '<span class="page-label"></span><button type="button" class="next">next ›</button></span>'
    )
    return f"""<section class="view" id="view-concepts" hidden>
<div class="filters">
<label>concept <input type="search" id="c-filter" placeholder="name contains" autocomplete="off"></label>
<label>sort <select id="c-sort"><option value="auc">best AUC</option><option value="nsig">significant units</option>
<option value="name">name</option></select></label>
</div>
<div class="bar"><span><span class="count" id="nc-count" data-count="0"></span>
<span class="status" id="nc-status"></span></span>{pager}</div>
<div id="nc-list"></div>
<div class="bar"><span></span>{pager}</div>
</section>"""


def _diff_view(diff: dict[str, pd.DataFrame]) -> str:
    """The Diff section: summary, Δ AUC histogram, largest unit changes and concept changes."""
    out = ['<section class="view" id="view-diff" hidden>']
    out.append(
        '<div class="filters"><label>filter rows <input type="search" id="d-filter" '
        'placeholder="unit or concept" autocomplete="off"></label></div>'
    )
    units = diff.get("units")
    if units is not None:
        units = _diff_units_frame(units)
        delta = units["delta_auc"].to_numpy(float)
        finite = delta[np.isfinite(delta)]
        changed = int(units["label_changed"].sum())
        facts = [
            ("units compared", f"{len(units):,}"),
            ("best concept changed", f"{changed:,}" + (f" ({100 * changed / len(units):.1f}%)" if len(units) else "")),
            ("mean Δ best AUC", f"{finite.mean():+.4f}" if len(finite) else _DASH),
            ("units with |Δ AUC| > 0.05", f"{int((np.abs(finite) > 0.05).sum()):,}"),
        ]
        hist = histogram_svg(
            finite, lo=-0.5, hi=0.5, n_bins=40, title="Δ best AUC (B − A)", x_label="Δ AUC", reference=0.0
        )
        out.append(f'<div class="panels"><div class="panel"><h3>Units</h3>{_kv(facts)}</div>'
                   f'<div class="panel"><div class="charts">{hist}</div></div></div>')
        order = np.argsort(-np.nan_to_num(np.abs(delta), nan=-1.0), kind="stable")[:N_DIFF_ROWS]
        rows = []
        for r in units.iloc[order].itertuples(index=False):
            cls = ' class="changed"' if r.label_changed else ""
            rows.append(
                f'<tr{cls}><td class="uid">{escape(_unit_id(r.layer, r.unit))}</td>'
                f"<td>{escape(_plain(r.best_concept_a))}</td>"
                f"<td>{escape(_plain(r.best_concept_b))}</td><td class=\"num\">{_fmt(r.auc_a)}</td>"
                f'<td class="num">{_fmt(r.auc_b)}</td><td class="num">{_fmt(r.delta_auc, signed=True)}</td>'
                f"<td>{escape(_join(r.gained))}</td><td>{escape(_join(r.lost))}</td></tr>"
            )
        head = "<th>unit</th><th>best A</th><th>best B</th><th class=\"num\">AUC A</th><th class=\"num\">AUC B</th>"
        head += '<th class="num">Δ AUC</th><th>gained</th><th>lost</th>'
        out.append(_table_panel(f"Largest changes of best AUC ({len(rows):,} of {len(units):,} units)", head, rows))
    concepts = diff.get("concepts")
    if concepts is not None:
        concepts = _diff_concepts_frame(concepts)
        d_units = (concepts["n_units_b"] - concepts["n_units_a"]).to_numpy(float)
        d_auc = (concepts["best_auc_b"] - concepts["best_auc_a"]).to_numpy(float)
        order = np.lexsort((-np.nan_to_num(np.abs(d_auc), nan=-1.0), -np.nan_to_num(np.abs(d_units), nan=-1.0)))
        rows = []
        for i in order[:N_DIFF_ROWS]:
            r = concepts.iloc[i]
            rows.append(
                f"<tr><td>{escape(_plain(r['concept']))}</td><td class=\"num\">{_fmt_int(r['n_units_a'])}</td>"
                f'<td class="num">{_fmt_int(r["n_units_b"])}</td>'
                f'<td class="num">{_fmt_int(d_units[i], signed=True)}</td>'
                f'<td class="num">{_fmt(r["best_auc_a"])}</td><td class="num">{_fmt(r["best_auc_b"])}</td>'
                f'<td class="num">{_fmt(d_auc[i], signed=True)}</td></tr>'
            )
        head = '<th>concept</th><th class="num">units A</th><th class="num">units B</th><th class="num">Δ units</th>'
        head += '<th class="num">best AUC A</th><th class="num">best AUC B</th><th class="num">Δ AUC</th>'
        out.append(_table_panel(f"Concepts ({len(rows):,} of {len(concepts):,}, largest changes first)", head, rows))
    out.append("</section>")
    return "\n".join(out)


def _table_panel(title: str, head: str, rows: list[str]) -> str:
    """A panel with a filterable table."""
    body = "".join(rows) or '<tr><td class="muted">no rows</td></tr>'
    return (
        f'<div class="panel"><h3>{escape(title)}</h3><table class="grid filterable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _panel(title: str, body: str) -> str:
    """A titled panel."""
    return f'<div class="panel"><h3>{escape(title)}</h3>{body}</div>'


def _kv(rows: list[tuple[str, Any]]) -> str:
    """Key/value table; missing values render as an em dash."""
    if not rows:
        return f'<p class="muted">{_DASH}</p>'
    body = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(_plain(v))}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as ``(dotted.key, value)`` rows; a non-dict becomes no rows."""
    if not isinstance(value, dict):
        return []
    rows: list[tuple[str, Any]] = []
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and item:
            rows.extend(_flatten(item, f"{name}."))
        else:
            rows.append((name, item))
    return rows


# ------------------------------------------------------------------------------------------------ values


def _plain(value: Any) -> str:
    """Display text of a value: an em dash for missing, compact JSON for containers (not yet escaped)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return _DASH
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=str, ensure_ascii=False)
        return text if len(text) <= 300 else text[:299] + "…"
    if isinstance(value, float):
        return f"{value:,.6g}"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    return str(value)


def _seconds(value: Any) -> Any:
    """A duration in seconds as text (``12.50 s``), anything else unchanged."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:,.2f} s"
    return value


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _fmt(value: Any, signed: bool = False) -> str:
    """A float with 3 decimals, or an em dash."""
    x = _finite(value)
    if x is None:
        return _DASH
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _fmt_int(value: Any, signed: bool = False) -> str:
    """An integer with thousands separators, or an em dash."""
    x = _finite(value)
    if x is None:
        return _DASH
    return f"{int(x):+,}" if signed else f"{int(x):,}"


def _join(values: Any) -> str:
    """A list cell (``gained``/``lost``) as comma-separated text."""
    if values is None or isinstance(values, float):
        return ""
    return ", ".join(str(v) for v in values)


def _unit_id(layer: Any, unit: Any) -> str:
    """``layer:0042``."""
    try:
        return f"{layer}:{int(unit):04d}"
    except (TypeError, ValueError):
        return f"{layer}:{unit}"


def _num(value: Any, digits: int = 4) -> float | None:
    """A float rounded for the data files; None for missing or non-finite."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return round(x, digits) if math.isfinite(x) else None


def _sig(value: Any, digits: int = 3) -> float | None:
    """A float kept to ``digits`` significant digits (q-values span many orders); None when missing."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return float(f"{x:.{digits}g}") if math.isfinite(x) else None


def _int(value: Any) -> int | None:
    """An int, or None for missing."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return int(x) if math.isfinite(x) else None


def _text(value: Any) -> str | None:
    """A string, or None for missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


# ------------------------------------------------------------------------------------------------ files


def _json_for_html(obj: Any) -> str:
    """JSON that is safe inside ``<script>``: ``<``, ``>``, ``&`` and line separators as ``\\uXXXX``."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _escape_script_text(text)


def _escape_script_text(text: str) -> str:
    """Replace the characters that could end a script element or a JS string with ``\\uXXXX`` escapes."""
    for char in ("<", ">", "&", "\u2028", "\u2029"):
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def _write_data_js(path: Path, key: str, payload: Any) -> None:
    """A data file: ``window.__ns_data(key, JSON.parse("..."))``, ASCII only, no ``<`` anywhere."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    literal = _escape_script_text(json.dumps(text))  # a JS string literal holding the JSON
    key_literal = _escape_script_text(json.dumps(key))
    path.write_text(f"window.__ns_data({key_literal}, JSON.parse({literal}));\n", encoding="ascii")


def _csp_hash(source: str) -> str:
    """CSP source expression allowing exactly this inline script or style."""
    return "sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii")


def _file_slug(layer: str) -> str:
    """File-name-safe short form of a layer name (uniqueness comes from the layer's index)."""
    slug = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "_" for c in layer_dirname(layer))
    return slug[:60] or "layer"


def _resize_mode(run: RunData) -> str:
    """The probe's resize mode from run.json (``data.resize`` or ``config.data.resize``), else the default."""
    config = run.info.get("config")
    candidates = [run.info.get("data"), config.get("data") if isinstance(config, dict) else None]
    for section in candidates:
        if isinstance(section, dict) and section.get("resize") is not None:
            if section["resize"] in RESIZE_MODES:
                return str(section["resize"])
            run.notes.append(f"unknown resize mode {section['resize']!r} in run.json; thumbnails use {RESIZE_MODES[0]}")
            break
    return RESIZE_MODES[0]


def _read_diff(diff_dir: str) -> dict[str, pd.DataFrame]:
    """``diff_units.parquet`` and ``diff_concepts.parquet`` from ``diff_dir`` (at least one must exist)."""
    root = Path(diff_dir)
    if not root.is_dir():
        raise ValueError(f"diff_dir {diff_dir!r} is not a folder; pass the folder holding diff_units.parquet")
    found = {}
    for key, name in (("units", "diff_units.parquet"), ("concepts", "diff_concepts.parquet")):
        if (root / name).exists():
            found[key] = ds.dataset(root / name, format="parquet").to_table().to_pandas()
    if not found:
        raise ValueError(f"diff_dir {diff_dir!r} holds neither diff_units.parquet nor diff_concepts.parquet")
    return found


def _diff_units_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``diff_units`` with every column the report shows (missing ones filled or derived)."""
    frame = frame.copy()
    for column in ("layer", "unit", "best_concept_a", "best_concept_b", "gained", "lost"):
        if column not in frame:
            frame[column] = None
    for column in ("auc_a", "auc_b"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    if "delta_auc" not in frame:
        frame["delta_auc"] = frame["auc_b"] - frame["auc_a"]
    frame["delta_auc"] = pd.to_numeric(frame["delta_auc"], errors="coerce")
    if "label_changed" not in frame:
        frame["label_changed"] = frame["best_concept_a"].astype(str) != frame["best_concept_b"].astype(str)
    frame["label_changed"] = frame["label_changed"].fillna(False).astype(bool)
    return frame.reset_index(drop=True)


def _diff_concepts_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``diff_concepts`` with every column the report shows."""
    frame = frame.copy()
    if "concept" not in frame:
        frame["concept"] = None
    for column in ("n_units_a", "n_units_b", "best_auc_a", "best_auc_b"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    return frame.reset_index(drop=True)


def _check_replaceable(out: Path) -> None:
    """Refuse to overwrite a folder that is neither empty nor a neuronscan report."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} is a file; pass a folder for the report")
    if not any(out.iterdir()):
        return
    index = out / "index.html"
    head = index.read_text(encoding="utf-8", errors="replace")[:2000] if index.is_file() else ""
    if f'<meta name="generator" content="{_GENERATOR}">' not in head:
        raise ValueError(
            f"out_dir {str(out)!r} is not empty and holds no neuronscan report; "
            "pass an empty or new folder (an existing report is replaced)"
        )


def _commit(staging: Path, out: Path) -> None:
    """Move the finished report into place, replacing an earlier one."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
