"""Every command and option of the CLI, and every public name of the Python packages, is
written in the docs (README.md, docs/*.md): nothing new ships undocumented. Each option is
in its own command's section, and the first Python snippets a newcomer copies run as written."""

import json
import re
from pathlib import Path

import click
from click.testing import CliRunner
import pytest

import edgeport
import edgeport.devtools
import edgeport.llm
import edgeport.testing
from edgeport import default_registry
from edgeport.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def _commands(group: click.Group, context: click.Context, prefix: tuple[str, ...] = ()):
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if isinstance(command, click.Group):
            yield from _commands(command, context, (*prefix, name))
        else:
            yield " ".join((*prefix, name)), command


def _every_command() -> dict[str, click.Command]:
    plugins = click.Group()  # what the installed plugins add (`edgeport hub`), as `edgeport` adds it
    default_registry().add_commands(plugins)
    return {**dict(_commands(cli, click.Context(cli))), **dict(_commands(plugins, click.Context(plugins)))}


def _flags(command: click.Command) -> list[str]:
    """The command's options, long and short (not its arguments), but --help."""
    return [flag for param in command.params if isinstance(param, click.Option)
            for flag in (*param.opts, *param.secondary_opts) if flag != "--help"]


def _names(flag: str, text: str) -> bool:
    """Whether ``text`` names ``flag`` whole: "--output" is not in "--outputs"."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def _command_sections(text: str) -> dict[str, str]:
    """Each command's section of a page: from a heading naming `edgeport NAME ...` to the
    next heading as high (a heading may name several, as `hub devices` / `hub profile`)."""
    lines = text.splitlines()
    heads = [(i, len(m.group(1))) for i, line in enumerate(lines) if (m := re.match(r"(#+) ", line))]
    sections: dict[str, str] = {}
    for k, (i, level) in enumerate(heads):
        end = next((j for j, higher in heads[k + 1:] if higher <= level), len(lines))
        for m in re.finditer(r"`edgeport ([a-z]+(?: [a-z]+)*)", lines[i]):
            sections[m.group(1)] = sections.get(m.group(1), "") + "\n".join(lines[i:end])
    return sections


def test_every_command_and_long_option_is_in_the_docs():
    commands = _every_command()
    assert {"export", "llm export", "hub profile"} <= set(commands)
    missing = [f"edgeport {name}" for name in commands if f"edgeport {name}" not in DOCS]
    missing += [f"edgeport {name} {flag}" for name, command in commands.items() for flag in _flags(command)
                if not _names(flag, DOCS)]
    assert not missing, f"not in README.md or docs/: {missing}"


def test_every_option_is_in_its_own_commands_section():
    """docs/cli.md (and docs/llm.md for `edgeport llm`) has a section per command; each of
    its flags, long and short, is named there: `llm chat`'s sampling flags were documented
    under `llm generate` only, and export's `--output` and `-b` nowhere (a substring of
    `--outputs` passed the check above)."""
    sections: dict[str, str] = {}
    for page in ("cli.md", "llm.md"):
        for name, text in _command_sections((ROOT / "docs" / page).read_text()).items():
            sections[name] = sections.get(name, "") + text
    commands = _every_command()
    unsectioned = set(commands) - set(sections)
    assert not unsectioned, f"no section in docs/cli.md or docs/llm.md: {unsectioned}"
    missing = [f"edgeport {name} {flag}" for name, command in commands.items() for flag in _flags(command)
               if not _names(flag, sections[name])]
    assert not missing, f"not in the command's section of docs/cli.md or docs/llm.md: {missing}"


@pytest.mark.parametrize("package", [edgeport, edgeport.llm, edgeport.devtools, edgeport.testing],
                         ids=lambda p: p.__name__)
def test_every_public_name_is_in_the_docs(package):
    missing = [name for name in package.__all__ if not re.search(rf"\b{name}\b", DOCS)]
    assert not missing, f"{package.__name__}: not in README.md or docs/: {missing}"


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S)


@pytest.mark.parametrize("page", ["README.md", "docs/python-api.md"])
def test_the_first_python_snippet_runs_as_written(page, tmp_path, monkeypatch):
    """The snippet a newcomer copies first, with its `model` and `x` made up: it and the
    comments it shows (what `run` and `report` return) stay true to the code."""
    import torch

    pytest.importorskip("onnxruntime_qnn")  # the snippets export for ["qualcomm", "cpu"]
    pytest.importorskip("ai_edge_litert")
    monkeypatch.chdir(tmp_path)
    scope = {"model": torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval(),
             "x": torch.randn(1, 3, 8, 8)}
    exec(_python_blocks(page)[0], scope)
    assert isinstance(scope["prog"], edgeport.Program) and scope["y"].shape == (1, 4, 6, 6)
    if page == "docs/python-api.md":
        result = scope["result"]
        assert isinstance(result.outputs, torch.Tensor) and result.total_ms > 0
        assert [s.backend for s in result.steps] == ["qualcomm"]
        assert set(scope["prog"].report()) == {"nodes", "partitions", "values"}


def test_every_field_of_backends_json_is_in_its_documented_list():
    """cli.md lists the fields of `edgeport backends --json`; `plugin` was emitted, not listed."""
    rows = json.loads(CliRunner().invoke(cli, ["backends", "--json"]).output)["backends"]
    listed = re.search(r'JSON: `\{"backends": \[\{([^}]*)\}\]', (ROOT / "docs" / "cli.md").read_text()).group(1)
    assert set(rows[0]) == {name.strip() for name in listed.split(",")}
