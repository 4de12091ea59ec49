"""What LiteRT's MediaTek compiler plugin hands to NeuroPilot: TFLite ops, tensor types, ranks.

Read from LiteRT's source (google-ai-edge/LiteRT, the 2.3.0 line that ai-edge-litert
2.3.0 ships as vendors/mediatek/compiler/libLiteRtCompilerPlugin_MediaTek.so):

- `litert/vendors/mediatek/compiler/compiler_plugin.cc`, `kSupportedOps`: the TFLite
  builtins the plugin legalizes. `IsOpSupported` selects an op only when its code is in
  that list and `VerifyCommonOp` accepts every one of its tensors.
- `litert/vendors/mediatek/compiler/legalizations/neuron_utils.cc`,
  `GetNeuronTensorType` (what `VerifyCommonOp` asks; read at tag v2.2.0, whose
  "Int8/Int16/UInt16/Int4 is not supported." messages the installed plugin carries; its
  int32 per-channel message it does not, so that rule may be stricter than the plugin,
  which costs nothing: our biases have zero points 0): float32, float16, int32 and
  bool map to Neuron tensor types; int64 only for constant weights (cast to int32).
  Integer tensors of quantized models map only with their quantization parameters:
  int8 per tensor (QUANT8_SYMM when the zero point is 0, else QUANT8_ASYMM_SIGNED) or
  per channel (QUANT8_SYMM_PER_CHANNEL when the zero points are 0); int16 per tensor
  only (QUANT16_SYMM, or QUANT16_ASYMM_SIGNED; "Int16 is not supported." otherwise);
  int4 per tensor or per channel, never blockwise (the plugin: "Doesn't support
  BlockWise quantize now"); int32 per channel (a bias) only with zero points 0. An int8
  tensor without parameters is refused ("Int8 is not supported.").
- Rank: NeuronAdapter's operations are NNAPI's (`NeuronAdapter.h` lists each with its
  NNAPI level), and NNAPI takes tensors of rank up to 4.

What the APU hardware then runs is MediaTek's to say. Its MDLA guidelines
(mediatek.gitlab.io/aiot/doc/aiot-dev-guide/master/sw/yocto/ml-guide/neuron-sdk/mt8195/
supported-operations/mdla-guide/mdla_guidelines_2_0.html, "General Restrictions") list
asymmetric and symmetric 8-bit, symmetric signed 16-bit, FP16 and FP32 as its data
types, and per-channel quantization for CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV,
FULLY_CONNECTED and PRELU (our writer gives per-channel weights to CONV_2D,
DEPTHWISE_CONV_2D and FULLY_CONNECTED only); its model design guide
(.../ml-guide/neuron-dev-flow/model_design_guide.html) runs SYM INT16 in hardware on
MDLA 1.5, 2.0 and 3.0. So:

- int8 (A8W8: asymmetric int8 activations per tensor, symmetric int8 weights per
  channel) is a NeuroPilot form, and the shared writer writes it: mediatek offers it.
- a16w8 is allowed by these rules when the int16 activations are symmetric, but our
  TFLite writer writes int8 activations only (TFLite's 16x8 forms, with int64 biases,
  are not written): mediatek declines it (`SCHEMES_DECLINED`).
- int8-dynamic and int4-weight are not NeuroPilot forms: no data type above is a float
  activation with integer weights, NeuronAdapter's FULLY_CONNECTED takes NNAPI's operand
  combinations (float with float, quantized with quantized), and blockwise int4 has no
  Neuron type. Activations quantized at run time by the kernel are declined.

Also in the list but never written by our TFLite writer: PRELU,
L2_NORMALIZATION, SQUARED_DIFFERENCE and the odml.rms_norm / odml.l2_norm composites.
The installed plugin's own kSupportedOps array (read from the .so: an int32 array of
TFLite builtin codes; tests/backends/mediatek checks LEGALIZED_OPS against it) holds
every op below, plus TILE and UNPACK, as LiteRT's main branch does. Those two stay
declined here: no `create_model.cc` read so far has a case that legalizes TILE (its
default is "Unsupported op", which would fail the compile), and our writer writes
UNPACK nowhere.

Not in the list, though NeuroPilot itself runs them: GATHER (an embedding lookup),
EQUAL, SELECT / SELECT_V2 and the LOGICAL_* ops of attention masks. NeuronAdapter
defines NEURON_GATHER, NEURON_EQUAL, NEURON_SELECT (NNAPI level 30), and MediaTek's own
TFLite delegate maps them (MediaTek-NeuroPilot/tflite-neuron-delegate,
`neuron/neuron_delegate_kernel.cc`; its `neuron_delegate_validation.cc` takes GATHER
with int32 positions, SELECT without broadcasting). LiteRT's plugin, the path this
backend compiles through, has no legalization for them in any release up to its main
branch: an op outside `kSupportedOps` reaches Neuron only as a NEURON_UNKNOWN
placeholder while it asks which ops are supported (`compiler/create_model.cc`), so
LiteRT runs it on the CPU. Those ops are declined with that reason (`NEURON_ONLY`).

Boolean logic (an attention mask's `&`, `|`) is therefore written as float arithmetic
by the shared writer: the bool operands CAST to float 0/1, a MUL (AND) or MAXIMUM (OR),
a CAST back (`tflite/ops/elementwise.py`); attention CASTs a bool mask to float
(`tflite/ops/attention.py`). The plugin legalizes CAST as NEURON_CAST through
`LegalizeCommonOp` (`create_model.cc`) and maps BOOL tensors (`GetNeuronTensorType`), so
those casts pass every rule above. A stricter rule exists that this module cannot check:
NNAPI's CAST (`CastValidation.cpp`, which NEURON_CAST's "NNAPI level 30" follows) takes
TENSOR_BOOL8 only in an identity cast, and MediaTek's own delegate refuses a CAST from or
to bool (`neuron_delegate_validation.cc`, kTfLiteBuiltinCast: float32, int32, uint8,
int8). Where the Neuron SDK offers NEURON_FEATURE_UNKNOWN_OP the plugin asks Neuron
which ops it takes (`compiler_plugin.cc`), so a bool CAST Neuron refuses would be left
to LiteRT's CPU (a split, not a wrong answer); without that feature the plugin selects
by `kSupportedOps` alone and Neuron's compile would refuse it. Only NeuroPilot's
compiler can tell, and it does not run here.
"""

from __future__ import annotations

from dataclasses import dataclass

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

UNKNOWN_OP_SOURCE = "litert/vendors/mediatek/compiler/create_model.cc"
DELEGATE_SOURCE = "MediaTek-NeuroPilot/tflite-neuron-delegate neuron/neuron_delegate_kernel.cc"

# TFLite ops NeuroPilot runs through MediaTek's own delegate but the plugin does not
# legalize -> the Neuron operation that would run them.
NEURON_ONLY = {
    "GATHER": "NEURON_GATHER", "EQUAL": "NEURON_EQUAL", "NOT_EQUAL": "NEURON_NOT_EQUAL",
    "SELECT": "NEURON_SELECT", "SELECT_V2": "NEURON_SELECT", "LOGICAL_AND": "NEURON_LOGICAL_AND",
    "LOGICAL_OR": "NEURON_LOGICAL_OR", "LOGICAL_NOT": "NEURON_LOGICAL_NOT", "REDUCE_ANY": "NEURON_REDUCE_ANY",
}  # fmt: skip

# Torch dtypes of runtime values that reach the plugin as a Neuron tensor type
# (int64 values become int32 inside our TFLite model, but an int64 value at run time
# would sit at a partition boundary, where the plugin refuses it).
RUNTIME_DTYPES = frozenset({torch.float32, torch.float16, torch.int32, torch.bool})
# ... and those that do only as quantized tensors, per tensor (a static quantize's output).
QUANTIZED_RUNTIME_DTYPES = frozenset({torch.int8, torch.int16})

# TFLite TensorType names GetNeuronTensorType maps without quantization parameters.
TENSOR_TYPES = frozenset({"FLOAT32", "FLOAT16", "INT32", "BOOL"})
CONSTANT_ONLY_TYPES = frozenset({"INT64"})

# The schemes mediatek does not offer, and why (the rules above).
SCHEMES_DECLINED = {
    "a16w8": "NeuroPilot runs symmetric int16 activations (QUANT16_SYMM, MDLA SYM INT16), but edgeport's TFLite "
             "writer writes int8 activations only",
    "int8-dynamic": f"NeuroPilot has no float-activation, integer-weight FULLY_CONNECTED ({TYPES_SOURCE}; MDLA data "
                    "types)",
    "int4-weight": f"NeuroPilot has no blockwise int4 weights and no float-activation, integer-weight "
                   f"FULLY_CONNECTED ({TYPES_SOURCE})",
}

PER_TENSOR = "per-tensor"
PER_CHANNEL = "per-channel"
BLOCKWISE = "blockwise"

# TensorType -> the quantization granularities GetNeuronTensorType maps it with.
QUANTIZED_TYPES = {
    "INT8": frozenset({PER_TENSOR, PER_CHANNEL}),
    "INT16": frozenset({PER_TENSOR}),
    "INT4": frozenset({PER_TENSOR, PER_CHANNEL}),
}


@dataclass(frozen=True)
class TensorQuantization:
    """How a TFLite tensor is quantized, as GetNeuronTensorType tells the cases apart:
    `granularity` PER_TENSOR, PER_CHANNEL or BLOCKWISE, and whether every zero point is 0."""

    granularity: str
    symmetric: bool


def op_rule(op: str, what: str = "") -> str | None:
    """Why the plugin leaves TFLite op `op` to LiteRT's CPU, or None if it legalizes it.
    `what` names the op in the reason (default: `op` itself)."""
    if op in LEGALIZED_OPS:
        return None
    reason = f"MediaTek NeuroPilot: {what or op} is not legalized by the compiler plugin ({PLUGIN_SOURCE}, kSupportedOps)"
    if op in NEURON_ONLY:
        reason += (f"; Neuron has {NEURON_ONLY[op]} ({DELEGATE_SOURCE}), but the plugin hands an op outside its list to "
                   f"Neuron only as a NEURON_UNKNOWN placeholder ({UNKNOWN_OP_SOURCE}), so LiteRT runs it on the CPU")
    return reason


def rank_rule(shape: tuple[int, ...], what: str) -> str | None:
    """Why a tensor of `shape` cannot go to NeuroPilot, or None."""
    if len(shape) <= MAX_RANK:
        return None
    return f"MediaTek NeuroPilot: rank {len(shape)} > {MAX_RANK} ({what} {shape}; NeuronAdapter ops take NNAPI ranks)"


def dtype_rule(dtype: torch.dtype, what: str, quantized: bool = False) -> str | None:
    """Why a runtime value of torch `dtype` cannot go to NeuroPilot, or None.
    `quantized`: the value is a per-tensor quantized integer tensor (a static quantize's output)."""
    if dtype in RUNTIME_DTYPES or (quantized and dtype in QUANTIZED_RUNTIME_DTYPES):
        return None
    name = str(dtype).removeprefix("torch.")
    if dtype in QUANTIZED_RUNTIME_DTYPES:
        only = " (only as a tensor quantized per tensor)"
    else:
        only = " (int64 only as constant weights)" if dtype == torch.int64 else ""
    return f"MediaTek NeuroPilot: {what} dtype {name} at run time has no Neuron tensor type{only} ({TYPES_SOURCE})"


def tensor_type_rule(type_name: str, constant: bool, what: str,
                     quantization: TensorQuantization | None = None) -> str | None:
    """Why a TFLite tensor of TensorType `type_name`, quantized as `quantization` (None:
    no parameters), cannot go to NeuroPilot, or None."""
    if type_name in QUANTIZED_TYPES:
        if quantization is not None and quantization.granularity in QUANTIZED_TYPES[type_name]:
            return None
        how = f"{quantization.granularity} quantization" if quantization else "no quantization parameters"
        kinds = " or ".join(sorted(QUANTIZED_TYPES[type_name]))
        return f"MediaTek NeuroPilot: {what} is {type_name} with {how}; GetNeuronTensorType maps it only {kinds} ({TYPES_SOURCE})"
    if type_name == "INT32" and quantization is not None and quantization.granularity == PER_CHANNEL:
        if quantization.symmetric:
            return None
        return f"MediaTek NeuroPilot: {what} is INT32 per channel with nonzero zero points ({TYPES_SOURCE})"
    if type_name in TENSOR_TYPES or (constant and type_name in CONSTANT_ONLY_TYPES):
        return None
    kind = "constant" if constant else "runtime"
    return f"MediaTek NeuroPilot: {what} is a {kind} {type_name} tensor, with no Neuron tensor type ({TYPES_SOURCE})"
