"""The plots drawn from a run's figure parts: reliability bins, decision regions, the model's own samples, the
single-timestep accuracies.

Each function draws one figure and returns it; ``plots.plot_run`` writes it under the name
``plots.PLOTS`` declares.
"""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from diffbench.plot_style import PALETTE, PANEL, SPARSE_BIN


def reliability(bins: pd.DataFrame) -> plt.Figure:
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
    return fig


def decision_regions(regions: pd.DataFrame, points: pd.DataFrame) -> plt.Figure:
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
    return fig


def model_samples(points: pd.DataFrame) -> plt.Figure:
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
    return fig


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


def timestep_accuracy(frame: pd.DataFrame) -> plt.Figure | None:
    """Accuracy of the single-timestep classifier against t, one line per model (colour), 95% Wilson bands.

    The x axis is t where every model has the same T, else t / T; chance (1 / classes) is dotted.
    """
    if frame.empty:
        return None
    fraction = frame["num_timesteps"].nunique() > 1
    x = "t_fraction" if fraction else "t"
    keys = list(frame.groupby(PANEL, sort=False).groups)
    colors = sns.color_palette(PALETTE, len(keys))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for key, color in zip(keys, colors, strict=True):
        line = frame.set_index(PANEL).loc[[key]].sort_values(x)
        n, total = int(line["n_test"].iloc[0]), int(line["n_test_total"].iloc[0])
        shown = f"{n} test samples" + (f" of {total}" if n < total else "")
        label = f"{key[0]} x {key[1]} ({shown}, {int(line['draws'].iloc[0])} draws)"
        ax.plot(line[x], line["accuracy"], marker="o", ms=3, color=color, label=label)
        ax.fill_between(line[x], line["accuracy_ci_low"], line["accuracy_ci_high"], color=color, alpha=0.15)
    for classes in sorted(frame["num_classes"].unique()):
        ax.axhline(1 / classes, color="grey", lw=0.8, ls=":")
    xlabel = (
        "t / T (fraction of the schedule)" if fraction else f"timestep t (T = {int(frame['num_timesteps'].iloc[0])})"
    )
    ax.set(
        xlabel=xlabel, ylabel="test accuracy at that t alone", ylim=(0, 1.02), title="which timesteps carry the class"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig
