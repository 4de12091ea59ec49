"""Finding backends: a pluggy manager fed by the ``edgeport`` entry-point group.

Built-in backends are entry points of our own distribution, exactly like a vendor's.
Nothing one plugin does can take another down: a plugin that fails to import, whose
hooks do not match the hookspecs, whose hook raises, or that registers a backend
breaking the contract (a missing method, a name another plugin took) is recorded as
broken, with its error and what to do, and every other backend keeps working.

Hooks are always called through pluggy's hook callers, one plugin at a time: pluggy
hands each implementation only the arguments it declares (so a hook may grow an
argument without breaking older plugins), and calling one plugin at a time isolates
a failing one and tells us which plugin registered what.

The registry loads once, under a lock: any number of threads may make the first call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import inspect
import logging
import os
import sys
import threading
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Collection, Iterable, Iterator

import pluggy

from . import hookspecs
from .arrays import torch_installed
from .backend import Availability, Backend, PartitionRules, validate_options
from .contract import checked_version
from .errors import BackendError, InputError, UnknownBackendError
from .quantize.scheme import SCHEMES

ENTRY_POINT_GROUP = "edgeport"
DISABLE_ENV = "EDGEPORT_DISABLE_PLUGINS"
OWN_DISTRIBUTION = "edgeport"  # its built-in backends keep their names if a plugin reuses one
IN_CODE = "(registered in code)"
REQUIRED_METHODS = ("support", "compile", "load")
RESERVED_NAMES = frozenset({"portable"})  # the fallback, never a backend


# A plugin's import or hook still running after this long is named on stderr, with how to
# block it. Loading every installed plugin, the built-in four included, takes 0.1 s here.
SLOW_PLUGIN_SECONDS = 15.0

log = logging.getLogger("edgeport.plugins")


@contextlib.contextmanager
def _named_if_slow(plugin: str, source: _Source, doing: str) -> Iterator[None]:
    """Within the block, a plugin ``doing`` something ("import", "edgeport_register_backends hook")
    that has not returned after `SLOW_PLUGIN_SECONDS` is named on stderr once, with how to
    block it. A vendor library waiting for a device or a licence server would otherwise
    hang every command, `edgeport backends` included, with nothing said. The plugin still
    runs on the calling thread: a thread cannot be stopped anyway, and off the main thread
    a library cannot install its signal handlers."""
    by = "" if source.distribution == IN_CODE else f" (from {source.distribution})"
    timer = threading.Timer(SLOW_PLUGIN_SECONDS, log.warning, [
        f"plugin {plugin!r}{by} has been in its {doing} for {SLOW_PLUGIN_SECONDS:g} s; if it hangs, "
        f"interrupt it (Ctrl-C) and block it with {DISABLE_ENV}={plugin}"])
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _plugin_failure(exc: BaseException) -> bool:
    """Whether what a plugin's import or hook raised leaves the others working: any error,
    a SystemExit (a library that exits when it finds no device) or another BaseException
    a plugin defines (one took every command down); not the user's KeyboardInterrupt."""
    return not isinstance(exc, (KeyboardInterrupt, GeneratorExit))


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend and where it came from."""

    backend: Backend
    plugin: str
    distribution: str
    version: str
    aliases: tuple[str, ...] = ()

    def toolchain(self) -> str:
        """The backend's `version` (its toolchain's), as text: one that raises, or is no
        string, is shown as what it is rather than break a listing of every backend."""
        try:
            version = self.backend.version
        except Exception as exc:  # noqa: BLE001 - the contract says never raise; say that it did
            return f"(version raised {type(exc).__name__}: {exc})"
        return version if isinstance(version, str) else repr(version)

    def availability(self) -> Availability:
        """The backend's availability; one that raises is reported, never propagated.
        Where torch is not installed nothing compiles (export needs torch), whatever
        the backend says: it can only run."""
        try:
            availability = self.backend.availability()
        except Exception as exc:
            return Availability(False, False, why=f"availability() raised {type(exc).__name__}: {exc}")
        if not isinstance(availability, Availability):
            return Availability(False, False, why=f"availability() returned {type(availability).__name__}, "
                                                  "not an edgeport.Availability")
        if availability.can_compile and not torch_installed():
            why = "; ".join(w for w in ("compile: needs torch, which is not installed", availability.why) if w)
            return dataclasses.replace(availability, can_compile=False, why=why)
        return availability


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that failed to import or register; shown by ``edgeport backends``."""

    plugin: str
    distribution: str
    error: str  # one line
    hint: str = ""  # what to do about it
    details: str = field(default="", repr=False)  # the traceback, for --debug
    backend: str = ""  # the backend name a refused registration asked for, when it had one


@dataclass(frozen=True)
class _Source:
    distribution: str
    version: str


@dataclass
class _Collected:
    """The outcome of one collection: working backends, and registrations refused."""

    entries: dict[str, BackendEntry] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> backend name
    broken: list[BrokenPlugin] = field(default_factory=list)


class Registry:
    """The backends known to one edgeport session.

    ``Registry()`` loads installed entry points on first use; tests build a
    ``Registry(entry_points=False)`` and `add_plugin` their own.
    """

    specs: Any = hookspecs  # the hookspecs this registry calls plugins with

    def __init__(self, entry_points: bool = True, disabled: Iterable[str] | None = None) -> None:
        self._pm = pluggy.PluginManager("edgeport")
        self._pm.add_hookspecs(self.specs)
        self._use_entry_points = entry_points
        if disabled is None:
            disabled = os.environ.get(DISABLE_ENV, "").split(",")
        self._disabled = {n.strip() for n in disabled if n.strip()}
        self._sources: dict[str, _Source] = {}  # plugin name -> where it came from, in registration order
        self._failed_loads: list[BrokenPlugin] = []  # plugins that never got registered
        self._collected: _Collected | None = None
        self._lock = threading.RLock()

    # -- adding plugins -------------------------------------------------------------

    def add_plugin(self, plugin: Any, name: str | None = None, distribution: str = IN_CODE) -> None:
        """Register a module or object holding ``@edgeport.hookimpl`` functions."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self._disabled:
            return
        with self._lock:
            self._register(plugin, name, _Source(distribution, ""))
            self._collected = None  # collect again on next use

    def _register(self, plugin: Any, name: str, source: _Source) -> None:
        try:
            self._pm.register(plugin, name=name)
        except Exception as exc:  # e.g. pluggy's PluginValidationError: a hook argument the spec lacks
            hint = (f"fix the hook's signature to match edgeport's hookspecs (edgeport/hookspecs.py), or block it "
                    f"with {DISABLE_ENV}={name}" if isinstance(exc, pluggy.PluginValidationError)
                    else f"block it with {DISABLE_ENV}={name}")
            self._failed_loads.append(_broken(name, source, exc, hint))
            return
        callers = self._pm.get_hookcallers(plugin) or ()
        marked = {c.name for c in callers}
        unmarked = [n for n in dir(plugin) if n.startswith("edgeport_") and n not in marked
                    and callable(getattr(plugin, n, None))]
        if unmarked:  # pluggy skips a function without the marker: the plugin would do nothing, silently
            self._pm.unregister(name=name)
            self._failed_loads.append(BrokenPlugin(
                name, source.distribution, f"{', '.join(unmarked)} is not marked @edgeport.hookimpl, so edgeport "
                "never calls it", hint="decorate each hook with @edgeport.hookimpl"))
            return
        unknown = [c.name for c in callers if not c.has_spec()]
        if unknown:
            self._pm.unregister(name=name)
            known = ", ".join(n for n in dir(self.specs) if n.startswith("edgeport_"))
            self._failed_loads.append(BrokenPlugin(
                name, source.distribution, f"{', '.join(unknown)} is not an edgeport hook",
                hint=f"edgeport's hooks are: {known}",
            ))
            return
        self._sources[name] = source

    def _load_entry_points(self) -> None:
        # edgeport's own entry points first: a plugin reusing a built-in name is the broken one
        found = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP),
                       key=lambda ep: (ep.dist is None or ep.dist.name != OWN_DISTRIBUTION))
        for ep in found:
            if ep.name in self._disabled or self._pm.has_plugin(ep.name):
                continue
            source = _Source(ep.dist.name, ep.dist.version) if ep.dist else _Source("(unknown)", "")
            try:
                with contextlib.redirect_stdout(sys.stderr), _named_if_slow(ep.name, source, "import"):
                    plugin = ep.load()  # (what it prints must not spoil --json)
            except BaseException as exc:  # a broken plugin must not take the others down
                if not _plugin_failure(exc):
                    raise
                self._failed_loads.append(_broken(ep.name, source, exc, _import_hint(ep.name, source, exc)))
                continue
            self._register(plugin, ep.name, source)

    # -- calling hooks --------------------------------------------------------------

    def _call_each(self, hook: str, arguments: Callable[[str], dict[str, Any]],
                   on_error: Callable[[str, BaseException], None],
                   after: Callable[[str], None] = lambda plugin: None) -> None:
        """Call ``hook`` of every plugin, one at a time and in registration order,
        through pluggy (which passes each implementation only the arguments it takes);
        ``after`` each that returned."""
        for name in list(self._sources):
            plugin = self._pm.get_plugin(name)
            others = [p for p in self._pm.get_plugins() if p is not plugin]
            caller = self._pm.subset_hook_caller(hook, remove_plugins=others)
            if not caller.get_hookimpls():
                continue
            try:
                with contextlib.redirect_stdout(sys.stderr), _named_if_slow(name, self._sources[name], f"{hook} hook"):
                    caller(**arguments(name))
            except BaseException as exc:
                if not _plugin_failure(exc):
                    raise
                on_error(name, exc)
                continue
            after(name)

    def _register_arguments(self, register: Callable[..., None]) -> dict[str, Any]:
        """What ``edgeport_register_backends`` is called with (grows with its hookspec)."""
        return {"register": register}

    def _collect(self) -> _Collected:
        with self._lock:
            if self._collected is not None:
                return self._collected
            if self._use_entry_points:
                self._load_entry_points()
                self._use_entry_points = False  # entry points load once
            collected = _Collected()

            def arguments(plugin: str) -> dict[str, Any]:
                return self._register_arguments(_Registrar(collected, plugin, self._sources[plugin]))

            def failed(plugin: str, exc: BaseException) -> None:
                collected.broken.append(_broken(plugin, self._sources[plugin], exc,
                                                f"its edgeport_register_backends hook raised; fix it, or block it "
                                                f"with {DISABLE_ENV}={plugin}"))

            self._call_each("edgeport_register_backends", arguments, failed)
            self._collected = collected
            return collected

    def add_commands(self, cli: Any) -> None:
        """Let every plugin add its CLI commands; a plugin that fails is recorded."""
        collected = self._collect()

        def failed(plugin: str, exc: BaseException) -> None:
            collected.broken.append(_broken(plugin, self._sources[plugin], exc,
                                            "its edgeport_register_commands hook raised; the other commands work"))

        built_in = dict(cli.commands)

        def keep_built_in(plugin: str) -> None:
            """A plugin's command named like a built-in one would replace it: put it back."""
            replaced = sorted(n for n, command in built_in.items() if cli.commands.get(n) is not command)
            if replaced:
                cli.commands.update(built_in)
                collected.broken.append(BrokenPlugin(
                    plugin, self._sources[plugin].distribution,
                    f"its command(s) {', '.join(replaced)} would replace edgeport's own; they were not added",
                    "give the plugin's commands names of their own (e.g. a group: edgeport my_npu ...)"))

        with self._lock:
            self._call_each("edgeport_register_commands", lambda plugin: {"cli": cli}, failed, keep_built_in)

    # -- looking backends up ----------------------------------------------------------

    def entries(self) -> dict[str, BackendEntry]:
        """Every working backend by name, in registration order."""
        return dict(self._collect().entries)

    def broken(self) -> list[BrokenPlugin]:
        """Every plugin, or registration, that failed, with its error and a hint."""
        collected = self._collect()
        return self._failed_loads + collected.broken

    def entry(self, name: str) -> BackendEntry:
        collected = self._collect()
        name = collected.aliases.get(name, name)
        if name in collected.entries:
            return collected.entries[name]
        if name in self._disabled:
            raise UnknownBackendError(f"backend {name!r} is disabled by {DISABLE_ENV}",
                                      hint=f"take {name!r} out of {DISABLE_ENV} to use it", disabled=True)
        installed = ", ".join(collected.entries) or "none"
        hint = "run `edgeport backends` to see installed backends and broken plugins"
        close = difflib.get_close_matches(str(name), [*collected.entries, *collected.aliases], n=1)
        if close:  # a typo ("qualcom"): the name it is near comes first
            hint = f"did you mean {collected.aliases.get(close[0], close[0])!r}? " + hint
        broken = [b for b in self.broken() if name in (b.plugin, b.backend)]
        if broken:
            failed = broken[0]
            hint = (f"plugin {name!r} failed to load: {failed.error}" if failed.plugin == name
                    else f"backend {name!r} (plugin {failed.plugin!r}) was refused at registration: {failed.error}")
        raise UnknownBackendError(f"unknown backend {name!r}; installed: {installed}", hint=hint, broken=bool(broken))

    def get(self, name: str) -> Backend:
        return self.entry(name).backend


class _Registrar:
    """The ``register`` callback one plugin receives: checks each backend against the
    contract, and records a refused one as broken instead of raising into the plugin."""

    def __init__(self, collected: _Collected, plugin: str, source: _Source) -> None:
        self._collected = collected
        self._plugin = plugin
        self._source = source

    def __call__(self, backend: Backend, aliases: Iterable[str] = ()) -> None:
        names = (aliases,) if isinstance(aliases, str) else tuple(aliases)  # "npu" is one alias, not three
        problem = _contract_problem(backend) or _alias_problem(names) or self._taken(backend.name, names)
        if not problem:
            try:
                version = _entry_version(backend, self._source)
            except BackendError as exc:
                problem = str(exc), exc.hint
        if problem:
            message, hint = problem
            name = getattr(backend, "name", "")
            self._collected.broken.append(BrokenPlugin(self._plugin, self._source.distribution, message, hint,
                                                       backend=name if isinstance(name, str) else ""))
            return
        entry = BackendEntry(backend, self._plugin, self._source.distribution, version, names)
        self._collected.entries[backend.name] = entry
        self._collected.aliases.update({a: backend.name for a in names})

    def _taken(self, name: str, aliases: tuple[str, ...]) -> tuple[str, str] | None:
        entries, alias_map = self._collected.entries, self._collected.aliases
        for taken in (name, *aliases):
            if taken in entries or taken in alias_map:
                owner = entries.get(taken) or entries[alias_map[taken]]
                message = (f"backend name {taken!r} is registered twice: by {owner.distribution} (plugin "
                           f"{owner.plugin}) and by {self._source.distribution} (plugin {self._plugin}); the second "
                           "is ignored")
                if owner.plugin == self._plugin:
                    return message, f"give each backend of plugin {self._plugin} a name of its own"
                # Plugins are named by their entry points, not by the backends they register:
                # blocking the backend's name would block whichever plugin's entry point has it.
                return message, (f"to keep {owner.distribution}'s, block the other with {DISABLE_ENV}={self._plugin}; "
                                 f"to keep {self._source.distribution}'s, {DISABLE_ENV}={owner.plugin}; "
                                 "or uninstall one")
        return None


def _contract_problem(backend: Any) -> tuple[str, str] | None:
    """What is wrong with a registered backend, as (message, hint); None if nothing.
    Checked at registration, so a mistake shows in `edgeport backends`, not at first use."""
    if not isinstance(backend, Backend):
        return f"registered {backend!r}, which is not an edgeport.Backend", "subclass edgeport.Backend and register an instance"
    name = getattr(backend, "name", None)
    if not isinstance(name, str) or not name.isidentifier() or name in RESERVED_NAMES:
        return (f"invalid backend name {name!r} (in {type(backend).__name__})",
                "set name to letters, digits and underscores, e.g. name = 'my_npu'; 'portable' is reserved")
    missing = [m for m in REQUIRED_METHODS if getattr(type(backend), m) is getattr(Backend, m)]
    if missing:
        return (f"backend {name!r} does not implement {', '.join(f'{m}()' for m in missing)}",
                f"define {', '.join(missing)} in {type(backend).__name__}; see docs/writing-a-backend.md")
    problem = _rules_problem(name, backend.rules) or _schemes_problem(name, backend)
    if problem:
        return problem
    options = backend.options
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        return (f"options of backend {name!r} must be a dataclass, not {getattr(options, '__name__', options)}",
                "declare them as @dataclass(frozen=True) class MyOptions: ... with a default for every field")
    try:
        defaults = options()
    except Exception as exc:
        return (f"options of backend {name!r} cannot be built from their defaults: {type(exc).__name__}: {exc}",
                f"give every field of {options.__name__} a valid default")
    if not _frozen(defaults):  # one instance serves every partition (and thread) of an export
        return (f"options of backend {name!r} ({options.__name__}) are not frozen",
                f"declare them @dataclass(frozen=True) class {options.__name__}: ...")
    try:  # choices a toolchain lists are asked for at export: listing them may import it
        validate_options(backend, defaults, toolchain_choices=False)
    except Exception as exc:
        return (f"an option default of backend {name!r} breaks its own edgeport.option rule: {exc}",
                f"make each default of {options.__name__} one its rule accepts")
    return None


def _rules_problem(name: str, rules: Any) -> tuple[str, str] | None:
    """What is wrong with a backend's `rules`: partitioning read them at the first export,
    failing there with an AttributeError or TypeError that named no backend."""
    example = 'PartitionRules(min_nodes=1, never_alone=frozenset({"aten.view.default"}))'
    if not isinstance(rules, PartitionRules):
        return (f"rules of backend {name!r} are {type(rules).__name__}, not an edgeport.PartitionRules",
                f"set rules = edgeport.{example}")
    if isinstance(rules.min_nodes, bool) or not isinstance(rules.min_nodes, int) or rules.min_nodes < 1:
        return (f"rules of backend {name!r} have min_nodes={rules.min_nodes!r}, not a whole number of 1 or more",
                f"set rules = edgeport.{example}")
    if isinstance(rules.never_alone, (str, bytes)) or not isinstance(rules.never_alone, Collection):
        return (f"rules of backend {name!r} have never_alone={rules.never_alone!r}, not a set of ops",
                "name the ops in a set, as strings (str(op)): never_alone=frozenset({\"aten.view.default\"})")
    return None


def _schemes_problem(name: str, backend: Backend) -> tuple[str, str] | None:
    """What is wrong with the quantization schemes a backend declares: ``schemes = "int8"``
    was listed as the schemes i, n, t and 8; a name edgeport has no scheme of (``"int-8"``)
    could never be asked for, and `edgeport backends` listed it as offered."""
    schemes, default = backend.schemes, backend.default_scheme
    if isinstance(schemes, (str, bytes)) or not isinstance(schemes, Collection) or not all(
            isinstance(s, str) for s in schemes):
        return (f"schemes of backend {name!r} are {schemes!r}, not a set of scheme names",
                'set schemes = frozenset({"int8"}) (the names edgeport backends lists for the built-in backends)')
    unknown = sorted(set(schemes) - set(SCHEMES))
    if unknown:
        return (f"schemes of backend {name!r} name {', '.join(map(repr, unknown))}, which edgeport has no scheme of",
                f"offer schemes from: {', '.join(SCHEMES)} (docs/quantization.md)")
    if default is not None and default not in schemes:
        return (f"default_scheme of backend {name!r} is {default!r}, which is not one of its schemes "
                f"({', '.join(sorted(schemes)) or 'none'})", "name one of schemes, or None")
    return None  # schemes_declined may be a property importing the toolchain (mediatek's): not read here


def _frozen(instance: Any) -> bool:
    """Whether a dataclass instance refuses assignment, as ``frozen=True`` makes it."""
    name = next((f.name for f in dataclasses.fields(instance)), "probe")
    try:
        setattr(instance, name, getattr(instance, name, None))  # the same value, on a throwaway instance
    except dataclasses.FrozenInstanceError:
        return True
    return False


def _entry_version(backend: Backend, source: _Source) -> str:
    """The version a backend's entry shows: its distribution's, or the backend's own
    for one registered in code. The backend's is checked (`checked_version` raises a
    `BackendError`) unless a property computes it and the distribution's is shown:
    computing it may import the toolchain, which registering must not (qualcomm's does);
    export and the conformance kit check it when they first use the backend."""
    if source.version and isinstance(inspect.getattr_static(backend, "version", None), property):
        return source.version
    own = checked_version(backend)
    return source.version or own


def _alias_problem(aliases: tuple[Any, ...]) -> tuple[str, str] | None:
    """An alias is a name like a backend's: an identifier, not 'portable'."""
    bad = [a for a in aliases if not isinstance(a, str) or not a.isidentifier() or a in RESERVED_NAMES]
    if bad:
        return (f"invalid backend alias(es) {', '.join(map(repr, bad))}",
                "use letters, digits and underscores, e.g. aliases=('npu',); 'portable' is reserved")
    return None


def _import_hint(plugin: str, source: _Source, exc: BaseException) -> str:
    """What to do about a plugin whose module failed to import. One that imports torch at
    the top fails so wherever torch is not (a device running programs): its author must
    move that import into the compile side, which the user cannot do."""
    block = f"block it with {DISABLE_ENV}={plugin}"
    name = getattr(exc, "name", None) or ""
    if isinstance(exc, ImportError) and name.split(".")[0] == "torch":
        return (f"{source.distribution} imports torch when its module loads, and there is no torch here: a bug of "
                "the plugin (its module must import torch only inside support() and compile(): "
                f"docs/writing-a-backend.md, 'The run side'); report it to its authors, or {block}")
    return f"fix or uninstall {source.distribution}, or {block}"


def _broken(plugin: str, source: _Source, exc: BaseException, hint: str) -> BrokenPlugin:
    """A broken-plugin record whose error is one line (pluggy's messages span several)."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return BrokenPlugin(plugin, source.distribution, f"{type(exc).__name__}: {text}", hint,
                        "".join(traceback.format_exception(exc)))


_default: Registry | None = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The process-wide registry of installed plugins, created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry()
        return _default


def registry_for(*backends: Backend) -> Registry:
    """A registry holding only ``backends``: conformance never depends on what is installed."""
    registry = Registry(entry_points=False)

    class _Plugin:
        @hookspecs.hookimpl
        def edgeport_register_backends(self, register):  # noqa: ANN001
            for backend in backends:
                register(backend)

    registry.add_plugin(_Plugin(), name="conformance-" + "-".join(b.name for b in backends))
    return registry


def registry_or_default(registry: Registry | None) -> Registry:
    """The registry a caller passed, or the installed plugins' when it passed None.

    Anything else is one `InputError`: ``registry="cpu"`` (a backend's name where the
    backends go) used to surface later as an AttributeError from deep inside export.
    """
    if registry is None:
        return default_registry()
    if not isinstance(registry, Registry):
        raise InputError(f"registry= takes an edgeport Registry, or None for the installed plugins; "
                         f"got {type(registry).__name__} {registry!r:.60}",
                         hint="backends are named by backends=['cpu']; registry= is for a Registry built in code")
    return registry
