"""docs/writing-a-backend.md runs as written: its backend module registers and passes the
conformance kit, and its pyproject.toml names that module as an edgeport entry point."""

import importlib
import os
import re
import sys
import tomllib

import pytest

from edgeport.testing import registered_by
from edgeport.testing.kit import Verdict, kit_cases, run_kit

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "writing-a-backend.md")


def _block(language: str, first_line: str) -> str:
    with open(DOC) as f:
        blocks = re.findall(rf"```{language}\n(.*?)```", f.read(), re.DOTALL)
    return next(b for b in blocks if b.startswith(first_line))


@pytest.fixture(scope="module")
def my_npu(tmp_path_factory):
    """The page's module as a vendor has it: a file on the path (the kit's process without
    torch imports it from there)."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "my_npu.py").write_text(_block("python", "# my_npu.py"))
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("my_npu")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("my_npu", None)


def test_the_skeleton_registers_its_backend(my_npu):
    assert isinstance(registered_by(my_npu)["my_npu"], my_npu.MyNpu)


def test_the_skeleton_passes_the_kit_on_what_it_takes_and_declines_the_rest(my_npu):
    """relu and add_broadcast are all its steps: the kit runs them without torch too, which
    the page's first example (torch as its stand-in runtime) failed."""
    names = ("relu", "add_broadcast", "conv_bn_relu", "conv2d", "int8_add", "reshape", "position_mask")
    verdicts = {o.case: o.verdict for o in run_kit(my_npu.MyNpu(), cases=[c for c in kit_cases()
                                                                          if c.name in names]).outcomes}
    assert verdicts == {"relu": Verdict.PASSED, "add_broadcast": Verdict.PASSED, "conv_bn_relu": Verdict.PASSED,
                        "conv2d": Verdict.DECLINED, "int8_add": Verdict.DECLINED, "reshape": Verdict.DECLINED,
                        "position_mask": Verdict.PASSED}


def test_the_pyproject_names_the_module_as_an_entry_point():
    project = tomllib.loads(_block("toml", "[build-system]"))
    assert project["project"]["entry-points"]["edgeport"] == {"my_npu": "my_npu"}
    assert project["tool"]["setuptools"]["py-modules"] == ["my_npu"]


def _section_blocks(heading: str) -> list[str]:
    with open(DOC) as f:
        text = f.read()
    start = text.index(heading)
    section = text[start:text.index("\n### ", start + len(heading))]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_the_support_check_snippets_run_as_written():
    """They failed pasted into a file: NameError for torch, then for support."""
    import torch

    program = torch.export.export(torch.nn.ReLU(), (torch.randn(2, 3),)).run_decompositions()
    [relu] = [n for n in program.graph.nodes if n.op == "call_function"]
    first, second = _section_blocks("### Support checks")
    namespace: dict = {}
    exec(compile(first, "docs/writing-a-backend.md", "exec"), namespace)
    assert namespace["CHECK"](relu).ok
    namespace = {}
    exec(compile(second, "docs/writing-a-backend.md", "exec"), namespace)
    assert namespace["check"](relu, lambda node: False).ok


def test_the_support_check_snippets_compose_without_torch():
    """The run side imports a backend's module without torch, and the page says to compose
    checks at import: a dtype set written ``{torch.float32}`` made that impossible."""
    import subprocess
    import sys

    for block in _section_blocks("### Support checks"):
        code = 'import sys; sys.modules["torch"] = None\n' + block
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
