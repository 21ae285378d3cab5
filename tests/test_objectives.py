"""Training objectives (epsilon, v_prediction, flow): their batches, cache keys, and runs through the CLI."""

import hashlib
import json
import shutil

import pandas as pd
import pytest
import torch

from diffbench import plugins
from diffbench.model import ConditionalModel
from diffbench.schedule import NoiseSchedule
from diffbench.suite import SuiteError, suite_from_dict
from diffbench.training import (
    CACHE_FORMAT,
    TrainSettings,
    build_module,
    cache_key,
    noisy_batch,
    train,
    training_process,
)
from tests.helpers import write_suite

CPU = torch.device("cpu")


def dataset():
    return plugins.get("dataset", "spirals").cls(n_train=200, n_test=50)


def denoiser():
    return plugins.get("denoiser", "mlp").cls(width=16, depth=1)


def batch(objective: str, flow_sigma: str = "logit-normal"):
    x0 = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))
    abar = NoiseSchedule().alphas_cumprod.float()
    settings = TrainSettings(objective=objective, flow_sigma=flow_sigma)
    return x0, abar, noisy_batch(x0, abar, settings, torch.Generator().manual_seed(1))


def test_a_flow_batch_is_the_rectified_flow_and_its_velocity():
    x0, _, (x_t, t, v) = batch("flow")
    sigma = (t / 1000)[:, None]
    assert t.is_floating_point() and (t > 0).all() and (t < 1000).all(), "the module is fed sigma * 1000"
    assert torch.allclose(x_t - sigma * v, x0, atol=1e-5), "x0 = x_t - sigma v"
    assert torch.allclose(x_t + (1 - sigma) * v, v + x0, atol=1e-5), "eps = x_t + (1 - sigma) v = v + x0"
    logit = torch.logit(sigma.squeeze(1).double())
    assert abs(logit.mean().item()) < 0.1 and abs(logit.std().item() - 1) < 0.1, "logit-normal(0, 1) sigma"
    _, _, (_, uniform, _) = batch("flow", "uniform")
    assert abs((uniform / 1000).mean().item() - 0.5) < 0.02 and abs(torch.logit(uniform / 1000).std().item() - 1) > 0.3


def test_a_v_prediction_batch_targets_salimans_and_hos_v():
    x0, abar, (x_t, t, v) = batch("v_prediction")
    a, s = abar[t].sqrt()[:, None], (1 - abar[t]).sqrt()[:, None]
    assert not t.is_floating_point()
    assert torch.allclose(a * x_t - s * v, x0, atol=1e-5), "x0 = a x_t - s v on a VP process"


def test_the_epsilon_batch_draws_as_before():
    x0, abar, (x_t, t, eps) = batch("epsilon")
    generator = torch.Generator().manual_seed(1)
    t_old = torch.randint(0, 1000, (4096,), generator=generator)
    eps_old = torch.randn(x0.shape, generator=generator)
    assert torch.equal(t, t_old) and torch.equal(eps, eps_old)


def test_the_objective_is_in_the_cache_key_and_the_epsilon_key_is_unchanged():
    base = dict(dataset=dataset(), denoiser=denoiser(), schedule=NoiseSchedule(), seed=0, device=CPU)
    key = cache_key(**base, settings=TrainSettings(steps=50))
    keys = {
        cache_key(**base, settings=TrainSettings(steps=50, objective=o, flow_sigma=f))
        for o, f in (("flow", "logit-normal"), ("flow", "uniform"), ("v_prediction", "logit-normal"))
    }
    assert len(keys) == 3 and key not in keys
    # the key before objectives existed: what caches already hold for epsilon models
    assert key == cache_key_without_objective(base)


def cache_key_without_objective(base):
    """``cache_key`` as it was before objectives: an epsilon model's key."""
    ident = {
        "format": CACHE_FORMAT,
        "dataset": [base["dataset"].name, base["dataset"].training_params()],
        "denoiser": [base["denoiser"].name, base["denoiser"].params],
        "schedule": base["schedule"].describe(),
        "train": {"steps": 50, "batch_size": 512, "lr": 2e-3},
        "seed": 0,
        "device": "cpu",
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]


@pytest.mark.parametrize("objective", ["v_prediction", "flow"])
def test_each_objective_trains_and_classifies_through_its_conversion(objective):
    splits = dataset().load(0)
    module = build_module(denoiser(), splits, seed=0)
    settings = TrainSettings(steps=120, batch_size=128, objective=objective)
    losses = train(module, splits, NoiseSchedule(), settings, 0, CPU, progress=False)
    assert sum(losses[-20:]) < 0.9 * sum(losses[:20])
    process, prediction = training_process(NoiseSchedule(), settings)
    assert prediction == objective and process.kind == ("flow" if objective == "flow" else "vp")
    model = ConditionalModel(module, process, splits.num_classes, splits.data_shape, prediction_type=prediction)
    eps = model.eps(splits.test_x, torch.full((50,), 500), splits.test_y)
    assert eps.shape == splits.test_x.shape and torch.isfinite(eps).all()


def test_bad_objectives_are_one_line():
    with pytest.raises(ValueError, match="unknown training objective 'score'"):
        TrainSettings(objective="score")
    with pytest.raises(ValueError, match="unknown flow_sigma"):
        TrainSettings(flow_sigma="beta")
    with pytest.raises(SuiteError, match="unknown training objective"):
        suite_from_dict({"train": {"objective": "x0"}})


@pytest.mark.slow
def test_objective_flow_runs_end_to_end_with_its_columns(cli, tmp_path):
    suite = write_suite(tmp_path / "tiny.toml", max_time_s=0.2)
    cache = tmp_path / "cache"
    for objective in ("epsilon", "flow"):
        args = ["--suite", suite, "--objective", objective, "--cache", cache, "--no-plots", "--no-report"]
        result = cli("run", *args, "--out", tmp_path / objective)
        assert result.exit_code == 0, result.output
    assert len(list(cache.glob("*.pt"))) == 2, "each objective cached apart"
    rows = {o: pd.read_parquet(tmp_path / o / "results.parquet") for o in ("epsilon", "flow")}
    assert set(rows["flow"]["objective"]) == {"flow"} and set(rows["flow"]["noise_process"]) == {"flow"}
    assert set(rows["epsilon"]["noise_process"]) == {"vp"} and set(rows["epsilon"]["schedule"]) == {"linear"}
    assert rows["flow"]["accuracy"].notna().all()


@pytest.mark.slow
def test_a_flow_model_rescores_from_its_bank_file_alone(cli, tmp_path):
    """The bank file carries the flow's a, s and model timesteps: rescoring gives the run's answers."""
    suite = write_suite(
        tmp_path / "tiny.toml",
        train={"steps": 50, "objective": "flow"},
        estimators=["shared-noise", "truncated[t_max=300]", "stratified[weighting=velocity]"],
        scenarios=["offline"],
        max_time_s=0.1,
    )
    run = tmp_path / "run"
    args = ["--suite", suite, "--out", run, "--cache", tmp_path / "cache", "--errors", "bank", "--no-plots"]
    assert cli("run", *args, "--no-report").exit_code == 0
    assert cli("bank", "export", run, tmp_path / "bank.npz").exit_code == 0
    shutil.rmtree(tmp_path / "cache")
    result = cli("rescore", tmp_path / "bank.npz", "--out", tmp_path / "again", "--no-plots", "--no-report")
    assert result.exit_code == 0, result.output
    columns = ["estimator_label", "trials", "accuracy", "noise_process"]
    a, b = (
        pd.read_parquet(f / "results.parquet")[columns].sort_values(columns[:2]).reset_index(drop=True)
        for f in (run, tmp_path / "again")
    )
    assert set(a["noise_process"]) == {"flow"}
    pd.testing.assert_frame_equal(a, b)
