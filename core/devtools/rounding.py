"""Running a partition's torch reference, and how far a quantized one moves on its own:
the allowance ``edgeport check`` gives a backend's rounding.

A quantized graph rounds to integers at every quantize node. A backend computes the
float work between them (layer norm, softmax, GELU, a requantization's scale multiply)
with its own kernels, a few ulps from torch's, so now and then a value lands on the
other side of a rounding boundary, one step off. That step flows on and is rounded
again, and in depth such flips multiply. SNR (dB) against the reference of the cpu
backend (XNNPACK) and of the reference itself with the input of every quantize node
multiplied by 1 + u * nudge (u uniform in [-1, 1]); transformers' BertModel at BERT-base
width, 128 random token ids, random weights, 2026-11-28:

| layers | int8: backend | nudge 1e-6 | nudge 1e-5 | int8-dynamic: backend | nudge 1e-5 |
|---|---|---|---|---|---|
| 1 | 52.3 | 41.1 | 39.5 | 73.5 | 54.7 |
| 2 | 38.4 | 38.4 | 34.2 | 54.7 | 48.0 |
| 4 | 30.7 | 29.6 | 29.2 | 44.9 | 42.8 |
| 12 | 24.4 | 24.1 | 24.0 | 37.0 | 36.6 |

At 12 layers a correct backend is as far from the reference as the reference is from
float (23.8 dB): past that depth the reference does not pin the output down more closely,
and a relative tolerance of 1e-4 fails every correct backend. So a quantized partition
is also held to its reference's own spread: the reference run with every quantize's
input nudged by up to the backend's `Backend.op_error` (fp32 kernels: 1e-5, about a
hundred ulps, at or past every backend measured above; fp16 arithmetic: 2**-11), and the
partition passes when its SNR against the reference is at most `MARGIN_DB` below that
run's and its largest error at most `PEAK_FACTOR` times that run's largest. The SNR is an
average, and a wrong region (one token's rows) can hide in it in depth; the peak
catches that. Correct backends measured: peaks 0.5 to 1.7 times the spread's (cpu on the
BERTs above up to 1.12; qualcomm int8 on tests/zoo, where they passed on SNR, up to 1.67).

The spread is the worst of `SAMPLES` nudged runs, each with its own seed. A small
model rounds few values near a tie, so one run may flip none where the backend flips
one, and its spread came out exact: of 12 random inputs, check failed tests/zoo's int8
BERT on mediatek's CPU reference once with one run (at its embeddings' LayerNorm, its
attention in float) and on none with four (its attention in int8; 2026-11-29). On the
BERTs above the worst of four is the one run's spread within 0.3 dB (1 layer: 39.2 dB
against 39.5; 12 layers: 24.0 against 24.0), so the limits below stand. For the same reason an output within one step of its
quantization (`ONE_STEP`; the conformance kit's rule) passes whatever the spread: HTP
was one step off on a 2-layer int8 MLP whose four nudged runs flipped nothing.

A product of two quantized values is moved too, by up to `Backend.accumulator_error`
units of its integer accumulator (`accumulator_unit`), either way. An integer kernel
requantizing in fixed point (TFLite's own int8 BATCH_MATMUL, on mediatek's CPU
reference) rounds the product once to 31 bits before rounding it to the output's step,
and a relative nudge cannot model that double rounding: tests/zoo's BERT with its
attention in int8 failed check on 5 of 12 random inputs without it, and on none with it.

On qualcomm's HTP simulator, with fp16's nudge, 12 of the 13 tiny transformer families of
tests/zoo quantized int8 pass (with 1e-5, none did; with one nudged run, 11); CLIP's text
model is 3.1 dB below its spread (2026-11-29). In a16w8, 11 pass; Llama and T5's encoder
are 10.3 and 9.8 dB below (2026-11-29; 13 dB on 2026-11-28). That is
HTP's arithmetic to explain: the check says fail and searches. It names the first op past
the allowance, which may come after the op that started the drift: in int8 Llama, before
its RMS norms ran in fp16 (backends/qualcomm/fp16_rms_norms.py), the first q_proj linear
(3 steps off), while the RMSNorm before it, one QNN op on HTP, was already a step low on
41 % of its elements (it floors), which the allowance takes.

The limit is the one the table shows: in depth, an error below the spread is not told
from rounding. A quantize whose scale is 5 % off, planted in the same BERT, is found at
1 layer (33.4 dB against a spread of 39.5) and in the last layer of 12, but not in the
6th of 12 (25.1 against 24.0); 30 % off there is (20.3). Where a check fails, the
divergence search judges each prefix by the same rule, so it names the op whose error
first exceeds the rounding's.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
from torch.export import ExportedProgram
from torch.fx import Interpreter, Node

from ..support import DATA_MOVEMENT, DEQUANTIZE, QUANTIZE, QUANTIZE_AFFINE, qualified_name

MARGIN_DB = 3.0
PEAK_FACTOR = 2.0
SAMPLES = 4  # nudged runs of the reference: the spread is the worst of them
ONE_STEP = 1.0 + 1e-3  # a dequantized output within a step of the reference's (+ float rounding of the step)
_ROUNDINGS = (QUANTIZE, QUANTIZE_AFFINE)  # an activation's quantize: static, or per token at run time
_PRODUCTS = frozenset({"aten.bmm.default", "aten.matmul.default", "aten.mm.default"})  # as DATA_MOVEMENT names ops


class Nudge(NamedTuple):
    """How far a backend's arithmetic may move a value it rounds: ``relative``ly
    (`Backend.op_error`), and for a product of two quantized values by ``accumulator``
    units of its integer accumulator (`Backend.accumulator_error`)."""

    relative: float = 0.0
    accumulator: float = 0.0


def nudge_of(backend: Any, options: Any) -> Nudge:
    """The nudge a backend's options declare (a plugin may raise: callers report it)."""
    return Nudge(float(backend.op_error(options)), float(backend.accumulator_error(options)))


def rounds(reference: ExportedProgram) -> bool:
    """Whether ``reference`` quantizes an activation (its weights are stored quantized)."""
    return any(qualified_name(node) in _ROUNDINGS for node in reference.graph.nodes)


class _Nudging(Interpreter):
    """Runs a graph keeping every value, the input of each quantize node multiplied by
    1 + u * relative, and a product's moved by u * accumulator units (u uniform in
    [-1, 1], seeded: the same nudges for the same seed)."""

    def __init__(self, module: torch.fx.GraphModule, nudge: Nudge, seed: int) -> None:
        super().__init__(module, garbage_collect_values=False)
        self.nudge = nudge
        self.generator = torch.Generator().manual_seed(seed)

    def run_node(self, node: Node) -> Any:
        if not any(self.nudge) or qualified_name(node) not in _ROUNDINGS:
            return super().run_node(node)
        (x, *rest), kwargs = self.fetch_args_kwargs_from_env(node)
        x = x * (1 + self.nudge.relative * self._uniform(x))
        unit = accumulator_unit(node) if self.nudge.accumulator else None
        if unit is not None:
            x = x + self.nudge.accumulator * unit * self._uniform(x).sign()
        return node.target(x, *rest, **kwargs)

    def _uniform(self, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(like.shape, generator=self.generator, dtype=like.dtype) * 2 - 1


def accumulator_unit(rounding: Node) -> float | None:
    """The value of one unit of the integer accumulator of the product `rounding`
    quantizes, if that is a product of two values dequantized per tensor: the product
    of their steps. None for anything else.

    An integer kernel requantizes its accumulator ``acc`` (int32) by ``m`` = s_a s_b /
    s_out. gemmlowp's fixed-point form, which TFLite's own int8 kernels use (not
    XNNPACK's, which multiplies in fp32), rounds twice: ``acc * M`` to 31 bits (M, m's
    mantissa, in [2**30, 2**31)), then by a shift to the output's step, so it may be off
    by up to half a unit of the first rounding: 0.5 * 2**e output steps where m = f * 2**e,
    f in [0.5, 1), which is at most m steps, one accumulator unit. On 40 random
    (2,17,16) @ (2,16,17) int8 products (m = 0.0053, e = -7), that two-step formula gives
    LiteRT 2.3's BATCH_MATMUL exactly, where 0.36 % of its outputs leave the exact
    value's rounding, at up to 0.0038 steps from a tie (2026-11-29)."""
    product = rounding.args[0]
    if not isinstance(product, Node) or str(product.target) not in _PRODUCTS:
        return None
    steps = [dequantized_step(arg) for arg in product.args[:2]]
    if None in steps:
        return None
    return steps[0] * steps[1]


def dequantized_step(node: Any) -> float | None:
    """The step of the per-tensor dequantize `node` is (through views), if it is one
    with a constant step: a quantized value's, as the next op reads it."""
    while isinstance(node, Node) and str(node.target) in DATA_MOVEMENT:
        node = node.args[0]
    if not isinstance(node, Node) or qualified_name(node) != DEQUANTIZE:
        return None
    step = node.args[1]
    return float(step) if isinstance(step, (int, float)) else None


def values_of(reference: ExportedProgram, args: Sequence[Any], nudge: Nudge = Nudge(), seed: int = 0) -> dict[str, Any]:
    """Every value of the reference program on ``args``, by node name; with ``nudge``,
    each quantize's input nudged as the module docstring says (sample ``seed``)."""
    held = {**reference.state_dict, **reference.constants}
    constants = [held[spec.target] for spec in reference.graph_signature.input_specs if spec.target is not None]
    interpreter = _Nudging(reference.graph_module, nudge, seed)
    with torch.no_grad():
        interpreter.run(*constants, *args)
    return {node.name: value for node, value in interpreter.env.items()}


def output_nodes(reference: ExportedProgram) -> list[Node]:
    return [node for node in reference.graph.output_node().args[0] if isinstance(node, Node)]


def nudged_outputs(reference: ExportedProgram, args: Sequence[Any], nudge: Nudge, seed: int = 0) -> list[Any]:
    """The program's outputs on ``args`` with each quantize's input nudged by up to ``nudge``."""
    values = values_of(reference, args, nudge, seed)
    return [values[node.name] for node in output_nodes(reference)]
