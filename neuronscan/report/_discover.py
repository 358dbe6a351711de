"""The report's Concept discovery panels, shown in the Overview when the run has ``RUN/discover/``.

Read leniently (any of the discover stage's tables and ``discover.json``; a file that cannot be read becomes a
note) and rendered as static HTML: the settings and costs; per class its dictionary's quality, the
C-Deletion / C-Insertion / C-µFidelity of each importance method, a table of its concepts in Sobol order (name,
AUC and q of the name, the three importances, prevalence and reliability, example crops as image ids and boxes),
an inline SVG of its strategies (prevalence bars, coloured by reliability) and of its mean deletion and insertion
curves. Every run string goes through `html.escape`; nothing is fetched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np
import pandas as pd

from neuronscan.io import RunDir, get_fs, read_json, read_parquet

__all__ = ["DiscoverData", "load_discover", "discover_panels"]

N_EXAMPLES = 4
"""Example crops listed per concept."""
_DASH = "—"
_FONT = 'font-family="system-ui, sans-serif" font-size="10"'
_TABLES = ("importance", "quality", "metrics", "strategies", "curves", "concept_crops")


@dataclass
class DiscoverData:
    """The discover stage's outputs of a run (each None when its file is missing)."""

    summary: dict | None
    tables: dict[str, pd.DataFrame | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def table(self, name: str) -> pd.DataFrame | None:
        return self.tables.get(name)


def load_discover(run_dir: str) -> DiscoverData | None:
    """The discover tables of ``run_dir``, or None when the run has none of them."""
    from neuronscan.discover._schemas import DISCOVER_DIR, SUMMARY_FILE

    run = RunDir(run_dir)
    notes: list[str] = []
    tables: dict[str, pd.DataFrame | None] = {}
    for name in _TABLES:
        uri = run.path(DISCOVER_DIR, f"{name}.parquet")
        fs, path = get_fs(uri)
        if not fs.exists(path):
            tables[name] = None
            continue
        try:
            tables[name] = read_parquet(uri).to_pandas()
        except (OSError, ValueError) as exc:
            notes.append(f"discover/{name}.parquet cannot be read ({exc}); the Concept discovery panels leave it out")
            tables[name] = None
    summary = None
    uri = run.path(DISCOVER_DIR, SUMMARY_FILE)
    if run.exists(uri):
        try:
            value = read_json(uri)
            summary = value if isinstance(value, dict) else None
        except (OSError, ValueError) as exc:
            notes.append(f"discover/{SUMMARY_FILE} cannot be read ({exc})")
    if summary is None and all(t is None for t in tables.values()):
        return None
    return DiscoverData(summary, tables, notes)


# ------------------------------------------------------------------------------------------------ render


def _fmt(value: Any, digits: int = 3) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return _DASH
    if not math.isfinite(x):
        return _DASH
    return f"{x:.{digits}f}"


def _q(value: Any) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return _DASH
    if not math.isfinite(x):
        return _DASH
    return escape("<1e-300") if x <= 0 else f"{x:.2g}"


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _DASH
    return escape(str(value))


def _kv(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{_text(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def discover_panels(data: DiscoverData) -> str:
    """Every panel of the Concept discovery part of the Overview (one HTML string)."""
    out = ['<h2 id="discover">Concept discovery</h2>']
    if data.notes:
        items = "".join(f"<li>{escape(n)}</li>" for n in data.notes)
        out.append(f'<div class="panel notes"><h3>Notes</h3><ul>{items}</ul></div>')
    out.append(_facts(data))
    quality = data.table("quality")
    classes = list(quality["class"]) if quality is not None else [c.get("class") for c in
                                                                   (data.summary or {}).get("classes", [])]
    for name in classes:
        out.append(_class_panel(data, str(name)))
    return "\n".join(out)


def _facts(data: DiscoverData) -> str:
    summary = data.summary or {}
    s = summary.get("settings") if isinstance(summary.get("settings"), dict) else {}
    counts = summary.get("counts") if isinstance(summary.get("counts"), dict) else {}
    timings = summary.get("timings") if isinstance(summary.get("timings"), dict) else {}
    setting_rows = [("layer", summary.get("layer"))] + [(k, s.get(k)) for k in (
        "source", "patch_size", "method", "n_concepts", "max_images_per_class", "importance_images", "sobol_designs",
        "strategy_importance", "image_statistic", "naming_images", "seed") if k in s]
    count_rows = [(k, counts.get(k)) for k in ("classes", "classes_skipped", "concepts", "named_concepts",
                                                "class_images", "rows", "naming_images") if k in counts]
    time_rows = [(k, f"{float(timings[k]):.2f} s") for k in ("seconds", "tasks_s", "naming_s", "task_seconds_sum")
                 if isinstance(timings.get(k), (int, float))]
    what = ("<p>CRAFT (Fel et al. 2023): per class, the layer's latent of crops of its images (or of every "
            "feature-map position: holistic CRAFT) factorised into concepts; each concept's importance for the class "
            "logit (Sobol total index, gradient × input, occlusion); C-Deletion (lower is better) and C-Insertion "
            "(higher is better) are areas under the logit as concepts are removed or added in importance order; "
            "C-µFidelity correlates the drop when random concept subsets are removed with their summed importance. A "
            "concept's name is the label its per-image coefficient separates best, scored like a unit. Prevalence: "
            "the share of the class's images the concept dominates; reliability: the model's accuracy on them.</p>")
    skipped = summary.get("skipped") if isinstance(summary.get("skipped"), dict) else {}
    skipped_html = ""
    if skipped:
        items = "".join(f"<li>{escape(str(k))}: {escape(str(v))}</li>" for k, v in list(skipped.items())[:40])
        skipped_html = f"<p class=\"muted\">skipped:</p><ul>{items}</ul>"
    return ('<div class="panels">'
            + f'<div class="panel"><h3>Concept discovery</h3>{what}</div>'
            + f'<div class="panel"><h3>Settings</h3>{_kv(setting_rows)}</div>'
            + f'<div class="panel"><h3>Counts and time</h3>{_kv(count_rows + time_rows)}{skipped_html}</div>'
            + "</div>")


def _rows_of(frame: pd.DataFrame | None, name: str) -> pd.DataFrame:
    if frame is None or "class" not in frame.columns:
        return pd.DataFrame()
    return frame[frame["class"].astype(str) == name]


def _class_panel(data: DiscoverData, name: str) -> str:
    quality = _rows_of(data.table("quality"), name)
    imp = _rows_of(data.table("importance"), name)
    metrics = _rows_of(data.table("metrics"), name)
    strategies = _rows_of(data.table("strategies"), name)
    curves = _rows_of(data.table("curves"), name)
    crops = _rows_of(data.table("concept_crops"), name)
    parts = [f'<div class="panel discover-class"><h3>class {escape(name)}</h3>']
    if len(quality):
        q = quality.iloc[0]
        facts = [("images", q.get("n_images")), ("rows", q.get("n_rows")),
                 ("reconstruction error", _fmt(q.get("reconstruction_error"))),
                 ("… on positions", _fmt(q.get("reconstruction_error_positions"))),
                 ("fit iterations", q.get("n_iter")),
                 ("stability", _fmt(q.get("stability"))), ("zero coefficients", _fmt(q.get("zero_fraction"))),
                 ("Hoyer sparsity", _fmt(q.get("hoyer"))), ("accuracy", _fmt(q.get("accuracy"))),
                 ("seconds", _fmt(q.get("seconds"), 2))]
        parts.append(_kv([(k, v) for k, v in facts]))
    if len(metrics):
        head = "<tr><th>importance</th><th>C-Deletion ↓</th><th>C-Insertion ↑</th><th>C-µFidelity ↑</th></tr>"
        body = "".join(f"<tr><td>{_text(r.importance)}</td><td>{_fmt(r.c_deletion)}</td><td>{_fmt(r.c_insertion)}"
                       f"</td><td>{_fmt(r.c_mufidelity)}</td></tr>" for r in metrics.itertuples(index=False))
        parts.append(f'<table class="grid"><thead>{head}</thead><tbody>{body}</tbody></table>')
    if len(imp):
        parts.append(_concept_table(imp, crops))
    charts = []
    if len(strategies):
        charts.append(_strategy_svg(name, strategies))
    if len(curves):
        charts.append(_curves_svg(name, curves))
    if charts:
        parts.append('<div class="charts">' + "".join(charts) + "</div>")
    parts.append("</div>")
    return "".join(parts)


def _concept_table(imp: pd.DataFrame, crops: pd.DataFrame) -> str:
    imp = imp.sort_values("rank_sobol", kind="stable") if "rank_sobol" in imp.columns else imp
    examples: dict[int, list[str]] = {}
    if len(crops):
        for r in crops.sort_values(["concept", "rank"], kind="stable").itertuples(index=False):
            items = examples.setdefault(int(r.concept), [])
            if len(items) < N_EXAMPLES:
                items.append(f"#{int(r.image_id)} [{int(r.x0)},{int(r.y0)}–{int(r.x1)},{int(r.y1)}]")
    top = float(np.nanmax(imp["sobol"].to_numpy(dtype=float))) if len(imp) and "sobol" in imp else 0.0
    head = ("<tr><th>concept</th><th>name</th><th>name AUC</th><th>q</th><th>Sobol</th><th>grad × input</th>"
            "<th>occlusion</th><th>prevalence</th><th>reliability</th><th>example crops (image, box)</th></tr>")
    body = []
    for r in imp.itertuples(index=False):
        sobol = getattr(r, "sobol", float("nan"))
        width = 60 * float(sobol) / top if top > 0 and np.isfinite(sobol) else 0.0
        bar = (f'<svg width="62" height="8" role="img" aria-label="Sobol {escape(_fmt(sobol))}">'
               f'<rect x="0" y="1" width="{width:.1f}" height="6" fill="#2563eb"/></svg>')
        crops_text = escape("; ".join(examples.get(int(r.concept), []))) or _DASH
        body.append(f"<tr><td>{int(r.concept)}</td><td>{_text(getattr(r, 'best_concept', None))}</td>"
                    f"<td>{_fmt(getattr(r, 'name_auc', None))}</td><td>{_q(getattr(r, 'name_q', None))}</td>"
                    f"<td>{bar} {_fmt(sobol)}</td><td>{_fmt(getattr(r, 'gradient_input', None))}</td>"
                    f"<td>{_fmt(getattr(r, 'occlusion', None))}</td><td>{_fmt(getattr(r, 'prevalence', None), 2)}</td>"
                    f"<td>{_fmt(getattr(r, 'reliability', None), 2)}</td><td class=\"muted\">{crops_text}</td></tr>")
    return f'<table class="grid"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _svg_text(x: float, y: float, text: str, anchor: str = "start", weight: str = "400") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-weight="{weight}" fill="#374151" {_FONT}>'
            f"{escape(text)}</text>")


def _reliability_colour(rel: float) -> str:
    if not np.isfinite(rel):
        return "#cbd5e1"
    rel = min(max(rel, 0.0), 1.0)  # red (0) → amber → green (1)
    r, g = (int(220 - 200 * rel), int(38 + 125 * rel))
    return f"#{r:02x}{g:02x}4a"


def _strategy_svg(name: str, strategies: pd.DataFrame) -> str:
    """Horizontal bars: each concept's prevalence, coloured by its reliability, labelled with its name."""
    rows = strategies.sort_values("prevalence", ascending=False, kind="stable")
    label_w, bar_w, row_h = 150, 200, 16
    height = 24 + row_h * max(len(rows), 1) + 8
    width = label_w + bar_w + 110
    title = f"{name}: strategies (prevalence, colour = reliability)"
    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}">', _svg_text(8, 14, title, weight="600")]
    for i, r in enumerate(rows.itertuples(index=False)):
        y = 24 + i * row_h
        label = f"{int(r.concept)}: {r.best_concept}" if isinstance(r.best_concept, str) else f"{int(r.concept)}"
        label = label if len(label) <= 24 else label[:23] + "…"
        prev = float(r.prevalence) if np.isfinite(r.prevalence) else 0.0
        rel = float(r.reliability) if r.reliability is not None else float("nan")
        w = bar_w * prev
        tip = f"concept {int(r.concept)}: prevalence {prev:.2f}, reliability {_fmt(rel, 2)}, {int(r.n_images)} images"
        parts.append(_svg_text(label_w - 6, y + 11, label, anchor="end"))
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" '
                     f'fill="{_reliability_colour(rel)}"><title>{escape(tip)}</title></rect>')
        parts.append(_svg_text(label_w + w + 4, y + 11, f"{prev:.2f} · rel {_fmt(rel, 2)}"))
    parts.append("</svg>")
    return "".join(parts)


def _curves_svg(name: str, curves: pd.DataFrame) -> str:
    """The mean deletion and insertion curves in Sobol order (the logit against the fraction of concepts)."""
    rows = curves[curves["importance"] == "sobol"] if (curves["importance"] == "sobol").any() else curves
    width, height, left, top, plot_w, plot_h = 300, 170, 40, 24, 250, 110
    title = f"{name}: logit as concepts are removed / added"
    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}">', _svg_text(8, 14, title, weight="600")]
    values = rows["logit"].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        parts.append(_svg_text(width / 2, height / 2, "no data", anchor="middle"))
        parts.append("</svg>")
        return "".join(parts)
    lo, hi = float(min(values.min(), 0.0)), float(values.max())
    hi = hi if hi > lo else lo + 1.0
    for kind, colour in (("deletion", "#dc2626"), ("insertion", "#16a34a")):
        g = rows[rows["kind"] == kind].sort_values("step")
        if not len(g):
            continue
        k = max(int(g["step"].max()), 1)
        pts = " ".join(f"{left + plot_w * s / k:.1f},{top + plot_h * (1 - (v - lo) / (hi - lo)):.1f}"
                       for s, v in zip(g["step"], g["logit"]) if np.isfinite(v))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2">'
                     f"<title>{escape(kind)}</title></polyline>")
    base = top + plot_h
    parts.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#6b7280"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#6b7280"/>')
    parts.append(_svg_text(left - 4, top + 8, f"{hi:.2g}", anchor="end"))
    parts.append(_svg_text(left - 4, base, f"{lo:.2g}", anchor="end"))
    parts.append(_svg_text(left, base + 13, "0"))
    parts.append(_svg_text(left + plot_w, base + 13, "all concepts", anchor="end"))
    parts.append(_svg_text(left + 30, height - 6, "— deletion", weight="600").replace("#374151", "#dc2626"))
    parts.append(_svg_text(left + 130, height - 6, "— insertion", weight="600").replace("#374151", "#16a34a"))
    parts.append("</svg>")
    return "".join(parts)
