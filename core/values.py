"""What a running program's values are: torch tensors where torch is installed, numpy
arrays where it is not.

The runtime holds every value of a call (inputs, step outputs, program state) in one
kind, chosen once per loaded program by whether torch is installed, so a program on a
workstation behaves as it always has (torch tensors in and out) and the same program
on a device without torch takes and returns numpy arrays. Each kind converts what a
caller or a backend hands it and checks inputs against the method's spec in its own
terms (a numpy dtype is ``float32``, a torch one ``torch.float32``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .arrays import NO_NUMPY_TWIN, STORAGE
from .errors import ExecutionError, InputError, a_type
from .input_binding import bind, needs_names
from .manifest import TensorSpec
from .output_tree import leaves


class NumpyValues:
    """Values as numpy arrays: the run side without torch."""

    def flatten(self, args: Sequence[Any], kwargs: Mapping[str, Any], names: Sequence[str]) -> list[Any]:
        if not kwargs and all(isinstance(a, np.ndarray) for a in args):
            return list(args)
        return bind(args, kwargs, names) if needs_names(args, kwargs) else leaves(tuple(args))

    def input(self, value: Any, index: int, spec: TensorSpec) -> np.ndarray:
        """``value`` as input ``index`` takes it; InputError if it is not a numpy array of the spec's dtype."""
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray):
            raise InputError(f"input {index} ({spec.name!r}) must be a numpy array, got {type(value).__name__}",
                             hint=f"pass numpy.asarray(value, numpy.{spec.dtype})")
        if value.dtype != STORAGE[spec.dtype]:
            raise InputError(f"input {index} ({spec.name!r}) must be {spec.dtype}, got {value.dtype}",
                             hint=f"convert it with .astype(numpy.{spec.dtype})")
        return value

    def contiguous(self, value: np.ndarray) -> np.ndarray:
        return value if value.flags.c_contiguous else np.ascontiguousarray(value)

    def fits(self, spec: TensorSpec) -> Callable[[Any], bool] | None:
        """A test of whether a value already is input ``spec`` as a step takes it (a
        contiguous array of its dtype and static shape), so `input` and the shape check
        have nothing to do; None when ``spec`` has a symbolic dim."""
        if not _static(spec):
            return None
        dtype, shape = STORAGE[spec.dtype], tuple(spec.shape)
        return lambda v: type(v) is np.ndarray and v.dtype == dtype and v.shape == shape and v.flags.c_contiguous

    def conforms(self, spec: TensorSpec) -> Callable[[Any], bool] | None:
        """A test of whether a step's output (as `step_output` made it) has ``spec``'s
        dtype, rank and static dims; None for a spec of no array dtype."""
        if spec.dtype not in STORAGE or spec.dtype in NO_NUMPY_TWIN:
            return None
        dtype, dims = STORAGE[spec.dtype], _static_dims(spec)
        return lambda v: v.dtype == dtype and v.ndim == len(spec.shape) and all(v.shape[i] == d for i, d in dims)

    def step_output(self, value: Any) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value
        _check_step_output(value)
        return np.asarray(value)

    def state(self, array: np.ndarray, entry: dict[str, Any]) -> np.ndarray:
        """A program state's initial value (`initial_state`) as the runtime holds it."""
        return array


class TorchValues:
    """Values as torch tensors: how edgeport has always run where torch is installed
    (numpy inputs are taken as tensors over the same memory)."""

    def __init__(self) -> None:
        import torch

        from .tensors import DTYPES

        self._torch = torch
        self._dtypes = DTYPES

    def flatten(self, args: Sequence[Any], kwargs: Mapping[str, Any], names: Sequence[str]) -> list[Any]:
        if not kwargs and all(isinstance(a, self._torch.Tensor) for a in args):
            return list(args)
        return bind(args, kwargs, names) if needs_names(args, kwargs) else leaves(tuple(args))

    def input(self, value: Any, index: int, spec: TensorSpec) -> Any:
        """``value`` as input ``index`` takes it; InputError if it is not a tensor of the spec's dtype."""
        given_numpy = isinstance(value, np.ndarray)  # the hint converts what the caller holds
        if given_numpy:
            value = self._torch.from_numpy(_torch_takes(value, index, spec))
        if not isinstance(value, self._torch.Tensor):
            raise InputError(f"input {index} ({spec.name!r}) must be a tensor, got {type(value).__name__}",
                             hint=f"pass torch.as_tensor(value, dtype=torch.{spec.dtype}), or a numpy array")
        if value.is_meta:  # a shape without data: nothing to compute on
            raise InputError(f"input {index} ({spec.name!r}) is a tensor on the meta device, which holds no data",
                             hint="pass a tensor with values (on the CPU)")
        if value.dtype != self._dtypes[spec.dtype]:
            raise InputError(
                f"input {index} ({spec.name!r}) must be {spec.dtype}, got {str(value.dtype).removeprefix('torch.')}",
                hint=(f"convert it with .astype(numpy.{spec.dtype})" if given_numpy and spec.dtype not in NO_NUMPY_TWIN
                      else f"convert it with .to(torch.{spec.dtype})"),
            )
        return value

    def contiguous(self, value: Any) -> Any:
        return value if value.is_contiguous() else value.contiguous()

    def fits(self, spec: TensorSpec) -> Callable[[Any], bool] | None:
        """A test of whether a value already is input ``spec`` as a step takes it (a
        contiguous tensor of its dtype and static shape), so `input` and the shape check
        have nothing to do; None when ``spec`` has a symbolic dim."""
        if not _static(spec):
            return None
        tensor, dtype, shape = self._torch.Tensor, self._dtypes[spec.dtype], self._torch.Size(spec.shape)
        return lambda v: isinstance(v, tensor) and v.dtype == dtype and v.shape == shape and v.is_contiguous()

    def conforms(self, spec: TensorSpec) -> Callable[[Any], bool] | None:
        """A test of whether a step's output (as `step_output` made it) has ``spec``'s
        dtype, rank and static dims; None for a spec of no tensor dtype."""
        if spec.dtype not in self._dtypes:
            return None
        tensor, dtype, dims = self._torch.Tensor, self._dtypes[spec.dtype], _static_dims(spec)
        return lambda v: (isinstance(v, tensor) and v.dtype == dtype and v.dim() == len(spec.shape)
                          and all(v.shape[i] == d for i, d in dims))

    def step_output(self, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            # A read-only array (np.frombuffer of a runtime's bytes) is copied: torch makes
            # a writable tensor over it, and a caller's or a torch step's in-place write
            # would change memory its owner never meant to be written (torch only warns).
            return self._torch.from_numpy(value if value.flags.writeable else value.copy())
        if isinstance(value, np.generic):
            return self._torch.from_numpy(np.asarray(value))
        _check_step_output(value)
        return value

    def state(self, array: np.ndarray, entry: dict[str, Any]) -> Any:
        from .tensors import tensor_from_array

        return tensor_from_array(array, entry)


def _torch_takes(array: np.ndarray, index: int, spec: TensorSpec) -> np.ndarray:
    """``array`` as ``torch.from_numpy`` takes it, over the same memory where it can: a view
    with negative strides (``image[..., ::-1]``, BGR to RGB) is copied. An array of a dtype
    torch has none for (text, objects) or of the other byte order is an InputError, as the
    run side without torch says it; torch refused them with its own ValueError or TypeError."""
    if not array.dtype.isnative or array.dtype.kind not in "biufc":
        hint = (f"convert it with .astype(numpy.{spec.dtype})" if spec.dtype not in NO_NUMPY_TWIN
                else f"pass torch.as_tensor(value).to(torch.{spec.dtype})")
        raise InputError(f"input {index} ({spec.name!r}) must be {spec.dtype}, got {array.dtype}", hint=hint)
    return array if all(stride >= 0 for stride in array.strides) else np.ascontiguousarray(array)


def _check_step_output(value: Any) -> None:
    """A step's output is an array, a tensor or a number (a portable step's sizes); a
    list, None or text is an executable's mistake that would reach the caller as such."""
    if value is None or isinstance(value, (list, tuple, dict, str, bytes)):
        raise ExecutionError(f"a step returned {a_type(value)} as an output, not an array or tensor",
                             hint="a backend's executable returns numpy arrays or torch tensors from run()")


def _static(spec: TensorSpec) -> bool:
    return all(type(d) is int for d in spec.shape)


def _static_dims(spec: TensorSpec) -> list[tuple[int, int]]:
    """(axis, size) of each dim of ``spec`` that is a number, not a symbol."""
    return [(i, d) for i, d in enumerate(spec.shape) if type(d) is int]


def dtype_and_shape(value: Any) -> str:
    """A value's dtype and shape as a message gives them: "float64 [1, 2, 16]"."""
    dtype = str(getattr(value, "dtype", type(value).__name__)).removeprefix("torch.")
    return f"{dtype} {list(getattr(value, 'shape', ()))}"


Values = NumpyValues | TorchValues
