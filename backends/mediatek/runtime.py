"""Running on a MediaTek device: LiteRT's CompiledModel with the NPU accelerator.

LiteRT loads the model through its MediaTek dispatch library: an AOT-compiled model's
bytecode runs as is, a plain TFLite model is compiled for the APU by the compiler plugin
on first load (JIT). Ops the plugin leaves run on LiteRT's CPU (NPU | CPU).

Off a device the backend runs the plain model with `tflite.TfliteExecutable` instead,
labelled "reference (CPU)"; this class only ever means the APU when `npu` is true.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

import edgeport

from . import toolchain


class CompiledModelExecutable:
    """A model loaded once into a LiteRT CompiledModel; `run` fills and reads its buffers.
    Those buffers are shared by every call, so it is not ``thread_safe``: edgeport's
    runtime runs it one call at a time."""

    def __init__(self, model: bytes, threads: int, npu: bool) -> None:
        self._bind(compiled_model(model, threads, npu), 0)

    @classmethod
    def signature_of(cls, compiled: Any, signature: int) -> "CompiledModelExecutable":
        """Signature ``signature`` of an already loaded CompiledModel (a merged model's entry)."""
        executable = cls.__new__(cls)
        executable._bind(compiled, signature)
        return executable

    def _bind(self, compiled: Any, signature: int) -> None:
        self.model = compiled
        self._signature = signature
        self._inputs = compiled.create_input_buffers(signature)
        self._outputs = compiled.create_output_buffers(signature)
        self._out_specs = [_spec(b.get_tensor_details()) for b in self._outputs]

    def run(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        if len(inputs) != len(self._inputs):
            raise edgeport.InputError(f"the model takes {len(self._inputs)} inputs, got {len(inputs)}")
        for buffer, x in zip(self._inputs, inputs):
            buffer.write(edgeport.as_numpy(x))
        self.model.run_by_index(self._signature, self._inputs, self._outputs)
        specs = zip(self._outputs, self._out_specs)
        return [b.read(int(np.prod(shape)), dtype).reshape(shape) for b, (dtype, shape) in specs]


class CompiledModelEntries:
    """A merged model (`MediatekBackend.merge`) loaded once: ``entry(i)`` runs its
    signature i, so the entries' shared weights are in memory once."""

    def __init__(self, model: bytes, threads: int, npu: bool) -> None:
        compiled = compiled_model(model, threads, npu)
        count = compiled.get_num_signatures()
        self._entries = [CompiledModelExecutable.signature_of(compiled, i) for i in range(count)]

    def entry(self, index: int) -> CompiledModelExecutable:
        return self._entries[index]


def compiled_model(model: bytes, threads: int, npu: bool) -> Any:
    """A LiteRT CompiledModel of ``model``: on the APU (plus LiteRT's CPU for what the
    plugin leaves) when ``npu``, else on LiteRT's CPU alone."""
    from ai_edge_litert.compiled_model import CompiledModel, CpuOptions, Environment, HardwareAccelerator, Options

    accelerators = HardwareAccelerator.CPU
    env_paths: dict[str, str] = {}
    if npu:
        dispatch, plugin = toolchain.dispatch_dir(), toolchain.compiler_plugin_dir()
        if dispatch is None:
            raise edgeport.BackendError(f"cannot run on the APU: {toolchain.apu_missing()}")
        accelerators |= HardwareAccelerator.NPU
        env_paths = {"dispatch_library_path": str(dispatch), "compiler_plugin_path": str(plugin or "")}
    env = Environment.create(**env_paths)
    options = Options(hardware_accelerators=accelerators, cpu_options=CpuOptions(num_threads=threads))
    return CompiledModel.from_buffer(model, environment=env, options=options)


def _spec(details: dict[str, Any]) -> tuple[np.dtype, tuple[int, ...]]:
    return np.dtype(details["dtype"]), tuple(int(d) for d in details["shape"])
