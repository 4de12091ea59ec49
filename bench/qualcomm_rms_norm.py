"""qualcomm: what max-scaling an RMS norm costs (backends/qualcomm/norm_rewrite.py).

    python bench/qualcomm_rms_norm.py [--rows 128] [--width 576] [--blocks 5] [--runs 20]

One Hugging Face RMS norm (SmolLM2's width by default) is exported to ONNX twice: as
torch.onnx writes it (the chain before the rewrite) and as export_onnx writes it now
(max-scaled, its square ``x * x``). Prints each graph's ONNX ops, then compiles both for
QNN HTP and runs them alternately in blocks, one process, reporting min / p10 / median
of the process CPU time per run. The simulator is QNN's HTP code on this x86 CPU: its
times say nothing about a phone (use ``edgeport hub profile``); the op counts are exact.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import numpy as np
import torch

from edgeport.backends.qualcomm import QualcommOptions, onnx_export
from edgeport.backends.qualcomm.options import provider_options
from edgeport.backends.qualcomm.qnn_runtime import compile_context, load_context


class RmsNorm(torch.nn.Module):
    """LlamaRMSNorm's arithmetic."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def onnx_model(x: torch.Tensor, rewritten: bool):
    """The norm's ONNX partition, with or without the fp16 rewrites."""
    program = torch.export.export(RmsNorm(x.shape[-1]).eval(), (x,)).run_decompositions()
    saved = onnx_export.max_scale_rms_norms, onnx_export.rewrite_integer_powers
    if not rewritten:
        onnx_export.max_scale_rms_norms = onnx_export.rewrite_integer_powers = lambda model: 0
    try:
        return onnx_export.export_onnx(program)
    finally:
        onnx_export.max_scale_rms_norms, onnx_export.rewrite_integer_powers = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20, help="runs per block")
    args = parser.parse_args()
    x = torch.randn(1, args.rows, args.width) * 300
    feeds, sessions, times = {}, {}, collections.defaultdict(list)
    for label, rewritten in (("before", False), ("max-scaled", True)):
        partition = onnx_model(x, rewritten)
        ops = collections.Counter(node.op_type for node in partition.model.graph.node)
        print(f"{label}: {sum(ops.values())} ONNX ops {dict(ops)}")
        outcome = compile_context(partition.model.SerializeToString(), provider_options(QualcommOptions()))
        sessions[label] = load_context(outcome.context_model)
        feeds[label] = {partition.inputs[0]: x.numpy()}
    for _ in range(args.blocks):
        for label, session in sessions.items():
            for _ in range(args.runs):
                start = time.process_time()
                session.run(None, feeds[label])
                times[label].append(time.process_time() - start)
    for label, values in times.items():
        values = sorted(values)
        print(f"{label}: CPU ms per run min {1e3 * values[0]:.2f} p10 {1e3 * np.percentile(values, 10):.2f} "
              f"median {1e3 * statistics.median(values):.2f} ({len(values)} runs)")


if __name__ == "__main__":
    main()
