"""A backend's fused ops, rewritten into the pieces its quantizer quantizes, before annotation.

A backend keeps an op whole at capture (`Backend.keep_ops`) when its toolchain takes it
as one op in float. Quantized, the same op may run in integers only as its pieces: QNN
HTP has no quantized attention op, but quantized MatMul and Softmax; kept whole, the
fused attention sat between a dequantize and a quantize and HTP computed it in fp16.
The fake-quantized reference must round where the device rounds, so the pieces have to
exist in the graph the quantizer annotates.

So a backend's quantizer may offer ``expand(node) -> Node | None``: insert, before
`node`, nodes computing its value from its inputs, and return the one holding that
value (None leaves `node` whole). Each quantizing backend is asked about the nodes it
owns; the core then replaces `node` by the returned one and makes every inserted node
the backend's own. An inserted node gets `node`'s source line (explain shows it), its
value's shape and dtype (``meta["val"]``, for the quantizer's checks), and the returned
one stands for `node` in `edgeport check`'s comparison with the float model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node, map_arg

from ..fold import pure
from .placement import QUANTIZES, Placement

EXPAND = "expand"  # the optional quantizer method
_CARRIED_META = ("stack_trace", "nn_module_stack", "source_fn_stack", "from_node")
aten = torch.ops.aten
CUSTOM = "custom"  # node.meta key torch.export keeps through recapture (flow.FLOAT_NODE lives in it)


def expand_placed(model: GraphModule, placement: Placement) -> int:
    """Let each quantizing backend's quantizer expand the nodes it owns; return how
    many nodes were expanded."""
    expanded = 0
    for name, answer in placement.backends.items():
        expand = getattr(answer.quantizer, EXPAND, None) if answer.status == QUANTIZES else None
        if expand is None:
            continue
        for node in [n for n in model.graph.nodes if placement.owner.get(n.name) == name]:
            before = set(model.graph.nodes)
            value = expand(node)
            if value is None:
                continue
            _describe([n for n in model.graph.nodes if n not in before], node)
            value = _in_layout_of(node, value)
            inserted = [n for n in model.graph.nodes if n not in before]
            _describe(inserted, node)
            placement.owner.update((n.name, name) for n in inserted)
            if CUSTOM in node.meta:
                value.meta[CUSTOM] = dict(node.meta[CUSTOM])
            node.replace_all_uses_with(value)
            read = node.all_input_nodes
            model.graph.erase_node(node)
            del placement.owner[node.name]
            _erase_unread(read, placement)
            expanded += 1
    if expanded:
        model.recompile()
    return expanded


def _erase_unread(nodes: list[Node], placement: Placement) -> None:
    """Erase those of `nodes` the expansion left unread, and what only they read: an
    attention's float mask split into its pieces leaves its fill, whose observer would
    measure finfo.min."""
    stack, erased = list(nodes), set()
    while stack:
        node = stack.pop()
        if node in erased or node.users or node.op != "call_function" or not pure(node):
            continue
        erased.add(node)
        stack.extend(node.all_input_nodes)
        node.graph.erase_node(node)
        placement.owner.pop(node.name, None)


def _describe(inserted: list[Node], node: Node) -> None:
    """Give the nodes inserted for `node` its source and their values (in graph order,
    so each reads values already known)."""
    for new in inserted:
        for key in _CARRIED_META:
            if key in node.meta:
                new.meta[key] = node.meta[key]
        if "val" not in new.meta:
            new.meta["val"] = _fake_value(new)


def _in_layout_of(node: Node, value: Node) -> Node:
    """`value`, laid out in memory as `node`'s value was: the views after `node` were
    traced on its strides (CPU attention returns (batch, heads, tokens, dim) stored as
    (batch, tokens, heads, dim), and the view merging heads back failed on a
    contiguous value). A dense layout is a permutation of a contiguous one: permute
    to it, make that contiguous, permute back."""
    want, got = node.meta["val"], value.meta["val"]
    if want.stride() == got.stride() or want.dim() < 2:
        return value
    order = sorted(range(want.dim()), key=lambda d: (-want.stride()[d], d))
    back = sorted(range(want.dim()), key=order.__getitem__)
    graph = node.graph
    with graph.inserting_before(node):
        stored = graph.call_function(aten.permute.default, (value, order))
        dense = graph.call_function(aten.clone.default, (stored,), {"memory_format": torch.contiguous_format})
        return graph.call_function(aten.permute.default, (dense, back))


def _fake_value(node: Node) -> Any:
    """`node`'s value computed on its inputs' fake values (the fake tensors capture left
    in ``meta["val"]`` run any aten op, shapes and dtypes only)."""
    args = map_arg(node.args, lambda n: n.meta["val"])
    kwargs = map_arg(node.kwargs, lambda n: n.meta["val"])
    return node.target(*args, **kwargs)


# -- for a backend's expansions ----------------------------------------------------------------


def stored_tensor(value: Node | torch.Tensor, like: Node, stem: str) -> Node:
    """`value` itself if a node, else a get_attr of it stored on the graph's module
    under a free name starting with `stem`, inserted at the graph's insertion point."""
    if isinstance(value, Node):
        return value
    module = like.graph.owning_module
    name = free_buffer_name(module, stem)
    module.register_buffer(name, value)
    stored = like.graph.get_attr(name)
    stored.meta["val"] = fake_like(like, value)
    return stored


def free_buffer_name(module: torch.nn.Module, stem: str) -> str:
    """``stem`` and the first number that names no attribute of ``module`` yet."""
    taken = {name for name, _ in module.named_buffers()} | set(dir(module))
    return next(f"{stem}_{i}" for i in range(len(taken) + 1) if f"{stem}_{i}" not in taken)


def fake_like(node: Node, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as a fake tensor of the fake mode `node`'s value was traced in."""
    from torch._guards import detect_fake_mode

    mode = detect_fake_mode([node.meta["val"]])
    return mode.from_tensor(tensor) if mode is not None else tensor
