"""Training the denoiser, and the checkpoint cache keyed by everything that determines the weights."""

import pytest
import torch

from diffbench import plugins
from diffbench.schedule import NoiseSchedule
from diffbench.training import TrainSettings, build_module, cache_key, load_or_train, train

CPU = torch.device("cpu")
SETTINGS = TrainSettings(steps=50, batch_size=128, lr=3e-3)


def dataset(**params):
    return plugins.get("dataset", "spirals").cls(**{"n_train": 200, "n_test": 50, **params})


def denoiser(**params):
    return plugins.get("denoiser", "mlp").cls(**{"width": 16, "depth": 1, **params})


def fit(tmp_path, log=None, settings=SETTINGS, seed=0, ds=None, dn=None):
    ds, dn = ds or dataset(), dn or denoiser()
    kwargs = {"log": log} if log else {}
    return load_or_train(
        ds, dn, ds.load(seed), NoiseSchedule(), settings, seed, CPU, tmp_path / "cache", progress=False, **kwargs
    )


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_lowers_the_loss():
    splits = dataset().load(0)
    module = build_module(denoiser(), splits, seed=0)
    losses = train(module, splits, NoiseSchedule(), TrainSettings(steps=120, batch_size=128), 0, CPU, progress=False)
    assert len(losses) == 120
    assert sum(losses[-20:]) / 20 < 0.8 * sum(losses[:20]) / 20
    assert not module.training, "training leaves the module in eval mode"


def test_the_same_seed_gives_identical_weights():
    splits = dataset().load(0)
    a, b, c = (build_module(denoiser(), splits, seed=s) for s in (0, 0, 1))
    assert same_weights(a, b) and not same_weights(a, c), "seeded initialisation"
    for module in (a, b):
        train(module, splits, NoiseSchedule(), SETTINGS, 0, CPU, progress=False)
    assert same_weights(a, b)


def test_checkpoint_is_cached_and_reloaded(tmp_path):
    first, info = fit(tmp_path)
    checkpoints = list((tmp_path / "cache").iterdir())
    assert [p.suffix for p in checkpoints] == [".pt"], "one checkpoint, no temporary files left"
    assert info["cache_hit"] is False and info["checkpoint"] == str(checkpoints[0])
    assert info["cache_key"] in checkpoints[0].name
    second, info2 = fit(tmp_path)
    assert info2["cache_hit"] is True and info2["cache_key"] == info["cache_key"]
    assert same_weights(first, second)
    assert not second.training


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("settings", TrainSettings(steps=51, batch_size=128, lr=3e-3)),
        ("seed", 1),
        ("dataset", dataset(noise=0.1)),
        ("denoiser", denoiser(width=8)),
    ],
    ids=["steps", "seed", "dataset-param", "denoiser-param"],
)
def test_different_settings_get_a_different_cache_key(field, value):
    base = dict(dataset=dataset(), denoiser=denoiser(), schedule=NoiseSchedule(), settings=SETTINGS, seed=0, device=CPU)
    assert cache_key(**base) == cache_key(**{**base, "dataset": dataset(), "denoiser": denoiser()})
    assert cache_key(**{**base, field: value}) != cache_key(**base)


def test_schedule_and_device_are_part_of_the_key():
    base = dict(dataset=dataset(), denoiser=denoiser(), settings=SETTINGS, seed=0)
    key = cache_key(**base, schedule=NoiseSchedule(), device=CPU)
    assert cache_key(**base, schedule=NoiseSchedule("cosine"), device=CPU) != key
    assert cache_key(**base, schedule=NoiseSchedule("linear", 500), device=CPU) != key
    assert cache_key(**base, schedule=NoiseSchedule(), device=torch.device("cuda")) != key


@pytest.mark.parametrize("content", [b"\x00garbage, not a checkpoint", "wrong-state"], ids=["garbage", "wrong-keys"])
def test_a_corrupt_checkpoint_is_reported_and_retrained(tmp_path, content):
    trained, info = fit(tmp_path)
    path = tmp_path / "cache" / info["checkpoint"].rsplit("/", 1)[1]
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save({"not.a.weight": torch.zeros(1)}, path)
    said = []
    retrained, info2 = fit(tmp_path, log=said.append)
    assert info2["cache_hit"] is False
    assert len(said) == 1 and str(path) in said[0] and said[0].endswith("retraining it")
    assert same_weights(trained, retrained), "retraining from the same seed reproduces the weights"
    _, info3 = fit(tmp_path)
    assert info3["cache_hit"] is True, "the retrained weights replaced the bad file"


@pytest.mark.parametrize("bad", [{"steps": 0}, {"batch_size": 1.5}, {"lr": 0}, {"steps": True}])
def test_bad_train_settings(bad):
    with pytest.raises(ValueError, match="training needs"):
        TrainSettings(**bad)
