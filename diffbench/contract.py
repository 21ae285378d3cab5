"""The public plugin contract: the base classes third-party plugins subclass.

Every plugin class has a unique ``name`` and a ``params`` dict of defaults.
``Cls(**overrides)`` checks each override's key and type against those defaults
and keeps the merged values in ``self.params``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
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


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass
class Pretrained:
    """A denoiser that arrives trained, with the schedule and output parameterisation it was trained for.

    ``module.forward(x_t, t, c)`` returns the raw prediction under ``prediction_type``: the noise
    (``epsilon``), the velocity sqrt(abar) eps - sqrt(1 - abar) x0 (``v_prediction``) or x0 (``sample``);
    with ``learned_variance`` the output has twice the data's channels and the second half is dropped.
    The core converts every prediction to epsilon, so estimators never know the difference.
    ``encode`` (latent models) maps a batch of dataset samples to the latents the module denoises; each
    image is encoded once. ``schedule`` names the noise schedule in the table; ``source`` and ``revision``
    (a content hash or hub revision) say where the weights came from.
    """

    module: torch.nn.Module
    alphas_cumprod: torch.Tensor
    prediction_type: str = "epsilon"
    learned_variance: bool = False
    schedule: str = "custom"
    source: str = ""
    revision: str = ""
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None


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

    def pretrained(self, data_shape: tuple[int, ...], num_classes: int, class_names: list[str]) -> Pretrained | None:
        """A model that arrives trained (the runner then trains and caches nothing); default None: train ``build``."""
        return None

    def check_dataset(self, data_shape: tuple[int, ...], class_names: list[str]) -> None:
        """Raise ParamError when this denoiser cannot serve the dataset; called before anything runs.

        The default accepts every dataset; a pretrained denoiser checks its class count and input shape here.
        """


class Estimator(Plugin):
    kind = "estimator"

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
