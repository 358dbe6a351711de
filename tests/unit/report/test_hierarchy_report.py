"""The report's Hierarchy view: shown only with the hierarchy stage's (or the spatial method's) tables, escaped,
charts, tree, pairs, links, the localisation tables and the spatial channel ranking; and in headless Chromium
(when installed) it opens, filters its pairs, follows a channel link and logs no error."""

from __future__ import annotations

import json
import os
import re
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuronscan.hierarchy import (
    CONCEPT_SPATIAL_SCHEMA,
    CONCEPT_UNITS_SCHEMA,
    HIERARCHY_UNITS_SCHEMA,
    LOCALISATION_SCHEMA,
    MULTIMODAL_UNITS_SCHEMA,
)
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


# --- the spatial method's tables ---------------------------------------------------------------------------

# (concept, depth) -> per layer (n_images, mean_iou, frac_iou_50); "dark" is a background: no boxes.
LOCALISED = {
    ("shape", 0): {"conv4": (10, 0.70, 0.90), "conv2": (10, 0.80, 1.00)},
    ("round", 1): {"conv4": (10, 0.60, 0.80), "conv2": (10, 0.85, 1.00)},
    ("dark", 1): {"conv4": (0, np.nan, np.nan), "conv2": (0, np.nan, np.nan)},
    ("circle", 2): {"conv4": (8, 0.50, 0.50), "conv2": (8, 0.75, 0.875)},
    (XSS_SCRIPT, 2): {"conv4": (6, 0.40, 0.25), "conv2": (6, 0.65, 0.50)},
}
SPATIAL_UNITS = {"conv4": 12, "conv2": 20}


def _shapley(concept: str, layer: str) -> tuple[list[int], list[float]]:
    """Every channel, ranked: a rotation of the channels by the concept's length, shares 1/(rank + 1)."""
    n = SPATIAL_UNITS[layer]
    units = [(len(concept) + 3 * r) % n for r in range(n)]
    units = list(dict.fromkeys(units)) + [u for u in range(n) if u not in units]
    return units, [1.0 / (r + 1) for r in range(n)]


def write_spatial_tables(run_dir: Path) -> None:
    """``localisation.parquet``, ``concept_spatial.parquet`` and ``spatial.json`` on layers conv4 and conv2."""
    loc, ranks, tasks = [], [], []
    for (concept, depth), per_layer in LOCALISED.items():
        for layer, (n, iou, frac) in per_layer.items():
            loc.append({"concept": concept, "depth": depth, "layer": layer, "n_images": n, "mean_iou": iou,
                        "frac_iou_50": frac})
            units, shap = _shapley(concept, layer)
            ranks += [{"concept": concept, "depth": depth, "layer": layer, "rank": r, "unit": u, "weight": 0.1,
                       "shapley": v} for r, (u, v) in enumerate(zip(units, shap))]
            tasks.append({"concept": concept, "layer": layer, "grid": [4, 4] if layer == "conv4" else [16, 16],
                          "skipped": None, "seconds": 0.5})
    pq.write_table(pa.Table.from_pandas(pd.DataFrame(loc).astype({"depth": "int16"}), schema=LOCALISATION_SCHEMA,
                                        preserve_index=False), run_dir / "localisation.parquet")
    frame = pd.DataFrame(ranks).astype({"depth": "int16", "rank": "int32", "unit": "int32"})
    pq.write_table(pa.Table.from_pandas(frame, schema=CONCEPT_SPATIAL_SCHEMA, preserve_index=False),
                   run_dir / "concept_spatial.parquet")
    (run_dir / "spatial.json").write_text(json.dumps({
        "settings": {"saliency": "guided_backprop", "saliency_at": "input", "eval_images": 10, "seed": 0},
        "layers": ["conv4", "conv2"], "n_concepts": len(LOCALISED), "n_tasks": len(tasks),
        "boxes": f"/data/{XSS_IMG}/boxes.parquet",
        "timings": {"seconds": 12.5, "task_seconds_mean": 0.5}, "tasks": tasks}))


@pytest.fixture(scope="module")
def spatial_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("spatial-report")
    fake = write_fake_run(root, layers={"conv2": 20, "conv4:mean": 12})
    write_hierarchy_tables(fake.run_dir)
    write_spatial_tables(fake.run_dir)
    index = write_report(fake.run_dir, max_top_images=2)
    return fake, index.read_text()


def _panel_of(section: str, title: str) -> str:
    start = section.index(f"<h3>{title}")
    return section[start : section.index('<div class="panel', start + 1) if '<div class="panel' in section[
        start + 1 :] else len(section)]


def test_the_localisation_table_per_level(spatial_report):
    _, html = spatial_report
    section = _section(html)
    assert "Concept tree" in section and "Multimodal pairs" in section  # the hierarchy stage's panels stay
    levels = _panel_of(section, "Localisation by level")
    head = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", levels)
    # Layers in spatial.json's order, with their grid.
    assert head == ["level", "concepts with boxes", "conv4 (4×4) mean IoU", "conv4 IoU ≥ 0.5",
                    "conv2 (16×16) mean IoU", "conv2 IoU ≥ 0.5"]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr><td>.*?</tr>", levels)]
    # The mean over the level's concepts with boxes (dark has none).
    assert rows == [["0", "1", "0.70", "0.90", "0.80", "1.00"],
                    ["1", "1", "0.60", "0.80", "0.85", "1.00"],
                    ["2", "2", "0.45", "0.38", "0.70", "0.69"]]


def test_the_localisation_table_per_concept(spatial_report):
    _, html = spatial_report
    table = _panel_of(_section(html), "Localisation per concept")
    assert "(5 concepts;" in table
    names = re.findall(r'<tr><td class="cname">(.*?)</td>', table)
    assert names == ["shape", "dark", "round", escape(XSS_SCRIPT), "circle"]  # by level, then name ("<" < "c")
    dark = table.split('<td class="cname">dark</td>', 1)[1].split("</tr>", 1)[0]
    assert dark.count(_DASH_CELL) == 4 and dark.count('<td class="num">0</td>') == 2
    circle = table.split('<td class="cname">circle</td>', 1)[1].split("</tr>", 1)[0]
    cells = re.sub(r"<svg.*?</svg> ", "", circle)
    assert re.findall(r'<td class="num">([^<]*)</td>', cells) == ["2", "0.50", "0.50", "8", "0.75", "0.88", "8"]
    assert '<rect width="30.0" height="8" fill="#7c3aed"/>' in circle  # IoU 0.5 of the 60 px bar


_DASH_CELL = '<td class="num muted">—</td>'


def test_the_channel_ranking_of_a_few_concepts(spatial_report):
    _, html = spatial_report
    ranking = _panel_of(_section(html), "Spatial channel ranking")
    names = re.findall(r'<li class="node"><span class="cname">(.*?)</span>', ranking)
    # Level by level, the best localised first: shape (0), round (1, before dark: no boxes), circle (2), then dark,
    # then the rest of level 2.
    assert names == ["shape", "round", "circle", "dark", escape(XSS_SCRIPT)]
    shape = ranking.split('<span class="cname">shape</span>', 1)[1].split("</li>", 1)[0]
    conv4, conv2 = shape.split('<span class="set">')[1:]
    assert conv4.startswith("conv4: the top 8 channels hold")
    units, shap = _shapley("shape", "conv4")
    links = re.findall(r'href="([^"]+)"', conv4)
    assert links == [f"#unit/conv4%3Amean/{u}" for u in units[:8]]  # conv4's channels are conv4:mean's units
    held = sum(shap[:8]) / sum(shap)
    assert f"hold {100 * held:.0f}% of the mean |Shapley value|, mean IoU 0.70 on 10 images" in conv4
    shares = re.findall(r'<span class="num">(\d+)%</span>', conv4)
    assert shares == [f"{100 * v / sum(shap):.0f}" for v in shap[:8]]
    widths = re.findall(r'<rect width="([\d.]+)" height="8" fill="#7c3aed"/>', conv4)
    assert widths == [f"{60 * v / shap[0]:.1f}" for v in shap[:8]]  # bars relative to the top channel
    assert re.findall(r'href="([^"]+)"', conv2)[0] == f"#unit/conv2/{_shapley('shape', 'conv2')[0][0]}"
    dark = ranking.split('<span class="cname">dark</span>', 1)[1].split("</li>", 1)[0]
    assert "no localisation (no boxes)" in dark


def test_the_spatial_panels_escape_run_strings(spatial_report):
    _, html = spatial_report
    section = _section(html)
    assert XSS_SCRIPT not in html and XSS_IMG not in html
    assert escape(f"/data/{XSS_IMG}/boxes.parquet") in section  # the boxes file, from spatial.json
    tags = parse_html(section).tags
    assert not [t for t, attrs in tags if t in ("script", "img", "iframe")]
    assert not [attrs for _, attrs in tags if any(k.startswith("on") or k == "style" for k in attrs)]


def test_spatial_tables_alone_make_the_view(tmp_path):
    fake = write_fake_run(tmp_path, layers={"conv2": 20, "conv4:mean": 12})
    write_spatial_tables(fake.run_dir)
    (fake.run_dir / "spatial.json").unlink()
    html = write_report(fake.run_dir, max_top_images=0).read_text()
    section = _section(html)
    assert 'data-view="hierarchy"' in html
    assert "Concept tree" not in section and "Depth of best concepts" not in section
    assert "Localisation by level" in section and "Spatial channel ranking" in section
    # Without spatial.json the layers come in the table's order, without their grids.
    head = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", _panel_of(section, "Localisation by level"))
    assert head[2:] == ["conv4 mean IoU", "conv4 IoU ≥ 0.5", "conv2 mean IoU", "conv2 IoU ≥ 0.5"]


def test_a_spatial_layer_with_no_report_layer_is_plain_text(tmp_path):
    fake = write_fake_run(tmp_path, layers={"conv2": 20})  # no conv4 in the report
    write_spatial_tables(fake.run_dir)
    ranking = _panel_of(_section(write_report(fake.run_dir, max_top_images=0).read_text()), "Spatial channel ranking")
    conv4 = ranking.split('<span class="set">conv4:', 1)[1].split('<span class="set">', 1)[0]
    assert "href" not in conv4 and '<span class="num">conv4:' in conv4


@pytest.mark.timeout(180)
def test_in_a_browser_a_channel_link_opens_its_unit(spatial_report):
    from tests.browser import Chromium, find_chromium

    binary = find_chromium()
    if binary is None or os.environ.get("NEURONSCAN_SKIP_BROWSER") == "1":
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    fake, _ = spatial_report
    unit = _shapley("shape", "conv4")[0][0]
    with Chromium(binary, width=1280, height=900) as page:
        page.open(fake.run_dir / "report" / "index.html")
        page.wait_for("document.documentElement.dataset.nsReady === '1'", 15)
        page.click("nav a[data-view='hierarchy']")
        page.wait_for("!document.getElementById('view-hierarchy').hidden", 5)
        assert page.evaluate("document.querySelectorAll('#view-hierarchy table.loc-concepts tbody tr').length") == 5
        page.click(f"#view-hierarchy ul.spatial-ranking a[href='#unit/conv4%3Amean/{unit}']")
        page.wait_for("!document.getElementById('view-units').hidden", 5)
        assert page.evaluate("document.getElementById('f-layer').selectedOptions[0].textContent").startswith(
            "conv4:mean")
        assert page.errors == [], page.errors
        assert page.evaluate("window.__ns_dialogs") == []
