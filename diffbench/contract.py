"""The public plugin contract: the base classes third-party plugins subclass.

Every plugin class has a unique ``name`` and a ``params`` dict of defaults.
``Cls(**overrides)`` checks each override's key and type against those defaults
and keeps the merged values in ``self.params``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from diffbench.model import ConditionalModel


class ParamError(ValueError):
    """A plugin was given a parameter it does not have, or a value of the wrong type."""


def _type_name(value: Any) -> str:
    return type(value).__name__


def _coerce(kind: str, plugin: str, key: str, default: Any, value: Any) -> Any:
    """Return ``value`` converted to the type of ``default`` or raise ParamError."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if is_number and float(value).is_integer():
            return int(value)
    elif isinstance(default, float):
        if is_number:
            return float(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(default)(value)
    elif isinstance(value, type(default)):
        return value
    expected = "true or false" if isinstance(default, bool) else _type_name(default)
    raise ParamError(f"{kind} '{plugin}' param '{key}' must be {expected}, got {value!r}")


class Plugin:
    """Base of every plugin kind: a name, default params and validated overrides."""

    kind: ClassVar[str] = "plugin"
    name: ClassVar[str] = ""
    params: dict[str, Any] = {}

    def __init__(self, **overrides: Any) -> None:
        defaults = type(self).params
        merged = dict(defaults)
        for key, value in overrides.items():
            if key not in defaults:
                close = difflib.get_close_matches(key, list(defaults), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                known = ", ".join(defaults) or "none"
                raise ParamError(f"{self.kind} '{self.name}' has no param '{key}'{hint} (known params: {known})")
            merged[key] = _coerce(self.kind, self.name, key, defaults[key], value)
        self.params: dict[str, Any] = merged
        self.validate()

    def validate(self) -> None:
        """Check relations between params (override to raise ParamError)."""

    def __repr__(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params.items() if v != type(self).params[k])
        return f"{self.name}[{args}]" if args else self.name


@dataclass
class Splits:
    """A dataset's train and test split: x float ``[N, *shape]``, y long ``[N]``."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


class Dataset(Plugin):
    kind = "dataset"

    def load(self, seed: int) -> Splits:
        raise NotImplementedError


class Denoiser(Plugin):
    kind = "denoiser"
    #: The data shapes this architecture takes, in words (shown by `diffbench list` and in skip lines).
    accepts: ClassVar[str] = "any shape"
    #: Training settings that suit this architecture (keys of TrainSettings); a suite's [train] overrides them.
    train: ClassVar[dict[str, Any]] = {}

    def supports(self, data_shape: tuple[int, ...]) -> bool:
        """Whether ``build`` can take data of this sample shape (default: any)."""
        return True

    def build(self, data_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        """Return a module ``forward(x_t [N,*shape], t [N] long, c [N] long) -> eps_hat``."""
        raise NotImplementedError


class Estimator(Plugin):
    kind = "estimator"
    #: True for plain Monte Carlo with independent t and eps for every class: the estimator whose
    #: ``gap_variance`` every other one's ``variance_reduction`` is measured against in the same run.
    variance_baseline: ClassVar[bool] = False

    def fit(self, model: ConditionalModel, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:
        """Optionally tune the estimator on held-out labelled training data before it classifies.

        The runner calls this once per cell with samples the test set never sees; its NFE
        are counted separately (``fit_nfe_per_sample``). The default does nothing.
        """

    def errors(
        self,
        model: ConditionalModel,
        x: torch.Tensor,
        trials: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Return ``[B, K]`` denoising-error estimates for ``x [B, *shape]``; lower = more likely."""
        raise NotImplementedError


KINDS: dict[str, type[Plugin]] = {"dataset": Dataset, "denoiser": Denoiser, "estimator": Estimator}


class PluginOutputError(RuntimeError):
    """A plugin returned something that breaks the contract."""


def check_splits(splits: Any, name: str) -> Splits:
    where = f"dataset '{name}' load()"
    if not isinstance(splits, Splits):
        raise PluginOutputError(f"{where} returned {type(splits).__name__}, not diffbench.Splits")
    for part in ("train", "test"):
        x, y = getattr(splits, f"{part}_x"), getattr(splits, f"{part}_y")
        if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() >= 2):
            raise PluginOutputError(f"{where}: {part}_x must be a float tensor [N, *shape]")
        if not (isinstance(y, torch.Tensor) and y.dtype == torch.long and y.shape == x.shape[:1]):
            raise PluginOutputError(f"{where}: {part}_y must be a long tensor [N] matching {part}_x")
        if not torch.isfinite(x).all():
            raise PluginOutputError(f"{where}: {part}_x holds NaN or inf")
        if y.numel() and (y.min() < 0 or y.max() >= len(splits.class_names)):
            raise PluginOutputError(f"{where}: {part}_y has labels outside [0, {len(splits.class_names)})")
    names = splits.class_names
    if not (isinstance(names, (list, tuple)) and names and all(isinstance(c, str) for c in names)):
        raise PluginOutputError(f"{where}: class_names must be a non-empty list of str, got {names!r}")
    if len(splits.train_x) == 0 or len(splits.test_x) == 0:
        raise PluginOutputError(f"{where}: the train and test splits must not be empty")
    if splits.train_x.shape[1:] != splits.test_x.shape[1:]:
        raise PluginOutputError(f"{where}: train_x and test_x have different sample shapes")
    return splits


def check_errors(errors: Any, batch: int, classes: int, name: str) -> torch.Tensor:
    where = f"estimator '{name}' errors()"
    if not isinstance(errors, torch.Tensor):
        raise PluginOutputError(f"{where} returned {type(errors).__name__}, not a tensor [B, K]")
    if tuple(errors.shape) != (batch, classes):
        raise PluginOutputError(f"{where} returned shape {list(errors.shape)}, expected [{batch}, {classes}]")
    if not errors.is_floating_point():
        raise PluginOutputError(f"{where} returned dtype {errors.dtype}, expected a floating dtype")
    if not torch.isfinite(errors).all():
        raise PluginOutputError(f"{where} returned NaN or inf")
    return errors
