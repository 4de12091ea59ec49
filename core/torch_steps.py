"""Which steps of a program need torch, and the one error that says so.

Delegate steps run in their backends' own runtimes (LiteRT, ONNX Runtime, ...), so a
program of delegate steps alone is *torch-free*: it loads and runs where torch is not
installed. A portable step is a torch program, run with torch. Such a program loaded
without torch fails at load, not at its first call, with one error that lists every
portable step, its ops, and why each backend declined them (from the placement report,
which the program carries), and says how to fix it. ``edgeport export
--require-delegated`` (``require_delegated=True``) fails an export the same way, before
a deployment build ships a program its device cannot run; ``edgeport explain`` says
whether a program is torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ExecutionError, LoweringError
from .manifest import PORTABLE, Manifest, MethodPlan

MAX_REASON = 160  # characters of one backend's reason in the error; the report has them whole


@dataclass(frozen=True)
class OpDecline:
    """One op of a portable step: how many of its nodes there are and each backend's
    reason for declining it (of its first node)."""

    op: str
    nodes: int
    reasons: dict[str, str]


@dataclass(frozen=True)
class PortableStep:
    method: str
    index: int  # position in the method's plan
    partition: int
    ops: tuple[OpDecline, ...]
    fallback: str | None  # why a backend's compile of it failed, when it fell back

    def describe(self) -> str:
        """One line: the step, its ops, and why they were not delegated."""
        parts = []
        for op in self.ops:
            count = f" x{op.nodes}" if op.nodes > 1 else ""
            why = "; ".join(f"{backend}: {_short(reason)}" for backend, reason in op.reasons.items())
            parts.append(f"{op.op}{count} ({why or 'no backend was asked'})")
        if self.fallback:
            parts.append(f"its compile failed: {_short(self.fallback)}")
        return f"{self.method} step {self.index} (partition {self.partition}): " + ", ".join(parts)


def portable_steps(manifest: Manifest) -> list[PortableStep]:
    """Every portable step of every method, described from the placement report."""
    return [step for name, plan in manifest.methods.items()
            for step in method_portable_steps(name, plan, manifest.report.get(name, {}))]


def method_portable_steps(name: str, plan: MethodPlan, report: Mapping[str, Any]) -> list[PortableStep]:
    """The portable steps of one method (``plan``), described from its placement ``report``."""
    partitions = {p.get("id"): p for p in report.get("partitions", [])}
    found = []
    for index, step in enumerate(plan.steps):
        if step.kind != PORTABLE:
            continue
        nodes = [n for n in report.get("nodes", []) if n.get("partition") == step.partition]
        found.append(PortableStep(name, index, step.partition, _ops(nodes),
                                  partitions.get(step.partition, {}).get("fallback")))
    return found


def _ops(nodes: list[Mapping[str, Any]]) -> tuple[OpDecline, ...]:
    by_op: dict[str, list[Mapping[str, Any]]] = {}
    for node in nodes:
        by_op.setdefault(str(node.get("op", "?")), []).append(node)
    return tuple(OpDecline(op, len(group), dict(group[0].get("reasons", {}))) for op, group in by_op.items())


def describe_steps(steps: list[PortableStep]) -> str:
    """The steps, one indented line each."""
    return "\n".join(f"  {step.describe()}" for step in steps)


FIX = ("re-export with backends that take these ops (`edgeport explain` shows every backend's reasons; "
       "`edgeport export --require-delegated` fails an export that leaves any)")


def needs_torch(steps: list[PortableStep]) -> ExecutionError:
    """The error of loading a program with portable ``steps`` where torch is not installed."""
    return ExecutionError(f"the program has {len(steps)} portable step(s), which run with torch, and torch is not "
                          f"installed here:\n{describe_steps(steps)}",
                          hint=f"install torch (pip install torch==2.13.0) to run them here, or {FIX}")


def not_delegated(steps: list[PortableStep]) -> LoweringError:
    """The error of an export that requires every step delegated and leaves ``steps`` portable."""
    return LoweringError(f"require_delegated: {len(steps)} step(s) stayed portable (torch), which a device without "
                         f"torch cannot run:\n{describe_steps(steps)}",
                         hint="add a backend that takes these ops to the list, or drop --require-delegated "
                              "(the program then needs torch where it runs)")


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."
