"""The support toolkit (edgeport.support): checks compose, keep their reasons, and every
built-in backend shares its definitions."""

import pytest
import torch

import edgeport
from edgeport import support

aten = torch.ops.aten


class _Pool(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.max_pool2d(x, 2, return_indices=True)[0] + 1


def _nodes(module, *inputs, dynamic_shapes=None):
    program = torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes).run_decompositions()
    return {n.name: n for n in program.graph.nodes}


def test_node_tensors_counts_only_the_outputs_read_of_a_multi_output_op():
    nodes = _nodes(_Pool(), torch.randn(1, 2, 4, 4))
    pool = next(n for n in nodes.values() if n.target == aten.max_pool2d_with_indices.default)
    uses = support.node_tensors(pool)
    assert [(u.role, u.index) for u in uses] == [("input", None), ("output", 0)]  # not the unread int64 indices
    assert support.read_outputs(pool) == {0}


def test_runtime_tensors_leave_out_constant_inputs():
    nodes = _nodes(_Scale(), torch.randn(1, 3))
    weights = {n for n in nodes.values() if n.op == "placeholder" and n.name.startswith("p_")}
    assert [u.role for u in support.node_tensors(nodes["mul"])] == ["input", "input", "output"]
    runtime = support.runtime_tensors(weights.__contains__)(nodes["mul"])
    assert [(u.role, u.source.name) for u in runtime] == [("input", "x"), ("output", "mul")]


def test_checks_compose_into_the_first_no_with_its_reason():
    add = _nodes(_Add(), torch.randn(2, 3, dtype=torch.float64))["add"]
    check = support.all_of(
        support.decline_if_rank_above(1, "{op}: rank {rank} {role} above {limit}"),
        support.decline_if_dtype_not_in({torch.float32}, "never reached"),
    )
    assert check(add) == edgeport.Support.no("aten.add.Tensor: rank 2 input above 1")
    dtype = support.decline_if_dtype_not_in({torch.float32, torch.float16}, "{op}: {role} {dtype} (takes {allowed})")
    assert dtype(add).reason == "aten.add.Tensor: input float64 (takes float16, float32)"
    assert support.all_of(support.decline_if_rank_above(2, "x"))(add)


def test_symbolic_sizes_and_refused_ops_are_declined_by_name():
    x = torch.randn(4, 3)
    add = _nodes(_Add(), x, dynamic_shapes=({0: torch.export.Dim("n")},))["add"]
    answer = support.decline_if_symbolic("{op}: {role} {shape} is dynamic")(add)
    assert not answer and answer.reason.startswith("aten.add.Tensor: input (s")
    assert support.decline_if_op_in({aten.add: "no adder"})(add).reason == "aten.add.Tensor: no adder"


def test_a_raising_check_becomes_a_no():
    add = _nodes(_Add(), torch.randn(2))["add"]

    def broken(node):
        raise RuntimeError("boom")

    answer = support.never_raising(broken, "{op} could not be checked: {error}")(add)
    assert answer.reason == "aten.add.Tensor could not be checked: RuntimeError: boom"


def test_data_movement_names_real_ops_and_every_builtin_backend_uses_it():
    for name in support.DATA_MOVEMENT | support.SLICING:
        _, op, overload = name.split(".")
        assert isinstance(getattr(getattr(aten, op), overload), torch._ops.OpOverload), name
    from edgeport.backends.coreml.backend import CoreMLBackend
    from edgeport.backends.cpu.backend import CpuBackend
    from edgeport.backends.mediatek.backend import MediatekBackend
    from edgeport.backends.qualcomm.backend import QualcommBackend

    for backend in (CpuBackend, MediatekBackend, QualcommBackend, CoreMLBackend):
        assert support.DATA_MOVEMENT <= backend.rules.never_alone


class _Scale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.w


class _Add(torch.nn.Module):
    def forward(self, x):
        return x + x


@pytest.mark.parametrize("module", ["edgeport.support"])
def test_importing_the_toolkit_imports_no_torch(module):
    import subprocess
    import sys

    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_dtypes_may_be_named_and_answer_as_the_dtypes_do():
    """Names let a backend compose its checks at import without torch (its run side)."""
    add = _nodes(_Add(), torch.randn(2, 3, dtype=torch.float64))["add"]
    by_name = support.decline_if_dtype_not_in({"float32", "torch.float16"}, "{op}: {role} {dtype} (takes {allowed})")
    by_dtype = support.decline_if_dtype_not_in({torch.float32, torch.float16}, "{op}: {role} {dtype} (takes {allowed})")
    assert by_name(add) == by_dtype(add) == edgeport.Support.no("aten.add.Tensor: input float64 (takes float16, float32)")
    assert support.decline_if_dtype_not_in(lambda node: {"float64"}, "never reached")(add).ok


def test_a_dtype_name_torch_lacks_is_an_error_not_a_silent_decline():
    add = _nodes(_Add(), torch.randn(2, 3))["add"]
    with pytest.raises(ValueError, match="'flaot32' names no torch dtype"):
        support.decline_if_dtype_not_in({"flaot32"}, "{op}: {dtype}")(add)
