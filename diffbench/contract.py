"""The public plugin contract: the base classes third-party plugins subclass, and every rule they must keep.

Every plugin class has a unique ``name`` and a ``params`` dict of defaults (``check_class``).
``Cls(**overrides)`` checks each override's key and type against those defaults (a ``Choice``
default takes only its choices; ``diffbench.params`` holds those rules, re-exported here) and keeps
the merged values in ``self.params``. What a plugin
returns is checked by ``check_splits`` (a dataset's ``load``) and ``check_errors`` (an estimator's
``errors``), ``check_probabilities`` (a reference's ``predict_proba``); the runner and
``diffbench.testing`` apply the same checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from diffbench import subsets
from diffbench.parameterisation import OBJECTIVES
from diffbench.params import (  # noqa: F401  (the param rules are part of the contract: re-exported here)
    INT64_MAX,
    Choice,
    ParamError,
    merge_params,
    short_repr,
)
from diffbench.subsets import SUBSET_PARAMS

if TYPE_CHECKING:  # through the package: model.py imports this module (check_module_output)
    import diffbench
    from diffbench.noise_process import NoiseProcess


class PluginClassError(TypeError):
    """A plugin class breaks the contract's class rules: its base, ``name``, ``params`` or attributes."""


class PluginOutputError(RuntimeError):
    """A plugin returned something that breaks the contract."""


class DataError(ValueError):
    """A dataset's files are missing, incomplete or unreadable; the message says which and how to mend it."""


class Plugin:
    """Base of every plugin kind: a name, default params and validated overrides."""

    kind: ClassVar[str] = "plugin"
    name: ClassVar[str] = ""
    params: dict[str, Any] = {}

    def __init__(self, **overrides: Any) -> None:
        self.params: dict[str, Any] = merge_params(self.kind, self.name, type(self).params, overrides)
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
    Such a dataset may give ``heldout_x``/``heldout_y``: labelled samples outside the test subset, never
    classified, for estimators' ``fit`` and calibration (a reader that decodes only the subset picks them
    with ``diffbench.subsets.outside``). The core uses them only when the training split is empty.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    heldout_x: torch.Tensor | None = None
    heldout_y: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.test_x.shape[1:])


@dataclass
class Pretrained:
    """A denoiser that arrives trained, with the noise process and output parameterisation it was trained for.

    ``module.forward(x_t, t, c)`` returns the raw prediction under ``prediction_type``: the noise
    (``epsilon``), the velocity a eps - s x0 (``v_prediction``), x0 (``sample``), a rectified flow's
    velocity eps - x0 (``flow``) or an EDM network's raw output F (``edm_denoiser``: the core feeds it
    c_in x_t and applies c_skip and c_out itself); with ``learned_variance`` the output has twice the data's
    channels and the second half is dropped. The core converts every prediction to epsilon, so estimators
    never know the difference (``diffbench.parameterisation``).

    The noise process is ``process`` (a ``diffbench.NoiseProcess``: variance preserving, rectified flow or
    EDM; the module is fed its ``model_timesteps``), or, without one, the variance-preserving process of
    ``alphas_cumprod [T]`` (the module is fed integer t). Give either; given both, they must agree.
    ``encode`` (latent models) maps a batch of dataset samples to the latents the module denoises; each
    image is encoded once. ``schedule`` names the noise schedule in the table (the process's own name where
    it is left "custom"); ``source`` and ``revision`` (a content hash or hub revision) say where the weights
    came from. ``note`` is a line the plugin said about the model before it ran (a sample size it was not
    trained on), recorded in the rows' ``model_note``.
    """

    module: torch.nn.Module
    alphas_cumprod: torch.Tensor | None = None
    prediction_type: str = "epsilon"
    learned_variance: bool = False
    schedule: str = "custom"
    source: str = ""
    revision: str = ""
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None
    process: NoiseProcess | None = None
    note: str = ""


class Dataset(Plugin):
    """Base of datasets. Every dataset has the params ``per_class`` and ``n_test`` (0 = no limit).

    They choose a fixed stratified subset of the test split (see ``diffbench.subsets``), applied by the
    core after ``load``; a dataset may declare either itself with its own default and meaning (the 2-D
    toys draw ``n_test`` points), and then the core's cut of the same size keeps them all.
    """

    kind = "dataset"
    params: dict[str, Any] = dict(SUBSET_PARAMS)
    #: Training settings this dataset's size calls for, whatever the network (keys of TrainSettings: a
    #: smaller batch for larger images, say). They override the denoiser's own ``train``; a suite's
    #: [train] overrides both. Empty, the default, leaves the denoiser's settings as they are.
    train: ClassVar[dict[str, Any]] = {}
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

    #: Where the dataset knows its true distribution, a method ``bayes_log_posterior(x [N, *shape]) ->
    #: [N, K]`` giving log p(c | x) (up to a per-row constant); the results table then reports the
    #: Bayes-optimal accuracy beside the estimators' (``check_log_posterior`` states its form). None,
    #: the default, means the distribution is unknown: ``bayes_accuracy`` is NaN.
    bayes_log_posterior: ClassVar[Callable[..., torch.Tensor] | None] = None

    def load(self, seed: int) -> Splits:
        raise NotImplementedError


class Denoiser(Plugin):
    kind = "denoiser"
    #: The data shapes this architecture takes, in words (shown by `diffbench list` and in skip lines).
    accepts: ClassVar[str] = "any shape"
    #: Training settings that suit this architecture (keys of TrainSettings); a suite's [train] overrides them.
    train: ClassVar[dict[str, Any]] = {}

    def __init__(self, objective: str = "", **overrides: Any) -> None:
        """``objective`` (every denoiser's selector takes it, e.g. ``unet[objective=flow]``): the training
        objective of this model, over the suite's; "" (the default) leaves it to the suite. A model of its own:
        ``unet[objective=[epsilon,flow]]`` trains the same network twice (``Suite.train_settings``)."""
        if "objective" in type(self).params:  # a plugin that declares its own `objective` keeps it
            if objective:
                overrides["objective"] = objective
            objective = ""
        super().__init__(**overrides)
        if objective and objective not in OBJECTIVES:
            raise ParamError(
                f"denoiser '{self.name}': unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}"
            )
        self.objective = objective

    def __repr__(self) -> str:
        label = super().__repr__()
        if not self.objective:
            return label
        extra = f"objective={self.objective}"
        return f"{label[:-1]},{extra}]" if label.endswith("]") else f"{label}[{extra}]"

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
    #: True for plain Monte Carlo with independent t and eps for every class: the estimator whose
    #: ``gap_variance`` every other one's ``variance_reduction`` is measured against in the same run.
    variance_baseline: ClassVar[bool] = False

    def fit(
        self, model: diffbench.ConditionalModel, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> None:
        """Optionally tune the estimator on held-out labelled training data before it classifies.

        The runner calls this once per cell, on the cell's own copy of the estimator, with samples the
        test set never sees; its NFE are counted separately (``fit_nfe_per_sample``). Figure data
        fits again: on 2-D data the decision-region figure refits a fresh copy for each estimator at
        its largest trials, with the generator seeded as its cell's was, so ``fit`` may run more than
        once for one setting and must depend only on its arguments. The default does nothing.
        """

    def errors(
        self,
        model: diffbench.ConditionalModel,
        x: torch.Tensor,
        trials: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Return ``[B, K]`` denoising-error estimates for ``x [B, *shape]``; lower = more likely."""
        raise NotImplementedError

    def check_schedule(self, num_timesteps: int) -> None:
        """Raise ParamError if these params cannot run on a schedule of ``num_timesteps`` steps.

        Called when the grid is built, before anything trains, so a cell that could never run
        (``truncated[t_max=5000]`` on T = 1000) is a one-line input error rather than a failed
        row after training. The default accepts every schedule.
        """


class Reference(Plugin):
    """Base of reference classifiers: an ordinary (discriminative) classifier beside the diffusion classifiers.

    The core trains a fresh instance on the run's training split (the part the denoiser trains on) and
    scores it on the same fixed test subset the estimators classify; accuracy, its CI, calibration and
    its timing are the core's. ``fit`` must depend only on its arguments (draw from ``seed``).
    """

    kind = "reference"
    #: The data shapes this classifier takes, in words (shown by `diffbench list` and in skip lines).
    accepts: ClassVar[str] = "any shape"

    def supports(self, data_shape: tuple[int, ...]) -> bool:
        """Whether ``fit`` can take data of this sample shape (default: any); else the pair is skipped in one line."""
        return True

    def fit(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int) -> None:
        """Train on ``x [N, *shape]`` float, ``y [N]`` long labels in ``[0, num_classes)``."""
        raise NotImplementedError

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``[N, K]`` class probabilities for ``x [N, *shape]``: finite, non-negative, rows summing to 1."""
        raise NotImplementedError


KINDS: dict[str, type[Plugin]] = {
    "dataset": Dataset,
    "denoiser": Denoiser,
    "estimator": Estimator,
    "reference": Reference,
}


# --- the class rules, checked when a plugin registers and by diffbench.testing -----------------


def check_class(cls: Any, base: type[Plugin]) -> type[Plugin]:
    """Return ``cls`` if it may be registered as a ``base.kind``; else raise PluginClassError saying why.

    A subclass of ``base`` with a non-empty str ``name`` and a dict ``params`` whose Choice defaults
    are well formed; a denoiser's ``accepts`` is a str and its ``train`` a dict; a dataset's
    ``bayes_log_posterior`` is None or callable.
    """
    kind = base.kind
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginClassError(f"{cls!r} is not a subclass of diffbench.{base.__name__}")
    if not isinstance(cls.name, str) or not cls.name:
        raise PluginClassError(f"{kind} class {cls.__qualname__} needs a non-empty string `name`")
    if not isinstance(cls.params, dict):
        raise PluginClassError(
            f"{kind} '{cls.name}' needs `params` to be a dict of defaults, got {type(cls.params).__name__}"
        )
    if issubclass(cls, Denoiser):
        if not isinstance(cls.accepts, str):
            raise PluginClassError(f"denoiser '{cls.name}': `accepts` must be a str describing the shapes it takes")
        if not isinstance(cls.train, dict):
            raise PluginClassError(f"denoiser '{cls.name}': `train` must be a dict of training settings")
    if issubclass(cls, Reference) and not isinstance(cls.accepts, str):
        raise PluginClassError(f"reference '{cls.name}': `accepts` must be a str describing the shapes it takes")
    if issubclass(cls, Dataset) and not isinstance(cls.train, dict):
        raise PluginClassError(f"dataset '{cls.name}': `train` must be a dict of training settings")
    if issubclass(cls, Dataset) and cls.bayes_log_posterior is not None and not callable(cls.bayes_log_posterior):
        raise PluginClassError(f"dataset '{cls.name}': `bayes_log_posterior` must be a method or None")
    return cls


# --- the output rules, checked on every call by the runner and by diffbench.testing ------------


def check_splits(splits: Any, name: str) -> Splits:
    """Return a dataset's ``load()`` result if it is a well-formed Splits, else raise PluginOutputError."""
    where = f"dataset '{name}' load()"
    if not isinstance(splits, Splits):
        raise PluginOutputError(f"{where} returned {type(splits).__name__}, not diffbench.Splits")
    given_heldout = splits.heldout_x is not None or splits.heldout_y is not None
    parts = ("train", "test", "heldout") if given_heldout else ("train", "test")
    for part in parts:
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
    if len(names) < 2 or (len(splits.train_y) and splits.train_y.unique().numel() < 2):
        raise PluginOutputError(
            f"{where}: a classifier needs at least two classes, got class_names {list(names)} and "
            f"training labels {splits.train_y.unique().tolist()[:5]}; give the dataset two or more classes"
        )
    if len(splits.test_x) == 0:
        raise PluginOutputError(f"{where}: the test split must not be empty")
    for part in (p for p in parts if p != "test"):
        if getattr(splits, f"{part}_x").shape[1:] != splits.test_x.shape[1:]:
            raise PluginOutputError(f"{where}: {part}_x and test_x have different sample shapes")
    return splits


def check_matrix(value: Any, rows: int, classes: int, where: str, dims: str) -> None:
    """Raise PluginOutputError unless ``value`` is a floating tensor ``[rows, classes]`` (``dims`` names them)."""
    if not isinstance(value, torch.Tensor):
        raise PluginOutputError(f"{where} returned {type(value).__name__}, not a tensor {dims}")
    if tuple(value.shape) != (rows, classes):
        raise PluginOutputError(f"{where} returned shape {list(value.shape)}, expected [{rows}, {classes}]")
    if not value.is_floating_point():
        raise PluginOutputError(f"{where} returned dtype {value.dtype}, expected a floating dtype")


def check_errors(errors: Any, batch: int, classes: int, name: str) -> torch.Tensor:
    """Return an estimator's ``errors()`` result if it is finite floating ``[batch, classes]``, else raise."""
    where = f"estimator '{name}' errors()"
    check_matrix(errors, batch, classes, where, "[B, K]")
    if not torch.isfinite(errors).all():
        raise PluginOutputError(f"{where} returned NaN or inf")
    return errors


def check_probabilities(probabilities: Any, rows: int, classes: int, name: str) -> torch.Tensor:
    """Return a reference's ``predict_proba()`` result if it is ``[rows, classes]`` probabilities, else raise."""
    where = f"reference '{name}' predict_proba()"
    check_matrix(probabilities, rows, classes, where, "[N, K]")
    fix = "return finite class probabilities [N, K], each row non-negative and summing to 1"
    if not torch.isfinite(probabilities).all():
        raise PluginOutputError(f"{where} returned NaN or inf; {fix}")
    sums = probabilities.double().sum(1)
    if (probabilities < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        raise PluginOutputError(f"{where} returned rows that are not probabilities; {fix}")
    return probabilities


def check_module_output(out: Any, x_t: torch.Tensor, name: str) -> torch.Tensor:
    """Return a denoiser module's ``forward`` output if it is a floating tensor shaped like ``x_t``, else raise.

    Cheap (no pass over the values): the core calls it on every module call. Without it an
    ``[N, 1]`` output would broadcast against ``[N, D]`` noise and give wrong numbers silently.
    """
    where = f"{name} forward()"
    if not isinstance(out, torch.Tensor):
        raise PluginOutputError(
            f"{where} returned {type(out).__name__}, not a tensor shaped like x_t {list(x_t.shape)}"
        )
    if out.shape != x_t.shape:
        raise PluginOutputError(
            f"{where} returned shape {list(out.shape)} for x_t of shape {list(x_t.shape)}; "
            "eps_hat must have the shape of x_t"
        )
    if not out.is_floating_point():
        raise PluginOutputError(f"{where} returned dtype {out.dtype}, expected a floating dtype")
    return out


def non_finite_output(name: str, during: str) -> PluginOutputError:
    """The error for a denoiser module whose outputs hold NaN or inf."""
    return PluginOutputError(
        f"{name} forward() returned NaN or inf {during}: the model is broken (diverged or bad weights)"
    )


def check_log_posterior(log_posterior: Any, rows: int, classes: int, name: str) -> torch.Tensor:
    """Return a dataset's ``bayes_log_posterior(x)`` if it is floating ``[rows, classes]`` and not NaN.

    ``-inf`` is allowed (a class that cannot have produced x); NaN and ``+inf`` are not.
    """
    where = f"dataset '{name}' bayes_log_posterior()"
    check_matrix(log_posterior, rows, classes, where, "[N, K]")
    if log_posterior.isnan().any() or (log_posterior == float("inf")).any():
        raise PluginOutputError(f"{where} returned NaN or +inf")
    return log_posterior
