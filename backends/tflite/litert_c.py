"""LiteRT's C API (``libLiteRt.so`` in the ai-edge-litert wheel) through ctypes: a
compiled model whose weights XNNPACK packs once into a weight cache, with inputs and
outputs in host buffers edgeport owns.

Why not LiteRT's Python classes: the ``Interpreter`` keeps the model's bytes and
XNNPACK's packed copy of every weight (its delegate has no weight cache), and the
Python ``CompiledModel``, which takes a cache path, wraps host memory only as rank-1
buffers, which a 4-D KV-cache input refuses. The C API takes a full ranked tensor type
for a host buffer, so an LLM's cache stays in numpy arrays the model reads in place.

The structs and calls match LiteRT 2.3's headers (litert/c/litert_layout.h,
litert_model_types.h, litert_compiled_model.h, litert_tensor_buffer.h, and the CPU
options of litert/c/options/litert_cpu_options.cc, which reach the runtime as TOML
text under the opaque-options identifier "xnnpack"). `missing()` says why this path
cannot run here (no library, or a symbol it lacks), so a caller can fall back.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from typing import Any, Sequence

import numpy as np

MAX_RANK = 8  # LITERT_TENSOR_MAX_RANK
ALIGNMENT = 64  # TFLite's tensor alignment: a host buffer is used in place only when aligned
PADDING = 64  # XNNPACK may read up to XNN_EXTRA_BYTES (16) past a tensor's end
CPU = 1  # kLiteRtHwAcceleratorCpu
CPU_OPTIONS_ID = b"xnnpack"  # LrtGetCpuOptionsIdentifier()


class LiteRtCMissing(RuntimeError):
    """libLiteRt.so is absent or lacks a call this module needs (the caller falls back)."""


class LiteRtCError(RuntimeError):
    """A LiteRT C call returned an error status."""


class Layout(ctypes.Structure):  # LiteRtLayout: 68 bytes, dimensions at 4, strides at 36
    _fields_ = [("rank", ctypes.c_uint, 7), ("has_strides", ctypes.c_uint, 1),
                ("dimensions", ctypes.c_int32 * MAX_RANK), ("strides", ctypes.c_uint32 * MAX_RANK)]


class RankedTensorType(ctypes.Structure):  # LiteRtRankedTensorType: 72 bytes, layout at 4
    _fields_ = [("element_type", ctypes.c_int), ("layout", Layout)]


assert ctypes.sizeof(Layout) == 68 and Layout.dimensions.offset == 4 and Layout.strides.offset == 36
assert ctypes.sizeof(RankedTensorType) == 72 and RankedTensorType.layout.offset == 4

# LiteRtElementType (= TfLiteType) <-> numpy
_DTYPES = {1: np.float32, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16, 9: np.int8,
           10: np.float16, 11: np.float64}
_ELEMENT_TYPES = {np.dtype(v): k for k, v in _DTYPES.items()}

_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)
_SIZE = ctypes.c_size_t
# name -> argument types (every call returns LiteRtStatus, an int, except the destroyers)
_CALLS: dict[str, list[Any]] = {
    "LiteRtCreateEnvironment": [ctypes.c_int, _P, _PP],
    "LiteRtCreateModelFromBuffer": [_P, _P, _SIZE, _PP],
    "LiteRtCreateModelFromFile": [_P, ctypes.c_char_p, _PP],
    "LiteRtCreateOptions": [_PP],
    "LiteRtSetOptionsHardwareAccelerators": [_P, ctypes.c_int],
    "LiteRtCreateOpaqueOptions": [ctypes.c_char_p, _P, _P, _PP],
    "LiteRtAddOpaqueOptions": [_P, _P],
    "LiteRtCreateCompiledModel": [_P, _P, _P, _PP],
    "LiteRtGetModelSignature": [_P, _SIZE, _PP],
    "LiteRtGetNumSignatureInputs": [_P, ctypes.POINTER(_SIZE)],
    "LiteRtGetNumSignatureOutputs": [_P, ctypes.POINTER(_SIZE)],
    "LiteRtGetSignatureInputName": [_P, _SIZE, ctypes.POINTER(ctypes.c_char_p)],
    "LiteRtGetSignatureOutputName": [_P, _SIZE, ctypes.POINTER(ctypes.c_char_p)],
    "LiteRtGetSignatureInputTensorByIndex": [_P, _SIZE, _PP],
    "LiteRtGetSignatureOutputTensorByIndex": [_P, _SIZE, _PP],
    "LiteRtGetRankedTensorType": [_P, ctypes.POINTER(RankedTensorType)],
    "LiteRtCompiledModelResizeInputTensor": [_P, _SIZE, _SIZE, ctypes.POINTER(ctypes.c_int), _SIZE],
    "LiteRtGetCompiledModelOutputTensorLayouts": [_P, _SIZE, _SIZE, ctypes.POINTER(Layout), ctypes.c_bool],
    "LiteRtCreateTensorBufferFromHostMemory": [ctypes.POINTER(RankedTensorType), _P, _SIZE, _P, _PP],
    "LiteRtRunCompiledModel": [_P, _SIZE, _SIZE, _PP, _SIZE, _PP],
}
_DESTROYERS = ("LiteRtDestroyTensorBuffer", "LiteRtDestroyCompiledModel", "LiteRtDestroyOptions",
               "LiteRtDestroyModel", "LiteRtDestroyEnvironment")

_lib: Any = None
_missing: str | None = None


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _keep_payload(_: int) -> None:
    """The opaque options' payload destructor: the payload is a Python buffer the
    `CompiledModel` holds, freed with it (LiteRT requires a non-null destructor)."""


def library() -> Any:
    """libLiteRt.so with the calls used here declared; raises `LiteRtCMissing`."""
    global _missing
    if _lib is not None:
        return _lib
    if _missing is None:
        _missing = _load()
    if _missing:
        raise LiteRtCMissing(_missing)
    return _lib


def missing() -> str:
    """Why LiteRT's C API cannot be used here ("" when it can)."""
    try:
        library()
    except LiteRtCMissing as e:
        return str(e)
    return ""


def _load() -> str:
    global _lib
    try:
        import ai_edge_litert
    except ImportError as e:
        return f"ai-edge-litert is not installed ({e})"
    path = os.path.join(os.path.dirname(ai_edge_litert.__file__), "libLiteRt.so")
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        return f"cannot load {path}: {e}"
    for name, argtypes in _CALLS.items():
        if not hasattr(lib, name):
            return f"{path} has no {name}"
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, ctypes.c_int
    for name in _DESTROYERS:
        if not hasattr(lib, name):
            return f"{path} has no {name}"
        function = getattr(lib, name)
        function.argtypes, function.restype = [_P], None
    _lib = lib
    return ""


def _check(status: int, what: str) -> None:
    if status != 0:
        raise LiteRtCError(f"LiteRT's {what} failed with status {status}")


def _call(name: str, *args: Any) -> None:
    _check(getattr(library(), name)(*args), name)


def aligned_empty(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """A zeroed array at a 64-byte aligned address with `PADDING` bytes after it, as
    LiteRT needs of a host buffer it uses in place.

    A large one is an anonymous map of its own, whose pages the kernel gives on first
    write: np.zeros takes it from malloc, which, once a few such blocks have been freed,
    serves them from its heap and clears every byte, so an LLM's empty KV cache placed in
    these buffers was resident whole from the load on (SmolLM2 at 8,192 positions: 343
    MiB of its 360, before the first token)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if nbytes >= _MAPPED_FROM:
        private = mmap.mmap(-1, nbytes + PADDING, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # page-aligned
        raw = np.frombuffer(private, np.uint8)
        return raw[:nbytes].view(dtype).reshape(shape)
    raw = np.zeros(nbytes + ALIGNMENT + PADDING, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


_MAPPED_FROM = 128 << 10  # bytes: from here on a buffer is a map of its own (glibc malloc's own first threshold)


def _tensor_type(array: np.ndarray) -> RankedTensorType:
    element = _ELEMENT_TYPES.get(array.dtype)
    if element is None:
        raise LiteRtCError(f"no LiteRT element type for {array.dtype}")
    layout = Layout(rank=array.ndim, has_strides=0)
    for i, size in enumerate(array.shape):
        layout.dimensions[i] = size
    return RankedTensorType(element_type=element, layout=layout)


class HostBuffer:
    """A LiteRT tensor buffer over ``array``'s memory (no copy): what LiteRT writes to
    it or reads from it is the array. Keeps the array alive."""

    def __init__(self, array: np.ndarray) -> None:
        if not array.flags.c_contiguous or array.ctypes.data % ALIGNMENT:
            raise LiteRtCError("a host buffer must be C-contiguous and 64-byte aligned (use aligned_empty)")
        self.array = array
        handle = ctypes.c_void_p()
        tensor_type = _tensor_type(array)
        _call("LiteRtCreateTensorBufferFromHostMemory", ctypes.byref(tensor_type), array.ctypes.data,
              max(array.nbytes, 1), None, ctypes.byref(handle))
        self.handle = handle.value
        self._destroy = library().LiteRtDestroyTensorBuffer

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            self._destroy(self.handle)
            self.handle = None


def handle_array(buffers: Sequence[HostBuffer]) -> Any:
    """The buffers' handles as a C array, for `CompiledModel.run_handles`."""
    return (ctypes.c_void_p * len(buffers))(*[b.handle for b in buffers])


class Spec:
    """An input's or output's name in the signature, element type, and dims as the
    model was written (a dynamic dim at the size it was written with)."""

    def __init__(self, name: str, tensor_type: RankedTensorType) -> None:
        self.name = name
        element = tensor_type.element_type
        if element not in _DTYPES:
            raise LiteRtCError(f"{name} has LiteRT element type {element}, which has no numpy twin here")
        self.dtype = np.dtype(_DTYPES[element])
        self.shape = tuple(tensor_type.layout.dimensions[i] for i in range(tensor_type.layout.rank))


class CompiledModel:
    """A TFLite model compiled for LiteRT's CPU accelerator (XNNPACK), signature 0.

    ``model`` is a buffer LiteRT reads in place (a view of the mapped program file: it
    must outlive this object) or a file path. ``weight_cache`` is the XNNPACK weight
    cache file ("" for none): built on the first load, mapped by later ones.
    """

    def __init__(self, model: memoryview | str, *, threads: int, weight_cache: str = "") -> None:
        self._lib = library()
        self._handles: list[tuple[str, int]] = []  # (destroyer, handle), destroyed in reverse
        self._model_buffer = model
        try:
            self._open(model, threads, weight_cache)
        except BaseException:  # destroy what was made now, not whenever the object is collected
            self.close()
            raise

    def _open(self, model: memoryview | str, threads: int, weight_cache: str) -> None:
        env = self._create("LiteRtCreateEnvironment", "LiteRtDestroyEnvironment", 0, None)
        if isinstance(model, str):
            model_handle = self._create("LiteRtCreateModelFromFile", "LiteRtDestroyModel", env, model.encode())
        else:
            address = np.frombuffer(model, np.uint8).ctypes.data
            model_handle = self._create("LiteRtCreateModelFromBuffer", "LiteRtDestroyModel", env, address, len(model))
        options = self._create("LiteRtCreateOptions", "LiteRtDestroyOptions")
        _call("LiteRtSetOptionsHardwareAccelerators", options, CPU)
        toml = f"num_threads = {threads}\n"
        if weight_cache:
            toml += f'weight_cache_file_path = "{weight_cache}"\n'
        self._payload = ctypes.create_string_buffer(toml.encode())
        opaque = ctypes.c_void_p()
        _call("LiteRtCreateOpaqueOptions", CPU_OPTIONS_ID, ctypes.addressof(self._payload),
              ctypes.cast(_keep_payload, ctypes.c_void_p), ctypes.byref(opaque))
        _call("LiteRtAddOpaqueOptions", options, opaque)  # the options own it now
        self.handle = self._create("LiteRtCreateCompiledModel", "LiteRtDestroyCompiledModel", env, model_handle,
                                   options)
        signature = ctypes.c_void_p()
        _call("LiteRtGetModelSignature", model_handle, 0, ctypes.byref(signature))
        self.inputs = self._specs(signature, "Input")
        self.outputs = self._specs(signature, "Output")

    def _create(self, name: str, destroyer: str, *args: Any) -> int:
        handle = ctypes.c_void_p()
        _call(name, *args, ctypes.byref(handle))
        self._handles.append((destroyer, handle.value))
        return handle.value

    def _specs(self, signature: int, kind: str) -> list[Spec]:
        count = _SIZE()
        _call(f"LiteRtGetNumSignature{kind}s", signature, ctypes.byref(count))
        specs = []
        for i in range(count.value):
            name, tensor, tensor_type = ctypes.c_char_p(), ctypes.c_void_p(), RankedTensorType()
            _call(f"LiteRtGetSignature{kind}Name", signature, i, ctypes.byref(name))
            _call(f"LiteRtGetSignature{kind}TensorByIndex", signature, i, ctypes.byref(tensor))
            _call("LiteRtGetRankedTensorType", tensor, ctypes.byref(tensor_type))
            specs.append(Spec(name.value.decode(), tensor_type))
        return specs

    def resize_input(self, index: int, shape: Sequence[int]) -> None:
        dims = (ctypes.c_int * len(shape))(*shape)
        _call("LiteRtCompiledModelResizeInputTensor", self.handle, 0, index, dims, len(shape))

    def output_shapes(self) -> list[tuple[int, ...]]:
        """The outputs' shapes for the inputs' current shapes (after `resize_input`)."""
        layouts = (Layout * len(self.outputs))()
        _call("LiteRtGetCompiledModelOutputTensorLayouts", self.handle, 0, len(self.outputs), layouts, True)
        return [tuple(layout.dimensions[i] for i in range(layout.rank)) for layout in layouts]

    def run(self, inputs: Sequence[HostBuffer], outputs: Sequence[HostBuffer]) -> None:
        self.run_handles(handle_array(inputs), handle_array(outputs))

    def run_handles(self, inputs: Any, outputs: Any) -> None:
        """`run` with the buffers' handles already in C arrays (`handle_array`): what a
        caller running the same buffers call after call keeps."""
        _call("LiteRtRunCompiledModel", self.handle, 0, len(inputs), inputs, len(outputs), outputs)

    def close(self) -> None:
        """Destroy the compiled model, its options, model and environment (once)."""
        handles, self._handles = getattr(self, "_handles", []), []
        for destroyer, handle in reversed(handles):
            getattr(self._lib, destroyer)(handle)

    def __del__(self) -> None:
        self.close()
