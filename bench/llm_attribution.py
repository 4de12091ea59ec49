"""Where the quantized LLM's agreement with fp32 goes: a fake-quantized torch forward.

    python bench/llm_attribution.py $GGUF [--rotated-only] [--match TEXT]   # needs /tmp/edgeport-llm-agreement (llm_agreement.py reference)

edgeport's own decoder (core/llm/model.py) runs the LLM tests' passage (the first 1,024
tokens of the Declaration of Independence, windows of 128) with its ``linear`` swapped
for one that rounds the weights and/or the inputs of chosen linears the way the kernels
do: per-channel int8 or int4 groups of 32 (symmetric or as Q4_1) for weights; per token
(XNNPACK's qd8) or per block of 32 (llama.cpp's) for activations, optionally with each
linear's 8 largest input channels (measured on core/llm/calibration.py's text) left in
float. Nothing is exported: it says which rounding costs what, in seconds per row, so
the real programs only need building for what pays (bench/README.md, "LLM accuracy").
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import edgeport.llm.model as model
from edgeport.llm.calibration import TEXT
from edgeport.llm.loader import load_model
from edgeport.llm.gptq import round_int8_rows
from edgeport.llm.rotation import rotate_decoder
from edgeport.llm.text import TextCodec
from edgeport.llm.weights import build_decoder

OUT = Path("/tmp/edgeport-llm-agreement")
KINDS = ("qkv", "o", "gate_up", "down", "lm_head")


def per_channel_int8(w: torch.Tensor) -> torch.Tensor:
    scale = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
    return (w / scale).round().clamp(-127, 127) * scale


def int4_groups(w: torch.Tensor, asymmetric: bool) -> torch.Tensor:
    blocks = w.reshape(w.shape[0], -1, 32)
    if asymmetric:  # a scale and a float minimum per group: Q4_1's grid
        low = blocks.amin(2, keepdim=True)
        scale = ((blocks.amax(2, keepdim=True) - low) / 15).clamp(min=2**-14).half().float()
        return (((blocks - low) / scale).round().clamp(0, 15) * scale + low).reshape(w.shape)
    scale = (blocks.abs().amax(2, keepdim=True) / 7).clamp(min=2**-14).half().float()
    return ((blocks / scale).round().clamp(-8, 7) * scale).reshape(w.shape)


def per_token(x: torch.Tensor) -> torch.Tensor:
    low, high = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    scale = ((high - low) / 255).clamp(min=1e-12)
    zero = (-128 - low / scale).round()
    return ((x / scale + zero).round().clamp(-128, 127) - zero) * scale


def per_block(x: torch.Tensor) -> torch.Tensor:
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    scale = (blocks.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-12)
    return ((blocks / scale).round() * scale).reshape(x.shape)


WEIGHTS = {"int8": per_channel_int8, "int4": lambda w: int4_groups(w, False), "q4_1": lambda w: int4_groups(w, True)}
ACTIVATIONS = {"token": per_token, "block": per_block}
# name: {linear kind: (weights or None, activations or None, outlier channels kept in float)}
ROWS = {
    "fp32": {},
    "weights int8, activations float": {k: ("int8", None, 0) for k in KINDS},
    "head weights int8 only": {"lm_head": ("int8", None, 0)},
    "activations per token, weights exact": {k: (None, "token", 0) for k in KINDS},
    "activations per block of 32, weights exact": {k: (None, "block", 0) for k in KINDS},
    **{f"activations per token in {k} only": {k: (None, "token", 0)} for k in KINDS[:4]},
    "int8-dynamic before": {k: ("int8", "token", 0) for k in KINDS},
    "int4-weight before": {**{k: ("int4", "token", 0) for k in KINDS[:4]}, "lm_head": ("int8", "token", 0)},
    "int4 as Q4_1, head int8": {**{k: ("q4_1", "token", 0) for k in KINDS[:4]}, "lm_head": ("int8", "token", 0)},
    "per token + 8 outliers, weights exact": {k: (None, "token", 8) for k in KINDS},
    "per token + 32 outliers, weights exact": {k: (None, "token", 32) for k in KINDS},
    "int4 as Q4_1 + 8 outliers everywhere": {**{k: ("q4_1", "token", 8) for k in KINDS[:4]}, "lm_head": ("int8", "token", 8)},
    "int4 as Q4_1 + 8 outliers on qkv, down, head": {"qkv": ("q4_1", "token", 8), "o": ("q4_1", "token", 0),
                                                     "gate_up": ("q4_1", "token", 0), "down": ("q4_1", "token", 8),
                                                     "lm_head": ("int8", "token", 8)},
    "int8 + 8 outliers everywhere": {k: ("int8", "token", 8) for k in KINDS},
    "GPTQ int8, activations float": {k: ("gptq", None, 0) for k in KINDS},
    "GPTQ int8 + 8 outliers everywhere": {k: ("gptq", "token", 8) for k in KINDS},
}
# The same decoder with its residual stream rotated (core/llm/rotation.py), each row against
# the unrotated fp32 reference.
ROTATED_ROWS = {
    "rotated, fp32": {},
    "rotated, weights int8, activations float": {k: ("int8", None, 0) for k in KINDS},
    "rotated, activations per token, weights exact": {k: (None, "token", 0) for k in KINDS},
    "rotated, int8 + per token everywhere": {k: ("int8", "token", 0) for k in KINDS},
    "rotated, int8 + per token, 8 outliers on down": {k: ("int8", "token", 8 if k == "down" else 0) for k in KINDS},
    "rotated, int8 + per token, 8 outliers everywhere": {k: ("int8", "token", 8) for k in KINDS},
    "rotated, int8 + per token, down's activations float": {k: ("int8", None if k == "down" else "token", 0)
                                                            for k in KINDS},
    "rotated, int8 + per token, head float": {k: ("int8", "token", 0) for k in KINDS[:4]},
    "rotated, GPTQ int8, activations float": {k: ("gptq", None, 0) for k in KINDS},
    "rotated, GPTQ int8 + per token, 8 outliers on down": {k: ("gptq", "token", 8 if k == "down" else 0)
                                                         for k in KINDS},
}


class FakeQuantized:
    """The decoder's ``linear``, rounding as the current row says; records input peaks
    while ``observing``."""

    def __init__(self, kinds: dict[int, str]) -> None:
        self.kinds, self.row, self.peaks, self.observing = kinds, {}, {}, False
        self.rounded: dict[tuple[int, str], torch.Tensor] = {}
        self.hessians: dict[int, torch.Tensor] | None = None  # Σ xᵀx per weight, gathered when not None

    def __call__(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.observing:
            peak = x.abs().reshape(-1, x.shape[-1]).amax(0)
            self.peaks[id(w)] = torch.maximum(self.peaks.get(id(w), peak), peak)
            if self.hessians is not None:
                rows = x.reshape(-1, x.shape[-1])
                self.hessians[id(w)] = self.hessians.get(id(w), 0) + rows.T @ rows
            return F.linear(x, w, bias)
        weights, activations, outliers = self.row.get(self.kinds[id(w)], (None, None, 0))
        if (id(w), weights) not in self.rounded and weights:
            self.rounded[id(w), weights] = self.gptq(w) if weights == "gptq" else WEIGHTS[weights](w)
        rounded = self.rounded[id(w), weights] if weights else w
        if not activations:
            return F.linear(x, rounded, bias)
        if not outliers:
            return F.linear(ACTIVATIONS[activations](x), rounded, bias)
        channels = self.peaks[id(w)].topk(outliers).indices  # their float columns, as the programs keep
        rest = x.clone()
        rest[..., channels] = 0
        return F.linear(ACTIVATIONS[activations](rest), rounded, bias) + F.linear(x[..., channels], w[:, channels])

    def gptq(self, w: torch.Tensor) -> torch.Tensor:
        """Per-channel int8 with GPTQ rounding (core/llm/gptq.py) on the calibration text."""
        scale = w.abs().amax(1).clamp(min=1e-12) / 127
        return round_int8_rows(w, self.hessians[id(w)], scale) * scale[:, None]


def main(gguf: Path, rotated_only: bool = False, match: str = "") -> None:
    loaded = load_model(gguf)
    decoder = build_decoder(loaded.config, loaded.weights, 128)
    kinds = {id(getattr(layer, k)): k for layer in decoder.layers for k in KINDS[:4]} | {id(decoder.embed): "lm_head"}
    fake = model.linear = FakeQuantized(kinds)
    tokens = np.load(OUT / "tokens.npy").tolist()
    windows = [tokens[i : i + 128] for i in range(0, len(tokens), 128)]

    def forward(chunks: list[list[int]]) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([decoder.logits(decoder(torch.tensor([c]), torch.arange(len(c)))) for c in chunks])

    calibration = TextCodec(loaded.tokenizer_json, None, None).encode(TEXT)

    def observe(rows: dict) -> None:
        fake.row, fake.rounded, fake.peaks, fake.observing = {}, {}, {}, True
        fake.hessians = {} if any(w == "gptq" for row in rows.values() for w, _, _ in row.values()) else None
        forward([calibration[i : i + 128] for i in range(0, len(calibration), 128)])
        fake.observing = False

    def measure(rows: dict) -> None:
        for name, row in rows.items():
            fake.row = row
            logits = forward(windows)
            agreement = float((logits.argmax(-1) == reference).float().mean())
            print(f"| {name} | {agreement:.1%} | {perplexity(logits, windows):.2f} |", flush=True)

    chosen = {name: row for name, row in ROWS.items() if match in name and not rotated_only}
    observe(chosen)
    reference = forward(windows).argmax(-1)
    measure(chosen)
    chosen = {name: row for name, row in ROTATED_ROWS.items() if match in name}
    rotate_decoder(decoder)
    observe(chosen)
    measure(chosen)


def perplexity(logits: torch.Tensor, windows: list[list[int]]) -> float:
    total = sum(float(F.cross_entropy(logits[i * 128 : i * 128 + len(w) - 1], torch.tensor(w[1:]), reduction="sum"))
                for i, w in enumerate(windows))
    return math.exp(total / sum(len(w) - 1 for w in windows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--rotated-only", action="store_true", help="only the rows of the rotated decoder")
    parser.add_argument("--match", default="", help="only the rows whose name contains this")
    args = parser.parse_args()
    main(args.gguf, args.rotated_only, args.match)
