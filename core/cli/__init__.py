"""The ``edgeport`` command: a thin layer that parses, calls the library, and formats.

Expected failures (`EdgeportError`) print as one line plus a hint. ``--debug`` or
``EDGEPORT_RAISE_ERRORS=1`` shows the traceback instead; ``--debug`` also lets the
toolchains' own chatter through (see `native_output`).

Commands find backends in the registry given as click's context object
(``cli.main(obj=registry)``, ``CliRunner().invoke(cli, args, obj=registry)``), or in
the process-wide one: an application embedding the CLI, or a test, picks its own.

The commands that need torch (`COMPILE_SIDE`: check, conformance, export, llm) are imported when
invoked, so ``edgeport --help``, ``run``, ``explain`` and ``backends`` start without
importing torch, and work where it is not installed.
"""

from __future__ import annotations

import importlib
import os
import signal
from typing import NoReturn

import click

from ..errors import EdgeportError
from ..native_output import TOOLCHAIN_LOG_ENV
from ..plugins import Registry, default_registry
from ._stdout import stand_in_for_closed_stdout, unwritable_output

RAISE_ENV = "EDGEPORT_RAISE_ERRORS"


NEEDS_TORCH_HINT = ("export, check, llm export and --reference runs need a machine with torch: "
                    "pip install torch==2.13.0 'edgeport[cpu]'")

# Commands that import torch: name -> (their module, the short help ``--help`` lists).
# tests/test_run_side.py checks each short help is the command's own.
COMPILE_SIDE: dict[str, tuple[str, str]] = {
    "check": (".check", "Check every delegated partition of SPEC (a model, exported here with its torch references) "
                        "or PROGRAM (saved with --keep-reference) against torch, on the same inputs."),
    "conformance": (".conformance", "Run edgeport's conformance cases on backend NAME: per case and dtype, delegated "
                                    "or declined (why), and the error against eager. Exits 1 if any case failed."),
    "export": (".export", "Export SPEC (path/to/file.py:factory or package.module:factory) to a program."),
    "llm": (".llm", "LLMs: export a GGUF file or Hugging Face directory, then generate or chat."),
}


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMPILE_SIDE))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMPILE_SIDE and name not in self.commands:
            _import_command(name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Like click's, with the short help of a command not imported yet taken from
        `COMPILE_SIDE` (importing it would import torch)."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        rows = []
        for name in names:
            command = self.commands.get(name) or click.Command(name, help=COMPILE_SIDE[name][1])
            if not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:  # the reader left (| head): click's main exits quietly, as CLI tools do
            raise
        except KeyboardInterrupt:
            _interrupted()
        except Exception as exc:
            if ctx.meta.get("debug") or os.environ.get(RAISE_ENV) == "1":
                raise
            raise _as_click_error(exc) from None


def _interrupted() -> NoReturn:
    """Ctrl-C: one line and 128 + SIGINT, as shells report an interrupted command (click: 1)."""
    click.echo("\ninterrupted", err=True)
    raise SystemExit(128 + signal.SIGINT) from None


def _as_click_error(exc: Exception) -> click.ClickException:
    if isinstance(exc, EdgeportError):
        message = str(exc)
        if exc.hint:
            message += f"\n  hint: {exc.hint}"
        return click.ClickException(message)
    unwritable = unwritable_output(exc)
    if unwritable is not None:
        return unwritable
    if isinstance(exc, ImportError) and exc.name == "torch":  # a compile-side name, or a torch reference
        return click.ClickException("this needs PyTorch, which is not installed here (this environment runs "
                                    f"programs only)\n  hint: {NEEDS_TORCH_HINT}")
    return click.ClickException(
        f"internal error: {type(exc).__name__}: {exc}\n  hint: rerun with --debug for the traceback, "
        "and please report it"
    )


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors, and the toolchains' own output.")
@click.version_option(package_name="edgeport")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Put a PyTorch model on edge hardware: export once, run each piece on the
    backend that fits."""
    ctx.meta["debug"] = debug
    if debug:
        os.environ[TOOLCHAIN_LOG_ENV] = "1"


def current_registry() -> Registry:
    """The registry of this invocation: click's context object if it is one, else the
    process-wide registry of installed plugins."""
    return click.get_current_context().find_object(Registry) or default_registry()


def main() -> None:
    stand_in_for_closed_stdout()
    try:
        default_registry().add_commands(cli)  # loads every plugin: one slow to load is named (plugins.py)
    except KeyboardInterrupt:  # the user stopped a plugin that hangs
        _interrupted()
    try:
        cli(prog_name="edgeport")
    except OSError as exc:  # writing --help or --version, before a command runs (it has its own except)
        unwritable = unwritable_output(exc)
        if unwritable is None:
            raise
        unwritable.show()
        raise SystemExit(unwritable.exit_code) from None


def _import_command(name: str) -> None:
    """Import a compile-side command's module (it adds itself to `cli`); without torch,
    an error that says the command needs it."""
    try:
        importlib.import_module(COMPILE_SIDE[name][0], __name__)
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise click.ClickException(f"edgeport {name} needs PyTorch, which is not installed here "
                                   f"(this environment runs programs only)\n  hint: {NEEDS_TORCH_HINT}") from None


# Each command group lives in its own module and adds itself to `cli` on import; the
# compile side's modules (`COMPILE_SIDE`) are imported when their command is invoked.
from . import backends, cache, explain, run  # noqa: E402,F401
