"""Training the denoiser, and the checkpoint cache keyed by everything that determines the weights."""

import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from filelock import FileLock

import diffbench
from diffbench import plugins
from diffbench.checkpoints import file_sha256, hash_path
from diffbench.contract import DataError
from diffbench.schedule import NoiseSchedule
from diffbench.training import TrainSettings, build_module, cache_key, load_or_train, train
from tests.helpers import error_lines, write_suite

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
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    checkpoints = list((tmp_path / "cache").glob("*.pt"))
    assert len(checkpoints) == 1 and not any(name.endswith(".tmp") for name in files), "no temporary files left"
    assert f"{checkpoints[0].name}.sha256" in files
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
        hash_path(path).write_text(file_sha256(path))  # intact bytes that do not fit the denoiser
    said = []
    retrained, info2 = fit(tmp_path, log=said.append)
    assert info2["cache_hit"] is False
    assert len(said) == 1 and str(path) in said[0] and said[0].endswith("retraining it")
    assert same_weights(trained, retrained), "retraining from the same seed reproduces the weights"
    _, info3 = fit(tmp_path)
    assert info3["cache_hit"] is True, "the retrained weights replaced the bad file"


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped-bytes":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 8]) + data[middle + 8 :])
    else:
        hash_path(path).unlink()


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("truncated", "hash mismatch"),
        ("flipped-bytes", "hash mismatch"),
        ("hash-missing", "hash file missing or unreadable"),
    ],
)
def test_a_checkpoint_that_fails_its_hash_is_reported_and_retrained(tmp_path, how, reason):
    trained, info = fit(tmp_path)
    path = Path(info["checkpoint"])
    damage(path, how)
    said = []
    retrained, info2 = fit(tmp_path, log=said.append)
    assert info2["cache_hit"] is False
    assert said == [f"cached checkpoint '{path}' is corrupt ({reason}); retraining it"]
    assert same_weights(trained, retrained)
    assert hash_path(path).read_text().split()[0] == file_sha256(path), "re-saved with a fresh hash"
    _, info3 = fit(tmp_path)
    assert info3["cache_hit"] is True


def test_a_held_cache_lock_makes_the_next_caller_wait_then_load(tmp_path):
    _, info = fit(tmp_path)
    said, got, waiting = [], {}, threading.Event()

    def log(message):
        said.append(message)
        waiting.set()

    with FileLock(f"{info['checkpoint']}.lock"):
        waiter = threading.Thread(target=lambda: got.update(fit(tmp_path, log=log)[1]))
        waiter.start()
        assert waiting.wait(timeout=60) and not got, "blocked while another holder has the lock"
    waiter.join(timeout=60)
    assert got["cache_hit"] is True
    assert len(said) == 1 and said[0].startswith("waiting for another process") and info["checkpoint"] in said[0]


def test_two_callers_at_once_train_the_model_only_once(tmp_path):
    start = threading.Barrier(2)
    infos = []

    def call():
        start.wait()
        infos.append(fit(tmp_path, log=lambda message: None)[1])

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(info["cache_hit"] for info in infos) == [False, True]


@pytest.mark.parametrize("bad", [{"steps": 0}, {"batch_size": 1.5}, {"lr": 0}, {"steps": True}])
def test_bad_train_settings(bad):
    with pytest.raises(ValueError, match="training needs"):
        TrainSettings(**bad)


# bring your own model: `diffbench run --checkpoint PATH` -------------------------------------------------------


def offline(folder: Path):
    frame = pd.read_parquet(folder / "results.parquet")
    return frame[frame["scenario"] == "offline"].sort_values("trials").reset_index(drop=True)


@pytest.mark.slow
def test_a_given_checkpoint_is_benchmarked_without_training(cli, tmp_path):
    suite = write_suite(tmp_path / "tiny.toml", max_time_s=0.2)
    assert (
        cli("run", "--suite", suite, "--out", tmp_path / "cached", "--cache", tmp_path / "c", "--no-plots").exit_code
        == 0
    )
    (trained,) = (tmp_path / "c").glob("*.pt")
    mine = tmp_path / "my_model.pt"
    mine.write_bytes(trained.read_bytes())
    args = ["--suite", suite, "--checkpoint", mine, "--no-cache", "--no-plots", "--out", tmp_path / "mine"]
    result = cli("run", *args)
    assert result.exit_code == 0, result.output
    assert f"loaded weights from {mine}" in result.stderr and "trained in" not in result.stderr
    a, b = offline(tmp_path / "cached"), offline(tmp_path / "mine")
    assert (b["train_s"] == 0).all() and not b["cache_hit"].any()
    assert a["accuracy"].tolist() == b["accuracy"].tolist()


def test_a_checkpoint_that_does_not_fit_names_the_tensors(cli, tmp_path):
    other = tmp_path / "other.pt"
    torch.save(denoiser(width=8).build((2,), 2).state_dict(), other)
    suite = write_suite(tmp_path / "tiny.toml", trials=[1], max_time_s=0.2)
    result = cli("run", "--suite", suite, "--checkpoint", other, "--no-plots", "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert f"checkpoint '{other}' does not fit " in result.stderr
    assert "shape mismatch: " in result.stderr and "(checkpoint [8, " in result.stderr
    assert "give the denoiser the params it was trained with" in result.stderr


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x00garbage", "cannot be read as a weights-only state dict ("),
        ({"step": 3}, "is not a state dict of tensors (save module.state_dict())"),
    ],
    ids=["garbage", "not-tensors"],
)
def test_an_unreadable_checkpoint_is_one_line_before_anything_runs(cli, tmp_path, content, reason):
    path = tmp_path / "bad.pt"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    result = cli("run", "-m", "mlp", "--checkpoint", path, "--out", tmp_path / "run")
    assert result.exit_code == 2
    (line,) = [line for line in error_lines(result) if "CUDA" not in line]
    assert line.startswith(f"diffbench: error: checkpoint '{path}' {reason}")
    assert "\n" not in line and "PyTorch 2.6" not in line
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_needs_exactly_one_denoiser(cli, tmp_path):
    result = cli("run", "-m", "mlp", "-m", "resmlp", "--checkpoint", tmp_path / "x.pt", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "--checkpoint holds one model: select exactly one denoiser" in result.stderr


def test_a_missing_checkpoint_is_one_line(cli, tmp_path):
    result = cli("run", "-m", "mlp", "--checkpoint", tmp_path / "none.pt", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert error_lines(result)[-1] == f"diffbench: error: checkpoint '{tmp_path / 'none.pt'}' does not exist"


def test_training_uses_the_fused_adam_where_torch_has_one_and_plain_adam_elsewhere(monkeypatch):
    from diffbench import training

    module = torch.nn.Linear(3, 2)
    fused_cpu = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 4)
    optimizer = training.adam(module, 0.01)
    assert optimizer.defaults["lr"] == 0.01
    assert bool(optimizer.defaults.get("fused")) == fused_cpu
    real = torch.optim.Adam

    def no_fused_kernel(params, lr, fused=None):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, lr=lr)

    monkeypatch.setattr(torch.optim, "Adam", no_fused_kernel)
    plain = training.adam(module, 0.01)
    assert not plain.defaults.get("fused") and len(plain.param_groups[0]["params"]) == 2


def test_weights_that_cannot_be_allocated_are_one_line_naming_the_denoiser():
    class Huge(diffbench.Denoiser):
        name = "huge"
        params = {"width": 10**6}

        def build(self, data_shape, num_classes):
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                "you tried to allocate 4000000000000 bytes. Error code 12 (Cannot allocate memory)"
            )

    y = torch.tensor([0, 1])
    splits = diffbench.Splits(torch.zeros(2, 2), y, torch.zeros(2, 2), y, ["a", "b"])
    with pytest.raises(DataError) as info:
        build_module(Huge(), splits, 0)
    assert str(info.value) == (
        "denoiser 'huge' cannot be built: its weights need more memory than is available "
        "(tried to allocate 4e+03 GB); give it smaller params"
    )
