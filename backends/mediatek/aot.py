"""Ahead-of-time compilation for one SoC through LiteRT's AOT driver (`ai_edge_litert.aot`).

`aot_compile` runs LiteRT's `apply_plugin_main` with the MediaTek compiler plugin, which
partitions the TFLite model and compiles what it selects to NeuroPilot bytecode (DLA)
inside the returned model. It needs the NeuroPilot SDK libraries (see toolchain.py);
without them the plugin stops at "Failed to load NeuronAdapter shared library".
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import edgeport

_LOG = re.compile(r"See (\S+\.error) for details")


@dataclass(frozen=True)
class CompiledForApu:
    data: bytes  # the TFLite model with NeuroPilot bytecode for what the plugin selected
    ops_on_apu: int
    ops_total: int
    partitions: int


def compile_for_apu(tflite_model: bytes, soc: str) -> CompiledForApu:
    """AOT-compile `tflite_model` for MediaTek SoC `soc` (a LiteRT SocModel name)."""
    from ai_edge_litert.aot import aot_compile
    from ai_edge_litert.aot.core import aot_types
    from ai_edge_litert.aot.vendors.mediatek import target

    model = aot_types.Model.create_from_bytes(tflite_model)
    try:
        with _dla_dir():
            result = aot_compile.aot_compile(model, target=target.Target(target.SocModel(soc)), keep_going=False)
    except ValueError as e:
        raise edgeport.BackendError(
            f"NeuroPilot AOT compile for {soc} failed: {_plugin_error(str(e))}",
            hint="check that ai-edge-litert-sdk-mediatek matches ai-edge-litert, or export without the SDK "
            "to ship the plain TFLite model (the device compiles it on first load)",
        ) from None
    (_, compiled), = result.models_with_backend
    stats = compiled.partition_stats.subgraph_stats if compiled.partition_stats else []
    return CompiledForApu(
        compiled.model_bytes,
        ops_on_apu=sum(s.num_ops_offloaded for s in stats),
        ops_total=sum(s.num_total_ops for s in stats),
        partitions=sum(s.num_partitions_offloaded for s in stats),
    )


@contextlib.contextmanager
def _dla_dir() -> Iterator[None]:
    """Point the plugin's DLA dump (MTKNN_ADAPTER_DLA_DIR, read by apply_plugin_main from
    its environment) at a directory removed afterwards; by default it leaves
    /tmp/tempdir_dla.* behind on every call."""
    previous = os.environ.get("MTKNN_ADAPTER_DLA_DIR")
    with tempfile.TemporaryDirectory(prefix="edgeport-dla-", ignore_cleanup_errors=True) as d:
        os.environ["MTKNN_ADAPTER_DLA_DIR"] = d
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("MTKNN_ADAPTER_DLA_DIR", None)
            else:
                os.environ["MTKNN_ADAPTER_DLA_DIR"] = previous


def _plugin_error(message: str) -> str:
    """The plugin's own ERROR lines from the log LiteRT names in `message` (the log is
    a temporary file nobody else reads, so it is removed)."""
    match = _LOG.search(message)
    if not match:
        return message
    log = Path(match.group(1))
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.startswith("ERROR")]
        log.unlink()
    except OSError:
        return message
    return "; ".join(dict.fromkeys(re.sub(r"^ERROR: \[[^]]*\] ", "", line) for line in lines[:2])) or message
