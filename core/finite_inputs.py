"""A quantized program refuses a NaN or an infinity in an input it quantizes at its entry.

int8 and uint16 have neither: a quantize step turns NaN into some ordinary step and an
infinity into its range's end, so the program answers with plausible numbers where the
float model answers NaN. Measured on a two-linear MLP with one NaN and one infinity in
its input (2026-11-29): float gave NaN and -inf; cpu int8 and qualcomm a16w8 gave finite
rows, cpu int8-dynamic a finite row for the NaN. A sensor glitch would pass unseen.

The export records which method inputs a quantize node (or a run-time choose-qparams
node) reads directly (`quantized_inputs`, positions, in the method's placement report
under "quantization"); each call checks those inputs. An input the model cleans itself
first (`torch.nan_to_num` in its forward) is read by that op, not a quantize one, so it is
not checked. A check is one pass per input through which NaN and infinity carry (a
numpy array's dot product with itself, a tensor's sum: 6 and 7 µs for a 1x3x224x224
float32 image in a hot loop at one thread, 2026-11-29; `np.sum` took 62,
`np.isfinite(x).all()` 23; within MobileNetV2 int8's real calls on a busy machine, 30-70
µs, 1-3% of the call: bench/README.md "The finite-input check's cost");
only a result that is not finite looks for the element, so one that overflowed from
finite values (elements near 1e19) costs a second pass and passes. The placement report is descriptive
and open-ended (manifest_schema.py), so an older edgeport ignores the field; a damaged
value is a ProgramError at load.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .arrays import as_numpy
from .errors import InputError, ProgramError
from .manifest import MethodPlan

FIELD = "quantized_inputs"


def quantized_positions(report: Mapping[str, Any], plan: MethodPlan) -> tuple[int, ...]:
    """The positions of ``plan``'s inputs its program quantizes at entry, read from the
    method's placement report (none for a float program, or one written before edgeport
    recorded them)."""
    positions = report.get("quantization", {}).get(FIELD, [])
    count = len(plan.inputs)
    if not (isinstance(positions, list) and all(type(p) is int and 0 <= p < count for p in positions)):
        raise ProgramError(f"method {plan.name!r}: the placement report's quantization.{FIELD} is damaged "
                           f"({positions!r:.80}): positions of the method's {count} input(s) expected")
    return tuple(sorted(set(positions)))


def finite_check(plan: MethodPlan, positions: tuple[int, ...]) -> Callable[[Sequence[Any]], None] | None:
    """A per-call check that the inputs at ``positions`` hold no NaN or infinity (None
    when there are none to check): an InputError naming the input, the value and where."""
    if not positions:
        return None
    names = [plan.inputs[p].name for p in positions]

    def check(inputs: Sequence[Any]) -> None:
        for position, name in zip(positions, names):
            value = inputs[position]
            if not math.isfinite(_one_pass(value)):
                _refuse_non_finite(position, name, value)

    return check


def _one_pass(value: Any) -> float:
    """A number that is NaN or infinite when an element of ``value`` is, and finite when
    none is unless it overflowed: a numpy array's dot product with itself (BLAS, no
    allocation), a tensor's sum."""
    if isinstance(value, np.ndarray):
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is looked into, not warned of
            return float(np.vdot(value, value))
    return float(value.sum())


def _refuse_non_finite(position: int, name: str, value: Any) -> None:
    array = as_numpy(value)
    bad = np.argwhere(~np.isfinite(array))
    if not len(bad):  # the one pass overflowed; every element is finite
        return
    where = [int(i) for i in bad[0]]
    raise InputError(f"input {position} ({name!r}) holds {array[tuple(where)]} at {where} ({len(bad)} non-finite "
                     "value(s)): the program quantizes it at entry, and integers have no NaN or infinity, so it "
                     "would answer with ordinary numbers where the float model gives NaN",
                     hint="replace them before the call (numpy.nan_to_num), or export a model that cleans its "
                          "input first (torch.nan_to_num in forward)")
