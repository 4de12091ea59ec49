"""Latency of SmolLM2's MLP linears on cpu: fp32 vs int8-dynamic vs int4-weight.

    python bench/quantized_linear.py [--tokens 1 128] [--threads 1] [--repeat 300]

Exports Linear(576, 1536) and Linear(1536, 576) (SmolLM2-135M's MLP up/down shapes)
with edgeport for each scheme, checks XNNPACK delegated every operator, and times the
LiteRT interpreter's invoke alone (no edgeport runtime around it), the schemes
alternated round by round so machine load hits them alike. Prints median, p10 and
min per call, and each against fp32.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

import edgeport
from edgeport.backends.tflite import TfliteExecutable, undelegated_ops

SCHEMES = ("fp32", "int8-dynamic", "int4-weight")
SHAPES = ((576, 1536), (1536, 576))


def artifact(model: nn.Module, x: torch.Tensor, scheme: str) -> bytes:
    program = edgeport.export(model, (x,), ["cpu"], quantize=None if scheme == "fp32" else scheme, strict=True)
    (data,) = [v for k, v in program.files.items() if k.endswith(".tflite")]
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 128])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"threads={args.threads}, {args.repeat} calls per scheme, interpreter invoke only")
    for tokens in args.tokens:
        for n_in, n_out in SHAPES:
            model = nn.Linear(n_in, n_out).eval()
            x = torch.randn(tokens, n_in)
            runs = {}
            for scheme in SCHEMES:
                data = artifact(model, x, scheme)
                exe = TfliteExecutable(data, args.threads)
                left = undelegated_ops(exe.interpreter)
                assert not left, f"{scheme}: XNNPACK left {left}"
                runs[scheme] = (exe, len(data))
            times = {s: [] for s in SCHEMES}
            feed = [x.numpy()]
            for _ in range(args.repeat):
                for scheme, (exe, _) in runs.items():
                    start = time.perf_counter()
                    exe.run(feed)
                    times[scheme].append(time.perf_counter() - start)
            base = np.median(times["fp32"])
            print(f"\nLinear({n_in}, {n_out}), {tokens} token(s):")
            for scheme, (exe, size) in runs.items():
                t = np.array(times[scheme]) * 1e6
                print(f"  {scheme:13s} median {np.median(t):8.1f} us  p10 {np.percentile(t, 10):8.1f}  "
                      f"min {t.min():8.1f}  ({np.median(t) / (base * 1e6):.2f}x fp32)  {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
