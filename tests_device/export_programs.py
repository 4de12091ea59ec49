"""Export the programs the torch-free tests run, with the torch side's outputs.

Run in the full environment (with torch): ``python tests_device/export_programs.py DIR``.
It writes to DIR, per case, ``<case>.edgeport``, ``<case>.npz`` (each call's inputs and
the outputs edgeport's runtime gave here, with torch) and ``cases.json`` (the calls, in
order). The LLM cases (a tiny random Llama on cpu, and on mediatek with cpu taking the
lookups) record a greedy generation instead: its tokens and each step's logits. ``test_device_runtime.py`` then runs the same programs in an environment without
torch and compares (.ci/run does both). Every program but the golden one must be
torch-free, so each is exported with ``require_delegated=True``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import edgeport
import edgeport.llm
from edgeport.output_tree import leaves

TESTS = Path(__file__).resolve().parent.parent / "tests"
GOLDEN = TESTS / "data" / "golden_v1.edgeport"
LLM_BACKENDS = {"llm_cpu": "cpu", "llm_mediatek": "mediatek,cpu"}  # case -> --backend
LLM_PROMPT = "w5 w6 w7 w8 w9 w10 w11"  # the tiny models' words: "w5" is token 5
LLM_NEW_TOKENS = 8


class SmallCnn(torch.nn.Module):
    """Conv, batch norm, relu, pooling and a classifier: what a vision model's layers are."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean((2, 3)))


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.a(x))
        return self.b(h), h.sum(-1)


class WriteRows(torch.nn.Module):
    """Method "write": reads the cache, then writes new rows of it (a row update)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cache", torch.zeros(2, 8, 4))
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        new = self.proj(x)
        out = torch.bmm(new, self.cache.transpose(1, 2)).sum(-1)
        self.cache.index_copy_(1, positions, new)
        return out


class Decay(torch.nn.Module):
    """Method "decay": rewrites the whole cache (a state write) and returns its sums."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cache", torch.zeros(2, 8, 4))

    def forward(self, scale: torch.Tensor) -> torch.Tensor:
        self.cache.mul_(scale)
        return self.cache.sum(-1) + 0.0


def _rand(*shape: int) -> np.ndarray:
    return np.random.default_rng(sum(shape)).standard_normal(shape, dtype=np.float32)


def cases() -> dict[str, tuple[edgeport.Program | None, list[tuple[str, list[np.ndarray]]]]]:
    """case name -> (the program, or None for the golden file; its calls in order)."""
    torch.manual_seed(0)
    cnn = SmallCnn().eval()
    image = (torch.randn(1, 3, 224, 224),)  # the README's device snippet runs the cpu program as is
    image_calls = [("forward", [_rand(1, 3, 224, 224)]), ("forward", [_rand(1, 3, 224, 225)[..., :224].copy()])]
    stateful = edgeport.export_methods(
        {"write": (WriteRows(), (torch.randn(2, 3, 4), torch.arange(3))), "decay": (Decay(), (torch.tensor(0.5),))},
        ["cpu"], require_delegated=True)
    return {
        "cpu": (edgeport.export(cnn, image, ["cpu"], require_delegated=True), image_calls),
        "qualcomm": (edgeport.export(Mlp().eval(), (torch.randn(2, 16),), ["qualcomm"], require_delegated=True),
                     [("forward", [_rand(2, 16)])]),
        "mediatek": (edgeport.export(cnn, image, ["mediatek"], require_delegated=True), image_calls[:1]),
        "stateful": (stateful, [
            ("write", [_rand(2, 3, 4), np.arange(3, dtype=np.int64)]),
            ("decay", [np.array(0.5, dtype=np.float32)]),
            ("write", [_rand(2, 3, 5)[..., :4].copy(), np.arange(4, 7, dtype=np.int64)]),
            ("decay", [np.array(2.0, dtype=np.float32)]),
        ]),
        # format 1, with portable steps (and delegates of the tests' own torchops backend):
        # without torch it is read and explained, and its load is the portable-step error
        "golden_v1": (None, []),
    }


def greedy(program: edgeport.Program, prompt: str, new_tokens: int) -> tuple[list[int], np.ndarray]:
    """``new_tokens`` greedy tokens after ``prompt`` through the program's session, and the
    logits of each step (the device tests run the same loop without torch)."""
    session = edgeport.llm.Session(program)
    logits = [np.asarray(session.prefill(session.text.encode(prompt), 0))]
    tokens = [int(logits[-1].argmax())]
    while len(tokens) < new_tokens:
        logits.append(np.asarray(session.decode(tokens[-1])))
        tokens.append(int(logits[-1].argmax()))
    return tokens, np.stack(logits)


def write_llms(directory: Path, index: dict[str, Any]) -> None:
    sys.path.insert(0, str(TESTS))
    from tiny_llms import tiny_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        model, _ = tiny_model_dir(Path(tmp), "llama")
        for name, backend in LLM_BACKENDS.items():
            path = directory / f"{name}.edgeport"
            edgeport.llm.export(model, backend=backend, max_seq_len=32, prefill_chunk=8).save(path)
            loaded = edgeport.load(path)
            tokens, logits = greedy(loaded, LLM_PROMPT, LLM_NEW_TOKENS)
            np.savez(directory / f"{name}.npz", tokens=np.array(tokens), logits=logits)
            index[name] = {"calls": [], "portable": any(s.kind == "portable" for p in loaded.manifest.methods.values()
                                                        for s in p.steps), "prompt": LLM_PROMPT}


def write(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {}
    for name, (program, calls) in cases().items():
        path = directory / f"{name}.edgeport"
        if program is None:
            shutil.copyfile(GOLDEN, path)
        else:
            program.save(path)
        loaded = edgeport.load(path)  # the torch side's runtime, as a user runs the saved file
        arrays: dict[str, np.ndarray] = {}
        state = loaded.runtime().state if calls else {}
        for i, (method, inputs) in enumerate(calls):
            for j, x in enumerate(inputs):
                arrays[f"call{i}_in{j}"] = x
            outputs = leaves(loaded.run(*[torch.from_numpy(x) for x in inputs], method=method).outputs)
            for k, y in enumerate(outputs):
                arrays[f"call{i}_out{k}"] = y.numpy()
        for fqn, value in state.items():
            arrays[f"state_{fqn}"] = value.numpy()
        np.savez(directory / f"{name}.npz", **arrays)
        index[name] = {"calls": [method for method, _ in calls],
                       "portable": any(s.kind == "portable" for p in loaded.manifest.methods.values() for s in p.steps)}
    write_llms(directory, index)
    (directory / "cases.json").write_text(json.dumps(index, indent=1))


if __name__ == "__main__":
    write(Path(sys.argv[1]))
