"""Quantization schemes as data: what is quantized, to how many bits, when.

A scheme is what the user asks for (`--quantize int8`); each backend turns it into a
quantizer for the nodes it owns (`Backend.quantizer`). The names are the contract
between users, backends and `edgeport backends --json`.

`auto` is a request, not a scheme: each backend quantizes its nodes with its own
default static scheme (`Backend.default_scheme`: qualcomm a16w8, cpu int8), so a
mixed program gets each side's best without a choice by hand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Collection

from ..errors import EdgeportError

STATIC = "static"  # activations quantized with ranges measured on calibration data
DYNAMIC = "dynamic"  # activations quantized at run time, per token, by the kernel
FLOAT = "float"  # activations stay float: only the weights are compressed

LINEAR = "linear"  # integer weights: value = scale * (q - zero point)
PALETTE = "palette"  # palettized weights: each an index into a table of 2**bits float values


@dataclass(frozen=True)
class Scheme:
    """One quantization scheme.

    `activations`: STATIC (needs calibration data), DYNAMIC or FLOAT (weights only);
    `activations_where` says, per backend, what its kernels do with them when not all
    do the same: (backend, what), described only for the backends quantizing.
    `activation_bits` and `weight_bits` are the widths; LINEAR weights are integers
    times a scale, per output channel, or per group of `group_size` inputs when
    `group_size` is set (cpu and coreml give 4-bit groups an offset too); PALETTE weights are `weight_bits`-bit indices into a lookup table (Core ML's
    palettization). `qat` asks the backend for fake-quantize modules to train through
    instead of observers.
    """

    name: str
    activations: str
    activation_bits: int
    weight_bits: int
    group_size: int | None = None
    qat: bool = False
    weights: str = LINEAR
    per_backend: bool = False  # `auto`: each backend picks its default (see `backend_scheme`)
    activations_where: tuple[tuple[str, str], ...] = ()  # (backend, what its kernels do with the activations)

    @property
    def needs_calibration(self) -> bool:
        return self.activations == STATIC

    def describe(self, backends: Collection[str] | None = None) -> str:
        """One line for reports, e.g. "int4-weight: 4-bit weights in groups of 32, ...";
        `backends`: those quantizing with it, to say what their kernels do (None: all)."""
        if self.per_backend:
            return f"{self.name}: each backend's default static scheme"
        if self.weights == PALETTE:
            weights = f"{self.weight_bits}-bit palettized weights (a table of {2 ** self.weight_bits} values per tensor)"
        else:
            weights = f"{self.weight_bits}-bit weights " + (
                f"in groups of {self.group_size}" if self.group_size else "per channel"
            )
        if self.activations == STATIC:
            ranges = "learned in training" if self.qat else "calibrated"
            acts = f"{self.activation_bits}-bit activations (static, {ranges})"
        elif self.activations == FLOAT:
            acts = "float activations"
        else:
            acts = f"{self.activation_bits}-bit activations quantized per token at run time"
            where = [what for backend, what in self.activations_where if backends is None or backend in backends]
            acts += f" ({'; '.join(where)})" if where else ""
        return f"{self.name}: {weights}, {acts}"


DEFAULT_GROUP_SIZE = 32  # LiteRT's INT4 blocks are multiples of 32; ExecuTorch's 8da4w default too

SCHEMES: dict[str, Scheme] = {
    "int8": Scheme("int8", STATIC, 8, 8),
    "int8-dynamic": Scheme("int8-dynamic", DYNAMIC, 8, 8),
    # XNNPACK's 4-bit kernels (qd8-f32-qb4w) quantize the activations per token at run
    # time; the scheme says so rather than pretend the activations stay float. Core ML
    # expands the 4-bit weights and computes in fp16 (backends/coreml/int4_blocks.py).
    "int4-weight": Scheme("int4-weight", DYNAMIC, 8, 4, group_size=DEFAULT_GROUP_SIZE,
                          activations_where=(("cpu", "by cpu's XNNPACK kernels"), ("coreml", "coreml keeps them fp16"))),
    # 16-bit activations, 8-bit weights: offered by backends whose NPU runs it (Qualcomm HTP).
    "a16w8": Scheme("a16w8", STATIC, 16, 8),
    # Weight palettization (Core ML's palettize_weights): k-means tables of 16 or 64
    # values; activations stay float (fp16 on Core ML).
    "palettize4": Scheme("palettize4", FLOAT, 16, 4, weights=PALETTE),
    "palettize6": Scheme("palettize6", FLOAT, 16, 6, weights=PALETTE),
}


AUTO = Scheme("auto", STATIC, 8, 8, per_backend=True)
# What `--quantize` accepts: a scheme every backend must offer, or `auto`.
REQUESTS: tuple[str, ...] = (*SCHEMES, AUTO.name)


def backend_scheme(request: Scheme, offered: frozenset[str], default: str | None) -> str | None:
    """The scheme a backend offering `offered` (default scheme `default`) uses for
    `request`: the request itself when it names one; for `auto`, the backend's
    default, else int8, else the first static scheme it offers; None if none fits."""
    if not request.per_backend:
        return request.name if request.name in offered else None
    if default in offered:
        return default
    static = [name for name, scheme in SCHEMES.items() if name in offered and scheme.activations == STATIC]
    return "int8" if "int8" in static else next(iter(static), None)


def resolve_scheme(scheme: str | Scheme, group_size: int | None = None) -> Scheme:
    """A `Scheme` from its name (or itself), with `group_size` applied when given."""
    if isinstance(scheme, Scheme):
        resolved = scheme
    else:
        name = str(scheme).strip().lower()
        resolved = AUTO if name == AUTO.name else SCHEMES.get(name)
        if resolved is None:
            raise EdgeportError(
                f"unknown quantization scheme {scheme!r}",
                hint=f"choose one of: {', '.join(REQUESTS)}",
            )
    if group_size is not None:
        if resolved.group_size is None:
            raise EdgeportError(
                f"scheme {resolved.name!r} has no weight groups, so a group size does not apply",
                hint="group sizes apply to int4-weight",
            )
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
            raise EdgeportError(f"group size must be a positive whole number, got {group_size!r}")
        resolved = dataclasses.replace(resolved, group_size=group_size)
    return resolved
