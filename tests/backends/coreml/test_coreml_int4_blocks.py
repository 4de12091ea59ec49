"""coreml's int4-weight blocks (int4_blocks.py): a Q4_1 grid kept exactly, gather tables as
int8 rows, and the blocks a scale and fp16 offset cannot hold as they are."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("coremltools", reason="the coreml backend needs coremltools (pip install 'edgeport[coreml]')")

from coremltools.converters.mil.mil import types  # noqa: E402

from edgeport.backends.coreml.int4_blocks import int8_rows, uint4_blocks  # noqa: E402


def expand(data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    """scale · (data - offset), each per-block value repeated over its block (the op's rule)."""
    def blocks(per_block):
        for axis, (n, size) in enumerate(zip(per_block.shape, data.shape)):
            per_block = np.repeat(per_block, size // n, axis=axis)
        return per_block.astype(np.float32)
    shifted = data.astype(np.float32) - (blocks(offset) if offset is not None else 0)
    return shifted * blocks(scale)


def q4_1(rows: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights as a GGUF Q4_1 file holds them: d·q + m per block of 32, each block
    reaching both ends of its grid; and their q."""
    rng = np.random.default_rng(0)
    d = rng.uniform(0.001, 0.05, (rows, groups, 1)).astype(np.float16).astype(np.float32)
    m = (-d * rng.uniform(2, 13, (rows, groups, 1))).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, (rows, groups, 32))
    q[..., 0], q[..., 1] = 0, 15
    return (d * q + m).reshape(rows, groups * 32), q.reshape(rows, groups * 32)


def test_a_q4_1_grid_is_kept_value_for_value():
    weight, q = q4_1(8, 3)
    data, scale, offset = uint4_blocks(weight, 32)
    assert scale.shape == offset.shape == (8, 3) and scale.dtype == offset.dtype == np.float16
    assert types.builtin_to_string(data.dtype.metadata["true_dtype"]) == "uint4"  # coremltools' tag: 4 bits stored
    assert (data.astype(np.int64) == q).all()
    steps = np.repeat(scale.astype(np.float32), 32, axis=1)
    assert (np.abs(expand(data, scale, offset) - weight) <= steps / 32).all()  # the fp16 offset's rounding only


def test_conv_weights_are_blocked_along_their_input_channels():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((4, 64, 3, 3)).astype(np.float32)
    data, scale, offset = uint4_blocks(weight, 32)
    assert data.shape == weight.shape and scale.shape == offset.shape == (4, 2, 3, 3)
    blocks = weight.reshape(4, 2, 32, 3, 3)
    step = (blocks.max(2) - blocks.min(2)) / 15
    error = np.abs(expand(data, scale, offset) - weight).reshape(blocks.shape).max(2)
    assert (error <= step / 2 * 1.01).all()


def test_flat_blocks_and_blocks_far_from_zero_stay_finite_and_close():
    weight = np.zeros((2, 64), np.float32)
    weight[0, :32] = 0.5  # one value: the offset carries it
    weight[1, :32] = np.linspace(300, 300.5, 32)  # offset -min/scale would be ~9,000 steps: fp16 too coarse there
    data, scale, offset = uint4_blocks(weight, 32)
    assert np.isfinite(scale.astype(np.float32)).all() and np.isfinite(offset.astype(np.float32)).all()
    expanded = expand(data, scale, offset)
    assert np.abs(expanded[0, :32] - 0.5).max() <= 0.5 * 2**-10 and (expanded[:, 32:] == 0).all()  # fp16's scale
    assert np.abs(expanded[1, :32] - weight[1, :32]).max() <= 300.5 / 15 / 2 * 1.01  # its range widened to 0


def test_gather_tables_are_symmetric_int8_rows():
    rng = np.random.default_rng(2)
    table = rng.standard_normal((16, 40)).astype(np.float32)
    table[3] = 0  # an all-zero row (a padding token) keeps a usable scale
    data, scale = int8_rows(table)
    assert data.dtype == np.int8 and scale.shape == (16, 1) and np.abs(data).max() <= 127
    step = np.abs(table).max(1, keepdims=True) / 127
    assert (np.abs(expand(data, scale, None) - table) <= step / 2 * 1.01 + 1e-6).all()
    assert (expand(data, scale, None)[3] == 0).all()


def test_only_weights_are_compressed_not_a_constant_mask_added_to_the_scores():
    """A large float constant that is added (a mask) stays fp16; the weight beside it is
    compressed."""
    import torch

    import edgeport
    from edgeport.backends.coreml import CoreMLBackend, compress, package
    from edgeport.testing import registry_for

    class Masked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 64)  # 4,096 weights: past the threshold

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mask = torch.triu(torch.full((64, 64), -1e4), diagonal=1)  # folded into a 4,096-element constant
            return self.fc(x) @ self.fc.weight + mask

    program = edgeport.export(Masked().eval(), (torch.randn(64, 64),), ["coreml"], quantize="int4-weight",
                              options={"coreml": {"minimum_deployment_target": "iOS18"}}, strict=True,
                              registry=registry_for(CoreMLBackend()))
    (path,) = program.manifest.artifacts
    with package.opened(program.files[path]) as unzipped:
        mil = package.validate(unzipped)
    # the weight twice (linear, and transposed for the matmul, which coremltools makes a linear)
    assert [(w.dtype, w.shape) for w in compress.compressed_weights(mil)] == [("uint4", (64, 64))] * 2
    ops = [op for function in mil.functions.values() for op in function.operations]
    (mask,) = [op for op in ops if op.op_type == "const" and [r.op_type for r in op.outputs[0].child_ops] == ["add"]]
    assert mask.outputs[0].val.dtype == np.float16 and mask.outputs[0].val.min() == np.float16(-1e4)  # as it was
