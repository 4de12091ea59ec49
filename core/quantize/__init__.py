"""Quantization: schemes, placement-aware annotation, calibration and the PT2E flow.

`edgeport.export(..., quantize="int8", calibration=batches)` runs it; a backend takes
part by listing its `schemes` and returning a quantizer from `Backend.quantizer`
(docs/quantization.md). Importing this package does not import torchao; the flow
imports it when it runs. The schemes are plain data, imported at once (plugin
registration checks a backend's scheme names, without torch); the rest imports torch and
is imported on first use (`edgeport.lazy`).
"""

from ..lazy import imported_on_first_use
from .scheme import AUTO, DYNAMIC, FLOAT, REQUESTS, SCHEMES, STATIC, Scheme, resolve_scheme

__getattr__ = imported_on_first_use(__name__, {
    **dict.fromkeys(("CalibrationError", "CalibrationStats", "calibrate", "load_calibration"), ".calibration"),
    **dict.fromkeys(("QuantizationError", "is_qat_model", "prepare_qat_model", "quantize_method"), ".flow"),
    **dict.fromkeys(("Placement", "place"), ".placement"),
})

__all__ = [
    "AUTO",
    "DYNAMIC",
    "FLOAT",
    "REQUESTS",
    "SCHEMES",
    "STATIC",
    "CalibrationError",
    "CalibrationStats",
    "Placement",
    "QuantizationError",
    "Scheme",
    "calibrate",
    "is_qat_model",
    "load_calibration",
    "place",
    "prepare_qat_model",
    "quantize_method",
    "resolve_scheme",
]
