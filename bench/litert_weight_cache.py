"""What XNNPACK's weight cache would save an LLM program: LiteRT's Interpreter (what the
cpu backend runs) against its CompiledModel with and without the cache.

    python bench/litert_weight_cache.py /tmp/llmb/smol-int8-dynamic.edgeport

The program's merged TFLite model (prefill and decode, one subgraph each) is written to
``--dir`` as a plain .tflite, then each way of loading it runs in a fresh process: load,
call every signature once on zeros (XNNPACK packs a subgraph's weights on its first
call), and report the process's peak RSS (VmHWM) and, at the end, its anonymous and
file-backed resident pages. No edgeport and no torch in these processes: the figures
are LiteRT's alone (Python + numpy + LiteRT is the floor, ~30 MB here).

- ``interpreter``: ``Interpreter(model_content=bytes)``, as edgeport loads it: the
  model's bytes plus one packed copy per subgraph (the Interpreter's default XNNPACK
  delegate has no weight cache, and its Python API takes no XNNPACK options);
- ``compiled``: ``CompiledModel.from_buffer``, no cache;
- ``compiled+cache``: the same with ``CpuOptions(xnnpack_weight_cache_path=FILE)``:
  packed once, into a file both subgraphs share;
- ``compiled-file+cache``: ``CompiledModel.from_file`` (LiteRT maps the model file
  itself) with the cache file: first load (builds the cache), then again (reuses it);
- ``compiled+memory-cache``: the in-memory cache (path ``":memory"``, a memfd);
- ``c-api+cache``: LiteRT's C API (`edgeport.backends.tflite.litert_c`, what the cpu
  backend loads an LLM's model with): the model read in place from a map of the file,
  every input and output a full-rank host buffer over a numpy array (dynamic dims at 1,
  a decode step; the model is the program's entry, mapped, as edgeport loads it), the
  cache file built, then again (reused).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

CHILD = r"""
import json, os, sys
import numpy as np
mode, model, cache = sys.argv[1], sys.argv[2], sys.argv[3]

def zeros(details):
    z = np.zeros([int(x) for x in details["shape"]], np.dtype(details["dtype"]))
    return z.view(np.int32) if z.dtype == np.int64 else z  # TensorBuffer.write takes no int64: same zero bytes

if mode == "c-api+cache":
    from edgeport.backends.tflite import litert_c
    from edgeport.program import read_program_file
    _, files = read_program_file(sys.argv[4])  # the entry as edgeport loads it: a view of the mapped program
    (view,) = [v for name, v in files.items() if name.startswith("artifacts/") and name.endswith(".tflite")]
    compiled = litert_c.CompiledModel(view, threads=1, weight_cache=cache)
    for i, spec in enumerate(compiled.inputs):
        compiled.resize_input(i, [1 if d < 0 else d for d in spec.shape])
    inputs = [litert_c.aligned_empty([1 if d < 0 else d for d in s.shape], s.dtype) for s in compiled.inputs]
    outputs = [litert_c.aligned_empty(shape, s.dtype) for shape, s in zip(compiled.output_shapes(), compiled.outputs)]
    compiled.run([litert_c.HostBuffer(a) for a in inputs], [litert_c.HostBuffer(a) for a in outputs])
elif mode == "interpreter":
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=open(model, "rb").read(), num_threads=1)
    interpreter.allocate_tensors()
    for key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(key)
        runner(**{n: np.zeros(d["shape"], d["dtype"]) for n, d in runner.get_input_details().items()})
else:
    from ai_edge_litert.compiled_model import CompiledModel, CpuOptions, HardwareAccelerator, Options
    path = {"compiled": "", "compiled+memory-cache": ":memory"}.get(mode, cache)
    options = Options(hardware_accelerators=HardwareAccelerator.CPU,
                      cpu_options=CpuOptions(num_threads=1, xnnpack_weight_cache_path=path))
    if mode.startswith("compiled-file"):
        compiled = CompiledModel.from_file(model, options=options)
    else:
        compiled = CompiledModel.from_buffer(open(model, "rb").read(), options=options)
    for i in range(compiled.get_num_signatures()):
        inputs, outputs = compiled.create_input_buffers(i), compiled.create_output_buffers(i)
        for buffer in inputs:
            buffer.write(zeros(buffer.get_tensor_details()))
        compiled.run_by_index(i, inputs, outputs)
status = {line.split(":")[0]: int(line.split()[1]) // 1024 for line in open("/proc/self/status")
          if line.startswith(("VmHWM", "RssAnon", "RssFile", "RssShmem"))}
print(json.dumps(status))
"""

MODES = ("interpreter", "compiled", "compiled+cache", "compiled-file+cache", "compiled-file+cache (reused)",
         "compiled+memory-cache", "c-api+cache", "c-api+cache (reused)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("program", type=Path)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/memory_bench/weight_cache"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    model = args.dir / (args.program.stem + ".tflite")
    with zipfile.ZipFile(args.program) as archive:
        (name,) = [n for n in archive.namelist() if n.startswith("artifacts/") and n.endswith(".tflite")]
        model.write_bytes(archive.read(name))
    cache = args.dir / (args.program.stem + ".xnnpack_cache")
    print(f"{args.program.name}: model {model.stat().st_size / 2**20:.0f} MiB (MiB below)")
    print("| load | peak RSS | anonymous | file-backed | shared memory | cache file |")
    print("|---|---|---|---|---|---|")
    for mode in MODES:
        if "reused" not in mode and cache.exists():
            cache.unlink()
        done = subprocess.run([sys.executable, "-c", CHILD, mode.split(" ")[0], str(model), str(cache), str(args.program)],
                              capture_output=True, text=True, check=True)
        status = json.loads(done.stdout.strip().splitlines()[-1])
        size = f"{cache.stat().st_size / 2**20:.0f}" if cache.exists() and "cache" in mode else ""
        print(f"| {mode} | {status['VmHWM']} | {status['RssAnon']} | {status['RssFile']} | {status['RssShmem']} | "
              f"{size} |")
    os.remove(model)
    if cache.exists():
        cache.unlink()


if __name__ == "__main__":
    main()
