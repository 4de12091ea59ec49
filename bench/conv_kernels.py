"""Convolution by convolution: the cpu backend (direct and Winograd) against ExecuTorch.

    python bench/conv_kernels.py [--threads 2] [--rounds 20]

Each model is a chain of eight identical convolutions + ReLU, so the time is the
kernels' and not the boundary copies'; the last row is the whole ResNet-18 example.
Three builds per model, alternating in short blocks: edgeport with `winograd=false` (XNNPACK's direct convolution, as LiteRT builds
it), edgeport with Winograd F(2x2, 3x3) (the default where `winograd.fits`), and
ExecuTorch's XNNPACK delegate. This is where the thresholds in
backends/tflite/ops/winograd.py come from. Same environment as cpu_vs_executorch.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from torch import nn

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.testing import registry_for
from cpu_vs_executorch import executorch_export, executorch_method, load_models, timed

# (in/out channels, kernel, spatial size): ResNet-18's four stages, a 1x1 (GEMM) for
# comparison, and shapes below the Winograd thresholds.
SHAPES = [(64, 3, 56), (128, 3, 28), (256, 3, 14), (512, 3, 7), (256, 1, 14), (32, 3, 56), (64, 3, 14)]


class Chain(nn.Module):
    def __init__(self, channels: int, kernel: int, depth: int = 8):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, kernel, padding=kernel // 2) for _ in range(depth))

    def forward(self, x):
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(args.threads)
    registry = registry_for(CpuBackend())
    print("| conv | edgeport direct ms | edgeport Winograd ms | ExecuTorch ms | direct / ET | Winograd / ET |")
    print("|---|---|---|---|---|---|")
    models = [(f"{c}ch {k}x{k} @{n}x{n}", lambda c=c, k=k, n=n: (Chain(c, k).eval(), (torch.randn(1, c, n, n),)))
              for c, k, n in SHAPES] + [("resnet18 (whole)", load_models()["resnet18"])]
    with tempfile.TemporaryDirectory() as tmp:
        for label, factory in models:
            torch.manual_seed(0)
            model, inputs = factory()
            runs = {}
            for name, winograd in (("direct", False), ("winograd", True)):
                options = {"cpu": {"threads": args.threads, "winograd": winograd}}
                program = edgeport.export(model, inputs, ["cpu"], options=options, registry=registry)
                runs[name] = lambda program=program: program(*inputs)
            pte = os.path.join(tmp, "model.pte")
            executorch_export(model, inputs, pte)
            method = executorch_method(pte)
            runs["et"] = lambda: method.execute(list(inputs))
            times = {name: [] for name in runs}
            for _ in range(args.rounds):
                for name, fn in runs.items():
                    time.sleep(0.02)
                    fn()
                    times[name] += [timed(fn) * 1e3 for _ in range(5)]
            d, w, e = (statistics.median(times[k]) for k in ("direct", "winograd", "et"))
            print(f"| {label} | {d:.2f} | {w:.2f} | {e:.2f} | {d / e:.2f} | {w / e:.2f} |", flush=True)


if __name__ == "__main__":
    main()
