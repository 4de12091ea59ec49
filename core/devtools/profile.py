"""``edgeport run --profile``: where one call's time goes.

The breakdown is the median run's (the timed run whose wall time is the median; of an
even number of runs, the faster of the two middle ones, never the slowest of two): per
step its time, per backend the sum of its steps, the wall time of the call as the caller
sees it, and what the steps leave unexplained (the runtime's input checks and
bookkeeping). One run's numbers add up, which per-step medians need not do on a busy
machine, and the median run is not thrown off by an outlier. Conversions at a delegate's boundary (torch
tensors into the backend's buffers and back) happen inside the backend's ``run``, so
their time is part of the step's; what the profile adds is the bytes that cross each
delegate step's boundary, from the placement report. A delegate step run as its torch
reference (``--reference``) runs torch and crosses no boundary: its time counts as torch
code and its bytes do not count.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..manifest import MethodPlan
from ..runtime import TORCH_REFERENCE, RunResult, Runtime


def time_runs(runtime: Runtime, method: str, inputs: Sequence[Any], *, repeat: int = 1, warmup: int = 0,
              profile: bool = False) -> tuple[list[RunResult], list[float]]:
    """Run ``method`` ``warmup`` times untimed, then ``repeat`` times; return each timed
    run's result and its wall time in ms (measured around the whole call)."""
    for _ in range(warmup):
        runtime.run(method, inputs, {})
    results, walls = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        results.append(runtime.run(method, inputs, {}, profile=profile))
        walls.append((time.perf_counter() - start) * 1e3)
    return results, walls


@dataclass(frozen=True)
class StepProfile:
    index: int
    partition: int
    kind: str  # "delegate" or "portable"
    backend: str
    label: str  # how it ran here: "cpu", "qualcomm: simulator", "coreml: torch reference"
    ms: float  # in the median run
    share: float  # of the median wall time
    bytes_in: int
    bytes_out: int


def runs_torch(step: StepProfile) -> bool:
    """Whether the step ran torch: a portable step, or a delegate run as its torch reference."""
    return step.kind == "portable" or step.label.endswith(TORCH_REFERENCE)


@dataclass(frozen=True)
class BackendProfile:
    backend: str
    steps: int
    ms: float
    share: float
    label: str  # how its steps ran here, as `StepProfile.label`


@dataclass(frozen=True)
class Profile:
    runs: int
    wall_ms: float  # the median run's wall time
    steps_ms: float  # the sum of its steps
    overhead_ms: float  # wall - steps: input checks, value bookkeeping, state writes
    portable_share: float  # share of the wall time spent in torch: portable steps, and delegates run as their reference
    boundary_bytes: int  # bytes into and out of delegate steps run by their backend, per call
    steps: list[StepProfile]
    backends: list[BackendProfile]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarize_profile(plan: MethodPlan, results: Sequence[RunResult], walls: Sequence[float],
                      values: Mapping[str, Mapping[str, Any]]) -> Profile:
    """Aggregate profiled runs of ``plan``; ``values`` is the placement report's
    ``values`` (name -> {bytes}), empty for programs saved before it existed."""
    if not results or not all(r.steps for r in results):
        raise ValueError("summarize_profile needs results of runs made with profile=True")
    median_run = sorted(range(len(walls)), key=walls.__getitem__)[(len(walls) - 1) // 2]
    wall = walls[median_run]
    size = {name: int(info.get("bytes", 0)) for name, info in values.items()}
    steps = []
    for timing in results[median_run].steps:
        step = plan.steps[timing.index]
        steps.append(StepProfile(timing.index, step.partition, timing.kind, timing.backend, timing.label, timing.ms,
                                 timing.ms / wall if wall else 0.0, sum(size.get(v, 0) for v in step.inputs),
                                 sum(size.get(v, 0) for v in step.outputs)))
    by_backend: dict[str, list[StepProfile]] = {}
    for s in steps:
        by_backend.setdefault(s.backend, []).append(s)
    backends = [BackendProfile(name, len(group), sum(s.ms for s in group), sum(s.ms for s in group) / wall
                               if wall else 0.0, group[0].label) for name, group in by_backend.items()]
    total = sum(s.ms for s in steps)
    portable = sum(s.ms for s in steps if runs_torch(s))
    crossing = sum(s.bytes_in + s.bytes_out for s in steps if not runs_torch(s))
    return Profile(len(results), wall, total, wall - total, portable / wall if wall else 0.0, crossing, steps,
                   backends)
