"""A case's program as users get it back: saved to a file, loaded from it, and called
with numpy arrays as well as tensors.

The conformance kit runs every case this way, because what an exported program does in
memory is not what a saved one does: `Backend.load` is handed a read-only memoryview of
the mapped file (not the ``bytes`` `compile` returned), the artifact's metadata and the
backend's version go through the manifest's JSON, and ``edgeport run`` and a device
without torch pass the executable numpy arrays. A backend that only worked in memory
passed the kit and then failed its first real use.

Saving and loading a small case's program takes milliseconds; the numpy call is made
once per case, on its example inputs.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from ..arrays import NO_NUMPY_TWIN
from ..errors import EdgeportError
from ..plugins import Registry
from ..program import Program, load
from ..torch_steps import portable_steps
from .time_limit import step


class RoundTripFailed(Exception):
    """The saved program failed where the one in memory did not; the message is the
    case's verdict line."""


def saved_and_loaded(program: Program, registry: Registry) -> tuple[Program, Program | None]:
    """``program`` saved to a file and loaded back twice, as users load it: once to run
    on tensors, and once on numpy arrays (None when the program cannot: a portable step
    runs in torch, and numpy has no bfloat16)."""
    with tempfile.TemporaryDirectory(prefix="edgeport-kit-", ignore_cleanup_errors=True) as folder:
        path = os.path.join(folder, "case.edgeport")
        try:
            program.save(path)
        except EdgeportError as exc:
            raise RoundTripFailed(f"save failed: {exc}" + (f" ({exc.hint})" if exc.hint else "")) from exc
        loaded = load(path, registry=registry)  # mapped: the pages stay once the file is gone
        plans = program.manifest.methods.values()
        dtypes = {spec.dtype for plan in plans for spec in (*plan.inputs, *plan.outputs)}
        runs_on_arrays = not portable_steps(program.manifest) and not dtypes & NO_NUMPY_TWIN
        return loaded, load(path, registry=registry) if runs_on_arrays else None


def loaded_runtime(program: Program, arrays: str = "auto") -> None:
    """Load every artifact of ``program`` (its backend's `load`) now, so a failing load
    is named as one and not as a failing run."""
    try:
        with step("load()"):
            program.runtime(arrays)
    except Exception as exc:
        raise RoundTripFailed(
            f"load of the saved program failed: {' '.join(str(exc).split())} (load() gets artifact.data as a "
            "read-only memoryview of the mapped file: edgeport.as_bytes makes it bytes)") from exc


def numpy_outputs(program: Program, args: tuple) -> Any:
    """``program`` (loaded for numpy arrays) called with ``args`` as numpy arrays, as
    ``edgeport run`` and a device without torch call it; its outputs as tensors again,
    to compare with eager."""
    loaded_runtime(program, "numpy")
    arrays = pytree.tree_map(lambda x: x.numpy() if isinstance(x, torch.Tensor) else x, args)
    try:
        with step("run() on numpy inputs"):
            outputs = program(*arrays)
    except Exception as exc:
        raise RoundTripFailed(
            f"the run on numpy inputs failed: {' '.join(str(exc).split())} (`edgeport run` and a device without "
            "torch pass numpy arrays: read inputs with edgeport.as_numpy)") from exc
    return pytree.tree_map(lambda x: torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x, outputs)
