"""Plugin discovery: entry points, ``--plugin`` files and modules, ``DIFFBENCH_PLUGINS``.

Built-in plugins arrive exactly like third-party ones, through the ``diffbench``
entry-point group; ``DIFFBENCH_LOAD_PLUGINS`` restricts which distributions' entry
points load. The registry is rebuilt from the hooks on every call, so a test
can ``pm.register(obj)`` a plugin and ``pm.unregister(obj)`` it afterwards.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from diffbench import hookspecs
from diffbench.contract import KINDS, Plugin

ENTRY_POINT_GROUP = "diffbench"
ENV_VAR = "DIFFBENCH_PLUGINS"
ALLOW_ENV_VAR = "DIFFBENCH_LOAD_PLUGINS"
BUILTIN_DISTRIBUTION = "diffbench"

pm = pluggy.PluginManager("diffbench")
pm.add_hookspecs(hookspecs)


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


held_back: list[HeldBack] = []
_entry_point_plugins: dict[str, tuple[Any, str, str]] = {}  # entry-point name -> (plugin, distribution, version)
_applied_allow_list: str | None = None


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def allowed_distributions() -> set[str] | None:
    """Normalized distribution names from ``DIFFBENCH_LOAD_PLUGINS``, or None (unset) for every one."""
    value = os.environ.get(ALLOW_ENV_VAR)
    if value is None:
        return None
    return {_normalized(name.strip()) for name in value.split(",") if name.strip()} | {BUILTIN_DISTRIBUTION}


def load_entry_points() -> None:
    """Register the entry points that ``DIFFBENCH_LOAD_PLUGINS`` allows; remember the rest in ``held_back``.

    Like pluggy's ``load_setuptools_entrypoints``, but run again it also unregisters entry points
    that the variable no longer allows, so the registry always follows its current value.
    """
    global _applied_allow_list
    _applied_allow_list = os.environ.get(ALLOW_ENV_VAR)
    allowed = allowed_distributions()
    held: dict[tuple[str, str], HeldBack] = {}
    seen: set[str] = {BUILTIN_DISTRIBUTION}
    for dist in list(importlib.metadata.distributions()):
        distribution, version = dist.metadata["Name"], dist.version
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            seen.add(_normalized(distribution))
            if allowed is not None and _normalized(distribution) not in allowed:
                held[(distribution, ep.name)] = HeldBack(ep.name, distribution, version, ep.value)
                loaded = _entry_point_plugins.get(ep.name)
                if loaded is not None and loaded[1] == distribution:
                    if pm.is_registered(loaded[0]):
                        pm.unregister(loaded[0])
                    del _entry_point_plugins[ep.name]
                continue
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            _entry_point_plugins[ep.name] = (plugin, distribution, version)
    held_back[:] = held.values()
    unknown = sorted((allowed or set()) - seen)
    if unknown:
        print(
            f"diffbench: warning: {ALLOW_ENV_VAR} names {', '.join(unknown)}, but no installed distribution "
            f"of that name has diffbench plugins (those that do: {', '.join(sorted(seen))})",
            file=sys.stderr,
        )


load_entry_points()


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
        except Exception as exc:
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
        except Exception as exc:
            raise PluginError(f"plugin module '{spec}' failed to import: {type(exc).__name__}: {exc}") from None
    return register_module(module, getattr(module, "__diffbench_source__", f"module {spec}"))


def register_module(module: ModuleType, source: str) -> ModuleType:
    """Register a plugin module once; a hook with a wrong signature is a PluginError."""
    if pm.is_registered(module):
        return module
    try:
        pm.register(module, name=source)
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {source} has a malformed hook ({exc}); a hook takes exactly one argument, `register`"
        ) from None
    except ValueError as exc:
        raise PluginError(f"plugin {source} cannot be registered: {exc}") from None
    return module


def load_plugins(specs: list[str] | tuple[str, ...] = ()) -> None:
    """Load the ``--plugin`` specs and those listed in ``DIFFBENCH_PLUGINS``; apply a changed allow-list."""
    if os.environ.get(ALLOW_ENV_VAR) != _applied_allow_list:
        load_entry_points()
    from_env = [s.strip() for s in os.environ.get(ENV_VAR, "").split(",") if s.strip()]
    for spec in [*from_env, *specs]:
        load_plugin(spec)


def _source(plugin: Any) -> str:
    for registered, distribution, version in _entry_point_plugins.values():
        if registered is plugin:
            return f"{distribution} {version} ({getattr(plugin, '__name__', pm.get_name(plugin))})"
    return pm.get_name(plugin) or repr(plugin)


def registry() -> dict[str, dict[str, Registered]]:
    """Every registered plugin class by kind and name; raises PluginError on a bad one."""
    found: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
    for kind, base in KINDS.items():
        caller = getattr(pm.hook, f"register_{kind}s")
        for impl in reversed(caller.get_hookimpls()):
            source = _source(impl.plugin)

            def register(cls: type, kind: str = kind, base: type = base, source: str = source) -> None:
                _check_class(cls, kind, base, source)
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
            except Exception as exc:
                raise PluginError(f"plugin {source} raised in register_{kind}s: {type(exc).__name__}: {exc}") from None
    return found


def _check_class(cls: Any, kind: str, base: type, source: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(
            f"{source} registered {cls!r} as a {kind}, but it is not a subclass of diffbench.{base.__name__}"
        )
    if not isinstance(cls.name, str) or not cls.name:
        raise PluginError(f"{source}: {kind} class {cls.__name__} needs a non-empty string `name`")
    if not isinstance(cls.params, dict):
        raise PluginError(f"{source}: {kind} '{cls.name}' needs `params` to be a dict of defaults")


def get(kind: str, name: str) -> Registered:
    """Look up one plugin by kind and name, with a did-you-mean on a miss."""
    known = registry()[kind]
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise PluginError(
            f"unknown {kind} '{name}'; {hint}known {kind}s: {', '.join(sorted(known)) or 'none'} "
            "(`diffbench list` shows them all, --plugin loads more)"
        )
    return known[name]
