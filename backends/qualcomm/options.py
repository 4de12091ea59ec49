"""Compile options of the qualcomm backend, and what they mean to the QNN execution provider.

Users name the Snapdragon part they ship on (``SM8650``); QNN wants its own ids: a
``soc_model`` number and an HTP (Hexagon Tensor Processor) generation. The table below
holds both, from the QNN SDK's chipset list (the same ids ExecuTorch's and ONNX Runtime's
QNN integrations use).
"""

from __future__ import annotations

from dataclasses import dataclass

import edgeport


@dataclass(frozen=True)
class Soc:
    """One Snapdragon part as QNN knows it."""

    name: str  # what users type: "SM8650"
    soc_model: int  # QNN's chipset id (provider option soc_model)
    htp_arch: int  # Hexagon generation: 68, 69, 73, 75, 79, 81
    marketing: str  # what the box says


SOCS: dict[str, Soc] = {
    soc.name: soc
    for soc in (
        # HTP v68: seen computing float graphs at fp32 accuracy despite the fp16 switch,
        # and failing some graphs at finalize (a 1000-wide cumsum: QNN_COMMON_ERROR_MEM_ALLOC).
        Soc("SM8350", 30, 68, "Snapdragon 888"),
        Soc("SM8450", 36, 69, "Snapdragon 8 Gen 1"),
        Soc("SM8475", 42, 69, "Snapdragon 8+ Gen 1"),
        Soc("SM8550", 43, 73, "Snapdragon 8 Gen 2"),
        Soc("SM8650", 57, 75, "Snapdragon 8 Gen 3"),
        Soc("SM8750", 69, 79, "Snapdragon 8 Elite"),
        Soc("SM8850", 87, 81, "Snapdragon 8 Elite Gen 5"),
        Soc("QCS9100", 77, 73, "Qualcomm QCS9100 (IoT)"),
        Soc("SA8295", 39, 68, "Snapdragon Cockpit SA8295P"),
        Soc("SA8255", 52, 73, "Snapdragon Ride SA8255P"),
    )
}

# How HTP computes float ops: in fp16 (QNN's fp16 mode needs a named SoC). Quantized
# programs (`--quantize int8|a16w8|auto`) run their quantized ops in the integer types
# their quantize/dequantize nodes name; whatever the quantizer leaves float in them
# still computes in fp16. Quantization is asked with --quantize, never as a precision.
PRECISIONS: dict[str, dict[str, str]] = {
    "fp16": {"enable_htp_fp16_precision": "1"},
}
QUANTIZED_PRECISIONS = ("int8", "a16w8")  # once reserved here: say where they went


@dataclass(frozen=True)
class QualcommOptions:
    """What to compile for. Every field is a plain string so the CLI can set it."""

    # Snapdragon 8 Gen 3 (e.g. Galaxy S24): a current flagship, and QNN's fp16 mode
    # needs a named SoC, so there is no "generic" default to fall back on.
    soc: str = edgeport.option("SM8650", choices=tuple(SOCS))
    # How HTP computes float ops (all of a float program, the rest of a quantized one).
    precision: str = edgeport.option("fp16", choices=tuple(PRECISIONS))

    def __post_init__(self) -> None:
        if str(self.precision).lower() in QUANTIZED_PRECISIONS:
            raise edgeport.BackendError(
                f"qualcomm: precision {self.precision!r} is a quantization scheme, not a precision",
                hint=f"quantize with --quantize {str(self.precision).lower()} --calibration DATA "
                     "(Python: quantize=..., calibration=...); precision says how float ops compute (fp16)",
            )


def resolve_soc(name: str) -> Soc:
    """The `Soc` for a user-typed name (case and an "-AB"-style suffix ignored)."""
    key = name.strip().upper().split("-")[0]
    soc = SOCS.get(key)
    if soc is None:
        raise edgeport.BackendError(
            f"qualcomm: unknown SoC {name!r}",
            hint="choose one of: " + ", ".join(f"{s.name} ({s.marketing})" for s in SOCS.values()),
        )
    return soc


def provider_options(options: QualcommOptions) -> dict[str, str]:
    """The QNN execution provider's options for compiling `options` on the HTP backend."""
    soc = resolve_soc(options.soc)
    if options.precision not in PRECISIONS:
        raise edgeport.BackendError(
            f"qualcomm: unknown precision {options.precision!r}",
            hint="choose one of: " + ", ".join(PRECISIONS),
        )
    return {
        "backend_type": "htp",
        "soc_model": str(soc.soc_model),
        "htp_arch": str(soc.htp_arch),
        # A quantized partition takes and returns float: the quantize of its inputs and
        # the dequantize of its outputs run on HTP too, not on ONNX Runtime's CPU EP
        # (QNN's default would offload them and refuse the nodes). No effect on float.
        "offload_graph_io_quantization": "0",
        **PRECISIONS[options.precision],
    }
