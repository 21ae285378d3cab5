"""Variance-reduced shared-noise estimators: `stratified`, `antithetic` and `importance`.

All three score one x_t per (sample, trial) against every class, like `shared-noise`, and
change only how the trials' timesteps and noise are drawn:

- `stratified` covers [0, T) in one stratum per trial (random offsets, or Li et al.'s grid);
- `antithetic` draws the noise in pairs (eps, -eps) at one timestep;
- `importance` draws t from a proposal q(t) fitted on held-out data and weights each trial
  by p(t) / q(t), so the estimate stays unbiased for the uniform-t objective.

Each takes ``loss`` (l2, l1, huber) and ``weighting`` (simple, elbo): the estimate is of
E_{t ~ U[0, T), eps} [w_t * loss(eps - eps_theta(x_t, t, c))].
"""

from __future__ import annotations

import torch

import diffbench
from diffbench.montecarlo import (
    LOSSES,
    WEIGHTINGS,
    class_errors,
    draw_noise,
    draw_timesteps,
    draw_uniform,
    li_timesteps,
)

STRATIFIED_MODES = ("random", "even")


class _Draws(diffbench.Estimator):
    """Shared noise whose subclasses choose the draws: ``_draws`` -> (t, eps, importance weight or None)."""

    params = {"loss": diffbench.Choice(*LOSSES), "weighting": diffbench.Choice(*WEIGHTINGS)}

    def _draws(self, model, x, trials, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def trial_errors(self, model, x, trials, generator) -> torch.Tensor:
        """Per-trial weighted errors ``[B, R, K]``; their mean over trials is the estimate."""
        t, eps, importance = self._draws(model, x, trials, generator)
        return class_errors(model, x, t, eps, self.params["loss"], self.params["weighting"], weight=importance)

    def errors(self, model, x, trials, generator):
        return self.trial_errors(model, x, trials, generator).mean(1)


class Stratified(_Draws):
    """Shared noise with the trials' timesteps spread over [0, T) in ``trials`` equal strata.

    ``mode="random"``: one uniformly random t in each stratum [r T / R, (r + 1) T / R), every
    sample its own offsets; unbiased for uniform t at any R, with lower variance than i.i.d. t.
    ``mode="even"``: Li et al.'s reference grid ``range(T // R // 2, T, T // R)[:R]``, the same
    for every sample (deterministic t: a quadrature, as their code does; needs R <= T).
    """

    name = "stratified"
    params = {
        "mode": diffbench.Choice(*STRATIFIED_MODES),
        "loss": diffbench.Choice(*LOSSES),
        "weighting": diffbench.Choice(*WEIGHTINGS),
    }

    def _draws(self, model, x, trials, generator):
        B = x.shape[0]
        if self.params["mode"] == "even":
            t = li_timesteps(model.num_timesteps, trials, model.device).expand(B, trials)
        else:
            t = draw_timesteps(model, B, trials, generator, stratify=True)
        return t, draw_noise(model, (B, trials), generator), None


class Antithetic(_Draws):
    """Shared noise drawn in antithetic pairs (eps, -eps) at one timestep per pair.

    Trials 2i and 2i+1 share t and use eps and -eps; an odd ``trials`` leaves the last draw
    unpaired. ``stratify=true`` spreads the full pairs' timesteps over one stratum each (see
    `stratified`); the unpaired draw of an odd ``trials`` keeps a uniform t, so the mean stays unbiased.
    """

    name = "antithetic"
    params = {"stratify": False, "loss": diffbench.Choice(*LOSSES), "weighting": diffbench.Choice(*WEIGHTINGS)}

    def _draws(self, model, x, trials, generator):
        B, pairs = x.shape[0], (trials + 1) // 2
        if self.params["stratify"]:  # strata over the full pairs; an unpaired draw stays uniform (no bias)
            full = draw_timesteps(model, B, trials // 2, generator, stratify=True)
            t = torch.cat([full, draw_timesteps(model, B, trials % 2, generator)], dim=1)
        else:
            t = draw_timesteps(model, B, pairs, generator)
        eps = draw_noise(model, (B, pairs), generator)
        t = t.repeat_interleave(2, dim=1)[:, :trials]
        eps = torch.stack([eps, -eps], dim=2).flatten(1, 2)[:, :trials]
        return t, eps, None


class Importance(_Draws):
    """Shared noise with t drawn from a proposal q(t) fitted where the true class's error parts from its rivals.

    ``fit`` scores held-out labelled samples on ``bins`` equal bins of t (``fit_trials``
    stratified trials per bin and sample) and sets q(t) ∝ sqrt(E[gap_t^2]) inside each bin,
    where gap = error(nearest rival) - error(true class) per trial (the nearest rival has the
    lowest mean error of the sample's wrong classes), mixed with a uniform floor:
    q = (1 - floor) q_fit + floor / T, so q > 0 everywhere. Each trial's error is weighted by
    p(t) / q(t) = 1 / (T q(t)), which keeps the estimate unbiased for uniform t. Before ``fit``
    (or without it) q is uniform and the estimator is `shared-noise` draw for draw.
    ``stratify=true`` draws t by inverse CDF of q from stratified uniforms (still unbiased).
    """

    name = "importance"
    params = {
        "bins": 20,
        "floor": 0.1,
        "fit_trials": 4,
        "fit_samples": 256,
        "stratify": False,
        "loss": diffbench.Choice(*LOSSES),
        "weighting": diffbench.Choice(*WEIGHTINGS),
    }

    def __init__(self, **overrides) -> None:
        super().__init__(**overrides)
        self.proposal: torch.Tensor | None = None  # q(t) [T], float64, once fitted

    def validate(self) -> None:
        super().validate()
        p = self.params
        if p["bins"] < 1 or p["fit_trials"] < 1 or p["fit_samples"] < 1:
            raise diffbench.ParamError("importance needs bins, fit_trials and fit_samples of at least 1")
        if not 0 < p["floor"] <= 1:
            raise diffbench.ParamError(f"importance param 'floor' must be in (0, 1], got {p['floor']}")

    def importance_weights(self) -> torch.Tensor | None:
        """w(t) = p(t) / q(t) [T] of the fitted proposal (None before fit); sum_t q(t) w(t) = 1."""
        if self.proposal is None:
            return None
        return 1 / (self.proposal.numel() * self.proposal)

    def fit(self, model, x, y, generator) -> None:
        T, p = model.num_timesteps, self.params
        n = min(p["fit_samples"], x.shape[0])
        if n == 0 or model.num_classes < 2:
            self.proposal = None
            return
        x, y = x[:n], y[:n].to(model.device)
        bins = min(p["bins"], T)
        edges = torch.linspace(0, T, bins + 1, device=model.device, dtype=torch.float64).round().long()
        width = edges[1:] - edges[:-1]  # [bins], each >= 1
        R = bins * p["fit_trials"]
        which = torch.arange(bins, device=model.device).repeat_interleave(p["fit_trials"])  # [R]
        offsets = draw_uniform(model, n, R, generator)
        t = edges[which] + (offsets * width[which]).floor().long()
        eps = draw_noise(model, (n, R), generator, timesteps=t)
        err = class_errors(model, x, t, eps, p["loss"], p["weighting"]).double()  # [n, R, K]
        rows = torch.arange(n, device=model.device)
        means = err.mean(1)
        means[rows, y] = float("inf")
        rival = means.argmin(1)
        gap = err[rows, :, rival] - err[rows, :, y]  # [n, R]
        second_moment = gap.square().mean(0).view(bins, p["fit_trials"]).mean(1)  # [bins]
        density = second_moment.sqrt().repeat_interleave(width)  # [T], per timestep
        if not torch.isfinite(density).all() or density.sum() <= 0:
            self.proposal = None
            return
        self.proposal = (1 - p["floor"]) * density / density.sum() + p["floor"] / T

    def _draws(self, model, x, trials, generator):
        B = x.shape[0]
        q = self.proposal
        if q is None:
            t = draw_timesteps(model, B, trials, generator, stratify=self.params["stratify"])
            return t, draw_noise(model, (B, trials), generator), None
        q = q.to(model.device)
        t = draw_timesteps(model, B, trials, generator, stratify=self.params["stratify"], probs=q)
        importance = (1 / (q.numel() * q[t])).to(model.dtype)
        return t, draw_noise(model, (B, trials), generator, timesteps=t), importance


@diffbench.hookimpl
def register_estimators(register):
    register(Stratified)
    register(Antithetic)
    register(Importance)
