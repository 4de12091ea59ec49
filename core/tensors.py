"""Tensors as raw bytes plus a JSON description: how a program file stores weights and
state without pickle."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# torch dtype <-> the name written in manifests. bfloat16 has no numpy twin, so its bytes
# travel as int16 and are viewed back.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot be stored in a program file") from None


def tensor_to_bytes(tensor: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
    """The tensor's contiguous bytes and the {dtype, shape} needed to read them back."""
    t = tensor.detach().cpu().contiguous()
    description = {"dtype": dtype_name(t.dtype), "shape": list(t.shape)}
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes(), description


def tensor_from_bytes(data: bytes, description: dict[str, Any]) -> torch.Tensor:
    """Inverse of `tensor_to_bytes`; raises ValueError if the bytes do not fit."""
    name = description.get("dtype")
    shape = description.get("shape")
    if name not in DTYPES or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"bad tensor description {description!r}")
    dtype = DTYPES[name]
    storage = torch.int16 if dtype == torch.bfloat16 else dtype
    np_dtype = torch.empty(0, dtype=storage).numpy().dtype
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"tensor of shape {shape} and dtype {name} needs {expected} bytes, found {len(data)}")
    array = np.frombuffer(data, dtype=np_dtype).reshape(shape)
    tensor = torch.from_numpy(array.copy())  # own the memory: the file's buffer may go away
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor
