"""Pretrained diffusers models on rectified-flow and EDM schedulers: tiny ones built from configs, nothing fetched."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import diffbench
from diffbench import pretrained
from diffbench.model import ConditionalModel
from diffbench.noise_process import NoiseProcess
from diffbench.schedule import NoiseSchedule

diffusers = pytest.importorskip("diffusers")

from diffbench_plugins.diffusers import Diffusers  # noqa: E402

from tests.test_diffusers import offline, tiny_unet  # noqa: E402, F401  (offline: the autouse fixture)

T = 50
RUN = ["-d", "digits[per_class=2]", "-e", "shared-noise", "--trials", "2", "--scenario", "offline"]
RUN += ["--repeats", "1", "--device", "cpu", "--no-plots"]


SCHEDULERS = {
    "flow": lambda: diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=3.0),
    "flow-heun": lambda: diffusers.FlowMatchHeunDiscreteScheduler(num_train_timesteps=T),
    "flow-dynamic": lambda: diffusers.FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=T, shift=3.0, use_dynamic_shifting=True
    ),
    "edm": lambda: diffusers.EDMEulerScheduler(num_train_timesteps=T),
    "edm-v": lambda: diffusers.EDMEulerScheduler(num_train_timesteps=T, prediction_type="v_prediction"),
    "edm-dpm-exp": lambda: diffusers.EDMDPMSolverMultistepScheduler(
        num_train_timesteps=T, sigma_schedule="exponential", sigma_data=1.0
    ),
}


def save(folder: Path, which: str) -> Path:
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=SCHEDULERS[which]()).save_pretrained(folder)
    return folder


def load(folder: Path, **params):
    names = [str(d) for d in range(10)]
    return Diffusers(path=str(folder), **params).pretrained((1, 8, 8), 10, names)


# --- the process tables are the scheduler's own --------------------------------------------------------


@pytest.mark.parametrize("which", ["flow", "flow-heun", "flow-dynamic"])
def test_a_flow_scheduler_gives_its_own_sigmas_and_timesteps(tmp_path, which):
    made = load(save(tmp_path / which, which))
    sched = SCHEDULERS[which]()
    process = made.process
    assert made.prediction_type == "flow" and made.alphas_cumprod is None and process.kind == "flow"
    assert torch.equal(process.s, sched.sigmas.double().flip(0)) and torch.equal(process.a, 1 - process.s)
    assert torch.equal(process.model_timesteps.float(), sched.timesteps.flip(0)) and process.num_timesteps == T
    assert process.name == {"flow": "flow-shift3", "flow-heun": "flow", "flow-dynamic": "flow-unshifted"}[which]
    if which == "flow-dynamic":  # diffusers trains on the unshifted sigmas; the shift mu comes at sampling
        assert torch.allclose(process.s, torch.arange(1, T + 1, dtype=torch.float64) / T)


@pytest.mark.parametrize("which", ["edm", "edm-v", "edm-dpm-exp"])
def test_an_edm_scheduler_gives_its_own_sigmas_c_noise_and_sigma_data(tmp_path, which):
    made = load(save(tmp_path / which, which))
    sched = SCHEDULERS[which]()
    process = made.process
    assert made.prediction_type == "edm_denoiser" and process.kind == "edm"
    assert process.sigma_data == sched.config.sigma_data and torch.equal(process.a, torch.ones_like(process.s))
    assert torch.equal(process.s, sched.sigmas[:-1].double().flip(0))
    assert torch.equal(process.model_timesteps.float(), sched.timesteps.flip(0))
    assert process.num_timesteps == (T + 1 if which.startswith("edm") and "dpm" not in which else T)


def as_diffusers(sched, unet, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The noise diffusers' own EDM scheduler reads off the UNet at x = x0 + sigma eps: (x - D) / sigma."""
    view = sigma.reshape(-1, 1, 1, 1)
    inputs = sched.precondition_inputs(x, view)
    raw = unet(inputs, sched.precondition_noise(sigma), class_labels=labels).sample
    return (x - sched.precondition_outputs(x, raw, view)) / view


@pytest.mark.parametrize("which", ["edm", "edm-v", "edm-dpm-exp"])
def test_the_edm_preconditioning_is_diffusers_own_applied_once(tmp_path, which):
    made = load(save(tmp_path / which, which))
    model = ConditionalModel(made.module, made.process, 10, (1, 8, 8), prediction_type=made.prediction_type)
    sched, unet = SCHEDULERS[which](), made.module
    unet = unet.module.unet if which == "edm-v" else unet.unet
    t, c = torch.tensor([0, 10, 25, 40]), torch.tensor([0, 3, 5, 9])
    x = torch.randn(4, 1, 8, 8) * made.process.s[t].float().reshape(-1, 1, 1, 1)
    with torch.inference_mode():
        want = as_diffusers(sched, unet, x, made.process.s[t].float(), c)
        got = model.eps(x, t, c)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_flow_model_is_fed_sigma_times_t_and_its_velocity_becomes_epsilon(tmp_path):
    made = load(save(tmp_path / "flow", "flow"))
    model = ConditionalModel(made.module, made.process, 10, (1, 8, 8), prediction_type="flow")
    sched = SCHEDULERS["flow"]()
    t, c = torch.tensor([0, 10, 25, 49]), torch.tensor([0, 3, 5, 9])
    x0, eps = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8)
    timestep = sched.timesteps.flip(0)[t]
    x_t = sched.scale_noise(x0, timestep, eps)  # diffusers' own forward process
    assert torch.allclose(model.q_sample(x0, t, eps), x_t, atol=1e-6)
    sigma = (timestep / T).reshape(-1, 1, 1, 1)
    with torch.inference_mode():
        v = made.module.unet(x_t, timestep, class_labels=c).sample
        assert torch.allclose(model.eps(x_t, t, c), x_t + (1 - sigma) * v, atol=1e-5)


# --- end to end through the CLI ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "kind", "schedule", "levels", "declared"),
    [("flow", "flow", "flow-shift3", T, "flow"), ("edm", "edm", "edm-karras", T + 1, "edm_denoiser")],
)
def test_a_flow_or_edm_folder_runs_end_to_end_and_the_row_says_its_process(
    tmp_path, cli, which, kind, schedule, levels, declared
):
    folder = save(tmp_path / which, which)
    args = ["run", *RUN, "-m", f"diffusers[path={folder}]", "--out", tmp_path / "run", "--cache", tmp_path / "c"]
    result = cli(*args, "--errors", "bank")
    assert result.exit_code == 0, result.output
    row = pd.read_parquet(tmp_path / "run" / "results.parquet").iloc[0]
    assert row["status"] == "ok", row["error"]
    assert (row["noise_process"], row["schedule"], row["num_timesteps"]) == (kind, schedule, levels)
    assert row["prediction_type"] == row["objective"] == declared and row["train_s"] == 0 and 0 <= row["accuracy"] <= 1
    assert isinstance(row["model_check"], str) and row["model_check"]  # a random model: flagged, still run


# --- bad input: one line, exit 2, before anything runs ------------------------------------------------


def edited(tmp_path: Path, base: Path, name: str, **changes) -> Path:
    folder = tmp_path / name
    if not folder.exists():
        import shutil

        shutil.copytree(base, folder)
    file = folder / "scheduler" / "scheduler_config.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | changes))
    return folder


BAD = {  # name: (base scheduler, changes, the key the line names, the phrase after it)
    "shift a string": ("flow", {"shift": "3"}, "shift", "must be a finite number"),
    "shift negative": ("flow", {"shift": -1.0}, "shift", "must be a number from 0.001"),
    "flow steps zero": ("flow", {"num_train_timesteps": 0}, "num_train_timesteps", "must be an integer from 2"),
    "dynamic a string": ("flow", {"use_dynamic_shifting": "yes"}, "use_dynamic_shifting", "must be true or false"),
    "inverted sigmas": ("flow", {"invert_sigmas": True}, "invert_sigmas", "is true (sigma the signal level"),
    "sigma_max below min": ("edm", {"sigma_max": 0.001}, "sigma_max", "must be above sigma_min (0.002)"),
    "sigma_data zero": ("edm", {"sigma_data": 0}, "sigma_data", "must be a number from"),
    "rho null": ("edm", {"rho": None}, "rho", "must be a finite number"),
    "sigma schedule": ("edm", {"sigma_schedule": "linear"}, "sigma_schedule", "must be one of karras, exponential"),
    "edm sample": ("edm", {"prediction_type": "sample"}, "prediction_type", "must be one of epsilon, v_prediction"),
}


def test_every_bad_scheduler_key_is_one_line_naming_file_and_key_exit_2(tmp_path, cli):
    bases = {which: save(tmp_path / f"base-{which}", which) for which in ("flow", "edm")}
    ve = edited(tmp_path, bases["edm"], "ve", _class_name="ScoreSdeVeScheduler")
    cm = edited(tmp_path, bases["edm"], "cm", _class_name="CMStochasticIterativeScheduler")
    cases = {
        name: (edited(tmp_path, bases[b], name.replace(" ", "-"), **ch), k, p) for name, (b, ch, k, p) in BAD.items()
    }
    cases["variance exploding"] = (ve, "", "uses ScoreSdeVeScheduler, a variance-exploding SDE scheduler")
    cases["consistency"] = (cm, "", "uses CMStochasticIterativeScheduler, a consistency-model scheduler")
    for name, (folder, key, phrase) in cases.items():
        file = folder / "scheduler" / "scheduler_config.json"
        want = f"`{key}` in {file} {phrase}" if key else phrase
        result = cli("run", *RUN, "-m", f"diffusers[path={folder}]", "--out", tmp_path / "run")
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2, (name, result.output)
        assert len(lines) == 1 and lines[0].startswith("diffbench: error:") and want in lines[0], (name, lines)
        assert not (tmp_path / "run").exists(), name
    result = cli("run", *RUN, "-m", f"diffusers[path={bases['flow']},prediction_type=edm_denoiser]")
    assert result.exit_code == 2 and "'edm_denoiser' needs an EDM scheduler" in result.stderr


# --- model_check on the model's own process -----------------------------------------------------------


class Oracle(torch.nn.Module):
    """Knows the one image x0 every sample is: outputs ``kind``'s exact target on ``process`` (+ a class nudge).

    It reads the level from the timestep it is fed (the process's model timesteps, or t itself on VP) and
    undoes c_in where ``preconditioned``, so it is exact only when called as its process calls it.
    """

    def __init__(self, x0, process: NoiseProcess, kind: str, preconditioned: bool = False, nudge: float = 1e-2):
        super().__init__()
        self.x0, self.process, self.kind, self.pre, self.nudge = x0, process, kind, preconditioned, nudge

    def forward(self, x_in, t_in, c):
        p = self.process
        t = t_in.long() if p.kind == "vp" else (p.model_timesteps.float()[None] - t_in[:, None]).abs().argmin(1)
        view = (-1, 1, 1, 1)
        a, s = p.a.float()[t].reshape(view), p.s.float()[t].reshape(view)
        x_t = x_in
        if self.pre:  # x_in = c_in x_t / a
            sigma = s / a
            x_t = x_in * a * (sigma.square() + p.sigma_data**2).sqrt()
        eps = (x_t - a * self.x0) / s
        wanted = pretrained.targets(self.x0.expand_as(eps), eps, p, t)[self.kind]
        return wanted + self.nudge * c.float().reshape(view)


def check(module, process, declared: str) -> str:
    x0 = module.x0.expand(16, -1, -1, -1)
    return pretrained.model_check(module, process, declared, False, x0, torch.arange(16) % 4, 4)


@pytest.fixture
def image():
    return torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_model_check_accepts_a_flow_model_on_its_flow_process(image):
    flow = NoiseProcess.rectified_flow(T, shift=3.0)
    assert check(Oracle(image, flow, "flow"), flow, "flow") == "ok"


def test_model_check_flags_a_flow_model_declared_as_epsilon_on_a_ddpm_process(image):
    vp = NoiseSchedule("linear", T)
    reason = check(Oracle(image, NoiseProcess.variance_preserving(vp), "flow"), vp, "epsilon")
    assert reason.startswith("a rectified-flow model (it predicts eps - x0) declared 'epsilon' on a vp process")
    assert "FlowMatchEulerDiscreteScheduler" in reason and "\n" not in reason


def test_model_check_accepts_an_edm_network_through_its_preconditioning(image):
    edm = NoiseProcess.edm(T)
    assert check(Oracle(image, edm, "edm_denoiser", preconditioned=True), edm, "edm_denoiser") == "ok"


@pytest.mark.parametrize("declared", ["epsilon", "sample", "v_prediction"])
def test_model_check_flags_an_edm_network_run_without_its_preconditioning(image, declared):
    edm = NoiseProcess.edm(T)
    reason = check(Oracle(image, edm, "edm_denoiser", preconditioned=True), edm, declared)
    assert reason.startswith("an EDM network run without its preconditioning: relative error")
    assert f"under '{declared}'" in reason and "declare prediction_type 'edm_denoiser'" in reason


def test_an_edm_folder_run_as_epsilon_is_run_without_preconditioning(tmp_path):
    made = load(save(tmp_path / "edm", "edm"), prediction_type="epsilon")
    assert made.prediction_type == "epsilon" and made.process.kind == "edm"  # a user's override, then checked


# --- the contract: Pretrained.process ----------------------------------------------------------------------


def test_pretrained_takes_a_process_or_alphas_cumprod_and_they_must_agree():
    net = torch.nn.Linear(2, 2)
    flow = NoiseProcess.rectified_flow(T)
    made = pretrained.check_pretrained(diffbench.Pretrained(net, process=flow, prediction_type="flow"), "p")
    assert pretrained.process_of(made) is flow
    agreed = diffbench.Pretrained(net, flow.alphas_cumprod.clone(), "flow", process=flow)
    assert pretrained.process_of(pretrained.check_pretrained(agreed, "p")) is flow
    old = diffbench.Pretrained(net, NoiseSchedule("cosine", T).alphas_cumprod, "v_prediction", schedule="cosine")
    assert isinstance(pretrained.process_of(pretrained.check_pretrained(old, "p")), NoiseSchedule)
    bad = {
        "neither": (diffbench.Pretrained(net), "give the noise process (process=) or the DDPM schedule"),
        "disagree": (
            diffbench.Pretrained(net, NoiseSchedule("cosine", T).alphas_cumprod, process=flow),
            "alphas_cumprod [50] is not the process's ('flow', 50 levels)",
        ),
        "edm type on a flow": (
            diffbench.Pretrained(net, process=flow, prediction_type="edm_denoiser"),
            "'edm_denoiser' needs an EDM process (with sigma_data), got process 'flow' (flow)",
        ),
        "not a process": (diffbench.Pretrained(net, process="flow"), "process must be a diffbench NoiseProcess"),
    }
    for what, (given, phrase) in bad.items():
        with pytest.raises(pretrained.PretrainedError) as caught:
            pretrained.check_pretrained(given, "p")
        assert phrase in str(caught.value) and "\n" not in str(caught.value), what


def train_tiny_unet(folder: Path, which: str, steps: int, loss_of) -> Path:
    """The tiny UNet trained ``steps`` Adam steps on digits batches of 64 by ``loss_of(unet, scheduler, x0, y)``
    and saved with ``SCHEDULERS[which]``."""
    from diffbench_plugins.digits import Digits

    splits, sched, unet = Digits().load(0), SCHEDULERS[which](), tiny_unet()
    optimizer = torch.optim.Adam(unet.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, splits.train_x.shape[0], (64,))
        loss = loss_of(unet, sched, splits.train_x[idx], splits.train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    diffusers.DDPMPipeline(unet=unet.eval(), scheduler=sched).save_pretrained(folder)
    return folder


def train_flow_unet(folder: Path, steps: int = 150) -> Path:
    """The tiny UNet trained a few steps as a rectified flow, by the example's own batches (``noised``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "example", Path(__file__).parents[1] / "examples/train_diffusers_digits.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    def loss_of(unet, sched, x0, y):
        x_t, timestep, target = example.noised(sched, x0, torch.randn_like(x0))
        return torch.nn.functional.mse_loss(unet(x_t, timestep, class_labels=y).sample, target)

    return train_tiny_unet(folder, "flow", steps, loss_of)


@pytest.mark.slow
def test_a_trained_flow_unet_checks_ok_and_flagged_once_its_scheduler_is_swapped_for_ddpm(tmp_path):
    from diffbench_plugins.digits import Digits

    digits = Digits().load(0)
    held_x, held_y = digits.train_x[-32:], digits.train_y[-32:]

    def checked(folder: Path) -> str:
        made = load(folder)
        return pretrained.model_check(
            made.module, pretrained.process_of(made), made.prediction_type, False, held_x, held_y, 10
        )

    folder = train_flow_unet(tmp_path / "flow")
    assert checked(folder) == "ok"
    (folder / "scheduler" / "scheduler_config.json").unlink()
    diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2").save_pretrained(
        folder / "scheduler"
    )
    assert checked(folder).startswith("a rectified-flow model (it predicts eps - x0) declared 'epsilon' on a vp")


def train_edm_unet(folder: Path, steps: int = 150) -> Path:
    """The tiny UNet trained a few steps as an EDM network through diffusers' own preconditioning (Karras et al.'s
    log-normal sigmas, the loss on F's target (x0 - c_skip x) / c_out)."""

    def loss_of(unet, sched, x0, y):
        sd = sched.config.sigma_data
        sigma = (torch.randn(64) * 1.2 - 1.2).exp()
        view = sigma.reshape(-1, 1, 1, 1)
        x = x0 + view * torch.randn_like(x0)
        raw = unet(sched.precondition_inputs(x, view), sched.precondition_noise(sigma), class_labels=y)
        c_skip, c_out = sd**2 / (view**2 + sd**2), view * sd / (view**2 + sd**2).sqrt()
        return torch.nn.functional.mse_loss(raw.sample, (x0 - c_skip * x) / c_out)

    return train_tiny_unet(folder, "edm", steps, loss_of)


@pytest.mark.slow
def test_a_trained_edm_unet_checks_ok_and_flagged_when_run_without_its_preconditioning(tmp_path):
    from diffbench_plugins.digits import Digits

    digits = Digits().load(0)
    held_x, held_y = digits.train_x[-32:], digits.train_y[-32:]
    folder = train_edm_unet(tmp_path / "edm")
    for declared, want in (("", "ok"), ("epsilon", "an EDM network run without its preconditioning")):
        made = load(folder, prediction_type=declared)
        process = pretrained.process_of(made)
        checked = pretrained.model_check(made.module, process, made.prediction_type, False, held_x, held_y, 10)
        assert checked.startswith(want), (declared, checked)
