"""When the command's output cannot be written: a full disk, or a standard output that is
closed (``edgeport backends >&-``) or not open for writing (``1</dev/null``).

Such a command fails with one line on stderr, as Unix tools do (``ls >&-``: "write
error: Bad file descriptor"). A reader that left the pipe (``| head``) is not one of
these: click's main exits quietly on EPIPE.
"""

from __future__ import annotations

import errno
import io
import sys

import click

CLOSED = "standard output is closed"


class ClosedStdout(io.TextIOBase):
    """Stands in for ``sys.stdout`` when the process started with it closed. Python then
    sets ``sys.stdout`` to None, and click and rich drop whatever is written to None:
    the command printed nothing and exited 0. This raises EBADF at the first write,
    as writing to the closed descriptor would."""

    encoding = "utf-8"  # click and rich ask; an ASCII guess would make click wrap it
    errors = "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # click probes with b"" to tell a binary stream
            raise TypeError("write() takes text")
        if text:
            raise OSError(errno.EBADF, CLOSED)
        return 0


def stand_in_for_closed_stdout() -> None:
    """Make a closed standard output fail the first write instead of swallowing it."""
    if sys.stdout is None:
        sys.stdout = ClosedStdout()


def unwritable_output(exc: BaseException) -> click.ClickException | None:
    """The one-line error for `exc` when it is a failure to write the output, else None."""
    if not isinstance(exc, OSError):
        return None
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # writing output: not a bug of ours
        return click.ClickException(f"cannot write the output: {exc.strerror}\n  hint: free some space, or write "
                                    "the output somewhere else")
    if exc.errno == errno.EBADF:
        # closed (>&-, the stand-in above), or open for reading only (1</dev/null)
        why = CLOSED if exc.strerror == CLOSED else "standard output is not open for writing"
        return click.ClickException(f"cannot write the output: {why} (send it to /dev/null to discard it)")
    return None
