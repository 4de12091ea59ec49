"""`edgeport check`: a planted wrong kernel is found and named, with its source line."""

import json
import math
import types

import numpy as np

import pytest
import torch
from click.testing import CliRunner

import edgeport
from edgeport.cli import cli
from edgeport.devtools.check import check_model, check_program, compare
from torch_backend import TorchOpsBackend, registry_with, run_with_kernel_off

MODEL = '''
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = torch.relu(y + 0.5)
        z = y * 2.0
        return torch.relu(z + y)


def factory():
    torch.manual_seed(0)
    return Net().eval(), (torch.randn(1, 3, 12, 12),)
'''
MUL_LINE = f'model.py", line {MODEL.splitlines().index("        z = y * 2.0") + 1}, in forward'


class OffByOnePercent(TorchOpsBackend):
    """The test backend with one bad kernel: ``op``'s output comes out 1% too large;
    every other op (relu, add, ...) stays exact."""

    def __init__(self, op=torch.ops.aten.mul.Tensor, **kwargs):
        super().__init__(**kwargs)
        self.bad_op = op

    def load(self, artifact):
        return run_with_kernel_off(artifact, self.bad_op, 1.01)


@pytest.fixture
def model_file(tmp_path, monkeypatch):
    (tmp_path / "model.py").write_text(MODEL)
    monkeypatch.chdir(tmp_path)
    from edgeport.cli.spec import load_factory

    return load_factory("model.py:factory")


def test_check_names_the_planted_op_and_its_source_line(model_file):
    model, inputs = model_file
    report = check_model(model, inputs, ["torchops"], registry=registry_with(OffByOnePercent()))
    [partition] = report.partitions
    assert partition.status == "fail" and not report.passed
    assert 5e-3 < partition.error.max_rel < 2e-2
    found = partition.divergence
    assert (found.node, found.op) == ("mul", "aten.mul.Tensor")
    assert found.source.endswith(MUL_LINE) and found.code == "z = y * 2.0"
    assert found.exact and found.compiles <= 4  # bisection over 5 ops: log2, plus the whole partition
    assert found.error.max_rel == pytest.approx(0.01, rel=1e-3)


@pytest.mark.parametrize("op, node", [(torch.ops.aten.relu.default, "relu"), (torch.ops.aten.add.Tensor, "add")])
def test_the_first_diverging_op_is_found_wherever_it_is(model_file, op, node):
    model, inputs = model_file
    report = check_model(model, inputs, ["torchops"], registry=registry_with(OffByOnePercent(op)))
    assert report.partitions[0].divergence.node == node  # the partition's first op; the first of two adds


def test_an_exact_backend_passes_and_a_loose_tolerance_lets_the_planted_error_through(model_file):
    model, inputs = model_file
    report = check_model(model, inputs, ["torchops"], registry=registry_with(TorchOpsBackend()))
    assert report.passed and report.partitions[0].error.snr_db == math.inf
    report = check_model(model, inputs, ["torchops"], registry=registry_with(OffByOnePercent()), rtol=0.05)
    assert report.passed and report.partitions[0].divergence is None


def test_a_backend_that_cannot_run_here_is_skipped_with_its_reason(model_file):
    model, inputs = model_file
    report = check_model(model, inputs, ["torchops"], registry=registry_with(TorchOpsBackend(can_run=False)))
    assert [(p.status, p.why) for p in report.partitions] == [("skipped", "the test says it cannot run here")]
    assert report.checked == 0 and not report.passed  # nothing was checked: no pass to claim


def test_cli_check_of_a_program_nothing_here_can_run_says_so_and_fails(model_file, tmp_path):
    """It printed "0/0 checked partitions pass, 1 skipped" and exited 0 (a Core ML
    program checked off macOS)."""
    registry = registry_with(TorchOpsBackend(can_run=False))
    result = invoke("check", "model.py:factory", "--backend", "torchops", registry=registry)
    assert result.exit_code == 1
    assert "nothing checked: no partition's backend can run here (1 skipped)" in result.output
    assert "the test says it cannot run here" in result.output
    data = json.loads(invoke("check", "model.py:factory", "--backend", "torchops", "--json", registry=registry).output)
    assert (data["checked"], data["passed"]) == (0, False)


def test_cli_check_of_a_method_nothing_is_delegated_in_says_there_is_nothing_to_check(model_file):
    """It printed an empty table and "0/0 checked partitions pass"."""
    registry = registry_with(TorchOpsBackend(ops=("sort",)))
    result = invoke("check", "model.py:factory", "--backend", "torchops", registry=registry)
    assert result.exit_code == 0  # nothing delegated: every op runs as torch itself
    assert "nothing to check: no partition is delegated (the whole method runs as portable torch)" in result.output
    assert "0/0" not in result.output and "partition" in result.output


def test_a_program_saved_without_references_says_to_re_export(model_file):
    model, inputs = model_file
    registry = registry_with(TorchOpsBackend())
    program = edgeport.export(model, inputs, ["torchops"], registry=registry)
    with pytest.raises(edgeport.EdgeportError, match="without their torch reference") as error:
        check_program(program, inputs, registry=registry)
    assert "--keep-reference" in error.value.hint


def test_check_program_refuses_a_wrong_input_as_a_run_does(model_file):
    """A wrong shape raised torch's "shapes cannot be multiplied" from inside the partition."""
    model, inputs = model_file
    registry = registry_with(TorchOpsBackend())
    program = edgeport.export(model, inputs, ["torchops"], keep_reference=True, registry=registry)
    with pytest.raises(edgeport.InputError, match=r"input 0 \('x'\) must have shape \[1, 3, 12, 12\], got \[1, 3, 9, 9\]"):
        check_program(program, [torch.randn(1, 3, 9, 9)], registry=registry)
    with pytest.raises(edgeport.InputError, match=r"input 0 \('x'\) must be float32, got float64"):
        check_program(program, [torch.randn(1, 3, 12, 12, dtype=torch.float64)], registry=registry)
    assert check_program(program, [inputs[0].numpy()], registry=registry).passed


def test_a_token_id_past_the_vocabulary_is_named_as_an_input_error():
    """check said "internal error: IndexError: index out of range in self ... please report it"."""
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.ReLU()).eval()
    ids = torch.zeros(1, 3, dtype=torch.int64)
    registry = registry_with(TorchOpsBackend())
    program = edgeport.export(model, (ids,), ["torchops"], keep_reference=True, registry=registry)
    with pytest.raises(edgeport.InputError, match=r"input 0 \('input'\) holds id 12, but the embedding that reads it "
                                                   r"has rows for 10 ids \(0 to 9\)"):
        check_program(program, [torch.tensor([[1, 12, -1]])], registry=registry)
    assert check_program(program, [torch.tensor([[1, 9, 0]])], registry=registry).passed


class MulGivesNan(OffByOnePercent):
    def load(self, artifact):
        return run_with_kernel_off(artifact, self.bad_op, math.nan)


def test_a_nan_the_backend_computed_is_said_to_be_nan_not_inf(model_file):
    """The row read "max abs inf, max rel inf", as if a value overflowed."""
    report = check_model(*model_file, ["torchops"], registry=registry_with(MulGivesNan()))
    [partition] = report.partitions
    assert partition.status == "fail" and partition.nan_values == 1 * 8 * 10 * 10
    assert partition.divergence.node == "mul" and partition.divergence.nan_values == 800
    assert check_model(*model_file, ["torchops"], registry=registry_with(TorchOpsBackend())).partitions[0].nan_values == 0
    result = invoke("check", "model.py:factory", "--backend", "torchops", registry=registry_with(MulGivesNan()))
    assert "│ 6     │ nan     │ nan     │ -inf   │" in result.output
    assert "800 output value(s) are NaN where torch computed a number" in result.output
    assert "first diverging op: mul (aten.mul.Tensor), 800 value(s) NaN" in result.output
    assert "inf" not in result.output.replace("-inf", "")


class Loose(OffByOnePercent):
    """The planted 1% error, from a backend that declares 2% right when scale is 1."""

    def tolerance(self, options):
        return 2e-2 if options.scale == 1.0 else 1e-4


def test_each_partition_is_held_to_its_backends_declared_tolerance(model_file):
    model, inputs = model_file
    [partition] = check_model(model, inputs, ["torchops"], registry=registry_with(Loose())).partitions
    assert (partition.rtol, partition.status) == (2e-2, "pass")
    report = check_model(model, inputs, ["torchops"], options={"torchops": {"scale": 1.001}},
                         registry=registry_with(Loose()))
    assert (report.partitions[0].rtol, report.partitions[0].status) == (1e-4, "fail")


class ZerosWithinOne(TorchOpsBackend):
    """Returns zeros, and declares a tolerance an answer of zeros meets."""

    def tolerance(self, options):
        return 1.0

    def load(self, artifact):
        return types.SimpleNamespace(run=lambda inputs: [np.zeros_like(np.asarray(inputs[0]))])


def test_a_tolerance_of_one_or_more_is_an_error_naming_it_not_a_pass(model_file):
    """check held the partition to it and passed an answer of all zeros; the kit refuses it."""
    model, inputs = model_file
    report = check_model(model, inputs, ["torchops"], registry=registry_with(ZerosWithinOne(ops=("relu",))))
    assert not report.passed and {p.status for p in report.partitions} == {"error"}
    assert report.partitions[0].why.startswith("torchops's tolerance() returned 1.0: an answer of all zeros is off by 1")
    result = invoke("check", "model.py:factory", "--backend", "torchops",
                    registry=registry_with(ZerosWithinOne(ops=("relu",))))
    assert result.exit_code == 1
    assert "partition 1 (torchops) error: torchops's tolerance() returned 1.0: an answer of all zeros" in result.output


def test_built_in_backends_declare_their_tolerance_by_precision():
    from edgeport.backends.coreml import CoreMLBackend, CoreMLOptions
    from edgeport.backends.cpu import CpuBackend, CpuOptions
    from edgeport.backends.mediatek.backend import MediatekBackend, MediatekOptions
    from edgeport.backends.qualcomm import QualcommBackend, QualcommOptions

    assert CpuBackend().tolerance(CpuOptions()) == 1e-4
    assert CpuBackend().tolerance(CpuOptions(precision="fp16")) == 1e-2
    assert QualcommBackend().tolerance(QualcommOptions()) == 1e-2
    assert CoreMLBackend().tolerance(CoreMLOptions(compute_precision="fp32")) == 1e-4
    assert CoreMLBackend().tolerance(CoreMLOptions()) == 2e-2
    assert MediatekBackend().tolerance(MediatekOptions(fp16=True)) == 1e-2  # was guessed as fp32: 1e-4
    assert MediatekBackend().tolerance(MediatekOptions()) == 1e-4  # here: the fp32 CPU reference


def test_check_labels_a_step_the_way_the_runtime_does(model_file):
    class Simulated(OffByOnePercent):
        def availability(self):
            return edgeport.Availability(True, True, runs_on="simulator")

    model, inputs = model_file
    registry = registry_with(Simulated())
    program = edgeport.export(model, inputs, ["torchops"], keep_reference=True, registry=registry)
    [partition] = check_program(program, inputs, registry=registry, locate=False).partitions
    assert [partition.label] == [label for label in program.runtime().step_labels("forward") if label != "portable"]
    assert partition.label == "torchops: simulator"


def test_compare_reports_exact_matches_non_finite_outputs_and_bad_shapes():
    x = torch.linspace(-1, 1, 11)
    assert compare([x.clone()], [x]).snr_db == math.inf
    error = compare([x * 1.1], [x])
    assert error.max_rel == pytest.approx(0.1) and error.snr_db == pytest.approx(20.0)
    bad = compare([torch.full_like(x, float("nan"))], [x])
    assert not bad.within(1.0) and bad.max_abs == math.inf
    # a reference's NaN or infinity is matched by the same value only, and does not turn
    # the comparison of the other elements off (a 10% error passed beside one NaN)
    special = x.clone()
    special[0], special[1] = float("nan"), float("inf")
    assert compare([special.clone()], [special]).snr_db == math.inf
    wrong = special * 1.1
    assert compare([wrong], [special]).max_rel == pytest.approx(0.1) and not compare([wrong], [special]).within(0.05)
    for other in (float("-inf"), 0.0):
        changed = special.clone()
        changed[1] = other
        assert compare([changed], [special]).max_abs == math.inf
    with pytest.raises(ValueError, match="shape"):
        compare([x[:3]], [x])
    with pytest.raises(ValueError, match="output 0 is float64, expected float32"):  # the runtime refuses it
        compare([x.double().numpy()], [x])


# -- the command line ----------------------------------------------------------------------


@pytest.fixture
def planted(model_file):
    return registry_with(OffByOnePercent())


class Discrete(torch.nn.Module):
    def forward(self, x):
        y = x * 2.0
        return y, y.argmax(-1), y > 0


class MulFlipsSign(OffByOnePercent):
    def load(self, artifact):
        return run_with_kernel_off(artifact, self.bad_op, -1.0)


def test_integer_and_bool_outputs_are_counted_as_values_that_differ():
    """An argmax's indices and a comparison's flags were judged only by relative error
    ("max rel 1.00" for a flipped flag, an index difference over the largest index)."""
    x = torch.tensor([[1.0, -2.0, 3.0, 0.5], [-1.0, 2.0, -3.0, -0.5]])
    ops = ("mul", "argmax", "gt")
    report = check_model(Discrete(), (x,), ["torchops"], registry=registry_with(MulFlipsSign(ops=ops)))
    assert report.partitions[0].discrete_values == (2 + 8, 2 + 8)  # both indices, every flag
    exact = check_model(Discrete(), (x,), ["torchops"], registry=registry_with(TorchOpsBackend(ops=ops)))
    assert exact.partitions[0].discrete_values == (0, 10)


def invoke(*args, registry):
    return CliRunner().invoke(cli, list(args), obj=registry, catch_exceptions=False)


def test_cli_check_spec_prints_the_table_and_the_diverging_op(planted):
    result = invoke("check", "model.py:factory", "--backend", "torchops", registry=planted)
    assert result.exit_code == 1
    assert "fail" in result.output and "first diverging op: mul (aten.mul.Tensor)" in result.output
    assert MUL_LINE in result.output and "z = y * 2.0" in result.output


class WholeTailOnly(OffByOnePercent):
    """The planted backend, refusing to compile a program without both adds: no prefix
    shorter than the second add compiles, so the search can only name a range."""

    def compile(self, program, options):
        if sum(n.target == torch.ops.aten.add.Tensor for n in program.graph.nodes) < 2:
            raise RuntimeError("this backend compiles no program without both adds")
        return super().compile(program, options)


def test_cli_check_names_each_op_of_a_range_it_could_not_narrow(model_file):
    result = invoke("check", "model.py:factory", "--backend", "torchops", registry=registry_with(WholeTailOnly()))
    assert result.exit_code == 1
    assert "divergence in one of 5 ops (no shorter prefix compiles alone" in result.output
    for name in ("relu", "add", "relu_1", "mul", "add_1"):  # the partition after the conv
        assert f"    {name}: File " in result.output
    assert MUL_LINE in result.output


def test_cli_check_json_and_a_saved_program(planted, tmp_path):
    data = json.loads(invoke("check", "model.py:factory", "--backend", "torchops", "--json", registry=planted).output)
    assert data["passed"] is False
    assert data["partitions"][0]["divergence"]["node"] == "mul"
    assert data["partitions"][0]["rtol"] == 1e-4  # the test backend declares no tolerance: the default

    result = invoke("export", "model.py:factory", "-b", "torchops", "--keep-reference", "-o", "m.edgeport",
                    registry=planted)
    assert result.exit_code == 0
    import numpy as np

    np.savez(tmp_path / "in.npz", x=np.ones((1, 3, 12, 12), dtype=np.float32))
    result = invoke("check", "m.edgeport", "--inputs", "in.npz", "--rtol", "0.05", "--json", registry=planted)
    assert result.exit_code == 0 and json.loads(result.output)["passed"] is True
    np.savez(tmp_path / "wrong.npz", x=np.ones((1, 3, 12, 13), dtype=np.float32))  # refused as `run` refuses it
    result = CliRunner().invoke(cli, ["check", "m.edgeport", "--inputs", "wrong.npz"], obj=planted)
    assert result.exit_code == 1 and "input 0 ('x') must have shape [1, 3, 12, 12], got [1, 3, 12, 13]" in result.output


def test_cli_check_errors(planted):
    invoke("export", "model.py:factory", "-b", "torchops", "-o", "plain.edgeport", registry=planted)
    result = CliRunner().invoke(cli, ["check", "plain.edgeport"], obj=planted)
    assert result.exit_code == 1 and "re-export with --keep-reference" in result.output
    result = CliRunner().invoke(cli, ["check", "plain.edgeport", "--backend", "cpu"], obj=planted)
    assert result.exit_code == 1 and "--backend applies to a SPEC, which is exported here" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["check", "plain.edgeport", "--floor-db", "20"], obj=planted)
    assert result.exit_code == 1 and "--floor-db applies to a SPEC" in result.output  # it said to add --quantize
    assert "--quantize int8" not in result.output


def test_cli_check_refuses_quantization_flags_without_quantize(planted):
    """They were ignored: a check the user thought quantized ran in float."""
    for flags in (["--threshold-db", "10"], ["--calibration", "cal.npz"]):
        result = CliRunner().invoke(cli, ["check", "model.py:factory", "-b", "torchops", *flags], obj=planted)
        assert result.exit_code == 1 and f"{flags[0]} applies only with --quantize" in result.output


def test_cli_check_refuses_calibration_for_a_scheme_that_measures_no_ranges(model_file):
    """check took it and ignored it, while export refused it."""
    result = CliRunner().invoke(cli, ["check", "model.py:factory", "-b", "cpu", "--quantize", "int8-dynamic",
                                      "--calibration", "cal.npz"])
    assert result.exit_code == 1 and "--calibration applies to static schemes; int8-dynamic" in result.output


def test_a_failing_relative_error_never_prints_equal_to_its_tolerance():
    """"max rel 1.00e-02" against "rtol 0.01" read as a pass; "found in 1 compiles"."""
    from edgeport.cli._output import console
    from edgeport.cli.check import _rel, print_divergence
    from edgeport.devtools.check import Divergence, Error

    assert _rel(0.0100004, 0.01) == "1.00004e-02"
    assert _rel(0.0123, 0.01) == "1.23e-02" and _rel(0.01, 0.01) == "1.00e-02" and _rel(0.0100004, None) == "1.00e-02"
    assert _rel(math.nan, 0.01) == "nan"
    with console.capture() as captured:
        print_divergence(0, "cpu", Divergence("add", "aten.add.Tensor", "", "", "", Error(0.1, 0.0100004, 40.0), 1),
                         0.01)
    assert "max rel 1.00004e-02, found in 1 compile" in captured.get() and "compiles" not in captured.get()


def test_checking_a_torchao_quantized_program_prints_none_of_torchaos_import_noise(tmp_path):
    """Loading its references imported torchao loudly ("Failed to load .../_C_mxfp8.so",
    torch's pytree deprecation), though export of the same model printed nothing."""
    import subprocess
    import sys

    model, x = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU()).eval(), torch.randn(2, 16)
    edgeport.export(model, (x,), ["cpu"], quantize="int8-dynamic", keep_reference=True).save(tmp_path / "m.edgeport")
    script = ("import torch, edgeport\nfrom edgeport.devtools import check_program\n"
              f"print(check_program(edgeport.load({str(tmp_path / 'm.edgeport')!r}), [torch.randn(2, 16)]).passed)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (done.stdout, done.stderr) == ("True\n", "")
