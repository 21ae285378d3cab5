"""The example plugin keeps diffbench's contract, is found by its entry point, and runs end to end."""

from __future__ import annotations

import diffbench
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from diffbench import plugins
from diffbench.cli import main
from diffbench.schedule import NoiseSchedule
from diffbench.testing import TinyDenoiser, check_dataset, check_estimator, tiny_model

from diffbench_plugin_example import Midrange, Rings

torch.set_num_threads(1)  # tiny models gain nothing from threads


@pytest.fixture(autouse=True)
def no_stray_plugins(monkeypatch):
    monkeypatch.delenv("DIFFBENCH_PLUGINS", raising=False)


def test_rings_keeps_the_contract():
    check_dataset(Rings)
    check_dataset(Rings(k=5, n_train=50, n_test=20, noise=0.0), seed=1)


def test_midrange_keeps_the_contract():
    check_estimator(Midrange)
    check_estimator(Midrange(low=0.0, high=0.1), data_shape=(1, 4, 4), num_classes=4, trials=5)


def test_rings_are_concentric_and_balanced():
    splits = Rings(k=4, n_train=400, n_test=40, noise=0.0).load(0)
    radius = splits.train_x.norm(dim=1)
    assert torch.allclose(radius, 2.0 * (splits.train_y + 1) / 4, atol=1e-5)
    assert torch.bincount(splits.train_y).tolist() == [100] * 4


def test_bad_params_are_refused():
    with pytest.raises(diffbench.ParamError, match="low < high"):
        Midrange(low=0.8, high=0.2)
    with pytest.raises(diffbench.ParamError, match="k >= 2"):
        Rings(k=1)


class RecordingDenoiser(TinyDenoiser):
    def forward(self, x_t, t, c):
        self.seen = t.clone()
        return super().forward(x_t, t, c)


def test_midrange_scores_every_class_on_an_even_grid_in_the_middle_half():
    module = RecordingDenoiser((2,), 3)
    model = diffbench.ConditionalModel(module, NoiseSchedule("linear", 1000), 3, (2,))
    Midrange().errors(model, torch.zeros(2, 2), 4, torch.Generator().manual_seed(0))
    assert model.nfe == 2 * 4 * 3
    assert sorted(set(module.seen.tolist())) == [312, 437, 562, 687]


def test_midrange_errors_are_the_denoising_errors_of_its_draws():
    model = tiny_model((2,), num_classes=3)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    err = Midrange().errors(model, x, 2, torch.Generator().manual_seed(0))
    t = Midrange().timesteps(model.num_timesteps, 2, model.device).expand(4, 2).reshape(8)
    eps = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))  # the same draw, by hand
    x_t = model.q_sample(x.repeat_interleave(2, 0), t, eps)
    by_class = [(model.eps(x_t, t, torch.full((8,), k)) - eps).square().mean(1) for k in range(3)]
    assert torch.allclose(err, torch.stack(by_class, 1).view(4, 2, 3).mean(1))


def test_registered_through_the_entry_point():
    found = plugins.registry()
    for kind, name in (("dataset", "rings"), ("estimator", "midrange")):
        assert found[kind][name].source.startswith("diffbench-plugin-example 0.1.0 ("), found[kind][name].source


def test_diffbench_run_end_to_end(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text(
        'datasets = ["rings[n_train=200,n_test=40]", "spirals[n_train=200,n_test=40]"]\n'
        'denoisers = ["mlp[width=16,depth=1]"]\n'
        'estimators = ["midrange", "shared-noise"]\n'
        'trials = [1]\ntimesteps = 100\ndevices = ["cpu"]\nrepeats = 1\nscenarios = ["offline"]\n'
        "[train]\nsteps = 20\n"
    )
    out = tmp_path / "run"
    args = ["run", "--suite", suite, "--cache", tmp_path / "cache", "--out", out, "--no-plots"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out / "results.parquet")
    assert (table["status"] == "ok").all(), table["error"].tolist()
    assert sorted(zip(table["dataset"], table["estimator"], strict=True)) == [
        ("rings", "midrange"),
        ("rings", "shared-noise"),
        ("spirals", "midrange"),
        ("spirals", "shared-noise"),
    ]
    rings = table[table["dataset"] == "rings"]
    assert (rings["nfe_per_sample"] == 3).all()  # 1 trial x 3 classes, read from the model's counter
    assert (rings["p_estimator_low"].dropna() == 0.25).all()
