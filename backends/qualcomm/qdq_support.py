"""Which quantize/dequantize nodes of a quantized (PT2E-converted) graph QNN HTP takes.

The qualcomm quantizer (quantizer.py) writes unsigned activations (uint8, uint16) and
int8 per-channel weights with int32 biases. Those nodes are qualcomm's; the rest are
another backend's:

- a signed activation quantize/dequantize (int8, int16) comes from another backend's
  scheme (the cpu's int8) in a mixed program. QNN would compute the same numbers, but
  taking it would pull that backend's boundary into a qualcomm partition;
- a weight or bias dequantize is qualcomm's when every op reading it reads its
  activation through a qualcomm (unsigned) dequantize, i.e. the op was quantized by
  qualcomm; a weight of a cpu-quantized op stays with the cpu. Per channel they are
  int8 weights and int32 biases; per tensor, a layer norm's uint8 scale and int32
  bias;
- affine ops (per-token, per-group: `torchao.*_affine`) quantize at run time, which
  QNN HTP does not do.

Ops are matched by qualified name: nothing here imports torchao.
"""

from __future__ import annotations

import torch
from torch.fx import Node

import edgeport
from edgeport.support import DEQUANTIZE, DEQUANTIZE_CHANNEL, QUANTIZE
from edgeport.support import qualified_name as op_name

UNSIGNED = frozenset({torch.uint8, torch.uint16})
WEIGHT_DTYPES = frozenset({torch.int8, torch.int32})  # int8 weights, int32 biases


def check_quantization(node: Node) -> edgeport.Support:
    """QNN HTP's answer for a quantize, dequantize or quantization-parameter node."""
    name = op_name(node)
    if name in (QUANTIZE, DEQUANTIZE):
        if node.target._overloadname != "default":
            return edgeport.Support.no(f"{name}: parameters computed at run time; QNN takes literal ones")
        dtype = node.args[5]
        if name == DEQUANTIZE and dtype == torch.int32 and _qualcomm_weight(node):
            return edgeport.Support.yes()  # a layer norm's bias (quantizer.py)
        if dtype not in UNSIGNED:
            return edgeport.Support.no(
                f"{name} to {str(dtype).removeprefix('torch.')}: another backend's scheme "
                "(qualcomm quantizes activations to uint8/uint16)"
            )
        return edgeport.Support.yes()
    if name == DEQUANTIZE_CHANNEL:
        if node.args[6] not in WEIGHT_DTYPES:
            return edgeport.Support.no(f"{name} of {node.args[6]}: QNN takes int8 weights and int32 biases")
        if not _qualcomm_weight(node):
            return edgeport.Support.no(f"{name}: the weight of an op another backend quantized")
        return edgeport.Support.yes()
    return edgeport.Support.no(f"{name}: QNN HTP runs static quantization only, not run-time or group-wise")


def _qualcomm_weight(dequantize: Node) -> bool:
    """Whether every op reading `dequantize` (a weight's or bias's) was quantized by qualcomm."""
    return bool(dequantize.users) and all(_reads_qualcomm_activation(user) for user in dequantize.users)


def _reads_qualcomm_activation(op: Node) -> bool:
    """True if `op` reads an input through a dequantize qualcomm takes (its activation:
    the first input, or the second of an ``addmm(bias, x, w)``)."""
    return any(op_name(arg) == DEQUANTIZE and arg.target._overloadname == "default" and arg.args[5] in UNSIGNED
               for arg in op.all_input_nodes)


def quantized_dtypes(graph: torch.fx.Graph) -> dict[str, str]:
    """What a partition computes in: {"activations": "uint8"/"uint16", "weights": "int8"},
    each key present only when the partition quantizes it (empty for a float partition)."""
    activations = {str(node.args[5]).removeprefix("torch.") for node in graph.nodes if op_name(node) == QUANTIZE}
    weights = {str(node.args[6]).removeprefix("torch.") for node in graph.nodes
               if op_name(node) == DEQUANTIZE_CHANNEL and node.args[6] == torch.int8}
    found = {"activations": activations, "weights": weights}
    return {kind: ",".join(sorted(dtypes)) for kind, dtypes in found.items() if dtypes}
