"""Where the NeuroPilot pieces are, if anywhere: the SDK for AOT, the APU for running.

- AOT on a host needs the NeuroPilot SDK libraries (`libneuronusdk_adapter.mtk.so`).
  LiteRT's MediaTek AOT target finds them the way `sdk_libs_missing` does: through the
  `ai_edge_litert_sdk_mediatek` package, which downloads them from MediaTek when it is
  installed (ai_edge_litert/aot/vendors/mediatek/mediatek_backend.py, `_apply_plugin`).
- Running on the APU needs a MediaTek device: LiteRT's MediaTek dispatch library
  (`libLiteRtDispatch_MediaTek.so`) and the NeuroPilot runtime (NeuronAdapter) that
  MediaTek ships in the device's vendor partition.

Nothing here imports LiteRT; every answer is "" (present) or why not.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from pathlib import Path

SDK_PACKAGE = "ai_edge_litert_sdk_mediatek"
ADAPTER_GLOB = "libneuronusdk_adapter*.mtk.so"  # .mtk.so (NeuroPilot 8), .9.mtk.so (9)
DISPATCH_LIBRARY = "libLiteRtDispatch_MediaTek.so"
VENDOR_LIB_DIRS = ("/vendor/lib64", "/system/vendor/lib64")

NO_SDK = "NeuroPilot SDK not installed (ai-edge-litert-sdk-mediatek downloads it at install time, not reachable here)"
NO_APU = "no MediaTek APU on this machine: runs the same TFLite on LiteRT's CPU as a reference"


def sdk_libs_missing(np_version: str) -> str:
    """Why the NeuroPilot SDK libraries for `np_version` ("v8", "v9") are not here, or ""."""
    if importlib.util.find_spec(SDK_PACKAGE) is None:
        return NO_SDK
    try:
        libs = importlib.import_module(SDK_PACKAGE).path_to_sdk_libs(np_version)
    except Exception as e:  # noqa: BLE001 - the package raises on unsupported hosts
        return f"NeuroPilot SDK unusable here: {SDK_PACKAGE}.path_to_sdk_libs({np_version!r}) failed: {e}"
    if libs is None or not any(Path(libs).glob(ADAPTER_GLOB)):
        return f"NeuroPilot SDK {np_version} has no {ADAPTER_GLOB} under {libs} (reinstall ai-edge-litert-sdk-mediatek)"
    return ""


def dispatch_dir() -> Path | None:
    """The directory holding LiteRT's MediaTek dispatch library, or None."""
    for d in _library_dirs(_litert_vendor_dir("dispatch")):
        if (d / DISPATCH_LIBRARY).is_file():
            return d
    return None


def compiler_plugin_dir() -> Path | None:
    """The directory of LiteRT's MediaTek compiler plugin (it ships in ai-edge-litert)."""
    d = _litert_vendor_dir("compiler")
    return d if d is not None and any(d.glob("libLiteRtCompilerPlugin_MediaTek*")) else None


@functools.cache
def apu_missing() -> str:
    """Why this machine cannot run a model on a MediaTek APU, or "" on a MediaTek device."""
    if dispatch_dir() is None:
        return NO_APU
    if not any(any(d.glob(ADAPTER_GLOB)) for d in _library_dirs(None, VENDOR_LIB_DIRS)):
        return f"{NO_APU} (LiteRT's MediaTek dispatch library is here, but no NeuroPilot runtime {ADAPTER_GLOB})"
    return ""


def _litert_vendor_dir(kind: str) -> Path | None:
    spec = importlib.util.find_spec("ai_edge_litert")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "vendors" / "mediatek" / kind


def _library_dirs(first: Path | None, extra: tuple[str, ...] = ()) -> list[Path]:
    """`first`, then LD_LIBRARY_PATH, then `extra`: where the dynamic loader would look."""
    dirs = [first] if first is not None else []
    dirs += [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    dirs += [Path(p) for p in extra]
    return [d for d in dirs if d.is_dir()]
