"""Running a Core ML artifact: on macOS only, through coremltools' `MLModel`."""

from __future__ import annotations

import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import edgeport
from edgeport.arrays import NO_NUMPY_TWIN, STORAGE

from . import package, toolchain

_NUMPY = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32}


def runs_here() -> bool:
    return sys.platform == "darwin"


def why_not_here() -> str:
    return f"Core ML runs only on macOS (this is {platform.system()})"


class CoreMLExecutable:
    """A loaded Core ML model that takes and returns the partition's tensors.

    ``metadata`` is the artifact's: it maps each partition input and output to its
    Core ML feature name and carrier dtype.
    """

    def __init__(self, data: bytes, metadata: dict[str, Any], compute_units: str) -> None:
        ct = toolchain.coremltools()
        self._inputs = metadata["inputs"]
        self._outputs = metadata["outputs"]
        self._dir = tempfile.TemporaryDirectory(prefix="edgeport-coreml-")  # lives as long as the model
        path = package.extract(data, Path(self._dir.name))
        with toolchain.quiet():
            self._model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit[compute_units])

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        if len(inputs) != len(self._inputs):
            expected = ", ".join(i["name"] for i in self._inputs)
            raise edgeport.BackendError(
                f"the Core ML partition takes {len(self._inputs)} inputs ({expected}), got {len(inputs)}"
            )
        feed = {
            spec["coreml_name"]: edgeport.as_numpy(tensor).astype(_NUMPY[spec["coreml_dtype"]])
            for spec, tensor in zip(self._inputs, inputs)
        }
        with toolchain.quiet():
            result = self._model.predict(feed)
        return [_output(result[spec["coreml_name"]], spec) for spec in self._outputs]


def _output(value: Any, spec: dict[str, Any]) -> Any:
    """A Core ML output as the partition's value: its dtype and shape (a numpy array;
    a torch tensor for bfloat16, which numpy lacks)."""
    array = np.ascontiguousarray(value).reshape(spec["shape"])
    if spec["dtype"] in NO_NUMPY_TWIN:
        import torch

        return torch.from_numpy(array.astype(np.float32)).to(getattr(torch, spec["dtype"]))
    return array.astype(STORAGE[spec["dtype"]], copy=False)
