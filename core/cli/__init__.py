"""The ``edgeport`` command: a thin layer that parses, calls the library, and formats.

Expected failures (`EdgeportError`) print as one line plus a hint. ``--debug`` or
``EDGEPORT_RAISE_ERRORS=1`` shows the traceback instead.
"""

from __future__ import annotations

import os

import click

from ..errors import EdgeportError

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
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="edgeport")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Put a PyTorch model on edge hardware: export once, run each piece on the
    backend that fits."""
    ctx.meta["debug"] = debug


def main() -> None:
    from ..plugins import default_registry

    default_registry().add_commands(cli)
    cli(prog_name="edgeport")


# Each command group lives in its own module and adds itself to `cli` on import.
from . import backends, check, explain, export, llm, run  # noqa: E402,F401
