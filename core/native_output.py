"""Toolchain chatter: lines native libraries print straight to the process's stdout/stderr.

LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." to file
descriptor 2 when its first interpreter allocates, and QNN's HTP library prints a
"# LIBNATIVE: ..." banner to descriptor 1 when it loads. Neither can be switched off:
LiteRT 2.3 does not export its minimal logger's severity setting (no API, no
environment variable), and libQnnHtp prints one of its LIBNATIVE lines on every path.
Being native writes, ``sys.stdout``/``sys.stderr`` redirection does not see them.

So a backend wraps the native call that chatters in `filter_native_output`: for that
call, descriptors 1 and 2 point at a temporary file; afterwards every captured line goes
to stderr except the chatter the backend named (native stdout goes to stderr as well,
so data printed on stdout, e.g. ``edgeport run --json``, stays clean). With
``EDGEPORT_TOOLCHAIN_LOG=1`` (which ``edgeport --debug`` sets) nothing is dropped.

Destroying chatters too (LiteRT's "INFO: DestroyAccelerator" per accelerator of an
environment). An object still open when Python exits is destroyed while the
interpreter tears down, where no filter can run; `close_before_exit` closes it, under
the filter, before that.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import re
import sys
import tempfile
import threading
import weakref
from typing import Any, Iterator, Sequence

TOOLCHAIN_LOG_ENV = "EDGEPORT_TOOLCHAIN_LOG"

# The process has one descriptor 1 and one 2: one capture at a time. Re-entrant, so a
# capture inside another simply hands its lines to the outer one.
_CAPTURING = threading.RLock()


def toolchain_log_wanted() -> bool:
    """True when the user asked to see the toolchains' own output (``EDGEPORT_TOOLCHAIN_LOG=1``)."""
    return os.environ.get(TOOLCHAIN_LOG_ENV, "") not in ("", "0")


@contextlib.contextmanager
def loggers_at(level: int, loggers: Sequence[logging.Logger]) -> Iterator[None]:
    """The ``loggers`` at ``level`` during the block, then at their own levels again (a
    toolchain's Python loggers kept quiet as its native output is)."""
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, levels):
            logger.setLevel(old)


@contextlib.contextmanager
def filter_native_output(drop: Sequence[re.Pattern[str]], captured: list[str] | None = None) -> Iterator[None]:
    """Capture what native code writes to descriptors 1 and 2 during the block, then
    write it to stderr without the lines matching ``drop`` (all of it when
    `toolchain_log_wanted`). Other threads' writes in that window are delayed, not lost.
    ``captured`` receives every line, dropped ones too, when the block ends (even by an
    exception): a backend can put a toolchain's own error line in its error."""
    with _CAPTURING, tempfile.TemporaryFile() as capture:
        _flush_all()
        saved = os.dup(1), os.dup(2)
        try:
            os.dup2(capture.fileno(), 1)
            os.dup2(capture.fileno(), 2)
            yield
        finally:
            _flush_all()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            if captured is not None:
                captured.extend(text.splitlines())
            keep_all = toolchain_log_wanted()
            kept = [line for line in text.splitlines(keepends=True)
                    if keep_all or not any(pattern.search(line) for pattern in drop)]
            if kept:
                _write_stderr("".join(kept))


def _write_stderr(text: str) -> None:
    """``text`` to Python's stderr, or straight to descriptor 2 where that stream is
    closed (a test runner's capture, at exit)."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (ValueError, OSError, AttributeError):
        os.write(2, text.encode(errors="replace"))


def _flush_all() -> None:
    """Flush Python's and C's buffered streams, so buffered text lands where it was meant
    to (a stream already closed, as a test runner's may be at exit, has nothing to flush)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(ValueError, OSError, AttributeError):
            stream.flush()
    with contextlib.suppress(OSError, AttributeError, TypeError):  # no C library to ask (e.g. Windows)
        ctypes.CDLL(None).fflush(None)


# what close_before_exit keeps, in the order registered: closed last first
_OPEN: "weakref.WeakKeyDictionary[Any, tuple[re.Pattern[str], ...]]" = weakref.WeakKeyDictionary()


def close_before_exit(resource: Any, drop: Sequence[re.Pattern[str]]) -> None:
    """Call ``resource.close()`` when Python exits, if it is still alive then, with its
    output filtered as by `filter_native_output` (``drop``). Register a resource after
    what it uses (a model after its environment): the last registered closes first."""
    _OPEN[resource] = tuple(drop)


def close_quietly(resource: Any, drop: Sequence[re.Pattern[str]]) -> None:
    """``resource.close()`` under `filter_native_output`; unfiltered when the filter
    itself cannot run (the interpreter is tearing down)."""
    try:
        with filter_native_output(drop=drop):
            resource.close()
    except Exception:  # noqa: BLE001 - close at least once; a resource's close does nothing when closed
        resource.close()


@atexit.register
def _close_open() -> None:
    for resource, drop in reversed(list(_OPEN.items())):
        close_quietly(resource, drop)
