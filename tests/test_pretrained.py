"""Denoisers that arrive trained (``Denoiser.pretrained``), without diffusers: the contract the core keeps."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from diffbench_plugins.mlp import MLP

import diffbench
from diffbench import pretrained
from diffbench.schedule import NoiseSchedule
from tests.helpers import TINY_DATASET

T = 50


class Net(torch.nn.Module):
    """A tiny random conditional network: a raw prediction of any type, perhaps with a variance half."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(dim + 2, out)
        self.label = torch.nn.Embedding(4, out)

    def forward(self, x_t, t, c):
        features = torch.cat([x_t, t[:, None].float() / T, torch.ones_like(x_t[:, :1])], 1)
        return self.lin(features) + self.label(c)


class Frozen(diffbench.Denoiser):
    name = "frozen"
    params = {"prediction_type": "sample", "learned_variance": False, "latent": False, "classes": 0}

    def check_dataset(self, data_shape, class_names):
        if self.params["classes"] and len(class_names) != self.params["classes"]:
            raise diffbench.ParamError(f"frozen knows {self.params['classes']} classes, not {len(class_names)}")

    def pretrained(self, data_shape, num_classes, class_names):
        torch.manual_seed(0)
        dim = data_shape[0]
        out = 2 * dim if self.params["learned_variance"] else dim
        return diffbench.Pretrained(
            module=Net(dim, out),
            alphas_cumprod=NoiseSchedule("cosine", T).alphas_cumprod,
            prediction_type=self.params["prediction_type"],
            learned_variance=self.params["learned_variance"],
            schedule="cosine",
            source="memory",
            revision="abc",
            encode=(lambda x: 2 * x) if self.params["latent"] else None,
        )


@pytest.fixture
def frozen(register_plugin):
    class Plugin:
        @diffbench.hookimpl
        def register_denoisers(self, register):
            register(Frozen)

    register_plugin(Plugin(), name="frozen-test")


def run(cli, tmp_path, denoiser: str):
    args = ["run", "-d", TINY_DATASET, "-m", denoiser, "-e", "shared-noise", "--trials", "2", "--device", "cpu"]
    args += ["--scenario", "offline", "--repeats", "1", "--out", tmp_path / "run", "--cache", tmp_path / "cache"]
    return cli(*args, "--no-plots")


@pytest.mark.parametrize(
    "denoiser", ["frozen", "frozen[prediction_type=v_prediction,learned_variance=true]", "frozen[latent=true]"]
)
def test_a_pretrained_denoiser_runs_with_its_own_schedule_and_trains_nothing(frozen, cli, tmp_path, denoiser):
    result = run(cli, tmp_path, denoiser)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    row = table.iloc[0]
    assert row["status"] == "ok" and row["schedule"] == "cosine" and row["num_timesteps"] == T
    assert row["model_source"] == "memory" and row["model_revision"] == "abc" and row["train_s"] == 0
    assert row["prediction_type"] == ("v_prediction" if "v_pred" in denoiser else "sample")
    check = row["model_check"]
    assert check == "ok" or result.stderr.count(f"model_check: {check}") == 1  # a failure is said once
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt"))
    assert row["latent"] == ("latent" in denoiser)
    if row["latent"]:
        assert row["encode_s"] > 0 and row["end_to_end_samples_per_s"] < row["samples_per_s"]


def test_a_dataset_the_pretrained_model_cannot_serve_is_one_line_exit_2(frozen, cli, tmp_path):
    result = run(cli, tmp_path, "frozen[classes=3]")
    assert result.exit_code == 2
    assert result.stderr.strip() == "diffbench: error: frozen[classes=3] on " + (
        "spirals[n_train=200,n_test=50]: frozen knows 3 classes, not 2"
    )


def test_a_broken_pretrained_fails_its_cells_with_the_reason(frozen, cli, tmp_path):
    result = run(cli, tmp_path, "frozen[prediction_type=x0]")
    assert result.exit_code == 1
    assert "prediction_type 'x0' is none of epsilon, v_prediction, sample, flow, edm_denoiser" in result.stderr


def test_a_training_objective_on_a_model_that_arrives_trained_is_refused_in_one_line(frozen, cli, tmp_path):
    result = run(cli, tmp_path, "frozen[objective=flow]")
    assert result.exit_code == 1
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert (table["status"] == "failed").all()
    error = table["error"].iloc[0]
    assert "denoiser 'frozen[objective=flow]' arrives trained, so objective=flow" in error and "drop it" in error
    assert "\n" not in error


class VOracle(torch.nn.Module):
    """Knows the one image x0 every sample is: predicts v exactly (plus a class-dependent nudge)."""

    def __init__(self, x0: torch.Tensor, abar: torch.Tensor, class_effect: float = 1e-2) -> None:
        super().__init__()
        self.x0, self.abar, self.class_effect = x0, abar.float(), class_effect

    def forward(self, x_t, t, c):
        a = self.abar[t].sqrt().reshape(-1, 1, 1, 1)
        s = (1 - self.abar[t]).sqrt().reshape(-1, 1, 1, 1)
        eps = (x_t - a * self.x0) / s
        return a * eps - s * self.x0 + self.class_effect * c.float().reshape(-1, 1, 1, 1)


def test_model_check_accepts_the_declared_type_and_flags_a_wrong_one():
    schedule = NoiseSchedule("cosine", T)
    x0 = torch.rand(1, 1, 8, 8) * 2 - 1
    data, y = x0.repeat(16, 1, 1, 1), torch.arange(16) % 4
    oracle = VOracle(x0, schedule.alphas_cumprod)
    assert pretrained.model_check(oracle, schedule, "v_prediction", False, data, y, 4) == "ok"
    reason = pretrained.model_check(oracle, schedule, "epsilon", False, data, y, 4)
    assert reason.startswith("prediction_type 'epsilon' does not fit") and "'v_prediction'" in reason
    deaf = VOracle(x0, schedule.alphas_cumprod, class_effect=0.0)
    assert "does not depend on the class" in pretrained.model_check(deaf, schedule, "v_prediction", False, data, y, 4)


def test_a_checkpoint_is_refused_for_any_denoiser_that_arrives_trained(frozen, cli, tmp_path):
    torch.save({"lin.weight": torch.zeros(2, 4)}, tmp_path / "w.pt")
    args = ["run", "-d", TINY_DATASET, "-m", "frozen", "--device", "cpu", "--checkpoint", tmp_path / "w.pt"]
    result = cli(*args, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "diffbench: error: --checkpoint loads weights into a model diffbench builds, but frozen arrives trained "
        "with its own weights: drop --checkpoint (or select a denoiser diffbench builds)"
    )
    assert not (tmp_path / "run").exists()
    assert pretrained.arrives_trained(Frozen()) and not pretrained.arrives_trained(MLP())
