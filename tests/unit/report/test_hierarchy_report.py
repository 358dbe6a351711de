"""The report's Hierarchy view: shown only with the hierarchy stage's tables, escaped, charts, tree, pairs, links;
and in headless Chromium (when installed) it opens, filters its pairs and logs no error."""

from __future__ import annotations

import json
import os
import re
from html import escape
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuronscan.hierarchy import CONCEPT_UNITS_SCHEMA, HIERARCHY_UNITS_SCHEMA, MULTIMODAL_UNITS_SCHEMA
from neuronscan.io import HIERARCHY_SCHEMA
from neuronscan.report import write_report
from neuronscan.report._assets import JS

from ._fake_run import XSS_IMG, XSS_SCRIPT, write_fake_run
from ._parse import parse_html

EDGES = [("round", "object"), ("angular", "object"), ("circle", "round"), (XSS_SCRIPT, "round"),
         ("square", "angular"), ("triangle", "angular"), (XSS_IMG, "angular")]


def _set_rows(concept, depth, layer, units, shares, aucs, n_pos, reached=True):
    n = len(units)
    return [{"concept": concept, "depth": depth, "layer": layer, "rank": r, "unit": u, "weight": 1.0 + r,
             "shapley": s, "cumulative_auc": a, "n_pos": n_pos, "unit_auc": 0.8, "n_units": n, "target_auc": 0.95,
             "full_auc": 0.99, "reached": reached} for r, (u, s, a) in enumerate(zip(units, shares, aucs))]


def write_hierarchy_tables(run_dir: Path, *, summary: bool = True) -> None:
    """The hierarchy stage's four files for a fake run (conv2, conv4:mean), with markup in concept names."""
    rows = []
    rows += _set_rows("round", 1, "conv4:mean", [3, 7], [0.7, 0.3], [0.9, 0.97], 20)
    rows += _set_rows("round", 1, "conv2", [1, 2, 4], [0.5, 0.3, 0.2], [0.7, 0.8, 0.85], 20, reached=False)
    rows += _set_rows("angular", 1, "conv4:mean", [9], [1.0], [0.99], 15)
    rows += _set_rows("circle", 2, "conv4:mean", [3], [1.0], [0.98], 8)
    rows += _set_rows(XSS_SCRIPT, 2, "conv2", [5, 6], [0.6, 0.4], [0.8, 0.96], 9)
    frame = pd.DataFrame(rows)
    pq.write_table(pa.Table.from_pandas(frame, schema=CONCEPT_UNITS_SCHEMA, preserve_index=False),
                   run_dir / "concept_units.parquet")
    mm = pd.DataFrame({"layer": ["conv4:mean", "conv2", "conv2"], "unit": [11, 4, 4],
                       "concept_a": ["circle", XSS_IMG, "red"], "concept_b": ["red", "blue", "stripes"],
                       "lca": [[], ["object"], []], "lca_depth": [-1, 0, -1], "auc_a": [0.9, 0.88, 0.86],
                       "auc_b": [0.85, 0.8, 0.78]})
    pq.write_table(pa.Table.from_pandas(mm, schema=MULTIMODAL_UNITS_SCHEMA, preserve_index=False),
                   run_dir / "multimodal_units.parquet")
    hu = pd.DataFrame({"layer": ["conv2"] * 3 + ["conv4:mean"] * 3, "unit": [0, 1, 4, 0, 3, 11],
                       "best_concept": ["round", "circle", XSS_IMG, "square", "circle", "circle"],
                       "best_depth": [1, 2, 2, 2, 2, 2], "best_auc": [0.9] * 6,
                       "best_aligned": [True, True, True, False, True, True], "n_aligned": [1, 1, 3, 0, 1, 2],
                       "min_lca_depth": pd.array([None, None, -1, None, None, -1], dtype="Int16"),
                       "n_multimodal_pairs": [0, 0, 2, 0, 0, 1], "multimodal": [False, False, True, False, False, True],
                       "n_concept_sets": [0, 1, 1, 0, 2, 0]})
    pq.write_table(pa.Table.from_pandas(hu, schema=HIERARCHY_UNITS_SCHEMA, preserve_index=False),
                   run_dir / "hierarchy_units.parquet")
    pq.write_table(pa.table({"concept": [c for c, _ in EDGES], "parent": [p for _, p in EDGES]},
                            schema=HIERARCHY_SCHEMA), run_dir / "hierarchy.parquet")
    if summary:
        layers = {
            "conv2": {"units_best_aligned": 3, "mean_best_depth": 1.6667, "best_depth_counts": {"1": 1, "2": 2},
                      "multimodal_units": 1, "multimodal_pairs": 2,
                      "multimodal_units_by_depth": {"-1": 1, "0": 1, "1": 1, "2": 1}},
            "conv4:mean": {"units_best_aligned": 2, "mean_best_depth": 2.0, "best_depth_counts": {"2": 2},
                           "multimodal_units": 1, "multimodal_pairs": 1,
                           "multimodal_units_by_depth": {"-1": 1, "0": 1, "1": 1, "2": 1}},
        }
        (run_dir / "hierarchy_summary.json").write_text(json.dumps({
            "settings": {"target_auc": 0.95, "max_units": 8, "multimodal_lca_depth": 0},
            "counts": {"probes": 5, "probes_reached": 4, "multimodal_units": 2}, "layers": layers}))


def _section(html: str) -> str:
    start = html.index('<section class="view" id="view-hierarchy"')
    return html[start : html.index("</section>", start)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("hier-report")
    fake = write_fake_run(root, layers={"conv2": 20, "conv4:mean": 12})
    write_hierarchy_tables(fake.run_dir)
    index = write_report(fake.run_dir, max_top_images=2)
    return fake, index.read_text()


def test_the_view_is_in_the_nav_and_the_router(report):
    _, html = report
    tags = parse_html(html).tags
    assert ("a", {"href": "#hierarchy", "data-view": "hierarchy"}) in tags
    assert '"hierarchy"' in JS.split("const VIEWS = ", 1)[1].split(";", 1)[0]
    assert _section(html)


def test_no_tables_no_view(tmp_path):
    fake = write_fake_run(tmp_path, layers={"conv2": 8})
    html = write_report(fake.run_dir, max_top_images=0).read_text()
    assert 'data-view="hierarchy"' not in html and 'id="view-hierarchy"' not in html


def test_every_run_string_is_escaped(report):
    _, html = report
    section = _section(html)
    assert XSS_SCRIPT not in html and XSS_IMG not in html
    assert escape(XSS_SCRIPT) in section and escape(XSS_IMG) in section
    tags = parse_html(section).tags
    assert not [t for t, attrs in tags if t in ("script", "img", "iframe")]
    assert not [attrs for _, attrs in tags if any(k.startswith("on") or k == "style" for k in attrs)]


def test_depth_and_multimodal_charts_per_layer(report):
    _, html = report
    section = _section(html)
    labels = [a.get("aria-label") for t, a in parse_html(section).tags if t == "svg" and "aria-label" in a]
    assert labels == ["conv2: depth of best concept", "conv2: multimodal units",
                      "conv4:mean: depth of best concept", "conv4:mean: multimodal units"]
    first = section.split('aria-label="conv2: depth of best concept"', 1)[1].split("</svg>", 1)[0]
    assert re.findall(r"<title>([^<]*)</title>", first) == ["1: 1", "2: 2"]
    assert '<td class="num">1.67</td>' in section  # mean depth of conv2's aligned best concepts


def test_the_tree_shows_parents_children_units_and_shares(report):
    _, html = report
    section = _section(html)
    tree = section.split("Concept tree", 1)[1].split("Multimodal pairs", 1)[0]
    # round (20 images) before angular (15); its best layer is conv4:mean (AUC 0.97 beats 0.85).
    assert tree.index('<span class="cname">round</span>') < tree.index('<span class="cname">angular</span>')
    round_node = tree.split('<span class="cname">round</span>', 1)[1].split("<ul", 1)[0]
    assert "conv4:mean: 2 units, held-out AUC 0.970 (reached)" in round_node
    assert re.findall(r'href="([^"]+)"', round_node) == ["#unit/conv4%3Amean/3", "#unit/conv4%3Amean/7"]
    assert re.findall(r'<span class="num">(\d+)%</span>', round_node) == ["70", "30"]
    assert "conv2: 3 units, AUC 0.850" in round_node
    children = tree.split('<span class="cname">round</span>', 1)[1].split("</details>", 1)[0]
    assert '<span class="cname">circle</span>' in children and escape(XSS_SCRIPT) in children
    # A child without a set of its own is listed and says so.
    angular = tree.split('<span class="cname">angular</span>', 1)[1].split("</details>", 1)[0]
    assert '<span class="cname">square</span>' in angular and "no probe" in angular
    widths = re.findall(r'<rect width="([\d.]+)" height="8" fill="#7c3aed"/>', round_node)
    assert widths == ["42.0", "18.0"]  # 70% and 30% of 60 px


def test_multimodal_pairs_table(report):
    _, html = report
    table = _section(html).split("Multimodal pairs", 1)[1]
    assert "(3 of 3 pairs, 2 units)" in table
    rows = re.findall(r"<tr><td class=\"uid\">(.*?)</tr>", table)
    assert len(rows) == 3
    assert "conv4:mean:0011" in rows[0] and "none" in rows[0] and ">-1<" in rows[0]
    assert "object" in rows[1] and escape(XSS_IMG) in rows[1]
    assert 'id="h-filter"' in table and "hfilterable" in table


def test_without_the_summary_the_layer_numbers_come_from_the_unit_table(tmp_path):
    fake = write_fake_run(tmp_path, layers={"conv2": 20, "conv4:mean": 12})
    write_hierarchy_tables(fake.run_dir, summary=False)
    section = _section(write_report(fake.run_dir, max_top_images=0).read_text())
    assert '<td class="num">1.67</td>' in section and "conv2: depth of best concept" in section


@pytest.mark.timeout(180)
def test_in_a_browser_the_view_opens_and_filters(report):
    from tests.browser import Chromium, find_chromium

    binary = find_chromium()
    if binary is None or os.environ.get("NEURONSCAN_SKIP_BROWSER") == "1":
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    fake, _ = report
    with Chromium(binary, width=1280, height=900) as page:
        page.open(fake.run_dir / "report" / "index.html")
        page.wait_for("document.documentElement.dataset.nsReady === '1'", 15)
        page.click("nav a[data-view='hierarchy']")
        page.wait_for("!document.getElementById('view-hierarchy').hidden", 5)
        assert page.evaluate("document.getElementById('view-units').hidden")
        assert page.evaluate("document.querySelectorAll('#view-hierarchy svg.chart').length") == 4
        page.type_text("#h-filter", "stripes")
        page.wait_for("[...document.querySelectorAll('#view-hierarchy table.hfilterable tbody tr')]"
                      ".filter(r => !r.hidden).length === 1", 5)
        page.click("#view-hierarchy a[href='#unit/conv4%3Amean/3']")
        page.wait_for("!document.getElementById('view-units').hidden", 5)
        assert page.errors == [], page.errors
        assert page.evaluate("window.__ns_dialogs") == []


def test_without_a_hierarchy_the_largest_sets_are_listed(tmp_path):
    fake = write_fake_run(tmp_path, layers={"conv2": 20, "conv4:mean": 12})
    write_hierarchy_tables(fake.run_dir)
    (fake.run_dir / "hierarchy.parquet").unlink()
    section = _section(write_report(fake.run_dir, max_top_images=0).read_text())
    listed = section.split("<h3>Collaborative units</h3>", 1)[1].split("</div>", 1)[0]
    names = re.findall(r'<span class="cname">(.*?)</span>', listed)
    assert set(names) == {"round", "angular", "circle", escape(XSS_SCRIPT)}
    assert set(names[:2]) == {"round", escape(XSS_SCRIPT)}  # the 2-unit sets first
