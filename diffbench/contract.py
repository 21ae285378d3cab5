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

from diffbench import subsets
from diffbench.subsets import SUBSET_PARAMS

if TYPE_CHECKING:
    from diffbench.model import ConditionalModel


class ParamError(ValueError):
    """A plugin was given a parameter it does not have, or a value of the wrong type."""


class DataError(ValueError):
    """A dataset's files are missing, incomplete or unreadable; the message says which and how to mend it."""


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
    """A dataset's train and test split: x float ``[N, *shape]``, y long ``[N]``.

    The training split may be empty (``[0, *shape]``) for data used only zero-shot, with a trained model.
    """

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
        return tuple(self.test_x.shape[1:])


class Dataset(Plugin):
    """Base of datasets. Every dataset has the params ``per_class`` and ``n_test`` (0 = no limit).

    They choose a fixed stratified subset of the test split (see ``diffbench.subsets``), applied by the
    core after ``load``; a dataset may declare either itself with its own default and meaning (the 2-D
    toys draw ``n_test`` points), and then the core's cut of the same size keeps them all.
    """

    kind = "dataset"
    params: dict[str, Any] = dict(SUBSET_PARAMS)
    #: The keys of ``params`` the class itself declared (the rest came from ``SUBSET_PARAMS``).
    declared_params: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("params")
        if isinstance(own, dict):  # anything else is refused, with a message, when registered
            cls.declared_params = frozenset(own)
            cls.params = {**own, **{k: v for k, v in SUBSET_PARAMS.items() if k not in own}}

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        problem = subsets.check_params(self.name, self.params)
        if problem:
            raise ParamError(problem)

    def check(self) -> None:
        """Raise DataError, in one line, when the dataset's files are missing or incomplete.

        Called for every dataset of a grid before anything trains; keep it cheap (look, don't read).
        The default checks nothing.
        """

    def test_subset(self, test_y: torch.Tensor) -> torch.Tensor:
        """Indices into the full test split of the fixed subset that ``per_class``/``n_test`` choose.

        The core applies the subset itself after ``load``; a dataset that decodes files lazily calls
        this on its test labels first and decodes only the chosen samples.
        """
        return subsets.choose(test_y, self.params["per_class"], self.params["n_test"])

    def training_params(self) -> dict[str, Any]:
        """The params that can change the training data (the cache key of trained weights).

        The core's subset params only cut the test split, so they are left out unless declared.
        """
        return {k: v for k, v in self.params.items() if k not in SUBSET_PARAMS or k in self.declared_params}

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
