"""Which ops a backend runs as torch does on NaN and infinity (docs/coverage.md).

OpInfo's samples are finite, so the sweep (sweep.py) says nothing of them, and kernels
differ there: LiteRT's EXP gives 0 for NaN, its reductions skip a NaN, its pools turn
one into -inf. Each op here runs as a one-op program on two rows holding NaN, +inf and
-inf among ordinary values, and its answer is compared with eager's elementwise: equal,
both NaN, or within the backend's tolerance (`Backend.tolerance`, relative to each
element: fp16 rounding is not what this looks for). Ops a backend does not take are
listed as such.

    python tests/opinfo/nan_sweep.py --backend cpu [--backend mediatek ...] [--op sign ...]

A tool, not a test: it documents behaviour (docs/coverage.md, "NaN and infinity"); a
kernel that changed it would show here.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch
import torch.nn.functional as F

import edgeport
from edgeport.api import resolve_backends

NAN, INF = float("nan"), float("inf")
X = torch.tensor([[NAN, -0.5, 0.0, 2.5, 1.0, -2.0, 0.25, 3.0], [3.0, INF, -INF, NAN, -1.0, 0.5, 1.5, -0.75]])
Y = torch.tensor([[1.0, NAN, 2.0, -1.0, INF, 0.5, -INF, 0.0], [0.5, 1.0, 2.0, 0.25, NAN, -2.0, 1.0, 3.0]])

UNARY: dict[str, Callable[[torch.Tensor], Any]] = {
    "abs": torch.abs, "neg": torch.neg, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt, "reciprocal": torch.reciprocal, "sin": torch.sin, "cos": torch.cos,
    "floor": torch.floor, "ceil": torch.ceil, "round": torch.round, "square": lambda a: a * a,
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": F.relu, "relu6": F.relu6, "hardtanh": F.hardtanh,
    "leaky_relu": F.leaky_relu, "elu": F.elu, "gelu": F.gelu, "gelu_tanh": lambda a: F.gelu(a, approximate="tanh"),
    "silu": F.silu, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "softplus": F.softplus,
    "mish": F.mish, "logsigmoid": F.logsigmoid, "clamp": lambda a: a.clamp(-1, 1),
    "softmax": lambda a: F.softmax(a, -1), "log_softmax": lambda a: F.log_softmax(a, -1),
    "layer_norm": lambda a: F.layer_norm(a, (8,)), "rms_norm": lambda a: F.rms_norm(a, (8,)),
    "sum": lambda a: a.sum(-1), "mean": lambda a: a.mean(-1), "cumsum": lambda a: a.cumsum(-1),
    "amax": lambda a: a.amax(-1), "amin": lambda a: a.amin(-1), "max.dim": lambda a: torch.max(a, -1),
    "argmax": lambda a: torch.argmax(a, -1), "topk": lambda a: torch.topk(a, 2), "sort": lambda a: torch.sort(a, -1),
    "max_pool1d": lambda a: F.max_pool1d(a[None], 2), "avg_pool1d": lambda a: F.avg_pool1d(a[None], 2),
    "gt": lambda a: a > 0, "eq": lambda a: a == 1.0, "isnan": torch.isnan, "where": lambda a: torch.where(a > 0, a, -a),
    "sign": torch.sign,
}
BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], Any]] = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
    "maximum": torch.maximum, "minimum": torch.minimum, "floor_divide": torch.floor_divide,
    "matmul": lambda a, b: a @ b.T,
}


class OneOp(torch.nn.Module):
    def __init__(self, op: Callable[..., Any]) -> None:
        super().__init__()
        self.op = op

    def forward(self, *args: torch.Tensor) -> Any:
        return self.op(*args)


def agrees(got: Any, expected: Any, tolerance: float) -> bool:
    """Each output equal to eager's, NaN where eager's is NaN, or within ``tolerance`` of it."""
    got, expected = torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(expected)
    for a, e in zip(got, expected):
        a = torch.as_tensor(a)
        if not e.is_floating_point():
            if not torch.equal(a, e):
                return False
            continue
        close = (a == e) | (a.isnan() & e.isnan()) | ((a - e).abs() <= tolerance * (1 + e.abs()))
        if not bool(close.all()):
            return False
    return True


def verdict(backend: str, name: str, op: Callable[..., Any], args: tuple[torch.Tensor, ...]) -> str:
    """"taken, as torch", "taken, differs: ...", or "not taken"."""
    finite = tuple(torch.randn(a.shape) for a in args)
    program = edgeport.export(OneOp(op).eval(), finite, [backend])
    if all(n["backend"] == "portable" for n in program.report()["nodes"]):
        return "not taken"
    got, expected = program(*args), op(*args)
    selected, options = resolve_backends([backend])
    if agrees(got, expected, selected[backend].tolerance(options[backend])):
        return "taken, as torch"
    return f"taken, differs: got {torch.utils._pytree.tree_leaves(got)[0].tolist()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", required=True)
    parser.add_argument("--op", action="append", choices=[*UNARY, *BINARY], help="sweep only these ops (default: all)")
    args = parser.parse_args()
    cases = [(n, op, (X,)) for n, op in UNARY.items()] + [(n, op, (X, Y)) for n, op in BINARY.items()]
    cases = [c for c in cases if args.op is None or c[0] in args.op]
    backends = args.backend
    print(f"X = {X.tolist()}\nY = {Y.tolist()}")
    for backend in backends:
        for name, op, args in cases:
            print(f"{backend:9s} {name:13s} {verdict(backend, name, op, args)}", flush=True)


if __name__ == "__main__":
    main()
