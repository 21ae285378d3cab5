"""Contract checks for plugin authors: put a plugin through what the runner will ask of it.

    from diffbench.testing import check_dataset, check_denoiser, check_estimator, check_reference

    def test_my_estimator():
        check_estimator(MyEstimator)                 # the class with its defaults
        check_estimator(MyEstimator(window=0.3))     # or an instance with params of your choice

Each check raises AssertionError whose message names the plugin and what failed, and returns
quietly when the plugin keeps the contract. The class and output checks are the contract's own, the
ones the registry and the runner apply (``diffbench.contract.check_class``, ``check_splits``,
``check_errors``, ``check_log_posterior``), so a plugin that passes here is not failed by a run for
its output's form. Every check runs twice with the global torch, numpy and Python RNGs in different
states (restored afterwards): a plugin that draws from them instead of its ``seed`` or
``generator`` is not repeatable, and is caught.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Iterator
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from diffbench.contract import (
    Dataset,
    Denoiser,
    Estimator,
    Plugin,
    PluginClassError,
    PluginOutputError,
    Reference,
    Splits,
    check_class,
    check_errors,
    check_log_posterior,
    check_probabilities,
    check_splits,
)
from diffbench.model import ConditionalModel
from diffbench.schedule import NoiseSchedule
from diffbench.training import TrainSettings, build_module

__all__ = ["TinyDenoiser", "check_dataset", "check_denoiser", "check_estimator", "check_reference", "tiny_model"]


def _fail(label: str, message: str) -> NoReturn:
    raise AssertionError(f"{label}: {message}")


@contextlib.contextmanager
def _global_rngs(seed: int) -> Iterator[None]:
    """Seed torch's, numpy's and Python's global RNGs with ``seed`` for a while, then restore them."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _instance(cls_or_instance: Any, base: type[Plugin]) -> tuple[Any, str]:
    """Check the class side of the contract; return the instance to test and a label naming it."""
    cls = cls_or_instance if isinstance(cls_or_instance, type) else type(cls_or_instance)
    label = f"{base.kind} '{getattr(cls, 'name', '?')}' ({cls.__module__}.{cls.__qualname__})"
    try:
        check_class(cls, base)
    except PluginClassError as exc:
        _fail(label, str(exc))
    defaults = copy.deepcopy(cls.params)
    try:
        default = cls()
    except Exception as exc:
        _fail(label, f"{cls.__name__}() with the default params raised {type(exc).__name__}: {exc}")
    if cls.params != defaults:
        _fail(label, f"making an instance changed the class's `params` to {cls.params}; change self.params only")
    if default.params != defaults:
        _fail(label, f"{cls.__name__}().params is {default.params}, not the defaults {defaults}")
    instance = default if isinstance(cls_or_instance, type) else cls_or_instance
    try:
        again = cls(**instance.params)
    except Exception as exc:
        _fail(label, f"{cls.__name__}(**params) raised {type(exc).__name__}: {exc}")
    if again.params != instance.params:
        _fail(label, f"{cls.__name__}(**params) does not round-trip: {instance.params} became {again.params}")
    return instance, label


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b


# --- datasets ---------------------------------------------------------------------------------


def check_dataset(cls_or_instance: type[Dataset] | Dataset, seed: int = 0) -> Splits:
    """Check a dataset: class and params, ``load(seed)``'s Splits, and that the same seed gives the same data."""
    dataset, label = _instance(cls_or_instance, Dataset)
    splits = []
    for scramble in (1, 2):
        with _global_rngs(scramble):
            try:
                loaded = dataset.load(seed)
            except Exception as exc:
                _fail(label, f"load({seed}) raised {type(exc).__name__}: {exc}")
        try:
            check_splits(loaded, dataset.name)
        except PluginOutputError as exc:
            raise AssertionError(f"{exc} ({label})") from None
        splits.append(loaded)
    first, second = splits
    if dataset.bayes_log_posterior is not None:
        try:
            log_posterior = dataset.bayes_log_posterior(first.test_x)
        except Exception as exc:
            _fail(label, f"bayes_log_posterior(test_x) raised {type(exc).__name__}: {exc}")
        try:
            check_log_posterior(log_posterior, len(first.test_x), first.num_classes, dataset.name)
        except PluginOutputError as exc:
            raise AssertionError(f"{exc} ({label})") from None
    for field in ("train_x", "train_y", "test_x", "test_y", "class_names"):
        if not _same(getattr(first, field), getattr(second, field)):
            _fail(
                label,
                f"load({seed}) twice gave different {field}: draw every random number from a "
                "generator seeded by `seed` (torch.Generator().manual_seed(seed)), not from the global RNG",
            )
    return first


# --- denoisers --------------------------------------------------------------------------------


def _shape_only(data_shape: tuple[int, ...], num_classes: int) -> Splits:
    """A Splits that carries only a sample shape and a class count, for ``build_module``."""
    x, y = torch.zeros(1, *data_shape), torch.zeros(1, dtype=torch.long)
    return Splits(x, y, x, y, [str(c) for c in range(num_classes)])


def check_denoiser(
    cls_or_instance: type[Denoiser] | Denoiser,
    data_shape: tuple[int, ...] = (2,),
    num_classes: int = 3,
    num_timesteps: int = 1000,
) -> nn.Module:
    """Check a denoiser: class, params, ``train`` and ``supports``; ``build`` seeded by torch.manual_seed;
    ``forward`` gives finite eps_hat of x_t's shape for t = 0 .. T-1 and every class, the same on every call.

    ``data_shape`` must be one the denoiser ``supports`` (an image network needs e.g. ``(1, 8, 8)``).
    """
    denoiser, label = _instance(cls_or_instance, Denoiser)
    data_shape = tuple(data_shape)
    try:
        TrainSettings(**denoiser.train)
    except (TypeError, ValueError) as exc:
        _fail(label, f"`train` must be a dict of steps, batch_size, lr: {exc}")
    supported = denoiser.supports(data_shape)
    if not isinstance(supported, bool):
        _fail(label, f"supports({data_shape}) returned {supported!r}, not True or False")
    if not supported:
        _fail(
            label,
            f"does not support data_shape {data_shape} (it takes {denoiser.accepts}); "
            "pass check_denoiser(..., data_shape=...) a shape it supports",
        )
    rows = max(4, 2 * num_classes)
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(rows, *data_shape, generator=gen)
    t = torch.linspace(0, num_timesteps - 1, rows).round().long()  # 0 and T-1 included
    c = torch.arange(rows) % num_classes  # every class

    def build_and_run(scramble: int) -> tuple[nn.Module, torch.Tensor]:
        with _global_rngs(scramble):
            try:  # seeds torch with 0 around build(), as the runner does
                module = build_module(denoiser, _shape_only(data_shape, num_classes), seed=0).eval()
                with torch.inference_mode():
                    return module, module(x_t.clone(), t.clone(), c.clone())
            except Exception as exc:
                _fail(label, f"build({data_shape}, {num_classes}) and forward raised {type(exc).__name__}: {exc}")

    module, out = build_and_run(1)
    if not isinstance(out, torch.Tensor) or out.shape != x_t.shape or not out.is_floating_point():
        got = f"shape {list(out.shape)} dtype {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
        _fail(label, f"forward(x_t {list(x_t.shape)}, t, c) returned {got}; eps_hat must be a float tensor like x_t")
    if not torch.isfinite(out).all():
        bad = sorted({int(v) for v in t[~torch.isfinite(out).flatten(1).all(1)]})
        _fail(label, f"forward returned NaN or inf (at t = {bad}); timesteps run over [0, {num_timesteps})")
    with torch.inference_mode():
        one = module(x_t[:1], t[:1], c[:1])
    if not isinstance(one, torch.Tensor) or one.shape != x_t[:1].shape:
        _fail(label, "forward on a batch of one row does not return eps_hat of x_t's shape")
    again, out_again = build_and_run(2)
    state, state_again = module.state_dict(), again.state_dict()
    if state.keys() != state_again.keys() or not all(torch.equal(state[k], state_again[k]) for k in state):
        _fail(label, "build() after torch.manual_seed(0) twice gave different weights: draw them from torch's RNG")
    if not torch.equal(out, out_again):
        _fail(label, "forward is not deterministic: eps_hat must be a function of (x_t, t, c) and the weights alone")
    return module


# --- estimators -------------------------------------------------------------------------------


class TinyDenoiser(nn.Module):
    """A fixed random linear denoiser, no training: eps_hat = W x_t + class offset + (t / T) time direction."""

    def __init__(self, data_shape: tuple[int, ...], num_classes: int, num_timesteps: int = 1000, seed: int = 0):
        super().__init__()
        dim = math.prod(data_shape)
        gen = torch.Generator().manual_seed(seed)
        self.num_timesteps = num_timesteps
        self.register_buffer("weight", torch.randn(dim, dim, generator=gen) / math.sqrt(dim))
        self.register_buffer("label", torch.randn(num_classes, dim, generator=gen))
        self.register_buffer("time", torch.randn(dim, generator=gen))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = x_t.flatten(1) @ self.weight + self.label[c] + (t.to(x_t.dtype) / self.num_timesteps)[:, None] * self.time
        return h.view_as(x_t)


def tiny_model(
    data_shape: tuple[int, ...] = (2,), num_classes: int = 3, num_timesteps: int = 1000, seed: int = 0
) -> ConditionalModel:
    """A CPU ConditionalModel around a TinyDenoiser on the linear schedule: cheap, deterministic, counts NFE."""
    module = TinyDenoiser(data_shape, num_classes, num_timesteps, seed)
    return ConditionalModel(module, NoiseSchedule("linear", num_timesteps), num_classes, data_shape)


def check_estimator(
    cls_or_instance: type[Estimator] | Estimator,
    data_shape: tuple[int, ...] = (2,),
    num_classes: int = 3,
    batch: int = 4,
    trials: int = 2,
    num_timesteps: int = 1000,
    stochastic: bool = True,
) -> torch.Tensor:
    """Check an estimator on a ``tiny_model``: ``fit`` runs; ``errors`` gives finite float ``[B, K]`` computed
    from ``model.eps`` (NFE > 0, different models give different errors), leaves ``x`` alone, repeats under
    the same generator seed and (``stochastic=True``) changes with it, and also takes B = 1 and trials = 1.

    Returns the errors of the first call. Pass ``stochastic=False`` for an estimator that draws nothing at random.
    """
    estimator, label = _instance(cls_or_instance, Estimator)
    data_shape = tuple(data_shape)
    model = tiny_model(data_shape, num_classes, num_timesteps)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *data_shape, generator=gen)
    held_x = torch.randn(2 * num_classes, *data_shape, generator=gen)
    held_y = torch.arange(2 * num_classes) % num_classes
    try:
        estimator.fit(model, held_x, held_y, torch.Generator().manual_seed(0))
    except Exception as exc:
        _fail(label, f"fit(model, x, y, generator) raised {type(exc).__name__}: {exc}")

    def errors(inputs: torch.Tensor, r: int, seed: int, on: ConditionalModel = model, scramble: int = 1):
        where = f"B={inputs.shape[0]}, trials={r}, seed={seed}"
        kept = inputs.clone()
        on.reset_nfe()
        with _global_rngs(scramble):
            try:
                out = estimator.errors(on, inputs, r, torch.Generator().manual_seed(seed))
            except Exception as exc:
                _fail(label, f"errors() raised {type(exc).__name__}: {exc} ({where})")
        try:
            check_errors(out, inputs.shape[0], num_classes, estimator.name)
        except PluginOutputError as exc:
            raise AssertionError(f"{exc} ({label}, {where})") from None
        if on.reset_nfe() == 0:
            _fail(label, f"errors() never called model.eps (NFE = 0, {where}); the errors must come from the model")
        if not torch.equal(inputs, kept):
            _fail(label, f"errors() changed its input x in place ({where})")
        return out

    first = errors(x, trials, seed=0)
    if not torch.equal(first, errors(x, trials, seed=0, scramble=2)):
        _fail(
            label,
            "the same generator seed gave different errors: draw every random number from `generator` "
            "(torch.randn(..., generator=generator)), not from the global RNG",
        )
    if stochastic and all(torch.equal(first, errors(x, trials, seed=s)) for s in (1, 2, 3)):
        _fail(
            label, "errors are the same for generator seeds 0..3: they ignore `generator` (stochastic=False if meant)"
        )
    other = tiny_model(data_shape, num_classes, num_timesteps, seed=1)
    if torch.equal(first, errors(x, trials, seed=0, on=other)):
        _fail(label, "two different models gave the same errors: the errors must be computed from model.eps")
    errors(x[:1], 1, seed=0)  # B = 1 and trials = 1
    probs = torch.softmax(-first.double(), dim=1)
    if not ((probs >= 0).all() and torch.allclose(probs.sum(1), torch.ones(batch, dtype=torch.float64))):
        _fail(label, "softmax(-errors) is not a probability distribution over the classes")
    return first


# --- reference classifiers --------------------------------------------------------------------


def separable_data(
    data_shape: tuple[int, ...], num_classes: int, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of well separated classes: class c is noise (std 0.5) around 2c everywhere, labels cycling."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = torch.randn(n, *data_shape, generator=gen) * 0.5
    return x + 2.0 * y.reshape(n, *[1] * len(data_shape)), y


def check_reference(
    cls_or_instance: type[Reference] | Reference,
    data_shape: tuple[int, ...] = (2,),
    num_classes: int = 3,
    n_train: int = 60,
    n_test: int = 12,
) -> torch.Tensor:
    """Check a reference classifier on well separated synthetic data of ``data_shape``: it ``supports`` the shape,
    ``fit`` runs and ``predict_proba`` gives ``[N, K]`` probabilities (``check_probabilities``, the runner's check),
    leaves ``x`` alone, takes N = 1, repeats under the same seed whatever the global RNGs hold, and beats chance.

    Returns the test probabilities. Pass a ``data_shape`` the reference takes (``(1, 8, 8)`` for an image one).
    """
    reference, label = _instance(cls_or_instance, Reference)
    data_shape = tuple(data_shape)
    if reference.supports(data_shape) is not True:
        _fail(label, f"supports({data_shape}) is not True: pass check_reference a data_shape it takes")
    train_x, train_y = separable_data(data_shape, num_classes, n_train, seed=0)
    test_x, test_y = separable_data(data_shape, num_classes, n_test, seed=1)

    def fitted_probabilities(scramble: int, x: torch.Tensor) -> torch.Tensor:
        own, kept = copy.deepcopy(reference), (train_x.clone(), x.clone())
        with _global_rngs(scramble):
            for call, args in (("fit", (train_x, train_y, num_classes, 0)), ("predict_proba", (x,))):
                try:
                    out = getattr(own, call)(*args)
                except Exception as exc:
                    _fail(label, f"{call}() raised {type(exc).__name__}: {exc}")
        try:
            check_probabilities(out, x.shape[0], num_classes, reference.name)
        except PluginOutputError as exc:
            raise AssertionError(f"{exc} ({label}, N={x.shape[0]})") from None
        if not (torch.equal(train_x, kept[0]) and torch.equal(x, kept[1])):
            _fail(label, "fit() or predict_proba() changed its input x in place")
        return out

    first = fitted_probabilities(1, test_x)
    if not torch.equal(first, fitted_probabilities(2, test_x)):
        _fail(
            label,
            "the same seed gave different probabilities: draw every random number from `seed`, not the global RNG",
        )
    fitted_probabilities(1, test_x[:1])  # N = 1
    accuracy = (first.argmax(1) == test_y).double().mean().item()
    if accuracy <= 1.5 / num_classes:
        _fail(label, f"accuracy {accuracy:.2f} on well separated classes is near chance: does fit() learn from y?")
    return first
