"""The single-timestep classifier across t: which timesteps carry the class (Li et al.'s timestep ablation).

For each t of Li et al.'s evenly spaced grid of ``TIMESTEP_GRID`` timesteps (``montecarlo.li_timesteps``)
and each test sample x, ``DRAWS`` noises eps_e are drawn from the design of draws (``diffbench.draws``,
stream ``timesteps``: one fresh noise per (t, e), shared by every class), and the classifier at t predicts
argmin_c mean_e ||eps_e - eps_theta(x_t, t, c)||^2. Its test accuracy, with a 95% Wilson interval, is one
row per model and t of the figure data kind ``timesteps``. A weighting is a constant factor at one t, so
none is applied; the loss is l2.

The errors go through ``montecarlo.class_errors``: when the model's cells ran in bank mode
(``CellPlan.errors == "bank"``) they are looked up in, and added to, the model's error bank, so the data is
computed once and a later run (or figure task) reads it back; live mode computes it each time. Both draw
the same noise, so both give the same accuracies. Cost is capped at ``ROWS_BUDGET`` denoiser rows
(grid x draws x classes x test samples): beyond it, an evenly spaced subset of the test samples is
classified (``n_test`` below ``n_test_total``); a model whose one sample already costs more is skipped,
with a line saying why.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from diffbench import batching, metrics
from diffbench.bank import BankScorer
from diffbench.contract import Splits
from diffbench.measurement import bank_scorer
from diffbench.model import ConditionalModel
from diffbench.montecarlo import class_errors, draw_noise, li_timesteps
from diffbench.plan import CellPlan
from diffbench.preparation import Prepared
from diffbench.quality import replaying
from diffbench.timing import evenly_spaced

TIMESTEP_GRID = 20  # timesteps on Li et al.'s evenly spaced grid (fewer where T is smaller)
DRAWS = 2  # noise draws per (sample, timestep), shared by every class
ROWS_BUDGET = 2_000_000  # most denoiser rows (grid x draws x classes x test samples) the data may cost per model
STREAM = "timesteps"  # the design's stream of draws (no quality pass of a cell draws from it)
LOSS = "l2"


def affordable_samples(n_test: int, grid: int, draws: int, classes: int, budget: int) -> int:
    """How many test samples fit ``budget`` rows (all of them where they do; 0 where not even one does)."""
    return min(n_test, budget // max(1, grid * draws * classes))


def figure_scorer(cells: list[CellPlan], prepared: Prepared, model: ConditionalModel) -> BankScorer | None:
    """The figure model's way into its error bank where the model's cells ran in bank mode, else None (live).

    The figure model runs in float32, uncompiled, on the first cell's device: its bank is keyed so.
    """
    banked = [p for p in cells if p.errors == "bank"]
    if not banked:
        return None
    plan = banked[0]
    device = cells[0].cell.device
    as_run = dataclasses.replace(plan.cell, device=device, dtype="float32", compile=False)
    return bank_scorer(dataclasses.replace(plan, cell=as_run), prepared, model)


def correct_counts(
    model: ConditionalModel, x: torch.Tensor, y: torch.Tensor, timesteps: torch.Tensor, draws: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per timestep ``[G]``: how many of ``x`` the single-timestep classifier gets right, and the rows it really ran.

    The noise comes from the design of ``x`` on ``STREAM``: slots ``g * draws + e`` for (t_g, e), drawn one t
    at a time (``[B, draws, *shape]``, so memory does not grow with the grid); each t's errors ``[B, draws, K]``
    go through ``class_errors`` (the bank, where set).
    """
    B, G = x.shape[0], len(timesteps)
    correct = torch.zeros(G, dtype=torch.long)
    computed = torch.zeros(G, dtype=torch.long)
    generator = torch.Generator(device=model.device).manual_seed(seed)  # unused: every draw is the design's
    with replaying(model, x, seed, STREAM):
        for g, t in enumerate(timesteps.tolist()):
            before = model.evaluated
            eps = draw_noise(model, (B, draws), generator)  # the next `draws` slots of each sample
            t_rows = torch.full((B, draws), t, dtype=torch.long, device=model.device)
            errors = class_errors(model, x, t_rows, eps, loss=LOSS)  # [B, draws, K]
            correct[g] = int((errors.mean(1).argmin(1) == y).sum())
            computed[g] = model.evaluated - before
    model.check_finite(f"while classifying at single timesteps ({STREAM} figure data)")
    return correct, computed


def timesteps_data(
    model: ConditionalModel, splits: Splits, seed: int, ids: dict, scorer: BankScorer | None
) -> tuple[pd.DataFrame | None, str]:
    """The accuracy of the single-timestep classifier at each t of the grid: a frame, or None and why not.

    Rows: ``ids`` (the model's group labels), ``t``, ``t_fraction`` (t / T), ``num_timesteps``,
    ``accuracy`` with its 95% Wilson interval, ``n_test`` classified of ``n_test_total``, ``draws``,
    ``num_classes``, ``loss``, ``errors_source`` (bank or live), and the denoiser rows asked for
    (``live_nfe``) and really run (``computed_nfe``) at that t.
    """
    T, K = model.num_timesteps, model.num_classes
    timesteps = li_timesteps(T, min(TIMESTEP_GRID, T))
    n_total = splits.test_x.shape[0]
    n = affordable_samples(n_total, len(timesteps), DRAWS, K, ROWS_BUDGET)
    if n == 0:
        rows = len(timesteps) * DRAWS * K
        return None, (
            f"skipping the single-timestep accuracies of {ids['dataset_label']} x {ids['denoiser_label']}: one test "
            f"sample costs {rows:,} denoiser rows ({len(timesteps)} timesteps x {DRAWS} draws x {K} classes), "
            f"over the budget of {ROWS_BUDGET:,}"
        )
    keep = evenly_spaced(n_total, n)
    x, y = splits.test_x[keep].to(model.device, model.dtype), splits.test_y[keep].to(model.device)
    per_call = batching.samples_per_call(len(timesteps) * DRAWS, K, model.data_shape)
    correct = torch.zeros(len(timesteps), dtype=torch.long)
    computed = torch.zeros(len(timesteps), dtype=torch.long)
    model.bank = scorer
    try:
        for start in range(0, n, per_call):
            part = slice(start, start + per_call)
            right, ran = correct_counts(model, x[part], y[part], timesteps, DRAWS, seed)
            correct, computed = correct + right, computed + ran
    finally:
        model.bank = None
        if scorer is not None:
            scorer.bank.flush()
    intervals = [metrics.wilson_interval(int(c), n) for c in correct]
    frame = pd.DataFrame(
        {
            **ids,
            "t": timesteps.numpy(),
            "t_fraction": timesteps.double().numpy() / T,
            "num_timesteps": T,
            "accuracy": correct.double().numpy() / n,
            "accuracy_ci_low": [low for low, _ in intervals],
            "accuracy_ci_high": [high for _, high in intervals],
            "n_test": n,
            "n_test_total": n_total,
            "draws": DRAWS,
            "num_classes": K,
            "loss": LOSS,
            "errors_source": "bank" if scorer is not None else "live",
            "live_nfe": n * DRAWS * K,
            "computed_nfe": computed.numpy(),
        }
    )
    return frame, ""
