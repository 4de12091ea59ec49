"""Running a Core ML artifact: on macOS only, through coremltools' `MLModel`."""

from __future__ import annotations

import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

import edgeport

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

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(inputs) != len(self._inputs):
            expected = ", ".join(i["name"] for i in self._inputs)
            raise edgeport.BackendError(
                f"the Core ML partition takes {len(self._inputs)} inputs ({expected}), got {len(inputs)}"
            )
        feed = {
            spec["coreml_name"]: tensor.detach().cpu().numpy().astype(_NUMPY[spec["coreml_dtype"]])
            for spec, tensor in zip(self._inputs, inputs)
        }
        with toolchain.quiet():
            result = self._model.predict(feed)
        return [
            torch.from_numpy(np.ascontiguousarray(result[spec["coreml_name"]]))
            .to(getattr(torch, spec["dtype"]))
            .reshape(spec["shape"])
            for spec in self._outputs
        ]
