"""The exceptions edgeport raises.

Every failure a user can cause or fix is an `EdgeportError`; the CLI prints those as
one line plus a hint, never as a traceback. Plugins raise `BackendError`.
"""

from __future__ import annotations


class EdgeportError(Exception):
    """Base of every expected edgeport failure; `hint` says what to do next."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class BackendError(EdgeportError):
    """A backend could not do what was asked (raised by plugins, or about them)."""


class UnknownBackendError(EdgeportError):
    """A backend name that no installed plugin registered; ``disabled`` when the user
    blocked it by name (EDGEPORT_DISABLE_PLUGINS): then it may well be installed;
    ``broken`` when it is installed but its plugin failed to load or register it (the
    hint says why)."""

    def __init__(self, message: str, hint: str = "", disabled: bool = False, broken: bool = False) -> None:
        super().__init__(message, hint)
        self.disabled = disabled
        self.broken = broken


class PluginError(EdgeportError):
    """A plugin broke the registration contract (e.g. two backends share a name)."""


class DeclineNodes(BackendError):
    """Raised by `Backend.compile` when the toolchain refuses some nodes it was given.

    `reasons` maps node names (as they appear in the partition's graph, which keeps the
    names of the exported graph) to the toolchain's reason. Lowering records each as a
    "no" from this backend and partitions again, so the rest stays on the backend.
    """

    def __init__(self, reasons: dict[str, str]) -> None:
        names = ", ".join(sorted(reasons))
        super().__init__(f"the toolchain refused {len(reasons)} node(s): {names}")
        self.reasons = dict(reasons)


class LoweringError(EdgeportError):
    """A partition failed to compile and strict mode forbids falling back."""


class ProgramError(EdgeportError):
    """A .edgeport file is unreadable, corrupt, or from an unsupported format version."""


class InputError(EdgeportError):
    """Inputs given to a program do not match its input spec."""


class ExecutionError(EdgeportError):
    """A program cannot run here (e.g. a backend is missing or cannot run on this machine)."""


def described(exc: BaseException) -> str:
    """``exc`` as "Type: message" on one line: toolchains' messages carry newlines
    (LiteRT's "...subgraph.cc:1965\nrequired_bytes <= bytes was not true."), and an
    error is one line plus a hint."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def a_type(value: object) -> str:
    """"an int", "a list", "an ndarray": ``value``'s type name with its article, for
    messages that say what was given instead ("returned a int" read as a typo)."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
