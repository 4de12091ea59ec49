"""The decode method with the KV cache held as the backend's own state, for backends that
have such state (Core ML's ``MLState``, iOS 18 / macOS 15).

The program's methods keep the cache as edgeport program state: each delegate reads it
as an input and returns new rows, which edgeport's runtime writes in place. A Core ML
app cannot use that form without edgeport's runtime; what it runs is one model that
reads and updates the cache itself. So for a backend offering ``compile_stateful``,
``edgeport.llm.export`` also captures the whole decode method with its cache writes in
the graph (not split into row updates) and has the backend compile it; the result is
stored beside the methods as ``llm/decode.stateful<suffix>`` and described in
``manifest.metadata["llm"]["stateful_decode"]`` (states, inputs, outputs, where it runs).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..api import resolve_backends
from ..backend import options_to_dict
from ..capture import capture
from ..errors import BackendError
from ..lowering import Progress
from ..plugins import Registry
from ..program import Program, file_info
from ..quantize.placement import with_scheme
from ..quantize.scheme import Scheme
from .model import Decode, Decoder
from .stitch import repeat_layers

STATEFUL_DECODE_FILE = "llm/decode.stateful"  # + the artifact's suffix


def offers_stateful(backend: str, registry: Registry | None) -> bool:
    selected, _ = resolve_backends([backend], None, registry)  # "portable" selects none
    return backend in selected and callable(getattr(selected[backend], "compile_stateful", None))


def attach_stateful_decode(program: Program, backend: str, proto: Decoder, values: Mapping[str, torch.Tensor], *,
                           scheme: Scheme | None, options: Mapping[str, Mapping[str, Any]] | None,
                           registry: Registry | None, progress: Progress | None) -> None:
    """Compile the stateful decode on ``backend`` and store it in ``program``; when the
    backend cannot (e.g. a deployment target without states), record why instead.
    ``scheme``: a weight scheme the backend applies when it compiles (Core ML's int4)."""
    selected, parsed = resolve_backends([backend], options, registry)
    target = selected[backend]
    compile_options = with_scheme(parsed[backend], scheme) if scheme is not None else parsed[backend]
    if progress:
        progress(f"decode (stateful): capturing with the KV cache as {backend} state")
    inputs = (torch.zeros(1, 1, dtype=torch.long), torch.tensor([0]))
    captured = capture(Decode(proto), inputs, [target], parsed)
    whole = repeat_layers(captured, _layers(values), values)
    meta = program.manifest.metadata["llm"]
    try:
        if progress:
            progress(f"decode (stateful): compiling on {backend}")
        artifact = target.compile_stateful(whole, compile_options, ["logits"])
    except BackendError as error:
        why = f"{error} ({error.hint})" if error.hint else str(error)
        meta["stateful_decode"] = {"backend": backend, "skipped": why}
        if progress:
            progress(f"decode (stateful): not made: {meta['stateful_decode']['skipped']}")
        return
    path = STATEFUL_DECODE_FILE + artifact.suffix
    program.files[path] = artifact.data
    program.manifest.files[path] = file_info(artifact.data)
    meta["stateful_decode"] = {"backend": backend, "backend_version": target.version, "file": path,
                               "options": options_to_dict(compile_options), **artifact.metadata}


def _layers(values: Mapping[str, torch.Tensor]) -> int:
    """How many decoder layers ``values`` (the N-layer module's tensors) hold."""
    return len({name.split(".")[2] for name in values if name.startswith("decoder.layers.")})
