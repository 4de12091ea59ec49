"""Shared output helpers: one rich console, JSON printing, where files may be written,
progress for long work."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
from typing import Any, Callable, Iterator, Sequence

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..errors import EdgeportError
from ..native_output import loggers_at

# Off a terminal (pipes, CI logs), rich would wrap tables at 80 columns; reasons are long.
# A closed stdout (``>&-``) leaves sys.stdout None: no terminal either.
console = Console(highlight=False, width=None if sys.stdout is not None and sys.stdout.isatty() else 200)

_COUNT = re.compile(r"(\d+)/(\d+)")  # "compiling partition 3/12 ..." counts; other messages only relabel


def print_json(data: Any) -> None:
    """Print strict JSON: a NaN or infinite float (a model can output them) becomes the
    string "NaN", "Infinity" or "-Infinity", since json.dumps would write bare NaN tokens
    that strict parsers (jq, JavaScript, Go) reject."""
    click.echo(json.dumps(_finite(data), indent=2, default=str, allow_nan=False))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


class FiniteRange(click.FloatRange):
    """click's FloatRange, which lets nan through (every comparison with it is false)."""

    name = "number"  # click's "float range" read "'abc' is not a valid float range."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number

    def _describe_range(self) -> str:
        """Unbounded, click's own description read "x<=None" in --help."""
        return super()._describe_range() if self.min is not None or self.max is not None else "finite"


def check_writable(*paths: str | None, reads: Sequence[str | None] = ()) -> None:
    """Refuse, before any work, a file that cannot be written where it is asked for (the
    work would be lost at the end), two outputs named alike (one would overwrite the
    other), and an output that is a file the command `reads` (the program run, the
    inputs, the GGUF exported: written over, it would be lost). ``None`` is a file not
    asked for."""
    read = {os.path.realpath(r): r for r in reads if r is not None}
    seen: set[str] = set()
    for path in paths:
        if path is None:
            continue
        if not path.strip():
            raise EdgeportError("an output file name is empty", hint="name the file to write")
        folder = os.path.dirname(path) or "."
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise EdgeportError(f"cannot write {path}: {folder} is a file, not a folder", hint="write somewhere else")
        if not os.path.isdir(folder):
            raise EdgeportError(f"cannot write {path}: folder {folder} does not exist",
                                hint=f"create it first (mkdir -p {folder}), or write somewhere else")
        if not os.access(folder, os.W_OK):
            raise EdgeportError(f"cannot write {path}: folder {folder} is not writable", hint="write somewhere else")
        if path.endswith(".py") and os.path.isfile(path):  # -o model.py: the model's own source, likely
            raise EdgeportError(f"cannot write {path}: it would overwrite a Python source file",
                                hint="name the output after what it holds: model.edgeport, placement.html, ...")
        real = os.path.realpath(path)
        if real in read:
            raise EdgeportError(f"cannot write {path}: it is {read[real]}, which this command reads",
                                hint="write the output to another file")
        if real in seen:
            raise EdgeportError(f"two outputs are both {path}: the second would overwrite the first",
                                hint="give each output its own file")
        seen.add(real)


def said_below(logger: str) -> contextlib.AbstractContextManager[None]:
    """Hold back `logger`'s warnings while a command runs whose own summary says the
    same (the quantization summary's "nothing is quantized"): not twice on one screen."""
    return loggers_at(logging.ERROR, [logging.getLogger(logger)])


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[Callable[[str], None] | None]:
    """A progress bar for long work, on stderr: shown on a terminal, silent in --json
    mode or in a pipe. A message that counts ("partition 3/12") moves the bar to that
    item; any other message relabels it and the bar just pulses."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("working…", total=None)

        def show(message: str) -> None:
            count = _COUNT.search(message)
            if count:  # item n of N is under way: n - 1 are done
                done, total = int(count.group(1)), int(count.group(2))
                bar.update(task, description=message, completed=done - 1, total=total, refresh=True)
            else:
                bar.update(task, description=message, completed=0, total=None, refresh=True)

        yield show
