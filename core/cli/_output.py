"""Shared output helpers: one rich console, JSON printing, progress for long work."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Callable, Iterator

import click
from rich.console import Console

# Off a terminal (pipes, CI logs), rich would wrap tables at 80 columns; reasons are long.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[Callable[[str], None] | None]:
    """A status line for long work: shown on a terminal, silent in --json mode or in a pipe."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    err = Console(stderr=True)
    with err.status("working…") as status:
        yield lambda message: status.update(message)
