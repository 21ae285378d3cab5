"""Plugin discovery: entry points, ``--plugin`` files and modules, ``DIFFBENCH_PLUGINS``.

Built-in plugins arrive exactly like third-party ones, through the ``diffbench`` entry-point
group; ``DIFFBENCH_LOAD_PLUGINS`` restricts which distributions' entry points load. Nothing is
scanned at import: the first ``registry()``, ``get()`` or ``load_plugins()`` loads the entry points
(``ensure_loaded``). What was loaded lives in one ``PluginSet``, the active one; tests swap in a
fresh set with ``using(...)`` so they see the built-ins and their own plugins, not whatever happens
to be installed. The registry is rebuilt from the hooks on every call, so a plugin object
registered with ``pm.register(obj)`` is found until ``pm.unregister(obj)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from diffbench import hookspecs
from diffbench.contract import KINDS, Plugin, PluginClassError, check_class
from diffbench.hints import did_you_mean

ENTRY_POINT_GROUP = "diffbench"
ENV_VAR = "DIFFBENCH_PLUGINS"
ALLOW_ENV_VAR = "DIFFBENCH_LOAD_PLUGINS"
BUILTIN_DISTRIBUTION = "diffbench"
HOOKS = tuple(name for name in vars(hookspecs) if name.startswith("register_"))


class PluginError(Exception):
    """A plugin could not be loaded or registered; the message says which and how to mend it."""


@dataclass(frozen=True)
class Registered:
    kind: str
    name: str
    cls: type[Plugin]
    source: str


@dataclass(frozen=True)
class HeldBack:
    """An entry point that ``DIFFBENCH_LOAD_PLUGINS`` kept from loading."""

    name: str
    distribution: str
    version: str
    value: str


_NOT_LOADED = object()


class PluginSet:
    """A plugin manager and what entry-point discovery put into it.

    ``installed=True`` scans every installed distribution for ``diffbench`` entry points (what a
    run does); ``installed=False`` reads only diffbench's own, the built-ins, or (``builtins=False``
    too) none. Discovery happens on the first ``ensure_loaded()``, and again when
    ``DIFFBENCH_LOAD_PLUGINS`` has changed since.
    """

    def __init__(self, installed: bool = True, builtins: bool = True) -> None:
        self.installed = installed
        self.builtins = builtins or installed
        self.pm = pluggy.PluginManager("diffbench")
        self.pm.add_hookspecs(hookspecs)
        #: Entry points the allow-list kept out, as of the last discovery.
        self.held_back: list[HeldBack] = []
        #: Entry-point name -> (plugin, distribution, version) for every entry point loaded.
        self.from_entry_points: dict[str, tuple[Any, str, str]] = {}
        self._applied_allow_list: object = _NOT_LOADED

    def ensure_loaded(self) -> None:
        """Load the entry points unless done already under the current ``DIFFBENCH_LOAD_PLUGINS``."""
        if self._applied_allow_list is _NOT_LOADED or os.environ.get(ALLOW_ENV_VAR) != self._applied_allow_list:
            self.load_entry_points()

    def _entry_points(self) -> Iterator[tuple[str, str, importlib.metadata.EntryPoint]]:
        if self.installed:
            distributions = list(importlib.metadata.distributions())
        elif self.builtins:
            distributions = [importlib.metadata.distribution(BUILTIN_DISTRIBUTION)]
        else:
            distributions = []
        for dist in distributions:
            entry_points = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
            if entry_points:
                metadata = dist.metadata  # parsed on every access: once per distribution
                for ep in entry_points:
                    yield metadata["Name"], metadata["Version"], ep

    def load_entry_points(self) -> None:
        """Register the entry points that ``DIFFBENCH_LOAD_PLUGINS`` allows; remember the rest in ``held_back``.

        Like pluggy's ``load_setuptools_entrypoints``, but run again it also unregisters entry points
        that the variable no longer allows, so the registry always follows its current value.
        """
        self._applied_allow_list = os.environ.get(ALLOW_ENV_VAR)
        allowed = allowed_distributions()
        held: dict[tuple[str, str], HeldBack] = {}
        seen: set[str] = {BUILTIN_DISTRIBUTION}
        for distribution, version, ep in self._entry_points():
            seen.add(_normalized(distribution))
            if allowed is not None and _normalized(distribution) not in allowed:
                held[(distribution, ep.name)] = HeldBack(ep.name, distribution, version, ep.value)
                loaded = self.from_entry_points.get(ep.name)
                if loaded is not None and loaded[1] == distribution:
                    if self.pm.is_registered(loaded[0]):
                        self.pm.unregister(loaded[0])
                    del self.from_entry_points[ep.name]
                continue
            if self.pm.has_plugin(ep.name) or self.pm.is_blocked(ep.name):
                continue
            source = f"{distribution} {version} ({ep.value})"
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() at import is its error
                raise PluginError(
                    f"plugin {source} failed to import: {type(exc).__name__}: {exc}; "
                    f"mend or uninstall it, or leave it out with {ALLOW_ENV_VAR}"
                ) from None
            self.register(plugin, ep.name, source)
            self.from_entry_points[ep.name] = (plugin, distribution, version)
        self.held_back[:] = held.values()
        unknown = sorted((allowed or set()) - seen) if self.installed else []
        if unknown:
            print(
                f"diffbench: warning: {ALLOW_ENV_VAR} names {', '.join(unknown)}, but no installed distribution "
                f"of that name has diffbench plugins (those that do: {', '.join(sorted(seen))})",
                file=sys.stderr,
            )

    def register(self, plugin: Any, name: str | None, source: str) -> None:
        """Register one plugin (module or object); a malformed or misspelt hook is a PluginError."""
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(
                f"plugin {source} has a malformed hook ({exc}); a hook takes exactly one argument, `register`"
            ) from None
        except ValueError as exc:
            raise PluginError(f"plugin {source} cannot be registered: {exc}") from None
        try:
            self.check_hooks(plugin, source)
        except PluginError:
            self.pm.unregister(plugin)
            raise

    def check_hooks(self, plugin: Any, source: str) -> None:
        """Raise PluginError if ``plugin`` implements a hook that diffbench does not define (a misspelling)."""
        for name, caller in vars(self.pm.hook).items():
            if not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
                continue
            if any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()):
                raise PluginError(
                    f"plugin {source} implements unknown hook '{name}'{did_you_mean(name, HOOKS)} "
                    f"(diffbench's hooks: {', '.join(HOOKS)})"
                )

    def source(self, plugin: Any) -> str:
        """Where a registered plugin came from, in words: ``dist version (module)``, ``file ...``, its name."""
        for registered, distribution, version in self.from_entry_points.values():
            if registered is plugin:
                return f"{distribution} {version} ({getattr(plugin, '__name__', self.pm.get_name(plugin))})"
        return self.pm.get_name(plugin) or repr(plugin)


class _Active:
    """The plugin set that ``registry()`` and the CLI use; ``using()`` swaps it for a while."""

    def __init__(self) -> None:
        self.plugins = PluginSet()


_active = _Active()


def active() -> PluginSet:
    """The plugin set in use (its entry points not necessarily loaded yet: see ``ensure_loaded``)."""
    return _active.plugins


def __getattr__(name: str) -> Any:
    # `plugins.pm` and `plugins.held_back` follow the active set (module attributes, PEP 562).
    if name == "pm":
        return _active.plugins.pm
    if name == "held_back":
        return _active.plugins.held_back
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.contextmanager
def using(*objects: Any, builtins: bool = True, installed: bool = False) -> Iterator[PluginSet]:
    """Make a fresh plugin set the active one inside the block; the previous one is back afterwards.

    It holds diffbench's built-ins (``builtins=False``: none), every installed distribution's
    entry points only with ``installed=True``, and the plugin ``objects`` given (modules or objects
    with hooks). For tests: what they see does not depend on what else is installed, and nothing
    they register outlives the block.
    """
    fresh = PluginSet(installed=installed, builtins=builtins)
    fresh.ensure_loaded()
    for obj in objects:
        fresh.register(obj, None, getattr(obj, "__name__", type(obj).__qualname__))
    previous, _active.plugins = _active.plugins, fresh
    try:
        yield fresh
    finally:
        _active.plugins = previous


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def allowed_distributions() -> set[str] | None:
    """Normalized distribution names from ``DIFFBENCH_LOAD_PLUGINS``, or None (unset) for every one."""
    value = os.environ.get(ALLOW_ENV_VAR)
    if value is None:
        return None
    return {_normalized(name.strip()) for name in value.split(",") if name.strip()} | {BUILTIN_DISTRIBUTION}


def ensure_loaded() -> None:
    """Load the active set's entry points if not done yet (or ``DIFFBENCH_LOAD_PLUGINS`` changed since)."""
    active().ensure_loaded()


def load_entry_points() -> None:
    """Discover the entry points again under the current ``DIFFBENCH_LOAD_PLUGINS``."""
    active().load_entry_points()


def load_plugin(spec: str) -> ModuleType:
    """Import and register a plugin given as a ``path/to/file.py`` or a module name."""
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = Path(spec).resolve()
        if not path.is_file():
            raise PluginError(f"plugin file '{spec}' does not exist; check the --plugin path")
        name = f"diffbench_file_plugin_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
        if name in sys.modules:
            return register_module(sys.modules[name], sys.modules[name].__diffbench_source__)
        module_spec = importlib.util.spec_from_file_location(name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module.__diffbench_source__ = f"file {path}"  # type: ignore[attr-defined]
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            del sys.modules[name]
            raise PluginError(f"plugin file '{spec}' failed to import: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(spec)
        except ImportError as exc:
            raise PluginError(
                f"plugin module '{spec}' cannot be imported ({exc}); "
                "give a file path ending in .py or an importable module name"
            ) from None
        except (Exception, SystemExit) as exc:
            raise PluginError(f"plugin module '{spec}' failed to import: {type(exc).__name__}: {exc}") from None
    return register_module(module, getattr(module, "__diffbench_source__", f"module {spec}"))


def register_module(module: ModuleType, source: str) -> ModuleType:
    """Register a plugin module once; a hook with a wrong signature or an unknown name is a PluginError."""
    plugins = active()
    if not plugins.pm.is_registered(module):
        plugins.register(module, source, source)
    return module


def load_plugins(specs: list[str] | tuple[str, ...] = ()) -> None:
    """Load the entry points (once), the ``--plugin`` specs and those listed in ``DIFFBENCH_PLUGINS``."""
    ensure_loaded()
    from_env = [s.strip() for s in os.environ.get(ENV_VAR, "").split(",") if s.strip()]
    for spec in [*from_env, *specs]:
        load_plugin(spec)


def registry() -> dict[str, dict[str, Registered]]:
    """Every registered plugin class by kind and name; raises PluginError on a bad one."""
    plugins = active()
    plugins.ensure_loaded()
    for plugin in plugins.pm.get_plugins():  # objects registered straight through pm.register
        plugins.check_hooks(plugin, plugins.source(plugin))
    found: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
    for kind, base in KINDS.items():
        caller = getattr(plugins.pm.hook, f"register_{kind}s")
        for impl in reversed(caller.get_hookimpls()):
            source = plugins.source(impl.plugin)

            def register(cls: type, kind: str = kind, base: type[Plugin] = base, source: str = source) -> None:
                try:
                    check_class(cls, base)
                except PluginClassError as exc:
                    raise PluginError(f"plugin {source}: {exc}") from None
                clash = found[kind].get(cls.name)
                if clash is not None and clash.cls is not cls:
                    raise PluginError(
                        f"{kind} name '{cls.name}' is registered twice: by {clash.source} "
                        f"and by {source}; rename one of them or stop loading one plugin"
                    )
                found[kind][cls.name] = Registered(kind, cls.name, cls, source)

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except (Exception, SystemExit) as exc:
                raise PluginError(f"plugin {source} raised in register_{kind}s: {type(exc).__name__}: {exc}") from None
    return found


def get(kind: str, name: str) -> Registered:
    """Look up one plugin by kind and name, with a did-you-mean on a miss."""
    known = registry()[kind]
    if name not in known:
        hint = did_you_mean(name, known) or ";"  # "; did you mean 'x'?" or ";", then " known ..."
        raise PluginError(
            f"unknown {kind} '{name}'{hint} known {kind}s: {', '.join(sorted(known)) or 'none'} "
            "(`diffbench list` shows them all, --plugin loads more)"
        )
    return known[name]
