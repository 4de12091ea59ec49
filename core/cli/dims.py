"""``--dynamic NAME=MIN:MAX``: dynamic dims for a model that comes from a factory.

NAME is ``INPUT.DIM``: the input by the name of its ``forward`` parameter (or its
position) and the dim's index, e.g. ``x.0=1:64`` for a dynamic batch. Dims that must be
equal (the sequence of ``input_ids`` and of ``attention_mask``) are one dim: name them
together, ``input_ids.1,attention_mask.1=2:128``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..errors import EdgeportError
from ..manifest_schema import MAX_DIM

FORMAT_HINT = "write --dynamic INPUT.DIM=MIN:MAX, e.g. x.0=1:64 (dims that must be equal: a.1,b.1=2:128)"


def parse_dynamic(items: tuple[str, ...], model: torch.nn.Module, inputs: tuple[Any, ...]) -> tuple | None:
    """The ``dynamic_shapes`` for `torch.export`: one ``{dim: Dim}`` per input (None
    for an input with static dims), or None when no item is given."""
    if not items:
        return None
    names = _input_names(model, len(inputs))
    shapes: list[dict[int, Any] | None] = [None] * len(inputs)
    for item in items:
        targets, low, high = _split(item)
        dim = torch.export.Dim(_dim_name(targets[0]), min=low, max=high)
        for target in targets:
            position, axis = _locate(target, names, inputs)
            shapes[position] = {**(shapes[position] or {}), axis: dim}
    return tuple(shapes)


def _split(item: str) -> tuple[list[str], int, int]:
    name, eq, bounds = item.partition("=")
    low, colon, high = bounds.partition(":")
    if not (eq and colon and name):
        raise EdgeportError(f"bad --dynamic {item!r}", hint=FORMAT_HINT)
    try:
        low_size, high_size = int(low), int(high)
    except ValueError:
        raise EdgeportError(f"bad --dynamic {item!r}: MIN and MAX are integers", hint=FORMAT_HINT) from None
    if not 0 <= low_size < high_size <= MAX_DIM:  # MIN == MAX is a static size: torch.export.Dim refuses it
        raise EdgeportError(f"bad --dynamic {item!r}: need 0 <= MIN < MAX <= {MAX_DIM} (a dim of one size is static; "
                            "a program's dims are 32-bit)", hint=FORMAT_HINT)
    return [t.strip() for t in name.split(",")], low_size, high_size


def _input_names(model: torch.nn.Module, count: int) -> list[str]:
    try:
        parameters = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        parameters = []
    return (parameters + [str(i) for i in range(len(parameters), count)])[:count]


def _locate(target: str, names: list[str], inputs: tuple[Any, ...]) -> tuple[int, int]:
    """(input position, dim index) of ``INPUT.DIM``."""
    name, dot, axis = target.rpartition(".")
    if not dot or not axis.lstrip("-").isdigit():
        raise EdgeportError(f"bad --dynamic name {target!r}", hint=FORMAT_HINT)
    position = names.index(name) if name in names else int(name) if name.isdigit() else None
    if position is None or position >= len(inputs):
        raise EdgeportError(f"--dynamic {target!r}: the model has no input {name!r}",
                            hint=f"its inputs: {', '.join(names)}")
    rank = inputs[position].dim() if isinstance(inputs[position], torch.Tensor) else 0
    index = int(axis)
    if not -rank <= index < rank:
        raise EdgeportError(f"--dynamic {target!r}: input {names[position]!r} has {rank} dims",
                            hint=f"name a dim from 0 to {rank - 1}")
    return position, index % rank


def _dim_name(target: str) -> str:
    """A Python identifier for the Dim (torch.export asserts one): "0.0" -> "d0_0"."""
    name = "".join(c if c.isalnum() else "_" for c in target)
    return name if name.isidentifier() else f"d{name}"
