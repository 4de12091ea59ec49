"""Run a TFLite model with LiteRT's compiled model (C API, `litert_c`) and XNNPACK's
weight cache: how the cpu backend runs an LLM's one-graph model.

Against `runner.TfliteExecutable` (LiteRT's ``Interpreter``), memory is the point. The
Interpreter needs the model as ``bytes`` (a copy of the artifact) and XNNPACK packs
every weight into memory of its own besides: fp32 SmolLM2 peaked at 1,170 MiB for
514 MiB of weights. Here the model is read in place from the mapped program file, and
XNNPACK packs the weights once into a cache file (`weight_cache_path`) that later
loads map instead of packing again: the packed copy is the only copy resident, and it
is file-backed (bench/README.md, "Memory").

Inputs and outputs are host buffers over numpy arrays this executable owns. An input
of static shape (a KV cache) is bound once and can be the program's state itself
(`input_buffer`, the `edgeport.state_rows.InPlaceInputs` protocol): passing it back
copies nothing. Inputs of a dynamic dim get buffers per shape, and the model is
resized when a call's shapes differ from the last call's. Outputs are copies, as the
Interpreter's are: the next call overwrites the buffers.

The cache file is keyed by the artifact's checksum, LiteRT's version and this CPU's
features (XNNPACK packs for the kernels it picks on this CPU) and lives in the per-user
cache directory (`edgeport.cache`, which keeps it within a size by deleting the least
recently used files). XNNPACK packs every weight while the model compiles, into a file
of a temporary name that takes the key's name once the model compiled, so a process that
dies while packing leaves no half-written cache another would trust (it may leave a
``*.building`` file, which no load reads). The first load then compiles again from the
finished file, which holds less memory than the model that built it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeport.arrays import as_numpy, is_torch_tensor
from edgeport.cache import BUILDING_SUFFIX, cache_dir, make_room, mark_used, seal, size_limit, usable
from edgeport.mapped_file import forget
from edgeport.native_output import close_before_exit, close_quietly, filter_native_output

from . import litert_c
from .runner import default_threads, runtime_version

log = logging.getLogger(__name__)
# LiteRT's INFO lines, and its warnings that this host has no NPU or GPU accelerator
# (it looks for them whenever an environment is made), are chatter.
LITERT_CHATTER = (re.compile(r"^INFO: "), re.compile(r"^WARNING: \[(npu|gpu)_registry\.cc"))
WEIGHT_CACHE = "xnnpack"  # the cache kind (edgeport.cache) of XNNPACK's packed weights


def weight_cache_path(checksum: str) -> Path:
    """The XNNPACK weight cache file of the model whose sha256 is ``checksum``, on this
    machine with this LiteRT (the file may not exist yet)."""
    key = hashlib.sha256(f"{checksum} {runtime_version()} {_cpu_features()}".encode()).hexdigest()[:32]
    return cache_dir() / WEIGHT_CACHE / f"{key}.xnnpack_cache"


def _cpu_features() -> str:
    """This CPU's architecture and feature flags: packed weights are laid out for the
    kernels XNNPACK picks on this CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {' '.join(sorted(flags.split(':', 1)[-1].split()))}"


class _Shapes:
    """The buffers of one set of input shapes: dynamic inputs and all outputs."""

    def __init__(self, inputs: list[np.ndarray], outputs: list[np.ndarray], handles: tuple[Any, Any],
                 keep: list[Any]) -> None:
        self.inputs, self.outputs, self.handles, self._keep = inputs, outputs, handles, keep


class CompiledExecutable:
    """A loaded TFLite model: `run(inputs)` -> outputs as numpy arrays, in model order.

    ``model`` is the artifact's bytes as loaded (a view of the mapped program file,
    read in place: kept alive here). ``checksum`` (the artifact's sha256) names its
    weight cache; "" runs without one. ``names`` are the model's (inputs, outputs) in
    the order the program passes and expects them (the artifact's metadata). Raises
    `litert_c.LiteRtCMissing` or `litert_c.LiteRtCError` when LiteRT's C API cannot
    load it, for the caller to fall back on the Interpreter.
    """

    takes_numpy = True

    def __init__(self, model: memoryview | bytes, threads: int = 0, *, checksum: str = "",
                 names: tuple[Sequence[str], Sequence[str]] | None = None) -> None:
        view = memoryview(model)
        final = weight_cache_path(checksum) if checksum else None
        building = None
        if final is not None and not usable(final):
            size_limit()  # a malformed EDGEPORT_CACHE_MAX is refused before the packing, not after it
            building = _building_name(final)
            if building is None:  # the cache directory cannot be written: no cache
                final = None
        cache = str(building or final or "")
        threads = threads or default_threads()
        if final is not None and building is None:
            mark_used(final)
            # compiling from the cache glances at every weight: let each glance map a page,
            # not the large folio a just-written file keeps (mapped_file.forget; ~0.1 s more
            # to load SmolLM2 int8, 120 MiB less)
            forget(view)
        try:
            self._model = _compile(view, threads, cache)
            _check_names(self._model, names)
        except BaseException:
            if building is not None and os.path.exists(building):
                os.unlink(building)
            raise
        if building is not None:
            # XNNPACK packed every weight into the file while compiling: publish it whole,
            # then compile again from it. The model that built the cache keeps ~the
            # embedding table's size of anonymous memory to its end (fp32 SmolLM2: 110
            # MiB); one that maps the finished cache does not (0.1 s).
            close_quietly(self._model, LITERT_CHATTER)
            os.replace(building, final)  # type: ignore[arg-type]
            seal(final)  # type: ignore[arg-type]
            make_room(WEIGHT_CACHE, keep=final)  # type: ignore[arg-type]
            cache = str(final)
            forget(view)
            self._model = _compile(view, threads, cache)
        self.weight_cache = cache
        if cache:
            forget(view)  # XNNPACK runs from the cache: let go the model pages compiling read, for good
        specs = self._model.inputs
        self._dynamic = dynamic_inputs(view)
        # input position -> its one buffer's array and (address, bytes): a call compares
        # each input with it first by identity (60 address reads cost ~0.5 ms a token)
        self._static: dict[int, tuple[np.ndarray, tuple[int, int]]] = {}
        self._static_buffers: dict[int, litert_c.HostBuffer] = {}
        for i, spec in enumerate(specs):
            if i not in self._dynamic:
                array = litert_c.aligned_empty(spec.shape, spec.dtype)
                self._static[i] = array, (array.ctypes.data, array.nbytes)
                self._static_buffers[i] = litert_c.HostBuffer(array)
        self._by_shapes: dict[tuple[tuple[int, ...], ...], _Shapes] = {}
        self._current: tuple[tuple[int, ...], ...] | None = None
        # input position -> the whole state's buffer and its address (`input_buffer(rows_of=)`)
        self._prefix: dict[int, tuple[np.ndarray, int]] = {}
        # input position -> the last view of its state prefix found in place: the same view
        # object next call needs no address read (~1.3 us each, 60 per token)
        self._in_place_views: dict[int, Any] = {}

    def __del__(self) -> None:
        model = getattr(self, "_model", None)
        if model is not None:
            close_quietly(model, LITERT_CHATTER)

    def input_buffer(self, position: int, rows_of: tuple[int, ...] | None = None) -> np.ndarray | None:
        """Input ``position``'s storage, as a writable array the model reads in place: a
        static-shape input's one buffer, or, for an input of a dynamic first dim read as
        a state prefix, a buffer of the whole state's shape ``rows_of``, each call's
        prefix of which is bound where it lies (`_bind`). None for other dynamic inputs."""
        found = self._static.get(position)
        if found is not None:
            return found[0]
        if rows_of is None or position not in self._dynamic:
            return None
        if position not in self._prefix:
            array = litert_c.aligned_empty(rows_of, self._model.inputs[position].dtype)
            self._prefix[position] = array, array.ctypes.data
            self._by_shapes.clear()  # bindings made before bound a buffer of their own
        return self._prefix[position][0]

    def run(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        if len(inputs) != len(self._model.inputs):
            from edgeport import InputError

            raise InputError(f"the TFLite model takes {len(self._model.inputs)} inputs, got {len(inputs)}")
        shapes = tuple(tuple(inputs[i].shape) for i in self._dynamic)
        bound = self._by_shapes.get(shapes)
        if bound is None:
            bound = self._bind(shapes)
        for position, (array, address) in self._static.items():
            x = inputs[position]
            if x is not array and _address(x) != address:  # not already in place (the array, or a tensor over it)
                _copy_into(array, x, position)
        in_place = self._in_place_views
        for array, i in zip(bound.inputs, self._dynamic):
            x = inputs[i]
            if x is in_place.get(i):  # the view found in place last call (the runtime passes it again)
                continue
            if i in self._prefix and _address(x)[0] == self._prefix[i][1]:  # a prefix of its buffer: in place
                in_place[i] = x
                continue
            np.copyto(array, as_numpy(x), casting="same_kind")
        if self._current != shapes:
            self._resize(shapes)
        try:
            self._model.run_handles(*bound.handles)
        except litert_c.LiteRtCError as e:
            from edgeport import ExecutionError

            raise ExecutionError(f"LiteRT could not run the model: {e}", hint="run it with EDGEPORT_RAISE_ERRORS=1 "
                                 "and report LiteRT's log above") from None
        return [out.copy() for out in bound.outputs]

    def _resize(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        for i, shape in zip(self._dynamic, shapes):
            self._model.resize_input(i, shape)
        self._current = shapes

    def _bind(self, shapes: tuple[tuple[int, ...], ...]) -> _Shapes:
        """Buffers for inputs of these dynamic shapes and for the outputs they give."""
        specs = self._model.inputs
        for i, shape in zip(self._dynamic, shapes):
            if len(shape) != len(specs[i].shape):
                from edgeport import InputError

                raise InputError(f"input {i} has shape {shape}; the model takes {len(specs[i].shape)} dims")
        try:
            self._resize(shapes)
            out_shapes = self._model.output_shapes()
        except litert_c.LiteRtCError as e:
            from edgeport import InputError

            raise InputError(f"LiteRT refused inputs of shapes {shapes}: {e}",
                             hint="pass inputs of the shapes the program was exported with") from None
        dynamic = [self._prefix_of(i, shape) if i in self._prefix else litert_c.aligned_empty(shape, specs[i].dtype)
                   for i, shape in zip(self._dynamic, shapes)]
        outputs = [litert_c.aligned_empty(shape, spec.dtype) for shape, spec in zip(out_shapes, self._model.outputs)]
        buffers = dict(self._static_buffers)
        buffers.update({i: litert_c.HostBuffer(a) for i, a in zip(self._dynamic, dynamic)})
        in_buffers = [buffers[i] for i in range(len(specs))]
        out_buffers = [litert_c.HostBuffer(a) for a in outputs]
        handles = (litert_c.handle_array(in_buffers), litert_c.handle_array(out_buffers))
        bound = self._by_shapes[shapes] = _Shapes(dynamic, outputs, handles, [in_buffers, out_buffers])
        return bound


    def _prefix_of(self, position: int, shape: tuple[int, ...]) -> np.ndarray:
        """The first rows of input ``position``'s state buffer, at ``shape``: a view from
        its start (contiguous, aligned, with the rest of the buffer as padding after it)."""
        whole = self._prefix[position][0]
        if shape[1:] != whole.shape[1:] or shape[0] > whole.shape[0]:
            from edgeport import InputError

            raise InputError(f"input {position} has shape {shape}, which is no prefix of its state {whole.shape}")
        return whole[: shape[0]]


def _compile(view: memoryview, threads: int, cache: str) -> litert_c.CompiledModel:
    with filter_native_output(drop=LITERT_CHATTER):
        model = litert_c.CompiledModel(view, threads=threads, weight_cache=cache)
    close_before_exit(model, LITERT_CHATTER)
    return model


def _building_name(final: Path) -> Path | None:
    """A name of this process's own beside ``final`` for XNNPACK to build the cache
    under, or None (no cache) when the cache directory cannot be written."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, building = tempfile.mkstemp(prefix=final.stem + ".", suffix=BUILDING_SUFFIX, dir=final.parent)
    except OSError as e:
        log.warning("XNNPACK's weight cache cannot be written to %s (%s): weights are packed in memory",
                    final.parent, e)
        return None
    os.close(fd)
    os.unlink(building)  # XNNPACK creates the file itself; the random name stays ours
    return Path(building)


def dynamic_inputs(model: memoryview) -> list[int]:
    """The positions of the model's inputs that have a dynamic dim (-1 in their
    ``shape_signature``): LiteRT's C API reports the sizes the model was written with."""
    from .schema import tfl

    root = tfl().Model.GetRootAs(model, 0)
    graph = root.Subgraphs(0)
    found = []
    for position in range(graph.InputsLength()):
        tensor = graph.Tensors(graph.Inputs(position))
        if tensor.ShapeSignatureLength() and -1 in tensor.ShapeSignatureAsNumpy():
            found.append(position)
    return found


def _check_names(model: litert_c.CompiledModel, names: tuple[Sequence[str], Sequence[str]] | None) -> None:
    """The signature lists inputs and outputs in the order the program uses (the
    artifact's metadata), so they are bound by position."""
    if names is None:
        return
    inputs, outputs = [s.name for s in model.inputs], [s.name for s in model.outputs]
    if inputs != list(names[0]) or outputs != list(names[1]):
        raise litert_c.LiteRtCError("the model's signature orders its inputs or outputs unlike the artifact's metadata")


def _address(x: Any) -> tuple[int, int]:
    """(address, bytes) of a tensor's or array's memory, without converting it."""
    if is_torch_tensor(x):
        return x.data_ptr(), x.nbytes
    return x.ctypes.data, x.nbytes


def _copy_into(array: np.ndarray, x: Any, position: int) -> None:
    value = as_numpy(x)
    if value.shape != array.shape:
        from edgeport import InputError

        raise InputError(f"input {position} has shape {tuple(value.shape)}; the model takes {array.shape}")
    np.copyto(array, value, casting="same_kind")


