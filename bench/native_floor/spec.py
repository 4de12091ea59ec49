"""What `native_floor.c` needs to know of an LLM program, and the Python session's
greedy ids to check it against (a spike's helper, not part of edgeport).

    python bench/native_floor/spec.py PROGRAM.edgeport --out DIR [--extract] [--reference N --prompt-ids ...]

Writes ``DIR/<stem>.spec``: where the one-graph model lies in the program file (offset
and length of its stored zip entry, so the C program maps the program file as the
session does), the model's inputs and outputs in signature order with each one's role
(tokens, positions, window, a KV-cache state; logits, or the rows a call writes into a
state along a dim: the method plan's row updates), and the prompt ids. Prints the
inputs and outputs (name, shape, dtype) as the model declares them. With
``--extract`` also writes the .tflite itself. With ``--reference N`` prints the ids the
Python session generates greedily for the prompt ids (`Session.generate`).
"""

from __future__ import annotations

import argparse
import json
import struct
import zipfile
from pathlib import Path

DEFAULT_PROMPT_IDS = (504, 3575, 282, 4649, 314)  # "The capital of France is" (SmolLM2's tokenizer)


def entry_range(path: str, name: str) -> tuple[int, int]:
    """(offset, length) of a stored (uncompressed) zip entry's bytes in the file."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        raise SystemExit(f"{name} is compressed; the C program maps stored entries only")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def roles(manifest: dict, artifact: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(input name, role) and (output name, role) in the artifact's order. A state
    input's role is ``state``; a rows output's is ``rows <input index> <dim>``."""
    metadata = manifest["artifacts"][artifact]["metadata"]
    plan = manifest["methods"]["prefill"]
    inputs, outputs = metadata["inputs"], metadata["outputs"]
    state_input = {fqn: inputs.index(name) for name, fqn in plan["state_reads"].items()}
    rows = {u["rows"]: (state_input[u["state"]], u["dim"]) for u in plan["row_updates"]}
    if any(u["positions"] != "positions" for u in plan["row_updates"]):
        raise SystemExit("a row update is not at the call's positions")
    in_roles = [(n, n if n in ("tokens", "positions", "window") else "state") for n in inputs]
    if [n for n, r in in_roles if r != "state"] != ["tokens", "positions", "window"]:
        raise SystemExit("not a one-graph program with a window (tokens, positions, window)")
    out_roles = []
    for name in outputs:
        if name in rows:
            out_roles.append((name, "rows %d %d" % rows[name]))
        elif name in plan["output_values"]:
            out_roles.append((name, "logits"))
        else:
            raise SystemExit(f"output {name} is neither the logits nor a row update")
    return in_roles, out_roles


def describe(model: bytes) -> None:
    """Print the model's inputs and outputs as its graph declares them."""
    from edgeport.backends.tflite.schema import tfl

    root = tfl().Model.GetRootAs(model, 0)
    graph = root.Subgraphs(0)
    names = {v: k for k, v in vars(tfl().TensorType).items() if not k.startswith("_")}
    for kind, count, index in (("input", graph.InputsLength(), graph.Inputs),
                               ("output", graph.OutputsLength(), graph.Outputs)):
        for i in range(count):
            t = graph.Tensors(index(i))
            sig = t.ShapeSignatureAsNumpy().tolist() if t.ShapeSignatureLength() else None
            print(f"{kind} {i:2d} {t.Name().decode():32s} shape {t.ShapeAsNumpy().tolist()} "
                  f"signature {sig} {names.get(t.Type(), t.Type())}")


def reference_ids(program_path: str, ids: list[int], tokens: int) -> list[int]:
    """The Python session's greedy ids for prompt ``ids`` (1 thread)."""
    import edgeport
    from edgeport.llm.session import Session

    session = Session(edgeport.load(program_path), threads=1)
    generation = session.generate(ids, max_new_tokens=tokens)
    for _ in generation:
        pass
    return generation.ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("program")
    parser.add_argument("--out", required=True)
    parser.add_argument("--extract", action="store_true", help="also write the .tflite")
    parser.add_argument("--prompt-ids", type=int, nargs="+", default=list(DEFAULT_PROMPT_IDS))
    parser.add_argument("--reference", type=int, default=0, help="print the session's greedy ids for N tokens")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.program).stem
    with zipfile.ZipFile(args.program) as z:
        manifest = json.loads(z.read("manifest.json"))
    artifacts = [a for a in manifest["artifacts"] if a.endswith(".tflite")]
    if len(artifacts) != 1:
        raise SystemExit(f"expected one .tflite artifact, found {artifacts}")
    artifact = artifacts[0]
    offset, length = entry_range(args.program, artifact)
    in_roles, out_roles = roles(manifest, artifact)
    lines = [f"model {Path(args.program).resolve()} {offset} {length}",
             "prompt " + " ".join(map(str, args.prompt_ids))]
    lines += [f"in {n} {r}" for n, r in in_roles] + [f"out {n} {r}" for n, r in out_roles]
    (out / f"{stem}.spec").write_text("\n".join(lines) + "\n")
    with open(args.program, "rb") as f:
        f.seek(offset)
        model = f.read(length)
    describe(model)
    if args.extract:
        (out / f"{stem}.tflite").write_bytes(model)
    print(f"wrote {out / (stem + '.spec')} (model at offset {offset}, {length} bytes)")
    if args.reference:
        print("python session greedy ids:", " ".join(map(str, reference_ids(args.program, args.prompt_ids,
                                                                             args.reference))))


if __name__ == "__main__":
    main()
