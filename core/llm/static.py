"""Calibrated (static) activation schemes for an LLM program: a16w8 on Qualcomm HTP.

An NPU scheme such as QNN's a16w8 (16-bit activations, 8-bit weights) stores a range
for every activation, measured by running real text through the model (PT2E observers,
`edgeport.quantize`): each backend's quantizer annotates the nodes it owns, as in
`edgeport.export`. Three things differ from the weight-only cpu schemes:

- every layer needs its own ranges, so the decoder is captured whole (all N layers)
  instead of one layer repeated by `stitch.py`, which would repeat layer 0's ranges;
- the ranges come from the built-in public-domain text (`calibration.TEXT`, never the
  accuracy tests' passage), run as the methods run: prefill in chunks, decode token by
  token, each method calibrated on its own calls, with the cache filling as it goes;
- the attention masks are finite (`MASK`): a -inf would give an observer an infinite
  range, and a mask far below the scores would stretch the 16-bit steps of every score.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import EdgeportError
from ..program import Program

# exp(-100) is below fp32's smallest normal and zero in fp16: a masked score adds nothing.
# The masked scores set the low end of each score's observed range, so a mask no lower
# than needed keeps the uint16 steps of the real scores fine (about 0.002 for a range of 130).
MASK = -100.0
CALIBRATION_TOKENS = 128  # of the built-in text (of ~300): a decode step per token, the slow part


def calibration_batches(tokens: list[int], max_seq_len: int, chunk: int) -> dict[str, list[tuple[Any, ...]]]:
    """Each method's calibration calls over ``tokens`` (the first `CALIBRATION_TOKENS`),
    in windows the cache holds, each from position 0: prefill's full chunks, decode's
    single tokens, in order, so each call reads the cache rows its predecessors wrote."""
    tokens = tokens[:CALIBRATION_TOKENS]
    prefill, decode = [], []
    for start in range(0, len(tokens), max_seq_len):
        window = tokens[start : start + max_seq_len]
        for at in range(0, len(window) - chunk + 1, chunk):
            prefill.append((torch.tensor([window[at : at + chunk]]), torch.arange(at, at + chunk), torch.tensor([chunk - 1])))
        decode.extend((torch.tensor([[token]]), torch.tensor([at])) for at, token in enumerate(window))
    if not prefill:
        raise EdgeportError(f"the calibration text is shorter than one prefill chunk ({chunk} tokens)",
                            hint="pass a smaller --prefill-chunk")
    return {"prefill": prefill, "decode": decode}


def zero_state(program: Program) -> None:
    """Reset the program's stored initial state (the caches) to zeros: calibration ran
    text through the model's own buffers, and a fresh program starts empty."""
    for info in program.manifest.state.values():
        if "file" in info:  # stored as zeros, without a file (`arrays.initial_state`)
            path = info.pop("file")
            del program.files[path], program.manifest.files[path]
            info["fill"] = 0
