"""The ``edgeport`` command: a thin layer that parses, calls the library, and formats.

Expected failures (`EdgeportError`) print as one line plus a hint. ``--debug`` or
``EDGEPORT_RAISE_ERRORS=1`` shows the traceback instead; ``--debug`` also lets the
toolchains' own chatter through (see `native_output`).

Commands find backends in the registry given as click's context object
(``cli.main(obj=registry)``, ``CliRunner().invoke(cli, args, obj=registry)``), or in
the process-wide one: an application embedding the CLI, or a test, picks its own.
"""

from __future__ import annotations

import os

import click

from ..errors import EdgeportError
from ..native_output import TOOLCHAIN_LOG_ENV
from ..plugins import Registry, default_registry

RAISE_ENV = "EDGEPORT_RAISE_ERRORS"


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if ctx.meta.get("debug") or os.environ.get(RAISE_ENV) == "1":
                raise
            raise _as_click_error(exc) from None


def _as_click_error(exc: Exception) -> click.ClickException:
    if isinstance(exc, EdgeportError):
        message = str(exc)
        if exc.hint:
            message += f"\n  hint: {exc.hint}"
        return click.ClickException(message)
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
    default_registry().add_commands(cli)
    cli(prog_name="edgeport")


# Each command group lives in its own module and adds itself to `cli` on import.
from . import backends, check, conformance, explain, export, llm, run  # noqa: E402,F401
