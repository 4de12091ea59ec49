"""Constant buffers are written byte for byte as flatbuffers' own `CreateNumpyVector`
writes them, though copied straight from the array (flatbuffer.write_buffer), or left
out of the builder and copied once into the model's bytes (flatbuffer._ModelBytes)."""

from __future__ import annotations

import flatbuffers
import numpy as np
import pytest

from edgeport.backends.tflite.flatbuffer import _ModelBytes, write_buffer
from edgeport.backends.tflite.schema import tfl

ARRAYS = {
    "float32": np.linspace(-3, 3, 37, dtype=np.float32),
    "float16": np.linspace(-3, 3, 37).astype(np.float16),
    "int8": np.arange(-50, 51, dtype=np.int8),
    "uint8 (3 bytes)": np.array([1, 2, 3], dtype=np.uint8),
    "bool": np.array([True, False, True]),
    "int64": np.arange(-5, 6, dtype=np.int64) * 10**12,
}


def _library_buffer(b: flatbuffers.Builder, data: np.ndarray) -> int:
    """The Buffer table as written with flatbuffers' CreateNumpyVector (the reference)."""
    raw = data.view(np.uint8)
    b.Prep(16, raw.nbytes)
    vec = b.CreateNumpyVector(raw)
    tfl().BufferStart(b)
    tfl().BufferAddData(b, vec)
    return tfl().BufferEnd(b)


def _finish(b: flatbuffers.Builder, offsets: list[int]) -> None:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    b.Finish(b.EndVector())


def _written(write) -> bytes:  # noqa: ANN001 - either writer of a list of buffers
    b = flatbuffers.Builder(64)
    _finish(b, [write(b, data) for data in ARRAYS.values()])
    return bytes(b.Output())


def test_buffers_are_the_bytes_create_numpy_vector_writes():
    assert _written(lambda b, data: write_buffer(b, tfl(), data)) == _written(_library_buffer)


@pytest.mark.parametrize("size", [4096, 24], ids=["sized", "grows"])
def test_buffers_left_as_holes_are_filled_in_the_output(size: int):
    """The weights are copied into the final bytes only; a builder sized too small grows
    (into a bytearray) and the holes, counted from the end, stay where they were."""
    model = _ModelBytes(size)
    _finish(model.builder, [write_buffer(model.builder, tfl(), data, model.holes) for data in ARRAYS.values()])
    assert len(model.holes) == len(ARRAYS)
    assert model.output() == _written(_library_buffer)


@pytest.mark.parametrize("name", list(ARRAYS))
def test_each_buffer_reads_back_as_its_array(name: str):
    data = ARRAYS[name]
    b = flatbuffers.Builder(16)
    b.Finish(write_buffer(b, tfl(), data))
    buffer = tfl().Buffer.GetRootAs(b.Output(), 0)
    assert buffer.DataAsNumpy().tobytes() == data.tobytes()


def test_a_constant_given_after_pruning_finds_its_renumbered_buffer():
    """`prune` renumbers buffers; a constant added after it (the dynamic-shape hook adds
    STRIDED_SLICE ends) used to look up its pre-prune index: past the end (IndexError, the
    whole partition fell back to portable torch) or another array's. Which one depended on
    where numpy placed a new array, so it struck SmolLM2 only in some layouts."""
    from edgeport.backends.tflite.flatbuffer import ModelBuilder

    dropped, kept = np.arange(4, dtype=np.int32), np.arange(8, dtype=np.float32)
    model = ModelBuilder()
    model.tensor(dropped.shape, 2, "dropped", dropped)  # buffer 1, read by nothing
    constant = model.tensor(kept.shape, 0, "kept", kept)  # buffer 2
    out = model.tensor(kept.shape, 0, "out")
    model.op(0, [constant, constant], [out])
    model.prune([], [out])
    assert len(model.buffers) == 2  # the sentinel and `kept`, now buffer 1
    again = model.tensor(kept.shape, 0, "kept again", kept)
    assert model.tensors[again].buffer == 1 and model.data(again) is model.buffers[1]
    revived = model.tensor(dropped.shape, 2, "dropped again", dropped)
    assert np.array_equal(model.data(revived), dropped)
