"""`edgeport check` on quantized partitions: rounding flips pass, a wrong kernel fails.

A quantized partition is held to its declared tolerance or to its reference's own spread
(the SNR of the reference against itself with the values it rounds nudged by the
backend's `op_error`), whichever allows more (core/devtools/rounding.py).
"""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import edgeport
from edgeport.cli import cli
from edgeport.devtools.check import Error, _input_drift, allowed, check_program, compare, worst_of
from edgeport.devtools.rounding import MARGIN_DB, PEAK_FACTOR, Nudge, accumulator_unit, nudged_outputs, values_of
from edgeport.portable import PortableExecutable, stored_program
from edgeport.testing.quantized_cases import calibration_for
from torch_backend import TorchOpsBackend, registry_with, run_with_kernel_off


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc, self.norm = nn.Linear(width, width), nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + nn.functional.gelu(self.fc(x)))


def deep_model():
    """Four blocks: deep enough that XNNPACK's float layer norm and GELU, a few ulps
    from torch's, flip int8 roundings the reference does not (measured: 55.9 dB
    against the reference, past any relative tolerance; its spread 47.3 dB)."""
    torch.manual_seed(0)
    return nn.Sequential(*[Block(256) for _ in range(4)]).eval(), (torch.randn(64, 256),)


@pytest.fixture(scope="module")
def cpu_int8():
    model, inputs = deep_model()
    program = edgeport.export(model, inputs, ["cpu"], quantize="int8", calibration=calibration_for(inputs),
                              keep_reference=True)
    return program, inputs


def test_rounding_flips_of_a_correct_int8_backend_pass_within_the_spread(cpu_int8):
    program, inputs = cpu_int8
    [partition] = check_program(program, inputs, locate=False).partitions
    assert partition.status == "pass"
    assert not partition.error.within(partition.rtol)  # fails 1e-4 relative: the spread is what passes it
    assert partition.spread is not None and partition.error.snr_db >= partition.spread.snr_db - MARGIN_DB
    assert partition.error.max_abs <= PEAK_FACTOR * partition.spread.max_abs


def test_the_rule_takes_the_tolerance_or_the_spread_in_both_its_average_and_its_peak():
    spread = Error(max_abs=0.3, max_rel=0.06, snr_db=24.0)  # a 12-layer int8 BERT's, on cpu
    assert allowed(Error(0.33, 0.07, 24.4), 1e-4, spread)  # what the cpu backend measured there
    assert allowed(Error(0.5, 0.1, 21.5), 1e-4, spread)
    assert not allowed(Error(0.3, 0.06, 20.5), 1e-4, spread)  # noisier than rounding
    assert not allowed(Error(0.9, 0.2, 23.0), 1e-4, spread)  # average fine, one region far off
    assert allowed(Error(0.9, 0.2, 10.0), 0.5, spread)  # within the tolerance
    assert not allowed(Error(1e-3, 1e-3, 60.0), 1e-4, None)  # not quantized: the tolerance alone


def test_the_nudge_moves_the_reference_and_nothing_when_zero(cpu_int8):
    program, inputs = cpu_int8
    step = next(s for s in program.plan("forward").steps if s.kind == "delegate")
    reference = stored_program(program.files, step.reference)
    expected = PortableExecutable(reference).run(list(inputs))
    assert torch.equal(nudged_outputs(reference, list(inputs), Nudge())[0], expected[0])
    nudged = nudged_outputs(reference, list(inputs), Nudge(1e-5))[0]
    assert not torch.equal(nudged, expected[0])
    assert torch.equal(nudged, nudged_outputs(reference, list(inputs), Nudge(1e-5))[0])  # seeded: one spread per seed
    assert not torch.equal(nudged, nudged_outputs(reference, list(inputs), Nudge(1e-5), seed=1)[0])
    # its linears read weights stored per channel: no product of two activations to move
    assert torch.equal(nudged_outputs(reference, list(inputs), Nudge(0.0, 1.0))[0], expected[0])
    assert set(values_of(reference, list(inputs))) >= {n.name for n in reference.graph.nodes}


class QuantizedTorchOps(TorchOpsBackend):
    """The test backend quantized as the cpu backend quantizes, running the quantized
    graph in torch (so exactly its reference), with one planted kernel: ``bad_op``'s
    output ``factor`` times too large."""

    schemes = frozenset({"int8"})

    def __init__(self, bad_op=None, factor: float = 1.0) -> None:
        super().__init__()
        self.bad_op, self.factor = bad_op, factor

    def support(self, node, ctx):
        return edgeport.Support.yes()  # the whole quantized graph: one partition

    def quantizer(self, scheme, options):
        from edgeport.backends.cpu import CpuBackend, CpuOptions

        return CpuBackend().quantizer(scheme, CpuOptions())

    def load(self, artifact):
        return run_with_kernel_off(artifact, self.bad_op, self.factor)


def _checked(backend):
    model, inputs = deep_model()
    registry = registry_with(backend)
    program = edgeport.export(model, inputs, ["torchops"], quantize="int8", calibration=calibration_for(inputs),
                              keep_reference=True, registry=registry)
    return check_program(program, inputs, registry=registry)


def test_an_exact_quantized_backend_passes_exactly():
    [partition] = _checked(QuantizedTorchOps()).partitions
    assert partition.status == "pass" and partition.error.max_abs == 0


def test_a_wrong_quantized_kernel_fails_and_the_search_names_it():
    """GELU 10 % too large in the third block: far past rounding, and every shorter
    prefix stays within its own spread."""
    report = _checked(QuantizedTorchOps(torch.ops.aten.gelu.default, 1.1))
    [partition] = report.partitions
    assert partition.status == "fail"
    assert partition.error.snr_db < partition.spread.snr_db - MARGIN_DB
    assert partition.divergence.op == "aten.gelu.default" and partition.divergence.exact
    assert partition.divergence.node == "gelu"  # the first block's: every block's GELU is off
    # it reads the int8 linear's output (torchops' decomposed linear, x @ W.T, quantizes as a
    # linear), which the backend computed exactly
    assert [(read.node, read.off) for read in partition.divergence.inputs] == [("linear", 0.0)]


def test_the_search_says_how_far_off_the_quantized_values_the_named_op_reads_were():
    """The residual add 10 % off: named, and the values it reads, the block's input
    (quantized at the partition's entry) and the GELU output, the backend computed exactly."""
    [partition] = _checked(QuantizedTorchOps(torch.ops.aten.add.Tensor, 1.1)).partitions
    assert partition.divergence.node == "add" and partition.divergence.exact
    reads = [(read.node, read.module, read.off, read.mean_steps) for read in partition.divergence.inputs]
    assert reads == [("input_1", "", 0.0, 0.0), ("gelu", "0 (Block)", 0.0, 0.0)]  # the block's input quantized at entry


def test_the_drift_of_an_input_is_counted_in_its_steps(cpu_int8):
    """A kernel that floors where the reference rounds, feeding the named op: half its
    values a step low shows as 50% off, -0.5 steps on average, named by the op that
    made them (back through its quantize and dequantize)."""
    program, inputs = cpu_int8
    step = next(s for s in program.plan("forward").steps if s.kind == "delegate")
    reference = stored_program(program.files, step.reference)
    env = values_of(reference, list(inputs))
    gelu = next(n for n in reference.graph.nodes if n.target == torch.ops.aten.gelu.default)
    [read] = gelu.all_input_nodes
    low = torch.zeros_like(env[read.name])
    low.view(-1)[::2] = read.args[1]  # every other value a step low
    [drift] = _input_drift(gelu, {read.name: env[read.name] - low}, env)
    assert (drift.node, drift.module, drift.off) == ("linear", "0.fc (Linear)", 0.5)
    assert drift.mean_steps == pytest.approx(-0.5)


def test_the_built_in_backends_declare_their_op_error_by_precision():
    from edgeport.backend import FP16_OP_ERROR, FP32_OP_ERROR
    from edgeport.backends.coreml import CoreMLBackend, CoreMLOptions
    from edgeport.backends.cpu import CpuBackend, CpuOptions
    from edgeport.backends.mediatek.backend import MediatekBackend, MediatekOptions
    from edgeport.backends.qualcomm import QualcommBackend, QualcommOptions

    assert CpuBackend().op_error(CpuOptions()) == FP32_OP_ERROR == 1e-5
    assert CpuBackend().op_error(CpuOptions(precision="fp16")) == FP16_OP_ERROR == 2.0**-11
    assert QualcommBackend().op_error(QualcommOptions()) == FP16_OP_ERROR  # HTP's float is fp16
    assert CoreMLBackend().op_error(CoreMLOptions()) == FP16_OP_ERROR
    assert CoreMLBackend().op_error(CoreMLOptions(compute_precision="fp32")) == FP32_OP_ERROR
    assert MediatekBackend().op_error(MediatekOptions(fp16=True)) == FP16_OP_ERROR
    assert MediatekBackend().op_error(MediatekOptions()) == FP32_OP_ERROR  # here: the fp32 CPU reference


def test_cli_check_shows_the_spread_of_a_quantized_program(cpu_int8, tmp_path):
    program, (x,) = cpu_int8
    program.save(tmp_path / "q.edgeport")
    np.savez(tmp_path / "in.npz", input=x.numpy())
    result = CliRunner().invoke(cli, ["check", str(tmp_path / "q.edgeport"), "--inputs", str(tmp_path / "in.npz")])
    assert result.exit_code == 0, result.output
    assert "rounding spread dB" in result.output and "within 3 dB of its rounding spread" in result.output
    data = json.loads(CliRunner().invoke(cli, ["check", str(tmp_path / "q.edgeport"), "--inputs",
                                               str(tmp_path / "in.npz"), "--json"]).output)
    assert data["passed"] and data["partitions"][0]["spread"]["snr_db"] < 60
    # the spread is counted in steps where the error is (it was always null, though documented)
    assert (data["partitions"][0]["spread"]["max_steps"] is None) == (data["partitions"][0]["error"]["max_steps"] is None)


def test_the_spread_is_in_steps_when_every_nudged_run_is():
    from edgeport.devtools.check import worst_of

    assert worst_of([Error(0.1, 0.01, 40.0, 1.0), Error(0.2, 0.02, 30.0, 2.0)]) == Error(0.2, 0.02, 30.0, 2.0)
    assert worst_of([Error(0.1, 0.01, 40.0, 1.0), Error(0.2, 0.02, 30.0)]).max_steps is None


def test_cli_check_says_how_far_off_the_named_ops_quantized_inputs_were(tmp_path):
    model, (x,) = deep_model()
    registry = registry_with(QuantizedTorchOps(torch.ops.aten.add.Tensor, 1.1))
    program = edgeport.export(model, (x,), ["torchops"], quantize="int8", calibration=calibration_for((x,)),
                              keep_reference=True, registry=registry)
    program.save(tmp_path / "q.edgeport")
    np.savez(tmp_path / "in.npz", x.numpy())  # in order
    args = ["check", str(tmp_path / "q.edgeport"), "--inputs", str(tmp_path / "in.npz")]
    result = CliRunner().invoke(cli, args, obj=registry)
    assert result.exit_code == 1, result.output
    assert "first diverging op: add (aten.add.Tensor)" in result.output
    assert ("its input from gelu (0 (Block)): 0% of the values a step or more off as the backend computed them, "
            "+0.00 steps on average") in result.output
    data = json.loads(CliRunner().invoke(cli, [*args, "--json"], obj=registry).output)
    assert data["partitions"][0]["divergence"]["inputs"] == [
        {"node": "input_1", "module": "", "off": 0.0, "mean_steps": 0.0},
        {"node": "gelu", "module": "0 (Block)", "off": 0.0, "mean_steps": 0.0}]


def test_no_prefix_of_a_quantized_partition_hands_on_a_weight_or_an_integer(cpu_int8):
    """The divergence search's prefixes end after an op's quantize and dequantize, and a
    weight's dequantize goes with the op reading it. They stood in graph order before,
    weights' dequantizes first, and HTP refused such prefixes: a tiny Llama on qualcomm
    took 366 compiles and named no op; now 8, naming a linear."""
    from edgeport.devtools.check import _groups
    from edgeport.quantize.node_dtypes import is_quantization_node
    from edgeport.subprogram import extract_subprogram

    program, _ = cpu_int8
    step = next(s for s in program.plan("forward").steps if s.kind == "delegate")
    reference = stored_program(program.files, step.reference)
    order = {node: i for i, node in enumerate(reference.graph.nodes)}
    by_name = {node.name: node for node in reference.graph.nodes}
    groups = _groups(reference)
    assert all(not is_quantization_node(group[0]) for group in groups)
    assert sorted(n for g in groups for n in g) == sorted(n for n in reference.graph.nodes if n.op == "call_function")
    for k in range(len(groups)):
        sub = extract_subprogram(reference, sorted((n for g in groups[: k + 1] for n in g), key=order.__getitem__))
        for name in sub.outputs:
            node = by_name[name]
            assert not (is_quantization_node(node) and "quantize_per_tensor" in str(node.target)
                        and "dequantize" not in str(node.target)), (k, name)  # an int8 value
            assert not (is_quantization_node(node) and all(a.op == "placeholder" for a in node.all_input_nodes)), (k, name)


def test_an_output_within_one_step_of_its_quantization_passes():
    """A tiny quantized model's reference may flip no rounding even nudged, so its spread
    is exact; a correct backend one step off on an output still passes (as the
    conformance kit counts steps), and two steps off does not."""
    exact = Error(0.0, 0.0, math.inf)
    assert allowed(Error(0.0093, 0.0127, 37.4, max_steps=1.0), 1e-2, exact)
    assert not allowed(Error(0.0186, 0.0254, 31.4, max_steps=2.0), 1e-2, exact)
    assert not allowed(Error(0.0093, 0.0127, 37.4, max_steps=None), 1e-2, exact)  # a float output: no steps


def test_errors_are_counted_in_steps_only_when_every_output_has_them():
    expected = [torch.zeros(4), torch.zeros(2)]
    actual = [torch.tensor([0.0, 0.1, 0.0, 0.0]), torch.tensor([0.0, 0.05])]
    assert compare(actual, expected, [0.1, 0.1]).max_steps == pytest.approx(1.0)
    assert compare(actual, expected, [0.1, None]).max_steps is None
    assert compare(actual, expected).max_steps is None


def test_the_spread_is_the_worst_of_its_nudged_runs():
    runs = [Error(0.1, 0.01, 40.0), Error(0.3, 0.02, 45.0), Error(0.2, 0.05, 38.0)]
    assert worst_of(runs) == Error(0.3, 0.05, 38.0)


class Scores(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.bmm(torch.relu(q) + q, k)


def test_a_product_of_two_quantized_values_is_moved_by_its_accumulator_units():
    """mediatek writes an int8 BATCH_MATMUL of two activations (TFLite's own kernel,
    which requantizes in fixed point); the nudge moves that product's value before its
    rounding by one unit of its accumulator, the product of its operands' steps."""
    from edgeport.backends.mediatek import MediatekBackend
    from edgeport.testing import registry_for

    torch.manual_seed(0)
    inputs = (torch.randn(2, 17, 16), torch.randn(2, 16, 17))
    program = edgeport.export(Scores(), inputs, ["mediatek"], quantize="int8", calibration=calibration_for(inputs),
                              keep_reference=True, registry=registry_for(MediatekBackend()))
    step = next(s for s in program.plan("forward").steps if s.kind == "delegate")
    reference = stored_program(program.files, step.reference)
    units = {n.name: accumulator_unit(n) for n in reference.graph.nodes if "quantize_per_tensor" in str(n.target)
             and "dequantize" not in str(n.target)}
    [(rounding, unit)] = [(name, u) for name, u in units.items() if u is not None]
    bmm = next(n for n in reference.graph.nodes if n.target == torch.ops.aten.bmm.default)
    operand_steps = [a.args[1] for a in bmm.args]
    assert rounding == next(iter(bmm.users)).name and unit == pytest.approx(operand_steps[0] * operand_steps[1])
    expected = nudged_outputs(reference, list(inputs), Nudge())
    assert not torch.equal(nudged_outputs(reference, list(inputs), Nudge(0.0, 1.0))[0], expected[0])
