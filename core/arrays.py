"""Arrays on the run side, with or without PyTorch.

A program runs where torch is not installed (an edge device with numpy and LiteRT or
ONNX Runtime only), so everything the runtime needs to read a program's tensors and
hand them to a backend lives here, in numpy:

- the dtypes a program file stores, by name, with their numpy twins and sizes;
- `array_from_bytes`: a stored tensor (state, a constant) as a numpy array, and
  `initial_state` a program state's starting value;
- `as_numpy`: the numpy array of a numpy array or a CPU torch tensor, without a copy,
  for backends whose executables take either;
- `torch_installed`: whether this environment has torch at all, asked without
  importing it (importing torch costs seconds and hundreds of MB).

``edgeport.tensors`` builds the torch side (torch dtypes, tensors) on top of this.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from typing import Any, Mapping

import numpy as np

# Every dtype a program file may hold, by the name manifests use. bfloat16 has no numpy
# twin: its bytes are stored as int16 and only torch reads them as bfloat16.
STORED_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint16", "uint8",
                 "bool")
NO_NUMPY_TWIN = frozenset({"bfloat16"})
STORAGE = {name: np.dtype("int16" if name in NO_NUMPY_TWIN else name) for name in STORED_DTYPES}


def array_from_bytes(data: bytes, description: dict[str, Any]) -> np.ndarray:
    """A stored tensor (its raw bytes and ``{"dtype", "shape"}``) as a writable numpy
    array that owns its memory (bfloat16 comes back as its int16 storage); raises
    ValueError if the bytes do not fit the description."""
    dtype, shape = _described(description)
    expected = stored_size(description)
    if len(data) != expected:
        raise ValueError(f"tensor of shape {shape} and dtype {description['dtype']} needs {expected} bytes, "
                         f"found {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()  # own the memory: the file's buffer may go away


def stored_size(description: dict[str, Any]) -> int:
    """The bytes of a tensor of ``{"dtype", "shape"}``: its file's size, or what a state
    stored as a fill takes once loaded. Raises ValueError for a bad description."""
    dtype, shape = _described(description)
    return math.prod(shape) * dtype.itemsize


def initial_state(description: dict[str, Any], files: Mapping[str, Any]) -> np.ndarray:
    """A program state's initial value, as `array_from_bytes` gives it: its file's
    bytes, or zeros for a state the manifest describes as ``"fill": 0`` and stores no
    file of (a KV cache starts empty; stored, its zeros were 22.5 MiB of SmolLM2's
    program at 512 positions, 360 MiB at 8,192). np.zeros leaves the pages unwritten
    until a run writes them, and a delegate's fresh buffer it is placed in takes no copy
    of them (`state_rows.place_state`). Raises KeyError or ValueError."""
    if "fill" in description:
        dtype, shape = _described(description)
        return np.zeros(shape, dtype)
    return array_from_bytes(files[description["file"]], description)


def _described(description: dict[str, Any]) -> tuple[np.dtype, list[int]]:
    name = description.get("dtype")
    shape = description.get("shape")
    if name not in STORAGE or not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"bad tensor description {description!r}")
    return STORAGE[name], shape


def as_numpy(value: Any) -> np.ndarray:
    """A contiguous numpy array of ``value`` (a numpy array or a CPU torch tensor), the
    same memory when it already is contiguous. What a backend's executable calls on its
    inputs: they are torch tensors where torch is installed, numpy arrays where not."""
    if isinstance(value, np.ndarray):
        return value if value.flags.c_contiguous else np.ascontiguousarray(value)
    if is_torch_tensor(value):
        try:  # a CPU tensor that needs no grad: one binding call, the rest is numpy's
            array = value.numpy()
        except (RuntimeError, TypeError):  # needs grad, not on the CPU, or no numpy dtype
            value = value.detach()
            return (value if value.is_contiguous() else value.contiguous()).cpu().numpy()
        return array if array.flags.c_contiguous else np.ascontiguousarray(array)
    return np.ascontiguousarray(value)


def is_torch_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor, without importing torch (if torch is not
    imported yet, nothing can be one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def torch_installed() -> bool:
    """Whether torch can be imported here, found without importing it. A ``None`` in
    ``sys.modules`` (how tests hide an installed torch) counts as not installed."""
    if "torch" in sys.modules:
        return sys.modules["torch"] is not None
    return importlib.util.find_spec("torch") is not None
