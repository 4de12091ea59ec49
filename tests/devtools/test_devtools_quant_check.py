"""`edgeport check --quantize`: SQNR per partition against the fake-quantized reference
and the float model, and the first op that quantization costs more than a threshold."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import edgeport
from edgeport.cli import cli

MODEL = '''
import torch
from torch import nn
import torch.nn.functional as F


class WideRange(nn.Module):
    """conv -> relu -> exp (its output spans orders of magnitude: int8 loses most there) -> conv"""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.exp(F.relu(self.a(x)) * 3))


def model():
    torch.manual_seed(0)
    return WideRange().eval(), (torch.randn(1, 3, 8, 8),)


def batches():
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(1, 3, 8, 8, generator=generator),) for _ in range(4)]
'''


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("quant_check") / "wide.py"
    path.write_text(MODEL)
    return str(path)


@pytest.fixture(scope="module")
def checked(spec):
    result = CliRunner().invoke(cli, ["check", f"{spec}:model", "--backend", "cpu", "--quantize", "int8",
                                      "--calibration", f"{spec}:batches", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_each_partition_gets_its_sqnr_against_reference_and_float(checked):
    (partition,) = checked["quantization"]["partitions"]
    assert partition["backend"] == "cpu"
    assert partition["vs_reference_db"] == "inf"  # XNNPACK computes the fake-quantized graph exactly here
    # the scheme's own error, measured the same way whether the backend ran it or torch did
    assert partition["vs_float_db"] == pytest.approx(partition["reference_vs_float_db"])
    assert 5 < partition["vs_float_db"] < 40


def test_the_first_op_losing_more_than_the_threshold_is_named_with_its_line(checked):
    drop = checked["quantization"]["partitions"][0]["first_drop"]
    assert drop["node"] == "exp" and drop["op"] == "aten.exp.default"
    assert drop["input_db"] - drop["output_db"] > checked["quantization"]["threshold_db"]
    assert drop["output_db"] < checked["quantization"]["floor_db"] == 30
    assert "wide.py" in drop["source"]


def test_an_op_ending_above_the_floor_is_not_named(spec):
    """exp ends at ~27 dB and the conv after it at ~12: under a floor of 20 dB the conv
    is named, under 10 nothing. (A drop alone named the first conv of every healthy
    a16w8 model: 16-bit inputs at ~100 dB, 8-bit weights at ~50.)"""
    result = CliRunner().invoke(cli, ["check", f"{spec}:model", "--quantize", "int8", "--calibration",
                                      f"{spec}:batches", "--floor-db", "20", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["quantization"]
    assert report["floor_db"] == 20 and report["partitions"][0]["first_drop"]["node"] == "convolution_1"
    result = CliRunner().invoke(cli, ["check", f"{spec}:model", "--quantize", "int8", "--calibration",
                                      f"{spec}:batches", "--floor-db", "10", "--json"])
    assert json.loads(result.output)["quantization"]["partitions"][0]["first_drop"] is None


def test_the_table_names_the_op(spec):
    result = CliRunner().invoke(cli, ["check", f"{spec}:model", "--quantize", "int8", "--calibration",
                                      f"{spec}:batches", "--threshold-db", "8"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "SQNR vs float dB" in result.output and "first op losing more than 8 dB, to below 30 dB: exp" in result.output


def test_quantize_applies_to_a_spec_not_a_saved_program(tmp_path):
    program = tmp_path / "p.edgeport"
    program.write_bytes(b"")
    result = CliRunner().invoke(cli, ["check", str(program), "--quantize", "int8"])
    assert result.exit_code != 0 and "--quantize" in result.output and "Traceback" not in result.output


def test_a_threshold_that_is_no_number_says_number():
    result = CliRunner().invoke(cli, ["check", "m.py:model", "--quantize", "int8", "--floor-db", "abc"])
    assert result.exit_code == 2 and "'abc' is not a valid number" in result.output  # was "float range"


@pytest.mark.parametrize("threshold", ["-5", "0"])
def test_a_threshold_that_is_no_drop_is_refused(spec, threshold):
    """-5 was taken, and named an op 'losing more than -5 dB' that had gained 0.4 dB."""
    result = CliRunner().invoke(cli, ["check", f"{spec}:model", "--quantize", "int8", "--calibration",
                                      f"{spec}:batches", "--threshold-db", threshold])
    assert result.exit_code == 2 and "--threshold-db" in result.output and "Traceback" not in result.output


def test_check_quantization_refuses_a_threshold_that_is_no_drop():
    from edgeport.devtools.quant_check import check_quantization

    with pytest.raises(edgeport.InputError, match="threshold_db is a drop in dB greater than 0, got -5"):
        check_quantization(None, None, [], threshold_db=-5)
    for floor in (float("nan"), True, 10**400):  # True passed as 1; 10**400 raised OverflowError
        with pytest.raises(edgeport.InputError, match="floor_db is an SQNR in dB, a finite number, got"):
            check_quantization(None, None, [], floor_db=floor)


OUTLIER = '''
import torch
from torch import nn


def model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 4)).eval()
    with torch.no_grad():
        m[0].weight[0] = 0.0
        m[0].weight[0, 0] = 1000.0  # an outlier: row 0's int32 bias steps by ~6.7
        m[0].bias[0] = 3.0
    return m, (_batch(0),)


def batches():
    return [(_batch(i),) for i in range(1, 9)]


def _batch(seed):
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(seed)) * 30
    x[:, 0] *= 1e-4
    return x
'''


def test_the_op_named_in_a_sequential_says_which_module(tmp_path):
    """Every op of an nn.Sequential has torch's own source line (linear.py): the
    module path says which layer."""
    (tmp_path / "outlier.py").write_text(OUTLIER)
    spec = str(tmp_path / "outlier.py")
    result = CliRunner().invoke(cli, ["check", f"{spec}:model", "--backend", "cpu", "--quantize", "int8",
                                      "--calibration", f"{spec}:batches", "--json"])
    assert result.exit_code == 0, result.output  # the backend computes the reference exactly, bias included
    drop = json.loads(result.output)["quantization"]["partitions"][0]["first_drop"]
    assert (drop["node"], drop["module"]) == ("linear", "0 (Linear)") and drop["output_db"] < 30


SORTED = '''
import torch


class Sorted(torch.nn.Module):
    def forward(self, x):
        return torch.cummax(x, 1).values  # the cpu takes no running maximum


def model():
    return Sorted().eval(), (torch.randn(2, 8),)


def batches():
    return [(torch.randn(2, 8),) for _ in range(2)]
'''


def test_a_method_nothing_is_delegated_in_says_so_instead_of_empty_tables(tmp_path):
    (tmp_path / "sorted.py").write_text(SORTED)
    spec = str(tmp_path / "sorted.py")
    result = CliRunner().invoke(cli, ["check", f"{spec}:model", "--backend", "cpu", "--quantize", "int8",
                                      "--calibration", f"{spec}:batches"])
    assert result.exit_code == 0, result.output
    assert "no quantized partition to compare with float: none is delegated" in result.output
    assert "nothing to check: no partition is delegated" in result.output and "SQNR" not in result.output


NARROW_CALIBRATION = '''
import torch
from torch import nn


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval(), (torch.randn(1, 3, 8, 8) * 4,)


def batches():  # 80 times narrower than the inputs checked
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(1, 3, 8, 8, generator=generator) * 0.05,) for _ in range(4)]
'''


def test_an_input_beyond_the_calibrated_range_is_named_at_its_quantize(tmp_path):
    """Its loss happens before any op: nothing was named (every op kept its input's SQNR)."""
    (tmp_path / "narrow.py").write_text(NARROW_CALIBRATION)
    spec = str(tmp_path / "narrow.py")
    args = ["check", f"{spec}:model", "--backend", "cpu", "--quantize", "int8", "--calibration", f"{spec}:batches"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "input (input, at its quantize), exact in," in result.output and "calibrate on inputs like" in result.output
    drop = json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)["quantization"]["partitions"][0]["first_drop"]
    assert (drop["node"], drop["op"], drop["input_db"]) == ("input", "input, at its quantize", "inf")
    assert drop["output_db"] < 10


ALIGNED_INPUT = '''
import torch
from torch import nn


def model():
    """A sum of 16 inputs: calibrated on independent values it ranges about +-12; the
    input checked, every value 2 (within the inputs' calibrated range), sums to 32."""
    linear = nn.Linear(16, 1)
    with torch.no_grad():
        linear.weight.fill_(1.0)
        linear.bias.zero_()
    return nn.Sequential(linear, nn.Tanh(), nn.Linear(1, 4)).eval(), (torch.full((2, 16), 2.0),)


def batches():
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(2, 16, generator=generator).clamp(-2.5, 2.5),) for _ in range(8)]
'''


def test_an_op_whose_output_clips_at_its_calibrated_range_says_so(tmp_path):
    """An op named for a loss from clipping read like one from rounding ("39.7 dB in,
    28.2 dB out" for an attention whose output left its calibrated range on 0.8% of its
    values); the fix is other calibration data, so the line says how much was clipped."""
    (tmp_path / "aligned.py").write_text(ALIGNED_INPUT)
    spec = str(tmp_path / "aligned.py")
    args = ["check", f"{spec}:model", "--backend", "cpu", "--quantize", "int8", "--calibration", f"{spec}:batches"]
    result = CliRunner().invoke(cli, args, terminal_width=250)
    assert result.exit_code == 0, result.output
    drop = json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)["quantization"]["partitions"][0]["first_drop"]
    assert drop["node"] == "linear" and drop["clipped"] == 1.0
    low, high = drop["calibrated_range"]
    assert low < 0 < high < 32
    assert f"100% of linear's output lies beyond the range calibration measured for it ({low:.4g} to {high:.4g})" \
        in result.output


def test_the_quantization_table_labels_a_simulated_backend_as_the_check_table_does(spec):
    """It said "qualcomm" where the check table above it said "qualcomm: simulator"."""
    result = CliRunner().invoke(cli, ["check", f"{spec}:model", "--backend", "qualcomm", "--quantize", "a16w8",
                                      "--calibration", f"{spec}:batches", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["partitions"][0]["label"] == data["quantization"]["partitions"][0]["label"] == "qualcomm: simulator"


ONE_HUGE_CHANNEL = '''
import torch
from torch import nn


def model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    with torch.no_grad():
        m[0].weight[0] *= 3000.0  # one channel sets the per-tensor range of the relu's output
        m[0].bias[0] = 50.0
        m[2].weight[:, 0] = 0.0  # the next linear reads only the others, rounded to a few steps
    return m, (_batch(0),)


def batches():
    return [(_batch(i),) for i in range(1, 9)]


def _batch(seed):
    return torch.randn(32, 16, generator=torch.Generator().manual_seed(seed))
'''


def test_the_op_whose_quantized_output_hurts_its_reader_is_named_not_the_reader(tmp_path):
    """The relu's whole-tensor SQNR stays at 28.8 dB (its huge channel dominates it): the
    second linear, which reads the crushed channels, was named (28.8 dB in, 3.3 out)."""
    (tmp_path / "huge.py").write_text(ONE_HUGE_CHANNEL)
    spec = str(tmp_path / "huge.py")
    args = ["check", f"{spec}:model", "--backend", "cpu", "--quantize", "int8", "--calibration", f"{spec}:batches"]
    drop = json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)["quantization"]["partitions"][0]["first_drop"]
    assert (drop["node"], drop["module"], drop["reader"]) == ("relu", "1 (ReLU)", "linear_1")
    assert drop["output_db"] < 10 and drop["input_db"] > 30  # the reader as run, and reading the relu exact
    text = CliRunner().invoke(cli, args).output
    assert "relu (aten.relu.default) in module 1 (ReLU), at its output's quantize: linear_1, which reads it" in text


HUGE_CHANNEL_SLICED = ONE_HUGE_CHANNEL.replace(
    "m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8)).eval()",
    "m = nn.Sequential(nn.Linear(16, 16), Others(), nn.Linear(15, 8)).eval()",
).replace("m[2].weight[:, 0] = 0.0  # the next linear reads only the others, rounded to a few steps", "pass") + """

class Others(nn.Module):
    def forward(self, x):
        return x[:, 1:]  # the channels the huge one's range crushed
"""


@pytest.mark.parametrize("backend", ["cpu", "qualcomm"])
def test_a_slice_of_a_crushed_value_blames_the_value_not_the_slice(tmp_path, backend):
    """qualcomm requantizes a slice's output at its input's steps: reading its input
    exact did not save it, and the slice was named ("35.4 dB in, 0.0 dB out")."""
    (tmp_path / "sliced.py").write_text(HUGE_CHANNEL_SLICED)
    spec = str(tmp_path / "sliced.py")
    args = ["check", f"{spec}:model", "--backend", backend, "--quantize", "int8", "--calibration", f"{spec}:batches"]
    drop = json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)["quantization"]["partitions"][0]["first_drop"]
    assert (drop["node"], drop["reader"]) == ("linear", "slice_1")


def test_python_check_quantization_refuses_what_it_cannot_compare():
    """A program saved without references raised KeyError: 'None/tensors.json'; a float
    program none of whose nodes the quantized graph names (torch.export.export of a
    transformers BERT, not edgeport's capture) gave SQNR inf, a perfect match."""
    import torch
    from torch import nn

    from edgeport.devtools import check_quantization, float_program

    torch.manual_seed(0)
    # ends in a layer norm, as a transformer does: the output is a getitem of a three-output
    # op, whose float counterpart was never found (inf again, through the CLI as well)
    model, x = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4), nn.LayerNorm(4)).eval(), torch.randn(2, 8)
    bare = edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=[(x,)])
    with pytest.raises(edgeport.EdgeportError, match="saved without their torch reference") as info:
        check_quantization(bare, float_program(model, (x,), ["cpu"]), (x,))
    assert "keep_reference=True" in info.value.hint

    program = edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=[(x,)], keep_reference=True)
    other = torch.export.export(nn.Tanh(), (x,))  # none of its nodes has the quantized graph's names
    with pytest.raises(edgeport.InputError, match="not this program's model") as info:
        check_quantization(program, other, (x,))
    assert "float_program(model, example_inputs, backends)" in info.value.hint
    (partition,) = check_quantization(program, float_program(model, (x,), ["cpu"]), (x,)).partitions
    assert 20 < partition.reference_vs_float_db < 80 and 20 < partition.vs_float_db < 80
    # a wrong shape is the InputError a run gives, not torch's from inside the float model
    with pytest.raises(edgeport.InputError, match=r"input 0 \('input'\) must have shape \[2, 8\], got \[3, 3\]"):
        check_quantization(program, float_program(model, (x,), ["cpu"]), (torch.randn(3, 3),))


def test_another_models_float_program_is_refused_not_compared():
    """Same input, another model: its linears share the quantized graph's names, so it
    gave an SQNR of 0.2 dB and no first drop, as if quantization had ruined the model."""
    import torch
    from torch import nn

    from edgeport.devtools import check_quantization, float_program

    torch.manual_seed(0)
    x = torch.randn(2, 8)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    other = nn.Sequential(nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 4)).eval()
    program = edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=[(x,)], keep_reference=True)
    with pytest.raises(edgeport.InputError, match=r"not this program's model: 1 op\(s\) of partition 0 .*relu"):
        check_quantization(program, float_program(other, (x,), ["cpu"]), (x,))


def test_check_quantization_names_a_token_id_past_the_vocabulary():
    """The float model raised torch's IndexError ("index out of range in self")."""
    import torch
    from torch import nn

    from edgeport.devtools import check_quantization, float_program

    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 4)).eval()
    ids = torch.arange(6).reshape(1, 6)
    program = edgeport.export(model, (ids,), ["cpu"], quantize="int8", calibration=[(ids,)], keep_reference=True)
    with pytest.raises(edgeport.InputError, match=r"input 0 \('input'\) holds id 10, .* rows for 10 ids \(0 to 9\)"):
        check_quantization(program, float_program(model, (ids,), ["cpu"]), (ids + 5,))



def test_a_model_whose_capture_quantization_rewrites_checks_against_float():
    """examples/models.py's tiny_llama (grouped heads) on cpu int8: check --quantize said
    "the float program given is not this program's model: 16 op(s) ... have no
    counterpart (e.g. clone_default, view_default, expand_default)": the float program
    was captured without the rewrites quantization captures with, and the CLI, which
    captured both, told the user to pass the right model."""
    import torch

    from edgeport.devtools import check_quantization, float_program
    from edgeport.portable import stored_program

    class GroupedHeads(torch.nn.Module):
        """Two key/value heads repeated for four query heads, as grouped-query attention
        does: a rank-5 expand that capture for quantization collapses to rank 4."""

        def __init__(self):
            super().__init__()
            self.kv, self.out = torch.nn.Linear(8, 16), torch.nn.Linear(8, 8)

        def forward(self, x):
            kv = self.kv(x).view(1, 4, 2, 8).transpose(1, 2)  # (B, nkv, T, hs)
            k = kv.repeat_interleave(2, dim=1)  # (B, nh, T, hs)
            return self.out(k.transpose(1, 2).reshape(1, 4, 32)[..., :8])

    torch.manual_seed(0)
    model, x = GroupedHeads().eval(), torch.randn(1, 4, 8)
    program = edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=[(x,), (x * 0.5,)],
                              keep_reference=True)
    reference = stored_program(program.files, program.plan("forward").steps[0].reference)
    tags = {n.meta.get("custom", {}).get("edgeport_float_node") for n in reference.graph.nodes}
    assert any(tag and tag.startswith("expand") and tag != "expand" for tag in tags)  # a node the rewrite made
    report = check_quantization(program, float_program(model, (x,), ["cpu"]), (x,))
    (partition,) = report.partitions
    assert partition.vs_reference_db == float("inf") and 20 < partition.vs_float_db < 80


CAUSAL_INF_MASK = '''
import torch
from torch import nn


class Causal(nn.Module):
    """Scores plus a stored causal mask of -inf, softmax, values: the add stays float on
    cpu (an int8 ADD takes two run-time tensors), -inf where the float model has it."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.register_buffer("mask", torch.full((8, 8), float("-inf")).triu(1))

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / 4 + self.mask
        return torch.softmax(scores, -1) @ self.v(x)


def model():
    torch.manual_seed(0)
    return Causal().eval(), (torch.randn(1, 8, 16),)


def batches():
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(1, 8, 16, generator=generator),) for _ in range(8)]
'''


def test_an_infinity_both_sides_hold_is_exact_not_a_loss(tmp_path):
    """A healthy int8 attention (35.8 dB against float) had its mask's add named: "add,
    32.2 dB in, -inf dB out", the -inf both the quantized and the float scores hold
    making inf - inf."""
    from edgeport.devtools.quant_check import sqnr_db
    import torch

    (tmp_path / "causal.py").write_text(CAUSAL_INF_MASK)
    spec = str(tmp_path / "causal.py")
    args = ["check", f"{spec}:model", "--backend", "cpu", "--quantize", "int8", "--calibration", f"{spec}:batches",
            "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (partition,) = json.loads(result.output)["quantization"]["partitions"]
    assert partition["first_drop"] is None and partition["vs_float_db"] > 30
    masked = torch.tensor([1.0, float("-inf"), 2.0])
    assert sqnr_db([masked], [masked]) == float("inf")
    assert sqnr_db([torch.tensor([1.0, 0.0, 2.0])], [masked]) == float("-inf")  # a lost infinity is a loss
    assert 10 < sqnr_db([torch.tensor([1.1, float("-inf"), 2.0])], [masked]) < 40


OUTLIER_TABLE = '''
import torch
from torch import nn


def model():
    """A lookup whose table has one row 200 times the others (a row never read): stored
    per tensor at int8, that row sets the steps every other row rounds to."""
    torch.manual_seed(0)
    lookup = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 8)).eval()
    with torch.no_grad():
        lookup[0].weight[49] *= 200
    return lookup, (torch.randint(0, 49, (1, 8), generator=torch.Generator().manual_seed(0)),)


def batches():
    generator = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 49, (1, 8), generator=generator),) for _ in range(4)]
'''


def test_a_lookup_that_loses_its_table_is_named_reading_its_ids_exact(tmp_path):
    """qualcomm int8 stores a table per tensor: a table with an outlier row came out 6 dB
    from float and nothing was named, since the lookup reads no float value to compare
    its output with; the ids it reads are exact."""
    (tmp_path / "table.py").write_text(OUTLIER_TABLE)
    spec = str(tmp_path / "table.py")
    args = ["check", f"{spec}:model", "--backend", "qualcomm", "--quantize", "int8", "--calibration",
            f"{spec}:batches", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (partition,) = json.loads(result.output)["quantization"]["partitions"]
    assert partition["vs_float_db"] < 15
    drop = partition["first_drop"]
    assert (drop["node"], drop["op"], drop["input_db"]) == ("embedding", "aten.embedding.default", "inf")
    assert drop["output_db"] < 15 and drop["module"] == "0 (Embedding)"


TINY_ROW_NORMED = '''
import torch
from torch import nn


class TinyRow(nn.Module):
    """A token whose values are 1000 times smaller than the others' (a class token at
    its initial scale beside patch embeddings), then a layer norm, which scales each
    token to unit size: quantized per tensor, that token rounds to a step or two."""

    def __init__(self):
        super().__init__()
        self.embed, self.norm, self.head = nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 8)
        self.register_buffer("scale", torch.tensor([[1.0], [1.0], [1.0], [0.001]]))

    def forward(self, x):
        return self.head(self.norm(self.embed(x) * self.scale))


def model():
    torch.manual_seed(0)
    return TinyRow().eval(), (torch.randn(1, 4, 16),)


def batches():
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(1, 4, 16, generator=generator),) for _ in range(8)]
'''


def test_a_loss_at_a_layer_norm_is_measured_and_blamed_on_what_it_reads(tmp_path):
    """A layer norm's value is a tuple (output, mean, rstd), so its loss was never
    measured: DeiT (transformers, random init) on cpu int8 was 11.6 dB from float, its
    second layer norm reading 37.2 dB and handing on 11.6, and nothing was named."""
    (tmp_path / "tiny_row.py").write_text(TINY_ROW_NORMED)
    spec = str(tmp_path / "tiny_row.py")
    args = ["check", f"{spec}:model", "--backend", "cpu", "--quantize", "int8", "--calibration", f"{spec}:batches",
            "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (partition,) = json.loads(result.output)["quantization"]["partitions"]
    drop = partition["first_drop"]
    assert (drop["node"], drop["op"], drop["reader"]) == ("mul", "aten.mul.Tensor", "native_layer_norm")
    assert drop["output_db"] < 30 < drop["input_db"]  # the norm, as it ran; reading the mul exact
