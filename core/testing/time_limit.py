"""A kit case under a time limit: a plugin whose compile(), load() or run() hangs fails
that case, naming the step, and the run goes on.

Python cannot kill a thread, and a call blocked in native code (a deadlock in a vendor
library) sees no signal until it returns, so the kit cannot interrupt the call itself.
What it can do is stop waiting for it: each case runs in a thread of its own
(`run_within`), and a case not done within the limit is failed with the step it was in
(`step`, set by the kit; a backend method found on the thread's stack names it more
exactly) and the line it was at. Then the kit tries to stop the hung work:

- in the process without torch (`without_torch.py`, where a program of the backend's
  steps only is loaded and run): that process is ours, so it is killed with everything
  it started, and the next case that needs one starts a new one. The backend goes on.
- in this process: the thread is asked to stop by an exception raised in it
  (`CaseTimedOut`), which it sees at its next Python instruction, wherever that is (a
  plugin's loop, torch's export, a module being imported: Python imports it afresh next
  time): it unwinds the ``with`` blocks and ``finally`` clauses, and the backend goes on.
  A thread blocked in native code, sleeping or waiting on a lock does not see it. It is
  left behind, blocked, for the rest of the process (a daemon thread: the process still
  exits), still holding whatever the plugin held. Its backend's later cases are then
  failed at once without running (`left_behind`): they would most likely block on the
  same lock, each costing the whole limit.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import math
import os
import sys
import sysconfig
import threading
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from ..errors import InputError

T = TypeVar("T")

# The slowest case measured of a whole kit run (pytest --edgeport-backend NAME
# --durations, on a 2-core x86-64 shared with other jobs): qualcomm's int8_inverted_residual,
# 4.1 s in QNN's HTP simulator; cpu's slowest 1.0 s (conv2d), mediatek's 0.8 s (conv2d),
# the template plugin numpy-npu's 1.4 s (attention). With the machine loaded 3-4 times
# over (load average 7 on its 2 cores), qualcomm's slowest took 12.6 s (upsample_nearest).
# 120 s is ~30 times the first, ~10 times the loaded one: room for a slower machine or a
# real vendor compiler, and still a bounded wait for a hang.
CASE_TIME_LIMIT = 120.0

# How long a thread asked to stop (or whose process without torch was killed) gets to
# end: a Python loop ends within a switch interval (5 ms); a killed process's pipe closes
# at once.
STOP_GRACE = 1.0

# The backend methods a hang is named after when one is on the hung thread's stack.
BACKEND_METHODS = ("availability", "tolerance", "support", "prepare", "compile", "load")


class CaseTimedOut(BaseException):
    """Raised in a case's thread to stop it once its time is up. A BaseException, so a
    plugin's (or lowering's) ``except Exception`` does not swallow it."""


def checked_time_limit(seconds: Any, flag: str = "--timeout") -> float:
    """``seconds`` as a float, or `InputError` (whose hint names ``flag``) when it is not a
    finite number above 0."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"the time limit of a case must be a number of seconds above 0, not {seconds!r}",
                         hint=f"e.g. {flag} {CASE_TIME_LIMIT:g} (the default)")
    return value


# -- what each case's thread is doing -----------------------------------------------------

_steps: dict[int, str] = {}  # thread ident -> the step it is in ("run()", "load() without torch")
_stoppers: dict[int, Callable[[], None]] = {}  # thread ident -> how to stop the work it waits for


@contextlib.contextmanager
def step(name: str, stop: Callable[[], None] | None = None) -> Iterator[None]:
    """The calling thread is in step ``name`` ("load()", "run()") until the block ends;
    ``stop`` (e.g. killing the process it waits on) ends the step's wait if it hangs.
    Outside a case under a limit it costs a dict write."""
    ident = threading.get_ident()
    outer, outer_stop = _steps.get(ident), _stoppers.get(ident)
    _steps[ident] = name
    if stop is not None:
        _stoppers[ident] = stop
    try:
        yield
    finally:
        _restore(_steps, ident, outer)
        _restore(_stoppers, ident, outer_stop)


def rename_step(name: str) -> None:
    """Within a `step` block, the calling thread is now in step ``name`` (the process
    without torch says when it moves from load() to run())."""
    _steps[threading.get_ident()] = name


def _restore(table: dict[int, Any], ident: int, value: Any) -> None:
    if value is None:
        table.pop(ident, None)
    else:
        table[ident] = value


# -- running a case within the limit ------------------------------------------------------


@dataclass(frozen=True)
class Hang:
    """A case that did not finish within its limit: the step it was in, where (the
    innermost line outside the standard library and edgeport's core, or ""), and
    whether its thread is left behind (could not be stopped)."""

    step: str
    where: str
    left_behind: bool

    def message(self, backend: str, seconds: float, flag: str) -> str:
        """The case's verdict line."""
        at = f" (at {self.where})" if self.where else ""
        said = (f"{self.step} hung: {backend} did not finish it within the {seconds:g} s time limit{at}; if it is "
                f"only slow, raise the limit with {flag} SECONDS")
        if self.left_behind:
            said += (f"; the call cannot be stopped (Python cannot kill a thread; it stays blocked, holding what "
                     f"it held), so {backend}'s remaining cases are not run")
        return said


_left_behind: dict[int, tuple[object, str]] = {}  # id(backend) -> (backend, what hung): for the process's life


def left_behind(backend: object) -> str:
    """What of ``backend``'s is left hung in this process ("compile() hung on case relu and
    is still blocked"), or "": its later cases are not run."""
    return _left_behind.get(id(backend), (None, ""))[1]


def run_within(work: Callable[[], T], seconds: float, backend: object, label: str) -> T | Hang:
    """``work()``'s value (or its exception, raised here), or a `Hang` when it has not
    returned after ``seconds``, the work then stopped where it can be (module docstring);
    ``label`` says what the work is ("case relu")."""
    context = contextvars.copy_context()  # numpy's errstate and the like, as the caller has them
    done: dict[str, Any] = {}

    def target() -> None:
        try:
            done["value"] = context.run(work)
        except CaseTimedOut:  # asked to stop: the caller has already said why
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
            done["error"] = exc

    thread = threading.Thread(target=target, name=f"edgeport-kit: {label}", daemon=True)
    thread.start()
    thread.join(seconds)
    if not thread.is_alive():
        if "error" in done:
            raise done["error"]
        return done["value"]
    ident = thread.ident
    frame = sys._current_frames().get(ident)
    hang = Hang(_named_step(frame, backend, _steps.get(ident, "the case")), _innermost_line(frame), False)
    stop = _stoppers.get(ident)
    if stop is not None:
        stop()
    else:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(CaseTimedOut))
    thread.join(STOP_GRACE)
    if not thread.is_alive():
        return hang
    hang = Hang(hang.step, hang.where, left_behind=True)
    _left_behind[id(backend)] = (backend, f"{hang.step} hung on {label} and is still blocked")
    return hang


def _named_step(frame: types.FrameType | None, backend: object, kit_step: str) -> str:
    """The innermost method of ``backend``'s on the stack ("compile()"), else the kit's step."""
    while frame is not None:
        if frame.f_code.co_name in BACKEND_METHODS and frame.f_locals.get("self") is backend:
            return f"{frame.f_code.co_name}()"
        frame = frame.f_back
    return kit_step


_PATHS = sysconfig.get_paths()
_STDLIB = os.path.join(_PATHS["stdlib"], "")
_SITE = tuple({os.path.join(_PATHS["purelib"], ""), os.path.join(_PATHS["platlib"], "")})  # may lie within _STDLIB


def _innermost_line(frame: types.FrameType | None) -> str:
    """Where the hung thread is: its innermost frame outside the standard library and
    edgeport's core (the plugin's line, or its vendor library's), "my_npu.py:31 in run";
    "" when it is in neither (waiting for the process without torch, which says no line)."""
    while frame is not None:
        name = frame.f_code.co_filename
        standard = name.startswith("<") or (name.startswith(_STDLIB) and not name.startswith(_SITE))
        if not standard and not _core(frame):
            return f"{os.path.basename(name)}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return ""


def _core(frame: types.FrameType) -> bool:
    """Whether ``frame`` runs edgeport's own code (its built-in backends are plugins)."""
    module = frame.f_globals.get("__name__", "")
    return (module == "edgeport" or module.startswith("edgeport.")) and not module.startswith("edgeport.backends")
