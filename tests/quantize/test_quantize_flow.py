"""The quantization step of export: schemes, placement-aware annotation, calibration,
QAT, the CLI, and what reaches a program file."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from example_models import load_example
from torch import nn
from torch_backend import TorchOpsBackend

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.cli import cli
from edgeport.devtools.html import quantization_lines
from edgeport.portable import program_to_files, stored_program
from edgeport.quantize import SCHEMES, resolve_scheme
from edgeport.testing import reference_program, registry_for
from edgeport.testing.quantized_cases import calibration_for


class ConvAtanConv(nn.Module):
    """Two convs around atan, which no backend here lowers."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.atan(F.relu(self.a(x))))


def tflite_ops(program: edgeport.Program) -> list[dict[str, int]]:
    """The TFLite operator counts of each cpu artifact."""
    return [info.metadata["ops"] for info in program.manifest.artifacts.values() if info.backend == "cpu"]


# -- schemes and refusals -------------------------------------------------------------------------


def test_import_edgeport_does_not_import_torchao():
    script = "import sys, edgeport, edgeport.quantize\nprint('torchao' in sys.modules)\n"
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "False\n"


@pytest.mark.parametrize("backend, scheme", [("qualcomm", "a16w8"), ("cpu", "int8"), ("coreml", "int8")])
def test_asking_a_backend_for_its_quantizer_prints_none_of_torchaos_import_noise(backend, scheme):
    """A backend's quantizer module imports torchao: first quietly (its CUDA kernels that
    cannot load here, torch's pytree deprecations), or every `edgeport llm export
    --quantize a16w8` opened with those lines."""
    script = ("from edgeport.api import resolve_backends\n"
              "from edgeport.quantize import resolve_scheme\n"
              "from edgeport.quantize.placement import backend_quantization\n"
              f"selected, options = resolve_backends([{backend!r}])\n"
              f"print(backend_quantization(selected[{backend!r}], resolve_scheme({scheme!r}), options[{backend!r}]).status)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("quantizes\n", "")


def test_schemes_are_data_and_group_size_applies_to_int4_only():
    assert set(SCHEMES) == {"int8", "int8-dynamic", "int4-weight", "a16w8", "palettize4", "palettize6"}
    assert resolve_scheme("int4-weight", group_size=64).group_size == 64
    assert SCHEMES["int8"].needs_calibration and not SCHEMES["int8-dynamic"].needs_calibration
    with pytest.raises(edgeport.EdgeportError, match="unknown quantization scheme 'int3'") as info:
        resolve_scheme("int3")
    assert "int8, int8-dynamic, int4-weight, a16w8, palettize4, palettize6" in info.value.hint
    assert not SCHEMES["palettize4"].needs_calibration
    assert SCHEMES["palettize6"].describe() == "palettize6: 6-bit palettized weights (a table of 64 values per tensor), float activations"
    with pytest.raises(edgeport.EdgeportError, match="has no weight groups"):
        resolve_scheme("int8", group_size=32)


def test_the_int4_description_names_only_the_backends_quantizing_with_it():
    """On --backend qualcomm (which declines int4) it said what cpu's and coreml's kernels do."""
    int4 = SCHEMES["int4-weight"]
    assert int4.describe(["cpu"]).endswith("quantized per token at run time (by cpu's XNNPACK kernels)")
    assert int4.describe([]).endswith("quantized per token at run time")
    assert "cpu's XNNPACK kernels; coreml keeps them fp16" in int4.describe()


def test_static_int8_without_calibration_data_refuses_and_says_why():
    model, x = nn.Linear(8, 4).eval(), torch.randn(2, 8)
    with pytest.raises(edgeport.CalibrationError, match="int8 needs calibration data") as info:
        edgeport.export(model, (x,), ["cpu"], quantize="int8", registry=registry_for(CpuBackend()))
    assert "random data would calibrate" in info.value.hint


def test_a_calibration_batch_that_does_not_fit_names_its_index():
    model, x = nn.Linear(8, 4).eval(), torch.randn(2, 8)
    with pytest.raises(edgeport.CalibrationError, match="calibration batch 1"):
        edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=[(x,), (torch.randn(2, 5),)],
                        registry=registry_for(CpuBackend()))


@pytest.mark.parametrize("bad, says", [(float("nan"), "NaN"), (float("inf"), "infinity")])
def test_a_weight_holding_nan_or_infinity_is_named_as_the_models_weight(bad, says):
    """It said "calibration measured the range of fc1_weight (get_attr) as nan to nan",
    with a hint about attention masks: no calibration data measured it, the model holds it."""
    model, x = nn.Sequential(nn.Linear(8, 4), nn.ReLU()).eval(), torch.randn(2, 8)
    with torch.no_grad():
        model[0].weight[1, 2] = bad
    with pytest.raises(edgeport.CalibrationError, match=rf"^the model's weight 0.weight holds {says} \(it ranges "
                                                          r".* round to one step \(read by linear: ") as info:
        edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=[(x,)], registry=registry_for(CpuBackend()))
    assert "checkpoint" in info.value.hint and "mask" not in info.value.hint


def test_a_calibration_batch_without_its_batch_axis_names_both_shapes():
    """It was torch's guard: "AssertionError: Guard failed: x.size()[0] == 4"."""
    model, x = nn.Linear(32, 4).eval(), torch.randn(4, 32)
    with pytest.raises(edgeport.CalibrationError, match=r"^calibration batch 0 input 0 has shape \(32,\), the model's "
                                                          r"example \(4, 32\): one batch per entry, with its batch "
                                                          r"axis$") as info:
        edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=[(x[0],)], registry=registry_for(CpuBackend()))
    assert "numpy.stack(batches)" in info.value.hint
    with pytest.raises(edgeport.CalibrationError, match=r"^calibration batch 1 input 0 has shape \(4, 16\), the "
                                                          r"model's example \(4, 32\)$"):
        edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=[(x,), (x[:, :16],)],
                        registry=registry_for(CpuBackend()))


def test_a_calibration_batch_of_another_dtype_names_both_dtypes():
    """It was torch's "expected scalar type Double but found Float", naming neither the
    input nor the fix (numpy's float64 default)."""
    model, x = nn.Linear(8, 4).eval(), torch.randn(2, 8)
    with pytest.raises(edgeport.CalibrationError, match=r"^calibration batch 1 input 0 is torch.float64, the "
                                                          r"model's example torch.float32$") as info:
        edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=[(x,), (x.double(),)],
                        registry=registry_for(CpuBackend()))
    assert "x.to(torch.float32)" in info.value.hint and "astype(numpy.float32)" in info.value.hint


def test_calibration_data_that_raises_while_read_is_the_datas_error_not_an_internal_one():
    """A generator raising at its second batch (a broken data loader) was "internal
    error: RuntimeError: loader broke ... please report it"."""
    model, x = nn.Linear(8, 4).eval(), torch.randn(2, 8)

    def loader():
        yield (x,)
        raise RuntimeError("loader broke")

    with pytest.raises(edgeport.CalibrationError, match=r"^the calibration data raised reading batch 1: RuntimeError: "
                                                          r"loader broke$") as info:
        edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=loader(),
                        registry=registry_for(CpuBackend()))
    assert "data loader" in info.value.hint


def test_calibration_keyed_by_input_name_is_refused_as_no_method():
    """{"x": batches} was read as method -> batches, found none for "forward", and said
    "int8 needs calibration data", though data had been given."""
    model, x = nn.Linear(8, 4).eval(), torch.randn(2, 8)
    with pytest.raises(edgeport.CalibrationError, match=r"^calibration is a mapping, read as method name -> batches, "
                                                          r"but 'x' names no method of this program \(its methods: "
                                                          r"'forward'\)$") as info:
        edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration={"x": [(x,)]},
                        registry=registry_for(CpuBackend()))
    assert "calibration=[(x1,), (x2,)]" in info.value.hint
    program = edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration={"forward": [(x,)]},
                              registry=registry_for(CpuBackend()))
    assert program.manifest.report["forward"]["quantization"]["calibration"]["batches"] == 1
    assert "  calibration: 1 batch, " in [line.text for line in quantization_lines(program.report())][-1]


def test_a_calibration_batch_holding_nan_or_infinity_is_one_error_naming_it():
    """It was torchao's AssertionError "min nan should be less than max nan"."""
    model, x = nn.Linear(8, 4).eval(), torch.randn(2, 8)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(edgeport.CalibrationError, match="calibration batch 1, input 0 holds NaN or infinity"):
            edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=[(x,), (x.clone().fill_(bad),)],
                            registry=registry_for(CpuBackend()))


class _MaskedScores(nn.Module):
    """Attention scores plus an additive causal mask, then softmax, then the values: the
    mask a buffer, or computed from ``arange`` as transformers builds it (``where(keep,
    0, -inf)``, Falcon's)."""

    def __init__(self, masked: float, computed: bool = False) -> None:
        super().__init__()
        self.masked, self.computed = masked, computed
        self.register_buffer("mask", torch.full((4, 4), masked).triu(diagonal=1))

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if self.computed:
            position = torch.arange(4)
            mask = torch.where(position[None, :] <= position[:, None], 0.0, self.masked)
        else:
            mask = self.mask
        return torch.softmax(q @ k.transpose(-1, -2) + mask, -1) @ k


@pytest.mark.parametrize("computed", [False, True], ids=["buffer", "computed"])
@pytest.mark.parametrize("masked", [float("-inf"), torch.finfo(torch.float32).min], ids=["inf", "finfo_min"])
@pytest.mark.parametrize("backend", ["cpu", "mediatek"])
def test_a_stored_mask_sentinel_keeps_its_add_and_softmax_float(backend, masked, computed):
    """The mask's -inf (or finfo.min) is known at export. cpu and mediatek int8 quantized
    the add reading it, so calibration measured a range over -inf and refused the export
    (rightly: every real score would round to one step; qualcomm int8 on
    examples/models.py's tiny_llama was cosine 0.36 to float before that refusal): a
    decoder LM with transformers' causal mask (Falcon) or examples' tiny_llama could not
    be quantized there at all. The add and the softmax absorbing its -inf stay float,
    named as such; the products around them are int8, the answer float's."""
    from edgeport.backends.mediatek import MediatekBackend

    torch.manual_seed(0)
    model, (q, k) = _MaskedScores(masked, computed).eval(), (torch.randn(1, 4, 8), torch.randn(1, 4, 8))
    registry = registry_for(CpuBackend() if backend == "cpu" else MediatekBackend())
    batches = [(q, k)] + [(torch.randn(1, 4, 8), torch.randn(1, 4, 8)) for _ in range(3)]
    program = edgeport.export(model, (q, k), [backend], quantize="int8", calibration=batches, registry=registry)
    line = program.manifest.report["forward"]["quantization"]["backends"][backend]
    assert "add (it reads " in line and "holds an infinity or a sentinel known at export" in line
    if backend == "mediatek":  # both products int8, the softmax float after the add (the cpu: XNNPACK's float)
        assert "_softmax (it reads add, which holds an infinity" in line and "bmm" not in line
    with torch.no_grad():
        assert torch.allclose(program(q, k), model(q, k), atol=0.1)


class _RotaryTable(nn.Module):
    """Token ids looked up, then a linear times a rotary cos table computed from a buffer
    and the positions, as transformers' Llama, Mistral and Phi-3 compute theirs on every
    call."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding, self.linear = nn.Embedding(16, 8), nn.Linear(8, 8)
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        angles = torch.arange(ids.shape[1]).float()[:, None] * self.inv_freq[None]  # (T, 4)
        return self.linear(self.embedding(ids)) * torch.cat([angles, angles], -1).cos()


@pytest.mark.parametrize("backend", ["cpu", "mediatek"])
def test_a_table_computed_from_buffers_is_quantized_once_at_export(backend):
    """The int8 mul reads the table quantized. Export folded the table but not its
    quantize (no aten op); on mediatek, after a portable lookup, the quantize and its
    dequantize made a partition of their own whose value is a constant, which the writer
    declines: each call ran them in torch (tiny Mistral and Phi-3, every layer). The
    quantize folds into the int8 constant the writer stores, read inside the delegate."""
    from edgeport.backends.mediatek import MediatekBackend

    torch.manual_seed(0)
    model, ids = _RotaryTable().eval(), torch.randint(0, 16, (1, 6))
    registry = registry_for(CpuBackend() if backend == "cpu" else MediatekBackend())
    program = edgeport.export(model, (ids,), [backend], quantize="int8", calibration=[(ids,), (ids.flip(1),)],
                              registry=registry)
    report = program.report()
    assert [n["name"] for n in report["nodes"] if n["backend"] == "portable"] == \
        ([] if backend == "cpu" else ["embedding"])
    assert any(name.startswith("quantize_per_tensor") for name in report["folded"].values())
    assert "mul" not in program.manifest.report["forward"]["quantization"]["backends"][backend]  # int8
    with torch.no_grad():
        assert torch.allclose(program(ids), model(ids), atol=0.05)


class _LogOfData(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.log(x.relu()) + y


def test_an_infinity_that_arises_from_the_data_is_still_refused():
    """An infinity known only at run time (the log of a zero the input holds) cannot be
    kept float at export: calibration still refuses the range it measured."""
    from edgeport.backends.mediatek import MediatekBackend

    x, y = torch.randn(1, 8), torch.randn(1, 8)
    with pytest.raises(edgeport.CalibrationError, match=r"range of log \(aten.log.default\) as -inf to .*round to "
                                                          r"one step"):
        edgeport.export(_LogOfData().eval(), (x, y), ["mediatek"], quantize="int8", calibration=[(x, y)],
                        registry=registry_for(MediatekBackend()))


@pytest.mark.parametrize(("calibration", "message"), [
    (5, "calibration takes an iterable of batches; got int 5"), ("cal.npz", "is a path: from Python, calibration takes batches"),
])
def test_calibration_that_is_no_iterable_of_batches_is_refused(calibration, message):
    """5 raised TypeError; "cal.npz" was iterated character by character."""
    model, x = nn.Linear(8, 4).eval(), torch.randn(2, 8)
    with pytest.raises(edgeport.CalibrationError, match=message):
        edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=calibration,
                        registry=registry_for(CpuBackend()))


class _Two(nn.Module):
    def forward(self, x, y):
        return x * y


def test_an_npz_binds_its_arrays_to_the_inputs_by_name(tmp_path):
    """savez(y=..., x=...) calibrated x on y's values: the file's order was taken."""
    from edgeport.quantize import load_calibration

    xs, ys = np.full((2, 1, 3), 100.0, np.float32), np.full((2, 1, 3), 0.01, np.float32)
    np.savez(tmp_path / "yx.npz", y=ys, x=xs)
    ((x, y), _) = load_calibration(str(tmp_path / "yx.npz"), _Two(), (torch.ones(1, 3), torch.ones(1, 3)))
    assert x.max() == 100.0 and y.max() == pytest.approx(0.01)
    np.savez(tmp_path / "ab.npz", a=xs, b=ys)
    with pytest.raises(edgeport.CalibrationError, match="holds arrays a, b; the model's inputs are x, y") as info:
        load_calibration(str(tmp_path / "ab.npz"), _Two(), (torch.ones(1, 3), torch.ones(1, 3)))
    assert "x=..., y=..." in info.value.hint


def test_an_npz_of_another_dtype_or_no_rows_and_a_file_that_is_no_npz_are_one_line_each(tmp_path):
    from edgeport.quantize import load_calibration

    model, examples = _Two(), (torch.ones(1, 3), torch.ones(1, 3))
    np.savez(tmp_path / "f64.npz", x=np.ones((2, 1, 3)), y=np.ones((2, 1, 3)))  # numpy's default dtype
    with pytest.raises(edgeport.CalibrationError, match="array x is float64, the model's input is float32") as info:
        load_calibration(str(tmp_path / "f64.npz"), model, examples)
    assert info.value.hint == "convert it with .astype(numpy.float32)"
    np.savez(tmp_path / "empty.npz", x=np.ones((0, 1, 3), np.float32), y=np.ones((0, 1, 3), np.float32))
    with pytest.raises(edgeport.CalibrationError, match="holds no batches"):
        load_calibration(str(tmp_path / "empty.npz"), model, examples)
    with pytest.raises(edgeport.CalibrationError, match="cal.npy: give a FILE.npz or a SPEC"):
        load_calibration(str(tmp_path / "cal.npy"), model, examples)


def test_an_npz_that_is_no_numpy_archive_never_suggests_allow_pickle(tmp_path):
    """A text file named .npz gave numpy's "contains pickled (object) data ... allow_pickle=";
    loading it so would run the file's code."""
    from edgeport.quantize import load_calibration

    model, examples = _Two(), (torch.ones(1, 3), torch.ones(1, 3))
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    with pytest.raises(edgeport.CalibrationError, match=r"text.npz is not a numpy .npz of arrays") as info:
        load_calibration(str(tmp_path / "text.npz"), model, examples)
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.ones((2, 1, 3), np.float32))
    with pytest.raises(edgeport.CalibrationError, match="objects.npz: it holds Python objects, not numeric arrays"):
        load_calibration(str(tmp_path / "objects.npz"), model, examples)
    assert "pickle" not in str(info.value) + info.value.hint


# -- placement-aware annotation ----------------------------------------------------------------------


def test_a_backend_offering_no_schemes_keeps_its_nodes_float():
    """torchops (relu/add/mul, no quantization) first, cpu second: the cpu's conv is
    quantized, the relu torchops runs stays float, and quantize/dequantize sit only at
    the cpu partitions' edges."""

    class ConvReluConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torchops = TorchOpsBackend(ops=("relu",))
    model, x = ConvReluConv().eval(), torch.randn(1, 3, 8, 8)
    program = edgeport.export(model, (x,), ["torchops", "cpu"], quantize="int8", calibration=calibration_for((x,)),
                              registry=registry_for(torchops, CpuBackend()), keep_reference=True)
    report = program.manifest.report["forward"]["quantization"]
    assert report["backends"]["torchops"].startswith("keeps its 1 node(s) float")
    nodes = {n["name"]: n for n in program.report()["nodes"]}
    assert nodes["relu"]["backend"] == "torchops"
    assert all(op["QUANTIZE"] == 1 and op["DEQUANTIZE"] == 1 for op in tflite_ops(program))
    torch.testing.assert_close(program(x), reference_program(program)(x), rtol=0, atol=0.05)


def test_a_backend_offering_other_schemes_declines_its_nodes_with_the_reason():
    class NpuLike(TorchOpsBackend):
        schemes = frozenset({"a16w8"})

    npu = NpuLike(name="npu", ops=("relu", "add"))
    model, x = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval(), torch.randn(2, 8)
    program = edgeport.export(model, (x,), ["npu", "cpu"], quantize="int8", calibration=calibration_for((x,)),
                              registry=registry_for(npu, CpuBackend()))
    relu = next(n for n in program.report()["nodes"] if n["op"] == "aten.relu.default")
    assert relu["backend"] == "cpu"
    assert relu["reasons"]["npu"] == "npu does not offer int8 (it offers a16w8)"


def test_a_quantizer_that_raises_is_the_backends_error_not_an_internal_one():
    """It reached the CLI as "internal error: RuntimeError: ... please report it", naming
    neither the plugin nor the hook, as if edgeport were at fault."""

    class BrokenQuantizer(TorchOpsBackend):
        schemes = frozenset({"int8"})

        def quantizer(self, scheme, options):
            raise RuntimeError("npu quantizer not built")

    model, x = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval(), torch.randn(2, 8)
    with pytest.raises(edgeport.BackendError, match="^backend 'npu': quantizer\\('int8'\\) raised RuntimeError: "
                                                    "npu quantizer not built$") as info:
        edgeport.export(model, (x,), ["npu", "cpu"], quantize="int8", calibration=calibration_for((x,)),
                        registry=registry_for(BrokenQuantizer(name="npu"), CpuBackend()))
    assert info.value.hint.startswith("a bug in the backend")


@pytest.fixture(scope="module")
def island():
    """ConvAtanConv exported int8 to cpu: atan stays a float portable step between two
    quantized cpu partitions."""
    torch.manual_seed(0)
    model, x = ConvAtanConv().eval(), torch.randn(1, 3, 8, 8)
    program = edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=calibration_for((x,)),
                              keep_reference=True, registry=registry_for(CpuBackend()))
    return model, x, program


def test_an_op_no_backend_takes_stays_float_between_quantized_partitions(island):
    model, x, program = island
    steps = program.manifest.methods["forward"].steps
    assert [s.kind for s in steps] == ["delegate", "portable", "delegate"]
    atan = next(n for n in program.report()["nodes"] if n["op"] == "aten.atan.default")
    assert atan["backend"] == "portable" and "no TFLite lowering" in atan["reasons"]["cpu"]
    portable = stored_program(program.files, steps[1].program)
    assert [str(n.target) for n in portable.graph.nodes if n.op == "call_function"] == ["aten.atan.default"]
    # each cpu partition quantizes what enters it and dequantizes what leaves it, nothing else
    assert tflite_ops(program) == [
        {"QUANTIZE": 1, "TRANSPOSE": 2, "CONV_2D": 1, "DEQUANTIZE": 1},
        {"QUANTIZE": 1, "TRANSPOSE": 2, "CONV_2D": 1, "DEQUANTIZE": 1},
    ]
    torch.testing.assert_close(program(x), reference_program(program)(x), rtol=0, atol=0.05)


def test_a_quantized_step_loads_without_torchao_imported_first(island, tmp_path):
    """A portable step that calls quantize/dequantize ops registers their libraries when
    it is loaded, in a process that never imported them."""
    _, x, program = island
    step = program.manifest.methods["forward"].steps[0]
    reference = stored_program(program.files, step.reference)
    assert any("quantized_decomposed" in str(n.target) for n in reference.graph.nodes)
    for rel, data in program_to_files(reference).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch\nfrom edgeport.portable import program_from_files, PortableExecutable\n"
        f"p = program_from_files(lambda n: open({str(tmp_path)!r} + '/' + n, 'rb').read())\n"
        f"y = PortableExecutable(p).run([torch.load({str(tmp_path / 'x.pt')!r})])\n"
        "print(type(y[0]).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "Tensor"


def test_a_quantized_method_keeps_its_mutated_buffer_as_program_state():
    """A KV-cache-like buffer written with index_copy_ stays program state through the
    quantized flow (the converted graph is functionalized again when it mutates)."""

    class Cache(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(64, 64)
            self.register_buffer("cache", torch.zeros(4, 64))

        def forward(self, x, pos):
            self.cache.index_copy_(0, pos, self.proj(x))
            return self.cache.sum(0, keepdim=True)

    torch.manual_seed(0)
    model = Cache().eval()
    x1, x2 = torch.randn(1, 64), torch.randn(1, 64)
    program = edgeport.export_methods({"step": (model, (x1, torch.tensor([0])))}, ["cpu"], quantize="int8-dynamic",
                                      registry=registry_for(CpuBackend()))
    assert program.manifest.methods["step"].state_writes  # the buffer is state, not a constant
    with torch.no_grad():
        outputs = [program.run(x, torch.tensor([i]), method="step").outputs for i, x in enumerate((x1, x2))]
        expected = [model(x, torch.tensor([i])) for i, x in enumerate((x1, x2))]
    for actual, eager in zip(outputs, expected):
        torch.testing.assert_close(torch.as_tensor(actual), eager, rtol=0, atol=0.05)


# -- QAT ------------------------------------------------------------------------------------------


def test_qat_model_trains_then_exports_without_calibration():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 4)).eval()
    x, target = torch.randn(8, 3, 6, 6), torch.randint(0, 4, (8,))
    registry = registry_for(CpuBackend())
    prepared = edgeport.prepare_qat(model, (x,), ["cpu"], "int8", registry=registry)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.05)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = F.cross_entropy(prepared(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # gradients flow through the fake quantization
    program = edgeport.export(prepared, (x,), ["cpu"], keep_reference=True, registry=registry)
    report = program.manifest.report["forward"]["quantization"]
    assert report["scheme"] == "int8" and "(static, learned in training)" in report["description"]  # not "calibrated"
    ops = tflite_ops(program)[0]
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1 and ops["FULLY_CONNECTED"] == 1
    torch.testing.assert_close(program(x), reference_program(program)(x), rtol=0, atol=0.05)
    # export converts a copy: a checkpoint exported mid-training leaves the model to train on
    # (a second export raised AttributeError '_frozen_param0')
    again = edgeport.export(prepared, (x,), ["cpu"], registry=registry)
    torch.testing.assert_close(again(x), program(x), rtol=0, atol=0)
    F.cross_entropy(prepared(x), target).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in prepared.parameters())
    with pytest.raises(edgeport.QuantizationError, match="prepared for quantization-aware training with int8"):
        edgeport.export(prepared, (x,), ["cpu"], quantize="int8-dynamic", registry=registry)


def test_a_qat_model_exported_before_any_forward_pass_is_refused():
    """Exported straight after prepare_qat (the original module trained instead), every
    range was torchao's default, with only its UserWarning "must run observer before
    calling calculate_qparams": a conv-relu-conv came out 0.0 dB from float."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 6, 6)
    registry = registry_for(CpuBackend())
    prepared = edgeport.prepare_qat(model, (x,), ["cpu"], "int8", registry=registry)
    with pytest.raises(edgeport.QuantizationError, match=r"^the QAT model has not run: \d+ of its \d+ fake-quantize "
                                                           r"module\(s\) never observed a value") as info:
        edgeport.export(prepared, (x,), ["cpu"], registry=registry)
    assert "train the model edgeport.prepare_qat returned" in info.value.hint
    prepared(x)  # one forward pass observes every range
    with warnings.catch_warnings(record=True) as caught:  # torch's pytree FutureWarning, twice, from the copy
        warnings.simplefilter("always")
        program = edgeport.export(prepared, (x,), ["cpu"], registry=registry, calibration=[(x,)])
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
    assert program.manifest.report["forward"]["quantization"]["calibration"] == \
        "not used: a QAT model's ranges are learned in training"
    with torch.no_grad():
        assert torch.nn.functional.cosine_similarity(program(x).flatten(), model(x).flatten(), dim=0) > 0.99


def test_qat_applies_to_static_schemes():
    with pytest.raises(edgeport.QuantizationError, match="static schemes, not int8-dynamic"):
        edgeport.prepare_qat(nn.Linear(4, 4), (torch.randn(1, 4),), ["cpu"], "int8-dynamic",
                             registry=registry_for(CpuBackend()))


def test_qat_for_a_scheme_no_backend_offers_is_refused():
    """prepare_qat(..., ["cpu"], "a16w8") returned a model with no fake quantization in it."""
    with pytest.raises(edgeport.QuantizationError, match="no selected backend quantizes with a16w8: cpu offers int4"):
        edgeport.prepare_qat(nn.Linear(4, 4), (torch.randn(1, 4),), ["cpu"], "a16w8", registry=registry_for(CpuBackend()))


# -- CLI ------------------------------------------------------------------------------------------


MODEL_FILE = '''
import torch
from torch import nn

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), (torch.randn(1, 3, 6, 6),)

def batches():
    return [(torch.randn(1, 3, 6, 6),) for _ in range(3)]

def broken():
    raise RuntimeError("no images here")
'''


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "qmodel.py"
    path.write_text(MODEL_FILE)
    return path


@pytest.mark.parametrize("source", ["npz", "spec"])
def test_cli_exports_int8_with_calibration_from_a_file_or_a_factory(model_file, tmp_path, source):
    if source == "npz":
        calibration = str(tmp_path / "cal.npz")
        np.savez(calibration, input=np.random.default_rng(0).standard_normal((4, 1, 3, 6, 6)).astype(np.float32))
    else:
        calibration = f"{model_file}:batches"
    out = tmp_path / "q.edgeport"
    result = CliRunner().invoke(cli, ["export", f"{model_file}:model", "--backend", "cpu", "--quantize", "int8",
                                      "--calibration", calibration, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "calibration: " + ("4" if source == "npz" else "3") + " batches" in result.output
    program = edgeport.load(out)
    assert program.manifest.report["forward"]["quantization"]["scheme"] == "int8"


def test_a_calibration_factory_returning_no_batches_names_what_it_returned(tmp_path):
    """It read "returned a int", a typo to the reader."""
    from edgeport.quantize import load_calibration

    (tmp_path / "cal.py").write_text("def count():\n    return 8\n")
    with pytest.raises(edgeport.CalibrationError, match=r"cal.py:count returned an int, not an iterable of batches"):
        load_calibration(f"{tmp_path / 'cal.py'}:count", torch.nn.Identity(), ())


def test_the_readme_calibration_factory_gives_mobilenet_batches():
    from edgeport.quantize import load_calibration

    examples = Path(__file__).resolve().parents[2] / "examples"
    batches = list(load_calibration(f"{examples}/calibration.py:random_images", torch.nn.Identity(), ()))
    assert len(batches) == 8 and all(b[0].shape == (1, 3, 224, 224) for b in batches)


def test_the_examples_tiny_llama_quantizes_on_mediatek_with_its_calibration_factory(tmp_path):
    """tiny_llama masks with a stored -inf: int8 on cpu and mediatek was refused by
    calibration, and examples had no batches for it (random_token_ids are the encoder's
    1000-word, 32-token ids). Its causal mask's add and softmax stay float, the rest int8."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    out = tmp_path / "llama8.edgeport"
    result = CliRunner().invoke(cli, ["export", f"{examples}/models.py:tiny_llama", "--backend", "mediatek",
                                      "--quantize", "int8", "--calibration",
                                      f"{examples}/calibration.py:random_llama_token_ids", "-o", str(out)])
    assert result.exit_code == 0, result.output
    program = edgeport.load(out)
    line = program.manifest.report["forward"]["quantization"]["backends"]["mediatek"]
    assert line.startswith("quantizes 120 of its 149 op(s) with int8")  # the mask's 2 adds and softmaxes float
    model, (ids,) = load_example("tiny_llama")
    with torch.no_grad():
        expected, got = model(ids), torch.as_tensor(program(ids))
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.75  # measured 16 of 16 (cpu: 15), 24.2 dB


def test_a_calibration_factory_that_raises_is_one_line(model_file, tmp_path):
    result = CliRunner().invoke(cli, ["export", f"{model_file}:model", "--quantize", "int8", "--calibration",
                                      f"{model_file}:broken", "-o", str(tmp_path / "q.edgeport")])
    assert result.exit_code == 1
    assert f"calibration factory {model_file}:broken raised RuntimeError: no images here" in result.output
    assert "internal error" not in result.output


def test_calibration_for_a_scheme_that_measures_no_ranges_is_refused(model_file, tmp_path):
    """It was read, then ignored."""
    result = CliRunner().invoke(cli, ["export", f"{model_file}:model", "--quantize", "int8-dynamic", "--calibration",
                                      f"{model_file}:batches", "-o", str(tmp_path / "q.edgeport")])
    assert result.exit_code == 1
    assert "--calibration applies to static schemes; int8-dynamic measures no ranges" in result.output


def test_cli_int8_without_calibration_is_one_line_and_a_hint(model_file, tmp_path):
    result = CliRunner().invoke(cli, ["export", f"{model_file}:model", "--quantize", "int8",
                                      "-o", str(tmp_path / "q.edgeport")])
    assert result.exit_code != 0
    assert "--quantize int8 needs --calibration" in result.output
    assert "hint: pass --calibration FILE.npz" in result.output and "calibration=" not in result.output
    assert "Traceback" not in result.output


def test_backends_json_lists_each_backends_schemes():
    result = CliRunner().invoke(cli, ["backends", "--json"])
    assert result.exit_code == 0, result.output
    schemes = {row["name"]: row["schemes"] for row in json.loads(result.output)["backends"]}
    assert schemes["cpu"] == ["int4-weight", "int8", "int8-dynamic"]
    assert schemes["mediatek"] == ["int8"]
    assert schemes["coreml"] == ["int4-weight", "int8", "palettize4", "palettize6"]
    assert schemes["qualcomm"] == ["a16w8", "int8"]


def test_auto_asks_each_backend_for_its_own_default_static_scheme():
    from edgeport.quantize import AUTO
    from edgeport.quantize.scheme import backend_scheme

    assert resolve_scheme(" Auto ") is AUTO and AUTO.needs_calibration
    assert backend_scheme(AUTO, frozenset({"int8", "a16w8"}), "a16w8") == "a16w8"
    assert backend_scheme(AUTO, frozenset({"int8", "int8-dynamic"}), None) == "int8"
    assert backend_scheme(AUTO, frozenset({"a16w8"}), None) == "a16w8"
    assert backend_scheme(AUTO, frozenset({"int8-dynamic"}), None) is None  # no static scheme to pick
    assert backend_scheme(resolve_scheme("int8"), frozenset({"a16w8"}), "a16w8") is None  # a named one is exact


def test_cli_quantize_auto_gives_the_cpu_int8(model_file, tmp_path):
    out = tmp_path / "q.edgeport"
    result = CliRunner().invoke(cli, ["export", f"{model_file}:model", "--backend", "cpu", "--quantize", "auto",
                                      "--calibration", f"{model_file}:batches", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = edgeport.load(out).manifest.report["forward"]["quantization"]
    assert report["scheme"] == "auto" and report["backends"]["cpu"].endswith("with int8")


def test_explain_shows_what_each_quantized_op_computes_in(island):
    _, _, program = island
    nodes = {n["name"]: n for n in program.report()["nodes"]}
    assert nodes["convolution"]["quantized"] == {"activations": "int8", "weights": "int8 per channel"}
    assert "quantized" not in nodes["atan"]  # left float, between the quantized partitions
    assert all("quantized" not in n for n in nodes.values() if n["op"].startswith("quantized_decomposed"))


class _PoolSoftmax(nn.Module):
    """Between int8 convs and linears, an average pool and a softmax XNNPACK runs in float."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(torch.relu(self.conv1(x)), 2)
        return torch.softmax(self.fc(torch.relu(self.conv2(y)).mean((2, 3))), -1)


def test_explain_shows_ops_the_cpu_writes_in_float_between_int8_ones_as_float(tmp_path):
    """Read off their quantize/dequantize neighbours, the pool and the softmax showed
    "a int8"; the artifact computes them in float (AVERAGE_POOL_2D, SOFTMAX on float32)."""
    torch.manual_seed(0)
    program = edgeport.export(_PoolSoftmax().eval(), (torch.randn(1, 3, 16, 16),), ["cpu"], quantize="int8",
                              calibration=[(torch.randn(1, 3, 16, 16),) for _ in range(4)],
                              registry=registry_for(CpuBackend()))
    nodes = {n["name"]: n for n in program.report()["nodes"]}
    for name in ("avg_pool2d", "_softmax"):
        assert "quantized" not in nodes[name] and nodes[name]["float_between_quantized"] is True
    for name in ("convolution", "relu", "linear"):
        assert nodes[name]["quantized"]["activations"] == "int8" and "float_between_quantized" not in nodes[name]
    path = tmp_path / "q.edgeport"
    program.save(path)
    table = CliRunner().invoke(cli, ["explain", str(path)], terminal_width=250)
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if "avg_pool2d" in line)
    assert "float" in row and "int8" not in row
    summary = program.manifest.report["forward"]["quantization"]["backends"]["cpu"]
    assert summary == ("quantizes 6 of its 8 op(s) with int8, but 2 stay float: avg_pool2d (XNNPACK runs it in "
                       "float only), _softmax (XNNPACK runs it in float only)")  # it named neither


def test_explain_table_leaves_out_delegated_quantize_dequantize_nodes_unless_all(island, tmp_path):
    _, _, program = island
    path = tmp_path / "q.edgeport"
    program.save(path)
    plumbing = [n for n in program.report()["nodes"]
                if n["op"].startswith("quantized_decomposed") and n["backend"] != "portable"]
    assert plumbing
    table = CliRunner().invoke(cli, ["explain", str(path)], terminal_width=250)
    assert table.exit_code == 0, table.output
    assert f"{len(plumbing)} quantize/dequantize node(s) not listed" in table.output
    assert plumbing[0]["name"] + " " not in table.output and "convolution " in table.output
    everything = CliRunner().invoke(cli, ["explain", str(path), "--all"], terminal_width=250)
    assert plumbing[0]["name"] + " " in everything.output and "not listed" not in everything.output


@pytest.mark.parametrize(("scheme", "weights"), [("int8-dynamic", "int8 per channel"),
                                                 ("int4-weight", "int4 per group of 32")])
def test_explain_names_run_time_activations_and_weight_groups(scheme, weights, tmp_path):
    model, x = nn.Linear(64, 16).eval(), torch.randn(2, 64)
    program = edgeport.export(model, (x,), ["cpu"], quantize=scheme, registry=registry_for(CpuBackend()))
    linear = next(n for n in program.report()["nodes"] if n["op"] == "aten.linear.default")
    assert linear["quantized"] == {"activations": "int8 per token (run time)", "weights": weights}
    path = tmp_path / "q.edgeport"
    program.save(path)
    result = CliRunner().invoke(cli, ["explain", str(path)], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "quantized" in result.output and f"weights {weights}" in result.output


class _Widths(nn.Module):
    """Linears of 64 inputs (two groups), 100 (no multiple of 32), 32 (one group), 7 (odd)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(64, 100), nn.Linear(100, 32), nn.Linear(32, 7), nn.Linear(7, 64)

    def forward(self, x):
        return self.d(self.c(self.b(self.a(x))))


@pytest.mark.parametrize(("scheme", "kept"), [
    ("int4-weight", "1 of its 4 op(s) with int4-weight, but 3 stay float: linear_1 (100 inputs, not a multiple of the group size 32), "
                    "linear_2 (32 inputs, one group of 32), linear_3 (7 inputs, an odd number)"),
    ("int8-dynamic", "3 of its 4 op(s) with int8-dynamic, but 1 stays float: linear_3 (7 inputs, an odd number)"),
])
def test_the_summary_names_each_linear_the_scheme_leaves_float(scheme, kept):
    """It said "cpu: quantizes its 4 node(s)" and left some of them float."""
    program = edgeport.export(_Widths().eval(), (torch.randn(2, 64),), ["cpu"], quantize=scheme,
                              registry=registry_for(CpuBackend()))
    summary = program.manifest.report[program.default_method]["quantization"]["backends"]["cpu"]
    assert summary == f"quantizes {kept}"
    floats = [n["name"] for n in program.report()["nodes"] if n["op"] == "aten.linear.default" and not n.get("quantized")]
    assert sorted(floats) == sorted(name for name in ("linear_1", "linear_2", "linear_3") if name in kept)


def test_the_summary_counts_only_the_ops_a_run_time_scheme_quantizes():
    """int8-dynamic quantizes linears only: it said "quantizes its 4 node(s)" of a conv,
    a flatten, a linear and a softmax."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 8), nn.Softmax(-1)).eval()
    program = edgeport.export(model, (torch.randn(1, 3, 4, 4),), ["cpu"], quantize="int8-dynamic",
                              registry=registry_for(CpuBackend()))
    summary = program.manifest.report["forward"]["quantization"]["backends"]["cpu"]
    assert summary == "quantizes 1 of its 4 op(s) with int8-dynamic"
    assert [n["name"] for n in program.report()["nodes"] if "quantized" in n] == ["linear"]


class _ViewedIds(nn.Module):
    """Token ids viewed, looked up, then a linear (a transformers text model's start)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.linear = nn.Embedding(20, 8), nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.linear(self.embed(ids.view(-1, ids.shape[-1])))


def test_the_summary_counts_no_op_on_integers(tmp_path):
    """The view of the token ids was counted, unquantized and unnamed: "quantizes 1 of its
    3 op(s) with int8, but 1 stays float: embedding" (CLIP's text model on qualcomm:
    "71 of its 72", no op named)."""
    ids = torch.randint(0, 20, (1, 6))
    program = edgeport.export(_ViewedIds().eval(), (ids,), ["cpu"], quantize="int8",
                              calibration=[(torch.randint(0, 20, (1, 6)),) for _ in range(3)],
                              registry=registry_for(CpuBackend()))
    summary = program.manifest.report["forward"]["quantization"]["backends"]["cpu"]
    assert summary == "quantizes 1 of its 2 op(s) with int8, but 1 stays float: embedding (no int8 form here)"
    nodes = {n["name"]: n for n in program.report()["nodes"]}
    assert nodes["view"].get("integer") is True and "integer" not in nodes["embedding"]
    program.save(tmp_path / "ids.edgeport")
    result = CliRunner().invoke(cli, ["explain", str(tmp_path / "ids.edgeport")], terminal_width=250)
    rows = {line.split("│")[1].strip(): line.split("│")[5].strip() for line in result.output.splitlines()
            if line.count("│") > 6 and line.split("│")[1].strip() in ("view", "embedding", "linear")}
    assert rows == {"view": "integers", "embedding": "float",
                    "linear": "activations int8 / weights int8 per channel"}, rows


class _HeadsPermuted(nn.Module):
    """A q projection split into heads and permuted, as an attention's q/k/v are."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x).view(1, 4, 2, 4).permute(0, 2, 1, 3)


def test_explain_spells_out_what_an_op_without_weights_computes_in(tmp_path):
    """cpu int8 q/k/v permutes showed "a int8" (activations int8), which read as a
    misspelt article: the column names activations and weights in full. The view is
    an int8 RESHAPE; the permute writes no operator, and the output's TRANSPOSE it
    stands for is written after the DEQUANTIZE, in float (it said int8)."""
    program = edgeport.export(_HeadsPermuted().eval(), (torch.randn(1, 4, 8),), ["cpu"], quantize="int8",
                              calibration=[(torch.randn(1, 4, 8),) for _ in range(3)],
                              registry=registry_for(CpuBackend()))
    program.save(tmp_path / "heads.edgeport")
    result = CliRunner().invoke(cli, ["explain", str(tmp_path / "heads.edgeport")], terminal_width=250)
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line.split("│")[5].strip() for line in result.output.splitlines()
            if line.count("│") > 6 and line.split("│")[1].strip() in ("linear", "view", "permute")}
    assert rows == {"linear": "activations int8 / weights int8 per channel", "view": "activations int8",
                    "permute": "float"}, rows


def test_the_summary_and_explain_say_when_nothing_is_quantized(tmp_path, caplog):
    """Every linear too narrow for a group of 32: the export said "cpu: quantizes its 3
    node(s)" with nothing int4, and explain said nothing about quantization at all."""
    model, x = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 4)).eval(), torch.randn(2, 8)
    registry = registry_for(CpuBackend())
    caplog.set_level(logging.WARNING, logger="edgeport.quantize")
    program = edgeport.export(model, (x,), ["cpu"], quantize="int4-weight", registry=registry)
    report = program.manifest.report["forward"]["quantization"]
    assert report["quantizes_nothing"] is True
    assert "quantize=int4-weight: nothing is quantized, the program runs in float (cpu: quantizes none" in caplog.text
    assert report["backends"]["cpu"].startswith("quantizes none of its 3 op(s) with int4-weight; 2 stay float: "
                                                "linear (8 inputs, not a multiple of the group size 32)")
    program.save(tmp_path / "q.edgeport")
    result = CliRunner().invoke(cli, ["explain", str(tmp_path / "q.edgeport")], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "nothing is quantized: the program runs in float" in result.output
    assert "linear (8 inputs, not a multiple of the group size 32)" in result.output
    assert edgeport.export(model, (x,), ["cpu"], quantize="int8-dynamic", registry=registry) \
        .manifest.report["forward"]["quantization"]["quantizes_nothing"] is False


def test_an_input_calibrated_on_one_value_is_warned_of_and_explain_says_so(tmp_path, caplog):
    """Calibrated on all-zeros batches (a placeholder loader), a conv residual block
    exported with no word and ran 0.3 dB from float on a real input: every range
    measured from the input was one value, and real values clipped to it."""
    model, x = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()).eval(), torch.randn(1, 4, 6, 6)
    registry = registry_for(CpuBackend())
    caplog.set_level(logging.WARNING, logger="edgeport.quantize")
    program = edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=[(torch.zeros_like(x),)] * 3,
                              registry=registry)
    assert program.manifest.report["forward"]["quantization"]["calibration"]["constant_inputs"] == {"0": 0.0}
    assert "input 0 held the single value 0 in all 3 calibration batch(es)" in caplog.text
    program.save(tmp_path / "q.edgeport")
    result = CliRunner().invoke(cli, ["explain", str(tmp_path / "q.edgeport")], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "input 0 held the single value 0 in all 3 calibration batch(es)" in result.output
    caplog.clear()
    varied = edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=[(x,), (torch.zeros_like(x),)],
                             registry=registry)
    assert "constant_inputs" not in varied.manifest.report["forward"]["quantization"]["calibration"]
    assert "single value" not in caplog.text


class _NotCaptured(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("captured")


@pytest.mark.parametrize("backend, scheme, group_size, says", [
    ("cpu", "a16w8", None, "cpu offers int4-weight, int8, int8-dynamic$"),
    ("cpu", "int4-weight", 48, "cpu: int4 weight groups are a multiple of 32 inputs here, not 48 .pass --group-size"),
    ("mediatek", "a16w8", None, "mediatek offers int8 .a16w8: NeuroPilot runs symmetric int16"),
])
def test_a_scheme_no_selected_backend_quantizes_with_is_refused_before_capture(backend, scheme, group_size, says):
    """cpu with a16w8 exported every node to portable torch, a float program needing
    torch, with exit 0 and a warning; now one line naming what each backend offers,
    before capture and before a batch is read."""
    from edgeport.backends.mediatek import MediatekBackend

    read = []

    def batches():
        read.append(1)
        yield (torch.randn(2, 8),)

    chosen = {"cpu": CpuBackend, "mediatek": MediatekBackend}[backend]()
    with pytest.raises(edgeport.QuantizationError, match=f"^no selected backend quantizes with {scheme}: {says}") \
            as info:
        edgeport.export(_NotCaptured(), (torch.randn(2, 8),), [backend], quantize=resolve_scheme(scheme, group_size),
                        calibration=batches(), registry=registry_for(chosen))
    assert "select one that offers" in info.value.hint and read == []


def test_a_scheme_one_selected_backend_offers_is_not_refused():
    """cpu declines a16w8 and leaves its nodes to the next backend, which quantizes them."""
    from edgeport.api import resolve_backends
    from edgeport.backends.qualcomm import QualcommBackend
    from edgeport.quantize.flow import refuse_unoffered

    selected, options = resolve_backends(["cpu", "qualcomm"], registry=registry_for(CpuBackend(), QualcommBackend()))
    refuse_unoffered(selected, options, resolve_scheme("a16w8"))


class _CompileFails(CpuBackend):
    def compile(self, program, options):
        raise RuntimeError("planted compile failure")


def test_a_backend_whose_quantized_partition_fell_back_says_so_and_check_shows_it(tmp_path, monkeypatch):
    """qualcomm int8 on a linear over a 3d input failed to compile (a per-channel
    dequantize before a Transpose): the summary said "offers int8, and runs no node",
    and "nothing is quantized", while portable torch ran the fake-quantized graph; check
    said "nothing to check" only."""
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU()).eval()
    batches = [(torch.randn(2, 8),) for _ in range(2)]
    program = edgeport.export(model, (torch.randn(2, 8),), ["cpu"], quantize="int8", calibration=batches,
                              registry=registry_for(_CompileFails()))
    report = program.manifest.report["forward"]["quantization"]
    assert report["backends"]["cpu"] == ("offers int8, but its 2 op(s) fell back to portable torch, which runs them "
                                         "fake-quantized (the partitions' fallback says why)")
    assert report["quantizes_nothing"] is False
    (tmp_path / "m.py").write_text("import torch\nfrom torch import nn\n\n\ndef model():\n    torch.manual_seed(0)\n"
                                   "    return nn.Sequential(nn.Linear(8, 4), nn.ReLU()).eval(), (torch.randn(2, 8),)\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["check", "m.py:model", "--backend", "cpu"], obj=registry_for(_CompileFails()))
    assert result.exit_code == 0, result.output
    assert "partition 0 fell back to portable torch, not checked: cpu: compile failed: RuntimeError: planted" \
        in " ".join(result.output.split())


def test_a_quantizing_backend_left_no_node_says_so():
    """It said "quantizes none of its 0 node(s)" (before that, "quantizes its 0")."""
    from edgeport.quantize.placement import QUANTIZES, BackendQuantization, Placement

    placement = Placement(SCHEMES["int8"], {"conv": "mediatek"},
                          {"mediatek": BackendQuantization(QUANTIZES, scheme=SCHEMES["int8"]),
                           "cpu": BackendQuantization(QUANTIZES, scheme=SCHEMES["int8"])})
    placement.quantized.update(mediatek=1, cpu=0)
    assert placement.summary() == {"mediatek": "quantizes its 1 op(s) with int8",
                                   "cpu": "offers int8, and runs no node of this method"}
    assert not placement.quantizes_nothing()


SLOW_FACTORY = '''
def model():
    raise RuntimeError("the factory ran")
'''


@pytest.mark.parametrize("command", ["export", "check"])
@pytest.mark.parametrize("flags, says", [
    (["--quantize", "a16w8", "--calibration", "cal.npz"], "no selected backend quantizes with a16w8: cpu offers "),
    # asked for calibration data first, then refused the scheme the data was made for
    (["--quantize", "a16w8"], "no selected backend quantizes with a16w8: cpu offers "),
    (["--quantize", "int8"], "--quantize int8 needs --calibration: it measures activation ranges"),
    (["--quantize", "int8", "--calibration", "missing.npz"], "no such calibration file: missing.npz"),
    (["--quantize", "int8", "--calibration", "text.npz"], "calibration file text.npz is not a numpy .npz of arrays"),
    (["--quantize", "int8", "--calibration", "cal.npy"], "--calibration cal.npy: give a FILE.npz or a SPEC"),
    (["--quantize", "INT8-Dynamic", "--calibration", "cal.npz"], "--calibration applies to static schemes; "
                                                                 "int8-dynamic measures"),  # any case, as in Python
])
def test_cli_quantize_mistakes_are_refused_before_the_factory_runs(tmp_path, monkeypatch, command, flags, says):
    """Each was found after the model factory ran (a large model's takes minutes)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "slow.py").write_text(SLOW_FACTORY)
    (tmp_path / "text.npz").write_text("x\n1\n")
    np.savez(tmp_path / "cal.npz", x=np.ones((2, 4), np.float32))
    out = ["-o", "m.edgeport"] if command == "export" else []
    result = CliRunner().invoke(cli, [command, "slow.py:model", "--backend", "cpu", *flags, *out],
                                obj=registry_for(CpuBackend()), terminal_width=250)
    assert result.exit_code == 1, result.output
    assert says in " ".join(result.output.split()) and "the factory ran" not in result.output


def test_auto_with_no_backend_offering_a_scheme_says_to_select_one_with_a_static_scheme():
    """The hint said "select one that offers auto": no backend offers auto, each offers
    its own static scheme."""
    model, x = nn.Sequential(nn.ReLU()).eval(), torch.randn(2, 8)
    with pytest.raises(edgeport.QuantizationError, match="no selected backend quantizes with auto: torchops offers "
                                                         "no scheme") as info:
        edgeport.export(model, (x,), ["torchops"], quantize="auto", calibration=[(x,)],
                        registry=registry_for(TorchOpsBackend(ops=("relu",))))
    assert "select one that offers a static scheme" in info.value.hint
