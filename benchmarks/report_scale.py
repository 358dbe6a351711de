"""Report at scale: one layer of 2,048 units x 50 concepts, 8 top images per unit from a pool of 500.

Writes a synthetic run, times `neuronscan.report.write_report`, measures the report's size, then opens it
from file:// in headless Chromium and reads the page's own performance timing (navigation start -> load
event, and -> first unit cards rendered). Targets: index.html < 5 MB, opens in < 2 s.

Run:  .venv/bin/python benchmarks/report_scale.py            (about 30 s; needs /usr/bin/chromium)
      .venv/bin/python benchmarks/report_scale.py --no-browser
Prints a JSON summary and writes it to benchmarks/results/report_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neuronscan.report import write_report  # noqa: E402
from tests.browser import Chromium, find_chromium  # noqa: E402
from tests.unit.report._fake_run import write_fake_run  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "report_scale.json"

_TIMING = """(() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const cards = performance.getEntriesByName("ns-cards-rendered")[0];
  return {dom_content_loaded_ms: nav.domContentLoadedEventEnd, load_event_ms: nav.loadEventEnd,
          first_cards_rendered_ms: cards ? cards.startTime : null};
})()"""

_SHOW_UNITS = """new Promise((resolve) => {
  const t0 = performance.now();
  location.hash = "#units";
  requestAnimationFrame(() => requestAnimationFrame(() => resolve(performance.now() - t0)));
})"""

def main() -> None:
    """Parse arguments, run the benchmark, print and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=2048)
    parser.add_argument("--concepts", type=int, default=50)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--loads", type=int, default=5, help="page loads to time (the first is cold)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the run and report here")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="neuronscan-report-scale-") as tmp:
        root = args.work_dir or Path(tmp)
        t0 = time.perf_counter()
        fake = write_fake_run(
            root,
            layers={"layer4": args.units},
            n_concepts=args.concepts,
            n_images=args.images,
            n_failed=5,
            n_missing_files=0,
            top_m=args.top,
            image_size=(96, 96),
        )
        generate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = write_report(fake.run_dir, max_top_images=args.top)
        write_s = time.perf_counter() - t0
        files = [p for p in index.parent.rglob("*") if p.is_file()]
        data_files = sorted((index.parent / "data").glob("*.js"), key=lambda p: p.stat().st_size)
        result = {
            "benchmark": "report_scale",
            "params": {"units": args.units, "concepts": args.concepts, "images": args.images, "top": args.top},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "generate_run_s": round(generate_s, 3),
            "write_report_s": round(write_s, 3),
            "index_html_bytes": index.stat().st_size,
            "report_total_bytes": sum(p.stat().st_size for p in files),
            "report_files": len(files),
            "largest_data_file": {"name": data_files[-1].name, "bytes": data_files[-1].stat().st_size},
            "targets": {"index_html_bytes_max": 5_000_000, "open_ms_max": 2000},
        }
        if not args.no_browser:
            result["browser"] = _browser_timings(index, args.loads)
        ok = result["index_html_bytes"] < 5_000_000
        if "browser" in result:
            ok = ok and result["browser"]["load_event_ms"]["max"] < 2000
        result["targets_met"] = ok

    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


def _browser_timings(index: Path, loads: int) -> dict:
    """Load the report ``loads`` times in headless Chromium and collect the page's own timings."""
    binary = find_chromium()
    if binary is None:
        raise SystemExit("Chromium not found; install it (apt-get install -y chromium) or pass --no-browser")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    samples = []
    with Chromium(binary, width=1280, height=900, timeout=60) as browser:
        for _ in range(loads):
            browser.open("about:blank")
            browser.open(index)
            browser.wait_for("document.documentElement.dataset.nsReady === '1'", 30)
            browser.wait_for("performance.getEntriesByType('navigation')[0].loadEventEnd > 0", 30)
            samples.append(browser.evaluate(_TIMING))
        show_units_ms = browser.evaluate(_SHOW_UNITS, await_promise=True)
        renders = []
        for query in ("concept_01", "concept_02", "red", ""):
            before = browser.evaluate("performance.getEntriesByName('ns-render-units').length")
            browser.type_text("#f-concept", query)
            browser.wait_for(f"performance.getEntriesByName('ns-render-units').length > {before}", 10)
            renders.append(browser.evaluate("performance.getEntriesByName('ns-render-units').at(-1).duration"))
        matches = browser.evaluate("Number(document.getElementById('ns-count').dataset.count)")
        errors = list(browser.errors)

    def stats(key: str) -> dict:
        values = [s[key] for s in samples]
        median = statistics.median(values)
        return {"cold": round(values[0], 1), "median": round(median, 1), "max": round(max(values), 1)}

    return {
        "chromium": version,
        "loads": loads,
        "dom_content_loaded_ms": stats("dom_content_loaded_ms"),
        "load_event_ms": stats("load_event_ms"),
        "first_cards_rendered_ms": stats("first_cards_rendered_ms"),
        "show_units_view_ms": round(show_units_ms, 1),
        "filter_and_render_cards_ms": [round(r, 1) for r in renders],
        "filter_note": "one concept-filter change: filter all units, build the 50 cards of page 1",
        "units_after_clearing_filter": matches,
        "page_errors": errors,
    }


if __name__ == "__main__":
    main()
