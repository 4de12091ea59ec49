"""Can QNN share weights between two graphs here (an LLM's prefill and decode)?

    python bench/qualcomm_weight_sharing.py

ONNX Runtime's QNN EP makes one context binary holding several graphs over one copy of
their weights when the sessions that compile them share EP contexts
(``ep.share_ep_contexts=1``; the last one also sets ``ep.stop_share_ep_contexts=1``),
for QDQ (quantized) models, generated on x86-64. This probe compiles two QDQ models
that read the same int8 weight (a 1-row "decode" and an 8-row "prefill", each
a16w8-style: uint16 activations), once separately and once as a sharing group, prints
the context binaries' sizes, then tries to load each group's models in QNN's HTP
simulator (each load in its own process: a failed load may crash it), with and without
``ep.share_ep_contexts`` at load.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

D = 512  # a 512x512 int8 weight: 256 KiB, the bulk of each context
NAMES = (("decode", 1), ("prefill", 8))


def qdq_model(name: str, rows: int) -> bytes:
    """x (rows, D) -> Q/DQ (uint16) -> MatMul with DQ(int8 W) -> Q/DQ (uint16)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).integers(-127, 128, size=(D, D), dtype=np.int8)
    constants = {"w": weight, "ws": np.float32(0.01), "wz": np.int8(0), "xs": np.float32(1 / 16384),
                 "xz": np.uint16(32768), "ys": np.float32(0.002), "yz": np.uint16(32768)}
    nodes = [
        helper.make_node("QuantizeLinear", [f"x_{name}", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["y0"]),
        helper.make_node("QuantizeLinear", ["y0", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], [f"y_{name}"]),
    ]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(f"x_{name}", TensorProto.FLOAT, [rows, D])],
                              [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, [rows, D])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model.SerializeToString()


def compile_group(folder: str, share: bool) -> dict[str, int]:
    """Compile both models into ``folder`` (a sharing group or not): file -> bytes."""
    import onnxruntime as ort

    from edgeport.backends.qualcomm.options import QualcommOptions, provider_options
    from edgeport.backends.qualcomm.qnn_runtime import qnn_devices

    options = {**provider_options(QualcommOptions()), "enable_htp_prepare_only": "1"}
    options.pop("enable_htp_fp16_precision", None)
    for i, (name, rows) in enumerate(NAMES):
        so = ort.SessionOptions()
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_embed_mode", "0")  # the binary beside the model: sharable
        so.add_session_config_entry("ep.context_file_path", os.path.join(folder, f"{name}_ctx.onnx"))
        if share:
            so.add_session_config_entry("ep.share_ep_contexts", "1")
            if i == len(NAMES) - 1:
                so.add_session_config_entry("ep.stop_share_ep_contexts", "1")
        so.add_provider_for_devices(qnn_devices(), options)
        ort.InferenceSession(qdq_model(name, rows), so)
    return {os.path.basename(p): os.path.getsize(p) for p in sorted(glob.glob(os.path.join(folder, "*")))}


def load_both(folder: str, share: bool) -> None:
    """(child process) Load and run both compiled models; print the largest error."""
    import onnxruntime as ort

    from edgeport.backends.qualcomm.qnn_runtime import qnn_devices

    x = np.random.default_rng(1).uniform(-1, 1, size=(8, D)).astype(np.float32)
    for name, rows in NAMES:
        so = ort.SessionOptions()
        if share:
            so.add_session_config_entry("ep.share_ep_contexts", "1")
        so.add_provider_for_devices(qnn_devices(), {"backend_type": "htp"})
        session = ort.InferenceSession(os.path.join(folder, f"{name}_ctx.onnx"), so)
        session.run(None, {f"x_{name}": x[:rows]})
    print("ran both")


def try_load(folder: str, share: bool) -> str:
    child = subprocess.run([sys.executable, __file__, "--load", folder, str(int(share))], capture_output=True, text=True)
    if child.returncode == 0:
        return child.stdout.strip().splitlines()[-1]
    errors = [line for line in child.stderr.splitlines() if "Error" in line or "error" in line]
    return f"exit {child.returncode}" + (f": {errors[-1][-200:]}" if errors else " (crashed)")


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgeport-qnn-share-") as tmp:
        for share in (False, True):
            folder = os.path.join(tmp, "shared" if share else "separate")
            os.makedirs(folder)
            files = compile_group(folder, share)
            results["shared" if share else "separate"] = {
                "files": files,
                "context_bytes": sum(size for f, size in files.items() if f.endswith(".bin")),
                "load_plain": try_load(folder, False),
                "load_sharing": try_load(folder, True),
            }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--load"]:
        load_both(sys.argv[2], sys.argv[3] == "1")
    else:
        main()
