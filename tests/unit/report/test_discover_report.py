"""The report's Concept discovery panels: shown in the Overview only when the run has the discover stage's tables,
every run string escaped, a concept table per class in Sobol order with names and example crops, the metrics, and
inline SVG strategy and curve charts."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuronscan.discover._schemas import SCHEMAS
from neuronscan.report import write_report
from neuronscan.report._discover import load_discover

from ._fake_run import XSS_IMG, XSS_SCRIPT, write_fake_run
from ._parse import parse_html

CLASSES = ["red", XSS_SCRIPT]
K = 3


def _write(frame: pd.DataFrame, path: Path, name: str) -> None:
    schema = SCHEMAS[name]
    pq.write_table(pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False), path / name)


def write_discover_tables(run_dir: Path) -> None:
    d = run_dir / "discover"
    d.mkdir()
    rows, quality, metrics, strategies, curves, crops = [], [], [], [], [], []
    for c_i, c in enumerate(CLASSES):
        layer = f"conv4@craft:{'red' if c_i == 0 else 'x'}"
        sobol = np.array([0.2, 0.7, 0.1])
        for k in range(K):
            rows.append({"class": c, "layer": layer, "concept": k, "sobol": sobol[k], "gradient_input": sobol[k] * 3,
                         "occlusion": sobol[k] * 3, "rank_sobol": int(np.argsort(-sobol).tolist().index(k)),
                         "rank_gradient_input": int(np.argsort(-sobol).tolist().index(k)),
                         "rank_occlusion": int(np.argsort(-sobol).tolist().index(k)),
                         "prevalence": [0.25, 0.75, 0.0][k], "reliability": [1.0, 0.5, np.nan][k],
                         "best_concept": [XSS_IMG, "circle", None][k], "name_auc": 0.9, "name_auprc": 0.8,
                         "name_q": [1e-5, 0.0, np.nan][k], "name_score": 0.5})
            strategies.append({"class": c, "concept": k, "best_concept": [XSS_IMG, "circle", None][k],
                               "n_images": [1, 3, 0][k], "prevalence": [0.25, 0.75, 0.0][k],
                               "reliability": [1.0, 0.5, np.nan][k], "runner_up": 0, "mean_share": 0.6})
            for rank in range(6):
                crops.append({"class": c, "concept": k, "rank": rank, "image_id": 100 * k + rank, "x0": 0, "y0": 25,
                              "x1": 32, "y1": 57, "coefficient": 1.0 - rank / 10})
        quality.append({"class": c, "class_index": c_i, "layer": layer, "method": "nmf", "source": "crops",
                        "n_images": 12, "n_rows": 48, "rows_per_image": 4, "n_importance_images": 4,
                        "reconstruction_error": 0.3, "reconstruction_error_positions": 0.6, "n_iter": 120,
                        "zero_fraction": 0.2,
                        "hoyer": 0.5, "stability": 0.8, "accuracy": 0.75, "mean_logit": 3.0, "seconds": 1.5})
        for m in ("sobol", "gradient_input", "occlusion"):
            metrics.append({"class": c, "importance": m, "c_deletion": 1.0, "c_insertion": 4.0, "c_mufidelity": 0.97})
            for kind, ys in (("deletion", [5, 2, 1, 0]), ("insertion", [0, 3, 4, 5])):
                curves += [{"class": c, "importance": m, "kind": kind, "step": s, "logit": float(y)}
                           for s, y in enumerate(ys)]
    _write(pd.DataFrame(rows), d, "importance.parquet")
    _write(pd.DataFrame(quality), d, "quality.parquet")
    _write(pd.DataFrame(metrics), d, "metrics.parquet")
    _write(pd.DataFrame(strategies), d, "strategies.parquet")
    _write(pd.DataFrame(curves), d, "curves.parquet")
    _write(pd.DataFrame(crops), d, "concept_crops.parquet")
    (d / "discover.json").write_text(json.dumps({
        "layer": "conv4", "settings": {"source": "crops", "method": "nmf", "n_concepts": K, "patch_size": 32},
        "counts": {"classes": 2, "concepts": 6, "named_concepts": 4}, "timings": {"seconds": 12.5, "tasks_s": 9.0},
        "skipped": {XSS_IMG: "3 image(s) (< min_images 10)"}}))


def _part(html: str) -> str:
    start = html.index('<h2 id="discover">')
    overview = html.index('<section class="view" id="view-overview"')
    assert overview < start < html.index("</section>", overview)  # inside the Overview
    return html[start : html.index("</section>", start)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("discover-report")
    fake = write_fake_run(root, layers={"conv4:mean": 8})
    write_discover_tables(fake.run_dir)
    return fake, write_report(fake.run_dir, max_top_images=0).read_text()


def test_no_tables_no_panels(tmp_path):
    fake = write_fake_run(tmp_path, layers={"conv2": 8})
    assert load_discover(str(fake.run_dir)) is None
    assert 'id="discover"' not in write_report(fake.run_dir, max_top_images=0).read_text()


def test_every_run_string_is_escaped(report):
    _, html = report
    part = _part(html)
    assert XSS_SCRIPT not in html and XSS_IMG not in html
    assert escape(XSS_SCRIPT) in part and escape(XSS_IMG) in part
    tags = parse_html(part).tags
    assert not [t for t, _ in tags if t in ("script", "img", "iframe", "link")]
    assert not [a for _, a in tags if any(k.startswith("on") or k == "style" or k in ("href", "src") for k in a)]


def test_a_panel_per_class_with_its_concepts_in_sobol_order(report):
    _, html = report
    part = _part(html)
    assert part.count('class="panel discover-class"') == 2
    red = part.split("<h3>class red</h3>", 1)[1].split('class="panel discover-class"', 1)[0]
    body = red.split("example crops (image, box)", 1)[1].split("</table>", 1)[0]
    cells = [r.split("</td>", 1)[0] for r in body.split("<tr><td>")[1:]]
    assert cells == ["1", "0", "2"]  # Sobol 0.7, 0.2, 0.1
    assert "circle" in body and "&lt;1e-300" in body and "#100 [0,25–32,57]" in body and "#104" not in body  # 4 crops
    assert "C-Deletion" in red and "0.970" in red and "reconstruction error" in red and "0.300" in red
    assert "12.50 s" in part and "skipped" in part


def test_charts_are_inline_svg(report):
    _, html = report
    labels = [a.get("aria-label") for t, a in parse_html(_part(html)).tags if t == "svg" and "aria-label" in a]
    assert "red: strategies (prevalence, colour = reliability)" in labels
    assert "red: logit as concepts are removed / added" in labels
    assert sum(1 for label in labels if label.startswith("Sobol")) == 2 * K
    red = _part(html).split('aria-label="red: strategies', 1)[1].split("</svg>", 1)[0]
    assert red.index("1: circle") < red.index("0: ")  # the most prevalent strategy first
    assert 'fill="#cbd5e1"' in red  # the concept that dominates no image: no reliability


def test_an_unreadable_table_is_a_note(tmp_path):
    fake = write_fake_run(tmp_path, layers={"conv2": 8})
    write_discover_tables(fake.run_dir)
    (fake.run_dir / "discover" / "metrics.parquet").write_bytes(b"not parquet")
    part = _part(write_report(fake.run_dir, max_top_images=0).read_text())
    assert "discover/metrics.parquet cannot be read" in part and "C-Deletion ↓" not in part


def test_in_a_browser_the_panels_render_without_an_error(report):
    import os

    from tests.browser import Chromium, find_chromium

    binary = find_chromium()
    if binary is None or os.environ.get("NEURONSCAN_SKIP_BROWSER") == "1":
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    fake, _ = report
    with Chromium(binary, width=1280, height=900) as page:
        page.open(fake.run_dir / "report" / "index.html")
        page.wait_for("document.documentElement.dataset.nsReady === '1'", 15)
        assert not page.evaluate("document.getElementById('view-overview').hidden")
        assert page.evaluate("document.querySelectorAll('#view-overview .discover-class svg.chart').length") == 4
        assert page.errors == [], page.errors
        assert page.evaluate("window.__ns_dialogs") == []
