"""The report shows the describe stage's crops (SVG boxes on the top images) and phrase beside the CLIP label."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuronscan.describe import CROPS_FILE, DESCRIBE_SUMMARY_FILE, DESCRIPTIONS_FILE, DESCRIPTIONS_SCHEMA, crops_schema
from neuronscan.report import write_report
from tests.unit.report._fake_run import XSS_IMG, XSS_SCRIPT, write_fake_run
from tests.unit.report._parse import index_json, read_data_js

LAYERS = {"conv2": 12, "conv4:mean": 6}
SIZE = 40


def _describe(fake, top_m: int = 3) -> pd.DataFrame:
    """Write descriptions.parquet, describe/crops.parquet and describe/describe.json into a fake run."""
    rng = np.random.default_rng(0)
    rows, desc = [], []
    for layer in LAYERS:
        top = fake.topk[layer]
        top = top[top["rank"] < top_m]
        for r in top.itertuples(index=False):
            x0, y0 = int(rng.integers(0, SIZE // 2)), int(rng.integers(0, SIZE // 2))
            rows.append((layer, r.unit, r.rank, r.image_id, r.value, x0, y0, x0 + 10, y0 + 12))
        for unit in range(LAYERS[layer]):
            words = [XSS_SCRIPT, "circle", XSS_IMG] if unit == 1 else ["red", "warm", "circle"]
            desc.append((layer, unit, words[0], 0.3 + unit / 100, ", ".join(words), words, [0.3, 0.2, 0.1], top_m))
    crops = pd.DataFrame(rows, columns=["layer", "unit", "rank", "image_id", "value", "x0", "y0", "x1", "y1"])
    table = pa.Table.from_pandas(crops.astype({"unit": "int32", "rank": "int32", "value": "float32"}),
                                 preserve_index=False)
    table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(
        pa.array(np.zeros(len(crops) * 4, dtype=np.float32)), 4))
    table = table.append_column("error", pa.array([None] * len(crops), pa.string()))
    (fake.run_dir / "describe").mkdir()
    pq.write_table(table.cast(crops_schema(4)), fake.run_dir / CROPS_FILE)
    frame = pd.DataFrame(desc, columns=["layer", "unit", "patch_label", "patch_score", "phrase", "concepts",
                                        "scores", "n_crops"])
    pq.write_table(pa.Table.from_pandas(frame, schema=DESCRIPTIONS_SCHEMA, preserve_index=False),
                   fake.run_dir / DESCRIPTIONS_FILE)
    (fake.run_dir / DESCRIBE_SUMMARY_FILE).write_text(json.dumps({"input_size": SIZE}))
    neurons = pd.read_parquet(fake.run_dir / "neurons.parquet")  # the score stage's whole-image CLIP label
    neurons["clip_label"], neurons["clip_score"] = "circle", 1.5
    neurons.to_parquet(fake.run_dir / "neurons.parquet")
    return crops


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    fake = write_fake_run(tmp_path_factory.mktemp("describe-report"), layers=LAYERS)
    crops = _describe(fake)
    write_report(fake.run_dir)
    return fake, crops


def _layer_data(fake, layer: str) -> dict:
    index = index_json((fake.run_dir / "report" / "index.html").read_text())
    entry = next(e for e in index["layers"] if e["name"] == layer)
    return read_data_js(fake.run_dir / "report" / entry["file"])[1]


def test_unit_cards_carry_the_patch_label_phrase_and_crop_boxes(reported):
    fake, crops = reported
    data = _layer_data(fake, "conv2")
    u = next(r for r in data["units"] if r["u"] == 4)
    assert (u["pl"], u["ph"], u["pn"]) == ("red", "red, warm, circle", 3) and u["ps"] == pytest.approx(0.34)
    mine = crops[(crops["layer"] == "conv2") & (crops["unit"] == 4)].sort_values("rank")
    want = [[int(r.rank), r.x0 / SIZE, r.y0 / SIZE, r.x1 / SIZE, r.y1 / SIZE] for r in mine.itertuples()]
    assert u["pb"] == [pytest.approx(w) for w in want]
    assert u["c"] is not None  # the whole-image CLIP label is still there, beside it
    assert all("pl" in r for r in data["units"]) and all("pl" in r for r in _layer_data(fake, "conv4:mean")["units"])


def test_names_stay_text(reported):
    fake, _ = reported
    xss = next(r for r in _layer_data(fake, "conv2")["units"] if r["u"] == 1)
    assert xss["pl"] == XSS_SCRIPT and XSS_IMG in xss["ph"]  # data, rendered with textContent only
    for path in (fake.run_dir / "report").rglob("*"):
        if path.suffix in (".html", ".js"):
            text = path.read_text(encoding="utf-8")
            assert XSS_SCRIPT not in text and XSS_IMG not in text, path
    html = (fake.run_dir / "report" / "index.html").read_text()
    assert 'createElementNS(SVG, "rect")' in html and "svg.pbox" in html


def test_a_run_without_descriptions_has_no_patch_fields(tmp_path):
    fake = write_fake_run(tmp_path, layers={"conv2": 4})
    write_report(fake.run_dir)
    assert all("pl" not in r for r in _layer_data(fake, "conv2")["units"])


def test_the_browser_draws_the_boxes_and_shows_the_phrase(reported):
    from tests.browser import Chromium, find_chromium

    binary = find_chromium()
    if binary is None or os.environ.get("NEURONSCAN_SKIP_BROWSER") == "1":
        pytest.skip("no Chromium (apt-get install -y chromium)")
    fake, _ = reported
    with Chromium(binary, width=1280, height=900) as page:
        page.open(fake.run_dir / "report" / "index.html")
        page.wait_for("document.documentElement.dataset.nsReady === '1'", 15)
        page.evaluate("location.hash = '#units'")
        page.wait_for("!document.getElementById('view-units').hidden")
        card = "document.querySelector('article.card[data-unit=\"conv2:0004\"]')"
        page.wait_for(f"{card} !== null", 10)
        assert page.evaluate(f"{card}.querySelectorAll('svg.pbox rect').length") == 3
        width = page.evaluate(f"Number({card}.querySelector('svg.pbox rect').getAttribute('width'))")
        assert width == pytest.approx(10 / SIZE)
        lines = page.evaluate(f"Array.from({card}.querySelectorAll('.line')).map(n => n.textContent)")
        assert any(t.startswith("patch red, warm, circle") for t in lines)
        assert any(t.startswith("CLIP ") for t in lines)
        xss = "document.querySelector('article.card[data-unit=\"conv2:0001\"]')"
        assert XSS_SCRIPT in page.evaluate(f"{xss}.textContent")
        assert page.evaluate("document.querySelectorAll('img[src=x]').length") == 0
        assert page.errors == []
