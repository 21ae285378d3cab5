"""Estimators that spend trials where they are needed: `adaptive` (class elimination) and `sequential`.

Both use shared noise (one x_t per sample and trial, scored against the classes still in
play) and evaluate only the rows still needed, so their NFE falls below ``trials x K``.
Eliminated classes keep a finite error that ranks them after every class that outlived
them: their mean error when dropped plus an offset per round they missed. Classes dropped
in a sample's last round were scored on the same trials as its survivors and keep their
plain means (with Li et al.'s final ``to_keep=1`` that is every class of the last stage).
"""

from __future__ import annotations

import math
import re

import torch

import diffbench
from diffbench.montecarlo import LOSSES, WEIGHTINGS, class_errors, draw_noise, draw_timesteps, li_timesteps

ADAPTIVE_MODES = ("li", "paired-test")


def parse_ints(text: str) -> list[int]:
    """``"5 1"``, ``"5,1"``, ``"5:1"`` or ``"5/1"`` -> ``[5, 1]``."""
    parts = [p for p in re.split(r"[\s,:;/]+", str(text).strip()) if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected positive integers such as '5 1' or '5:1', got {text!r}")
    return [int(p) for p in parts]


def ranked_errors(mean: torch.Tensor, dropped_at: torch.Tensor, last: int | torch.Tensor) -> torch.Tensor:
    """``[B, K]`` errors: ``mean`` plus ``(last - dropped_at) * C`` with C beyond the means' spread.

    ``dropped_at`` is the round a class was eliminated in and ``last`` (an int, or ``[B, 1]``
    per sample) the last round; survivors and classes dropped in the last round have
    ``dropped_at = last`` and keep their means. A class dropped earlier ranks after every
    class dropped later: C exceeds the spread of all the means.
    """
    if not mean.numel():
        return mean
    span = (mean.max() - mean.min()).item()
    offset = span + 0.01 * (mean.abs().max().item() + 1)  # > span, and survives a cast to float16
    return mean + (last - dropped_at).to(mean.dtype) * offset


class _Shared(diffbench.Estimator):
    params = {"loss": diffbench.Choice(*LOSSES), "weighting": diffbench.Choice(*WEIGHTINGS)}

    def _score(self, model, x, t, generator, alive=None) -> torch.Tensor:
        """Draw shared noise for ``t [b, R]`` and return weighted per-trial errors ``[b, R, K]``."""
        eps = draw_noise(model, t.shape, generator, timesteps=t)
        return class_errors(model, x, t, eps, self.params["loss"], self.params["weighting"], classes=alive)


class Adaptive(_Shared):
    """Successive elimination of classes (Li et al.'s ``eval_prob_adaptive``, or Clark & Jaini's paired test).

    ``mode="li"``: stages as in Li et al.'s code. ``to_keep`` and ``n_samples`` are their lists
    as written there (``"5 1"`` / ``"50 500"``; commas, colons or slashes also separate):
    stage s evaluates a strided subset of ``n_samples[s]`` timesteps of the evenly spaced grid
    ``range(T // n // 2, T, T // n)[:n]``, skipping timesteps already evaluated, on the classes
    still in play, then keeps the ``to_keep[s]`` classes of lowest mean error for each sample.
    Rule for ``trials``: ``n_samples`` is rescaled so that its last entry equals ``trials``
    (``n = max(1, round(n_s * trials / n_samples[-1]))``), i.e. the grid has ``trials`` points
    and every class that reaches the last stage has been scored on all of them, ``trials``
    per class, exactly as in a `stratified[mode=even]` run; eliminated classes cost less.

    ``mode="paired-test"``: rounds of ``batch`` shared-noise trials with uniformly random t on
    every class still in play; once a class has ``min_scores`` scores, it is dropped when a
    one-sided paired t-test says it is worse than the sample's current best (p < ``threshold``).
    A sample stops when one class is left; ``trials`` caps the scores per class.
    """

    name = "adaptive"
    params = {
        "mode": diffbench.Choice(*ADAPTIVE_MODES),
        "to_keep": "5 1",
        "n_samples": "50 500",
        "threshold": 2e-3,
        "min_scores": 20,
        "batch": 10,
        "loss": diffbench.Choice(*LOSSES),
        "weighting": diffbench.Choice(*WEIGHTINGS),
    }

    def validate(self) -> None:
        super().validate()
        p = self.params
        try:
            keep, samples = parse_ints(p["to_keep"]), parse_ints(p["n_samples"])
        except ValueError as exc:
            raise diffbench.ParamError(f"adaptive params to_keep and n_samples: {exc}") from None
        if len(keep) != len(samples):
            raise diffbench.ParamError(
                f"adaptive needs one to_keep per n_samples stage, got to_keep={p['to_keep']!r} "
                f"and n_samples={p['n_samples']!r}"
            )
        if min(keep) < 1 or min(samples) < 1 or samples != sorted(samples):
            raise diffbench.ParamError("adaptive needs to_keep >= 1 and n_samples >= 1, non-decreasing")
        if not 0 < p["threshold"] < 1 or p["min_scores"] < 2 or p["batch"] < 1:
            raise diffbench.ParamError("adaptive needs 0 < threshold < 1, min_scores >= 2 and batch >= 1")

    def stages(self, trials: int, num_classes: int) -> list[tuple[int, int]]:
        """(scaled n_samples, to_keep clipped to K) per stage for a run of ``trials``."""
        keep, samples = parse_ints(self.params["to_keep"]), parse_ints(self.params["n_samples"])
        last = samples[-1]
        scaled = [min(trials, max(1, round(n * trials / last))) for n in samples]
        out, left = [], num_classes
        for n, k in zip(scaled, keep, strict=True):
            left = min(left, k)  # a stage cannot bring a class back
            out.append((n, left))
        return out

    def li_stages(self, trials: int, num_classes: int) -> list[tuple[list[int], int]]:
        """Mode li, per stage: the points of the ``trials``-point grid it evaluates (indices, those no earlier
        stage evaluated) and the classes it keeps."""
        evaluated: set[int] = set()
        out = []
        for n, keep in self.stages(trials, num_classes):
            stride = trials // n
            new = [i for i in range(stride // 2, trials, stride)[:n] if i not in evaluated]
            evaluated.update(new)
            out.append((new, keep))
        return out

    def errors(self, model, x, trials, generator):
        if self.params["mode"] == "paired-test":
            return self._paired_test(model, x, trials, generator)
        return self._li(model, x, trials, generator)

    def _li(self, model, x, trials, generator) -> torch.Tensor:
        B, K = x.shape[0], model.num_classes
        grid = li_timesteps(model.num_timesteps, trials, model.device)
        alive = torch.ones(B, K, dtype=torch.bool, device=model.device)
        sums = torch.zeros(B, K, device=model.device, dtype=torch.float64)
        frozen = torch.zeros_like(sums)
        stages = self.li_stages(trials, K)
        last = len(stages) - 1
        dropped_at = torch.full((B, K), last, device=model.device)
        count = 0
        for stage, (new, keep) in enumerate(stages):
            if new:
                t = grid[new].expand(B, len(new))
                err = self._score(model, x, t, generator, alive)
                sums += err.double().nan_to_num(0.0).sum(1)
                count += len(new)
            mean = sums / count
            score = mean.masked_fill(~alive, math.inf)
            kept = torch.zeros_like(alive).scatter_(1, score.topk(keep, dim=1, largest=False).indices, True)
            dropped = alive & ~kept
            frozen[dropped] = mean[dropped]
            dropped_at[dropped] = stage
            alive = kept
        mean = torch.where(alive, sums / count, frozen)
        return ranked_errors(mean, dropped_at, last).to(model.dtype)

    def _paired_test(self, model, x, trials, generator) -> torch.Tensor:
        from scipy.stats import t as student_t  # scikit-learn's dependency; only this mode needs it

        p = self.params
        B, K = x.shape[0], model.num_classes
        scores = torch.zeros(B, trials, K, device=model.device, dtype=torch.float64)
        alive = torch.ones(B, K, dtype=torch.bool, device=model.device)
        running = alive.sum(1) > 1
        frozen = torch.zeros(B, K, device=model.device, dtype=torch.float64)
        count = torch.zeros(B, device=model.device, dtype=torch.long)
        rounds = math.ceil(trials / p["batch"])
        dropped_at = torch.full((B, K), rounds, device=model.device)
        last = torch.zeros(B, 1, dtype=torch.long, device=model.device)  # each sample's last round
        n = 0
        for rnd in range(rounds):
            if not running.any():
                break
            idx = running.nonzero().squeeze(1)
            size = min(p["batch"], trials - n)
            t = draw_timesteps(model, idx.numel(), size, generator)
            scores[idx, n : n + size] = self._score(model, x[idx], t, generator, alive[idx]).double()
            n += size
            count[idx] = n
            last[idx] = rnd
            if n < p["min_scores"]:
                continue
            run_scores, run_alive = scores[idx, :n], alive[idx]
            mean = run_scores.mean(1).masked_fill(~run_alive, math.inf)
            best = mean.argmin(1)
            diff = run_scores - run_scores[torch.arange(idx.numel(), device=model.device), :, best].unsqueeze(2)
            stat = diff.mean(1) / (diff.std(1) / math.sqrt(n))  # 0/0 = NaN for the best: never dropped
            drop = run_alive & (stat > float(student_t.isf(p["threshold"], n - 1)))
            rows, cols = drop.nonzero(as_tuple=True)
            frozen[idx[rows], cols] = mean[rows, cols]
            dropped_at[idx[rows], cols] = rnd
            alive[idx] = run_alive & ~drop
            running[idx] = alive[idx].sum(1) > 1
            if n >= trials:
                break
        own = scores.sum(1) / count.clamp(min=1).unsqueeze(1)
        mean = torch.where(alive, own, frozen)
        dropped_at = torch.minimum(dropped_at, last)  # survivors: their last round
        return ranked_errors(mean, dropped_at, last).to(model.dtype)


class Sequential(_Shared):
    """Shared-noise trials in rounds of ``batch``, each sample stopping on its own once it is sure.

    After each round a sample stops when the gap between its second-best and best mean error
    exceeds ``z`` standard errors of their paired per-trial difference (checked from
    ``min_trials`` trials on). Rule for ``trials``: it caps the trials per sample (the last
    round is cut to fit). Each round evaluates only the samples still running, so NFE per
    sample = K x the trials it took (kept in ``self.trials_used [B]`` after each call).
    ``stratify=true`` spreads each round's timesteps over ``batch`` strata of [0, T)
    (unbiased; the standard error then errs on the cautious side).
    """

    name = "sequential"
    params = {
        "batch": 4,
        "z": 3.0,
        "min_trials": 4,
        "stratify": False,
        "loss": diffbench.Choice(*LOSSES),
        "weighting": diffbench.Choice(*WEIGHTINGS),
    }

    def validate(self) -> None:
        super().validate()
        p = self.params
        if p["batch"] < 1 or p["min_trials"] < 2 or p["z"] < 0:
            raise diffbench.ParamError("sequential needs batch >= 1, min_trials >= 2 and z >= 0")

    def errors(self, model, x, trials, generator):
        p = self.params
        B, K = x.shape[0], model.num_classes
        scores = torch.zeros(B, trials, K, device=model.device, dtype=torch.float64)
        count = torch.zeros(B, device=model.device, dtype=torch.long)
        running = torch.ones(B, dtype=torch.bool, device=model.device)
        n = 0
        while n < trials and running.any():
            idx = running.nonzero().squeeze(1)
            size = min(p["batch"], trials - n)
            t = draw_timesteps(model, idx.numel(), size, generator, stratify=p["stratify"])
            scores[idx, n : n + size] = self._score(model, x[idx], t, generator).double()
            n += size
            count[idx] = n
            if K < 2:
                break
            if n < p["min_trials"]:
                continue
            run_scores = scores[idx, :n]
            two = run_scores.mean(1).topk(2, dim=1, largest=False).indices  # best, second best
            rows = torch.arange(idx.numel(), device=model.device)
            diff = run_scores[rows, :, two[:, 1]] - run_scores[rows, :, two[:, 0]]  # [b, n]
            sure = diff.mean(1) > p["z"] * diff.std(1) / math.sqrt(n)
            running[idx[sure]] = False
        self.trials_used = count
        return (scores.sum(1) / count.unsqueeze(1)).to(model.dtype)


@diffbench.hookimpl
def register_estimators(register):
    register(Adaptive)
    register(Sequential)
