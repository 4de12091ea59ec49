"""ONNX Runtime with the QNN execution provider: ONNX → EPContext model, and running one.

The QNN EP ships as a plugin library (`onnxruntime-qnn`) registered into a stock
onnxruntime. Compiling is a session with ``ep.context_enable=1``: QNN builds its graph
for the chosen SoC, finalizes it into a context binary, and ONNX Runtime writes an ONNX
model whose EPContext node embeds that binary. While compiling we listen to ONNX
Runtime's log, because that is the only place QNN says *why* it refused a node.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from edgeport import BackendError, ExecutionError, filter_native_output

EP_NAME = "QNNExecutionProvider"
_QUIET = 3  # ONNX Runtime severity: errors only
_VERBOSE = 0
_FATAL = 4
# "Validation FAILED for 1 nodes in OrtNodeUnit (Erf) :\n\tOperator type: Erf Node name: n0
#  Node index: 0\n\tREASON : Operators of type `Erf` are not supported by QNN EP..."
_REFUSAL = re.compile(r"Validation FAILED.*?Node name: (?P<node>\S+).*?REASON : (?P<reason>.*)", re.S)
_QNN_ERROR = re.compile(r"<E> (?P<text>.*)")
_NODE_FAILED = re.compile(r"failed for node `(?P<node>[^`]+)`")
_QNN_TENSOR_ID = re.compile(r"^\[\d+\] ")
_GENERIC_REASONS = ("Failed to add node.",)
_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : ")
# QNN's HTP library prints a banner to stdout when it loads ("# LIBNATIVE: No alternate
# configuration present in libnative_tls.conf ..."), whatever its configuration.
_CHATTER = (re.compile(r"^\s*# LIBNATIVE: "),)
# The HTP simulator prints a failed op's reason to stdout, not to ONNX Runtime's log:
# "[1] gather_16.h:53::ERROR:Gather index: 100000 is larger than input dim: 2 size: 256"
_SIMULATOR_ERROR = re.compile(r"^\[\d+\] \S+:\d+::ERROR:(?P<text>.*)")
_QNN_QDQ = frozenset({"Quantize", "Dequantize"})  # QNN's op types for QuantizeLinear, DequantizeLinear


class QnnCompileError(Exception):
    """QNN failed the graph as a whole (e.g. at finalize); `qnn_errors` are its own log lines."""

    def __init__(self, message: str, qnn_errors: list[str]) -> None:
        super().__init__(message)
        self.qnn_errors = qnn_errors


@dataclass
class CompileOutcome:
    """What one compile gave: the EPContext model, and the nodes QNN left to the CPU EP."""

    context_model: bytes | None
    refused: dict[str, str] = field(default_factory=dict)  # ONNX node name -> QNN's reason
    # ONNX nodes whose QNN op computes in float (asked for by `float_ops=True`)
    float_ops: frozenset[str] = frozenset()


class _LogSink:
    """Where ONNX Runtime's log goes once we registered the QNN plugin.

    QNN's own messages (its specific errors, e.g. "has incorrect Rank 6") reach ONNX
    Runtime's callback only if the callback was verbose when the plugin was registered;
    so it is installed then, for good. While compiling, `capture` collects every line;
    otherwise errors still reach stderr and the rest is dropped, keeping runs quiet.
    """

    def __init__(self) -> None:
        self.lines: list[str] | None = None

    def __call__(self, severity: int, _category: str, _logid: str, _location: str, message: str) -> None:
        if self.lines is not None:
            self.lines.append(message)
        elif severity >= _QUIET:
            sys.stderr.write(f"onnxruntime: {message.rstrip()}\n")

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[str]]:
        """Collect every log line (QNN's verbose ones included) until the block ends."""
        self.lines = lines = []
        self.listen(_VERBOSE)
        try:
            yield lines
        finally:
            self.lines = None
            self.listen(_QUIET)

    def listen(self, severity: int) -> None:
        import onnxruntime as ort

        if hasattr(ort, "set_default_logger_callback"):  # onnxruntime >= 1.23
            ort.set_default_logger_callback(self, severity)
        else:  # no reasons from QNN then, only ONNX Runtime's assignment record
            ort.set_default_logger_severity(max(severity, _QUIET))


_SINK = _LogSink()
# One compile at a time: the log sink is process-wide.
_COMPILE_LOCK = threading.Lock()


def qnn_devices() -> list[Any]:
    """The QNN EP's devices, registering the plugin library (and our log sink) on first use."""
    import onnxruntime as ort
    import onnxruntime_qnn

    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if devices:
        return devices
    _SINK.listen(_VERBOSE)
    try:
        ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
    finally:
        _SINK.listen(_QUIET)
    return [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]


def compile_context(model: bytes, provider_options: dict[str, str], float_ops: bool = False) -> CompileOutcome:
    """Compile an ONNX model for QNN HTP ahead of time; raise `QnnCompileError` on failure.

    CPU fallback stays allowed here on purpose: then a refused node does not fail the
    compile, and ONNX Runtime's graph-assignment record names every node QNN did not take.
    `float_ops`: also name the nodes QNN computes in float (read off the graph it built).
    """
    import onnxruntime as ort

    devices = qnn_devices()
    with tempfile.TemporaryDirectory(prefix="edgeport-qnn-") as tmp:
        context_path = os.path.join(tmp, "partition_ctx.onnx")
        so = ort.SessionOptions()
        so.log_severity_level = _VERBOSE  # refusal reasons are logged at verbose level
        # No thread pool: its threads would log verbosely to stderr, past our callback.
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        # ORT's own CPU-side rewrites would rename nodes; QNN optimizes its graph itself.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_embed_mode", "1")
        so.add_session_config_entry("ep.context_file_path", context_path)
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        # Only prepare the context binary; do not also load it into the simulator.
        options = {**provider_options, "enable_htp_prepare_only": "1"}
        if float_ops:
            options.update(dump_json_qnn_graph="1", json_qnn_graph_dir=tmp)
        so.add_provider_for_devices(devices, options)
        with _COMPILE_LOCK, _SINK.capture() as log, filter_native_output(drop=_CHATTER):
            try:
                session = ort.InferenceSession(model, so)
            except Exception as exc:
                raise QnnCompileError(_ort_message(exc), _qnn_errors(log)) from exc
        refused_names = {
            node.name
            for subgraph in session.get_provider_graph_assignment_info()
            if subgraph.ep_name != EP_NAME
            for node in subgraph.get_nodes()
        }
        del session
        reasons = _refusal_reasons(log)
        refused = {name: reasons.get(name, "left to ONNX Runtime's CPU EP") for name in refused_names}
        data = None
        if not refused and os.path.exists(context_path):
            with open(context_path, "rb") as f:
                data = f.read()
        computed_in_float = _float_ops(tmp) if float_ops and data is not None else frozenset()
    return CompileOutcome(context_model=data, refused=refused, float_ops=computed_in_float)


def load_context(context_model: bytes) -> Any:
    """An ONNX Runtime session running an EPContext model on QNN HTP, with no CPU fallback."""
    import onnxruntime as ort

    devices = qnn_devices()
    so = ort.SessionOptions()
    so.log_severity_level = _QUIET
    # A qualcomm step must never run part of its work on ONNX Runtime's CPU kernels.
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.add_provider_for_devices(devices, {"backend_type": "htp"})
    with filter_native_output(drop=_CHATTER):
        # enable_fallback=0: else a failed run prints to stdout and is retried on the CPU EP, whose
        # refusal ("Conflicting session configuration") replaces QNN's error
        return ort.InferenceSession(context_model, so, enable_fallback=0)


def run_session(session: Any, outputs: list[str], feeds: dict[str, Any]) -> list[Any]:
    """``session.run``, with what QNN prints kept off stdout; a failed run is one
    ExecutionError carrying QNN's own reason (the simulator prints it; ONNX Runtime's
    error says only "QNN graph execute error")."""
    import onnxruntime as ort

    quiet = ort.RunOptions()
    quiet.log_severity_level = _FATAL  # its "Non-zero status code" line says what the error says
    printed: list[str] = []
    try:
        with filter_native_output(drop=(*_CHATTER, _SIMULATOR_ERROR), captured=printed):
            return session.run(outputs, feeds, quiet)
    except Exception as exc:
        reasons = [m.group("text").strip() for line in printed if (m := _SIMULATOR_ERROR.search(line))]
        raise ExecutionError(f"qualcomm could not run the graph: {reasons[0] if reasons else _ort_message(exc)}",
                             hint="check the inputs' values (an index or token id past what the model has?)") from exc


def context_binary(epcontext_model: bytes) -> bytes:
    """The QNN context binary embedded in a qualcomm artifact (an EPContext ONNX model)."""
    import onnx

    model = onnx.load_from_string(epcontext_model)
    for node in model.graph.node:
        if node.op_type == "EPContext":
            for attribute in node.attribute:
                if attribute.name == "ep_cache_context":
                    return attribute.s
    raise BackendError(
        "this qualcomm artifact holds no embedded QNN context binary",
        hint="recompile the program with this edgeport version",
    )


def _refusal_reasons(log: list[str]) -> dict[str, str]:
    """ONNX node name -> QNN's reason. When the EP's reason is generic ("Failed to add
    node."), QNN's own first error line logged while validating that node is added."""
    reasons: dict[str, str] = {}
    node_errors: dict[str, str] = {}
    pending: list[str] = []  # QNN error lines since the last node validation verdict
    for line in log:
        if error := _QNN_ERROR.search(line):
            pending.append(_QNN_TENSOR_ID.sub("", error.group("text")).strip())
        elif failed := _NODE_FAILED.search(line):
            if pending:
                node_errors.setdefault(failed.group("node"), pending[0])
            pending = []
        elif refusal := _REFUSAL.search(line):
            node = refusal.group("node")
            reason = " ".join(refusal.group("reason").split())
            if reason in _GENERIC_REASONS and node in node_errors:
                reason = f"{reason.rstrip('.')}: {node_errors[node]}"
            reasons[node] = reason  # a later pass's verdict is the final one
    return reasons


def _float_ops(graph_dir: str) -> frozenset[str]:
    """The ops of the QNN graph(s) dumped in `graph_dir` that output a float tensor,
    quantize and dequantize ops aside. In a quantized model QNN groups each node with
    the DequantizeLinear nodes it reads and the QuantizeLinear it feeds and runs it on
    fixed-point tensors; a node it cannot group (a Mul by a float constant) it runs
    between a Dequantize and a Quantize, in float. QNN names an op after the ONNX node
    it comes from; ops it adds (a Convert between two encodings) have names of their own.
    """
    names: set[str] = set()
    for path in glob.glob(os.path.join(graph_dir, "*.json")):
        if path.endswith("_tensor_log.json"):  # the initializers' summary
            continue
        with open(path) as f:
            graph = json.load(f)["graph"]
        tensors = graph["tensors"]
        for name, op in graph["nodes"].items():
            if op["type"] not in _QNN_QDQ and any(_is_float(tensors[t]["data_type"]) for t in op["output_names"]):
                names.add(name)
    return frozenset(names)


def _is_float(qnn_data_type: int) -> bool:
    """QnnTypes.h's Qnn_DataType_t keeps the kind in the high byte: 0x02.. floats
    (QNN_DATATYPE_FLOAT_16 = 0x0216, FLOAT_32 = 0x0232), 0x03.. and 0x04.. signed and
    unsigned fixed point (SFIXED_POINT_8 = 0x0308, UFIXED_POINT_16 = 0x0416)."""
    return qnn_data_type >> 8 == 0x02


def _qnn_errors(log: list[str]) -> list[str]:
    return [m.group("text").strip() for line in log if (m := _QNN_ERROR.search(line))]


def _ort_message(exc: BaseException) -> str:
    """ONNX Runtime's message without its "[ONNXRuntimeError] : 11 : EP_FAIL :" prefixes."""
    return _ORT_PREFIX.split(" ".join(str(exc).split()))[-1]
