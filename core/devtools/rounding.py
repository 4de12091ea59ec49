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

On qualcomm's HTP simulator, with fp16's nudge, 11 of the 13 tiny transformer families of
tests/zoo quantized int8 pass (with 1e-5, none did); BERT and CLIP's text model are 3.6 dB
below their spread. In a16w8, 11 pass; Llama and T5's encoder are 13 dB below. That is
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

from typing import Any, Sequence

import torch
from torch.export import ExportedProgram
from torch.fx import Interpreter, Node

from ..support import QUANTIZE, QUANTIZE_AFFINE, qualified_name

MARGIN_DB = 3.0
PEAK_FACTOR = 2.0
_ROUNDINGS = (QUANTIZE, QUANTIZE_AFFINE)  # an activation's quantize: static, or per token at run time


def rounds(reference: ExportedProgram) -> bool:
    """Whether ``reference`` quantizes an activation (its weights are stored quantized)."""
    return any(qualified_name(node) in _ROUNDINGS for node in reference.graph.nodes)


class _Nudging(Interpreter):
    """Runs a graph keeping every value, the input of each quantize node multiplied by
    1 + u * nudge (u uniform in [-1, 1], seeded: the same spread on every call)."""

    def __init__(self, module: torch.fx.GraphModule, nudge: float) -> None:
        super().__init__(module, garbage_collect_values=False)
        self.nudge = nudge
        self.generator = torch.Generator().manual_seed(0)

    def run_node(self, node: Node) -> Any:
        if not self.nudge or qualified_name(node) not in _ROUNDINGS:
            return super().run_node(node)
        (x, *rest), kwargs = self.fetch_args_kwargs_from_env(node)
        noise = torch.rand(x.shape, generator=self.generator, dtype=x.dtype) * 2 - 1
        return node.target(x * (1 + self.nudge * noise), *rest, **kwargs)


def values_of(reference: ExportedProgram, args: Sequence[Any], nudge: float = 0.0) -> dict[str, Any]:
    """Every value of the reference program on ``args``, by node name; with ``nudge``,
    each quantize's input nudged as the module docstring says."""
    held = {**reference.state_dict, **reference.constants}
    constants = [held[spec.target] for spec in reference.graph_signature.input_specs if spec.target is not None]
    interpreter = _Nudging(reference.graph_module, nudge)
    with torch.no_grad():
        interpreter.run(*constants, *args)
    return {node.name: value for node, value in interpreter.env.items()}


def output_nodes(reference: ExportedProgram) -> list[Node]:
    return [node for node in reference.graph.output_node().args[0] if isinstance(node, Node)]


def nudged_outputs(reference: ExportedProgram, args: Sequence[Any], nudge: float) -> list[Any]:
    """The program's outputs on ``args`` with each quantize's input nudged by up to ``nudge``."""
    values = values_of(reference, args, nudge)
    return [values[node.name] for node in output_nodes(reference)]
