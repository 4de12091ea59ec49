"""Quantization: schemes, placement-aware annotation, calibration and the PT2E flow.

`edgeport.export(..., quantize="int8", calibration=batches)` runs it; a backend takes
part by listing its `schemes` and returning a quantizer from `Backend.quantizer`
(docs/quantization.md). Importing this package does not import torchao; the flow
imports it when it runs.
"""

from .calibration import CalibrationError, CalibrationStats, calibrate, load_calibration
from .flow import QuantizationError, is_qat_model, prepare_qat_model, quantize_method
from .placement import Placement, place
from .scheme import AUTO, DYNAMIC, FLOAT, REQUESTS, SCHEMES, STATIC, Scheme, resolve_scheme

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
