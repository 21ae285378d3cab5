"""Noise processes (VP, rectified flow, EDM), their conversions to epsilon and the weightings built on them."""

import math

import pytest
import torch

from diffbench.model import ConditionalModel
from diffbench.montecarlo import WEIGHTINGS, timestep_weights
from diffbench.noise_process import NoiseProcess, as_process
from diffbench.parameterisation import ToEpsilon
from diffbench.schedule import NoiseSchedule

PROCESSES = {
    "vp": lambda: NoiseProcess.variance_preserving(NoiseSchedule("linear", 1000)),
    "flow": lambda: NoiseProcess.rectified_flow(1000),
    "flow-shift3": lambda: NoiseProcess.rectified_flow(1000, shift=3.0),
    "edm": lambda: NoiseProcess.edm(1000, 0.002, 80.0),
}


def test_flow_sigmas_and_timesteps_match_diffusers_flow_match_euler():
    flow = NoiseProcess.rectified_flow(1000)
    assert flow.s[0].item() == pytest.approx(1e-3) and flow.s[-1].item() == 1.0, "sigma 1/T ... 1, more noise at t up"
    assert torch.equal(flow.a, 1 - flow.s)
    assert flow.model_timesteps[-1].item() == pytest.approx(1000.0) and flow.model_timesteps[0].item() == 1.0
    shifted = NoiseProcess.rectified_flow(1000, shift=3.0)
    sigma = 0.25
    assert shifted.s[249].item() == pytest.approx(3 * sigma / (1 + 2 * sigma)), "diffusers' shift formula"
    assert shifted.name == "flow-shift3" and shifted.describe()["noise_process"] == "flow"


def test_edm_sigmas_are_karras_rho_spaced_from_sigma_min():
    edm = NoiseProcess.edm(18, 0.002, 80.0, rho=7.0)
    assert edm.s[0].item() == pytest.approx(0.002) and edm.s[-1].item() == pytest.approx(80.0)
    mid = (0.002 ** (1 / 7) + 0.5 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    assert NoiseProcess.edm(3, 0.002, 80.0).s[1].item() == pytest.approx(mid)
    assert torch.equal(edm.a, torch.ones(18, dtype=torch.float64))
    assert torch.allclose(edm.model_timesteps, edm.s.log() / 4), "c_noise = ln(sigma) / 4"
    assert edm.sigma_data == 0.5


@pytest.mark.parametrize("name", PROCESSES)
def test_equivalent_abar_has_the_process_snr(name):
    process = PROCESSES[name]()
    abar = process.alphas_cumprod
    a, s = process.a, process.s
    assert torch.allclose(abar, a**2 / (a**2 + s**2))
    assert (abar.diff() <= 0).all(), "index t up means more noise under every process"
    assert torch.allclose(torch.cumprod(1 - process.betas, 0), abar), "the equivalent betas give the abar"


def test_vp_process_keeps_the_schedule_bit_for_bit():
    schedule = NoiseSchedule("cosine", 1000)
    vp = as_process(schedule)
    assert vp.kind == "vp" and vp.name == "cosine"
    assert vp.betas is schedule.betas and vp.alphas_cumprod is schedule.alphas_cumprod
    assert torch.equal(vp.a, schedule.alphas_cumprod.sqrt()) and torch.equal(vp.model_timesteps, torch.arange(1000))


@pytest.mark.parametrize("name", PROCESSES)
def test_q_sample_is_a_x0_plus_s_eps_and_matches_the_model(name):
    process = PROCESSES[name]()
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(4, 3, generator=gen).double()
    t = torch.tensor([0, 10, 500, 999])
    expected = process.a[t, None] * x0 + process.s[t, None] * eps
    assert torch.allclose(process.q_sample(x0, t, eps), expected)
    model = ConditionalModel(torch.nn.Identity(), process, 2, (3,), dtype=torch.float64)
    assert torch.allclose(model.q_sample(x0, t, eps), expected)


def _targets(process, x0, eps, t):
    """Each prediction type's exact target for x_t = a x0 + s eps (the EDM one: the raw network's F)."""
    a, s = process.a[t, None], process.s[t, None]
    x_t = a * x0 + s * eps
    targets = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0, "flow": eps - x0}
    if process.sigma_data is not None:  # D = c_skip x + c_out F  =>  F = (x0 - c_skip x) / c_out, x = x_t / a
        sd, sigma = process.sigma_data, s / a
        c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt()
        targets["edm_denoiser"] = (x0 - c_skip * x_t / a) / c_out
    return x_t, targets


@pytest.mark.parametrize("name", PROCESSES)
def test_every_exact_prediction_converts_back_to_its_epsilon(name):
    process = PROCESSES[name]()
    gen = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 3, 250, 500, 900, 998])
    x0, eps = torch.randn(6, 5, generator=gen).double(), torch.randn(6, 5, generator=gen).double()
    x_t, targets = _targets(process, x0, eps, t)
    for kind, target in targets.items():
        convert = ToEpsilon(kind, False, process, torch.device("cpu"), torch.float64)
        assert torch.allclose(convert(target, x_t, t), eps, atol=1e-6), f"{kind} on {name}"


def test_edm_network_is_fed_c_in_x_and_c_noise():
    edm = NoiseProcess.edm(10, 0.002, 80.0, sigma_data=0.5)
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, t, c):
            seen.update(x=x, t=t)
            return torch.zeros_like(x)

    model = ConditionalModel(Spy(), edm, 2, (3,), prediction_type="edm_denoiser", dtype=torch.float64)
    x_t, t = torch.ones(2, 3, dtype=torch.float64), torch.tensor([0, 9])
    eps = model.eps(x_t, t, torch.tensor([0, 1]))
    sigma = edm.s[t]
    assert torch.allclose(seen["x"][:, 0], 1 / (sigma**2 + 0.25).sqrt()), "c_in x"
    assert torch.allclose(seen["t"], sigma.log() / 4), "c_noise"
    c_skip = 0.25 / (sigma**2 + 0.25)
    assert torch.allclose(eps[:, 0], (1 - c_skip) / sigma), "F = 0: D = c_skip x, eps = (x - D) / sigma"


def test_flow_network_is_fed_sigma_times_1000_and_vp_the_index():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t, c):
            seen.append(t)
            return torch.zeros_like(x)

    t = torch.tensor([0, 499, 999])
    for process in (NoiseProcess.rectified_flow(1000), NoiseSchedule("linear", 1000)):
        ConditionalModel(Spy(), process, 2, (2,)).eps(torch.zeros(3, 2), t, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(seen[0], torch.tensor([1.0, 500.0, 1000.0])) and seen[0].is_floating_point()
    assert seen[1] is t, "a VP module is fed the integer index itself"


def test_edm_denoiser_needs_sigma_data_and_bad_inputs_are_one_line():
    with pytest.raises(ValueError, match="needs a process with sigma_data"):
        ToEpsilon("edm_denoiser", False, NoiseProcess.rectified_flow(10), torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="shift > 0"):
        NoiseProcess.rectified_flow(10, shift=0)
    with pytest.raises(ValueError, match="sigma_max above sigma_min"):
        NoiseProcess.edm(10, 1.0, 0.5)
    with pytest.raises(ValueError, match="at least 2"):
        NoiseProcess.edm(1)
    with pytest.raises(ValueError, match="must increase within"):
        NoiseProcess.rectified_flow(sigmas=torch.tensor([0.5, 0.2]))
    with pytest.raises(ValueError, match="unknown noise process kind"):
        NoiseProcess("ve", "x", torch.ones(2), torch.ones(2), torch.ones(2))


def _model(process):
    return ConditionalModel(torch.nn.Identity(), process, 2, (2,), dtype=torch.float64)


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_weightings_are_finite_nonnegative_and_average_one(name, weighting):
    w = timestep_weights(_model(PROCESSES[name]()), weighting)
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert w.mean().item() == pytest.approx(1.0)


def test_velocity_and_x0_weights_are_the_conversion_factors():
    flow = NoiseProcess.rectified_flow(100)
    w = timestep_weights(_model(flow), "velocity")
    expected = (1 - flow.s[:-1]) ** -2  # the last level (sigma = 1) tells nothing of x0: weight 0
    assert w[-1].item() == 0.0
    assert torch.allclose(w[:-1] / w[0], expected / expected[0])
    x0 = timestep_weights(_model(flow), "x0")
    ratio = (flow.s[:-1] / flow.a[:-1]) ** 2
    assert torch.allclose(x0[:-1] / x0[0], ratio / ratio[0])
    vp = NoiseSchedule("linear", 100)
    w_vp = timestep_weights(_model(vp), "velocity")
    assert torch.allclose(w_vp / w_vp[0], vp.alphas_cumprod[0] / vp.alphas_cumprod), "VP v-error: 1 / abar"
    w_edm = timestep_weights(_model(NoiseProcess.edm(50)), "velocity")
    assert torch.allclose(w_edm, torch.ones(50, dtype=torch.float64)), "EDM: dx/dsigma = eps, factor 1"


def test_vp_elbo_weights_are_unchanged_by_the_generalisation():
    schedule = NoiseSchedule("linear", 1000)
    model = ConditionalModel(torch.nn.Identity(), schedule, 2, (2,))
    betas, abar = model.betas.double(), model.alphas_cumprod.double()
    w = betas / (2 * (1 - betas) * (1 - abar))
    assert torch.equal(timestep_weights(model, "elbo"), (w / w.mean()).to(model.dtype))


def test_edm_elbo_weight_is_the_vdm_snr_difference_of_the_equivalent_process():
    edm = NoiseProcess.edm(50)
    w = timestep_weights(_model(edm), "elbo")
    snr = edm.snr()
    # discrete VLB on the equivalent abar (sigma^2 = beta): beta / (2 alpha (1 - abar)) with alpha = abar_t / abar_t-1
    abar = snr / (1 + snr)
    alpha = abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    expected = (1 - alpha) / (2 * alpha * (1 - abar))
    assert torch.allclose(w, expected / expected.mean())
    assert not math.isclose(w[0].item(), w[-1].item())


def test_the_bank_key_holds_the_process_and_a_vp_key_is_unchanged():
    import hashlib

    from diffbench.bank import bank_key

    flow = NoiseProcess.rectified_flow(100)
    same_abar = NoiseProcess.variance_preserving(flow.alphas_cumprod.clamp(max=1 - 1e-12))
    same_abar.alphas_cumprod = flow.alphas_cumprod  # a VP process with the flow's very abar
    keys = {bank_key("w", _model(p), "cpu") for p in (flow, same_abar, NoiseProcess.rectified_flow(100, shift=3.0))}
    assert len(keys) == 3, "a flow and a VP process of the same SNR keep apart; so do two flows"
    vp = _model(NoiseSchedule("linear", 100))
    h = hashlib.sha256(b"w")
    h.update(vp.alphas_cumprod.to("cpu", torch.float64).numpy().tobytes())
    h.update(b"epsilon|2|[2]|cpu")
    h.update(f"torch={torch.__version__}|losses=l2,l1,huber".encode())
    assert bank_key("w", vp, "cpu") == h.hexdigest()[:20], "VP keys as before processes existed"


@pytest.mark.parametrize("name", PROCESSES)
def test_a_process_record_round_trips_exactly(name):
    process = PROCESSES[name]()
    back = NoiseProcess.from_record(process.record())
    assert (back.kind, back.name, back.sigma_data) == (process.kind, process.name, process.sigma_data)
    for table in ("a", "s", "model_timesteps", "alphas_cumprod"):
        assert torch.equal(getattr(back, table), getattr(process, table)), table
