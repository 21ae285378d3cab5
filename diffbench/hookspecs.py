"""The four hooks a diffbench plugin implements; each receives a ``register`` callable."""

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("diffbench")
hookimpl = pluggy.HookimplMarker("diffbench")


@hookspec
def register_datasets(register: Callable[[type], None]) -> None:
    """Register dataset classes (subclasses of ``diffbench.Dataset``)."""


@hookspec
def register_denoisers(register: Callable[[type], None]) -> None:
    """Register denoiser classes (subclasses of ``diffbench.Denoiser``)."""


@hookspec
def register_estimators(register: Callable[[type], None]) -> None:
    """Register estimator classes (subclasses of ``diffbench.Estimator``)."""


@hookspec
def register_references(register: Callable[[type], None]) -> None:
    """Register reference classifier classes (subclasses of ``diffbench.Reference``); a plugin may leave it out."""
