"""Converting a denoiser's raw output (epsilon, v, x0, a flow velocity or an EDM network's) to epsilon.

On any noise process x_t = a x0 + s eps (``diffbench.noise_process``; ``docs/noise-processes.md``):

- ``epsilon``: the output is eps.
- ``sample`` (x0): eps = (x_t - a x0) / s.
- ``v_prediction`` (Salimans & Ho's v = a eps - s x0): eps = (a v + s x_t) / (a^2 + s^2); on a VP process
  a^2 + s^2 = 1, so eps = a v + s x_t, computed exactly as before the generalisation.
- ``flow`` (rectified-flow velocity v = eps - x0): eps = (x_t + a v) / (a + s); on a flow a + s = 1,
  so eps = x_t + (1 - sigma) v.
- ``edm_denoiser``: the module is a raw EDM network F (Karras et al. 2022, Table 1). With the equivalent
  variance-exploding input x = x_t / a and sigma = s / a (on an EDM process a = 1, so x = x_t), the module is
  called as F(c_in x, c_noise) (``inputs``; c_noise is the process's ``model_timesteps``), and
  D = c_skip x + c_out F, eps = (x - D) / sigma, with c_in = 1 / sqrt(sigma^2 + sd^2),
  c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), sd = the process's sigma_data.
"""

from __future__ import annotations

import torch

from diffbench.noise_process import NoiseProcess, as_process

#: What a pretrained VP denoiser's output may be: diffusers' ``scheduler.config.prediction_type`` values.
#: What diffbench can train a built-in network to predict (``[train] objective``; ``flow`` is the velocity).
OBJECTIVES = ("epsilon", "v_prediction", "flow")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: What the other processes' networks predict: a rectified flow's velocity, an EDM network's raw output.
PROCESS_PREDICTION_TYPES = ("flow", "edm_denoiser")
ALL_PREDICTION_TYPES = PREDICTION_TYPES + PROCESS_PREDICTION_TYPES


class ToEpsilon:
    """``convert(output, x_t, t) -> eps``: keeps the first C channels, then maps the prediction to epsilon.

    ``inputs(x_t, t)`` is what the module is fed in place of x_t (c_in x for an EDM network, else x_t).
    The tables are made once, in float64 from the process's a and s, and cast to the model's device and dtype.
    """

    def __init__(
        self,
        prediction_type: str,
        learned_variance: bool,
        process: NoiseProcess | torch.Tensor,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        """``process``: a NoiseProcess, a NoiseSchedule, or an ``alphas_cumprod [T]`` (a VP process)."""
        if prediction_type not in ALL_PREDICTION_TYPES:
            known = ", ".join(ALL_PREDICTION_TYPES)
            raise ValueError(f"unknown prediction_type '{prediction_type}'; choose one of {known}")
        process = (
            NoiseProcess.variance_preserving(process) if isinstance(process, torch.Tensor) else as_process(process)
        )
        self.prediction_type = prediction_type
        self.learned_variance = learned_variance
        if prediction_type == "edm_denoiser" and process.sigma_data is None:
            raise ValueError(
                f"prediction_type 'edm_denoiser' needs a process with sigma_data (an EDM one), got '{process.name}'"
            )
        a, s = process.a, process.s
        self.sqrt_abar = a.to(device, dtype)  # the names of the VP tables they were: a and s
        self.sqrt_one_minus_abar = s.to(device, dtype)
        self.norm = None  # the divisor that is 1 on the process these types are native to
        if prediction_type == "v_prediction" and process.kind != "vp":
            self.norm = (a.square() + s.square()).to(device, dtype)
        elif prediction_type == "flow":
            self.norm = (a + s).to(device, dtype)
        self.edm = _edm_tables(process, device, dtype) if prediction_type == "edm_denoiser" else None

    def inputs(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the module is fed for x_t: c_in x_t / a for an EDM network, x_t itself otherwise."""
        if self.edm is None:
            return x_t
        return x_t * self.edm[0][t].reshape((-1,) + (1,) * (x_t.dim() - 1))

    def __call__(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.learned_variance:
            output = output[:, : x_t.shape[1]]
        if self.prediction_type == "epsilon":
            return output
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        a = self.sqrt_abar[t].reshape(shape)
        s = self.sqrt_one_minus_abar[t].reshape(shape)
        if self.prediction_type == "v_prediction":
            eps = torch.addcmul(s * x_t, a, output)
        elif self.prediction_type == "flow":
            eps = torch.addcmul(x_t, a, output)
        elif self.prediction_type == "edm_denoiser":
            _, x_scale, f_scale = (table[t].reshape(shape) for table in self.edm)
            return x_t * x_scale - output * f_scale  # (x - c_skip x - c_out F) / sigma, x = x_t / a
        else:
            return (x_t - a * output) / s
        return eps if self.norm is None else eps / self.norm[t].reshape(shape)


def _edm_tables(process, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[T]`` tables of the EDM preconditioning on x_t: c_in / a; (1 - c_skip) / (a sigma); c_out / sigma.

    With x = x_t / a and sigma = s / a: eps = (x - c_skip x - c_out F) / sigma = x_t (1 - c_skip) / (a sigma)
    - F c_out / sigma, and c_out / sigma = sd / sqrt(sigma^2 + sd^2).
    """
    sd, a = process.sigma_data, process.a
    sigma = process.ve_sigmas()
    total = sigma.square() + sd**2
    c_in = total.rsqrt()
    c_skip = sd**2 / total
    x_scale = (1 - c_skip) / (a * sigma)  # = sigma / (a total)
    f_scale = sd * total.rsqrt()
    return tuple(table.to(device, dtype) for table in (c_in / a, x_scale, f_scale))


def needs_conversion(prediction_type: str, learned_variance: bool) -> bool:
    return prediction_type != "epsilon" or learned_variance
