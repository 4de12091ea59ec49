"""Which input channels of each linear carry outliers: measured on a fixed English text.

Both quantized schemes quantize a linear's input per token at run time (XNNPACK's qd8),
one scale for a whole row. A decoder's activations have a few channels far larger than
the rest (the same channels token after token), and those set the scale, so every other
channel is rounded coarsely: on SmolLM2-135M that alone costs 10 points of top-1
agreement with fp32. `run_text` runs the float decoder over `TEXT` and records each
linear's largest |input| per channel; `quantized.py` then keeps the top few channels of
each linear out of the quantized product, in float.

The text is public domain and is not the passage the accuracy tests read: the openings
of Dickens's *A Tale of Two Cities* (1859), Austen's *Pride and Prejudice* (1813) and
Melville's *Moby-Dick* (1851). It ships inside the package, so exporting stays offline.
"""

from __future__ import annotations

import torch
from torch import nn

TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had "
    "everything before us, we had nothing before us, we were all going direct to Heaven, we were all going "
    "direct the other way - in short, the period was so far like the present period, that some of its "
    "noisiest authorities insisted on its being received, for good or for evil, in the superlative degree "
    "of comparison only.\n\n"
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife. However little known the feelings or views of such a man may be on his first entering "
    "a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is "
    "considered the rightful property of some one or other of their daughters.\n\n"
    "Call me Ishmael. Some years ago - never mind how long precisely - having little or no money in my "
    "purse, and nothing particular to interest me on shore, I thought I would sail about a little and see "
    "the watery part of the world. It is a way I have of driving off the spleen and regulating the "
    "circulation."
)


class Observed(nn.Module):
    """A float weight that records the largest |input| per channel of the linear reading it."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight
        self.peak = torch.zeros(weight.shape[1])

    def see(self, x: torch.Tensor) -> None:
        self.peak = torch.maximum(self.peak, x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0))


def run_text(decoder: nn.Module, tokens: list[int]) -> None:
    """Run the float ``decoder`` over ``tokens`` (in windows its cache holds, each from
    position 0), so its `Observed` weights record their input peaks; the cache is left
    empty again (it is the program's initial state)."""
    window = decoder.max_seq_len
    with torch.no_grad():
        for start in range(0, len(tokens), window):
            chunk = tokens[start : start + window]
            decoder.logits(decoder(torch.tensor([chunk]), torch.arange(len(chunk))))
        for layer in decoder.layers:
            layer.k_cache.zero_()
            layer.v_cache.zero_()
