"""Flip rate against the baseline (full-mc) at the same compute: how noisy an estimator's answers are.

``flip_rate`` (per cell, measured by the runner, ``metrics.flip_rate``) is the share of test samples
whose predicted class changes between two independent repeats. Because it falls as NFE grow, an
estimator is compared with the baseline (full-mc) at the *same NFE per sample*: the baseline's flip
rate is interpolated, linearly in log2(NFE), between the baseline cells that are the cell's peers at
any number of trials (``SAME_SETTING``: the same dataset, denoiser, device, seed, scenario, dtype and
compile). ``flip_rate_vs_full_mc`` < 1 means the estimator's answers flip less often than full-mc's
would for the same compute; it is NaN where the NFE lie outside the baseline's measured range or the
baseline never flipped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from diffbench.cell import PEER_KEY

#: The cells whose flip rates are compared: a cell's peers (``cell.PEER_KEY``) at any number of trials.
SAME_SETTING = tuple(k for k in PEER_KEY if k != "trials")
RATIO = "flip_rate_vs_full_mc"


def baseline_at(nfe: np.ndarray, base_nfe: np.ndarray, base_flips: np.ndarray) -> np.ndarray:
    """The baseline's flip rate at each NFE, interpolated in log2(NFE); NaN outside its range."""
    order = np.argsort(base_nfe)
    x, y = np.log2(base_nfe[order]), base_flips[order]
    at = np.log2(nfe)
    inside = (at >= x[0] - 1e-9) & (at <= x[-1] + 1e-9)
    return np.where(inside, np.interp(at, x, y), np.nan)


def with_flip_rate_ratio(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``flip_rate_vs_full_mc``: a cell's flip rate over the baseline's at the same NFE per sample.

    The baseline is the estimator whose rows say ``variance_baseline`` (full-mc among the built-ins).
    """
    if not {"flip_rate", "variance_baseline"} <= set(frame.columns):
        return frame
    group = [k for k in SAME_SETTING if k in frame]
    ratio = pd.Series(np.nan, index=frame.index)
    ok = frame["flip_rate"].notna() & (frame["nfe_per_sample"] > 0) & (frame.get("status", "ok") == "ok")
    for _, part in frame[ok].groupby(group, dropna=False, sort=False):
        base = part[part["variance_baseline"].fillna(False).astype(bool)].drop_duplicates("nfe_per_sample")
        if base.empty:
            continue
        at = baseline_at(
            part["nfe_per_sample"].to_numpy(float), base["nfe_per_sample"].to_numpy(float), base["flip_rate"].to_numpy()
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(at > 0, part["flip_rate"].to_numpy() / at, np.nan)
        ratio[part.index] = values
    return frame.assign(**{RATIO: ratio})
