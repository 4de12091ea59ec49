"""The run side without torch: what a device saves by not installing PyTorch.

    python bench/runtime.py                     # --device-venv /tmp/edgeport-device --runs 7 --calls 200

MobileNetV2 exported here for the cpu backend, then run in fresh processes by:

- edgeport in a runtime-only virtualenv (``pip install -e '.[runtime-cpu]'``: numpy and
  LiteRT, no torch), made at ``--device-venv`` if it is not there yet;
- edgeport in this, the full environment (torch installed: values are torch tensors,
  so the runtime imports torch, as it always did);
- LiteRT's interpreter alone on the program's .tflite artifact (in the runtime-only
  virtualenv): the floor, what running the model costs with no edgeport at all.

Installed sizes: the runtime-only virtualenv, one with ``edgeport[cpu]`` (torch and
LiteRT: the smallest that exports for cpu; made at ``--cpu-venv`` if missing) and this one.

Per process: cold start (the wall clock from the parent starting the process to the end
of its first inference: interpreter start, imports, load, first inference), peak RSS after ``--calls`` steady calls (VmHWM), and
the median latency of those calls; each the median of ``--runs`` processes, the rows
interleaved. Also each virtualenv's installed size and ``edgeport --help``'s time. One
run; every figure compared is from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh process: argv = mode, program or .tflite, input .npy, calls.
CHILD = r"""
import json, os, sys, time
start = time.perf_counter()
mode, path, input_path, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import numpy as np
x = np.load(input_path)
if mode == "edgeport":
    import edgeport
    program = edgeport.load(path)
    run = lambda: program(x)
else:
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=open(path, "rb").read(), num_threads=len(os.sched_getaffinity(0)))
    interpreter.allocate_tensors()
    source, result = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    def run():
        interpreter.set_tensor(source, x)
        interpreter.invoke()
        return interpreter.get_tensor(result)
def peak_rss_mb():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so a child of a
    # big parent (this one has torch loaded) would report the parent's peak
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
first = run()
first_at, cold = time.time(), time.perf_counter() - start
for _ in range(20):
    run()
times = []
for _ in range(calls):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"first_at": first_at, "cold_in_process_s": cold, "steady_ms": 1e3 * times[len(times) // 2],
                  "peak_rss_mb": peak_rss_mb(),
                  "torch_imported": "torch" in sys.modules, "first": np.asarray(first).ravel()[:4].tolist()}))
"""


def export_program(workdir: Path) -> tuple[Path, Path, Path]:
    """MobileNetV2 for cpu, saved; its .tflite artifact; an input image."""
    import torch

    import edgeport
    sys.path.insert(0, str(ROOT / "examples"))
    from models import mobilenet_v2

    model, inputs = mobilenet_v2()
    program = edgeport.export(model, inputs, ["cpu"], require_delegated=True)
    program.save(workdir / "mbv2.edgeport")
    (artifact,) = program.manifest.artifacts
    (workdir / "mbv2.tflite").write_bytes(program.files[artifact])
    np.save(workdir / "x.npy", torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).numpy())
    return workdir / "mbv2.edgeport", workdir / "mbv2.tflite", workdir / "x.npy"


def venv(where: Path, *requirements: str) -> tuple[Path, float | None]:
    """A virtualenv's python (made with ``requirements`` if missing), and its install time."""
    python = where / "bin" / "python"
    if python.exists():
        return python, None
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    return python, time.perf_counter() - start


def installed_mb(prefix: Path) -> float:
    """Bytes under a virtualenv (its site-packages and everything else), in MB."""
    return sum(f.stat().st_size for f in prefix.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def spawn(python: Path, mode: str, target: Path, x: Path, calls: int) -> dict:
    """One fresh process: its figures, and its cold start: from the parent starting it
    to the end of its first inference (the wall clock, read by both)."""
    start = time.time()
    out = subprocess.run([str(python), "-c", CHILD, mode, str(target), str(x), str(calls)],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return {**figures, "cold_s": figures["first_at"] - start}


def measure(rows: dict[str, tuple[Path, str, Path]], x: Path, runs: int, calls: int) -> dict[str, dict]:
    """Each row's process ``runs`` times, the rows interleaved (so load from other work
    on the machine falls on all alike), after one untimed process each (file cache, .pyc)."""
    for python, mode, target in rows.values():
        spawn(python, mode, target, x, 1)
    samples: dict[str, list[dict]] = {name: [] for name in rows}
    for _ in range(runs):
        for name, (python, mode, target) in rows.items():
            samples[name].append(spawn(python, mode, target, x, calls))
    return {name: {**found[-1], **{key: statistics.median(s[key] for s in found)
                                   for key in ("cold_s", "steady_ms", "peak_rss_mb")}}
            for name, found in samples.items()}


def help_s(python: Path, runs: int) -> float:
    """The median wall time of ``edgeport --help`` in a fresh process."""
    edgeport = python.with_name("edgeport")
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        subprocess.run([str(edgeport), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device-venv", type=Path, default=Path(tempfile.gettempdir()) / "edgeport-device")
    parser.add_argument("--cpu-venv", type=Path, default=Path(tempfile.gettempdir()) / "edgeport-cpu",
                        help="a virtualenv with edgeport[cpu] (torch + LiteRT), measured for its size only")
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per row (cold start: their median)")
    parser.add_argument("--calls", type=int, default=200, help="steady-state calls per process")
    args = parser.parse_args()
    device_python, install_s = venv(args.device_venv, "-e", f"{ROOT}[runtime-cpu]")
    venv(args.cpu_venv, "torch==2.13.0", "-e", f"{ROOT}[cpu]")
    if subprocess.run([str(device_python), "-c", "import torch"], capture_output=True).returncode == 0:
        sys.exit(f"{args.device_venv} has torch: it is not a runtime-only virtualenv")
    with tempfile.TemporaryDirectory() as tmp:
        program, tflite, x = export_program(Path(tmp))
        rows = measure({
            "edgeport, runtime-only venv (no torch)": (device_python, "edgeport", program),
            "edgeport, full venv (torch)": (Path(sys.executable), "edgeport", program),
            "LiteRT interpreter alone, runtime-only venv (floor)": (device_python, "litert", tflite),
        }, x, args.runs, args.calls)
    sizes = {"runtime-only venv": installed_mb(args.device_venv), "edgeport[cpu] venv": installed_mb(args.cpu_venv),
             "full venv": installed_mb(Path(sys.prefix))}
    helps = {"runtime-only venv": help_s(device_python, args.runs), "full venv": help_s(Path(sys.executable), args.runs)}
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}, "
          f"runtime-only install {'%.0f s' % install_s if install_s else '(reused)'}")
    print("| | cold start s | peak RSS MB | steady ms | torch imported |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['cold_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['steady_ms']:.2f} | {r['torch_imported']} |")
    print("installed: " + ", ".join(f"{k} {v:.0f} MB" for k, v in sizes.items()))
    print("edgeport --help: " + ", ".join(f"{k} {v:.2f} s" for k, v in helps.items()))
    first = {name: r["first"] for name, r in rows.items()}
    print("first logits agree:", len({json.dumps(v) for v in first.values()}) == 1, first)


if __name__ == "__main__":
    main()
