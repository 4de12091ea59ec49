"""Ways to hand a one-step cpu program its input, timed side by side (issue 14).

    PYTHONPATH=<tree> /work/benchvenv/bin/python bench/input_paths.py --program int8.edgeport [--pte int8.pte] [--runs 400] [--threads 1]

The program must be one cpu (LiteRT) step exported for ``--threads`` threads (e.g. what
``quantize.py`` saves); ``--pte`` adds ExecuTorch's model of the same network as the
anchor (needs ExecuTorch). At 1 thread each call is timed by the calling thread's CPU
time, else by wall time; all callers alternate in blocks of 5 (quantize_reference.py).

Callers, all on the same input tensor:
- ``program(x)`` (the direct call of a one-step method) and ``program.run(x)`` (the plan walk);
- a bare LiteRT interpreter: ``set_tensor`` of the float input + ``invoke`` + ``get_tensor``;
  the same with ``invoke`` alone (the input already in place: what a zero-copy input
  could save at most); the input written by ``numpy.copyto`` into the interpreter's buffer;
- LiteRT's ``CompiledModel``: its own input buffer written per call, and zero-copy
  (``TensorBuffer.create_from_host_memory``). Host-memory buffers are rank 1 in LiteRT
  2.3's Python API and a CompiledModel refuses a buffer of another shape than a static
  input's, so the zero-copy caller runs a copy of the model whose input is the flat
  [N] float: QUANTIZE on [N], then a RESHAPE of the int8 to the model's NCHW shape.

Reads the runtime's private fields to reach the step's interpreter: a measurement, not API.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import tempfile
import time

import numpy as np
import torch

import edgeport
from quantize import load_bench  # bench/ is the script's directory



def flat_input_model(model_bytes: bytes, path: str) -> str:
    """The model with its float input flattened to [N]: the leading QUANTIZE runs on the
    flat tensor and a RESHAPE gives the int8 its old shape."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(model_bytes, 0)
    graph = model.subgraphs[0]
    quantize = graph.operators[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    if codes[quantize.opcodeIndex] != schema.BuiltinOperator.QUANTIZE:
        raise SystemExit("the model must start with the QUANTIZE of its float input")
    if schema.BuiltinOperator.RESHAPE not in codes:
        model.operatorCodes.append(schema.OperatorCodeT())
        model.operatorCodes[-1].builtinCode = model.operatorCodes[-1].deprecatedBuiltinCode = schema.BuiltinOperator.RESHAPE
        codes.append(schema.BuiltinOperator.RESHAPE)
    shape = list(graph.tensors[graph.inputs[0]].shape)

    def tensor(name: bytes, like: int, dims: list[int], data: bytes | None = None) -> int:
        new = schema.TensorT()
        new.name, new.shape, new.type = name, dims, graph.tensors[like].type
        new.quantization = graph.tensors[like].quantization
        model.buffers.append(schema.BufferT())
        model.buffers[-1].data, new.buffer = data, len(model.buffers) - 1
        graph.tensors.append(new)
        return len(graph.tensors) - 1

    flat = tensor(b"input_flat", graph.inputs[0], [int(np.prod(shape))])
    flat_q = tensor(b"input_flat_q", quantize.outputs[0], [int(np.prod(shape))])
    dims = tensor(b"input_shape", graph.inputs[0], [len(shape)], np.array(shape, np.int32).tobytes())
    graph.tensors[dims].type, graph.tensors[dims].quantization = schema.TensorType.INT32, None
    reshape = schema.OperatorT()
    reshape.opcodeIndex, reshape.inputs, reshape.outputs = codes.index(schema.BuiltinOperator.RESHAPE), [flat_q, dims], [quantize.outputs[0]]
    quantize.inputs, quantize.outputs = [flat], [flat_q]
    graph.operators.insert(1, reshape)
    graph.inputs = [flat]
    for signature in model.signatureDefs or []:
        signature.inputs[0].tensorIndex = flat
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with open(path, "wb") as f:
        f.write(builder.Output())
    return path


def callers(program: edgeport.Program, x: torch.Tensor, threads: int, tmp: str) -> dict:
    from ai_edge_litert.compiled_model import CompiledModel, CpuOptions, Options, TensorBuffer

    (step,) = program.runtime()._methods[program.default_method][1]
    interpreter = step.executable.interpreter
    source, target = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    view = interpreter.tensor(source)()
    buffer = np.frombuffer((ctypes.c_byte * view.nbytes).from_address(view.ctypes.data), view.dtype).reshape(view.shape)
    del view  # LiteRT refuses to invoke while a view it handed out is alive
    model_bytes = bytes(next(d for p, d in program.files.items() if p.endswith(".tflite")))
    options = Options(cpu_options=CpuOptions(num_threads=threads))
    own = CompiledModel.from_buffer(model_bytes, options=options)
    own_in, own_out = own.create_input_buffers(0), own.create_output_buffers(0)
    flat = CompiledModel.from_file(flat_input_model(model_bytes, os.path.join(tmp, "flat.tflite")), options=options)
    flat_out = flat.create_output_buffers(0)
    size = int(np.prod(interpreter.get_output_details()[0]["shape"]))

    def bare() -> object:
        interpreter.set_tensor(source, x.numpy())
        interpreter.invoke()
        return interpreter.get_tensor(target)

    def copyto() -> object:
        np.copyto(buffer, x.numpy())
        interpreter.invoke()
        return interpreter.get_tensor(target)

    def own_buffer() -> object:
        own_in[0].write(x.numpy())
        own.run_by_index(0, own_in, own_out)
        return own_out[0].read(size, np.float32)

    def zero_copy() -> object:
        flat.run_by_index(0, [TensorBuffer.create_from_host_memory(x.numpy().reshape(-1))], flat_out)
        return flat_out[0].read(size, np.float32)

    return {"program(x), direct": lambda: program(x), "program.run(x), walk": lambda: program.run(x).outputs,
            "interpreter set_tensor": bare, "interpreter invoke only": lambda: (interpreter.invoke(), interpreter.get_tensor(target)),
            "interpreter copyto buffer": copyto, "CompiledModel own buffer": own_buffer, "CompiledModel zero-copy": zero_copy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--program", required=True)
    parser.add_argument("--pte", help="ExecuTorch's .pte of the same network: the anchor")
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1, help="what the program was exported for")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    program = edgeport.load(args.program)
    x = torch.randn(program.manifest.methods[program.default_method].inputs[0].shape, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        calls = callers(program, x, args.threads, tmp)
        expected = np.asarray(program(x)).ravel()
        for name, call in calls.items():
            got = call()
            got = np.asarray(got[-1] if isinstance(got, tuple) else got).ravel()
            assert np.array_equal(got, expected), f"{name} computes something else"
        if args.pte:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(args.threads)
            method = load_bench("cpu_vs_executorch").executorch_method(args.pte)
            calls["ExecuTorch"] = lambda: method.execute([x])
        clock = time.thread_time if args.threads == 1 else time.perf_counter
        lat = load_bench("quantize_reference").alternate(calls, args.runs, clock)
    stats = {k: (statistics.median(v), statistics.quantiles(v, n=10)[0], min(v)) for k, v in lat.items()}
    anchor = stats.get("ExecuTorch", stats["interpreter set_tensor"])
    print(f"{'CPU time of the calling thread' if args.threads == 1 else 'wall time'}, ms median / p10 / min, "
          f"and the ratio to {'ExecuTorch' if 'ExecuTorch' in stats else 'the bare interpreter'}")
    for name, (med, p10, low) in stats.items():
        print(f"  {name:28s} {med:6.3f} / {p10:6.3f} / {low:6.3f}   " + " ".join(f"{a / b:.3f}" for a, b in zip((med, p10, low), anchor)))


if __name__ == "__main__":
    main()
