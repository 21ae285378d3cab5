"""Noise processes: x_t = a_t x0 + s_t eps over T discrete levels, indexed by integer t as estimators draw them.

Three kinds, each the process some model was trained on (``docs/noise-processes.md`` has every formula):

- ``vp``: variance preserving (DDPM): a = sqrt(abar), s = sqrt(1 - abar); the network is fed t itself.
- ``flow``: rectified flow (SD3, Esser et al. 2024): a = 1 - sigma, s = sigma, diffusers'
  ``FlowMatchEulerDiscreteScheduler`` sigmas (with its ``shift``); the network is fed sigma * 1000.
- ``edm``: variance exploding with Karras et al.'s (2022) sigmas: a = 1, s = sigma; the network is fed
  c_noise = ln(sigma) / 4 and called through the EDM preconditioning (``diffbench.parameterisation``).

Index t increasing means more noise under every kind. Every process exposes the equivalent
``alphas_cumprod`` abar = a^2 / (a^2 + s^2) (a VP process's own), so estimators written for DDPM
(reading abar, SNR = abar / (1 - abar)) see the same signal-to-noise ratio on every process.
"""

from __future__ import annotations

import math

import torch

from diffbench.schedule import NoiseSchedule

KINDS = ("vp", "flow", "edm")
FLOW_TIMESTEP_SCALE = 1000.0  # diffusers' FlowMatchEulerDiscreteScheduler feeds the network sigma * 1000


class NoiseProcess:
    """One noise process on T levels: float64 CPU tables ``a [T]``, ``s [T]``, ``model_timesteps [T]``.

    Build it with ``variance_preserving``, ``rectified_flow`` or ``edm``. ``alphas_cumprod`` and
    ``betas`` are the process's own (VP) or those of the equivalent VP process (abar = a^2 / (a^2 + s^2)),
    so code written for DDPM schedules keeps working. ``sigma_data`` is EDM's (None otherwise).
    """

    def __init__(
        self,
        kind: str,
        name: str,
        a: torch.Tensor,
        s: torch.Tensor,
        model_timesteps: torch.Tensor,
        sigma_data: float | None = None,
        alphas_cumprod: torch.Tensor | None = None,
        betas: torch.Tensor | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown noise process kind '{kind}'; choose one of {', '.join(KINDS)}")
        a, s = _table(a, "a"), _table(s, "s")
        model_timesteps = torch.as_tensor(model_timesteps)
        if not (a.shape == s.shape == model_timesteps.shape[:1] and a.numel() >= 2):
            raise ValueError(
                f"a noise process needs a, s and model_timesteps of one length T >= 2, got "
                f"{list(a.shape)}, {list(s.shape)} and {list(model_timesteps.shape)}"
            )
        if not (torch.all(a >= 0) and torch.all(s > 0) and torch.all(a + s > 0)):
            raise ValueError("a noise process needs a >= 0 and s > 0 at every level")
        self.kind, self.name = kind, name
        self.a, self.s = a, s
        self.model_timesteps = model_timesteps
        self.num_timesteps = a.numel()
        self.sigma_data = sigma_data
        self.alphas_cumprod = a.square() / (a.square() + s.square()) if alphas_cumprod is None else alphas_cumprod
        abar = self.alphas_cumprod
        self.betas = 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]]) if betas is None else betas

    # -- constructors -------------------------------------------------------------------------------------------

    @classmethod
    def variance_preserving(cls, schedule: NoiseSchedule | torch.Tensor, name: str | None = None) -> NoiseProcess:
        """The DDPM process of a ``NoiseSchedule`` (its betas kept bit for bit) or of an ``alphas_cumprod [T]``."""
        if not isinstance(schedule, NoiseSchedule):
            schedule = NoiseSchedule.from_alphas_cumprod(schedule, name or "custom")
        abar = schedule.alphas_cumprod
        T = schedule.num_timesteps
        a, s = abar.sqrt(), (1 - abar).sqrt()
        steps = torch.arange(T, dtype=torch.long)
        return cls("vp", name or schedule.kind, a, s, steps, None, abar, schedule.betas)

    @classmethod
    def rectified_flow(
        cls, num_timesteps: int = 1000, shift: float = 1.0, sigmas: torch.Tensor | None = None
    ) -> NoiseProcess:
        """x_t = (1 - sigma) x0 + sigma eps on diffusers' ``FlowMatchEulerDiscreteScheduler`` training sigmas.

        sigma = (t + 1) / T for index t (1 / T ... 1.0), then shifted: s * sigma / (1 + (s - 1) * sigma).
        ``sigmas [T]`` (increasing, in (0, 1]) replaces them, e.g. a scheduler's own. The network is fed sigma * 1000.
        """
        if not (isinstance(shift, (int, float)) and 0 < shift < math.inf):
            raise ValueError(f"rectified_flow needs a finite shift > 0, got {shift!r}")
        if sigmas is None:
            _check_levels(num_timesteps, "rectified_flow")
            sigmas = torch.arange(1, num_timesteps + 1, dtype=torch.float64) / num_timesteps
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
            name = "flow" if shift == 1 else f"flow-shift{shift:g}"
        else:
            sigmas = _table(sigmas, "sigmas")
            if not (torch.all(sigmas > 0) and torch.all(sigmas <= 1) and torch.all(sigmas[1:] > sigmas[:-1])):
                raise ValueError("rectified_flow sigmas must increase within (0, 1]; give them in order of more noise")
            name = "flow-custom"
        return cls("flow", name, 1 - sigmas, sigmas, sigmas * FLOW_TIMESTEP_SCALE)

    @classmethod
    def edm(
        cls,
        num_timesteps: int = 1000,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        sigma_data: float = 0.5,
    ) -> NoiseProcess:
        """x_t = x0 + sigma eps on Karras et al.'s sigmas (rho-spaced from sigma_min at t = 0 to sigma_max).

        The network is fed c_noise = ln(sigma) / 4; ``sigma_data`` sets the preconditioning c_in, c_skip, c_out.
        """
        _check_levels(num_timesteps, "edm")
        for key, value in (("sigma_min", sigma_min), ("rho", rho), ("sigma_data", sigma_data)):
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ValueError(f"edm needs a finite {key} > 0, got {value!r}")
        if not (isinstance(sigma_max, (int, float)) and sigma_min < sigma_max < math.inf):
            raise ValueError(f"edm needs sigma_max above sigma_min = {sigma_min}, got {sigma_max!r}")
        ramp = torch.linspace(0, 1, num_timesteps, dtype=torch.float64)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        sigmas = (lo + ramp * (hi - lo)) ** rho
        return cls("edm", "edm-karras", torch.ones_like(sigmas), sigmas, sigmas.log() / 4, float(sigma_data))

    # -- what estimators and the table read -----------------------------------------------------------------------

    def ve_sigmas(self) -> torch.Tensor:
        """``s / a`` [T]: the noise level of the equivalent variance-exploding (EDM) process (inf where a = 0)."""
        return self.s / self.a

    def snr(self) -> torch.Tensor:
        """``a^2 / s^2`` [T], the signal-to-noise ratio of each level (0 where a = 0)."""
        return self.a.square() / self.s.square()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = a_t x0 + s_t eps in eps.dtype; ``t`` (long) matches the leading dims of ``eps``."""
        view = (*t.shape, *([1] * (eps.dim() - t.dim())))
        a = self.a.to(eps.device, eps.dtype)[t].reshape(view)
        s = self.s.to(eps.device, eps.dtype)[t].reshape(view)
        return a * x0 + s * eps

    def describe(self) -> dict[str, object]:
        """The table's columns: ``noise_process`` (kind), ``schedule`` (name) and ``num_timesteps``."""
        return {"noise_process": self.kind, "schedule": self.name, "num_timesteps": self.num_timesteps}

    def identity(self) -> dict[str, object]:
        """Everything that sets the process (the key of caches and the error bank), including sigma_data."""
        return {**self.describe(), "sigma_data": self.sigma_data}

    def digest_bytes(self) -> bytes:
        """The kind, sigma_data, and a, s and model_timesteps as float64 bytes: what an error-bank key hashes."""
        tables = (self.a, self.s, self.model_timesteps.double())
        head = f"{self.kind}|{self.sigma_data}|".encode()
        return head + b"".join(t.contiguous().numpy().tobytes() for t in tables)

    def record(self) -> dict[str, object]:
        """The process as JSON (floats round-trip exactly): what a bank file carries to rescore without the model."""
        tables = {k: getattr(self, k).double().tolist() for k in ("a", "s", "model_timesteps", "alphas_cumprod")}
        return {"kind": self.kind, "name": self.name, "sigma_data": self.sigma_data, **tables}

    @classmethod
    def from_record(cls, record: dict) -> NoiseProcess:
        """The process ``record()`` wrote (a VP one gets integer model timesteps back; betas follow from abar)."""
        steps = torch.tensor(record["model_timesteps"], dtype=torch.float64)
        if record["kind"] == "vp":
            steps = steps.long()
        a, s, abar = (torch.tensor(record[k], dtype=torch.float64) for k in ("a", "s", "alphas_cumprod"))
        return cls(record["kind"], record["name"], a, s, steps, record["sigma_data"], abar)


def as_process(schedule: NoiseSchedule | NoiseProcess) -> NoiseProcess:
    """A NoiseProcess as it is, a NoiseSchedule wrapped as its variance-preserving process."""
    if isinstance(schedule, NoiseProcess):
        return schedule
    if isinstance(schedule, NoiseSchedule):
        return NoiseProcess.variance_preserving(schedule)
    raise TypeError(f"expected a NoiseProcess or a NoiseSchedule, got {type(schedule).__name__}")


def _table(values, what: str) -> torch.Tensor:
    table = torch.as_tensor(values).detach().to("cpu", torch.float64)
    if table.dim() != 1 or not torch.all(torch.isfinite(table)):
        raise ValueError(f"a noise process needs {what} as a finite 1-D tensor, got shape {list(table.shape)}")
    return table


def _check_levels(num_timesteps: int, where: str) -> None:
    if not (isinstance(num_timesteps, int) and not isinstance(num_timesteps, bool) and num_timesteps >= 2):
        raise ValueError(f"{where} needs num_timesteps of at least 2, got {num_timesteps!r}")
