"""A model's chat template, compiled and rendered as transformers does it, within bounds.

The template is jinja2 source that travels inside the program file, so it is someone
else's code. jinja2's sandbox already keeps it from Python's internals and caps one
``range`` at 100,000 items; it does not cap the work or the text. Two nested
``range(100000)`` loops rendered for hours, and ``"x" * 10**10`` asked for 10 GB. Here a
render stops, as one error, when it runs longer than `RENDER_SECONDS` (a real template
renders a conversation in well under a millisecond: SmolLM2's took 0.07 ms), writes more than
`MAX_TEXT` characters on top of the conversation's own, or repeats a text or list past
that size. The clock is a trace function on the rendering thread: any thread can render,
no signal handler is touched, and only the render pays for it (SmolLM2's, 0.07 -> 0.16 ms).
A single C call (a huge ``center`` filter) is not interrupted; the size caps keep those
small.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import Any, Callable

from ..errors import a_type

RENDER_SECONDS = 2.0
MAX_TEXT = 1 << 20  # characters a template may add to the messages' own text


class Refused(Exception):
    """Raised by a template's ``raise_exception``: the conversation, not the template, is at fault."""


class TemplateTooCostly(Exception):
    """The template went past `RENDER_SECONDS` or `MAX_TEXT`."""


def compile_template(source: str) -> Any:
    """The chat template compiled as transformers compiles it (sandboxed, trimmed blocks,
    loop controls, ``raise_exception`` and ``strftime_now``), with the size cap on ``*``."""
    from jinja2.ext import loopcontrols

    def raise_exception(message: str) -> None:
        raise Refused(message)

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(fmt)

    env = _environment_class()(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env.from_string(source)


def render_within_bounds(template: Any, text_given: int, **context: Any) -> str:
    """``template`` rendered with ``context``, or `TemplateTooCostly`. ``text_given`` is the
    length of the text the caller passes in (the messages), which the output may hold
    on top of `MAX_TEXT`."""
    limit = text_given + MAX_TEXT
    pieces, length = [], 0
    with _deadline(RENDER_SECONDS):
        for piece in template.generate(**context):
            length += len(piece)
            if length > limit:
                raise TemplateTooCostly(f"it wrote more than {limit:,} characters")
            pieces.append(piece)
    return "".join(pieces)


def _environment_class() -> type:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            for sized, times in ((left, right), (right, left)):
                if isinstance(sized, (str, list, tuple)) and isinstance(times, int) and len(sized) * times > MAX_TEXT:
                    raise TemplateTooCostly(f"it repeats {a_type(sized)} of {len(sized):,} {times:,} times")
            return super().call_binop(context, operator, left, right)

    return BoundedEnvironment


class _deadline:
    """Raise `TemplateTooCostly` in this thread's Python code once ``seconds`` have passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        self.previous = sys.gettrace()
        end = time.monotonic() + self.seconds

        def trace(frame: Any, event: str, arg: Any) -> Callable | None:
            if time.monotonic() > end:
                raise TemplateTooCostly(f"it ran longer than {self.seconds:g} s")
            return trace

        sys.settrace(trace)

    def __exit__(self, *exc: object) -> None:
        sys.settrace(self.previous)
