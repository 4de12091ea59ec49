"""Which of a .tflite model's buffers the resident pages `native_floor` listed fall in
(a spike's helper): what LiteRT read from the mapped model at run time.

    python bench/native_floor/pages.py MODEL.tflite PAGES.txt

PAGES.txt holds page indices counted from the model's first byte (the C program's
PAGES_OUT). Prints, per constant buffer with resident pages, its tensor names, the
operators reading it, its size and how much of it is resident, largest first.
"""

from __future__ import annotations

import argparse
import mmap
from collections import defaultdict

import numpy as np

PAGE = mmap.PAGESIZE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("pages")
    args = parser.parse_args()
    from edgeport.backends.tflite.schema import tfl

    with open(args.model, "rb") as f:
        data = f.read()
    base = np.frombuffer(data, np.uint8).ctypes.data
    with open(args.pages) as f:
        resident = {int(line) for line in f if line.strip()}
    schema = tfl()
    root = schema.Model.GetRootAs(data, 0)
    graph = root.Subgraphs(0)
    opnames = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    readers: dict[int, set[str]] = defaultdict(set)  # tensor -> operators reading it
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = root.OperatorCodes(op.OpcodeIndex())
        name = opnames.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        for k in range(op.InputsLength()):
            readers[op.Inputs(k)].add(name)
    names: dict[int, list[int]] = defaultdict(list)  # buffer -> tensors
    for t in range(graph.TensorsLength()):
        names[graph.Tensors(t).Buffer()].append(t)
    rows = []
    covered: set[int] = set()
    for b in range(root.BuffersLength()):
        buffer = root.Buffers(b)
        if buffer.DataLength() == 0:
            continue
        start = buffer.DataAsNumpy().ctypes.data - base
        end = start + buffer.DataLength()
        pages = set(range(start // PAGE, (end - 1) // PAGE + 1))
        hit = pages & resident
        covered |= hit
        if hit:
            tensors = names.get(b, [])
            label = ", ".join(graph.Tensors(t).Name().decode() for t in tensors[:2])
            ops = sorted({o for t in tensors for o in readers.get(t, ())})
            rows.append((len(hit), buffer.DataLength(), label, ops))
    rows.sort(reverse=True)
    print(f"resident: {len(resident)} pages ({len(resident) * PAGE / 2**20:.1f} MiB); "
          f"in constant buffers {len(covered)}; elsewhere (flatbuffer tables) {len(resident - covered)}")
    for hit, size, label, ops in rows[:15]:
        print(f"{hit * PAGE / 2**20:7.2f} MiB resident of {size / 2**20:7.2f} MiB  {label[:60]:60s} read by {ops}")
    print(f"... {len(rows)} buffers with resident pages")


if __name__ == "__main__":
    main()
