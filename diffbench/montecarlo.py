"""Monte Carlo estimation of denoising errors: the maths every estimator shares, built-in or third-party.

An estimator draws timesteps ``t`` and noise ``eps``, diffuses ``x`` to ``x_t = model.q_sample(x, t, eps)``,
and scores each ``x_t`` against classes through ``model.eps_error`` (which counts every row as one NFE).
``class_errors`` does the last two steps for a whole ``[B, R]`` (shared noise) or ``[B, R, K]``
(independent noise) draw at once, so a complete shared-noise estimator is three lines::

    t = draw_timesteps(model, x.shape[0], trials, generator)    # [B, R], uniform over [0, T)
    eps = draw_noise(model, t.shape, generator)                  # [B, R, *shape]
    return class_errors(model, x, t, eps).mean(1)               # [B, R, K] -> [B, K]

The estimate is of E_{t ~ U[0, T), eps} [w_t * loss(eps - eps_theta(x_t, t, c))], with ``loss`` one of
``LOSSES`` and the per-timestep weight ``w_t`` one of ``WEIGHTINGS``.

In bank mode (``--errors bank``) the draw helpers take their draws from the run's design of draws
(``diffbench.draws``, set on the model as ``model.replay``) and ``class_errors`` reads errors from the
error bank (``diffbench.bank``, ``model.bank``): an estimator built from these helpers replays unchanged.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from diffbench.model import ConditionalModel, Loss, squared_error

__all__ = [
    "LOSSES",
    "WEIGHTINGS",
    "class_errors",
    "draw_noise",
    "draw_timesteps",
    "draw_uniform",
    "li_timesteps",
    "pointwise_loss",
    "stratified_unit",
    "timestep_weights",
]

LOSSES = ("l2", "l1", "huber")
WEIGHTINGS = ("simple", "elbo", "velocity", "x0")


def pointwise_loss(loss: str) -> Loss:
    """``loss`` by name as ``fn(eps_hat, target) -> elementwise loss``, the form ``model.eps_error`` takes."""
    if loss == "l2":
        return squared_error
    if loss == "l1":
        return lambda eps_hat, target: torch.sub(eps_hat, target).abs_()
    if loss == "huber":
        return lambda eps_hat, target: F.huber_loss(eps_hat, target, reduction="none")
    raise ValueError(f"unknown loss '{loss}'; choose one of {', '.join(LOSSES)}")


def timestep_weights(model: ConditionalModel, weighting: str = "simple") -> torch.Tensor:
    """Per-timestep loss weights ``w [T]`` on the model's device, averaging 1 over t.

    Each weighting turns the epsilon error into another error of the model's noise process
    x_t = a x0 + s eps (``docs/noise-processes.md``). ``simple``: w_t = 1 (Ho et al.'s L_simple, Li et
    al.'s choice). ``elbo``: the process's variational weight in terms of its (equivalent) abar, the DDPM
    bound's beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) with sigma_t^2 = beta_t (on a VP process its own
    betas, unchanged). ``velocity``: 1 / a^2, the error of the process's velocity (a flow's v = eps - x0:
    (1 - sigma)^-2; VP's v-prediction: 1 / abar; EDM's dx/dsigma = eps: 1). ``x0``: s^2 / a^2, the error of
    the clean sample. Levels with a = 0 (a flow's sigma = 1) say nothing of x0: weight 0 under all but
    ``simple``. Every weighting but ``simple`` is rescaled to mean 1 so errors stay on the simple scale.
    """
    if weighting == "simple":
        return torch.ones(model.num_timesteps, device=model.device, dtype=model.dtype)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting '{weighting}'; choose one of {', '.join(WEIGHTINGS)}")
    if weighting == "elbo":
        betas, abar = model.betas.double(), model.alphas_cumprod.double()
        w = betas / (2 * (1 - betas) * (1 - abar))
    else:
        process = model.process
        a2 = process.a.square().to(model.device)
        w = 1 / a2 if weighting == "velocity" else process.s.square().to(model.device) / a2
    if not torch.isfinite(w).all():  # levels with a = 0: no information on x0, so no weight
        w = torch.where(torch.isfinite(w), w, torch.zeros_like(w))
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


def _replay(model: ConditionalModel, rows: int):
    """The design draws of the estimator call now running, when this request is for its batch (bank mode)."""
    replay = getattr(model, "replay", None)
    return replay if replay is not None and replay.covers(rows) else None


def draw_uniform(
    model: ConditionalModel, rows: int, trials: int, generator: torch.Generator, stratify: bool = False
) -> torch.Tensor:
    """Uniforms ``u [rows, trials]`` in [0, 1), float64: i.i.d., or one per stratum (``stratified_unit``)."""
    replay = _replay(model, rows)
    if replay is not None:
        slots = replay.strata_slots(trials) if stratify else replay.next_slots(trials)
        return replay.uniform_at(slots)
    if stratify:
        return stratified_unit(rows, trials, generator, model.device)
    return torch.rand((rows, trials), generator=generator, device=model.device, dtype=torch.float64)


def draw_timesteps(
    model: ConditionalModel,
    rows: int,
    trials: int,
    generator: torch.Generator,
    stratify: bool = False,
    low: int = 0,
    high: int | None = None,
    probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Uniform timesteps ``t [rows, trials]`` over [low, high) (default [0, T)): i.i.d., or one per stratum.

    ``probs`` (``[T]``, nonnegative, any scale) draws t from that distribution over [0, T) instead, by
    inverse CDF of i.i.d. (or stratified) uniforms; it cannot be combined with a window.

    In bank mode (``diffbench.draws``) an i.i.d. draw takes the design's next slots whose timestep falls in
    the window, so every window draws from the same slots; a stratified one maps its uniforms onto the window.
    An i.i.d. draw from ``probs`` thins the same slots (slot j kept with probability ``probs[t_j] / max``),
    so it meets the uniform draws wherever it keeps theirs.
    """
    T = model.num_timesteps
    high = T if high is None else high
    if not 0 <= low < high <= T:
        raise ValueError(f"draw_timesteps needs 0 <= low < high <= T = {T}, got low={low}, high={high}")
    if probs is not None:
        return _timesteps_from(model, rows, trials, generator, stratify, _checked_probs(probs, T, low, high))
    replay = _replay(model, rows)
    if replay is not None:
        t = _design_timesteps(replay, T, trials, stratify, low, high)
        replay.drew_timesteps(t)
        return t
    if not stratify:
        return torch.randint(low, high, (rows, trials), generator=generator, device=model.device)
    u = draw_uniform(model, rows, trials, generator, stratify=True)
    return low + _cell_of(u, high - low)


def _checked_probs(probs: torch.Tensor, T: int, low: int, high: int) -> torch.Tensor:
    if (low, high) != (0, T):
        raise ValueError("draw_timesteps: give either probs or a window (low, high), not both")
    probs = probs.detach().double().reshape(-1)
    if probs.numel() != T or not torch.isfinite(probs).all() or (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(f"draw_timesteps: probs must be {T} finite nonnegative weights, not all 0")
    return probs


def _timesteps_from(model: ConditionalModel, rows: int, trials: int, generator, stratify: bool, probs: torch.Tensor):
    """``t [rows, trials]`` drawn from ``probs [T]``: thinning the design's slots in bank mode (all T), else
    the inverse CDF of i.i.d. or stratified uniforms."""
    probs = probs.to(model.device)
    replay = _replay(model, rows)
    if replay is not None and not stratify and not replay.design.t_grid:
        T = probs.numel()
        keep = probs / probs.max()
        slots = replay.slots_where(trials, lambda u: keep[_cell_of(u, T)])
        t = _cell_of(replay.uniform_at(slots), T)
        replay.drew_timesteps(t)
        return t
    cdf = probs.cumsum(0)
    u = draw_uniform(model, rows, trials, generator, stratify=stratify)
    return torch.searchsorted(cdf / cdf[-1], u, right=True).clamp_(max=probs.numel() - 1)


def _design_timesteps(replay, T: int, trials: int, stratify: bool, low: int, high: int) -> torch.Tensor:
    """Timesteps from the design: over [low, high), or over the grid points inside it (``t_grid``)."""
    grid = _design_grid(replay, T)
    if grid is None:
        if stratify:
            u = replay.uniform_at(replay.strata_slots(trials))
            return low + _cell_of(u, high - low)
        slots = replay.slots_where(trials, lambda u: _in_window((u * T).floor(), low, high))
        return _cell_of(replay.uniform_at(slots), T)
    points = grid[_in_window(grid, low, high)]
    if points.numel() == 0:
        raise ValueError(
            f"no timestep of the design's grid (t_grid = {grid.numel()}) lies in [{low}, {high}); "
            "raise t_grid or widen the window"
        )
    if stratify:
        u = replay.uniform_at(replay.strata_slots(trials))
        return points[_cell_of(u, points.numel())]
    N = grid.numel()
    slots = replay.slots_where(trials, lambda u: _in_window(grid[_cell_of(u, N)], low, high))
    return grid[_cell_of(replay.uniform_at(slots), N)]


def _design_grid(replay, T: int) -> torch.Tensor | None:
    """The design's timestep grid (Li et al.'s evenly spaced ``t_grid`` timesteps), or None (all T)."""
    n = replay.design.t_grid
    if not n:
        return None
    if n > T:
        raise ValueError(f"t_grid = {n} is more timesteps than the model's T = {T}; lower t_grid")
    return li_timesteps(T, n, replay.device)


def _cell_of(u: torch.Tensor, n: int) -> torch.Tensor:
    """Which of ``n`` equal cells of [0, 1) each uniform ``u`` lies in: ``floor(u n)``, at most ``n - 1``."""
    return (u * n).floor().long().clamp_(max=n - 1)


def _in_window(t: torch.Tensor, low: int, high: int) -> torch.Tensor:
    return (t >= low) & (t < high)


def draw_noise(
    model: ConditionalModel,
    dims: tuple[int, ...] | torch.Size,
    generator: torch.Generator,
    timesteps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Standard normal noise ``[*dims, *model.data_shape]`` on the model's device in its dtype.

    In bank mode, the design's noise: of (t, occurrence) for the timesteps just drawn by ``draw_timesteps``
    or given as ``timesteps`` (shaped ``dims``; an estimator that makes its own t, e.g. on a fixed grid,
    passes them so that its draws meet other cells' in the bank), else of the slots whose uniforms were just
    drawn, else of the next slots. Live, ``timesteps`` is not used.
    """
    replay = _replay(model, dims[0]) if len(dims) else None
    if replay is not None:
        return replay.noise(tuple(dims), model.data_shape, model.dtype, timesteps)
    return torch.randn((*dims, *model.data_shape), generator=generator, device=model.device, dtype=model.dtype)


def class_errors(
    model: ConditionalModel,
    x: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    loss: str = "l2",
    weighting: str = "simple",
    weight: torch.Tensor | None = None,
    classes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-trial denoising errors ``[B, R, K]`` of every class for ``x [B, *shape]``.

    Shared noise: ``t [B, R]`` and ``eps [B, R, *shape]``, the same x_t scored against
    every class (common random numbers). Independent noise: ``t [B, R, K]`` and
    ``eps [B, R, K, *shape]``, a fresh x_t for every class. Each trial's error is multiplied
    by ``timestep_weights(model, weighting)[t]`` (unless ``weighting="simple"``) and then by
    ``weight`` (shaped like ``t``; e.g. importance weights p(t) / q(t)). ``classes`` (shared
    noise only), a bool mask ``[B, K]``, scores only the marked classes of each sample: only
    those rows reach the model (and its NFE count); the unmarked entries of the result are NaN.

    Costs B x R x K NFE (or the marked count), read from the model's counter like any call.
    Rows go to the model in (sample, trial, class) order through ``model.eps_error``, which
    reduces the predictions to per-row errors (chunk by chunk where they would be big).
    """
    if weighting != "simple":
        per_t = timestep_weights(model, weighting)[t]
        weight = per_t if weight is None else per_t * weight
    B, R, K = x.shape[0], t.shape[1], model.num_classes
    shape, fn = model.data_shape, pointwise_loss(loss)
    if classes is not None and t.dim() != 2:
        raise ValueError("class_errors: `classes` needs shared noise (t of shape [B, R])")
    bank = getattr(model, "bank", None)
    if bank is not None:  # bank mode: the same errors, looked up where any cell computed them before
        errors = bank.class_errors(model, x, t, eps, loss, classes)
        if weight is None:
            return errors
        return errors * (weight if t.dim() == 3 else weight.unsqueeze(2))
    if t.dim() == 3:
        x_t = model.q_sample(x[:, None, None], t, eps).reshape(-1, *shape)
        c_rows = _class_index(B * R, K, x.device)
        errors = model.eps_error(x_t, t.reshape(-1), c_rows, eps.reshape(-1, *shape), fn).view(B, R, K)
        return errors if weight is None else errors * weight
    M = B * R
    x_t = model.q_sample(x.unsqueeze(1), t, eps).reshape(M, *shape)
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
    rows, c_rows = _repeat_index(M, K, x.device), _class_index(M, K, x.device)
    x_rows, target = _gather_rows(x_t, rows), _gather_rows(eps, rows)
    errors = model.eps_error(x_rows, t.index_select(0, rows), c_rows, target, fn).view(B, R, K)
    return errors if weight is None else errors * weight.unsqueeze(2)


# -- row indices and gathers for class_errors (shared between calls: never write into them) --------------------

CACHED_INDEX_ROWS = 2**20  # index tensors up to this long are kept between passes (8 MiB each)


@functools.lru_cache(maxsize=8)
def _index(kind: str, m: int, k: int, device: torch.device) -> torch.Tensor:
    if kind == "repeat":
        return torch.arange(m, device=device).repeat_interleave(k)
    return torch.arange(k, device=device).repeat(m)


def _repeat_index(m: int, k: int, device: torch.device) -> torch.Tensor:
    """``[m k]`` row indices 0, .., 0, 1, .., 1, ..: each of m rows k times."""
    return (_index if m * k <= CACHED_INDEX_ROWS else _index.__wrapped__)("repeat", m, k, device)


def _class_index(m: int, k: int, device: torch.device) -> torch.Tensor:
    """``[m k]`` classes 0, 1, .., k-1, 0, 1, ..: m times."""
    return (_index if m * k <= CACHED_INDEX_ROWS else _index.__wrapped__)("class", m, k, device)


_WORDS = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def _gather_rows(a: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``a.index_select(0, index)``; many rows of 2, 4 or 8 bytes (2-D points) move as one integer each, 3x faster."""
    if index.shape[0] < 4096 or not a.is_contiguous():
        return a.index_select(0, index)
    row_bytes = a.numel() // max(a.shape[0], 1) * a.element_size()
    word = _WORDS.get(row_bytes)
    if word is None or a.dim() < 2 or a.storage_offset() * a.element_size() % row_bytes:
        return a.index_select(0, index)
    words = a.view(a.shape[0], -1).view(word).view(a.shape[0])
    return words.index_select(0, index).view(-1, 1).view(a.dtype).view(index.shape[0], *a.shape[1:])
