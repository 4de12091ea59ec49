"""One zoo family exported to one backend, with what the zoo test and shares.py read off
it: the delegated share, what was left portable and why, fallbacks, and the error
against eager."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import edgeport
from edgeport.backend import options_from_dict
from edgeport.backends.coreml import CoreMLBackend
from edgeport.backends.cpu import CpuBackend
from edgeport.backends.mediatek import MediatekBackend
from edgeport.backends.qualcomm import QualcommBackend
from edgeport.testing import compare, registry_for

from models import Family, MaskedFamily

BACKENDS = {backend.name: backend for backend in (CpuBackend(), QualcommBackend(), MediatekBackend(), CoreMLBackend())}


@dataclass
class Exported:
    family: str
    backend: str
    program: edgeport.Program = field(repr=False)
    module: torch.nn.Module = field(repr=False)
    example: tuple[torch.Tensor, ...] = field(repr=False)
    tolerance: float
    can_run: bool
    why_not_run: str

    @property
    def nodes(self) -> list[dict]:
        return self.program.report()["nodes"]

    @property
    def share(self) -> float:
        """The share of compute nodes the backend took (report()'s node counts)."""
        return sum(n["backend"] == self.backend for n in self.nodes) / len(self.nodes)

    @property
    def partitions(self) -> int:
        return sum(p["backend"] == self.backend for p in self.program.report()["partitions"])

    @property
    def declined(self) -> dict[str, str]:
        """Each op left portable -> the backend's reason (the first node's)."""
        left = [n for n in self.nodes if n["backend"] != self.backend]
        return {n["op"]: n["reasons"].get(self.backend, "?") for n in reversed(left)}

    @property
    def fallbacks(self) -> list[str]:
        return [p["fallback"] for p in self.program.report()["partitions"] if p.get("fallback")]

    def error(self) -> float:
        """max |program - eager| / max |eager| on the family's example input."""
        return compare(self.program(*self.example), self.module(*self.example))


def export_family(family: Family | MaskedFamily, backend_name: str) -> Exported:
    """Export ``family``'s tiny model to ``backend_name`` alone; skip (pytest) where the
    backend cannot compile here."""
    import pytest

    backend = BACKENDS[backend_name]
    availability = backend.availability()
    if not availability.can_compile:
        pytest.skip(f"{backend_name} cannot compile here: {availability.why}")
    module, example = family.module(), family.example()
    example = example if isinstance(example, tuple) else (example,)
    program = edgeport.export(module, example, [backend_name], registry=registry_for(backend))
    return Exported(family.name, backend_name, program, module, example, backend.tolerance(options_from_dict(backend, {})),
                    availability.can_run, availability.why)
