"""``prefill`` and ``decode`` as one graph, for a backend that runs dynamic dims (cpu).

Decoding a token is prefilling a chunk of one. Exported as two graphs, the methods are
two models over the same weights: stored once (`Backend.merge`), but each loaded model
prepares its own copy, and XNNPACK packs every weight once per model (fp32 SmolLM2:
~540 MB each). Exported once, as `model.Step` with a dynamic chunk length, both methods
run one executable: the weights are packed once, and the KV cache lives in one set of
input buffers that both methods read in place (`Runtime.place_state`).

The program keeps both method names with the same signature, ``(tokens (1, T),
positions (T,), window (W,)) -> logits (1, vocab)`` of the chunk's last token:
``prefill`` takes any T up to the prefill chunk (its chunks are not padded), ``decode``
is the same plan, called at T = 1. ``window`` (0..W-1, a second dynamic dim) is the
cache rows attention reads: the session passes the rows filled before the call, rounded
up to `WINDOW_BUCKET` (`window_length`), so a step early in a long cache reads few rows
and the model is resized only when generation crosses a bucket. A session tells the
forms apart by prefill's inputs (`takes_any_length`, `takes_window`): programs exported
before the window have two inputs and read the whole cache.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..errors import EdgeportError
from ..manifest import MethodPlan
from ..program import Program

if TYPE_CHECKING:  # the run side (a session) imports this module without torch
    from .model import Decoder

BACKENDS = ("cpu",)  # backends whose LLM program is one graph (their models resize at run time)
# cache positions the window grows by: a resize costs ~0.7 ms for SmolLM2 (bench/llm_window_bucket.py)
WINDOW_BUCKET = 32
# torch.export specializes a dim of size 0 or 1, so a dynamic dim's range starts at 2: a chunk
# (or window) of at most 2 has a single size left, and every node then falls back to portable
# torch. 3 is the smallest length the one graph keeps dynamic.
MIN_LENGTH = 3


def check_lengths(max_seq_len: int, chunk: int) -> None:
    """Refuse, before the model is read, a prefill chunk or cache too short for the one
    graph's dynamic dims (`MIN_LENGTH`): its program would run all in portable torch."""
    lengths = (("prefill chunk", "--prefill-chunk", chunk), ("max_seq_len", "--max-seq-len", max_seq_len))
    for name, option, value in lengths:
        if value < MIN_LENGTH:
            raise EdgeportError(
                f"a {name} of {value} is too short for cpu's one-graph program: it takes {MIN_LENGTH} or more "
                f"(torch.export fixes a length of 1 or 2, and the whole program would fall back to portable torch)",
                hint=f"pass {option} {MIN_LENGTH} or more")


def one_graph_methods(proto: Decoder, chunk: int) -> dict[str, tuple[Any, ...]]:
    """The one method to export: `Step` with a chunk length from 1 to ``chunk``."""
    import torch

    from .model import Step

    length = torch.export.Dim("chunk", min=1, max=chunk)
    S = proto.max_seq_len
    window = torch.export.Dim("window", min=1, max=S)
    # the example window differs from the chunk, so the writer's two sample sizes of each dim do too
    inputs = (torch.zeros(1, chunk, dtype=torch.long), torch.arange(chunk), torch.arange(S))
    return {"prefill": (Step(proto), inputs, ({1: length}, {0: length}, {0: window}))}


def add_decode(program: Program) -> None:
    """Give ``program`` (exported from `one_graph_methods`) its ``decode`` method: the
    prefill plan under another name, running the same steps (a session calls it with
    one token; its spec, like its placement report, keeps prefill's dynamic length)."""
    manifest = program.manifest
    decode = dataclasses.replace(manifest.methods["prefill"], name="decode")
    manifest.methods = {"decode": decode, **manifest.methods}
    manifest.report["decode"] = manifest.report["prefill"]


def takes_any_length(plan: MethodPlan) -> bool:
    """Whether a program's prefill is the one-graph form (tokens, positions[, window])
    of any length, rather than a padded chunk with the index of its last token."""
    return len(plan.inputs) == 2 or takes_window(plan)


def takes_window(plan: MethodPlan) -> bool:
    """Whether a program's one graph reads only a window of the cache (its third input is
    the window, a dynamic dim), rather than all of it (programs exported before the
    window: two inputs) or a padded chunk's ``last`` index (static, shape (1,))."""
    return len(plan.inputs) == 3 and isinstance(plan.inputs[2].shape[0], str)


def window_length(start: int, max_seq_len: int) -> int:
    """The cache window a chunk starting at position ``start`` attends over: the rows
    filled before it, rounded up to `WINDOW_BUCKET` (at least one bucket; at most the
    cache), so the model is resized only when generation crosses a bucket."""
    return min(max(-(-start // WINDOW_BUCKET), 1) * WINDOW_BUCKET, max_seq_len)

