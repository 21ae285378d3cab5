"""The baseline Monte Carlo estimators: `full-mc`, `shared-noise` and `truncated`.

Each draws its timesteps and noise for all samples x trials (x classes) at once and
hands every row to ``model.eps_error`` in one call; the model chunks and counts them and
reduces each chunk to per-row errors. The helpers here (``class_errors``,
``timestep_weights``, ``draw_timesteps``, ...) are shared by the other estimator modules.
"""

from __future__ import annotations

import functools
import weakref

import torch
import torch.nn.functional as F

import diffbench
from diffbench.model import Loss, squared_error

LOSSES = ("l2", "l1", "huber")
WEIGHTINGS = ("simple", "elbo")


def elementwise_loss(diff: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "l2":
        return diff.square()
    if loss == "l1":
        return diff.abs()
    return F.huber_loss(diff, torch.zeros_like(diff), reduction="none")


def timestep_weights(model: diffbench.ConditionalModel, weighting: str = "simple") -> torch.Tensor:
    """Per-timestep loss weights ``w [T]`` on the model's device, averaging 1 over t.

    ``simple``: w_t = 1 (Ho et al.'s L_simple, Li et al.'s choice). ``elbo``: the DDPM
    variational bound's weight on the epsilon error, beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t))
    with sigma_t^2 = beta_t, rescaled to mean 1 so errors stay on the simple scale.
    """
    if weighting == "simple":
        return torch.ones(model.num_timesteps, device=model.device, dtype=model.dtype)
    if weighting != "elbo":
        raise ValueError(f"unknown weighting '{weighting}'; choose one of {', '.join(WEIGHTINGS)}")
    betas, abar = model.betas.double(), model.alphas_cumprod.double()
    w = betas / (2 * (1 - betas) * (1 - abar))
    return (w / w.mean()).to(model.dtype)


def li_timesteps(num_timesteps: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Li et al.'s evenly spaced grid of ``n`` timesteps: ``range(T // n // 2, T, T // n)[:n]``."""
    if not 1 <= n <= num_timesteps:
        raise ValueError(f"an evenly spaced grid of {n} timesteps needs 1 <= n <= T = {num_timesteps}; lower trials")
    step = num_timesteps // n
    return torch.arange(step // 2, num_timesteps, step, device=device)[:n]


def stratified_unit(
    rows: int, trials: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``u [rows, trials]`` in [0, 1), float64: trial r uniform in stratum [r / trials, (r + 1) / trials).

    Every row draws its own offsets. ``floor(u * T)`` is then exactly uniform over {0..T-1}
    when averaged over the strata, for any ``trials`` (also one that does not divide T).
    """
    offsets = torch.rand((rows, trials), generator=generator, device=device, dtype=torch.float64)
    return (torch.arange(trials, device=device, dtype=torch.float64) + offsets) / trials


def draw_timesteps(
    model: diffbench.ConditionalModel, rows: int, trials: int, generator: torch.Generator, stratify: bool = False
) -> torch.Tensor:
    """Uniform timesteps ``t [rows, trials]``: i.i.d. (``shared-noise``'s draw) or one per stratum."""
    T = model.num_timesteps
    if not stratify:
        return torch.randint(0, T, (rows, trials), generator=generator, device=model.device)
    u = stratified_unit(rows, trials, generator, model.device)
    return (u * T).floor().long().clamp_(max=T - 1)


def pointwise_loss(loss: str) -> Loss:
    """``loss`` as ``fn(eps_hat, target) -> elementwise loss``, the form ``model.eps_error`` takes."""
    if loss == "l2":
        return squared_error
    if loss == "l1":
        return lambda eps_hat, target: torch.sub(eps_hat, target).abs_()
    if loss == "huber":
        return lambda eps_hat, target: F.huber_loss(eps_hat, target, reduction="none")
    raise ValueError(f"unknown loss '{loss}'; choose one of {', '.join(LOSSES)}")


def diffuse(model: diffbench.ConditionalModel, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``q_sample`` on the model's schedule: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, in fewer passes.

    ``t`` matches the leading dims of ``eps``; ``x0`` broadcasts against ``eps``. The same
    arithmetic as ``diffbench.schedule.q_sample`` (bit for bit): the square roots come from
    per-model tables over all T timesteps, gathered with one flat index.
    """
    signal_table, noise_table = diffusion_tables(model, eps.dtype)
    flat = t.reshape(-1)
    view = (*t.shape, *([1] * (eps.dim() - t.dim())))
    signal = signal_table.index_select(0, flat).view(view)
    noise = noise_table.index_select(0, flat).view(view)
    return torch.mul(signal, x0).add_(noise * eps)  # not addcmul_: its fused multiply-add rounds differently


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def diffusion_tables(model: diffbench.ConditionalModel, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``sqrt(abar)`` and ``sqrt(1 - abar)`` over all timesteps in ``dtype``, made once per model.

    Remade if the model's ``alphas_cumprod`` is replaced. Elementwise, so gathering from them
    equals taking the roots of gathered values, bit for bit.
    """
    abar = model.alphas_cumprod
    cached = _TABLES.get(model, {}).get(dtype)
    if cached is None or cached[0] is not abar:
        scaled = abar.to(dtype)
        cached = (abar, scaled.sqrt(), scaled.neg().add_(1).sqrt_())
        _TABLES.setdefault(model, {})[dtype] = cached
    return cached[1], cached[2]


CACHED_INDEX_ROWS = 2**20  # index tensors up to this long are kept between passes (8 MiB each)


@functools.lru_cache(maxsize=8)
def _index(kind: str, m: int, k: int, device: torch.device) -> torch.Tensor:
    if kind == "repeat":
        return torch.arange(m, device=device).repeat_interleave(k)
    return torch.arange(k, device=device).repeat(m)


def repeat_index(m: int, k: int, device: torch.device) -> torch.Tensor:
    """``[m k]`` row indices 0, .., 0, 1, .., 1, ..: each of m rows k times. Shared: never write into it."""
    return (_index if m * k <= CACHED_INDEX_ROWS else _index.__wrapped__)("repeat", m, k, device)


def class_index(m: int, k: int, device: torch.device) -> torch.Tensor:
    """``[m k]`` classes 0, 1, .., k-1, 0, 1, ..: m times. Shared: never write into it."""
    return (_index if m * k <= CACHED_INDEX_ROWS else _index.__wrapped__)("class", m, k, device)


_WORDS = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def gather_rows(a: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``a.index_select(0, index)``; many rows of 2, 4 or 8 bytes (2-D points) move as one integer each, 3x faster."""
    if index.shape[0] < 4096 or not a.is_contiguous():
        return a.index_select(0, index)
    row_bytes = a.numel() // max(a.shape[0], 1) * a.element_size()
    word = _WORDS.get(row_bytes)
    if word is None or a.dim() < 2 or a.storage_offset() * a.element_size() % row_bytes:
        return a.index_select(0, index)
    words = a.view(a.shape[0], -1).view(word).view(a.shape[0])
    return words.index_select(0, index).view(-1, 1).view(a.dtype).view(index.shape[0], *a.shape[1:])


def class_errors(
    model: diffbench.ConditionalModel,
    x: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    loss: str = "l2",
    weight: torch.Tensor | None = None,
    classes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-trial denoising errors ``[B, R, K]`` of every class.

    Shared noise: ``t [B, R]`` and ``eps [B, R, *shape]``, the same x_t scored against
    every class. Independent noise: ``t [B, R, K]`` and ``eps [B, R, K, *shape]``.
    ``weight`` (shaped like ``t``) multiplies each trial's error. ``classes`` (shared noise
    only), a bool mask ``[B, K]``, scores only the marked classes of each sample: only those
    rows reach the model (and its NFE count); the unmarked entries of the result are NaN.

    Rows go to the model in (sample, trial, class) order through ``model.eps_error``,
    which reduces each chunk of predictions to per-row errors as it goes.
    """
    B, R, K = x.shape[0], t.shape[1], model.num_classes
    shape, fn = model.data_shape, pointwise_loss(loss)
    if classes is not None and t.dim() != 2:
        raise ValueError("class_errors: `classes` needs shared noise (t of shape [B, R])")
    if t.dim() == 3:
        x_t = diffuse(model, x[:, None, None], t, eps).reshape(-1, *shape)
        c_rows = class_index(B * R, K, x.device)
        errors = model.eps_error(x_t, t.reshape(-1), c_rows, eps.reshape(-1, *shape), fn).view(B, R, K)
        return errors if weight is None else errors * weight
    M = B * R
    x_t = diffuse(model, x.unsqueeze(1), t, eps).reshape(M, *shape)
    t, eps = t.reshape(M), eps.reshape(M, *shape)
    if classes is not None:
        b, r, k = classes.unsqueeze(1).expand(B, R, K).nonzero(as_tuple=True)
        m = b * R + r
        per_row = model.eps_error(x_t.index_select(0, m), t.index_select(0, m), k, eps.index_select(0, m), fn)
        if weight is not None:
            per_row = per_row * weight[b, r]
        out = torch.full((B, R, K), float("nan"), device=per_row.device, dtype=per_row.dtype)
        out[b, r, k] = per_row
        return out
    # each x_t, its t and its noise repeated once per class: a row gather, far cheaper than a broadcast copy
    rows, c_rows = repeat_index(M, K, x.device), class_index(M, K, x.device)
    x_rows, target = gather_rows(x_t, rows), gather_rows(eps, rows)
    errors = model.eps_error(x_rows, t.index_select(0, rows), c_rows, target, fn).view(B, R, K)
    return errors if weight is None else errors * weight.unsqueeze(2)


class _MonteCarlo(diffbench.Estimator):
    def _noise(self, model, x, dims, generator) -> torch.Tensor:
        return torch.randn((*dims, *model.data_shape), generator=generator, device=model.device, dtype=model.dtype)


class FullMC(_MonteCarlo):
    """A fresh timestep and noise for every (sample, trial, class): no shared randomness."""

    name = "full-mc"
    variance_baseline = True
    params = {"loss": diffbench.Choice(*LOSSES)}

    def errors(self, model, x, trials, generator):
        dims = (x.shape[0], trials, model.num_classes)
        t = torch.randint(0, model.num_timesteps, dims, generator=generator, device=model.device)
        eps = self._noise(model, x, dims, generator)
        return class_errors(model, x, t, eps, self.params["loss"]).mean(1)


class SharedNoise(_MonteCarlo):
    """One timestep and noise per (sample, trial), shared by all classes (common random numbers)."""

    name = "shared-noise"
    params = {"loss": diffbench.Choice(*LOSSES)}

    def _timesteps(self, model, dims, generator) -> torch.Tensor:
        return torch.randint(0, model.num_timesteps, dims, generator=generator, device=model.device)

    def errors(self, model, x, trials, generator):
        dims = (x.shape[0], trials)
        t = self._timesteps(model, dims, generator)
        eps = self._noise(model, x, dims, generator)
        return class_errors(model, x, t, eps, self.params["loss"]).mean(1)


class Truncated(SharedNoise):
    """Shared noise with timesteps drawn uniformly from ``[t_min, t_max]`` (inclusive)."""

    name = "truncated"
    params = {"loss": diffbench.Choice(*LOSSES), "t_min": 0, "t_max": 300}

    def validate(self) -> None:
        super().validate()
        t_min, t_max = self.params["t_min"], self.params["t_max"]
        if not 0 <= t_min <= t_max:
            raise diffbench.ParamError(f"truncated needs 0 <= t_min <= t_max, got t_min={t_min}, t_max={t_max}")

    def check_schedule(self, num_timesteps: int) -> None:
        if self.params["t_max"] >= num_timesteps:
            raise diffbench.ParamError(
                f"truncated t_max={self.params['t_max']} is outside the schedule's timesteps [0, {num_timesteps}); "
                f"give t_max below {num_timesteps}"
            )

    def _timesteps(self, model, dims, generator):
        t_max = self.params["t_max"]
        if t_max >= model.num_timesteps:
            raise diffbench.ParamError(
                f"truncated t_max={t_max} is outside the model's timesteps [0, {model.num_timesteps}); lower t_max"
            )
        low = self.params["t_min"]
        return torch.randint(low, t_max + 1, dims, generator=generator, device=model.device)


@diffbench.hookimpl
def register_estimators(register):
    register(FullMC)
    register(SharedNoise)
    register(Truncated)
