"""Result dtypes: a lowering computes in the dtype torch's result has, or the model is not
written at all (no silent integer mean of a float mean)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.backends.tflite import lowering as tflite_lowering
from edgeport.backends.tflite import write_tflite
from edgeport.backends.tflite.ops.reduce import _reduce_dims, reduce_value
from edgeport.testing import registry_for
from tflite_helpers import Lambda, capture

aten = torch.ops.aten
INTS = torch.tensor([[1, 2, 4, 7, 0], [-3, 5, 0, 8, 9], [6, 6, 1, 2, 2]])


def test_mean_with_a_float_dtype_of_int64_is_delegated_and_returns_the_float_mean():
    # ExecuTorch's test_mean.py::test_mean_output_dtype: delegated, int64, truncated before.
    module = Lambda(lambda m, x: torch.mean(x, dim=(1,), dtype=torch.float32))
    program = edgeport.export(module, (INTS,), ["cpu"], registry=registry_for(CpuBackend()))
    assert [n["backend"] for n in program.report()["nodes"]] == ["cpu"]
    got = program(INTS)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, module(INTS))


def _integer_mean(em, node):
    """The lowering as it was: MEAN over the int input, written as the input's dtype."""
    dims, keepdim = _reduce_dims(node)
    return reduce_value(em, node.name, "MEAN", em.value(node.args[0]), dims, keepdim)


def test_a_lowering_that_writes_the_wrong_dtype_fails_the_compile_instead_of_running(monkeypatch):
    entry = tflite_lowering.table()[aten.mean.dim]
    monkeypatch.setitem(tflite_lowering.LOWERINGS, aten.mean.dim, dataclasses.replace(entry, emit=_integer_mean))
    module = Lambda(lambda m, x: torch.mean(x, dim=(1,), dtype=torch.float32))
    with pytest.raises(edgeport.BackendError, match="wrote torch.int64 for mean.*torch computes torch.float32"):
        write_tflite(capture(module, (INTS,)))
    program = edgeport.export(module, (INTS,), ["cpu"], registry=registry_for(CpuBackend()))
    (node,) = program.report()["nodes"]
    assert node["backend"] != "cpu"
    torch.testing.assert_close(program(INTS), module(INTS))
