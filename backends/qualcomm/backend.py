"""The qualcomm backend: Snapdragon NPUs (Hexagon HTP) through ONNX Runtime's QNN EP.

compile: partition → ONNX (torch.onnx, dynamo) → QNN HTP context binary for one SoC,
wrapped in an EPContext ONNX model (the artifact) — with placement verified.
load/run: ONNX Runtime + QNN EP runs that model: on a Snapdragon device, the NPU; on
x86 Linux, QNN's HTP simulator, and every report says so.

Registering it and `load` import no torch (the run side, on a device); `support`,
`keep_ops` and `compile` import the torch half (support.py, onnx_export.py) when called.
"""

from __future__ import annotations

import importlib.util
import logging
import platform
import sys
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

import edgeport
from edgeport.backend import FP16_OP_ERROR
from edgeport.support import DATA_MOVEMENT, SLICING

from .options import QualcommOptions, provider_options, resolve_soc
from .qnn_runtime import run_session

if TYPE_CHECKING:
    from torch.export import ExportedProgram
    from torch.fx import Node
_RUNTIME = ("onnxruntime", "onnxruntime_qnn")  # running an artifact (edgeport[runtime-qualcomm])
_COMPILER = ("onnx", "onnxscript")  # also needed to compile one (edgeport[qualcomm])
log = logging.getLogger("edgeport.qualcomm")


class QnnExecutable:
    """A loaded EPContext model; feeds inputs by the names recorded at compile time."""

    # ONNX Runtime's InferenceSession.run may be called from several threads at once
    # (each call has its own inputs and outputs), so edgeport need not serialize calls.
    # On the simulator they are serialized after all: `run_session` captures the process's
    # stdout for each call, one at a time.
    thread_safe = True

    def __init__(self, session: Any, inputs: list[str], outputs: list[str], simulator: bool = False) -> None:
        self._session = session
        self._inputs = inputs
        self._outputs = outputs
        self._simulator = simulator  # prints a failed op's reason to stdout
        self._nan_said = False

    def run(self, inputs: Sequence[Any]) -> Sequence[Any]:
        if len(inputs) != len(self._inputs):
            raise edgeport.ExecutionError(
                f"qualcomm: the partition takes {len(self._inputs)} inputs, got {len(inputs)}"
            )
        feeds = {name: edgeport.as_numpy(t) for name, t in zip(self._inputs, inputs)}
        if not self._nan_said:
            self._nan_said = said_nan(feeds)
        if self._simulator:
            return run_session(self._session, self._outputs, feeds)
        return self._session.run(self._outputs, feeds)


def said_nan(feeds: Mapping[str, np.ndarray]) -> bool:
    """Warn of a float input holding NaN, and say whether one did (a loaded step warns once).

    HTP has no NaN or infinity: a NaN enters as 131008 and every op computes with it as a
    number (`relu` 65536, `softmax` a one-hot: docs/coverage.md, "NaN and infinity"), so
    the answer is not torch's. A warning, not an error: a later op may mask the value
    away (`where(isnan(x), 0, x)`, the isnan run elsewhere), and then the answer is right.
    An infinity saturates to ±131008, which an additive mask of -inf needs: not warned of.
    One pass per float input (a dot product with itself: NaN carries through it, an
    infinity or an overflow gives inf)."""
    for name, array in feeds.items():
        if array.dtype.kind == "f" and array.size:
            with np.errstate(over="ignore", invalid="ignore"):
                if np.isnan(np.vdot(array, array)):
                    log.warning("qualcomm: the step's input %s holds NaN, which HTP does not have: it computes with "
                                "131008 in its place, so the answer is not torch's (replace NaN before the call, "
                                "e.g. numpy.nan_to_num)", name)
                    return True
    return False


class QualcommBackend(edgeport.Backend):
    """Qualcomm Snapdragon NPU (QNN HTP) via ONNX Runtime's QNN execution provider."""

    name = "qualcomm"
    options = QualcommOptions
    # A partition of nothing but data movement would only copy across the boundary.
    rules = edgeport.PartitionRules(
        min_nodes=1,
        never_alone=DATA_MOVEMENT | SLICING,
    )

    # int8 (uint8 activations) and a16w8 (uint16 activations, QNN's default for
    # accuracy): both with int8 per-channel weights (quantizer.py).
    schemes = frozenset({"int8", "a16w8"})
    default_scheme = "a16w8"

    @property
    def version(self) -> str:
        try:
            import onnxruntime
            from onnxruntime_qnn import build_and_package_info as qnn
        except ImportError:
            return "onnxruntime-qnn not installed"
        return f"onnxruntime-qnn {qnn.__version__} (QNN {qnn.qnn_version}), onnxruntime {onnxruntime.__version__}"

    def availability(self) -> edgeport.Availability:
        missing = [name for name in _RUNTIME + _COMPILER if importlib.util.find_spec(name) is None]
        can_run = not set(missing) & set(_RUNTIME)
        if not can_run:
            return edgeport.Availability(
                can_compile=False,
                can_run=False,
                why=f"missing {', '.join(missing)}: pip install 'edgeport[qualcomm]'",
            )
        why = f"compile: missing {', '.join(missing)}: pip install 'edgeport[qualcomm]'" if missing else ""
        if _on_snapdragon():
            return edgeport.Availability(can_compile=not missing, can_run=True, why=why, runs_on="device")
        simulator = (f"{platform.system()} {platform.machine()}: runs in QNN's HTP simulator "
                     "(real QNN code on the CPU, not a Snapdragon NPU; timings say nothing about the device)")
        return edgeport.Availability(can_compile=not missing, can_run=True,
                                     why="; ".join(w for w in (why, simulator) if w), runs_on="simulator")

    def keep_ops(self) -> set[Any]:
        from .support import KEEP_OPS

        return set(KEEP_OPS)

    def prepare(self, program: ExportedProgram, options: QualcommOptions) -> dict[str, str]:
        """The nodes that pass an infinity or a NaN known at export on to an output, each
        with what it passes (HTP has neither: infinities.py)."""
        from .infinities import non_finite_flows

        return non_finite_flows(program, edgeport.SupportContext(program, options).constant)

    def support(self, node: Node, ctx: edgeport.SupportContext) -> edgeport.Support:
        from .support import check_support

        return check_support(node, ctx.prepared or {})

    def quantizer(self, scheme: edgeport.Scheme, options: QualcommOptions) -> Any:
        from .quantizer import QualcommQuantizer

        return QualcommQuantizer(scheme)

    def compile(self, program: ExportedProgram, options: QualcommOptions) -> edgeport.Artifact:
        from .constant_outputs import constant_outputs
        from .onnx_export import export_onnx
        from .placement import compile_verified
        from .qnn_runtime import context_binary
        from .qdq_support import quantized_dtypes

        qnn_options = provider_options(options)  # validates soc/precision before any work
        if fixed := constant_outputs(program):
            raise edgeport.DeclineNodes(fixed)
        partition = export_onnx(program)
        known = {node.name for node in program.graph.nodes}
        quantized = quantized_dtypes(program.graph)
        verified = compile_verified(partition, qnn_options, known, quantized=bool(quantized))
        context_model = verified.context_model
        soc = resolve_soc(options.soc)
        metadata = {
            "format": "onnx-epcontext",  # EPContext model embedding a QNN context binary
            "inputs": partition.inputs,
            "outputs": partition.outputs,
            "soc": soc.name,
            "soc_model": soc.soc_model,
            "htp_arch": soc.htp_arch,
            "precision": options.precision,  # how its float ops compute
            "toolchain": self.version,
            # What the device loads: the context binary, whose weights are laid out by QNN (an
            # LLM's tied table twice, the lookup's and the head's) and stored in fp16, the
            # precision's (HTP's only float), or as quantized; its graph adds under 1 MiB
            # for SmolLM2's 30 layers.
            "weight_bytes": len(context_binary(context_model)),
            "float_weights": "float16",
        }
        if quantized:  # e.g. {"activations": "uint16", "weights": "int8"}
            metadata["quantized"] = quantized
        return edgeport.Artifact(
            data=context_model,
            suffix=".onnx",
            metadata=metadata,
            float_nodes=verified.float_nodes,
        )

    def tolerance(self, options: QualcommOptions) -> float:
        # HTP computes float graphs in fp16 (~3 decimal digits).
        return {"fp16": 1e-2}.get(options.precision, super().tolerance(options))

    def op_error(self, options: QualcommOptions) -> float:
        # fp16 is HTP's float, in a quantized graph too: a float input's quantize, and
        # the tests' HTP_EXTRA_STEPS (tests/backends/qualcomm) measure how it rounds.
        return FP16_OP_ERROR if options.precision == "fp16" else super().op_error(options)

    def load(self, artifact: edgeport.Artifact) -> QnnExecutable:
        from .qnn_runtime import load_context

        availability = self.availability()
        if not availability.can_run:
            raise edgeport.ExecutionError(f"qualcomm cannot run here: {availability.why}")
        metadata = artifact.metadata
        # ONNX Runtime takes a model as bytes or a path only; it parses its own copy of them
        session = load_context(edgeport.as_bytes(artifact.data))
        _check_recorded_names(session, metadata)
        return QnnExecutable(session, list(metadata["inputs"]), list(metadata["outputs"]),
                             simulator=availability.runs_on == "simulator")


def _check_recorded_names(session: Any, metadata: dict[str, Any]) -> None:
    """The inputs and outputs the manifest records for the artifact are its model's, in
    its order: run() feeds inputs by these names, so a name edited in the manifest failed
    only at the first call, and two names swapped fed each input to the other, silently."""
    for key, model in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        names = [value.name for value in model]
        if list(metadata[key]) != names:
            raise edgeport.ProgramError(f"qualcomm: the artifact's metadata records {key} {list(metadata[key])}, "
                                        f"its model has {names}",
                                        hint="the manifest was edited: re-export the model")


def _on_snapdragon() -> bool:
    """Android or Windows on ARM64: where QNN HTP is a real NPU rather than the simulator."""
    machine = platform.machine().lower()
    return machine in ("aarch64", "arm64") and (hasattr(sys, "getandroidapilevel") or sys.platform == "win32")
