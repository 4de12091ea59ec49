"""The run side's layering, checked from the full environment: what imports torch and
what must not, and the compile side's guards for programs meant for a device without
torch. tests_device/ runs the programs themselves in a virtualenv without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
import torch
from click.testing import CliRunner

import edgeport
from edgeport.cli import COMPILE_SIDE, cli
from edgeport.torch_steps import method_portable_steps

# Hides torch (a None in sys.modules makes its import fail), then imports the run side.
WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None
import edgeport, edgeport.runtime, edgeport.cli
import edgeport.backends.cpu, edgeport.backends.qualcomm, edgeport.backends.mediatek, edgeport.backends.coreml
"""


class Cumulative(torch.nn.Module):
    """A linear (the cpu backend takes it) then an op it has no kernel for."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(self.linear(x), ord=3, dim=-1)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_the_run_side_and_every_builtin_backend_import_without_torch():
    result = _python(WITHOUT_TORCH)
    assert result.returncode == 0, result.stderr


def test_explain_imports_no_torch():
    """explain read QUANTIZATION_OPS from report.py, which imports torch: `llm generate`
    (which imports it) peaked 135 MiB higher, past issue 16's memory budget."""
    result = _python("import sys, edgeport.cli.explain\nprint('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_edgeport_help_does_not_import_torch():
    """(``edgeport backends`` may, here: coremltools imports torch when it is installed;
    tests_device/ runs it where torch is not.)"""
    code = ("import sys\nfrom edgeport.cli import main\n"
            "sys.argv = ['edgeport', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_the_help_of_a_command_not_imported_yet_is_its_own():
    context = click.Context(cli)
    for name, (_, short_help) in COMPILE_SIDE.items():
        command = cli.get_command(context, name)  # imports it
        assert click.Command(name, help=short_help).get_short_help_str(200) == command.get_short_help_str(200)


def test_without_torch_the_compile_side_says_what_to_install():
    result = _python(WITHOUT_TORCH + "edgeport.export\n")
    assert "edgeport.export is part of edgeport's compile side, which needs PyTorch" in result.stderr


@pytest.fixture(scope="module")
def half_delegated() -> edgeport.Program:
    torch.manual_seed(0)
    return edgeport.export(Cumulative().eval(), (torch.randn(2, 4),), ["cpu"])


def test_require_delegated_fails_an_export_that_leaves_portable_steps(half_delegated):
    plan, report = half_delegated.manifest.methods["forward"], half_delegated.report()
    assert [s.kind for s in plan.steps] == ["delegate", "portable"]
    steps = method_portable_steps("forward", plan, report)
    with pytest.raises(edgeport.LoweringError) as caught:
        edgeport.export(Cumulative().eval(), (torch.randn(2, 4),), ["cpu"], require_delegated=True)
    assert str(caught.value).startswith("require_delegated: 1 step(s) stayed portable (torch)")
    assert steps[0].describe() in str(caught.value)
    assert "aten.linalg_vector_norm.default (cpu: " in str(caught.value)


def test_explain_says_whether_a_program_is_torch_free(half_delegated, tmp_path):
    half_delegated.save(tmp_path / "half.edgeport")
    runner = CliRunner()
    table = runner.invoke(cli, ["explain", str(tmp_path / "half.edgeport")], catch_exceptions=False).output
    assert "torch-free: no (1 portable step(s) need torch where the program runs)" in table
    data = json.loads(runner.invoke(cli, ["explain", "--json", str(tmp_path / "half.edgeport")]).output)
    assert data["torch_free"] is False


def test_a_program_loaded_with_torch_takes_numpy_and_torch_inputs_alike(half_delegated):
    x = torch.randn(2, 4)
    assert torch.equal(half_delegated(x), half_delegated(x.numpy()))


def test_numpy_inputs_torch_cannot_view_are_taken_or_refused_as_without_torch(half_delegated):
    """torch.from_numpy refused a flipped view (``image[..., ::-1]``) with a ValueError, and a
    big-endian or text array with its own ValueError or TypeError; the run side without
    torch takes the first and refuses the others with an InputError."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal((2, 4), dtype=np.float32)
    flipped = x[:, ::-1]
    assert flipped.strides[1] < 0
    assert torch.equal(half_delegated(flipped), half_delegated(np.ascontiguousarray(flipped)))
    for array, dtype in ((x.astype(">f4"), ">f4"), (x.astype(object), "object"), (np.array([["a"] * 4] * 2), "<U1")):
        with pytest.raises(edgeport.InputError, match=f"input 0 \\('x'\\) must be float32, got {dtype}"):
            half_delegated(array)


def test_a_delegate_only_program_can_run_on_numpy_arrays_where_torch_is_installed():
    """What `edgeport llm generate` does to keep torch out of the process."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 3).eval()
    x = torch.randn(2, 4)
    program = edgeport.export(linear, (x,), ["cpu"])
    program.runtime("numpy")
    out = program(x.numpy())
    assert type(out).__module__ == "numpy"
    assert torch.allclose(torch.from_numpy(out), linear(x), atol=1e-5)


class Accumulator(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("total", torch.zeros(3))

    def forward(self, x):
        self.total.add_(x)
        return self.total * 2


def test_a_state_stored_as_zeros_starts_as_zeros_on_numpy_arrays(tmp_path):
    """The run side without torch makes a state of zeros (stored as ``"fill": 0``) itself."""
    x = torch.tensor([1.0, 2.0, 3.0])
    edgeport.export(Accumulator(), (x,), ["cpu"]).save(tmp_path / "acc.edgeport")
    program = edgeport.load(tmp_path / "acc.edgeport")
    assert program.manifest.state["total"]["fill"] == 0
    program.runtime("numpy")
    assert program(x.numpy()).tolist() == [2.0, 4.0, 6.0]
    assert program(x.numpy()).tolist() == [4.0, 8.0, 12.0]


def test_numpy_arrays_are_refused_for_a_program_with_portable_steps(half_delegated):
    program = edgeport.Program(half_delegated.manifest, half_delegated.files)
    with pytest.raises(edgeport.ExecutionError, match=r"portable steps \(forward step 1\) runs on torch values"):
        program.runtime("numpy")


def test_edgeport_run_of_a_delegate_only_program_does_not_import_torch(tmp_path):
    torch.manual_seed(0)
    edgeport.export(torch.nn.Linear(4, 3).eval(), (torch.randn(2, 4),), ["cpu"]).save(tmp_path / "linear.edgeport")
    code = ("import sys\nfrom edgeport.cli import main\n"
            f"sys.argv = ['edgeport', 'run', {str(tmp_path / 'linear.edgeport')!r}, '--repeat', '2']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "output 0: float32 [2, 3]" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("args", [["llm", "export", "{tmp}/model.gguf", "-o", "{tmp}/out.edgeport"],
                                  ["run", "{tmp}/linear.edgeport", "--reference"]])
def test_without_torch_a_command_that_needs_it_says_so_in_one_line(args, tmp_path):
    """`llm generate` and `run` work without torch; `llm export` and a run on torch
    references do not, and said "internal error" (please report it) instead."""
    edgeport.export(torch.nn.Linear(4, 3).eval(), (torch.randn(2, 4),), ["cpu"]).save(tmp_path / "linear.edgeport")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    argv = [a.format(tmp=tmp_path) for a in args]
    code = WITHOUT_TORCH + (f"sys.argv = ['edgeport', *{argv!r}]\nfrom edgeport.cli import main\n"
                            "try:\n    main()\nexcept SystemExit as exit:\n    print('exit', exit.code)")
    result = _python(code)
    assert result.stdout.strip().splitlines()[-1] == "exit 1"
    assert "this needs PyTorch, which is not installed here" in result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
