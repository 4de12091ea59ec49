"""Finding backends: a pluggy manager fed by the ``edgeport`` entry-point group.

Built-in backends are entry points of our own distribution, exactly like a vendor's.
A plugin that fails to import or to register is recorded, with its error, and never
stops the others from loading.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .backend import Backend
from .errors import PluginError, UnknownBackendError

ENTRY_POINT_GROUP = "edgeport"
DISABLE_ENV = "EDGEPORT_DISABLE_PLUGINS"


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend and where it came from."""

    backend: Backend
    plugin: str
    distribution: str
    version: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that failed to import or register; shown by ``edgeport backends``."""

    plugin: str
    distribution: str
    error: str
    details: str = field(default="", repr=False)


class Registry:
    """The backends known to one edgeport session.

    ``Registry()`` loads installed entry points on first use; tests build a
    ``Registry(entry_points=False)`` and `add_plugin` their own.
    """

    def __init__(self, entry_points: bool = True, disabled: Iterable[str] | None = None) -> None:
        self._pm = pluggy.PluginManager("edgeport")
        self._pm.add_hookspecs(hookspecs)
        self._use_entry_points = entry_points
        if disabled is None:
            disabled = [n for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]
        self._disabled = {n.strip() for n in disabled}
        self._sources: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
        self._entries: dict[str, BackendEntry] | None = None
        self._aliases: dict[str, str] = {}
        self._broken: list[BrokenPlugin] = []

    # -- adding plugins -------------------------------------------------------------

    def add_plugin(self, plugin: Any, name: str | None = None, distribution: str = "(registered in code)") -> None:
        """Register a module or object holding ``@edgeport.hookimpl`` functions."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self._disabled:
            return
        self._pm.register(plugin, name=name)
        self._sources[name] = (distribution, "")
        self._entries = None  # collect again on next use

    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self._disabled or self._pm.has_plugin(ep.name):
                continue
            dist = ep.dist.name if ep.dist else "(unknown)"
            version = ep.dist.version if ep.dist else ""
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                self._record_broken(ep.name, dist, exc)
                continue
            self._pm.register(plugin, name=ep.name)
            self._sources[ep.name] = (dist, version)

    def _record_broken(self, plugin: str, dist: str, exc: BaseException) -> None:
        self._broken.append(
            BrokenPlugin(plugin, dist, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        )

    # -- collecting backends --------------------------------------------------------

    def _collect(self) -> dict[str, BackendEntry]:
        if self._entries is not None:
            return self._entries
        if self._use_entry_points:
            self._use_entry_points = False  # entry points load once
            self._load_entry_points()
        entries: dict[str, BackendEntry] = {}
        alias_map: dict[str, str] = {}
        for impl in self._pm.hook.edgeport_register_backends.get_hookimpls():
            dist, version = self._sources.get(impl.plugin_name, ("(registered in code)", ""))

            def register(backend: Backend, aliases: Iterable[str] = ()) -> None:
                names = tuple(aliases)
                _check_backend(backend, impl.plugin_name)
                for taken in (backend.name, *names):
                    if taken in entries or taken in alias_map:
                        owner = entries.get(taken) or entries[alias_map[taken]]
                        raise PluginError(
                            f"backend name {taken!r} is registered twice: by {owner.distribution} "
                            f"(plugin {owner.plugin}) and by {dist} (plugin {impl.plugin_name})",
                            hint=f"uninstall one, or block a plugin with {DISABLE_ENV}={impl.plugin_name}",
                        )
                entries[backend.name] = BackendEntry(backend, impl.plugin_name, dist, version or backend.version, names)
                alias_map.update({a: backend.name for a in names})

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:
                self._record_broken(impl.plugin_name, dist, exc)
        self._entries, self._aliases = entries, alias_map
        return entries

    def add_commands(self, cli: Any) -> None:
        """Let every plugin add its CLI commands; a plugin that fails is recorded."""
        self._collect()
        for impl in self._pm.hook.edgeport_register_commands.get_hookimpls():
            try:
                impl.function(cli=cli)
            except Exception as exc:
                dist, _ = self._sources.get(impl.plugin_name, ("(registered in code)", ""))
                self._record_broken(impl.plugin_name, dist, exc)

    def entries(self) -> dict[str, BackendEntry]:
        """Every working backend by name, in registration order."""
        return dict(self._collect())

    def broken(self) -> list[BrokenPlugin]:
        self._collect()
        return list(self._broken)

    def entry(self, name: str) -> BackendEntry:
        entries = self._collect()
        name = self._aliases.get(name, name)
        if name in entries:
            return entries[name]
        installed = ", ".join(entries) or "none"
        hint = "run `edgeport backends` to see installed backends and broken plugins"
        broken = [b for b in self._broken if b.plugin == name]
        if broken:
            hint = f"plugin {name!r} failed to load: {broken[0].error}"
        raise UnknownBackendError(f"unknown backend {name!r}; installed: {installed}", hint=hint)

    def get(self, name: str) -> Backend:
        return self.entry(name).backend


def _check_backend(backend: Any, plugin: str) -> None:
    """Catch contract mistakes at registration, not at first use."""
    if not isinstance(backend, Backend):
        raise PluginError(
            f"plugin {plugin} registered {backend!r}, which is not an edgeport.Backend",
            hint="subclass edgeport.Backend and register an instance",
        )
    name = getattr(backend, "name", None)
    if not isinstance(name, str) or not name or name == "portable":
        raise PluginError(f"plugin {plugin} registered a backend with invalid name {name!r}")


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry of installed plugins, created on first use."""
    global _default
    if _default is None:
        _default = Registry()
    return _default
