"""A lone data-movement op: portable torch step, or a one-op cpu delegate call?

    python bench/lone_ops.py [--runs 2000] [--blocks 10]

The cpu backend hands a partition made only of data movement (`permute`, `view`,
`squeeze`, ...: `edgeport.support.DATA_MOVEMENT`) back to portable, on the
reasoning that a delegate call for it is a boundary copy and an interpreter invoke for
no work. This measures that choice instead of assuming it. A data-movement op is alone
exactly when its neighbours run elsewhere, so each model is one such op between two ops
the cpu declines (`erfinv`: portable torch), exported twice — as shipped (one portable
step of all three) and with the rule off (portable, a one-op cpu delegate, portable) —
and both programs are called alternately in blocks, the median of the blocks' per-call
times kept. The figure that decides is the whole program's latency: what a user's call
costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from torch import nn

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.testing import registry_for


class Sandwich(nn.Module):
    """erfinv -> the data-movement op -> erfinv: the op alone between portable ops."""

    def __init__(self, move) -> None:  # noqa: ANN001 - a callable on tensors
        super().__init__()
        self.move = move

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erfinv(self.move(torch.erfinv(x)))


CASES = {
    "permute NCHW->NHWC [1,64,56,56]": (lambda x: x.permute(0, 2, 3, 1), (1, 64, 56, 56)),
    "permute [1,8,128,64] (attention heads)": (lambda x: x.permute(0, 2, 1, 3), (1, 8, 128, 64)),
    "view [1,64,56,56] -> [1,64,3136]": (lambda x: x.reshape(1, 64, -1), (1, 64, 56, 56)),
    "squeeze [1,1,1024]": (lambda x: x.squeeze(1), (1, 1, 1024)),
}


class EveryPartitionCpu(CpuBackend):
    """The real cpu backend with the never-alone rule off: a lone op gets its own delegate."""

    rules = dataclasses.replace(CpuBackend.rules, never_alone=frozenset())


def per_call_us(program: edgeport.Program, x: torch.Tensor, runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        program(x)
    return (time.perf_counter() - start) / runs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="calls per block")
    parser.add_argument("--blocks", type=int, default=10)
    args = parser.parse_args()
    print("| case | lone op portable (shipped): steps, µs/call | lone op delegated: steps, µs/call | delegated / portable |")
    print("|---|---|---|---|")
    for name, (move, shape) in CASES.items():
        model, x = Sandwich(move).eval(), torch.rand(*shape) * 0.5  # erfinv's domain
        programs = {}
        for label, backend in (("portable", CpuBackend()), ("delegated", EveryPartitionCpu())):
            program = edgeport.export(model, (x,), ["cpu"], registry=registry_for(backend))
            torch.testing.assert_close(program(x), model(x))
            steps = [s.kind for s in program.manifest.methods["forward"].steps]
            programs[label] = (program, steps)
        times: dict[str, list[float]] = {label: [] for label in programs}
        for _ in range(args.blocks):
            for label, (program, _) in programs.items():
                per_call_us(program, x, args.runs // 10)  # warm-up: caches and thread pool
                times[label].append(per_call_us(program, x, args.runs))
        portable, delegated = (statistics.median(times[k]) for k in ("portable", "delegated"))
        print(f"| {name} | {'+'.join(programs['portable'][1])}, {portable:.1f} "
              f"| {'+'.join(programs['delegated'][1])}, {delegated:.1f} | {delegated / portable:.2f} |")


if __name__ == "__main__":
    main()
