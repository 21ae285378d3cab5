"""Every built-in estimator: shape, determinism, the plugin contract on vectors and images, params, a run."""

import pytest
import torch

import diffbench
from diffbench import plugins
from diffbench.testing import check_estimator
from tests.helpers import estimator, gen, points

ALL = [
    ("full-mc", {}),
    ("full-mc", {"loss": "huber"}),
    ("shared-noise", {}),
    ("shared-noise", {"loss": "l1"}),
    ("truncated", {}),
    ("truncated", {"t_min": 100, "t_max": 600}),
    ("stratified", {}),
    ("stratified", {"mode": "even"}),
    ("antithetic", {}),
    ("antithetic", {"stratify": True}),
    ("importance", {}),
    ("importance", {"stratify": True, "weighting": "elbo"}),
    ("adaptive", {}),
    ("adaptive", {"mode": "paired-test", "min_scores": 2, "batch": 2}),
    ("sequential", {}),
    ("sequential", {"loss": "huber", "stratify": True}),
]
WITH_WEIGHTING = ["stratified", "antithetic", "importance", "adaptive", "sequential"]


def test_every_builtin_estimator_is_covered_here():
    builtins = {
        name
        for name, entry in plugins.registry()["estimator"].items()
        if entry.cls.__module__.startswith("diffbench_plugins.")
    }
    assert builtins == {name for name, _ in ALL}


@pytest.mark.parametrize(("name", "params"), ALL)
def test_shape_finite_and_deterministic(name, params, recorder_model):
    est, x = estimator(name, **params), points(5)
    err = est.errors(recorder_model, x, 6, gen(7))
    assert err.shape == (5, 3) and err.is_floating_point() and torch.isfinite(err).all()
    if name in ("adaptive", "sequential"):  # they spend only the trials they need
        assert 0 < recorder_model.nfe <= 5 * 6 * 3
    else:
        assert recorder_model.nfe == 5 * 6 * 3
    assert torch.equal(err, est.errors(recorder_model, x, 6, gen(7)))
    assert not torch.equal(err, est.errors(recorder_model, x, 6, gen(8)))
    assert est.errors(recorder_model, x, 1, gen(7)).shape == (5, 3)


@pytest.mark.parametrize(("name", "params"), ALL)
def test_keeps_the_plugin_contract_on_vectors_and_images(name, params):
    check_estimator(estimator(name, **params), trials=4)
    check_estimator(estimator(name, **params), data_shape=(1, 4, 4), num_classes=4, trials=3)


@pytest.mark.parametrize("name", sorted({name for name, _ in ALL}))
def test_an_unknown_loss_is_rejected(name):
    with pytest.raises(diffbench.ParamError, match="loss"):
        estimator(name, loss="l3")


@pytest.mark.parametrize("name", WITH_WEIGHTING)
def test_an_unknown_weighting_is_rejected(name):
    with pytest.raises(diffbench.ParamError, match="weighting"):
        estimator(name, weighting="vlb")


@pytest.mark.slow
def test_every_estimator_runs_through_the_cli(cli, suite_file, tmp_path):
    import pandas as pd

    names = ["full-mc", "truncated", "stratified", "antithetic", "importance", "adaptive", "sequential[batch=1]"]
    out = tmp_path / "out"
    result = cli("run", "--suite", suite_file(estimators=names, trials=[2]), "--out", out, "--no-plots")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out / "results.parquet")
    assert (table.status == "ok").all(), table.error.tolist()
    assert set(table.estimator) == {name.split("[")[0] for name in names}
    assert (table.nfe_per_sample <= 2 * 2 + 1e-9).all()
