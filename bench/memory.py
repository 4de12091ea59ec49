"""Peak memory of running a program: `edgeport run` and `edgeport llm generate` against
eager PyTorch and against what they cannot avoid holding.

    python bench/memory.py                                   # the example models, --repeat 20
    python bench/memory.py --llm "/tmp/llmb/smol-{variant}.edgeport"   # and the LLM variants

Every figure is one fresh process's peak resident set (Linux's VmHWM, read by the
process itself at its end: a parent's ``ru_maxrss`` of a child counts the parent's
own pages when the child was forked from it). Per example model (`examples/models.py`,
exported for cpu into ``--dir`` if missing):

- ``edgeport run PROGRAM --repeat N`` (the CLI, in-process: imports, load, N calls; a
  program of delegate steps runs on numpy values, without importing torch);
- the Python API with torch tensors: ``import torch``, ``edgeport.load``, N calls;
- eager PyTorch: the same model built and called N times under ``torch.no_grad``;
- ``import torch``, and the imports ``edgeport run`` makes before it loads anything
  (torch, edgeport, its CLI, LiteRT): the floor every torch-side run starts from;
- the budget of issue 13: artifact bytes + imports + activations, where activations are
  eager's peak minus ``import torch`` minus the parameters' bytes (what eager holds
  beyond its weights). Goal: ``edgeport run`` <= 1.1x the budget.

Per LLM variant (``--llm``, a path with ``{variant}``): ``edgeport llm generate`` of a
16-token greedy answer, against the program's weights (its artifact bytes) plus its KV
cache (its state bytes). Goal: <= 1.3x. The cpu backend packs the weights into XNNPACK's
weight cache on the first load and maps it on later ones: each variant runs with an
empty cache directory (``EDGEPORT_CACHE_DIR``, built), then again (reused). "Floor" is
the same process before any weight is loaded (the CLI's imports, the program's manifest
and tokenizer, LiteRT's library): what a Python runtime holds whatever the weights.
With ``--native``, also ``edgeport llm generate --native`` (the native runner, which
replaces the Python process and reports its own VmHWM), cache built and reused.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edgeport.arrays import stored_size
from edgeport.program import read_program_file

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("mobilenet_v2", "resnet18", "transformer_encoder")
VARIANTS = ("fp32", "int8-dynamic", "int4-weight")
MB = 1 << 20

PEAK = """
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""

# argv: repeat, then the CLI's own arguments
CLI_CHILD = PEAK + """
import json, sys, contextlib, io
from edgeport.cli import cli
with contextlib.redirect_stdout(io.StringIO()):
    cli.main(sys.argv[1:], standalone_mode=False)
print(json.dumps({"peak": _peak()}))
"""

# argv: program, repeat: the Python API with torch tensors (torch imported first)
TORCH_API_CHILD = PEAK + """
import json, sys
import torch, edgeport
program = edgeport.load(sys.argv[1])
plan = program.manifest.methods[program.default_method]
inputs = [torch.randn(*s.shape) if s.dtype == "float32" else torch.zeros(*s.shape, dtype=torch.long) for s in plan.inputs]
for _ in range(int(sys.argv[2])):
    program(*inputs)
print(json.dumps({"peak": _peak()}))
"""

# argv: model name, repeat
EAGER_CHILD = PEAK + """
import json, sys
import torch
sys.path.insert(0, "examples")
import models
model, inputs = models.FACTORIES[sys.argv[1]]()
with torch.no_grad():
    for _ in range(int(sys.argv[2])):
        model(*inputs)
params = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
print(json.dumps({"peak": _peak(), "params": params}))
"""

IMPORTS_CHILD = PEAK + """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps({"peak": _peak()}))
"""


# argv: an LLM program: what `llm generate` holds before it loads any weight
LLM_FLOOR_CHILD = PEAK + """
import json, sys
import edgeport, edgeport.cli
from edgeport.backends.tflite import litert_c
from edgeport.llm.session import session_of
session = session_of(edgeport.load(sys.argv[1]))
session.text.encode("The capital of France is")
litert_c.library()
print(json.dumps({"peak": _peak()}))
"""


def child(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def export_missing(directory: Path) -> None:
    for name in MODELS:
        path = directory / f"{name}.edgeport"
        if not path.exists():
            subprocess.run(["edgeport", "export", f"examples/models.py:{name}", "--backend", "cpu", "-o", str(path)],
                           cwd=ROOT, check=True, capture_output=True)


def entry_bytes(path: Path, prefix: str) -> int:
    with zipfile.ZipFile(path) as archive:
        return sum(i.file_size for i in archive.infolist() if i.filename.startswith(prefix))


def models_table(directory: Path, repeat: int) -> list[str]:
    torch_only = child(IMPORTS_CHILD, "torch")["peak"]
    imports = child(IMPORTS_CHILD, "torch", "edgeport.cli", "ai_edge_litert.interpreter")["peak"]
    rows = ["| model | artifact | params | `import torch` | run's imports | activations | budget | "
            "`edgeport run` | / budget | Python API, torch tensors | / budget | eager | run / eager |",
            "|---" * 13 + "|"]
    for name in MODELS:
        path = directory / f"{name}.edgeport"
        run = child(CLI_CHILD, "run", str(path), "--repeat", str(repeat))["peak"]
        api = child(TORCH_API_CHILD, str(path), str(repeat))["peak"]
        eager = child(EAGER_CHILD, name, str(repeat))
        artifact = entry_bytes(path, "artifacts/")
        activations = max(0, eager["peak"] - torch_only - eager["params"])
        budget = artifact + imports + activations
        rows.append(f"| {name} | {artifact / MB:.0f} | {eager['params'] / MB:.0f} | {torch_only / MB:.0f} | "
                    f"{imports / MB:.0f} | {activations / MB:.0f} | {budget / MB:.0f} | {run / MB:.0f} | "
                    f"{run / budget:.2f}x | {api / MB:.0f} | {api / budget:.2f}x | {eager['peak'] / MB:.0f} | "
                    f"{run / eager['peak']:.2f}x |")
    return rows


def native_peak(path: Path, tokens: int, cache_dir: str) -> int:
    """``edgeport llm generate --native``'s peak (the runner's own VmHWM, in its JSON)."""
    out = subprocess.run([sys.executable, "-m", "edgeport.cli", "llm", "generate", str(path), "--prompt",
                          "The capital of France is", "--max-new-tokens", str(tokens), "--native", "--json"],
                         cwd=ROOT, check=True, capture_output=True, text=True,
                         env={**os.environ, "EDGEPORT_CACHE_DIR": cache_dir})
    return int(json.loads(out.stdout)["stats"]["peak_rss_mb"] * MB)


def llm_table(pattern: str, tokens: int, native: bool = False) -> list[str]:
    rows = ["| variant | weights (artifact) | KV cache (state) | floor | `llm generate` peak, cache built | "
            "/ (weights + cache) | peak, cache reused | / (weights + cache) | 1.3x budget |"
            + (" `--native`, cache built | / (weights + cache) | `--native`, reused | / (weights + cache) |"
               if native else ""),
            "|---" * (13 if native else 9) + "|"]
    for variant in VARIANTS:
        path = Path(pattern.format(variant=variant))
        if not path.exists():
            continue
        generate = (CLI_CHILD, "llm", "generate", str(path), "--prompt", "The capital of France is",
                    "--max-new-tokens", str(tokens))
        with tempfile.TemporaryDirectory() as cache_dir:
            built = child(*generate, env={"EDGEPORT_CACHE_DIR": cache_dir})["peak"]
            reused = child(*generate, env={"EDGEPORT_CACHE_DIR": cache_dir})["peak"]
        floor = child(LLM_FLOOR_CHILD, str(path))["peak"]
        weights = entry_bytes(path, "artifacts/")
        cache = sum(stored_size(entry) for entry in read_program_file(path)[0].state.values())  # a fill, no file
        must = weights + cache
        row = (f"| {variant} | {weights / MB:.0f} | {cache / MB:.1f} | {floor / MB:.0f} | {built / MB:.0f} | "
               f"{built / must:.2f}x | {reused / MB:.0f} | {reused / must:.2f}x | {1.3 * must / MB:.0f} |")
        if native:
            with tempfile.TemporaryDirectory() as cache_dir:
                peaks = [native_peak(path, tokens, cache_dir) for _ in ("built", "reused")]
            row += "".join(f" {peak / MB:.0f} | {peak / must:.2f}x |" for peak in peaks)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/memory_bench"), help="where the programs are")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--llm", help='LLM programs, e.g. "/tmp/llmb/smol-{variant}.edgeport"')
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--native", action="store_true", help="LLMs: also `llm generate --native`")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; MB = MiB")
    if not args.skip_models:
        export_missing(args.dir)
        print("\n".join(models_table(args.dir, args.repeat)))
    if args.llm:
        print("\n".join(llm_table(args.llm, args.tokens, args.native)))


if __name__ == "__main__":
    main()
