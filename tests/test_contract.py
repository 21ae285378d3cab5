"""diffbench.contract: the class rules, the Choice param type, the output rules and the optional Bayes posterior."""

from __future__ import annotations

import copy
import json
import math
import pickle

import pytest
import torch

import diffbench
from diffbench import plugins
from diffbench.contract import (
    Choice,
    PluginClassError,
    PluginOutputError,
    check_class,
    check_log_posterior,
)
from diffbench.preparation import bayes_accuracy
from diffbench.testing import check_dataset, check_estimator
from tests.helpers import hooks_for


class Est(diffbench.Estimator):
    """Scores every class zero."""

    name = "est"
    params = {"loss": Choice("l2", "l1", "huber"), "mode": "plain", "n": 2}

    def errors(self, model, x, trials, generator):
        return torch.zeros(x.shape[0], model.num_classes)


# --- class rules ------------------------------------------------------------------------------


def test_a_good_class_passes_the_class_check():
    assert check_class(Est, diffbench.Estimator) is Est


BAD_CLASSES = [
    (
        int,
        diffbench.Estimator,
        "<class 'int'> is not a subclass of diffbench.Estimator",
    ),
    (type("D", (diffbench.Dataset,), {"name": "d"}), diffbench.Estimator, "not a subclass of diffbench.Estimator"),
    (type("Nameless", (diffbench.Estimator,), {}), diffbench.Estimator, "class Nameless needs a non-empty string"),
    (type("NumName", (diffbench.Estimator,), {"name": 3}), diffbench.Estimator, "needs a non-empty string `name`"),
    (
        type("L", (diffbench.Estimator,), {"name": "l", "params": ["a"]}),
        diffbench.Estimator,
        "dict of defaults, got list",
    ),
    (type("A", (diffbench.Denoiser,), {"name": "a", "accepts": 3}), diffbench.Denoiser, "`accepts` must be a str"),
    (type("T", (diffbench.Denoiser,), {"name": "t", "train": [1]}), diffbench.Denoiser, "`train` must be a dict"),
    (type("B", (diffbench.Dataset,), {"name": "b", "bayes_log_posterior": 1}), diffbench.Dataset, "method or None"),
]


@pytest.mark.parametrize(("cls", "base", "match"), BAD_CLASSES, ids=[str(c) for c, _, _ in BAD_CLASSES])
def test_a_bad_class_fails_the_class_check(cls, base, match):
    with pytest.raises(PluginClassError) as info:
        check_class(cls, base)
    assert match in str(info.value)


@pytest.mark.parametrize("cls", [type("Nameless", (diffbench.Estimator,), {}), type("L", (Est,), {"params": [1]})])
def test_registry_and_testing_kit_apply_the_same_class_check(register_plugin, cls):
    with pytest.raises(PluginClassError) as rule:
        check_class(cls, diffbench.Estimator)
    register_plugin(hooks_for(estimators=[cls]), name="checked plugin")
    with pytest.raises(plugins.PluginError) as registry:
        plugins.registry()
    with pytest.raises(AssertionError) as kit:
        check_estimator(cls)
    assert str(registry.value) == f"plugin checked plugin: {rule.value}"
    assert str(rule.value) in str(kit.value)


# --- the Choice param type --------------------------------------------------------------------


def test_a_choice_default_is_its_first_value_and_a_plain_string_in_instances():
    assert Est.params["loss"] == "l2" and Est.params["loss"].choices == ("l2", "l1", "huber")
    default, chosen = Est(), Est(loss="huber")
    assert default.params["loss"] == "l2" and type(default.params["loss"]) is str
    assert chosen.params["loss"] == "huber" and type(chosen.params["loss"]) is str
    assert default.params == {"loss": "l2", "mode": "plain", "n": 2}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("hubr", "estimator 'est' param 'loss' must be one of l2, l1, huber, got 'hubr'; did you mean 'huber'?"),
        ("zzz", "estimator 'est' param 'loss' must be one of l2, l1, huber, got 'zzz'"),
        (2, "estimator 'est' param 'loss' must be one of l2, l1, huber, got 2"),
        (None, "estimator 'est' param 'loss' must be one of l2, l1, huber, got None"),
    ],
)
def test_a_value_outside_the_choices_is_one_clear_error(value, message):
    with pytest.raises(diffbench.ParamError) as info:
        Est(loss=value)
    assert str(info.value) == message


def test_a_plain_string_default_still_takes_any_string_and_only_strings():
    assert Est(mode="anything").params["mode"] == "anything"
    with pytest.raises(diffbench.ParamError, match="param 'mode' must be str, got 3"):
        Est(mode=3)


def test_labels_show_only_non_default_choices():
    assert repr(Est()) == "est" and repr(Est(loss="l2")) == "est"
    assert repr(Est(loss="l1")) == "est[loss=l1]" and repr(Est(loss="l1", n=3)) == "est[loss=l1,n=3]"


# Cell ids, labels and the committed reference table are built from these reprs: they must not change.
@pytest.mark.parametrize(
    ("name", "overrides", "label"),
    [
        ("full-mc", {}, "full-mc"),
        ("full-mc", {"loss": "l2"}, "full-mc"),
        ("full-mc", {"loss": "huber"}, "full-mc[loss=huber]"),
        ("truncated", {"loss": "l1", "t_max": 600}, "truncated[loss=l1,t_max=600]"),
        ("stratified", {"mode": "even"}, "stratified[mode=even]"),
        ("stratified", {"mode": "random", "weighting": "elbo"}, "stratified[weighting=elbo]"),
        ("adaptive", {"mode": "paired-test", "loss": "l2"}, "adaptive[mode=paired-test]"),
        ("importance", {"weighting": "elbo", "stratify": True}, "importance[stratify=True,weighting=elbo]"),
        ("sequential", {"loss": "huber"}, "sequential[loss=huber]"),
    ],
)
def test_builtin_labels_are_as_before_choices(name, overrides, label):
    assert repr(plugins.get("estimator", name).cls(**overrides)) == label


@pytest.mark.parametrize(
    ("name", "key", "choices"),
    [
        ("shared-noise", "loss", ("l2", "l1", "huber")),
        ("antithetic", "weighting", ("simple", "elbo", "velocity", "x0")),
        ("stratified", "mode", ("random", "even")),
        ("adaptive", "mode", ("li", "paired-test")),
    ],
)
def test_builtins_declare_their_choices(name, key, choices):
    cls = plugins.get("estimator", name).cls
    assert isinstance(cls.params[key], Choice) and cls.params[key].choices == choices
    with pytest.raises(diffbench.ParamError, match=f"param '{key}' must be one of {', '.join(choices)}, got 'x'"):
        cls(**{key: "x"})


def test_a_choice_survives_json_pickle_copy_and_repr():
    choice = Choice("l2", "l1")
    assert json.dumps({"loss": choice}) == '{"loss": "l2"}'
    for again in (pickle.loads(pickle.dumps(choice)), copy.deepcopy(choice), eval(repr(choice))):  # noqa: S307
        assert isinstance(again, Choice) and again == "l2" and again.choices == ("l2", "l1")
    assert repr(choice) == "Choice('l2', 'l1')"


@pytest.mark.parametrize(("args", "error"), [(("a", 1), TypeError), ((1,), TypeError), (("a", "b", "a"), ValueError)])
def test_a_malformed_choice_fails_where_it_is_written(args, error):
    with pytest.raises(error):
        Choice(*args)


# --- output rules and the optional Bayes posterior --------------------------------------------


class Blobs(diffbench.Dataset):
    """Two well separated blobs, with their exact posterior."""

    name = "blobs"
    params = {"n": 20}

    def load(self, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(self.params["n"]) % 2
        x = torch.randn(self.params["n"], 2, generator=g) * 0.1 + (2.0 * y - 1)[:, None]
        return diffbench.Splits(x, y, x.clone(), y.clone(), ["left", "right"])

    def bayes_log_posterior(self, x):
        return torch.log_softmax(torch.stack([-x.sum(1), x.sum(1)], 1) * 20, dim=1)


class WrongPosterior(Blobs):
    def bayes_log_posterior(self, x):
        return super().bayes_log_posterior(x)[:, :1]


def test_a_dataset_without_a_posterior_declares_none_and_gets_nan_bayes_accuracy():
    class Plain(Blobs):
        bayes_log_posterior = None

    assert diffbench.Dataset.bayes_log_posterior is None and Plain().bayes_log_posterior is None
    assert math.isnan(bayes_accuracy(Plain(), Plain().load(0)))
    assert bayes_accuracy(Blobs(), Blobs().load(0)) == 1.0


def test_the_kit_checks_a_declared_posterior():
    check_dataset(Blobs)
    with pytest.raises(AssertionError, match=r"bayes_log_posterior\(\) returned shape \[20, 1\], expected \[20, 2\]"):
        check_dataset(WrongPosterior)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (torch.zeros(3, 2, dtype=torch.long), "expected a floating dtype"),
        (torch.zeros(3, 3), r"shape \[3, 3\], expected \[3, 2\]"),
        (torch.tensor([[0.0, float("nan")]] * 3), "NaN or \\+inf"),
        (torch.tensor([[0.0, float("inf")]] * 3), "NaN or \\+inf"),
        ([[0.0, 0.0]] * 3, "returned list, not a tensor"),
    ],
)
def test_check_log_posterior_rejects_malformed_output(value, match):
    with pytest.raises(PluginOutputError, match=match):
        check_log_posterior(value, 3, 2, "blobs")


def test_check_log_posterior_allows_minus_inf():
    log_post = torch.tensor([[0.0, float("-inf")]] * 3)
    assert check_log_posterior(log_post, 3, 2, "blobs") is log_post
