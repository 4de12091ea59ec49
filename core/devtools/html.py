"""``edgeport explain --html``: the placement report as one self-contained web page.

The page holds a picture of the graph (partitions as outlined boxes, nodes coloured by
the backend that runs them, portable torch in grey, boundary copies in red), a summary
(nodes and partitions per backend, every boundary tensor with its bytes) and a
searchable table of every declined node with each backend's reason. Everything is
inline (CSS, SVG, script), so the file opens offline and can be attached to a bug.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from typing import Any, Mapping, NamedTuple, Sequence

from ..manifest import PORTABLE, delegated_plumbing

from ..errors import InputError
from ..program import Program
from ._assets import CSS, JS
from .graph import HEADER_H, INPUTS, OUTPUTS, ROW_H, Box, Link, Picture, layout

PORTABLE_COLOR = "#b8b8b8"
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#e15759")


def palette(report: Mapping[str, Any]) -> dict[str, str]:
    """A colour per backend, in order of first appearance; portable is always grey."""
    names = dict.fromkeys(p["backend"] for p in report["partitions"])
    names.update(dict.fromkeys(b for n in report["nodes"] for b in n["reasons"]))
    colors = {PORTABLE: PORTABLE_COLOR}
    for name in names:
        if name not in colors:
            colors[name] = PALETTE[(len(colors) - 1) % len(PALETTE)]
    return colors


def human_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.1f} MiB"


def share(part: int, whole: int) -> str:
    """``part`` of ``whole`` as a percentage, never rounded to 0% or 100% when it is not
    exactly that: a lone node left to torch is what makes a program need torch."""
    if 0 < part < whole:
        percent = 100 * part / whole
        return "<1%" if percent < 1 else ">99%" if percent > 99 else f"{percent:.0f}%"
    return "100%" if part and part == whole else "0%"


def ops_by_backend(report: Mapping[str, Any]) -> Counter[str]:
    """How many of the method's ops each backend runs, as every summary counts them: the
    quantize/dequantize nodes a backend took as part of its ops (`delegated_plumbing`)
    are not ops of the model, and a quantized graph has twice as many of them."""
    return Counter(n["backend"] for n in report["nodes"] if not delegated_plumbing(n))


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


# -- the picture -------------------------------------------------------------------------


def _ports(picture: Picture) -> dict[tuple[str, str], tuple[float, float]]:
    """Where each link leaves its producer and enters its consumer: spread along the
    box edge in the order of the other end, so parallel links do not overlap."""
    outs: dict[str, list[Link]] = defaultdict(list)
    ins: dict[str, list[Link]] = defaultdict(list)
    for link in picture.links:
        outs[link.src].append(link)
        ins[link.dst].append(link)
    box = picture.box
    x_out: dict[tuple[str, str], float] = {}
    x_in: dict[tuple[str, str], float] = {}
    for key, links in outs.items():
        for i, link in enumerate(sorted(links, key=lambda link: box[link.dst].cx)):
            x_out[(link.src, link.dst)] = box[key].x + box[key].w * (i + 1) / (len(links) + 1)
    for key, links in ins.items():
        for i, link in enumerate(sorted(links, key=lambda link: box[link.src].cx)):
            x_in[(link.src, link.dst)] = box[key].x + box[key].w * (i + 1) / (len(links) + 1)
    return {k: (x_out[k], x_in[k]) for k in x_out}


def _link_svg(link: Link, picture: Picture, ports: Mapping[tuple[str, str], tuple[float, float]]) -> str:
    src, dst = picture.box[link.src], picture.box[link.dst]
    x1, x2 = ports[(link.src, link.dst)]
    y1, y2 = src.y + src.h, dst.y
    bend = max(24.0, (y2 - y1) / 2)
    path = f"M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + bend:.1f} {x2:.1f},{y2 - bend:.1f} {x2:.1f},{y2:.1f}"
    names = ", ".join(link.values[:6]) + (f" and {len(link.values) - 6} more" if len(link.values) > 6 else "")
    what = "boundary copy" if link.copy else "values"
    title = f"{what} {src.label} → {dst.label}: {names} ({human_bytes(link.bytes)})"
    cls = "link copy" if link.copy else "link"
    parts = [f'<path class="{cls}" d="{path}"><title>{_e(title)}</title></path>']
    if link.copy:
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        parts.append(f'<path class="copy-mark" data-values="{len(link.values)}" '
                     f'd="M{mx:.1f},{my - 6:.1f} l6,6 l-6,6 l-6,-6 z"><title>{_e(title)}</title></path>')
    return "".join(parts)


def _fit(text: str, width: float) -> str:
    """Cut ``text`` to what fits ``width`` pixels at the picture's 11px font (the full
    text is in the tooltip)."""
    chars = int(width / 6.4)
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _box_svg(b: Box, colors: Mapping[str, str]) -> str:
    color = colors.get(b.backend, PORTABLE_COLOR)
    cls = "box portable" if b.backend == PORTABLE else "box"
    data = f'data-x="{b.x:.0f}" data-y="{b.y:.0f}" data-w="{b.w:.0f}" data-h="{b.h:.0f}"'
    if b.partition is not None:
        data += f' data-partition="{b.partition}" data-backend="{_e(b.backend)}"'
    parts = [
        f'<g class="{cls}" {data}>',
        f'<rect class="frame" x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.0f}" height="{b.h:.0f}" rx="5" '
        f'style="stroke:{color}"><title>{_e(b.label)}</title></rect>',
        f'<text class="head" x="{b.x + 8:.1f}" y="{b.y + HEADER_H / 2 + 1:.1f}">{_e(_fit(b.label, b.w - 16))}</text>',
    ]
    for i, row in enumerate(b.rows):
        y = b.y + HEADER_H + i * ROW_H
        fill = colors.get(row.backend, PORTABLE_COLOR)
        attrs = f'data-node="{_e(row.node)}"' if row.node else f'data-hidden="{len(row.hidden)}"'
        node_cls = "node" if row.node else "node collapsed"
        if b.key in (INPUTS, OUTPUTS):
            node_cls, attrs, fill = "value", f'data-value="{_e(row.label)}"', "#eaeef2"
        text_cls = ' class="declined"' if row.declined else ""
        label = _e(_fit(row.label + (" !" if row.declined else ""), b.w - 24))
        parts.append(
            f'<g class="{node_cls}" {attrs}><title>{_e(row.title)}</title>'
            f'<rect x="{b.x + 6:.1f}" y="{y + 1:.1f}" width="{b.w - 12:.0f}" height="{ROW_H - 2:.0f}" rx="3" '
            f'fill="{fill}" fill-opacity="{0.55 if row.hidden else 0.9}"/>'
            f'<text x="{b.x + 12:.1f}" y="{y + ROW_H / 2 + 1:.1f}"{text_cls}>{label}</text></g>'
        )
    parts.append("</g>")
    return "".join(parts)


def _svg(picture: Picture, colors: Mapping[str, str]) -> str:
    ports = _ports(picture)
    links = "".join(_link_svg(link, picture, ports) for link in picture.links)
    boxes = "".join(_box_svg(b, colors) for b in picture.boxes)
    return (f'<svg id="graph" viewBox="0 0 {picture.width:.0f} {picture.height:.0f}" '
            f'data-boxes="{sum(1 for b in picture.boxes if b.partition is not None)}">'
            f'<g id="links">{links}</g><g id="boxes">{boxes}</g></svg>')


def _legend(colors: Mapping[str, str]) -> str:
    items = [f'<span class="item" data-backend="{_e(name)}"><span class="swatch" style="background:{color}">'
             f'</span>{_e(name)}</span>' for name, color in colors.items()]
    items.append('<span class="item copy">◆ boundary copy</span>')
    items.append('<span class="item">dashed frame: portable partition · "!" a backend declined the node</span>')
    return f'<div id="legend">{"".join(items)}</div>'


# -- the tables --------------------------------------------------------------------------


def _backend_table(report: Mapping[str, Any], colors: Mapping[str, str]) -> str:
    nodes = ops_by_backend(report)
    per_partition = Counter(n["partition"] for n in report["nodes"] if not delegated_plumbing(n))
    sizes: dict[str, list[int]] = defaultdict(list)
    for p in report["partitions"]:
        sizes[p["backend"]].append(per_partition[p["id"]])
    total = sum(nodes.values()) or 1
    rows = []
    for backend in colors:
        if backend not in nodes and backend not in sizes:
            continue
        listed = sorted(sizes[backend], reverse=True)
        shown = ", ".join(map(str, listed[:16])) + (f", … ({len(listed) - 16} more)" if len(listed) > 16 else "")
        rows.append(f'<tr data-backend="{_e(backend)}"><td><span class="swatch" style="background:{colors[backend]}">'
                    f'</span>{_e(backend)}</td><td class="num">{nodes[backend]}</td>'
                    f'<td class="num">{share(nodes[backend], total)}</td><td class="num">{len(listed)}</td>'
                    f'<td>{shown}</td></tr>')
    return ('<table id="backends"><thead><tr><th>backend</th><th>nodes</th><th>share</th><th>partitions</th>'
            f'<th>partition sizes (nodes)</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _boundary_table(report: Mapping[str, Any]) -> str:
    backend_of = {p["id"]: p["backend"] for p in report["partitions"]}
    producer = {v: p["id"] for p in report["partitions"] for v in p["outputs"]}
    consumers: dict[str, list[int]] = defaultdict(list)
    for p in report["partitions"]:
        for v in p["inputs"]:
            consumers[v].append(p["id"])
    values = report.get("values", {})
    ordered = sorted(values.items(), key=lambda kv: -kv[1]["bytes"])
    rows, copied = [], 0
    for name, info in ordered:
        src = producer.get(name)
        sides = ([backend_of[src]] if src is not None else []) + [backend_of[c] for c in consumers[name]]
        copy = any(s != PORTABLE for s in sides)
        copied += info["bytes"] if copy else 0
        made = f"P{src} · {backend_of[src]}" if src is not None else "method input"
        used = ", ".join(f"P{c} · {backend_of[c]}" for c in consumers[name]) or "method output"
        shape = "×".join(map(str, info["shape"])) or "scalar"
        rows.append(f'<tr{" class=copy" if copy else ""}><td><code>{_e(name)}</code></td><td>{_e(info["dtype"])} '
                    f'[{_e(shape)}]</td><td class="num" data-bytes="{info["bytes"]}">{human_bytes(info["bytes"])}</td>'
                    f'<td>{_e(made)}</td><td>{_e(used)}</td><td>{"copy" if copy else ""}</td></tr>')
    head = (f'<p>{len(values)} tensors cross a partition boundary; {human_bytes(copied)} of them are copied to or '
            f'from a delegate on every call.</p>')
    if not values:
        head = "<p>This program's report does not record boundary tensors (it predates them); re-export it.</p>"
    return (head + '<div class="scroll"><table id="boundary"><thead><tr><th>tensor</th><th>type</th><th>bytes</th>'
            '<th>made by</th><th>used by</th><th></th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _declined_table(report: Mapping[str, Any], colors: Mapping[str, str]) -> str:
    declined = [n for n in report["nodes"] if n["reasons"] and not delegated_plumbing(n)]
    backends = [b for b in colors if any(b in n["reasons"] for n in declined)]
    head = "".join(f"<th>{_e(b)} said</th>" for b in backends)
    rows = []
    for n in declined:
        cells = "".join(f"<td>{_e(n['reasons'].get(b, ''))}</td>" for b in backends)
        rows.append(f'<tr data-partition="{n["partition"]}"><td><code>{_e(n["name"])}</code></td><td>{_e(n["op"])}'
                    f'</td><td><span class="swatch" style="background:{colors.get(n["backend"], PORTABLE_COLOR)}">'
                    f'</span>{_e(n["backend"])}</td><td class="num">P{n["partition"]}</td>{cells}'
                    f'<td><code>{_e(n["source"])}</code></td></tr>')
    return (f'<input id="search" type="search" placeholder="filter: op, node, backend, reason, file…"> '
            f'<span id="shown">{len(rows)} of {len(rows)} shown</span>'
            f'<table id="declined"><thead><tr><th>node</th><th>op</th><th>runs on</th><th>partition</th>{head}'
            f'<th>source</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


class Line(NamedTuple):
    text: str
    warning: bool = False


def constant_input_warning(position: int, value: float, batches: int) -> str:
    """What to say of a model input the calibration saw as one value throughout (the
    export's warning and its summary line; `CalibrationStats.constant_inputs`)."""
    return (f"input {position} held the single value {value:g} in all {batches} calibration batch(es): its "
            f"quantization range was measured on that value alone, and real inputs will clip to it; calibrate on "
            f"inputs like the ones the model will see")


def quantization_lines(method: Mapping[str, Any]) -> list[Line]:
    """The scheme, what each backend did with it, and the calibration cost, as ``explain``
    prints them and the page shows them (`method`: a method's placement report)."""
    report = method["quantization"]
    lines = [Line(report.get("description", ""))]
    if report.get("quantizes_nothing"):
        portable = sum(1 for n in method["nodes"] if n["backend"] == PORTABLE)
        # a backend that declines the scheme leaves its nodes to portable torch when no
        # other selected backend takes them: the program then needs torch to run
        where = (f"; {portable} of its {len(method['nodes'])} node(s) run in portable torch, which needs torch where "
                 "the program runs") if portable else ""
        lines.append(Line(f"nothing is quantized: the program runs in float (no selected backend quantizes a node "
                          f"with {report.get('scheme')}: their lines say why){where}", warning=True))
    lines += [Line(f"  {backend}: {what}") for backend, what in report.get("backends", {}).items()]
    calibration = report.get("calibration")
    if isinstance(calibration, dict):
        count = calibration["batches"]
        lines.append(Line(f"  calibration: {count} batch{'' if count == 1 else 'es'}, {calibration['ms_per_batch']} ms "
                          "per batch"))
        lines += [Line(f"  {constant_input_warning(int(position), value, calibration['batches'])}", warning=True)
                  for position, value in calibration.get("constant_inputs", {}).items()]
    return lines


def _quantization(report: Mapping[str, Any]) -> str:
    if not report.get("quantization"):
        return ""
    items = "".join(f'<li{" class=warning" if line.warning else ""}>{_e(line.text.strip())}</li>'
                    for line in quantization_lines(report))
    return f'<h2>Quantization</h2><ul id="quantization">{items}</ul>'


def _fallbacks(report: Mapping[str, Any]) -> str:
    items = [f"<li>P{p['id']} fell back to portable: {_e(p['fallback'])}</li>"
             for p in report["partitions"] if p.get("fallback")]
    return f'<ul id="fallbacks">{"".join(items)}</ul>' if items else ""


def render_html(report: Mapping[str, Any], inputs: Sequence[str], outputs: Sequence[str], *,
                title: str = "edgeport placement") -> str:
    """The page for one method's placement report. ``inputs``/``outputs`` are the
    method's boundary values (see `graph.layout`)."""
    colors = palette(report)
    picture = layout(report, inputs, outputs)
    ops = [n for n in report["nodes"] if not delegated_plumbing(n)]  # a quantized graph's Q/DQ pairs aside
    delegated = sum(1 for n in ops if n["backend"] != PORTABLE)
    total = len(ops)
    plumbing = len(report["nodes"]) - total
    facts = (f"{total} nodes{f' (and {plumbing} quantize/dequantize)' if plumbing else ''} · "
             f"{len(report['partitions'])} partitions · "
             f"{delegated} nodes ({share(delegated, total)}) delegated · "
             f"{sum(1 for link in picture.links if link.copy)} boundary copies")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>{CSS}</style></head>
<body data-nodes="{total}">
<header><h1>{_e(title)}</h1><p id="facts">{_e(facts)}</p></header>
<main>
<h2>Graph</h2>
{_legend(colors)}
<div id="toolbar"><button id="zoom-in" type="button">+</button><button id="zoom-out" type="button">−</button>\
<button id="zoom-fit" type="button">fit</button> drag to pan, wheel to zoom, hover a node for its reasons</div>
<div id="viewport">{_svg(picture, colors)}</div>
<h2>Summary</h2>
{_backend_table(report, colors)}
{_fallbacks(report)}
{_quantization(report)}
<h2>Boundary tensors</h2>
{_boundary_table(report)}
<h2>Declined nodes</h2>
{_declined_table(report, colors)}
</main>
<script>{JS}</script>
</body></html>
"""


def render_program(program: Program, method: str | None = None, *, title: str | None = None) -> str:
    """The page for one method of a loaded program (default: forward, or its only method)."""
    name = method or program.default_method
    plan = program.manifest.methods.get(name)
    if plan is None:
        raise InputError(f"program has no method {name!r}; it has {', '.join(program.methods)}",
                         hint="pick one with --method")
    return render_html(program.report(name), [*plan.input_values, *plan.state_reads],
                       [*plan.output_values, *plan.state_writes], title=f"{title or 'edgeport placement'} ({name})")
