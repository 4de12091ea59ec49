"""The hooks a plugin may implement. This file is the plugin contract.

Hook names start with ``edgeport_``. Arguments may be added in later versions: edgeport
calls every hook through pluggy, which passes an implementation only the arguments it
declares, so an older plugin keeps working. None is ever renamed or removed. A plugin
whose hook declares an argument the spec lacks, or implements a hook that does not
exist here, is listed as broken with pluggy's message.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("edgeport")
hookimpl = pluggy.HookimplMarker("edgeport")


@hookspec
def edgeport_register_backends(register: Callable[..., None]) -> None:
    """Register this plugin's backends by calling ``register`` once per backend.

    :param register: ``register(backend, aliases=())``. ``backend`` is an instance of
        a `edgeport.Backend` subclass; ``aliases`` are extra names that select it
        (e.g. ``("npu",)``; one string is one alias). ``register`` checks the backend
        against the contract (its name and aliases are identifiers, not ``portable``,
        it defines ``support``, ``compile`` and ``load``, its options are a dataclass)
        and that no other plugin took the name. It never
        raises: a refused backend makes this plugin show as broken in
        ``edgeport backends``, with the reason and the fix, and the others still work.

    Called once, the first time edgeport needs the list of backends, in no particular
    order relative to other plugins. Return nothing. Keep it cheap: construct the
    backend, do not import its toolchain here (do that inside ``compile``/``load``)
    so that a missing toolchain disables only this backend.
    """


@hookspec
def edgeport_register_commands(cli: Any) -> None:
    """Add commands to the ``edgeport`` CLI (e.g. ``edgeport hub ...`` for a device farm).

    :param cli: the top-level ``click.Group``; call ``cli.add_command(...)`` or decorate
        with ``@cli.group()``. Raise `edgeport.EdgeportError` from a command for a
        failure the user can fix: the CLI prints it as one line plus its hint.

    Called once when the ``edgeport`` command starts, after backends are registered.
    A plugin that raises here is recorded as broken; the other commands still work.
    """
