"""The stylesheet and script inlined into every HTML placement report.

They are ours and self-contained: the page must open from a file, offline, with no
CDN. The script gives the graph pan (drag) and zoom (wheel, buttons) by rewriting the
SVG's viewBox, filters the declined-node table as the user types (``#q=text`` in the
URL pre-fills the filter), and centres a partition when its row is clicked.
"""

CSS = """
* { box-sizing: border-box; }
body { font: 13px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1f2328; }
header { padding: 12px 20px; background: #24292f; color: #fff; }
header h1 { font-size: 17px; margin: 0 0 4px; }
header p { margin: 0; color: #d0d7de; }
main { padding: 0 20px 30px; }
h2 { font-size: 15px; margin: 22px 0 8px; }
table { border-collapse: collapse; margin-bottom: 8px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; max-width: 440px; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 5px;
          vertical-align: -1px; border: 1px solid rgba(0,0,0,.25); }
#legend { display: flex; flex-wrap: wrap; gap: 14px; margin: 6px 0; }
#legend .copy { color: #cf222e; font-weight: bold; }
#toolbar button { margin-right: 4px; }
#viewport { border: 1px solid #d0d7de; height: 640px; background: #fbfbfc; cursor: grab; overflow: hidden; }
#viewport.dragging { cursor: grabbing; }
#graph { width: 100%; height: 100%; display: block; user-select: none; }
.box > rect.frame { fill: #fff; stroke: #57606a; stroke-width: 1.5; }
.box.portable > rect.frame { stroke-dasharray: 4 3; }
.box.focus > rect.frame { stroke: #cf222e; stroke-width: 4; }
.box text { font-size: 11px; dominant-baseline: middle; pointer-events: none; }
.box text.head { font-weight: 600; }
.node text.declined { font-weight: 600; }
.link { fill: none; stroke: #8c959f; stroke-width: 1.4; }
.link.copy { stroke: #cf222e; stroke-width: 1.8; }
.copy-mark { fill: #cf222e; stroke: #fff; stroke-width: 1; }
.scroll { max-height: 420px; overflow: auto; display: inline-block; }
#declined tr.hidden { display: none; }
#declined tbody tr { cursor: pointer; }
#declined tbody tr:hover { background: #f6f8fa; }
#search { width: 360px; padding: 4px 6px; margin-bottom: 6px; }
code { font-size: 12px; }
"""

JS = """
(function () {
  const svg = document.getElementById("graph");
  const viewport = document.getElementById("viewport");
  const full = svg.viewBox.baseVal;
  const world = { x: full.x, y: full.y, w: full.width, h: full.height };
  let view = Object.assign({}, world);

  function apply() { svg.setAttribute("viewBox", [view.x, view.y, view.w, view.h].join(" ")); }
  function aspect() { return viewport.clientWidth / Math.max(1, viewport.clientHeight); }

  // Fit the whole graph, never zoomed past 1:1; when that would be too small to read
  // (a long chain), fit its width instead and start at the top.
  function fit() {
    const W = viewport.clientWidth || 1200, H = viewport.clientHeight || 640;
    let s = Math.min(W / world.w, H / world.h, 1);
    if (s < 0.45) s = Math.min(W / world.w, 1);
    view.w = W / s;
    view.h = H / s;
    view.x = world.x + (world.w - view.w) / 2;
    view.y = world.y + Math.min(0, (world.h - view.h) / 2);
    apply();
  }

  function zoom(factor, cx, cy) {
    const px = cx === undefined ? view.x + view.w / 2 : cx;
    const py = cy === undefined ? view.y + view.h / 2 : cy;
    view.x = px - (px - view.x) * factor;
    view.y = py - (py - view.y) * factor;
    view.w *= factor;
    view.h *= factor;
    apply();
  }

  function toWorld(evt) {
    const r = svg.getBoundingClientRect();
    return { x: view.x + (evt.clientX - r.left) / r.width * view.w,
             y: view.y + (evt.clientY - r.top) / r.height * view.h };
  }

  svg.addEventListener("wheel", function (evt) {
    evt.preventDefault();
    const p = toWorld(evt);
    zoom(evt.deltaY > 0 ? 1.15 : 1 / 1.15, p.x, p.y);
  }, { passive: false });

  let drag = null;
  svg.addEventListener("mousedown", function (evt) {
    drag = { x: evt.clientX, y: evt.clientY, vx: view.x, vy: view.y };
    viewport.classList.add("dragging");
  });
  window.addEventListener("mousemove", function (evt) {
    if (!drag) return;
    const r = svg.getBoundingClientRect();
    view.x = drag.vx - (evt.clientX - drag.x) / r.width * view.w;
    view.y = drag.vy - (evt.clientY - drag.y) / r.height * view.h;
    apply();
  });
  window.addEventListener("mouseup", function () { drag = null; viewport.classList.remove("dragging"); });

  document.getElementById("zoom-in").onclick = function () { zoom(1 / 1.4); };
  document.getElementById("zoom-out").onclick = function () { zoom(1.4); };
  document.getElementById("zoom-fit").onclick = fit;

  function focusPartition(id) {
    const box = svg.querySelector('.box[data-partition="' + id + '"]');
    if (!box) return;
    svg.querySelectorAll(".box.focus").forEach(function (b) { b.classList.remove("focus"); });
    box.classList.add("focus");
    const x = +box.dataset.x, y = +box.dataset.y, w = +box.dataset.w, h = +box.dataset.h;
    view.w = Math.max(w * 3, 600);
    view.h = view.w / aspect();
    view.x = x + w / 2 - view.w / 2;
    view.y = y + h / 2 - view.h / 2;
    apply();
    viewport.scrollIntoView({ block: "nearest" });
  }

  // The declined-node table: type to filter, click a row to find its partition.
  const search = document.getElementById("search");
  const rows = Array.from(document.querySelectorAll("#declined tbody tr"));
  const shown = document.getElementById("shown");
  function filter() {
    const q = search.value.trim().toLowerCase();
    let n = 0;
    rows.forEach(function (tr) {
      const hit = !q || tr.textContent.toLowerCase().indexOf(q) >= 0;
      tr.classList.toggle("hidden", !hit);
      if (hit) n++;
    });
    shown.textContent = n + " of " + rows.length + " shown";
  }
  search.addEventListener("input", filter);
  rows.forEach(function (tr) { tr.addEventListener("click", function () { focusPartition(tr.dataset.partition); }); });
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("q")) search.value = hash.get("q");

  fit();
  filter();
  document.body.dataset.ready = "1";
})();
"""
