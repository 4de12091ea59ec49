"""The geometry of the placement picture, computed from a saved placement report.

The report names, per partition, the values it reads and writes, so the picture is the
graph of partitions: one box per partition (its nodes listed inside, in run order, a
long run collapsed to its first and last nodes), and one link per pair of partitions
that pass values, marked as a boundary copy when a delegate is on either side. Boxes
sit in topological layers (a box's layer is one more than its deepest producer), top
to bottom; within a layer they are ordered by where their producers are, which keeps
most links short and uncrossed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..manifest import PORTABLE, delegated_plumbing

HEAD_ROWS, TAIL_ROWS = 3, 2  # a partition longer than HEAD + TAIL + 1 nodes shows only these ends
BOX_W, HEADER_H, ROW_H, PAD = 220.0, 20.0, 16.0, 6.0
GAP_X, GAP_Y, MARGIN = 36.0, 54.0, 20.0
INPUTS, OUTPUTS = "inputs", "outputs"  # keys of the two boxes that stand for the method's boundary


@dataclass(frozen=True)
class Row:
    """One line inside a box: a node, or a collapsed run of nodes (``hidden``)."""

    label: str
    title: str
    backend: str
    node: str | None = None
    hidden: tuple[str, ...] = ()
    declined: bool = False  # some backend said no to this node


@dataclass
class Box:
    key: str  # "p<id>" for a partition, INPUTS or OUTPUTS
    backend: str
    label: str
    rows: list[Row]
    partition: int | None = None
    layer: int = 0
    x: float = 0.0
    y: float = 0.0
    w: float = BOX_W

    @property
    def h(self) -> float:
        return HEADER_H + len(self.rows) * ROW_H + PAD

    @property
    def cx(self) -> float:
        return self.x + self.w / 2


@dataclass(frozen=True)
class Link:
    src: str
    dst: str
    values: tuple[str, ...]
    bytes: int
    copy: bool  # a delegate on either side: the values are copied across the boundary


@dataclass
class Picture:
    boxes: list[Box]
    links: list[Link]
    width: float = 0.0
    height: float = 0.0
    box: dict[str, Box] = field(default_factory=dict)  # key -> box


def short_op(op: str) -> str:
    """``aten.convolution.default`` -> ``convolution``; ``aten.add.Tensor`` -> ``add``."""
    parts = op.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "aten" else op


def _rows(nodes: Sequence[Mapping[str, Any]]) -> list[Row]:
    def row(n: Mapping[str, Any]) -> Row:
        why = "".join(f"\n{b} declined: {r}" for b, r in n["reasons"].items())
        title = f"{n['name']} ({n['op']}) on {n['backend']}{why}\n{n['source']}".rstrip()
        return Row(short_op(n["op"]), title, n["backend"], n["name"], declined=bool(n["reasons"]))

    if len(nodes) <= HEAD_ROWS + TAIL_ROWS + 1:
        return [row(n) for n in nodes]
    middle = nodes[HEAD_ROWS:-TAIL_ROWS]
    ops = defaultdict(int)
    for n in middle:
        ops[short_op(n["op"])] += 1
    summary = ", ".join(f"{count}× {op}" for op, count in sorted(ops.items(), key=lambda kv: -kv[1]))
    collapsed = Row(f"… {len(middle)} more nodes", f"{len(middle)} nodes collapsed: {summary}",
                    middle[0]["backend"], hidden=tuple(n["name"] for n in middle))
    return [row(n) for n in nodes[:HEAD_ROWS]] + [collapsed] + [row(n) for n in nodes[-TAIL_ROWS:]]


def _value_rows(names: Iterable[str], values: Mapping[str, Any]) -> list[Row]:
    rows = []
    for name in names:
        info = values.get(name)
        title = f"{name}: {info['dtype']}{info['shape']}, {info['bytes']} bytes" if info else name
        rows.append(Row(name, title, PORTABLE))
    return rows


def _boxes(report: Mapping[str, Any], inputs: Sequence[str], outputs: Sequence[str]) -> list[Box]:
    by_partition: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for node in report["nodes"]:
        if not delegated_plumbing(node):  # a quantized partition's ops, not its Q/DQ pairs
            by_partition[node["partition"]].append(node)
    values = report.get("values", {})
    boxes = [Box(INPUTS, PORTABLE, "inputs", _value_rows(inputs, values))]
    for p in report["partitions"]:
        count = len(by_partition[p["id"]])
        label = f"P{p['id']} · {p['backend']} · {count} node{'s' if count != 1 else ''}"
        boxes.append(Box(f"p{p['id']}", p["backend"], label, _rows(by_partition[p["id"]]), partition=p["id"]))
    boxes.append(Box(OUTPUTS, PORTABLE, "outputs", _value_rows(outputs, values)))
    return boxes


def _links(report: Mapping[str, Any], box: Mapping[str, Box], outputs: Sequence[str]) -> list[Link]:
    """One link per (producer, consumer) pair, carrying every value that goes between them."""
    producer = {v: f"p{p['id']}" for p in report["partitions"] for v in p["outputs"]}
    sizes = {name: info["bytes"] for name, info in report.get("values", {}).items()}
    carried: dict[tuple[str, str], list[str]] = defaultdict(list)
    for p in report["partitions"]:
        for value in p["inputs"]:
            carried[(producer.get(value, INPUTS), f"p{p['id']}")].append(value)
    for value in outputs:
        carried[(producer.get(value, INPUTS), OUTPUTS)].append(value)
    links = []
    for (src, dst), names in carried.items():
        copy = box[src].backend != PORTABLE or box[dst].backend != PORTABLE
        links.append(Link(src, dst, tuple(names), sum(sizes.get(v, 0) for v in names), copy))
    return links


def _assign_layers(boxes: Sequence[Box], links: Sequence[Link], box: Mapping[str, Box]) -> None:
    """Boxes arrive in run order (a topological order), so one pass settles every layer.
    A partition that reads nothing (it computes from weights alone) sits just above its
    first consumer, not at the top with a link spanning the whole picture."""
    preds: dict[str, list[str]] = defaultdict(list)
    succs: dict[str, list[str]] = defaultdict(list)
    for link in links:
        preds[link.dst].append(link.src)
        succs[link.src].append(link.dst)
    for b in boxes:
        b.layer = 1 + max((box[s].layer for s in preds[b.key]), default=-1) if b.key != INPUTS else 0
    last = max((b.layer for b in boxes if b.key != OUTPUTS), default=0)
    box[OUTPUTS].layer = last + 1
    for b in reversed(boxes):
        if b.partition is not None and not preds[b.key] and succs[b.key]:
            b.layer = max(b.layer, min(box[d].layer for d in succs[b.key]) - 1)


def _place(boxes: Sequence[Box], links: Sequence[Link], box: Mapping[str, Box]) -> tuple[float, float]:
    """Layers top to bottom; in each, boxes go under the mean of their producers and are
    then pushed right until none overlap."""
    preds: dict[str, list[str]] = defaultdict(list)
    for link in links:
        preds[link.dst].append(link.src)
    layers: dict[int, list[Box]] = defaultdict(list)
    for b in boxes:
        layers[b.layer].append(b)
    y = MARGIN
    for layer in sorted(layers):
        row = layers[layer]
        for b in row:
            centers = [box[s].cx for s in preds[b.key] if box[s].layer < layer]
            b.x = (sum(centers) / len(centers) if centers else MARGIN + b.w / 2) - b.w / 2
        row.sort(key=lambda b: b.x)
        for left, right in zip(row, row[1:]):
            right.x = max(right.x, left.x + left.w + GAP_X)
        for b in row:
            b.y = y
        y += max(b.h for b in row) + GAP_Y
    shift = MARGIN - min(b.x for b in boxes)
    for b in boxes:
        b.x += shift
    return max(b.x + b.w for b in boxes) + MARGIN, y - GAP_Y + MARGIN


def layout(report: Mapping[str, Any], inputs: Sequence[str], outputs: Sequence[str]) -> Picture:
    """The picture of one method's placement report. ``inputs`` and ``outputs`` are the
    method's boundary values (its user inputs and state reads; its outputs and state
    writes)."""
    boxes = _boxes(report, inputs, outputs)
    box = {b.key: b for b in boxes}
    links = _links(report, box, outputs)
    _assign_layers(boxes, links, box)
    width, height = _place(boxes, links, box)
    return Picture(boxes, links, width, height, box)
