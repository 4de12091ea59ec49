"""The mediatek backend: NeuroPilot-ready TFLite per partition, AOT-compiled when it can be.

- support: our TFLite writer must write the node and LiteRT's MediaTek compiler plugin
  must legalize what is written (support.py);
- compile: the writer's model, checked op by op against the plugin's rules (written.py),
  AOT-compiled for the SoC when the NeuroPilot SDK is installed (aot.py);
- load: LiteRT's CompiledModel on the APU on a MediaTek device (runtime.py), else the
  same TFLite on LiteRT's CPU, labelled "reference (CPU)" and never as APU execution.

Quantized, it offers int8 (A8W8: int8 activations per tensor, int8 weights per output
channel), written by the shared writer's int8 forms. Its quantizer annotates every int8
form the writer has, including those the cpu leaves float because XNNPACK runs them
only in float (standalone RELU, HARD_SWISH, SOFTMAX, AVERAGE_POOL_2D): the plugin
legalizes them and an NPU runs them in int8. On the CPU reference TFLite's own int8
kernels run what XNNPACK does not. The other schemes it declines, each with NeuroPilot's
rule (`neuropilot.SCHEMES_DECLINED`): their nodes go to the next backend or stay float.

Registering it and `load` import no torch (the run side, on a device); `support` and
`compile` import the torch half (support.py, written.py, the writer) when called.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any, Sequence

import edgeport
from edgeport.backend import FP16_OP_ERROR
from edgeport.support import DATA_MOVEMENT, SLICING
from edgeport.backends import tflite

from . import aot, bundle, toolchain
from .options import MediatekOptions, check_soc, np_version
from .runtime import CompiledModelEntries, CompiledModelExecutable

log = logging.getLogger(__name__)

APU_PRECISION = (
    "fp16 (LiteRT's MediaTek plugin relaxes fp32 to fp16: litert/vendors/mediatek/compiler/compile_model.cc); "
    "the CPU reference computes in fp32"
)
APU_PRECISION_QUANTIZED = "{types} as written (the APU's integer kernels); any float op between them in fp16"


class MediatekBackend(edgeport.Backend):
    """MediaTek APUs through NeuroPilot, reached with LiteRT's MediaTek plugin."""

    name = "mediatek"
    options = MediatekOptions
    rules = edgeport.PartitionRules(min_nodes=1, never_alone=DATA_MOVEMENT | SLICING)
    schemes = frozenset({"int8"})

    @property
    def schemes_declined(self) -> dict[str, str]:  # type: ignore[override] - read on the instance
        """NeuroPilot's reasons (neuropilot.py imports torch: read when quantizing, not at registration)."""
        from .neuropilot import SCHEMES_DECLINED

        return SCHEMES_DECLINED

    @property
    def version(self) -> str:
        """LiteRT's version (it ships the MediaTek compiler plugin), and the SDK's if installed."""
        try:
            sdk = metadata.version("ai-edge-litert-sdk-mediatek")
        except metadata.PackageNotFoundError:
            return tflite.runtime_version()
        return f"{tflite.runtime_version()}; ai-edge-litert-sdk-mediatek {sdk}"

    def availability(self) -> edgeport.Availability:
        writer = tflite.writer_deps_missing()
        apu = toolchain.apu_missing()
        runner = tflite.interpreter_missing() if apu else ""  # the CPU reference needs an interpreter
        why = [f"compile: {writer}" if writer else "", f"run: {runner}" if runner else "", apu]
        runs_on = "reference (CPU)" if apu else "device"
        return edgeport.Availability(not writer, not runner, "; ".join(w for w in why if w), runs_on)

    def keep_ops(self) -> set[Any]:
        return set(tflite.KEEP_OPS)

    def prepare(self, program, options: MediatekOptions) -> tflite.WriterContext:  # noqa: ANN001 - contract types
        return tflite.WriterContext(program)

    def support(self, node, ctx) -> edgeport.Support:  # noqa: ANN001 - contract types
        from .support import mediatek_support

        return mediatek_support(node, ctx)

    def quantizer(self, scheme: edgeport.Scheme, options: MediatekOptions) -> Any:
        if options.fp16:
            return None  # fp16 weights and integer weights do not mix
        return tflite.quantizer_for(scheme, xnnpack_only=False)

    def compile(self, program, options: MediatekOptions) -> edgeport.Artifact:  # noqa: ANN001
        from . import written

        soc = check_soc(options.soc)
        model = tflite.write_tflite(program, fp16=options.fp16)
        _decline_what_neuropilot_refuses(model.data, program)
        quantized = written.quantized_types(model.data)
        precision = APU_PRECISION_QUANTIZED.format(types=", ".join(quantized)) if quantized else APU_PRECISION
        facts = {
            "soc": soc,
            "inputs": model.inputs,
            "outputs": model.outputs,
            "ops": model.ops,
            "fp16_weights": options.fp16,
            "apu_precision": precision,
            # What the device loads for the weights: the TFLite model (weights and graph), or
            # the APU bytecode compiled from it.
            "weight_bytes": len(model.data),
            "float_weights": "float16" if options.fp16 else "float32",
        }
        version = np_version(soc)
        why = toolchain.sdk_libs_missing(version)
        if not why:
            try:
                compiled = aot.compile_for_apu(model.data, soc)
            except edgeport.BackendError as e:
                why = f"{e} (the device compiles the TFLite model on first load)"
                log.warning("mediatek: %s", why)
            else:
                apu_ops = f"{compiled.ops_on_apu}/{compiled.ops_total}"
                facts |= {"aot": True, "neuropilot": version, "apu_ops": apu_ops, "apu_partitions": compiled.partitions,
                          "weight_bytes": len(compiled.data)}
                return edgeport.Artifact(bundle.pack(model.data, compiled.data), ".zip", facts,
                                         float_nodes=model.float_ops)
        facts |= {"aot": False, "why": why}
        return edgeport.Artifact(model.data, ".tflite", facts, float_nodes=model.float_ops)

    def merge(self, artifacts: Sequence[edgeport.Artifact]) -> edgeport.Artifact | None:
        """One TFLite model with a subgraph per artifact, weights stored once (an LLM's
        prefill and decode delegates share all of theirs). Plain TFLite only: AOT-compiled
        APU bytecode is one model each, so compiled artifacts stay apart."""
        if any(a.metadata.get("aot") for a in artifacts):
            return None
        io_names = [(a.metadata["inputs"], a.metadata["outputs"]) for a in artifacts]
        data = tflite.merge_models([a.data for a in artifacts], entry_keys(len(artifacts)), io_names)
        shared = {key: artifacts[0].metadata[key] for key in ("soc", "aot", "why", "float_weights")
                  if key in artifacts[0].metadata}
        return edgeport.Artifact(data, ".tflite", {**shared, "weight_bytes": len(data),  # every entry's weights once
                                                   "entries": [dict(a.metadata) for a in artifacts]})

    def tolerance(self, options: MediatekOptions) -> float:
        # fp16 weights, or the APU (which relaxes fp32 to fp16 for every model): ~3 decimal
        # digits. Here, without an APU, fp32 weights run on the fp32 CPU reference.
        if options.fp16 or not toolchain.apu_missing():
            return 1e-2
        return super().tolerance(options)

    def op_error(self, options: MediatekOptions) -> float:
        if options.fp16 or not toolchain.apu_missing():  # as `tolerance`
            return FP16_OP_ERROR
        return super().op_error(options)

    def accumulator_error(self, options: MediatekOptions) -> float:
        # an int8 BATCH_MATMUL of two activations runs in TFLite's own kernel on the CPU
        # reference (XNNPACK has none), in gemmlowp's fixed point (core/devtools/rounding.py)
        return 1.0

    def load(self, artifact: edgeport.Artifact) -> Any:
        options = artifact.options if isinstance(artifact.options, MediatekOptions) else MediatekOptions()
        data = edgeport.as_bytes(artifact.data)
        entries = artifact.metadata.get("entries")
        if entries is not None:  # merged (`merge`): plain TFLite, a subgraph per entry
            keys, io_names = entry_keys(len(entries)), [(e["inputs"], e["outputs"]) for e in entries]
            if toolchain.apu_missing():
                return tflite.TfliteEntries(data, keys, io_names, options.threads)
            return CompiledModelEntries(data, options.threads, npu=True)
        plain, compiled = bundle.unpack(data, bool(artifact.metadata.get("aot")))
        if toolchain.apu_missing():
            return tflite.TfliteExecutable(plain, options.threads)
        return CompiledModelExecutable(compiled or plain, options.threads, npu=True)


def entry_keys(count: int) -> list[str]:
    """The signature keys of a merged model's subgraphs, in entry order."""
    return [f"entry{i}" for i in range(count)]


def _decline_what_neuropilot_refuses(data: bytes, program: Any) -> None:
    """Raise DeclineNodes for every node that wrote an op the plugin would refuse; a
    refused op that no compute node of the partition owns is a BackendError."""
    from . import written

    computed = {n.name for n in program.graph_module.graph.nodes if n.op == "call_function"}
    reasons: dict[str, str] = {}
    for op, reason in written.refusals(data):
        if op.node not in computed:
            raise edgeport.BackendError(
                f"{reason}; no node of the partition owns it",
                hint="the TFLite writer wrote it for layout or boundary handling: report it against the writer",
            )
        reasons.setdefault(op.node, reason)
    if reasons:
        raise edgeport.DeclineNodes(reasons)
