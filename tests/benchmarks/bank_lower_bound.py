"""The fewest denoiser rows any design of draws could compute for a grid, against what the bank computed.

    python tests/benchmarks/bank_lower_bound.py RUN_DIR

Reads a bank run's ``results.parquet`` (e.g. of ``examples/bank-digits-unet.toml``) and, per model, bounds from
below the rows that any design must compute while it keeps what the estimators promise: each cell's draws
independent and exactly distributed as the estimator asks. Per sample and quality pass:

- uniform timesteps on a window W (``shared-noise`` over [0, T), each ``truncated`` window) at R trials need
  R all-class draws there, R / |W| per timestep on average; draws can serve several cells, but at every
  timestep the design needs at least the largest of those densities, d(t): ``K x sum_t d(t)`` rows;
- ``full-mc`` at R trials needs R x K single-class draws, R K / T per timestep; where d(t) falls short of that,
  the rest are new single-class rows: ``sum_t max(0, R K / T - d(t))``;
- ``adaptive`` (mode li) asks for its classes at fixed timesteps; a design holds a draw at exactly t with
  probability at most d(t) + R / T (full-mc's own draws of a class), so the rest are new;
- an estimator's ``fit`` (importance) has a pass of its own on the held-out data: computed once;
- everything else (``stratified``, ``antithetic``'s ``-eps``, ``importance``'s draws, other losses) is
  counted as free, so the bound stays a bound. A second figure adds antithetic's ``-eps`` draws, which only
  a design that hands other cells negated noises could share.

Prints, per model, the rows asked (``live_nfe``), the bound, and what the bank computed. Not collected by
pytest: an analysis, run by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch

from diffbench import plugins
from diffbench.montecarlo import li_timesteps


def lower_bound(cells: pd.DataFrame, T: int, K: int) -> float:
    """The bound above for one model's estimator rows (one row per cell)."""
    estimators = plugins.registry()["estimator"]
    shared = cells[(cells.estimator == "shared-noise")]
    passes = _passes(cells, K)
    density = torch.zeros(T, dtype=torch.float64)
    for _, cell in cells[cells.estimator.isin(["shared-noise", "truncated"])].iterrows():
        low, high = 0, T
        if cell.estimator == "truncated":
            low, high = int(cell.p_estimator_t_min), int(cell.p_estimator_t_max) + 1
        density[low:high] = density[low:high].clamp(min=cell.trials / (high - low))
    rows = K * float(density.sum())
    full = cells[cells.estimator == "full-mc"].trials.max()
    single = 0.0 if pd.isna(full) else full / T  # full-mc's draws of one class, per timestep
    if single:
        rows += float((full * K / T - density).clamp(min=0).sum())
    asked: dict[int, int] = {}  # adaptive: timestep -> the most classes any of its cells asks there
    for _, cell in cells[cells.estimator == "adaptive"].iterrows():
        if cell.p_estimator_mode != "li":
            continue
        estimator = estimators["adaptive"].cls(to_keep=cell.p_estimator_to_keep, n_samples=cell.p_estimator_n_samples)
        R = int(cell.trials)
        grid, alive = li_timesteps(T, R).tolist(), K
        for new, keep in estimator.li_stages(R, K):
            for i in new:
                asked[grid[i]] = max(asked.get(grid[i], 0), alive)
            alive = keep
    rows += sum(k * max(0.0, 1 - float(density[t]) - single) for t, k in asked.items())
    fit = 0.0
    for _, cell in cells[cells.estimator == "importance"].iterrows():
        same = shared[shared.trials == cell.trials]
        if len(same):
            fit = max(fit, cell.live_nfe - same.live_nfe.iloc[0])
    return passes * rows + fit


def antithetic_rows(cells: pd.DataFrame, K: int) -> float:
    """The rows of ``antithetic``'s ``-eps`` draws (its largest trials): no other estimator draws a negated
    noise, so a design whose draws within a call are independent computes them for antithetic alone."""
    most = cells[cells.estimator == "antithetic"].trials.max()
    return 0.0 if pd.isna(most) else _passes(cells, K) * K * (most // 2)


def _passes(cells: pd.DataFrame, K: int) -> float:
    """Samples x quality passes of every cell, from the shared-noise cell of most trials (K x trials rows each)."""
    shared = cells[cells.estimator == "shared-noise"]
    if shared.empty:
        raise SystemExit("the bound needs a shared-noise cell, whose live_nfe gives the samples x passes")
    top = shared.sort_values("trials").iloc[-1]
    return top.live_nfe / (K * top.trials)


def main(run: Path) -> None:
    results = pd.read_parquet(run / "results.parquet")
    results = results[(results.kind == "estimator") & (results.status == "ok")]
    results = results.drop_duplicates("cell_id")
    for (dataset, denoiser), cells in results.groupby(["dataset_label", "denoiser_label"]):
        T = int(cells.num_timesteps.iloc[0])
        K = _classes(cells)
        bound = lower_bound(cells, T, K)
        negated = bound + antithetic_rows(cells, K)
        live, computed = cells.live_nfe.sum(), cells.computed_nfe.sum()
        print(
            f"{dataset} x {denoiser}: asked {live:,.0f}; any design computes at least {bound:,.0f} "
            f"({bound / live:.3f}), {negated:,.0f} ({negated / live:.3f}) if antithetic's -eps are its own; "
            f"the bank computed {computed:,.0f} ({computed / live:.3f})"
        )


def _classes(cells: pd.DataFrame) -> int:
    """K, from a full-mc or shared-noise cell's NFE per sample (K x trials)."""
    cell = cells[cells.estimator.isin(["shared-noise", "full-mc"])].iloc[0]
    return int(round(cell.nfe_per_sample / cell.trials))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
