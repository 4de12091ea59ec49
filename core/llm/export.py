"""``edgeport.llm.export``: an LLM as one program with ``prefill`` and ``decode`` methods.

    program = edgeport.llm.export("SmolLM2-135M-Instruct.Q4_1.gguf", max_seq_len=512)
    program.save("smol.edgeport")

Both methods wrap one `Decoder`, so they share its KV cache as program state, and each
writes its new cache rows as row updates (`edgeport.state_rows`). On cpu both land in one
TFLite model (a subgraph each, `Backend.merge`), so the weights are stored once. Capture traces a
one-layer decoder and repeats the layer (`stitch.py`): exporting SmolLM2's 30 layers
costs what one layer does. The tokenizer, chat template and stop tokens travel inside
the program (``llm/…`` files and ``manifest.metadata["llm"]``), so the file alone is
enough to generate. A backend whose models can hold the cache as their own state (Core
ML from iOS 18) also gets the whole decode method in that form (`stateful.py`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import torch

from ..api import backend_names, export_methods, resolve_backends
from ..errors import EdgeportError
from ..lowering import Progress
from ..plugins import Registry
from .. import portable
from ..program import Program, file_info
from .calibration import TEXT as CALIBRATION_TEXT
from .loader import LoadedModel, load_model
from ..quantize.placement import QUANTIZES, backend_quantization
from ..quantize.scheme import Scheme, resolve_scheme
from . import one_graph
from .model import Decode, Decoder, Prefill
from .quantized import quantize_decoder, weight_bytes
from .stateful import attach_stateful_decode, offers_stateful
from .static import MASK, calibration_batches, zero_state
from .stitch import repeat_layers
from .text import TextCodec
from .weights import build_decoder

FORMAT = 1  # of manifest.metadata["llm"]
TOKENIZER_FILE = "llm/tokenizer.json"
CHAT_TEMPLATE_FILE = "llm/chat_template.jinja"
QUANTIZE_SCHEMES = ("int8-dynamic", "int4-weight")  # weights only, no calibration
CALIBRATED_SCHEMES = ("a16w8",)  # activations too, ranges from the built-in text: NPUs (static.py)
# cpu lowers the decoder's own quantized linears (quantized.py: outlier channels, the tied
# table stored once, a Q4_1 file's grid kept). Another backend offering a weight scheme
# compresses the float decoder's weights itself when it compiles (coreml: int4-weight).
DECODER_QUANTIZED = ("cpu",)
SCHEMES_BY_BACKEND = ("int8-dynamic or int4-weight with --backend cpu, a16w8 with --backend qualcomm, int4-weight "
                      "with --backend coreml --option coreml.minimum_deployment_target=iOS18")
DEFAULT_MAX_SEQ_LEN = 512
DEFAULT_PREFILL_CHUNK = 32  # prompt tokens per prefill call: long prompts run in several


def export(
    model: str | os.PathLike[str] | LoadedModel,
    *,
    backend: str | Sequence[str] = "cpu",
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    quantize: str | None = None,
    float_outliers: bool = True,
    rotate: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    registry: Registry | None = None,
    progress: Progress | None = None,
    keep_reference: bool | None = None,
) -> Program:
    """Export a GGUF file or local Hugging Face directory (or a `LoadedModel`) as an
    LLM program for ``backend``, with a KV cache of ``max_seq_len`` positions.

    ``backend`` is one name, or several in priority order ("mediatek,cpu" or a list), as
    for `edgeport.export`: what the first cannot run goes to the next (mediatek,cpu: the
    lookups NeuroPilot cannot take run in a cpu delegate, so no step needs torch). The
    first backend is the one quantizing and, where it offers one, the stateful decode's.

    ``quantize`` (`SCHEMES_BY_BACKEND`): on cpu the decoder's own quantized linears
    (`quantized.py`); on another backend that offers the scheme, the backend compresses
    the float weights when it compiles (coreml's int4-weight, the stateful decode too).
    A scheme the backend does not apply is refused before the model is read.

    ``float_outliers`` (quantized on cpu): keep each quantized linear's few outlier
    input channels, found on a built-in English text, out of the per-token quantization,
    in float (`quantized.OutlierChannels`): more accurate, a little slower to decode.
    ``keep_reference`` as for `edgeport.export_methods` (a quantized program's
    fake-quantized torch reference of each delegate).

    ``rotate`` (int8-dynamic): rotate the residual stream first, folded into the weights
    (`rotation.py`), and keep outlier channels only in the down projections: perplexity
    close to fp32's and fewer operators, but fewer top-1 tokens equal to fp32's on
    SmolLM2 (docs/llm.md, "Limits")."""
    for name, value, least in (("max_seq_len", max_seq_len, 2), ("prefill_chunk", prefill_chunk, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise EdgeportError(f"{name} must be a whole number of {least} or more, got {value!r}")
    scheme = _scheme(quantize)
    if rotate and (scheme is None or scheme.name != "int8-dynamic"):
        raise EdgeportError(f"--rotate applies to int8-dynamic, not {scheme.name if scheme else 'float32'}",
                            hint="a rotation would move 4-bit weights off the Q4_1 grid they hold, and fp32 "
                                 "and a16w8 gain nothing from it; drop --rotate")
    calibrated = scheme is not None and scheme.name in CALIBRATED_SCHEMES
    backends = backend_names(backend)
    resolve_backends(backends, options, registry)  # unknown backends and bad options: before the model is read
    first = backends[0]
    by_backend = scheme is not None and not calibrated and first not in DECODER_QUANTIZED
    if calibrated or by_backend:
        _check_backend_quantizes(scheme, first, options, registry)
    # one graph for both methods, weights prepared once (one_graph.py), when the first backend
    # runs dynamic dims: it takes every op of a decoder layer, so the others would get none
    one = first in one_graph.BACKENDS
    if one:
        one_graph.check_lengths(max_seq_len, prefill_chunk)
    if progress:
        progress("loading the model")
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    config = loaded.config
    _check_lengths(loaded, max_seq_len, prefill_chunk)
    decoder = build_decoder(config, loaded.weights, max_seq_len, seq_major=one)
    if not isinstance(model, LoadedModel):
        loaded.weights.clear()  # ours: the decoder holds what it needs (q/k/v and gate/up fused)
    proto = Decoder(dataclasses.replace(config, layers=1), max_seq_len, seq_major=one)  # traced; weights never used
    if calibrated:  # every layer its own ranges: capture the whole decoder (static.py)
        proto = decoder
        decoder.mask_value = MASK
    elif scheme is not None and not by_backend:
        if progress:
            progress(f"quantizing the weights: {scheme.describe(backends)}")
        calibration = TextCodec(loaded.tokenizer_json, None, None).encode(CALIBRATION_TEXT) if float_outliers else None
        quantize_decoder(decoder, scheme, calibration=calibration, rotate=rotate)
        quantize_decoder(proto, scheme, calibration=calibration, traced_only=True, rotate=rotate)
    values = {**dict(Prefill(decoder).named_parameters()), **dict(Prefill(decoder).named_buffers())}
    T = prefill_chunk
    methods = {  # decode first: called once per token, it gets the merged artifact's fast entry
        "decode": (Decode(proto), (torch.zeros(1, 1, dtype=torch.long), torch.tensor([0]))),
        "prefill": (Prefill(proto), (torch.zeros(1, T, dtype=torch.long), torch.arange(T), torch.tensor([T - 1]))),
    }
    if one:
        methods = one_graph.one_graph_methods(proto, T)
    if calibrated:
        if progress:
            progress(f"quantizing {scheme.describe(backends)}: every layer captured, calibrated on the built-in text")
        tokens = TextCodec(loaded.tokenizer_json, None, None).encode(CALIBRATION_TEXT)
        program = export_methods(methods, backends, options=options, registry=registry, progress=progress,
                                 quantize=scheme, calibration=calibration_batches(tokens, max_seq_len, T),
                                 keep_reference=keep_reference)
        zero_state(program)
    else:
        program = export_methods(
            methods,
            backends,
            options=options,
            registry=registry,
            progress=progress,
            keep_reference=keep_reference,
            quantize=scheme if by_backend else None,
            rewrite=lambda name, captured: repeat_layers(captured, config.layers, values),
        )
    if "decode" not in program.manifest.methods:
        one_graph.add_decode(program)
    _attach(program, loaded, max_seq_len, prefill_chunk)
    label = scheme.name if scheme else "float32"
    compiled = _compiled_weights(program, first)
    if compiled is not None:  # stored the backend's own way (Core ML, QNN HTP: fp16, compressed or quantized)
        float_dtype, stored = compiled
        label = scheme.name if scheme else float_dtype
    else:
        stored = weight_bytes(decoder)
    program.manifest.metadata["llm"]["weights"] = label
    program.manifest.metadata["llm"]["weight_bytes"] = stored
    if offers_stateful(first, registry):  # Core ML: the cache as the model's own state
        if scheme is None or by_backend:
            attach_stateful_decode(program, first, proto, values, scheme=scheme, options=options,
                                   registry=registry, progress=progress)
        else:
            why = f"not made for {scheme.name} (the stateful decode is float or compressed by {first} only)"
            program.manifest.metadata["llm"]["stateful_decode"] = {"backend": first, "skipped": why}
    return program


def _scheme(quantize: str | None) -> Scheme | None:
    """The scheme ``--quantize`` names, if any: the weight-quantized schemes, and the
    calibrated ones of NPU backends (calibration from the built-in text)."""
    if quantize is None:
        return None
    try:
        scheme = resolve_scheme(quantize)
    except EdgeportError as exc:  # its hint listed every scheme, most of which llm export refuses
        raise EdgeportError(str(exc), hint=f"edgeport llm export quantizes with {SCHEMES_BY_BACKEND}") from None
    if scheme.name not in QUANTIZE_SCHEMES + CALIBRATED_SCHEMES:
        raise EdgeportError(f"edgeport llm export quantizes with {SCHEMES_BY_BACKEND}, not {scheme.name}",
                            hint=f"pass --quantize {' or '.join(QUANTIZE_SCHEMES + CALIBRATED_SCHEMES)}")
    return scheme


def _check_backend_quantizes(scheme: Scheme, backend: str, options: Mapping[str, Mapping[str, Any]] | None,
                             registry: Registry | None) -> None:
    """Refuse, before any work, a scheme ``backend`` does not apply with these options
    (an LLM left in portable torch is no program for a device)."""
    selected, parsed = resolve_backends([backend], options, registry)
    offered = selected[backend].schemes
    if scheme.name not in offered:  # the backend's own reason would suggest schemes llm export refuses (coreml: int8)
        takes = [name for name in QUANTIZE_SCHEMES + CALIBRATED_SCHEMES if name in offered]
        which = f"of the schemes llm export takes, it offers {' and '.join(takes)}" if takes else \
            "it offers none of the schemes llm export takes"
        raise EdgeportError(f"edgeport llm export --backend {backend} cannot quantize with {scheme.name}: {which}",
                            hint=f"edgeport llm export quantizes with {SCHEMES_BY_BACKEND}")
    answer = backend_quantization(selected[backend], scheme, parsed[backend])
    if answer.status != QUANTIZES:  # the options rule the scheme out: the reason says which
        raise EdgeportError(f"edgeport llm export --backend {backend} cannot quantize with {scheme.name}: {answer.reason}",
                            hint=f"edgeport llm export quantizes with {SCHEMES_BY_BACKEND}")


def _compiled_weights(program: Program, backend: str) -> tuple[str, int] | None:
    """The dtype of the uncompressed weights and the bytes the decode method loads for its
    weights, where ``backend``'s artifacts count theirs (their ``float_weights`` and
    ``weight_bytes``: Core ML's weight.bin, QNN's context binary, MediaTek's TFLite model);
    None where they do not. Every artifact and stored tensor the method reads counts once:
    a portable lookup's embedding table too, and another backend's artifact at its size.
    Each method's model may hold its own copy; only decode's are counted."""
    decode = program.manifest.methods["decode"]
    artifacts = program.manifest.artifacts
    own = [artifacts[step.artifact].metadata for step in decode.steps if step.backend == backend]
    if not own or not all("weight_bytes" in m and "float_weights" in m for m in own):
        return None
    stored: dict[str, int] = {}  # file -> its weights' bytes
    dtypes = {m["float_weights"] for m in own}
    for step in decode.steps:
        if step.kind == "portable":
            tensors = portable.stored_tensors(program.files, step.program)
            stored |= {path: len(program.files[path]) for path in tensors}
            dtypes |= {dtype for dtype in tensors.values() if dtype.startswith("float")}
        else:
            stored[step.artifact] = artifacts[step.artifact].metadata.get("weight_bytes", len(program.files[step.artifact]))
    return " and ".join(sorted(dtypes)), sum(stored.values())


def _check_lengths(loaded: LoadedModel, max_seq_len: int, chunk: int) -> None:
    config = loaded.config
    if not 1 <= chunk <= max_seq_len:
        raise EdgeportError(f"prefill chunk {chunk} must be between 1 and max_seq_len ({max_seq_len})")
    if max_seq_len > config.max_position_embeddings:
        raise EdgeportError(
            f"max_seq_len {max_seq_len} exceeds the {config.max_position_embeddings} positions {loaded.name} was trained for",
            hint=f"pass --max-seq-len {config.max_position_embeddings} or less",
        )
    if config.sliding_window is not None and max_seq_len > config.sliding_window:
        raise EdgeportError(
            f"{loaded.name} attends within a sliding window of {config.sliding_window} positions; "
            f"max_seq_len {max_seq_len} would need it",
            hint=f"pass --max-seq-len {config.sliding_window} or less",
        )


def _attach(program: Program, loaded: LoadedModel, max_seq_len: int, chunk: int) -> None:
    """Put the tokenizer, chat template and generation facts inside the program."""
    files = {TOKENIZER_FILE: loaded.tokenizer_json.encode()}
    if loaded.chat_template:
        files[CHAT_TEMPLATE_FILE] = loaded.chat_template.encode()
    for path, data in files.items():
        program.files[path] = data
        program.manifest.files[path] = file_info(data)
    config = loaded.config
    program.manifest.metadata["llm"] = {
        "format": FORMAT,
        "name": loaded.name,
        "architecture": config.architecture,
        "config": json.loads(json.dumps(config.to_json())),
        "max_seq_len": max_seq_len,
        "prefill_chunk": chunk,
        "tokenizer": TOKENIZER_FILE,
        "chat_template": CHAT_TEMPLATE_FILE if loaded.chat_template else None,
        "stop_token_ids": list(loaded.stop_token_ids),
        "bos_token_id": loaded.bos_token_id,
        "add_bos_token": loaded.add_bos_token,
        "generation": dict(loaded.generation),
    }
