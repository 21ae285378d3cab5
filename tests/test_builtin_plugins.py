"""Every built-in dataset and denoiser: shapes, determinism under a seed, a tiny training run, shape skips."""

import math
import re

import pytest
import torch
from click.testing import CliRunner
from diffbench_plugins.layers import ConditionedNet, timestep_embedding

from diffbench import plugins
from diffbench.cli import main
from diffbench.contract import check_splits
from diffbench.schedule import NoiseSchedule
from diffbench.training import TrainSettings, build_module, train

SMALL = {"n_train": 64, "n_test": 16}
DATASETS = {
    "spirals": SMALL,
    "moons": SMALL,
    "circles": SMALL,
    "checkerboard": SMALL,
    "gaussian-mixture": SMALL,
    "digits": {},
}
TINY_DENOISERS = {
    "mlp": {"width": 16, "depth": 1},
    "resmlp": {"width": 16, "blocks": 1},
    "unet": {"channels": 8},
    "dit": {"width": 32, "depth": 1, "heads": 2},
}


def registered(kind):
    return plugins.registry()[kind]


def builtins(kind):
    return {name for name, entry in registered(kind).items() if entry.cls.__module__.startswith("diffbench_plugins.")}


#: Built-in datasets read from files on disk: tests/test_images.py writes them in each format and covers them.
ON_DISK = {"image-folder", "mnist", "fashion-mnist", "cifar10", "cifar100", "stl10", "imagenet"}
#: Built-in datasets of an extra's package: tests/test_mnist5k.py writes its file and covers it.
EXTRA_DATA = {"mnist5k"}


#: Built-in denoisers of diffusers' models: tests/test_diffusers.py covers them (with the diffusers extra).
DIFFUSERS = {"diffusers", "diffusers-unet"}


def test_every_builtin_is_covered_here():
    assert builtins("dataset") == set(DATASETS) | ON_DISK | EXTRA_DATA
    assert builtins("denoiser") == set(TINY_DENOISERS) | DIFFUSERS


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_shapes_and_determinism(name):
    dataset = registered("dataset")[name].cls(**DATASETS[name])
    a = check_splits(dataset.load(0), name)
    b, c = dataset.load(0), dataset.load(1)
    assert a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.long
    assert a.train_x.shape[1:] == a.test_x.shape[1:]
    assert set(a.train_y.tolist()) == set(range(a.num_classes)), "every class appears in training"
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    if name != "digits":  # digits is a fixed dataset with a fixed split
        assert not torch.equal(a.train_x, c.train_x)
        assert a.train_x.shape == (64, 2) and a.test_x.shape == (16, 2)
        assert a.train_x.abs().max() < 4, "toys are scaled to about [-2, 2]"


def test_digits_is_scaled_images_with_stratified_split():
    splits = registered("dataset")["digits"].cls().load(0)
    assert splits.data_shape == (1, 8, 8) and splits.num_classes == 10
    assert splits.train_x.min() == -1 and splits.train_x.max() == 1
    counts = torch.bincount(splits.test_y, minlength=10)
    assert counts.max() - counts.min() <= 2


def test_gaussian_mixture_bayes_posterior_is_optimal_on_its_own_data():
    dataset = registered("dataset")["gaussian-mixture"].cls(k=4, std=0.2, n_test=400)
    splits = dataset.load(0)
    log_post = dataset.bayes_log_posterior(splits.test_x)
    assert log_post.shape == (400, 4)
    assert torch.allclose(log_post.exp().sum(1), torch.ones(400), atol=1e-5)
    assert (log_post.argmax(1) == splits.test_y).float().mean() > 0.99


@pytest.mark.parametrize("name", TINY_DENOISERS)
def test_denoiser_forward_shape_and_seeded_init(name):
    denoiser = registered("denoiser")[name].cls(**TINY_DENOISERS[name])
    splits = registered("dataset")["digits"].cls().load(0)
    if not denoiser.supports(splits.data_shape):
        pytest.skip(f"{name} does not take digits")
    module = build_module(denoiser, splits, seed=0)
    again = build_module(denoiser, splits, seed=0)
    x = splits.test_x[:5]
    t = torch.tensor([0, 10, 500, 998, 999])
    c = torch.tensor([0, 1, 2, 3, 9])
    out = module(x, t, c)
    assert out.shape == x.shape and torch.isfinite(out).all()
    for p, q in zip(module.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", TINY_DENOISERS)
def test_denoisers_keep_the_condition_keys_of_cached_checkpoints(name):
    denoiser = registered("denoiser")[name].cls(**TINY_DENOISERS[name])
    shape = (2,) if denoiser.supports((2,)) else (1, 8, 8)
    module = denoiser.build(shape, 4)
    assert isinstance(module, ConditionedNet)
    condition = ["time.0.weight", "time.0.bias", "time.2.weight", "time.2.bias", "label.weight"]
    assert [key for key in module.state_dict() if key.startswith(("time.", "label."))] == condition


def test_timestep_embedding_is_cos_then_sin_of_geometric_frequencies():
    emb = timestep_embedding(torch.tensor([0, 7, 999]), 8)
    assert emb.shape == (3, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    assert torch.allclose(emb[1], torch.cat([torch.cos(7 * freqs), torch.sin(7 * freqs)]))


@pytest.mark.parametrize("name", TINY_DENOISERS)
def test_tiny_training_lowers_the_loss(name):
    denoiser = registered("denoiser")[name].cls(**TINY_DENOISERS[name])
    dataset = "digits" if not denoiser.supports((2,)) else "gaussian-mixture"
    splits = registered("dataset")[dataset].cls(**DATASETS[dataset]).load(0)
    module = build_module(denoiser, splits, seed=0)
    settings = TrainSettings(steps=60, batch_size=64, lr=3e-3)
    losses = train(module, splits, NoiseSchedule(), settings, 0, torch.device("cpu"), progress=False)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    assert all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("name", ["unet", "dit"])
def test_image_denoisers_refuse_2d_points(name):
    denoiser = registered("denoiser")[name].cls()
    assert not denoiser.supports((2,))
    assert denoiser.supports((1, 8, 8))


@pytest.mark.slow
def test_shape_mismatch_is_skipped_with_one_line(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text(
        'datasets = ["spirals[n_train=100,n_test=20]"]\ndenoisers = ["unet", "mlp[width=16,depth=1]"]\n'
        'estimators = ["shared-noise"]\ntrials = [1]\ndevices = ["cpu"]\nrepeats = 1\n[train]\nsteps = 10\n'
    )
    result = CliRunner().invoke(
        main,
        ["run", "--suite", str(suite), "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "c"), "--no-plots"],
    )
    assert result.exit_code == 0, result.output
    skips = [line for line in result.output.splitlines() if line.startswith("skipping")]
    assert len(skips) == 1 and "unet" in skips[0] and "[2]" in skips[0]
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert list(frame["denoiser"]) == ["mlp", "mlp"] and list(frame["scenario"]) == ["offline", "single"]


@pytest.mark.parametrize(
    "selector, named",
    [
        ("spirals[n_train=100000000]", "spirals: n_train=100000000 and n_test=1000 need about 9.6 GB"),
        ("moons[n_test=20000000]", "moons: n_train=4000 and n_test=20000000 need about 1.92 GB"),
        ("gaussian-mixture[n_test=5000000]", "gaussian-mixture: n_train=4000 and n_test=5000000 need about 1.12 GB"),
    ],
)
def test_toy_sizes_that_cannot_fit_in_memory_are_refused_before_drawing(tmp_path, selector, named, monkeypatch):
    from diffbench_plugins import toys

    monkeypatch.setattr(toys, "available_memory", lambda: 10**9)  # sizes that fit no machine need not be drawn
    args = ["run", "-d", selector, "-m", "mlp[width=8,depth=1]", "--device", "cpu", "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0], lines
    assert "more than the 1 GB available; give n_train + n_test of at most" in lines[0]
    assert not (tmp_path / "r").exists(), "refused before anything ran"


def test_gaussian_mixture_needs_a_training_point_per_class():
    with pytest.raises(Exception, match=r"needs k <= n_train .* got k=100 and n_train=50"):
        plugins.get("dataset", "gaussian-mixture").cls(k=100, n_train=50)


@pytest.mark.parametrize(
    "name, params, named",
    [
        ("spirals", {"noise": math.nan}, "spirals needs a finite noise >= 0, got nan"),
        ("moons", {"noise": math.inf}, "moons needs a finite noise >= 0, got inf"),
        ("spirals", {"turns": math.nan}, "spirals needs a finite turns > 0, got nan"),
        ("gaussian-mixture", {"std": math.nan}, "a finite radius > 0 and std > 0"),
    ],
)
def test_toy_params_that_are_not_finite_are_refused_before_drawing(name, params, named):
    with pytest.raises(Exception, match=re.escape(named)):
        plugins.get("dataset", name).cls(**params)
