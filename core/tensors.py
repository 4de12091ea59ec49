"""Tensors as raw bytes plus a JSON description: how a program file stores weights and
state without pickle. The torch side of `edgeport.arrays` (which reads the same bytes
as numpy arrays where torch is not installed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .arrays import STORED_DTYPES, array_from_bytes

# torch dtype <-> the name written in manifests. bfloat16 has no numpy twin, so its bytes
# travel as int16 and are viewed back.
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in STORED_DTYPES}
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
    return tensor_from_array(array_from_bytes(data, description), description)


def tensor_from_array(array: np.ndarray, description: dict[str, Any]) -> torch.Tensor:
    """A stored tensor as `edgeport.arrays` reads it, as a torch tensor over the same
    memory (bfloat16 viewed back from its int16 storage)."""
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if description["dtype"] == "bfloat16" else tensor
