"""The cpu backend: our TFLite writer ahead of time, LiteRT with XNNPACK at run time.

Every op the writer can write is supported (`support` is the writer's own answer),
so a whole network usually lowers to one partition and one LiteRT interpreter.

Quantized, it offers int8 (XNNPACK's QS8 kernels), int8-dynamic and int4-weight
(FULLY_CONNECTED with integer weights, run as qd8-f32-qc8w / qd8-f32-qb4w); its
quantizer annotates exactly what the writer writes in int8 (tflite/quantizer.py).

Registering it and `load` import no torch (the run side, on a device); `support`,
`keep_ops` and `compile` reach the writer, which imports torch, when called.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import edgeport
from edgeport.backend import FP16_OP_ERROR, WEIGHT_CACHE_KEY
from edgeport.support import DATA_MOVEMENT
from edgeport.backends import tflite

if TYPE_CHECKING:
    from torch.export import ExportedProgram
    from torch.fx import Node

PRECISIONS = ("fp32", "fp16")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuOptions:
    threads: int = edgeport.option(0, at_least=0, at_most=256)  # 0 = every core this process may use
    # "fp16": weights stored as float16 (half the artifact) and XNNPACK told it may
    # compute in fp16. CPUs with fp16 arithmetic (Arm v8.2+) then do; others (like this
    # x86) dequantize the weights at load and compute in fp32. Tolerance: 1e-2 relative.
    precision: str = edgeport.option("fp32", choices=PRECISIONS)
    # Large 3x3 stride-1 convolutions as Winograd F(2x2, 3x3): fewer multiplies than
    # XNNPACK's direct kernel (ResNet-style networks run faster), a bigger artifact
    # (4x4 instead of 3x3 filters), and rounding that differs from a direct conv's
    # within ~1e-6 relative. fp32 only; off for precision=fp16.
    winograd: bool = True


class CpuBackend(edgeport.Backend):
    """XNNPACK-speed CPU execution of any partition the TFLite writer can express."""

    name = "cpu"
    options = CpuOptions
    rules = edgeport.PartitionRules(never_alone=DATA_MOVEMENT)
    schemes = tflite.SCHEMES
    # Quantize and write in int8 only the operators LiteRT's XNNPACK delegate runs in
    # int8 (the others, e.g. a standalone HARD_SWISH, would run in TFLite's kernels
    # outside the delegate); False writes every int8 form, as an NPU sharing the writer would.
    xnnpack_int8_only = True

    @property
    def version(self) -> str:
        return tflite.runtime_version()

    def availability(self) -> edgeport.Availability:
        writer = tflite.writer_deps_missing()
        runner = tflite.interpreter_missing()
        why = "; ".join(f"{what}: {reason}" for what, reason in (("compile", writer), ("run", runner)) if reason)
        return edgeport.Availability(can_compile=not writer, can_run=not runner, why=why)

    def keep_ops(self) -> set[Any]:
        return set(tflite.KEEP_OPS)

    def prepare(self, program: ExportedProgram, options: CpuOptions) -> tflite.WriterContext:
        return tflite.WriterContext(program)

    def support(self, node: Node, ctx: edgeport.SupportContext) -> edgeport.Support:
        return tflite.writer_support(node, ctx)

    def quantizer(self, scheme: edgeport.Scheme, options: CpuOptions) -> Any:
        if options.precision != "fp32":
            return None  # fp16 weights and integer weights do not mix
        return tflite.quantizer_for(scheme, xnnpack_only=self.xnnpack_int8_only)

    def compile(self, program: ExportedProgram, options: CpuOptions) -> edgeport.Artifact:
        fp16 = options.precision == "fp16"
        model = tflite.write_tflite(program, fp16=fp16, winograd=options.winograd and not fp16,
                                    xnnpack_only=self.xnnpack_int8_only)
        metadata = {
            "inputs": model.inputs,
            "outputs": model.outputs,
            "transposed_inputs": model.transposed_inputs,
            "transposed_outputs": model.transposed_outputs,
            "ops": model.ops,
        }
        if model.int4_weights:
            metadata["int4_weights"] = model.int4_weights
        return edgeport.Artifact(data=model.data, suffix=".tflite", metadata=metadata, float_nodes=model.float_ops)

    def tolerance(self, options: CpuOptions) -> float:
        # fp16 keeps ~3 decimal digits; errors add up over a partition of tens of ops.
        return 1e-2 if options.precision == "fp16" else super().tolerance(options)

    def op_error(self, options: CpuOptions) -> float:
        return FP16_OP_ERROR if options.precision == "fp16" else super().op_error(options)

    def merge(self, artifacts: Sequence[edgeport.Artifact]) -> edgeport.Artifact:
        """One TFLite model with a subgraph per artifact, weights stored once (the
        methods of an LLM program share all of theirs)."""
        keys = [f"entry{i}" for i in range(len(artifacts))]
        io_names = [(a.metadata["inputs"], a.metadata["outputs"]) for a in artifacts]
        data = tflite.merge_models([a.data for a in artifacts], keys, io_names)
        metadata = {"entries": [dict(a.metadata) for a in artifacts],
                    "int4_weights": any(a.metadata.get("int4_weights") for a in artifacts)}
        return edgeport.Artifact(data=data, suffix=".tflite", metadata=metadata)

    def load(self, artifact: edgeport.Artifact) -> (tflite.TfliteExecutable | tflite.TfliteEntries
                                                     | tflite.CompiledExecutable):
        """LiteRT's Interpreter runs the model, or, for an artifact whose weights are to
        be cached (`WEIGHT_CACHE_KEY`: an LLM's one-graph model), its compiled model."""
        options = artifact.options if isinstance(artifact.options, CpuOptions) else CpuOptions()
        needs_delegate = bool(artifact.metadata.get("int4_weights"))
        entries = artifact.metadata.get("entries")
        checksum = artifact.metadata.get(WEIGHT_CACHE_KEY)
        if entries is None and checksum:
            compiled = _compiled(artifact, options.threads, checksum, needs_delegate)
            if compiled is not None:
                return compiled
        model = edgeport.as_bytes(artifact.data)  # LiteRT's Interpreter reads bytes only (no copy of its own)
        if entries is None:
            return tflite.TfliteExecutable(model, options.threads, needs_delegate=needs_delegate)
        keys = [f"entry{i}" for i in range(len(entries))]
        io_names = [(e["inputs"], e["outputs"]) for e in entries]
        return tflite.TfliteEntries(model, keys, io_names, options.threads, needs_delegate=needs_delegate)


def _compiled(artifact: edgeport.Artifact, threads: int, checksum: str, needs_delegate: bool) -> Any:
    """The model run by LiteRT's compiled model with XNNPACK's weight cache, or None
    (logged) when LiteRT's C API cannot load it here: the Interpreter runs it then.

    The C API cannot say which operators XNNPACK left to TFLite's kernels, and TFLite's
    FULLY_CONNECTED computes garbage from blockwise INT4 weights (``needs_delegate``):
    before the cache is first built, the Interpreter (same LiteRT, same XNNPACK) checks a
    probe holding one operator of each INT4 form (`int4_probe`; 2 MB for SmolLM2, where
    loading the whole model to check peaked at 435 MiB); loads that find the cache skip it."""
    from edgeport.backends.tflite.compiled import weight_cache_path
    from edgeport.backends.tflite.int4_probe import check_delegated
    from edgeport.backends.tflite.litert_c import LiteRtCError, LiteRtCMissing

    if needs_delegate and not weight_cache_path(checksum).exists():
        check_delegated(artifact.data, threads)  # raises BackendError when XNNPACK leaves one
    try:
        names = (artifact.metadata["inputs"], artifact.metadata["outputs"])
        return tflite.CompiledExecutable(artifact.data, threads, checksum=checksum, names=names)
    except (LiteRtCMissing, LiteRtCError) as e:
        log.warning("LiteRT's C API cannot load this model (%s); running it with LiteRT's Interpreter, "
                    "whose memory holds the model and XNNPACK's packed weights both", e)
        return None
