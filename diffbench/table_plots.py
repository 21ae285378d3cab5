"""The plots drawn from a run's results table: accuracy against compute, throughput, flip rates, windows.

Each function draws one figure and returns it (or None when the table holds nothing to draw);
``plots.plot_run`` writes it under the name ``plots.PLOTS`` declares.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
import seaborn as sns

from diffbench import results
from diffbench.plot_style import PALETTE, PANEL


def accuracy_vs_nfe(frame: pd.DataFrame, references: pd.DataFrame | None = None) -> plt.Figure:
    """Accuracy against denoiser evaluations per sample, one line per estimator, 95% CI bands; each reference
    classifier of the panel's dataset (``references``: its rows) as a labelled horizontal line with its CI band."""
    keys = list(frame.groupby(PANEL, sort=False).groups)
    n = len(keys)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.5), squeeze=False)
    labels = list(dict.fromkeys(frame["estimator_label"]))
    palette = dict(zip(labels, sns.color_palette(PALETTE, len(labels)), strict=True))
    for ax, key in zip(axes[0], keys, strict=True):
        panel = frame.set_index(PANEL).loc[[key]].reset_index()
        for (label, device), line in panel.groupby(["estimator_label", "device"], sort=False):
            line = line.sort_values("nfe_per_sample")
            style = "-" if device == panel["device"].iloc[0] else "--"
            ax.plot(
                line["nfe_per_sample"],
                line["accuracy"],
                style,
                marker="o",
                color=palette[label],
                label=f"{label} ({device})" if panel["device"].nunique() > 1 else label,
            )
            ax.fill_between(
                line["nfe_per_sample"],
                line["accuracy_ci_low"],
                line["accuracy_ci_high"],
                color=palette[label],
                alpha=0.15,
            )
        frontier = pareto_frontier(panel)
        ax.step(
            frontier["nfe_per_sample"],
            frontier["accuracy"],
            where="post",
            color="black",
            lw=1,
            ls=":",
            label="Pareto frontier",
        )
        ax.scatter(
            frontier["nfe_per_sample"], frontier["accuracy"], s=90, facecolors="none", edgecolors="black", zorder=3
        )
        reference_lines(ax, references, key[0])
        ax.set_xscale("log", base=2)
        ax.set(xlabel="denoiser evaluations per sample (NFE)", ylabel="test accuracy", title=f"{key[0]} x {key[1]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def reference_lines(ax: plt.Axes, references: pd.DataFrame | None, dataset_label: str) -> None:
    """The reference classifiers of one dataset: a grey horizontal line each (its own dash), with its 95% CI band."""
    if references is None or references.empty:
        return
    mine = references[references["dataset_label"] == dataset_label]
    dashes = [(0, (6, 2)), (0, (2, 2)), (0, (6, 2, 2, 2)), (0, (1, 1))]
    for i, (_, ref) in enumerate(mine.iterrows()):
        style = dashes[i % len(dashes)]
        ax.axhline(ref["accuracy"], color="dimgray", ls=style, lw=1.2, label=f"reference: {ref['estimator_label']}")
        ax.axhspan(ref["accuracy_ci_low"], ref["accuracy_ci_high"], color="gray", alpha=0.08)


def pareto_frontier(panel: pd.DataFrame) -> pd.DataFrame:
    """The cells no other cell beats on both NFE per sample (lower) and accuracy (higher)."""
    ordered = panel.sort_values(["nfe_per_sample", "accuracy"], ascending=[True, False])
    best, keep = -1.0, []
    for index, row in ordered.iterrows():
        if row["accuracy"] > best:
            best = row["accuracy"]
            keep.append(index)
    return ordered.loc[keep]


def flip_rates(frame: pd.DataFrame) -> plt.Figure | None:
    """How often answers change between independent repeats, against NFE, and as a ratio to full-mc at equal NFE.

    The ratio panel is drawn only where the run has full-mc cells to compare with.
    """
    ratio = "flip_rate_vs_full_mc"
    if "flip_rate" not in frame or frame["flip_rate"].isna().all():
        return None
    with_ratio = ratio in frame and frame[ratio].notna().any()
    keys = list(frame.groupby(PANEL, sort=False).groups)
    columns = 2 if with_ratio else 1
    fig, axes = plt.subplots(len(keys), columns, figsize=(6 * columns, 4.2 * len(keys)), squeeze=False)
    labels = list(dict.fromkeys(frame["estimator_label"]))
    palette = dict(zip(labels, sns.color_palette(PALETTE, len(labels)), strict=True))
    for row, key in zip(axes, keys, strict=True):
        panel = frame.set_index(PANEL).loc[[key]].reset_index()
        panel = panel[panel["device"] == panel["device"].iloc[0]]
        for ax, column in zip(row, ["flip_rate", ratio], strict=False):
            if panel[column].isna().all():
                ax.set_axis_off()
                ax.set_title(f"{key[0]} x {key[1]}: no {column}")
                continue
            for label, line in panel.groupby("estimator_label", sort=False):
                line = line.sort_values("nfe_per_sample").dropna(subset=[column])
                ax.plot(line["nfe_per_sample"], line[column], marker="o", color=palette[label], label=label)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("denoiser evaluations per sample (NFE)")
            ax.grid(alpha=0.3)
            if column == ratio:
                ax.axhline(1.0, color="grey", lw=0.8, ls=":")
                ax.set(ylabel="flip rate / full-mc's at the same NFE", title="against full-mc (below 1: steadier)")
            else:
                ax.set(ylabel="flip rate (share of answers that change)", title=f"flip rate: {key[0]} x {key[1]}")
                ax.legend(fontsize=8)
    return fig


def truncation_windows(frame: pd.DataFrame) -> plt.Figure | None:
    """Accuracy over t_min x t_max at the largest trials, for every estimator whose window varies in the run.

    Which estimators have a timestep window is read from the table (``p_estimator_t_min`` and
    ``p_estimator_t_max`` set), not from their names: a plugin's windowed estimator gets the plot too.
    """
    cols = ["p_estimator_t_min", "p_estimator_t_max"]
    data = frame.dropna(subset=cols) if set(cols) <= set(frame.columns) else frame.iloc[:0]
    keys = [
        k
        for k, g in data.groupby([*PANEL, "estimator"], sort=False)
        if g[cols[0]].nunique() > 1 or g[cols[1]].nunique() > 1
    ]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        panel = data.set_index([*PANEL, "estimator"]).loc[[key]]
        panel = panel[(panel["trials"] == panel["trials"].max()) & (panel["device"] == panel["device"].iloc[0])]
        table = panel.pivot_table(index=cols[0], columns=cols[1], values="accuracy").astype(float)
        table.index, table.columns = table.index.astype(int), table.columns.astype(int)  # NaN-free here
        sns.heatmap(table, annot=True, fmt=".3f", cmap="viridis", ax=ax, cbar_kws={"label": "accuracy"})
        ax.set(
            xlabel="t_max",
            ylabel="t_min",
            title=f"{key[2]}, {int(panel['trials'].iloc[0])} trials: {key[0]} x {key[1]}",
        )
    return fig


def throughput(frame: pd.DataFrame) -> plt.Figure:
    """Samples per second and efficiency against trials (offline), and single-sample latency, per estimator."""
    single = frame[frame["scenario"] == "single"] if "scenario" in frame else frame.iloc[:0]
    frame = results.offline(frame)
    if frame.empty:  # only the single scenario ran: show its rates
        frame = single
    fig, axes = plt.subplots(1, 3 if len(single) else 2, figsize=(18 if len(single) else 12, 4.5))
    data = frame.assign(where=frame["device"] + " · " + frame["dataset_label"] + " x " + frame["denoiser_label"])
    labels = list(dict.fromkeys([*data["estimator_label"], *single["estimator_label"]]))
    hues = dict(zip(labels, sns.color_palette(PALETTE, len(labels)), strict=True))
    kw = {"hue": "estimator_label", "style": "where", "marker": "o", "palette": hues}
    sns.lineplot(data=data, x="trials", y="samples_per_s", **kw, ax=axes[0])
    for _, line in data.groupby(["estimator_label", "where"]):
        axes[0].errorbar(
            line["trials"],
            line["samples_per_s"],
            yerr=line["samples_per_s_iqr"] / 2,
            fmt="none",
            ecolor="grey",
            alpha=0.6,
        )
    axes[0].set(xscale="log", yscale="log", ylabel="samples / s (median, IQR bars)", title="classification throughput")
    sns.lineplot(data=data, x="trials", y="efficiency", **kw, ax=axes[1], legend=False)
    axes[1].axhline(1.0, color="grey", lw=0.8, ls=":")
    axes[1].set(xscale="log", ylabel="evals/s ÷ bare forward rows/s", title="efficiency")
    if len(single):
        lat = single.assign(where=single["device"] + " · " + single["dataset_label"] + " x " + single["denoiser_label"])
        sns.lineplot(data=lat, x="trials", y="latency_p50_ms", **kw, ax=axes[2])
        axes[2].legend_.remove()
        axes[2].set(xscale="log", yscale="log", ylabel="ms per sample (p50)", title="single-sample latency")
    axes[0].legend(fontsize=7)
    trials = sorted(set(data["trials"]) | set(single["trials"]))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xticks(trials, [str(t) for t in trials])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if ax.get_yscale() == "log":  # plain numbers, not powers of ten
            low, high = ax.get_ylim()
            plain = plain_log_labels((1, 2, 3, 4, 5, 6, 7, 8, 9) if high / low < 10 else (1, 2, 5))
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
    return fig


def plain_log_labels(leading: tuple[int, ...]) -> matplotlib.ticker.Formatter:
    """Label a log axis's ticks as plain numbers, only those whose leading digit is in ``leading``."""
    return matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if int(f"{v:e}"[0]) in leading else "")
