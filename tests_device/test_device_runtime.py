"""The run side without PyTorch: programs exported where torch is, run where it is not.

Run in a virtualenv made with ``pip install -e '.[runtime-cpu,runtime-qualcomm,runtime-llm]' pytest``
(no torch), against the programs ``export_programs.py`` wrote in the full environment,
named by ``EDGEPORT_DEVICE_PROGRAMS``. .ci/run does both. Outputs must equal the torch
side's bit for bit: the same artifacts run in the same runtimes (LiteRT, ONNX Runtime).

Not in the default test paths: in the full environment (torch installed) the module
skips, since what it tests is the absence of torch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("torch") is not None:
    pytest.skip("the torch-free tests run in a virtualenv without torch (.ci/run makes one)", allow_module_level=True)

import edgeport  # noqa: E402
import edgeport.llm  # noqa: E402
from edgeport.output_tree import leaves  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def programs() -> Path:
    where = os.environ.get("EDGEPORT_DEVICE_PROGRAMS")
    if not where:
        pytest.fail("set EDGEPORT_DEVICE_PROGRAMS to the directory export_programs.py wrote (with torch)")
    return Path(where)


@pytest.fixture(scope="module")
def cases(programs: Path) -> dict:
    return json.loads((programs / "cases.json").read_text())


def _expected(programs: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(programs / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def _same(actual: np.ndarray, expected: np.ndarray) -> bool:
    return isinstance(actual, np.ndarray) and actual.dtype == expected.dtype and np.array_equal(actual, expected)


def test_torch_is_not_installed_here():
    with pytest.raises(ModuleNotFoundError):
        import torch  # noqa: F401
    assert "torch" not in sys.modules


@pytest.mark.parametrize("name", ["cpu", "qualcomm", "mediatek", "stateful"])
def test_outputs_and_state_equal_the_torch_sides_bit_for_bit(programs, cases, name):
    program = edgeport.load(programs / f"{name}.edgeport")
    expected = _expected(programs, name)
    for i, method in enumerate(cases[name]["calls"]):
        inputs = [expected[f"call{i}_in{j}"] for j in range(len(program.manifest.methods[method].inputs))]
        outputs = leaves(program.run(*inputs, method=method).outputs)
        wanted = [expected[f"call{i}_out{k}"] for k in range(len(outputs))]
        assert f"call{i}_out{len(outputs)}" not in expected
        assert all(_same(y, w) for y, w in zip(outputs, wanted)), f"{name}: call {i} ({method}) differs"
    for fqn, value in program.runtime().state.items():
        assert _same(value, expected[f"state_{fqn}"]), f"{name}: state {fqn} differs"
    assert "torch" not in sys.modules


@pytest.mark.parametrize("name", ["llm_cpu", "llm_mediatek"])
def test_an_llm_program_generates_the_torch_sides_tokens_and_logits(programs, cases, name):
    """A tiny Llama on cpu, and on mediatek with cpu taking the lookups: the same greedy
    loop as the torch side's (export_programs.greedy), step for step, bit for bit."""
    import edgeport.llm

    expected = _expected(programs, name)
    session = edgeport.llm.Session(edgeport.load(programs / f"{name}.edgeport"))
    logits = [np.asarray(session.prefill(session.text.encode(cases[name]["prompt"]), 0))]
    tokens = [int(logits[-1].argmax())]
    while len(tokens) < len(expected["tokens"]):
        logits.append(np.asarray(session.decode(tokens[-1])))
        tokens.append(int(logits[-1].argmax()))
    assert tokens == expected["tokens"].tolist()
    assert _same(np.stack(logits), expected["logits"])
    assert "torch" not in sys.modules


def test_llm_generate_streams_the_same_tokens_without_torch(programs, cases):
    """`edgeport llm generate` on the mediatek-with-cpu program, as a device runs it: the
    torch side's tokens, and the speed line says where decode ran."""
    expected = _expected(programs, "llm_mediatek")
    result = _cli("llm", "generate", str(programs / "llm_mediatek.edgeport"), "--prompt", cases["llm_mediatek"]["prompt"],
                  "--max-new-tokens", str(len(expected["tokens"])), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["token_ids"] == expected["tokens"].tolist()
    assert report["runs_on"] == ["mediatek: reference (CPU)"]


def test_each_backend_runs_where_it_says(programs):
    labels = {name: edgeport.load(programs / f"{name}.edgeport").runtime().step_labels("forward")
              for name in ("cpu", "qualcomm", "mediatek")}
    assert labels == {"cpu": ["cpu"], "qualcomm": ["qualcomm: simulator"], "mediatek": ["mediatek: reference (CPU)"]}


def test_a_program_with_portable_steps_fails_at_load_naming_them(programs):
    with pytest.raises(edgeport.ExecutionError) as caught:
        edgeport.load(programs / "golden_v1.edgeport")
    message, hint = str(caught.value), caught.value.hint
    assert message.startswith("the program has 2 portable step(s), which run with torch, and torch is not installed")
    assert "forward step 1 (partition 1): aten.permute.default" in message
    assert "aten.addmm.default (torchops: torchops has no kernel for aten.addmm.default)" in message
    assert "forward step 3 (partition 3): aten.sigmoid.default" in message
    assert "pip install torch" in hint and "--require-delegated" in hint


def test_a_torch_free_program_has_no_portable_steps(cases):
    assert {name for name, case in cases.items() if case["portable"]} == {"golden_v1"}


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    edgeport_bin = Path(sys.executable).with_name("edgeport")
    return subprocess.run([str(edgeport_bin), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_edgeport_run_writes_the_torch_sides_outputs(programs, tmp_path):
    expected = _expected(programs, "cpu")
    np.savez(tmp_path / "x.npz", x=expected["call0_in0"])
    result = _cli("run", str(programs / "cpu.edgeport"), "--inputs", str(tmp_path / "x.npz"),
                  "--outputs", str(tmp_path / "y.npz"), "--repeat", "3")
    assert result.returncode == 0, result.stderr
    assert "steps: cpu" in result.stdout
    with np.load(tmp_path / "y.npz") as written:
        assert _same(written["output_0"], expected["call0_out0"])


def test_edgeport_run_on_random_inputs_and_backends_work(programs):
    assert _cli("run", str(programs / "stateful.edgeport"), "--method", "write").returncode == 0
    backends = _cli("backends", "--json")
    assert backends.returncode == 0, backends.stderr
    found = {b["name"]: b for b in json.loads(backends.stdout)["backends"]}
    assert (found["cpu"]["can_compile"], found["cpu"]["can_run"]) == (False, True)
    assert "needs torch" in found["cpu"]["why"]


def test_edgeport_explain_says_whether_a_program_is_torch_free(programs):
    assert "torch-free: yes" in _cli("explain", str(programs / "cpu.edgeport")).stdout
    golden = _cli("explain", str(programs / "golden_v1.edgeport"))
    assert golden.returncode == 0, golden.stderr
    assert "torch-free: no (2 portable step(s)" in golden.stdout
    assert json.loads(_cli("explain", "--json", str(programs / "cpu.edgeport")).stdout)["torch_free"] is True


def test_the_compile_side_says_it_needs_torch(programs):
    result = _cli("export", "model.py:factory", "-o", "m.edgeport")
    assert result.returncode == 1 and "edgeport export needs PyTorch" in result.stderr
    with pytest.raises(ImportError, match="edgeport.export is part of edgeport's compile side, which needs PyTorch"):
        edgeport.export  # noqa: B018 - the attribute's import is the test
    with pytest.raises(ImportError, match="edgeport.llm.export is part of edgeport's compile side"):
        edgeport.llm.export  # noqa: B018


def test_the_readme_device_snippet_runs_as_written(programs, tmp_path, monkeypatch, capsys):
    snippet = re.search(r"<!-- device-snippet:.*?-->\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    shutil.copyfile(programs / "cpu.edgeport", tmp_path / "m.edgeport")
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    assert capsys.readouterr().out == "ndarray (1, 5) float32\n"
