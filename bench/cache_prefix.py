"""Issue 16's long-context peak: a KV cache window read with no gathered copy.

A 30-layer attention read of SmolLM2's shape (3 kv heads, 3 query rows per head, d 64,
512-position caches) exported with edgeport's cpu backend in one of three forms, then run
through LiteRT's C API (`litert_c`, as `backends/tflite/compiled.py` does) at windows of
64 / 192 / 448 / 512 rows:

- ``gather``: the cpu program's form until 2026-11-27. Caches ``(kv, S, d)`` are static inputs; a ``window`` input
  0..W-1 `index_select`s their first W rows (60 GATHERs, LiteRT's own kernel).
- ``whole``: caches ``(kv, S, d)`` read whole (the form before the window).
- ``prefix``: caches ``(W, kv, d)`` are inputs of a dynamic leading dim, each bound
  zero-copy to the first W rows of a ``(S, kv, d)`` state array (positions outermost,
  so the prefix is contiguous: the host buffer's address is the state's), and
  transposed to ``(kv, W, d)`` for the batched matmuls inside the XNNPACK partition:
  the cpu program's form since (a `StatePrefix` of its plan).
- ``heads``: as ``prefix``, with one ``(S, d)`` state per kv head (3 x 60 inputs), so
  each head's prefix feeds its matmuls as it is: no transpose.

    python bench/cache_prefix.py prefix|heads|gather|whole [--calls 40]

Run each form in its own process: printed per window are the thread CPU time per call
(min / p10 / median; 1 thread, XNNPACK runs in the calling thread) and the process's RSS
and peak RSS (VmHWM) after the calls; windows run in growing order, so the peak's growth
is what a filling cache adds. The results are checked against torch once, after all
windows (torch's own memory would otherwise count in the peaks).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import zipfile

import numpy as np
import torch

import edgeport

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from backends.tflite import litert_c  # noqa: E402 - the repository's own backend, not an installed copy

LAYERS, KV, ROWS, D, S = 30, 3, 3, 64, 512
WINDOWS = (64, 192, 448, 512)


class Read(torch.nn.Module):
    """``LAYERS`` chained attention reads of one query block over each layer's K and V."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form

    def forward(self, q: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        window, caches = (rest[0], rest[1:]) if self.form == "gather" else (None, rest)
        out = q
        if self.form == "heads":  # one (W, d) K and V per kv head: no transpose
            for i in range(LAYERS):
                pairs = [(caches[2 * (KV * i + h)], caches[2 * (KV * i + h) + 1]) for h in range(KV)]
                read = [torch.softmax(out[h] @ k.T * 0.125, dim=-1) @ v for h, (k, v) in enumerate(pairs)]
                out = q + torch.stack(read) * 0.01
            return out
        for i in range(LAYERS):
            k, v = caches[2 * i], caches[2 * i + 1]
            if self.form == "gather":
                k, v = k.index_select(1, window), v.index_select(1, window)
            elif self.form == "prefix":
                k, v = k.transpose(0, 1), v.transpose(0, 1)  # (W, kv, d) -> (kv, W, d)
            scores = torch.softmax(out @ k.transpose(1, 2) * 0.125, dim=-1)
            out = q + (scores @ v) * 0.01
        return out


def example(form: str) -> tuple[tuple, tuple | None]:
    """The example inputs and dynamic shapes `torch.export` takes for ``form``."""
    q = torch.randn(KV, ROWS, D)
    window = torch.export.Dim("window", min=1, max=S)
    if form == "prefix":
        return (q, *[torch.randn(448, KV, D) for _ in range(2 * LAYERS)]), (None, tuple([{0: window}] * 2 * LAYERS))
    if form == "heads":
        return (q, *[torch.randn(448, D) for _ in range(2 * KV * LAYERS)]), (None, tuple([{0: window}] * 2 * KV * LAYERS))
    caches = [torch.randn(KV, S, D) for _ in range(2 * LAYERS)]
    if form == "gather":
        return (q, torch.arange(448), *caches), (None, ({0: window}, *[None] * 2 * LAYERS))
    return (q, *caches), None


def tflite_model(form: str) -> bytes:
    inputs, dynamic = example(form)
    program = edgeport.export(Read(form).eval(), inputs, ["cpu"], dynamic_shapes=dynamic)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{form}.edgeport")
        program.save(path)
        with zipfile.ZipFile(path) as archive:
            (name,) = [n for n in archive.namelist() if n.endswith(".tflite")]
            return archive.read(name)


def memory_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def inputs_for(form: str, W: int, model: litert_c.CompiledModel, q: np.ndarray, state: list[np.ndarray]) -> list:
    """Host buffers of the model's inputs (in its signature's order) for a window of W,
    resizing the model's dynamic inputs first."""
    names = [s.name for s in model.inputs]
    by_name = {"q": litert_c.HostBuffer(q)}
    if form == "gather":
        window = litert_c.aligned_empty((W,), model.inputs[names.index("rest_0")].dtype)
        window[...] = np.arange(W)
        model.resize_input(names.index("rest_0"), (W,))
        by_name["rest_0"] = litert_c.HostBuffer(window)
        by_name.update({f"rest_{i + 1}": litert_c.HostBuffer(s) for i, s in enumerate(state)})
    elif form in ("prefix", "heads"):
        for i, s in enumerate(state):
            model.resize_input(names.index(f"rest_{i}"), (W, *s.shape[1:]))
        prefixes = [s[:W] for s in state]
        assert all(p.ctypes.data == s.ctypes.data for p, s in zip(prefixes, state)), "a prefix is not in place"
        by_name.update({f"rest_{i}": litert_c.HostBuffer(p) for i, p in enumerate(prefixes)})
    else:
        by_name.update({f"rest_{i}": litert_c.HostBuffer(s) for i, s in enumerate(state)})
    return [by_name[n] for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("form", choices=("prefix", "heads", "gather", "whole"))
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    form = args.form
    model_bytes = tflite_model(form)
    model = litert_c.CompiledModel(memoryview(model_bytes), threads=1)
    rng = np.random.default_rng(0)
    shape = {"prefix": (S, KV, D), "heads": (S, D)}.get(form, (KV, S, D))
    state = [litert_c.aligned_empty(shape, np.float32) for _ in range(2 * LAYERS * (KV if form == "heads" else 1))]
    for s in state:
        s[...] = rng.standard_normal(s.shape, dtype=np.float32)
    q = litert_c.aligned_empty((KV, ROWS, D), np.float32)
    q[...] = rng.standard_normal(q.shape, dtype=np.float32)
    print(f"{form}: before the first call RSS {memory_mib()[0]:.1f} MiB", flush=True)
    outputs = {}
    for W in WINDOWS:
        buffers = inputs_for(form, W, model, q, state)
        (shape,) = model.output_shapes()
        out = litert_c.aligned_empty(shape, np.float32)
        out_buffers = [litert_c.HostBuffer(out)]
        model.run(buffers, out_buffers)
        times = []
        for _ in range(args.calls):
            start = time.thread_time()
            model.run(buffers, out_buffers)
            times.append((time.thread_time() - start) * 1e3)
        times.sort()
        rss, peak = memory_mib()
        print(f"{form} W={W}: {times[0]:.2f} / {times[len(times) // 10]:.2f} / {times[len(times) // 2]:.2f} ms "
              f"(min / p10 / median); RSS {rss:.1f}, peak {peak:.1f} MiB", flush=True)
        outputs[W] = out.copy()
    with torch.no_grad():
        for W, out in outputs.items():
            if form in ("prefix", "heads"):
                ref = Read(form)(torch.from_numpy(q), *[torch.from_numpy(s[:W]) for s in state])
            else:
                window = (torch.arange(W),) if form == "gather" else ()
                ref = Read(form)(torch.from_numpy(q), *window, *[torch.from_numpy(s) for s in state])
            print(f"  W={W}: max |torch - LiteRT| {float((ref - torch.from_numpy(out)).abs().max()):.2e}")


if __name__ == "__main__":
    main()
