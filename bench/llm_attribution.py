"""Where the quantized LLM's agreement with fp32 goes: a fake-quantized torch forward.

    python bench/llm_attribution.py $GGUF [--rotated-only] [--match TEXT]   # needs /tmp/edgeport-llm-agreement (llm_agreement.py reference)
    python bench/llm_attribution.py $GGUF --keep-float-search 24
    python bench/llm_attribution.py $GGUF --match "as shipped" --window 1024   # the passage in longer windows

edgeport's own decoder (core/llm/model.py) runs the LLM tests' passage (the first 1,024
tokens of the Declaration of Independence, windows of 128) with its ``linear`` swapped
for one that rounds the weights and/or the inputs of chosen linears the way the kernels
do: per-channel int8 or int4 groups of 32 (symmetric or as Q4_1) for weights; per token
(XNNPACK's qd8) or per block of 32 (llama.cpp's) for activations, optionally with each
linear's 8 largest input channels (measured on core/llm/calibration.py's text) left in
float. Nothing is exported: it says which rounding costs what, in seconds per row, so
the real programs only need building for what pays (bench/README.md, "LLM accuracy").
It also prints how close the reference's top two logits are (a flip needs only that
much error), and the rows of a precision ladder (fp16, bf16, per-channel int8/10/12
weights) that put int8's error among finer grids.

``--keep-float-search K`` asks whether a mixed-precision int8-dynamic could reach the
issue's 98%: starting from the shipped scheme (int8 per channel, per-token activations,
8 outlier channels on every linear but ``o``), it measures each of the 121 linears left
in float alone, then leaves the K best in float together, one more at a time.
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


def int4_groups(w: torch.Tensor, asymmetric: bool) -> torch.Tensor:
    blocks = w.reshape(w.shape[0], -1, 32)
    if asymmetric:  # a scale and a float minimum per group: Q4_1's grid
        low = blocks.amin(2, keepdim=True)
        scale = ((blocks.amax(2, keepdim=True) - low) / 15).clamp(min=2**-14).half().float()
        return (((blocks - low) / scale).round().clamp(0, 15) * scale + low).reshape(w.shape)
    scale = (blocks.abs().amax(2, keepdim=True) / 7).clamp(min=2**-14).half().float()
    return ((blocks / scale).round().clamp(-8, 7) * scale).reshape(w.shape)


def per_channel(bits: int):
    """Symmetric per-row rounding to ``bits`` bits: int8's grid and finer ones beside it."""
    top = 2 ** (bits - 1) - 1

    def rounded(w: torch.Tensor) -> torch.Tensor:
        scale = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / top
        return (w / scale).round().clamp(-top, top) * scale
    return rounded


def mse_clipped_int8(w: torch.Tensor) -> torch.Tensor:
    """Per-channel int8 with each row's range clipped to the least squared error (36 ratios
    from 0.3 to 1 of its peak): what a tighter scale buys when a row has a long tail."""
    peak = w.abs().amax(1, keepdim=True).clamp(min=1e-12)
    best_error, best = None, w
    for ratio in torch.linspace(0.3, 1.0, 36):
        scale = peak * ratio / 127
        candidate = (w / scale).round().clamp(-127, 127) * scale
        error = (candidate - w).pow(2).sum(1, keepdim=True)
        better = error if best_error is None else error < best_error
        best = candidate if best_error is None else torch.where(better, candidate, best)
        best_error = error if best_error is None else torch.minimum(error, best_error)
    return best


def per_token(x: torch.Tensor) -> torch.Tensor:
    low, high = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    scale = ((high - low) / 255).clamp(min=1e-12)
    zero = (-128 - low / scale).round()
    return ((x / scale + zero).round().clamp(-128, 127) - zero) * scale


def per_block(x: torch.Tensor) -> torch.Tensor:
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    scale = (blocks.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-12)
    return ((blocks / scale).round() * scale).reshape(x.shape)


WEIGHTS = {"int8": per_channel(8), "int10": per_channel(10), "int12": per_channel(12), "mse": mse_clipped_int8,
           "fp16": lambda w: w.half().float(), "bf16": lambda w: w.bfloat16().float(), "int4": lambda w: int4_groups(w, False), "q4_1": lambda w: int4_groups(w, True)}
ACTIVATIONS = {"token": per_token, "block": per_block}
SHIPPED_INT8 = {k: ("int8", "token", 0 if k == "o" else 8) for k in KINDS}  # int8-dynamic's default
# name: {linear kind: (weights or None, activations or None, outlier channels kept in float)}
ROWS = {
    "fp32": {},
    "weights int8, activations float": {k: ("int8", None, 0) for k in KINDS},
    "head weights int8 only": {"lm_head": ("int8", None, 0)},
    "activations per token, weights exact": {k: (None, "token", 0) for k in KINDS},
    "activations per block of 32, weights exact": {k: (None, "block", 0) for k in KINDS},
    **{f"activations per token in {k} only": {k: (None, "token", 0)} for k in KINDS[:4]},
    "int8-dynamic before": {k: ("int8", "token", 0) for k in KINDS},
    "int8-dynamic as shipped (8 outlier channels in float, none on o)": SHIPPED_INT8,
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
    **{f"weights {grid}, activations float": {k: (grid, None, 0) for k in KINDS}
       for grid in ("fp16", "bf16", "int12", "int10")},
    "weights int8, each row's range clipped to least error, activations float": {k: ("mse", None, 0) for k in KINDS},
    **{f"weights int8 in {k} only": {k: ("int8", None, 0)} for k in KINDS},
    "weights int8 AWQ-scaled (head plain), activations float": {k: ("awq", None, 0) for k in KINDS[:4]}
    | {"lm_head": ("int8", None, 0)},
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

    def __init__(self, kinds: dict[int, tuple[str, str]]) -> None:  # id(weight): (linear's name, its kind)
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
        name, kind = self.kinds[id(w)]
        weights, activations, outliers = self.row.get(name, self.row.get(kind, (None, None, 0)))
        if (id(w), weights) not in self.rounded and weights:
            special = {"gptq": self.gptq, "awq": self.awq}
            self.rounded[id(w), weights] = special.get(weights, WEIGHTS.get(weights))(w)
        rounded = self.rounded[id(w), weights] if weights else w
        if not activations:
            return F.linear(x, rounded, bias)
        if not outliers:
            return F.linear(ACTIVATIONS[activations](x), rounded, bias)
        channels = self.peaks[id(w)].topk(outliers).indices  # their float columns, as the programs keep
        rest = x.clone()
        rest[..., channels] = 0
        return F.linear(ACTIVATIONS[activations](rest), rounded, bias) + F.linear(x[..., channels], w[:, channels])

    def awq(self, w: torch.Tensor) -> torch.Tensor:
        """Per-channel int8 of the weights with each input column scaled up by its input
        peak ** 0.3 first and back after (AWQ's search space at one exponent, the best of
        0.15 / 0.3 / 0.5 here): finer steps for the columns that meet large inputs."""
        scale = self.peaks[id(w)].clamp(min=1e-5) ** 0.3
        scale = scale / scale.mean()
        return per_channel(8)(w * scale) / scale

    def gptq(self, w: torch.Tensor) -> torch.Tensor:
        """Per-channel int8 with GPTQ rounding (core/llm/gptq.py) on the calibration text."""
        scale = w.abs().amax(1).clamp(min=1e-12) / 127
        return round_int8_rows(w, self.hessians[id(w)], scale) * scale[:, None]


class Attribution:
    """The decoder with its ``linear`` fake-quantized, the passage's windows and the fp32
    reference they are measured against."""

    def __init__(self, gguf: Path, window: int = 128) -> None:
        loaded = load_model(gguf)
        self.decoder = build_decoder(loaded.config, loaded.weights, max(window, 128))
        layers = self.decoder.layers
        self.fake = model.linear = FakeQuantized(
            {id(getattr(layer, k)): (f"{k}{i}", k) for i, layer in enumerate(layers) for k in KINDS[:4]}
            | {id(self.decoder.embed): ("lm_head", "lm_head")})
        tokens = np.load(OUT / "tokens.npy").tolist()
        self.windows = [tokens[i : i + window] for i in range(0, len(tokens), window)]
        text = TextCodec(loaded.tokenizer_json, None, None).encode(TEXT)
        self.calibration = [text[i : i + 128] for i in range(0, len(text), 128)]
        self.reference = torch.empty(0)

    def forward(self, chunks: list[list[int]]) -> torch.Tensor:
        with torch.no_grad():
            decoder = self.decoder
            return torch.cat([decoder.logits(decoder(torch.tensor([c]), torch.arange(len(c)))) for c in chunks])

    def observe(self, rows: dict) -> None:
        """Input peaks (and Σxᵀx when a row asks for GPTQ) on the calibration text."""
        fake = self.fake
        fake.row, fake.rounded, fake.peaks, fake.observing = {}, {}, {}, True
        fake.hessians = {} if any(w == "gptq" for row in rows.values() for w, _, _ in row.values()) else None
        self.forward(self.calibration)
        fake.observing = False

    def agreement(self, row: dict) -> tuple[float, torch.Tensor]:
        self.fake.row = row
        logits = self.forward(self.windows)
        return float((logits.argmax(-1) == self.reference.argmax(-1)).float().mean()), logits

    def measure(self, rows: dict) -> None:
        for name, row in rows.items():
            agreement, logits = self.agreement(row)
            moved = float((logits - self.reference).abs().mean())
            print(f"| {name} | {agreement:.1%} | {perplexity(logits, self.windows):.2f} | {moved:.3f} |", flush=True)

    def print_margins(self) -> None:
        top = self.reference.topk(2, -1).values
        margin = top[:, 0] - top[:, 1]
        print("positions whose top two fp32 logits are within 0.1 / 0.3 / 0.5: "
              + " / ".join(f"{float((margin < m).float().mean()):.1%}" for m in (0.1, 0.3, 0.5)))

    def keep_float_search(self, count: int) -> None:
        """Each linear of the shipped int8 scheme left in float alone, then the ``count``
        best together (a linear's own name overrides its kind in a row)."""
        shipped, _ = self.agreement(SHIPPED_INT8)
        print(f"shipped int8-dynamic: {shipped:.1%}", flush=True)
        names = [name for name, _ in self.fake.kinds.values()]
        gains = {name: self.agreement({**SHIPPED_INT8, name: (None, None, 0)})[0] - shipped for name in names}
        print("one linear in float, best / median / worst gain: "
              f"{max(gains.values()):+.1%} / {float(np.median(list(gains.values()))):+.1%} / {min(gains.values()):+.1%}")
        row = dict(SHIPPED_INT8)
        for n, name in enumerate(sorted(names, key=gains.get, reverse=True)[:count], 1):
            row[name] = (None, None, 0)
            print(f"| {n} in float (+{name}) | {self.agreement(row)[0]:.1%} |", flush=True)


def main(gguf: Path, rotated_only: bool = False, match: str = "", keep_float: int = 0, window: int = 128) -> None:
    attribution = Attribution(gguf, window)
    chosen = {name: row for name, row in ROWS.items() if match in name and not rotated_only and not keep_float}
    attribution.observe(chosen)
    attribution.reference = attribution.forward(attribution.windows)  # every row, rotated ones too, against it
    attribution.print_margins()
    if keep_float:
        attribution.keep_float_search(keep_float)
        return
    attribution.measure(chosen)
    chosen = {name: row for name, row in ROTATED_ROWS.items() if match in name}
    rotate_decoder(attribution.decoder)
    attribution.observe(chosen)
    attribution.measure(chosen)


def perplexity(logits: torch.Tensor, windows: list[list[int]]) -> float:
    starts = np.cumsum([0] + [len(w) for w in windows])
    total = sum(float(F.cross_entropy(logits[s : s + len(w) - 1], torch.tensor(w[1:]), reduction="sum"))
                for s, w in zip(starts, windows))
    return math.exp(total / sum(len(w) - 1 for w in windows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--rotated-only", action="store_true", help="only the rows of the rotated decoder")
    parser.add_argument("--match", default="", help="only the rows whose name contains this")
    parser.add_argument("--keep-float-search", type=int, default=0, metavar="K",
                        help="instead of the rows: which linears, left in float, lift the shipped int8 scheme")
    parser.add_argument("--window", type=int, default=128, metavar="N",
                        help="read the passage in windows of N tokens, each from an empty cache (the tests' 128)")
    args = parser.parse_args()
    main(args.gguf, args.rotated_only, args.match, args.keep_float_search, args.window)
