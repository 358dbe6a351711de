"""The report in a real headless Chromium: renders from file:// without errors, filters work, names stay text.

Needs Debian's chromium (``apt-get install -y chromium``). Without it the tests fail with that message,
unless ``NEURONSCAN_SKIP_BROWSER=1`` is set, which skips them.
"""

from __future__ import annotations

import io
import json
import os

import pytest
from PIL import Image

from neuronscan.report import write_report
from tests.browser import Chromium, find_chromium
from tests.unit.report._fake_run import XSS_IMG, XSS_SCRIPT, write_fake_diff, write_fake_run

pytestmark = pytest.mark.timeout(180)

LAYERS = {"conv2": 60, "conv4:mean": 30}


@pytest.fixture(scope="module")
def chromium_binary():
    if os.environ.get("NEURONSCAN_SKIP_BROWSER") == "1":
        pytest.skip("NEURONSCAN_SKIP_BROWSER=1")
    binary = find_chromium()
    if binary is None:
        pytest.fail(
            "Chromium is not installed (looked for $NEURONSCAN_CHROMIUM, chromium on PATH, /usr/bin/chromium). "
            "Install it with `apt-get install -y chromium`, or set NEURONSCAN_SKIP_BROWSER=1 to skip these tests."
        )
    return binary


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    run = write_fake_run(root, layers=LAYERS, run_id=XSS_SCRIPT)
    write_fake_diff(run, root / "diff")
    write_report(run.run_dir, diff_dir=root / "diff")
    return run


@pytest.fixture(scope="module")
def page(chromium_binary, fake):
    """One browser on the report for the whole module; each test starts from the Units view of conv2."""
    with Chromium(chromium_binary, width=1280, height=900) as browser:
        browser.open(fake.run_dir / "report" / "index.html")
        browser.wait_for("document.documentElement.dataset.nsReady === '1'", 15)
        yield browser


@pytest.fixture
def units(page):
    """The Units view with every filter cleared; asserts afterwards that the page logged no error."""
    page.evaluate("location.hash = '#units'")
    page.wait_for("!document.getElementById('view-units').hidden")
    page.evaluate("document.getElementById('f-layer').value !== '0' && (document.getElementById('f-layer').value = '0',"
                  " document.getElementById('f-layer').dispatchEvent(new Event('change')))")
    for box in ("f-sig", "f-dead", "f-multi", "f-spur"):
        page.evaluate(f"(e => e.checked && e.click())(document.getElementById('{box}'))")
    page.type_text("#f-concept", "")
    page.type_text("#f-auc", "0")
    _wait_count(page, LAYERS["conv2"])
    yield page
    assert page.errors == [], page.errors
    assert page.dialogs == [] and page.evaluate("window.__ns_dialogs") == []


def _wait_count(page, n: int) -> None:
    """Wait until the Units view reports ``n`` matching units."""
    page.wait_for(f"document.getElementById('ns-count').dataset.count === '{n}'", 10)


def _cards(page) -> int:
    return page.evaluate("document.querySelectorAll('#ns-cards > article.card').length")


def _expected(fake, layer: str, query: str = "", min_auc: float = 0.0, significant: bool = False) -> int:
    """Units the filters should keep, computed from the run's tables (the filter's documented rule)."""
    q = query.lower()
    nc = fake.neuron_concepts[fake.neuron_concepts["layer"] == layer]
    n = 0
    for row in fake.neurons[fake.neurons["layer"] == layer].itertuples():
        rows = nc[nc["unit"] == row.unit]
        words = [row.best_concept, row.formula, row.clip_label]
        words += list(rows.sort_values("auc", ascending=False, kind="stable")["concept"].head(5))
        if q and not any(isinstance(w, str) and q in w.lower() for w in words):
            continue
        if min_auc > 0 and not row.best_auc >= min_auc:
            continue
        if significant and not rows["q_value"].min() <= fake.alpha:
            continue
        n += 1
    return n


def test_renders_without_errors_and_screenshots(units, fake, tmp_path):
    assert _cards(units) == 50  # first page of 60 units
    assert units.evaluate("document.querySelector('.page-label').textContent") == "page 1 / 2"
    shot = units.screenshot(tmp_path / "units.png")
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000
    with Image.open(io.BytesIO(shot)) as img:
        img.verify()
    with Image.open(io.BytesIO(shot)) as img:
        assert img.size == (1280, 900)
        assert len(img.convert("RGB").getcolors(1 << 20) or []) > 50  # not a blank page
    # Thumbnails in view are loaded (lazy loading), the placeholder too, and markers sit on spatial units.
    loaded = units.wait_for(
        "(() => { const imgs = [...document.querySelectorAll('#ns-cards article:nth-child(-n+3) img')];"
        " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth === 64) && imgs.length; })()",
        10,
    )
    assert loaded == sum(len(fake.topk["conv2"].query("unit == @u and rank < 8")) for u in range(3))
    assert units.evaluate("document.querySelectorAll('#ns-cards article:first-child .marker').length") == 8
    units.click("nav a[data-view='overview']")
    units.wait_for("!document.getElementById('view-overview').hidden")
    units.screenshot(tmp_path / "overview.png", full_page=True)


def test_concept_filter_counts_and_keeps_markup_as_text(units, fake):
    expected = _expected(fake, "conv2", XSS_SCRIPT)
    assert 0 < expected < 50
    units.type_text("#f-concept", XSS_SCRIPT)
    _wait_count(units, expected)
    assert _cards(units) == expected
    texts = units.evaluate("[...document.querySelectorAll('#ns-cards article.card')].map(c => c.textContent)")
    assert all(XSS_SCRIPT in t for t in texts)
    names = units.evaluate("[...document.querySelectorAll('#ns-cards td')].map(td => td.textContent)")
    assert XSS_SCRIPT in names
    # Nothing was injected: only the page's own scripts exist and no element came from a concept name.
    scripts = units.evaluate("[...document.scripts].map(s => s.src ? 'src' : s.type || 'inline')")
    assert scripts.count("inline") == 1 and scripts.count("application/json") == 1
    assert units.evaluate("document.querySelectorAll('img[src=\"x\"], #ns-cards script, [onerror]').length") == 0

    expected_img = _expected(fake, "conv2", XSS_IMG)
    units.type_text("#f-concept", XSS_IMG)
    _wait_count(units, expected_img)
    assert _cards(units) == expected_img
    assert units.evaluate("document.querySelectorAll('img[src=\"x\"], [onerror]').length") == 0


def test_auc_threshold_and_flags_filter(units, fake):
    expected = _expected(fake, "conv2", min_auc=0.9)
    assert 0 < expected < 50
    units.type_text("#f-auc", "0.9")
    _wait_count(units, expected)
    assert _cards(units) == expected
    aucs = units.evaluate(
        "[...document.querySelectorAll('#ns-cards .best .stats')].map(s => parseFloat(s.textContent.split('AUC ')[1]))"
    )
    assert len(aucs) == expected and min(aucs) >= 0.9
    both = _expected(fake, "conv2", min_auc=0.9, significant=True)
    units.click("#f-sig")
    _wait_count(units, both)
    assert _cards(units) == both


def test_layer_switch_and_paging(units, fake):
    units.click("button.next")
    units.wait_for("document.querySelector('.page-label').textContent === 'page 2 / 2'")
    assert _cards(units) == 10
    units.evaluate(
        "(e => { e.value = '1'; e.dispatchEvent(new Event('change')); })(document.getElementById('f-layer'))"
    )
    _wait_count(units, LAYERS["conv4:mean"])
    assert _cards(units) == 30
    first = units.evaluate("document.querySelector('#ns-cards article').dataset.unit")
    assert first == "conv4:mean:0000"
    assert units.evaluate("document.querySelectorAll('#ns-cards .marker').length") == 0  # not spatial
    units.evaluate(
        "(e => { e.value = 'all'; e.dispatchEvent(new Event('change')); })(document.getElementById('f-layer'))"
    )
    _wait_count(units, sum(LAYERS.values()))
    units.type_text("#f-auc", "0.95")
    _wait_count(units, _expected(fake, "conv2", min_auc=0.95) + _expected(fake, "conv4:mean", min_auc=0.95))


def test_concepts_view_links_to_unit_cards(units, fake):
    units.click("nav a[data-view='concepts']")
    units.wait_for(f"document.getElementById('nc-count').dataset.count === '{len(fake.concepts)}'", 10)
    units.type_text("#c-filter", "<img")
    units.wait_for("document.getElementById('nc-count').dataset.count === '1'")
    name = units.evaluate("document.querySelector('#nc-list .concept-row .name').textContent")
    assert name == XSS_IMG
    link = units.evaluate("document.querySelector('#nc-list .unit-links a').textContent")
    units.click("#nc-list .unit-links a")
    _wait_count(units, 1)
    card = units.evaluate("document.querySelector('#ns-cards article').dataset.unit")
    assert link.startswith(card)
    assert units.evaluate("document.getElementById('ns-focus').hidden") is False
    units.click("#ns-focus button")
    units.wait_for("document.getElementById('ns-focus').hidden")


def test_diff_view_filters_rows(units, fake):
    units.click("nav a[data-view='diff']")
    units.wait_for("!document.getElementById('view-diff').hidden")
    units.type_text("#d-filter", "conv4:mean:0001")
    units.wait_for(
        "[...document.querySelectorAll('#view-diff table.filterable tbody tr')].filter(r => !r.hidden).length === 1"
    )
    units.type_text("#d-filter", "")


def test_content_security_policy_blocks_network(page):
    violations = page.evaluate(
        """new Promise((resolve) => {
          const seen = [];
          document.addEventListener("securitypolicyviolation", (e) => {
            seen.push(e.effectiveDirective);
            if (seen.length === 3) resolve(seen.sort());
          });
          const img = document.createElement("img");
          img.src = "http" + "://127.0.0.1:9/pixel.png";
          document.body.append(img);
          fetch("http" + "://127.0.0.1:9/data.json").catch(() => {});
          const s = document.createElement("script");
          s.textContent = "window.__ns_injected = 1";
          document.body.append(s);
          setTimeout(() => resolve(seen.sort()), 3000);
        })""",
        await_promise=True,
    )
    assert violations == ["connect-src", "img-src", "script-src-elem"]
    assert page.evaluate("window.__ns_injected === undefined")
    page.errors.clear()  # the violations above are logged as errors on purpose
    assert json.loads(json.dumps(page.dialogs)) == []
