"""The plugin template stays small (issue 11: at most 60 lines of code), so "a plugin is
one module" stays true of the one vendors copy. Lines of code: lines that are not blank,
not only a comment, and not part of a docstring."""

import ast
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1] / "examples" / "plugin_template" / "edgeport_numpy_npu.py"


def lines_of_code(source: str) -> int:
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None:
            first = node.body[0]
            docstrings.update(range(first.lineno, first.end_lineno + 1))
    return sum(1 for number, line in enumerate(source.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and number not in docstrings)


def test_lines_of_code_leave_out_blanks_comments_and_docstrings():
    source = '"""Doc\nstring."""\n\n# a comment\nx = 1  # counted\n\ndef f():\n    """Doc."""\n    return x\n'
    assert lines_of_code(source) == 3


def test_the_plugin_template_is_at_most_60_lines_of_code():
    assert lines_of_code(TEMPLATE.read_text()) <= 60


def test_the_template_readme_runs_the_kit_as_ci_does():
    """Its README's one test command ran only the two smoke tests: a vendor copying it had
    a green CI that never asked whether the backend computes right."""
    readme = (TEMPLATE.parent / "README.md").read_text()
    ci = (TEMPLATE.parents[2] / ".ci" / "run").read_text()
    kit = "--edgeport-backend numpy-npu examples/plugin_template/tests"
    assert f"pytest {kit}" in readme and f"pytest -q -p no:cacheprovider {kit}" in ci
