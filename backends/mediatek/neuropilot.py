"""What LiteRT's MediaTek compiler plugin hands to NeuroPilot: TFLite ops, tensor types, ranks.

Read from LiteRT's source (google-ai-edge/LiteRT, the 2.3.0 line that ai-edge-litert
2.3.0 ships as vendors/mediatek/compiler/libLiteRtCompilerPlugin_MediaTek.so):

- `litert/vendors/mediatek/compiler/compiler_plugin.cc`, `kSupportedOps`: the TFLite
  builtins the plugin legalizes. `IsOpSupported` selects an op only when its code is in
  that list and `VerifyCommonOp` accepts every one of its tensors.
- `litert/vendors/mediatek/compiler/legalizations/neuron_utils.cc`,
  `GetNeuronTensorType` (what `VerifyCommonOp` asks): float32, float16, int32 and bool
  map to Neuron tensor types; int64 only for constant weights (cast to int32); int8,
  uint8, int16 and int4 only with quantization parameters, which our writer never writes.
- Rank: NeuronAdapter's operations are NNAPI's (`NeuronAdapter.h` lists each with its
  NNAPI level), and NNAPI takes tensors of rank up to 4.

Also in the list but never written by our TFLite writer: QUANTIZE, PRELU,
L2_NORMALIZATION, SQUARED_DIFFERENCE and the odml.rms_norm / odml.l2_norm composites.
"""

from __future__ import annotations

import torch

PLUGIN_SOURCE = "litert/vendors/mediatek/compiler/compiler_plugin.cc"
TYPES_SOURCE = "litert/vendors/mediatek/compiler/legalizations/neuron_utils.cc"

# kSupportedOps, as TFLite BuiltinOperator names.
LEGALIZED_OPS = frozenset(
    {
        "ABS", "ADD", "AVERAGE_POOL_2D", "BATCH_MATMUL", "CAST", "CONCATENATION", "CONV_2D",
        "DEPTHWISE_CONV_2D", "DEQUANTIZE", "DIV", "FULLY_CONNECTED", "GELU", "GREATER",
        "HARD_SWISH", "L2_NORMALIZATION", "LEAKY_RELU", "LESS", "LOGISTIC", "MAXIMUM",
        "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PAD", "PADV2", "PRELU", "QUANTIZE",
        "REDUCE_MAX", "RELU", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR",
        "RSQRT", "SLICE", "SOFTMAX", "SPLIT", "SQRT", "SQUARED_DIFFERENCE", "STRIDED_SLICE",
        "SUB", "SUM", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
    }
)  # fmt: skip

MAX_RANK = 4

# Torch dtypes of runtime values that reach the plugin as a Neuron tensor type
# (int64 values become int32 inside our TFLite model, but an int64 value at run time
# would sit at a partition boundary, where the plugin refuses it).
RUNTIME_DTYPES = frozenset({torch.float32, torch.float16, torch.int32, torch.bool})

# TFLite TensorType names GetNeuronTensorType maps without quantization parameters.
TENSOR_TYPES = frozenset({"FLOAT32", "FLOAT16", "INT32", "BOOL"})
CONSTANT_ONLY_TYPES = frozenset({"INT64"})


def op_rule(op: str, what: str = "") -> str | None:
    """Why the plugin leaves TFLite op `op` to LiteRT's CPU, or None if it legalizes it.
    `what` names the op in the reason (default: `op` itself)."""
    if op in LEGALIZED_OPS:
        return None
    return f"MediaTek NeuroPilot: {what or op} is not legalized by the compiler plugin ({PLUGIN_SOURCE}, kSupportedOps)"


def rank_rule(shape: tuple[int, ...], what: str) -> str | None:
    """Why a tensor of `shape` cannot go to NeuroPilot, or None."""
    if len(shape) <= MAX_RANK:
        return None
    return f"MediaTek NeuroPilot: rank {len(shape)} > {MAX_RANK} ({what} {shape}; NeuronAdapter ops take NNAPI ranks)"


def dtype_rule(dtype: torch.dtype, what: str) -> str | None:
    """Why a runtime value of torch `dtype` cannot go to NeuroPilot, or None."""
    if dtype in RUNTIME_DTYPES:
        return None
    name = str(dtype).removeprefix("torch.")
    only = " (int64 only as constant weights)" if dtype == torch.int64 else ""
    return f"MediaTek NeuroPilot: {what} dtype {name} at run time has no Neuron tensor type{only} ({TYPES_SOURCE})"


def tensor_type_rule(type_name: str, constant: bool, what: str) -> str | None:
    """Why a TFLite tensor of TensorType `type_name` cannot go to NeuroPilot, or None."""
    if type_name in TENSOR_TYPES or (constant and type_name in CONSTANT_ONLY_TYPES):
        return None
    kind = "constant" if constant else "runtime"
    return f"MediaTek NeuroPilot: {what} is a {kind} {type_name} tensor, with no Neuron tensor type ({TYPES_SOURCE})"
