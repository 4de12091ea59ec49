"""Every command and option of the CLI, and every public name of the Python packages, is
written in the docs (README.md, docs/*.md): nothing new ships undocumented."""

import re
from pathlib import Path

import click
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


def test_every_command_and_long_option_is_in_the_docs():
    plugins = click.Group()  # what the installed plugins add (`edgeport hub`), as `edgeport` adds it
    default_registry().add_commands(plugins)
    commands = {**dict(_commands(cli, click.Context(cli))), **dict(_commands(plugins, click.Context(plugins)))}
    assert {"export", "llm export", "hub profile"} <= set(commands)
    missing = [f"edgeport {name}" for name in commands if f"edgeport {name}" not in DOCS]
    missing += [f"edgeport {name} {flag}" for name, command in commands.items() for param in command.params
                for flag in (*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ()))
                if flag.startswith("--") and flag not in DOCS]
    assert not missing, f"not in README.md or docs/: {missing}"


@pytest.mark.parametrize("package", [edgeport, edgeport.llm, edgeport.devtools, edgeport.testing],
                         ids=lambda p: p.__name__)
def test_every_public_name_is_in_the_docs(package):
    missing = [name for name in package.__all__ if not re.search(rf"\b{name}\b", DOCS)]
    assert not missing, f"{package.__name__}: not in README.md or docs/: {missing}"
