"""Which aten node of the partition each ONNX node computes, recorded on the node.

The exporter copies each aten node's ``stack_trace`` meta onto the ONNX nodes made from
it (``pkg.torch.onnx.stack_trace``), so onnx_export.py sets it to
``edgeport-node:<aten node name>`` for the export. A rewrite that replaces several ONNX
nodes by one (native_norm.py: an RMS norm's chain, six aten nodes, as one native node)
gives the new node its primary record and also notes the others (`FUSED_KEY`): what
QNN says of that node (computed in float) holds for all of them.
"""

from __future__ import annotations

from typing import Any, Iterable

PROVENANCE_KEY = "pkg.torch.onnx.stack_trace"
PROVENANCE = "edgeport-node:"
FUSED_KEY = "edgeport.fused"  # the other aten nodes an ONNX node computes, one per line


def recorded(onnx_node: Any) -> str | None:
    """The aten node ``onnx_node`` was exported from, if recorded."""
    for prop in onnx_node.metadata_props:
        if prop.key == PROVENANCE_KEY and prop.value.startswith(PROVENANCE):
            return prop.value[len(PROVENANCE):]
    return None


def fused(onnx_node: Any) -> list[str]:
    """The further aten nodes ``onnx_node`` computes, as `record_fused` noted them."""
    return [name for prop in onnx_node.metadata_props if prop.key == FUSED_KEY for name in prop.value.split("\n")]


def record_fused(onnx_node: Any, replaced: Iterable[Any]) -> None:
    """Note on ``onnx_node`` the aten nodes of the ONNX nodes it ``replaced``."""
    names = [name for name in dict.fromkeys(map(recorded, replaced)) if name and name != recorded(onnx_node)]
    if names:
        onnx_node.metadata_props.add(key=FUSED_KEY, value="\n".join(names))
