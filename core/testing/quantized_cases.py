"""Quantized conformance: ops and blocks exported quantized, compared with their reference.

A quantized backend is correct when it computes what the fake-quantized reference
computes (the converted PT2E graph, run in torch); how far both are from float is the
scheme's error, not the backend's. For static int8 the error is counted in steps of
the output's quantization scale: an int8 kernel rounds each requantization itself, so
one op may land one step away from the reference. Dynamic schemes compare relatively.

A static case more steps off than it allows still passes where `edgeport check` passes
it (`within_rounding_spread`): within the spread its reference shows with each
quantize's input nudged by the backend's declared `Backend.op_error`
(devtools/rounding.py). The float arithmetic before a rounding is the backend's: HTP
quantizes a float input in fp16, lands one input step from torch near a step's
midpoint, and an output finer than the input sees 2-3 of its own steps; seven of
qualcomm's int8 cases failed the kit that way while `edgeport check` passed them.

    from edgeport.testing import run_quantized_conformance
    for r in run_quantized_conformance(MyNpu()):
        assert r.passed, (r.name, r.error, r.max_steps)

Names are stable: backends' tests and denylists refer to them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..api import export
from ..backend import Backend
from ..portable import stored_program
from ..program import Program
from ..quantize.flow import SchemeNotOffered
from .roundtrip import RoundTripFailed, loaded_runtime, numpy_outputs, saved_and_loaded
from .without_torch import TorchFreeRuns
from .time_limit import step as kit_step
from .cases import Fn, _bn, _InvertedResidual, _seeded, _x

EVERY_OP = "every op"  # the key of `QuantizedCaseResult.reasons` when the backend declines the scheme itself

__all__ = [
    "QUANTIZED_CASES",
    "QuantizedCase",
    "QuantizedCaseResult",
    "calibration_for",
    "reference_program",
    "run_quantized_case",
    "run_quantized_conformance",
]


@dataclass(frozen=True)
class QuantizedCase:
    name: str
    build: Callable[[], tuple[nn.Module, tuple[Any, ...]]]
    scheme: str = "int8"
    steps: float = 1.0  # static: allowed |backend - reference| in output quantization steps
    rtol: float = 1e-4  # dynamic: allowed max error relative to the reference's largest value
    tags: frozenset[str] = frozenset()


@dataclass
class QuantizedCaseResult:
    """How one quantized case went: share delegated, reasons, error against the reference
    (`max_steps` in output quantization steps for static schemes; None when the
    backend cannot run here), and the artifacts' operator counts."""

    name: str
    scheme: str
    delegated: float
    reasons: dict[str, str] = field(default_factory=dict)
    max_error: float | None = None
    max_steps: float | None = None
    relative_error: float | None = None  # dynamic schemes: max_error / the reference's largest value
    ops: dict[str, int] = field(default_factory=dict)
    passed: bool = True
    error: str = ""
    program: Program | None = field(default=None, repr=False)  # the exported program, to inspect further
    within_spread: bool = False  # static: more steps off than the case allows, within check's rounding spread


def calibration_for(inputs: tuple[Any, ...], batches: int = 8, seed: int = 1) -> list[tuple[Any, ...]]:
    """Seeded random batches shaped like `inputs` (for conformance, where any data will do)."""
    generator = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn(x.shape, generator=generator) if x.is_floating_point() else x for x in inputs)
            for _ in range(batches)]


def reference_program(program: Program) -> Program:
    """`program` with every delegated step run as its fake-quantized torch reference
    (export with keep_reference=True keeps them)."""
    methods = {}
    for name, plan in program.manifest.methods.items():
        steps = []
        for step in plan.steps:
            if step.kind == "delegate":
                if not step.reference:
                    raise ValueError(f"step {step.partition} of {name} kept no reference: export with keep_reference=True")
                step = dataclasses.replace(step, kind="portable", backend=None, artifact=None, program=step.reference)
            steps.append(step)
        methods[name] = dataclasses.replace(plan, steps=tuple(steps))
    return Program(dataclasses.replace(program.manifest, methods=methods), program.files)


def output_scales(program: Program) -> dict[str, float]:
    """Each method output that leaves a step through a per-tensor dequantize: its scale."""
    scales = {}
    for plan in program.manifest.methods.values():
        for step in plan.steps:
            prefix = step.reference or step.program
            if not prefix:
                continue
            graph = stored_program(program.files, prefix).graph
            for arg in graph.output_node().args[0]:
                target = getattr(arg, "target", None)
                if getattr(target, "_schema", None) is not None and target._schema.name.endswith("dequantize_per_tensor"):
                    scales[arg.name] = float(arg.args[1])
    return scales


def run_quantized_case(backend: Backend, case: QuantizedCase, options: Mapping[str, object] | None = None,
                       without_torch: TorchFreeRuns | None = None) -> QuantizedCaseResult:
    """`case` exported for `backend` alone with its scheme (and the backend's `options`,
    option values by name), then run against its reference where the backend runs: on
    tensors, and a program of the backend's steps only also on numpy arrays and, with
    ``without_torch``, where torch cannot be imported."""
    from . import declines_unsaid, registry_for, taken_and_declined

    module, inputs = case.build()
    result = QuantizedCaseResult(case.name, case.scheme, 0.0)
    registry = registry_for(backend)
    try:
        with declines_unsaid(), kit_step("export"):
            program = export(module, inputs, [backend.name], options={backend.name: dict(options or {})},
                             quantize=case.scheme, calibration=calibration_for(inputs), keep_reference=True,
                             registry=registry)
    except SchemeNotOffered as exc:  # a decline, not a failure: no program to run
        result.reasons = {EVERY_OP: exc.declined[backend.name]}
        return result
    except Exception as exc:
        result.passed, result.error = False, f"export failed: {type(exc).__name__}: {exc}"
        return result
    result.program = program
    result.delegated, result.reasons = taken_and_declined(program, backend)
    for info in program.manifest.artifacts.values():
        for op, count in info.metadata.get("ops", {}).items():
            result.ops[op] = result.ops.get(op, 0) + count
    try:
        saved, on_arrays = saved_and_loaded(program, registry)
    except RoundTripFailed as exc:
        result.passed, result.error = False, str(exc)
        return result
    if not backend.availability().can_run:
        return result
    try:
        loaded_runtime(saved)
        with torch.no_grad():
            with kit_step("run()"):
                answers = [saved(*inputs)]
            if on_arrays is not None:
                answers.append(numpy_outputs(on_arrays, inputs))
                if without_torch is not None:
                    answers.append(without_torch.outputs(backend, program, inputs))
            expected = _leaves(reference_program(program)(*inputs))
    except RoundTripFailed as exc:
        result.passed, result.error = False, str(exc)
        return result
    except Exception as exc:
        result.passed, result.error = False, f"run failed: {type(exc).__name__}: {exc}"
        return result
    per_answer = [[float((a.double() - e.double()).abs().max()) for a, e in zip(_leaves(answer), expected)]
                  for answer in answers]
    errors = [max(column) for column in zip(*per_answer)]  # each output's worst, on tensors and on numpy
    result.max_error = max(errors)
    scales = list(output_scales(program).values())
    if case.scheme == "int8" and len(scales) == len(errors):
        result.max_steps = max(err / scale for err, scale in zip(errors, scales))
        result.passed = result.max_steps <= case.steps + 1e-3  # float rounding of the step itself
        if not result.passed:
            result.passed = result.within_spread = within_rounding_spread(saved, inputs, registry)
    else:
        scale = max(float(e.abs().max()) for e in expected) or 1.0
        result.relative_error = result.max_error / scale
        result.passed = result.relative_error <= case.rtol
    return result


def within_rounding_spread(program: Program, inputs: tuple[Any, ...], registry: Any) -> bool:
    """Whether `edgeport check` passes every partition of ``program`` on ``inputs`` by
    its rule for quantized partitions alone (no relative tolerance): within one output
    step, or within the spread of the reference nudged by the backend's `op_error`."""
    from ..devtools.check import check_program

    return check_program(program, inputs, rtol=0.0, locate=False, registry=registry).passed


def run_quantized_conformance(backend: Backend, cases: Iterable[QuantizedCase] | None = None,
                              options: dict[str, Any] | None = None) -> list[QuantizedCaseResult]:
    """Run `cases` (default: all) on `backend`, each quantized with its case's scheme."""
    return [run_quantized_case(backend, c, options) for c in (QUANTIZED_CASES if cases is None else cases)]


def _leaves(value: Any) -> list[torch.Tensor]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


# -- the cases ------------------------------------------------------------------------------------


def qop(name: str, fn: Callable[..., Any], *shapes: tuple[int, ...], steps: float = 1.0,
        **params: tuple[int, ...]) -> QuantizedCase:
    """A one-function int8 case; `params` are its weights' shapes."""
    def build() -> tuple[nn.Module, tuple[Any, ...]]:
        weights = {k: _x(*shape) * 0.3 for k, shape in params.items()}
        return Fn(fn, **weights), tuple(_x(*s) for s in shapes)

    return QuantizedCase(name, _seeded(build), steps=steps, tags=frozenset({"op"}))


def qblock(name: str, make: Callable[[], nn.Module], *shapes: tuple[int, ...], scheme: str = "int8",
           steps: float = 1.0, rtol: float = 1e-4) -> QuantizedCase:
    return QuantizedCase(name, _seeded(lambda: (make(), tuple(_x(*s) for s in shapes))), scheme, steps, rtol,
                         frozenset({"block"}))


# Negative BatchNorm scales too: folding flips those channels' weights.
SIGNED_SCALES = (-1.5, 1.5)


class _Classifier(nn.Module):
    """conv -> max pool -> flatten -> linear: the shape of a small image classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.max_pool2d(torch.relu(self.conv(x)), 2), 1))


IMG = (1, 8, 12, 12)

QUANTIZED_CASES: list[QuantizedCase] = [
    # int8 convolutions and linears (per-channel weights, int32 bias)
    qop("int8_conv2d", lambda m, x: F.conv2d(x, m.w, m.b, padding=1), IMG, w=(16, 8, 3, 3), b=(16,)),
    qop("int8_conv2d_relu", lambda m, x: F.relu(F.conv2d(x, m.w, m.b, padding=1)), IMG, w=(16, 8, 3, 3), b=(16,)),
    qop("int8_conv2d_stride2", lambda m, x: F.conv2d(x, m.w, stride=2, padding=1), IMG, w=(8, 8, 3, 3)),
    qop("int8_conv2d_depthwise", lambda m, x: F.relu6(F.conv2d(x, m.w, padding=1, groups=8)), IMG, w=(8, 1, 3, 3)),
    qop("int8_linear", lambda m, x: F.linear(x, m.w, m.b), (4, 32), w=(16, 32), b=(16,)),
    qop("int8_linear_relu", lambda m, x: F.relu(F.linear(x, m.w)), (4, 32), w=(16, 32)),
    # int8 elementwise
    qop("int8_add", lambda m, a, b: a + b, (2, 3, 8), (2, 3, 8)),
    qop("int8_add_relu", lambda m, a, b: F.relu(a + b), (2, 3, 8), (2, 3, 8)),
    qop("int8_mul", lambda m, a, b: a * b, (2, 3, 8), (2, 3, 8)),
    # a stored operand: a position embedding, a per-channel layer scale after a conv
    qop("int8_stored_add", lambda m, x: F.linear(x, m.w) + m.pos, (2, 3, 8), w=(8, 8), pos=(3, 8)),
    qop("int8_stored_mul", lambda m, x: F.conv2d(x, m.w, padding=1) * m.gamma, IMG, w=(16, 8, 3, 3),
        gamma=(16, 1, 1)),
    qop("int8_relu", lambda m, x: F.relu(x), (2, 16)),
    qop("int8_relu6", lambda m, x: F.relu6(x), (2, 16)),
    qop("int8_hardswish", lambda m, x: F.hardswish(x), (2, 16)),
    qop("int8_sigmoid", lambda m, x: torch.sigmoid(x), (2, 16)),
    qop("int8_softmax", lambda m, x: F.softmax(x, dim=-1), (2, 4, 16)),
    qop("int8_gelu", lambda m, x: F.gelu(x), (2, 16)),
    qop("int8_bmm", lambda m, a, b: torch.bmm(a, b), (2, 4, 8), (2, 8, 6)),  # a product of two activations
    # an attention, expanded where its pieces are int8
    qop("int8_matmul", lambda m, a, b: torch.matmul(a, b.transpose(-2, -1)), (2, 4, 8), (2, 6, 8)),
    qop("int8_attention", lambda m, q, k, v: F.scaled_dot_product_attention(q, k, v), (1, 2, 6, 8), (1, 2, 6, 8),
        (1, 2, 6, 8)),
    # int8 pooling and reductions
    qop("int8_max_pool2d", lambda m, x: F.max_pool2d(x, 2), IMG),
    qop("int8_avg_pool2d", lambda m, x: F.avg_pool2d(x, 2), IMG),
    qop("int8_adaptive_avg_pool2d", lambda m, x: F.adaptive_avg_pool2d(x, 1), IMG),
    qop("int8_mean", lambda m, x: x.mean(dim=(2, 3), keepdim=True), IMG),
    # int8 data movement
    qop("int8_cat", lambda m, a, b: torch.cat([F.relu(a), F.relu(b)], dim=1), IMG, IMG),
    qop("int8_cat_stored", lambda m, x: torch.cat([m.token.expand(2, -1, -1), F.linear(x, m.w)], dim=1), (2, 3, 8),
        token=(1, 1, 8), w=(8, 8)),  # a ViT's class token before its patches
    qop("int8_reshape", lambda m, x: torch.flatten(F.relu(x), 1), IMG),
    qop("int8_permute", lambda m, x: F.relu(x).permute(0, 2, 3, 1), IMG),
    qop("int8_pad", lambda m, x: F.pad(F.relu(x), (1, 1, 1, 1)), IMG),
    # int8 blocks: a kernel's one-step rounding may grow through the ops after it
    qblock("int8_conv_bn_relu6", lambda: nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), _bn(16, SIGNED_SCALES), nn.ReLU6()), IMG),
    qblock("int8_inverted_residual", lambda: _InvertedResidual(SIGNED_SCALES), IMG, steps=3.0),
    qblock("int8_classifier", _Classifier, IMG, steps=3.0),
    # linears with integer weights, activations quantized per token at run time
    qblock("int8_dynamic_linear", lambda: nn.Linear(64, 48), (5, 64), scheme="int8-dynamic", rtol=1e-5),
    qblock("int8_dynamic_mlp", lambda: nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 64)), (2, 3, 64),
           scheme="int8-dynamic", rtol=1e-5),
    qblock("int4_weight_linear", lambda: nn.Linear(64, 48), (5, 64), scheme="int4-weight", rtol=1e-5),
    qblock("int4_weight_mlp", lambda: nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 64)), (2, 3, 64),
           scheme="int4-weight", rtol=1e-5),
]
