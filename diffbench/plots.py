"""Plots drawn from a run folder's tables alone, so `diffbench plot DIR` can redraw any old run."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from diffbench import results  # noqa: E402

PANEL = ["dataset_label", "denoiser_label"]
PALETTE = "colorblind"  # seaborn's colour-blind-safe palette (after Okabe and Ito), for every categorical colour
SPARSE_BIN = 10  # reliability bins with fewer samples are drawn hollow and grey, off the line: their accuracy is noise


def save(fig: plt.Figure, path: Path) -> Path:
    """Lay out, write as PNG and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_vs_nfe(frame: pd.DataFrame, path: Path) -> Path:
    """Accuracy against denoiser evaluations per sample, one line per estimator, 95% CI bands."""
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
        ax.set_xscale("log", base=2)
        ax.set(xlabel="denoiser evaluations per sample (NFE)", ylabel="test accuracy", title=f"{key[0]} x {key[1]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def pareto_frontier(panel: pd.DataFrame) -> pd.DataFrame:
    """The cells no other cell beats on both NFE per sample (lower) and accuracy (higher)."""
    ordered = panel.sort_values(["nfe_per_sample", "accuracy"], ascending=[True, False])
    best, keep = -1.0, []
    for index, row in ordered.iterrows():
        if row["accuracy"] > best:
            best = row["accuracy"]
            keep.append(index)
    return ordered.loc[keep]


def reliability(bins: pd.DataFrame, path: Path) -> Path:
    """Reliability diagram of the calibrated probabilities: each estimator at its largest trials.

    Marker area grows with a bin's sample count, and a histogram of the counts sits beneath;
    bins with fewer than ``SPARSE_BIN`` samples are hollow grey points left off the line, so a
    bin of one or two samples does not shout as loudly as a bin of hundreds.
    """
    keys = list(bins.groupby(PANEL, sort=False).groups)
    fig, axes = plt.subplots(
        2, len(keys), figsize=(5 * len(keys), 6), squeeze=False, sharex="col", gridspec_kw={"height_ratios": [3, 1]}
    )
    edges = 1 / max(int(bins["bin"].max()) + 1, 15)
    for col, key in enumerate(keys):
        ax, hist = axes[0][col], axes[1][col]
        panel = bins.set_index(PANEL).loc[[key]].reset_index()
        top = panel.groupby("estimator_label")["trials"].transform("max")
        panel = panel[(panel["trials"] == top) & (panel["device"] == panel["device"].iloc[0])]
        labels = list(dict.fromkeys(panel["estimator_label"]))
        colors = sns.color_palette(PALETTE, len(labels))
        largest = max(int(panel["count"].max()), 1)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        width = edges / (len(labels) + 1)
        for i, (label, color) in enumerate(zip(labels, colors, strict=True)):
            line = panel[panel["estimator_label"] == label].sort_values("confidence")
            full, sparse = line[line["count"] >= SPARSE_BIN], line[line["count"] < SPARSE_BIN]
            size = 10 + 140 * np.sqrt(line["count"] / largest)
            ax.plot(full["confidence"], full["bin_accuracy"], color=color, lw=1.2)
            ax.scatter(
                full["confidence"],
                full["bin_accuracy"],
                s=size[full.index],
                color=color,
                edgecolors="white",
                linewidths=0.5,
                zorder=3,
                label=f"{label} ({int(line['trials'].iloc[0])} trials)",
            )
            ax.scatter(
                sparse["confidence"], sparse["bin_accuracy"], s=size[sparse.index], facecolors="none",
                edgecolors="#bbbbbb", linewidths=0.8, zorder=2,
            )  # fmt: skip
            hist.bar(line["bin"] * edges + (i + 0.5) * width, line["count"], width=width, color=color, align="edge")
        hist.axhline(SPARSE_BIN, color="grey", lw=0.8, ls=":")
        hist.set(yscale="log", xlabel="confidence (temperature-calibrated)", ylabel="samples", xlim=(0, 1))
        ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02), title=f"reliability: {key[0]} x {key[1]}")
        ax.scatter([], [], s=30, facecolors="none", edgecolors="#bbbbbb", label=f"bin of < {SPARSE_BIN} samples")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
        hist.grid(alpha=0.3)
    return save(fig, path)


def flip_rates(frame: pd.DataFrame, path: Path) -> Path | None:
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
    return save(fig, path)


def truncation_windows(frame: pd.DataFrame, path: Path) -> Path | None:
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
    return save(fig, path)


def throughput(frame: pd.DataFrame, path: Path) -> Path:
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
    return save(fig, path)


def plain_log_labels(leading: tuple[int, ...]) -> matplotlib.ticker.Formatter:
    """Label a log axis's ticks as plain numbers, only those whose leading digit is in ``leading``."""
    return matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if int(f"{v:e}"[0]) in leading else "")


def decision_regions(regions: pd.DataFrame, points: pd.DataFrame, path: Path) -> Path:
    """Each estimator's predicted class over the plane (shaded by confidence) with the test points."""
    pairs = list(regions.groupby(PANEL, sort=False).groups)
    labels = list(dict.fromkeys(regions["estimator_label"]))
    fig, axes = plt.subplots(len(pairs), len(labels), figsize=(4.2 * len(labels), 4.2 * len(pairs)), squeeze=False)
    classes = int(max(regions["pred"].max(), points["label"].max())) + 1
    colors = sns.color_palette(PALETTE if classes <= 10 else "husl", classes)
    present = set(regions.groupby(PANEL + ["estimator_label"], sort=False).groups)
    for (row, pair), (col, label) in itertools.product(enumerate(pairs), enumerate(labels)):
        ax, key = axes[row][col], (*pair, label)
        if key not in present:
            ax.set_axis_off()
            continue
        grid = regions.set_index(PANEL + ["estimator_label"]).loc[[key]]
        xs, ys = np.sort(grid["x0"].unique()), np.sort(grid["x1"].unique())
        pred = grid.pivot_table(index="x1", columns="x0", values="pred").to_numpy()
        conf = grid.pivot_table(index="x1", columns="x0", values="confidence").to_numpy()
        rgb = np.array(colors)[pred.astype(int)]
        shade = 0.25 + 0.55 * (conf[..., None] - conf.min()) / max(np.ptp(conf), 1e-9)
        ax.imshow(1 - shade * (1 - rgb), origin="lower", extent=(xs[0], xs[-1], ys[0], ys[-1]), aspect="auto")
        test = points.set_index(PANEL).loc[[key[:2]]]
        test = test[test["source"] == "test"]
        ax.scatter(
            test["x0"],
            test["x1"],
            c=np.array(colors)[test["label"].to_numpy()],
            s=4,
            edgecolors="black",
            linewidths=0.2,
        )
        ax.set(title=f"{key[2]} ({int(grid['trials'].iloc[0])} trials)\n{key[0]} x {key[1]}", xticks=[], yticks=[])
    return save(fig, path)


def model_samples(points: pd.DataFrame, path: Path) -> Path:
    """The conditional model's own samples per class beside test data: did it learn the data?"""
    keys = list(points.groupby(PANEL, sort=False).groups)
    fig, axes = plt.subplots(len(keys), 2, figsize=(9, 4.5 * len(keys)), squeeze=False)
    for row, key in zip(axes, keys, strict=True):
        panel = points.set_index(PANEL).loc[[key]]
        shape = [int(n) for n in str(panel["shape"].iloc[0]).split("x")] if "shape" in panel else [2]
        for ax, source, title in zip(row, ["test", "model"], ["test data", "model samples"], strict=True):
            part = panel[panel["source"] == source]
            ax.set_title(f"{title}: {key[0]} x {key[1]}")
            if shape == [2]:
                sns.scatterplot(data=part, x="x0", y="x1", hue="label", palette=PALETTE, s=6, ax=ax, linewidth=0)
                ax.set(xlabel="", ylabel="")
                ax.set_aspect("equal")
            else:
                ax.imshow(image_grid(part, shape), cmap="gray", vmin=-1, vmax=1)
                ax.set(xlabel="one column per class", xticks=[], yticks=[])
    return save(fig, path)


def image_grid(part: pd.DataFrame, shape: list[int]) -> np.ndarray:
    """Tile flattened images into one picture: a column per class, first channel only."""
    pixels = part[[f"x{i}" for i in range(int(np.prod(shape)))]].to_numpy().reshape(-1, *shape)[:, 0]
    labels = part["label"].to_numpy()
    classes = sorted(set(labels))
    rows = max(int((labels == c).sum()) for c in classes)
    h, w = pixels.shape[1:]
    grid = np.full((rows * (h + 1), len(classes) * (w + 1)), -1.0)
    for col, c in enumerate(classes):
        for r, image in enumerate(pixels[labels == c]):
            grid[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = image
    return grid


def plot_run(run_dir: Path, out: Path | None = None) -> list[Path]:
    """Draw every plot of a run folder from its saved tables (into ``out``, default the folder); returns the PNGs."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir
    frame = results.with_variant_labels(results.read_table(run_dir, results.PLOTTED))
    every = frame[frame["status"] == "ok"]
    ok = results.offline(every)
    made: list[Path] = []
    if every.empty:
        return made
    if not ok.empty:
        made.append(accuracy_vs_nfe(ok, out / "accuracy_vs_nfe.png"))
    made.append(throughput(every, out / "throughput.png"))
    flips = flip_rates(ok, out / "flip_rate.png")
    if flips is not None:
        made.append(flips)
    windows = truncation_windows(ok, out / "truncation_windows.png")
    if windows is not None:
        made.append(windows)
    if (run_dir / results.RELIABILITY).is_file():
        made.append(reliability(results.read_parquet_file(run_dir / results.RELIABILITY), out / "reliability.png"))
    if (run_dir / results.SAMPLES).is_file():
        points = results.read_parquet_file(run_dir / results.SAMPLES)
        if (run_dir / results.REGIONS).is_file():
            regions = results.read_parquet_file(run_dir / results.REGIONS)
            made.append(decision_regions(regions, points, out / "decision_regions.png"))
        made.append(model_samples(points, out / "model_samples.png"))
    return made
