"""An int8 partition's RMS norms run in fp16 on HTP: its uint8 RmsNorm floors.

In an int8 (QDQ) partition an RMS norm (native_norm.py) reads a uint8 value and writes
one. HTP's quantized kernel for that (onnxruntime-qnn 2.7.0, QNN's HTP simulator) does
not round its output as the fake-quantized reference does: it *floors*, so close to
half of its outputs are one step low. In a decoder every block's norms feed its
attention and its MLP, and the bias adds up: a tiny Llama's first linear ended 3 steps
off, and `edgeport check` failed qualcomm int8 on Llama, Qwen2 and T5's encoder.

So the norm's input is requantized to 16 bits: exactly (uint8 ``q`` at step ``s`` and
zero point ``z`` is uint16 ``256 q`` at ``s / 256`` and ``256 z``), so the reference
does not change. ONNX Runtime fuses a norm into one quantized QNN op only when its input
and output are quantized alike; this one it hands to QNN dequantized, and HTP computes
it in fp16 between the dequantize and the output's quantize, which rounds as the
reference does (QNN's RmsNorm accumulates safely in fp16, native_norm.py). The report
shows such a norm as float between quantized ops. 16-bit (a16w8) norms stay quantized:
that kernel is unbiased (a mean of -0.4 of its steps) and as close to float64 as the
norm computed in fp16 (a standard deviation of 17 to 20 of its steps, either way).

Measured 2026-11-29, one norm over [1, 32, W], x ~ N(0, 1) at the 8-bit step 8/255,
gamma ~ 1 + 0.3 N(0, 1) in uint8, the output's step 5/128; error in output steps
against torch's norm of the quantized input, quantized:

| input | W | computed | exact | one step low / high | mean |
|---|---|---|---|---|---|
| uint8 | 64 | uint8 | 54.3% | 45.4% / 0.1% | -0.46 |
| uint8 | 576 | uint8 | 55.2% | 43.1% / 1.5% | -0.42 |
| uint8 | 4096 | uint8 | 53.0% | 34.1% / 12.8% | -0.21 |
| uint16 | 64, 576, 896, 2048, 4096 | fp16 | 98.6-98.8% | 0.5-0.7% each | 0.00 |

(From W = 64 to 1,000 the uint8 kernel's output is ``floor(y / s) + z`` on 92-95% of
the elements.) Two other forms were tried and are worse: a uint8 input with a uint16
output, converted to uint8 (fp16 too), fails to finalize from W = 256 on
(QNN_COMMON_ERROR_MEM_ALLOC); 16 bits in and out (quantized), then converted, puts 23%
of the elements a step high from W = 256 on.

LayerNorm is left alone: its uint8 kernel is unbiased (a step off on 20% of the elements,
as many high as low), and widened it is refused (its int32 bias cannot be dequantized on
its own). Tried with the bias stored as float, on the 10 LayerNorm families of tests/zoo
at int8, computing it in fp16 moved HTP's SQNR against float by -1.4 (Whisper's encoder)
to +3.5 dB (BERT), +0.85 on average: not the consistent gain of the RMS norms (+1.2 to
+2.7 dB, Llama, Qwen2, T5's encoder), for fp16 work whose cost the simulator cannot time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .native_norm import NATIVE_NORM

_WIDER = {np.dtype(np.uint8): np.uint16, np.dtype(np.int8): np.int16}
_WIDENING = 256  # 2 ** (16 - 8)


def rms_norms_in_fp16(model: Any) -> int:
    """Give each native RMS norm whose input is dequantized per tensor from 8 bits that
    value requantized to 16 bits, in place (an onnx.ModelProto); return how many."""
    from onnx import helper, numpy_helper

    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    widened = 0
    for norm in [node for node in graph.node if node.op_type == NATIVE_NORM]:
        params = _eight_bit_per_tensor(producer.get(norm.input[0]), constants)
        if params is None:
            continue
        step, zero = params
        wide = f"{norm.output[0]}_wide_input"
        graph.initializer.extend([
            numpy_helper.from_array(np.array(step / _WIDENING, np.float32), f"{wide}_step"),
            numpy_helper.from_array(np.array(int(zero) * _WIDENING, _WIDER[zero.dtype]), f"{wide}_zero"),
        ])
        nodes = [
            helper.make_node("QuantizeLinear", [norm.input[0], f"{wide}_step", f"{wide}_zero"], [f"{wide}_q"],
                             name=f"{wide}_quantize"),
            helper.make_node("DequantizeLinear", [f"{wide}_q", f"{wide}_step", f"{wide}_zero"], [wide],
                             name=f"{wide}_dequantize"),
        ]
        position = next(i for i, node in enumerate(graph.node) if node is norm)
        for offset, node in enumerate(nodes):
            node.metadata_props.extend(norm.metadata_props)  # the aten norm they serve
            graph.node.insert(position + offset, node)
        norm.input[0] = wide
        widened += 1
    return widened


def _eight_bit_per_tensor(dequantize: Any, constants: dict[str, np.ndarray]) -> tuple[float, np.ndarray] | None:
    """(step, zero point) of a per-tensor dequantize from uint8 or int8; else None."""
    if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(dequantize.input) < 3:
        return None
    step, zero = constants.get(dequantize.input[1]), constants.get(dequantize.input[2])
    if step is None or zero is None or step.size != 1 or zero.size != 1 or zero.dtype not in _WIDER:
        return None
    return float(step.reshape(())), zero.reshape(())
