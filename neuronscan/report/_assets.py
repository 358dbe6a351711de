"""The report's stylesheet and script, inlined into every report (no network, no CDN).

The script builds every element from data with ``createElement`` and ``textContent`` only, never
``innerHTML``, so names in a run (concepts, layers, URIs) can never become markup. Per-layer unit data
lives in ``data/*.js`` files that call ``window.__ns_data(key, payload)``; they are loaded on demand by
injecting ``<script src>`` tags, the one way a page opened from ``file://`` can load local data in
Chromium (``fetch`` of a local file is blocked there).
"""

from __future__ import annotations

CSS = """
:root { --bg: #f4f5f7; --card: #fff; --ink: #1f2937; --muted: #6b7280; --line: #e5e7eb; --accent: #2563eb; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background: var(--bg);
  color: var(--ink); }
header.top { position: sticky; top: 0; z-index: 10; background: #111827; color: #f9fafb; display: flex;
  align-items: center; gap: 18px; padding: 10px 20px; flex-wrap: wrap; }
header.top .brand { font-weight: 700; color: #93c5fd; letter-spacing: .02em; }
header.top h1 { font-size: 16px; margin: 0; font-weight: 600; overflow-wrap: anywhere; }
header.top .model { color: #d1d5db; }
nav { margin-left: auto; display: flex; gap: 4px; }
nav a { color: #d1d5db; text-decoration: none; padding: 5px 12px; border-radius: 6px; }
nav a:hover { background: #1f2937; }
nav a.active { background: #374151; color: #fff; }
main { padding: 16px 20px 40px; max-width: 1600px; margin: 0 auto; }
h2 { font-size: 17px; margin: 4px 0 12px; }
h3 { font-size: 14px; margin: 0 0 8px; }
.panel { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px;
  margin-bottom: 16px; }
.panels { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 16px; margin-bottom: 16px; }
.panels .panel { margin: 0; }
.notes { border-color: #fcd34d; background: #fffbeb; }
.notes li { margin: 2px 0; }
table { border-collapse: collapse; }
table.kv { width: 100%; }
table.kv th { text-align: left; font-weight: 500; color: var(--muted); padding: 2px 12px 2px 0; vertical-align: top;
  white-space: nowrap; }
table.kv td { padding: 2px 0; overflow-wrap: anywhere; }
table.grid { width: 100%; font-size: 13px; }
table.grid th { text-align: left; border-bottom: 2px solid var(--line); padding: 4px 8px; white-space: nowrap; }
table.grid td { border-bottom: 1px solid var(--line); padding: 3px 8px; overflow-wrap: anywhere; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.grid td.num, table.grid td.uid { overflow-wrap: normal; white-space: nowrap; }
.charts { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
.layer-charts { border-top: 1px solid var(--line); padding-top: 10px; margin-top: 10px; }
svg.chart { background: #fff; }
details pre { max-height: 480px; overflow: auto; background: #f9fafb; padding: 8px; font-size: 12px; }
.filters { position: sticky; top: 50px; z-index: 5; display: flex; flex-wrap: wrap; gap: 10px 16px;
  align-items: center; background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 10px 14px; margin-bottom: 12px; }
.filters label { display: inline-flex; align-items: center; gap: 6px; color: var(--muted); }
.filters input[type=search], .filters input[type=text] { width: 220px; }
.filters input, .filters select, .filters button { font: inherit; padding: 3px 6px; }
.filters input[type=number] { width: 72px; }
.bar { display: flex; justify-content: space-between; align-items: center; margin: 6px 0 10px; gap: 12px;
  flex-wrap: wrap; }
.count { font-weight: 600; }
.pager { display: inline-flex; gap: 8px; align-items: center; }
.pager button { font: inherit; padding: 2px 10px; }
.status { color: #b91c1c; }
.chip { background: #dbeafe; color: #1e40af; border-radius: 12px; padding: 2px 10px; }
.chip button { border: 0; background: transparent; color: inherit; cursor: pointer; font: inherit; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px;
  min-width: 0; }
.card.dead { background: #fafafa; }
.card-head { display: flex; justify-content: space-between; align-items: baseline; gap: 8px; }
.uid { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-weight: 600;
  overflow-wrap: anywhere; }
.flag { font-size: 11px; padding: 1px 7px; border-radius: 9px; margin-left: 4px; background: #e5e7eb;
  white-space: nowrap; }
.flag.sig { background: #dcfce7; color: #166534; }
.flag.multimodal { background: #ede9fe; color: #5b21b6; }
.flag.spurious { background: #fee2e2; color: #991b1b; }
.flag.dead { background: #ffedd5; color: #9a3412; }
.best { margin: 4px 0; overflow-wrap: anywhere; }
.best .concept { font-weight: 600; }
.stats, .muted { color: var(--muted); }
.thumbs { display: flex; flex-wrap: wrap; gap: 4px; margin: 8px 0; }
.thumb { position: relative; display: inline-block; line-height: 0; border-radius: 3px; overflow: hidden;
  background: #e5e7eb; }
.thumb img { display: block; }
.marker { position: absolute; width: 12px; height: 12px; margin: -6px 0 0 -6px; border: 2px solid #fff;
  border-radius: 50%; box-shadow: 0 0 0 2px #dc2626; pointer-events: none; }
svg.pbox { position: absolute; left: 0; top: 0; width: 100%; height: 100%; pointer-events: none; }
svg.pbox rect { fill: none; stroke: #f59e0b; stroke-width: 2px; vector-effect: non-scaling-stroke; }
table.tc { width: 100%; font-size: 12px; margin: 4px 0; table-layout: fixed; }
table.tc th { text-align: left; color: var(--muted); font-weight: 500; }
table.tc th.num { width: 58px; text-align: right; }
table.tc td { border-top: 1px solid #f3f4f6; padding: 1px 3px; overflow-wrap: anywhere; }
table.tc tr.sig td:first-child { font-weight: 600; }
.line { margin: 2px 0; overflow-wrap: anywhere; }
.line .k { color: var(--muted); }
.concept-row { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px;
  margin-bottom: 8px; }
.concept-row .name { font-weight: 600; overflow-wrap: anywhere; }
.unit-links { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 4px; }
.unit-links a { font-size: 12px; text-decoration: none; background: #eff6ff; color: #1d4ed8; border-radius: 5px;
  padding: 1px 7px; overflow-wrap: anywhere; }
tr.changed td:first-child { border-left: 3px solid #f97316; }
ul.tree { list-style: none; margin: 4px 0; padding-left: 18px; border-left: 1px solid var(--line); }
.panel > ul.tree { border-left: 0; padding-left: 0; }
ul.tree li.node { margin: 6px 0; }
ul.tree summary { cursor: pointer; }
.cname { font-weight: 600; overflow-wrap: anywhere; }
.set, .chips, .other-sets { display: block; margin: 2px 0; }
.chips { display: flex; flex-wrap: wrap; gap: 6px; }
.chip-unit { display: inline-flex; align-items: center; gap: 4px; background: #f5f3ff; border-radius: 5px;
  padding: 1px 6px; font-size: 12px; }
.chip-unit a, td.uid a { text-decoration: none; color: #1d4ed8; font-family: ui-monospace, SFMono-Regular, Menlo,
  Consolas, monospace; }
svg.share { display: inline-block; vertical-align: middle; }
.hfilter { margin: 4px 0 8px; color: var(--muted); }
.hfilter input { font: inherit; padding: 3px 6px; width: 220px; }
"""

JS = r"""
(() => {
  "use strict";
  const INDEX = JSON.parse(document.getElementById("ns-index").textContent);
  const PAGE = INDEX.page_size;
  const $ = (id) => document.getElementById(id);
  const store = new Map();
  const loading = new Map();

  // Data files call this; they are plain scripts so that file:// pages can load them.
  window.__ns_data = (key, payload) => { store.set(key, payload); };

  function load(key, file) {
    if (store.has(key)) return Promise.resolve(store.get(key));
    if (loading.has(key)) return loading.get(key);
    const promise = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = file;
      script.onload = () => (store.has(key)
        ? resolve(store.get(key))
        : reject(new Error(file + " holds no data for " + key)));
      script.onerror = () => reject(new Error("could not load " + file));
      document.head.appendChild(script);
    });
    loading.set(key, promise);
    promise.catch(() => loading.delete(key));
    return promise;
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const fmt = (x, digits = 3) => (isNum(x) ? x.toFixed(digits) : "—");
  const fmtQ = (q) => (!isNum(q) ? "—" : q === 0 ? "0" : q < 1e-3 ? q.toExponential(1) : q.toFixed(3));
  const uid = (layer, unit) => layer + ":" + String(unit).padStart(4, "0");
  const clamp01 = (x) => Math.min(1, Math.max(0, x));
  const sortKey = (x) => (isNum(x) ? x : -Infinity);
  function debounce(fn, ms) {
    let timer = null;
    return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  }
  function setStatus(id, text) { $(id).textContent = text; }

  // ---------------------------------------------------------------- units
  const U = { layer: INDEX.layers.length ? 0 : -1, q: "", minAuc: 0, sig: false, hideDead: false,
              multi: false, spur: false, sort: "unit", page: 0, focus: null };
  let units = [];
  let unitsFor = null;
  let pending = null;
  let pendingFor = null;
  let rendered = false;

  function prepare(payload) {
    if (payload.ready) return payload;
    for (const u of payload.units) {
      u.L = payload.layer;
      u.im = payload.images;
      const words = [u.b, u.f, u.c, u.ph];
      for (const t of u.t || []) words.push(t[0]);
      u.s_ = words.filter((w) => w !== null && w !== undefined).join("\n").toLowerCase();
    }
    payload.ready = true;
    return payload;
  }
  function layerData(i) {
    const entry = INDEX.layers[i];
    return load(entry.key, entry.file).then(prepare);
  }
  function refreshUnits() {
    if (U.layer === -1) { setStatus("ns-status", "this run has no layers"); return Promise.resolve(); }
    const want = String(U.layer);
    if (unitsFor === want) { renderUnits(); return Promise.resolve(); }
    if (pendingFor === want) return pending;
    const which = U.layer === "all" ? INDEX.layers.map((_, i) => i) : [U.layer];
    setStatus("ns-status", "loading…");
    pendingFor = want;
    pending = Promise.all(which.map(layerData)).then(
      (payloads) => {
        if (String(U.layer) !== want) return;  // the user picked another layer meanwhile
        units = payloads.flatMap((p) => p.units);
        unitsFor = want;
        setStatus("ns-status", "");
        renderUnits();
      },
      (err) => { setStatus("ns-status", err.message); console.error(err); },
    ).finally(() => { if (pendingFor === want) pendingFor = null; });
    return pending;
  }
  function matches(u) {
    if (U.focus && !(u.L === U.focus.layer && u.u === U.focus.unit)) return false;
    if (U.q && !u.s_.includes(U.q)) return false;
    if (U.minAuc > 0 && !(u.a >= U.minAuc)) return false;
    if (U.sig && !u.g) return false;
    if (U.hideDead && u.d) return false;
    if (U.multi && !u.m) return false;
    if (U.spur && !u.x) return false;
    return true;
  }
  function renderUnits() {
    const start = performance.now();
    let list = units.filter(matches);
    if (U.sort === "auc") list = list.slice().sort((a, b) => sortKey(b.a) - sortKey(a.a));
    else if (U.sort === "nsig") list = list.slice().sort((a, b) => sortKey(b.s) - sortKey(a.s));
    const pages = Math.max(1, Math.ceil(list.length / PAGE));
    U.page = Math.min(Math.max(U.page, 0), pages - 1);
    const count = $("ns-count");
    count.textContent = list.length.toLocaleString("en") + " of " + units.length.toLocaleString("en") + " units";
    count.dataset.count = String(list.length);
    for (const node of document.querySelectorAll("#view-units .page-label")) {
      node.textContent = "page " + (U.page + 1) + " / " + pages;
    }
    for (const node of document.querySelectorAll("#view-units button.prev")) node.disabled = U.page === 0;
    for (const node of document.querySelectorAll("#view-units button.next")) node.disabled = U.page >= pages - 1;
    const chip = $("ns-focus");
    chip.replaceChildren();
    chip.hidden = !U.focus;
    if (U.focus) {
      const clear = el("button", "", "×");
      clear.title = "show all units";
      clear.addEventListener("click", () => { U.focus = null; renderUnits(); });
      chip.append("only " + uid(U.focus.layer, U.focus.unit) + " ", clear);
    }
    const frag = document.createDocumentFragment();
    for (const u of list.slice(U.page * PAGE, (U.page + 1) * PAGE)) frag.append(card(u));
    $("ns-cards").replaceChildren(frag);
    performance.measure("ns-render-units", { start: start });
    if (!rendered) {
      rendered = true;
      performance.mark("ns-cards-rendered");
      document.documentElement.dataset.nsReady = "1";
    }
  }
  function flag(parent, on, cls, text) { if (on) parent.append(el("span", "flag " + cls, text)); }
  function line(key, value) {
    const div = el("div", "line");
    div.append(el("span", "k", key + " "), el("span", "v", value));
    return div;
  }
  function card(u) {
    const node = el("article", u.d ? "card dead" : "card");
    node.dataset.unit = uid(u.L, u.u);
    const head = el("header", "card-head");
    const flags = el("span", "flags");
    flag(flags, u.g, "sig", "significant");
    flag(flags, u.m, "multimodal", "multimodal");
    flag(flags, u.x, "spurious", "spurious");
    flag(flags, u.d, "dead", "dead");
    head.append(el("span", "uid", uid(u.L, u.u)), flags);
    node.append(head);
    const best = el("div", "best");
    best.append(el("span", "k", "best "), el("span", "concept", u.b == null ? "—" : u.b),
                el("span", "stats", "  AUC " + fmt(u.a) + " · AUPRC " + fmt(u.p) + " · q " + fmtQ(u.q) +
                   (isNum(u.dp) ? " · depth " + u.dp : "")));
    node.append(best);
    if (u.i && u.i.length) {
      const row = el("div", "thumbs");
      const boxes = new Map((u.pb || []).map((b) => [b[0], b.slice(1)]));
      u.i.forEach((top, rank) => row.append(thumb(top, u.im, boxes.get(rank))));
      node.append(row);
    } else {
      node.append(el("div", "muted line", "no top images"));
    }
    if (u.t && u.t.length) {
      const table = el("table", "tc");
      const hrow = el("tr");
      hrow.append(el("th", "", "concept"), el("th", "num", "AUC"), el("th", "num", "AUPRC"), el("th", "num", "q"));
      table.append(hrow);
      for (const [name, auc, auprc, q] of u.t) {
        const tr = el("tr", isNum(q) && q <= INDEX.alpha ? "sig" : "");
        tr.append(el("td", "", name), el("td", "num", fmt(auc)), el("td", "num", fmt(auprc)), el("td", "num", fmtQ(q)));
        table.append(tr);
      }
      node.append(table);
    }
    if (u.f != null) node.append(line("formula", u.f + "  (AUC " + fmt(u.fa) + ")"));
    if (u.sim && u.sim.some(isNum)) {
      node.append(line("held-out r", "concept " + fmt(u.sim[0]) + " · formula " + fmt(u.sim[1]) +
                       " · linear " + fmt(u.sim[2])));
    }
    if (u.lt && u.lt.length) {
      node.append(line("linear", u.lt.map(([t, w]) => (isNum(w) && w < 0 ? "− " : "+ ") +
                                          fmt(Math.abs(w), 2) + " " + t).join(" ")));
    }
    if (u.c != null) node.append(line("CLIP", u.c + "  (score " + fmt(u.cs, 2) + ")"));
    if (u.pl != null) node.append(line("patch", u.ph + "  (score " + fmt(u.ps, 3) + " · " + u.pn + " crops)"));
    node.append(line("significant concepts", isNum(u.s) ? String(u.s) : "—"));
    return node;
  }
  function thumb(top, images, box) {
    const [id, value, y, x] = top;
    const wrap = el("span", "thumb");
    const meta = images[id];
    const img = document.createElement("img");
    img.width = INDEX.thumb;
    img.height = INDEX.thumb;
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = "image " + id;
    img.src = meta && meta[1] && /^-?[0-9]+$/.test(id) ? "thumbs/" + id + ".jpg" : "thumbs/placeholder.png";
    wrap.title = "image " + id + (meta && meta[0] ? "\n" + meta[0] : "") + "\nactivation " + fmt(value, 3);
    wrap.append(img);
    if (isNum(y) && isNum(x)) {
      const marker = el("span", "marker");
      marker.style.left = (100 * clamp01(x)).toFixed(1) + "%";
      marker.style.top = (100 * clamp01(y)).toFixed(1) + "%";
      wrap.append(marker);
    }
    if (box && box.every(isNum)) {  // the crop the patch description embedded (an inline SVG rectangle)
      const SVG = "http:" + "//www.w3.org/2000/svg";  // the SVG namespace's name (nothing is loaded from it)
      const svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("class", "pbox");
      svg.setAttribute("viewBox", "0 0 1 1");
      svg.setAttribute("preserveAspectRatio", "none");
      const rect = document.createElementNS(SVG, "rect");
      const [x0, y0, x1, y1] = box.map(clamp01);
      rect.setAttribute("x", String(x0));
      rect.setAttribute("y", String(y0));
      rect.setAttribute("width", String(Math.max(0, x1 - x0)));
      rect.setAttribute("height", String(Math.max(0, y1 - y0)));
      svg.append(rect);
      wrap.append(svg);
      wrap.title += "\ncrop x " + fmt(x0, 2) + "–" + fmt(x1, 2) + ", y " + fmt(y0, 2) + "–" + fmt(y1, 2);
    }
    return wrap;
  }
  function wireUnits() {
    const layer = $("f-layer");
    layer.addEventListener("change", () => {
      U.layer = layer.value === "all" ? "all" : Number(layer.value);
      U.page = 0;
      U.focus = null;
      refreshUnits();
    });
    $("f-concept").addEventListener("input", debounce((e) => {
      U.q = e.target.value.trim().toLowerCase(); U.page = 0; renderUnits();
    }, 120));
    $("f-auc").addEventListener("input", debounce((e) => {
      const v = parseFloat(e.target.value);
      U.minAuc = Number.isFinite(v) ? v : 0; U.page = 0; renderUnits();
    }, 120));
    const boxes = { "f-sig": "sig", "f-dead": "hideDead", "f-multi": "multi", "f-spur": "spur" };
    for (const [id, key] of Object.entries(boxes)) {
      $(id).addEventListener("change", (e) => { U[key] = e.target.checked; U.page = 0; renderUnits(); });
    }
    $("f-sort").addEventListener("change", (e) => { U.sort = e.target.value; U.page = 0; renderUnits(); });
    for (const b of document.querySelectorAll("#view-units button.prev")) {
      b.addEventListener("click", () => { U.page -= 1; renderUnits(); window.scrollTo(0, 0); });
    }
    for (const b of document.querySelectorAll("#view-units button.next")) {
      b.addEventListener("click", () => { U.page += 1; renderUnits(); window.scrollTo(0, 0); });
    }
  }

  // ---------------------------------------------------------------- concepts
  const C = { q: "", sort: "auc", page: 0 };
  let concepts = null;
  let conceptsLoading = false;

  function refreshConcepts() {
    if (!INDEX.concepts) { setStatus("nc-status", "this run has no concept scores"); return; }
    if (concepts) { renderConcepts(); return; }
    if (conceptsLoading) return;
    conceptsLoading = true;
    setStatus("nc-status", "loading…");
    load(INDEX.concepts.key, INDEX.concepts.file).finally(() => { conceptsLoading = false; }).then(
      (payload) => {
        concepts = payload;
        for (const c of concepts.concepts) c.s_ = String(c.n).toLowerCase();
        setStatus("nc-status", "");
        renderConcepts();
      },
      (err) => { setStatus("nc-status", err.message); console.error(err); });
  }
  function renderConcepts() {
    let list = concepts.concepts.filter((c) => !C.q || c.s_.includes(C.q));
    if (C.sort === "nsig") list = list.slice().sort((a, b) => sortKey(b.s) - sortKey(a.s));
    else if (C.sort === "name") list = list.slice().sort((a, b) => String(a.n).localeCompare(String(b.n)));
    const pages = Math.max(1, Math.ceil(list.length / PAGE));
    C.page = Math.min(Math.max(C.page, 0), pages - 1);
    const count = $("nc-count");
    count.textContent = list.length.toLocaleString("en") + " of " +
      concepts.concepts.length.toLocaleString("en") + " concepts";
    count.dataset.count = String(list.length);
    for (const node of document.querySelectorAll("#view-concepts .page-label")) {
      node.textContent = "page " + (C.page + 1) + " / " + pages;
    }
    for (const node of document.querySelectorAll("#view-concepts button.prev")) node.disabled = C.page === 0;
    for (const node of document.querySelectorAll("#view-concepts button.next")) node.disabled = C.page >= pages - 1;
    const frag = document.createDocumentFragment();
    for (const c of list.slice(C.page * PAGE, (C.page + 1) * PAGE)) frag.append(conceptRow(c));
    $("nc-list").replaceChildren(frag);
  }
  function conceptRow(c) {
    const node = el("article", "concept-row");
    node.dataset.concept = String(c.n);
    const head = el("div", "bar");
    head.append(el("span", "name", c.n));
    const facts = [];
    if (isNum(c.dp)) facts.push("depth " + c.dp);
    facts.push("best AUC " + fmt(c.a));
    facts.push((isNum(c.s) ? c.s : 0) + " significant units");
    facts.push((isNum(c.nb) ? c.nb : 0) + " units with it as best concept");
    head.append(el("span", "muted", facts.join(" · ")));
    node.append(head);
    const links = el("div", "unit-links");
    for (const [li, unit, auc, , q] of c.u) {
      const layer = concepts.layers[li];
      const a = el("a", "", uid(layer, unit) + "  AUC " + fmt(auc) + " · q " + fmtQ(q));
      a.href = "#unit/" + encodeURIComponent(layer) + "/" + unit;
      links.append(a);
    }
    node.append(links);
    return node;
  }
  function wireConcepts() {
    $("c-filter").addEventListener("input", debounce((e) => {
      C.q = e.target.value.trim().toLowerCase(); C.page = 0; if (concepts) renderConcepts();
    }, 120));
    $("c-sort").addEventListener("change", (e) => {
      C.sort = e.target.value; C.page = 0; if (concepts) renderConcepts();
    });
    for (const b of document.querySelectorAll("#view-concepts button.prev")) {
      b.addEventListener("click", () => { C.page -= 1; renderConcepts(); window.scrollTo(0, 0); });
    }
    for (const b of document.querySelectorAll("#view-concepts button.next")) {
      b.addEventListener("click", () => { C.page += 1; renderConcepts(); window.scrollTo(0, 0); });
    }
  }

  // ---------------------------------------------------------------- diff
  function wireDiff() {
    const input = $("d-filter");
    if (!input) return;
    input.addEventListener("input", debounce(() => {
      const q = input.value.trim().toLowerCase();
      for (const row of document.querySelectorAll("table.filterable tbody tr")) {
        row.hidden = q !== "" && !row.textContent.toLowerCase().includes(q);
      }
    }, 120));
  }

  // ---------------------------------------------------------------- hierarchy
  function wireHierarchy() {
    const input = $("h-filter");
    if (!input) return;
    input.addEventListener("input", debounce(() => {
      const q = input.value.trim().toLowerCase();
      for (const row of document.querySelectorAll("table.hfilterable tbody tr")) {
        row.hidden = q !== "" && !row.textContent.toLowerCase().includes(q);
      }
    }, 120));
  }

  // ---------------------------------------------------------------- views
  const VIEWS = ["overview", "units", "concepts", "hierarchy", "diff"];
  function show(view) {
    for (const section of document.querySelectorAll("section.view")) section.hidden = section.id !== "view-" + view;
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
    if (view === "units") refreshUnits();
    if (view === "concepts") refreshConcepts();
  }
  function route() {
    const hash = location.hash.replace(/^#/, "");
    if (hash.startsWith("unit/")) {
      const parts = hash.split("/");
      let layer = null;
      try { layer = decodeURIComponent(parts[1] || ""); } catch (err) { layer = null; }
      const unit = Number(parts[2]);
      const index = INDEX.layers.findIndex((entry) => entry.name === layer);
      if (index >= 0 && Number.isInteger(unit)) {
        U.layer = index;
        U.focus = { layer: layer, unit: unit };
        U.page = 0;
        $("f-layer").value = String(index);
      }
      show("units");
      return;
    }
    show(VIEWS.includes(hash) && $("view-" + hash) ? hash : "overview");
  }

  wireUnits();
  wireConcepts();
  wireDiff();
  wireHierarchy();
  window.addEventListener("hashchange", route);
  route();
  // Render the first layer's cards right away (hidden if another view is open) so Units opens instantly.
  if (!rendered) refreshUnits();
})();
"""
