"""The plots of a run, drawn from its folder's saved tables alone, so `diffbench plot DIR` can redraw any old run.

``PLOTS`` declares every PNG a run folder may hold, with the title and caption the report shows
it with; ``plot_run`` draws them (``table_plots`` from the results table, ``part_plots`` from the
figure parts) and ``runs_side_by_side`` draws several runs on shared axes for the report.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from diffbench import part_plots, results, standings, table_plots
from diffbench.plot_style import PALETTE, PANEL, literal, literal_text
from diffbench.rundir import RunFolder


class Plot(NamedTuple):
    """One PNG a run folder may hold: its file name, and the title and caption it is shown with."""

    file: str
    title: str
    caption: str


ACCURACY_VS_NFE = Plot(
    "accuracy_vs_nfe.png",
    "Accuracy against compute",
    "Test accuracy against denoiser evaluations per sample (NFE), one line per estimator, 95% Wilson "
    "bands; the circled cells form the Pareto frontier (no other cell is both cheaper and more accurate). "
    "Grey horizontal lines: reference classifiers trained on the same split (no NFE), with their 95% bands.",
)
THROUGHPUT = Plot(
    "throughput.png",
    "Throughput, efficiency and latency",
    "Samples per second (median, IQR bars) and efficiency (evals/s over the bare network's forward rows/s on "
    "the same device, 1 = no overhead) against trials; single-sample latency p50 where measured.",
)
FLIP_RATE = Plot(
    "flip_rate.png",
    "How often answers change",
    "Flip rate: the share of test samples whose predicted class differs between two independent repeats of "
    "the estimator; right, as a ratio to full-mc's flip rate at the same NFE (below 1: steadier answers for "
    "the same compute).",
)
RELIABILITY = Plot(
    "reliability.png",
    "Reliability of the calibrated probabilities",
    "Each estimator at its largest trials: accuracy against confidence per bin. Marker area and the histogram "
    "beneath show how many samples each bin holds; hollow grey points hold fewer than 10 and are left off "
    "the line.",
)
TRUNCATION_WINDOWS = Plot(
    "truncation_windows.png",
    "Truncation windows",
    "Accuracy of the truncated estimator over t_min x t_max: which timesteps carry the class.",
)
TIMESTEP_ACCURACY = Plot(
    "timestep_accuracy.png",
    "Which timesteps carry the class",
    "Test accuracy of the single-timestep classifier (argmin over classes of the l2 error at that one t, averaged "
    "over its noise draws) on an evenly spaced grid of timesteps, one line per model, 95% Wilson bands; the dotted "
    "line is chance (1 / classes).",
)
DECISION_REGIONS = Plot(
    "decision_regions.png",
    "Decision regions",
    "Each estimator's predicted class over the plane (shaded by confidence), test points on top.",
)
MODEL_SAMPLES = Plot(
    "model_samples.png",
    "The model's own samples",
    "Samples drawn from the conditional model per class beside the test data: did the model learn the data?",
)
#: Every plot, in the order the report shows them.
PLOTS = (
    ACCURACY_VS_NFE,
    THROUGHPUT,
    FLIP_RATE,
    RELIABILITY,
    TRUNCATION_WINDOWS,
    TIMESTEP_ACCURACY,
    DECISION_REGIONS,
    MODEL_SAMPLES,
)


def save(fig: plt.Figure, path: Path) -> Path:
    """Lay out, write as PNG and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(run_dir: Path, out: Path | None = None) -> list[Path]:
    """Draw every plot of a run folder from its saved tables (into ``out``, default the folder); returns the PNGs."""
    folder = RunFolder(run_dir)
    out = Path(out) if out is not None else folder.path
    frame = literal_text(results.with_variant_labels(folder.read_table(results.PLOTTED)))
    every = frame[frame["status"] == "ok"]
    if every.empty:
        return []
    ok, refs = results.offline(every), results.references(every)
    bins, points, regions, timesteps = (
        literal_text(t)
        for t in (folder.read_reliability_bins(), folder.read_samples(), folder.read_regions(), folder.read_timesteps())
    )
    drawings: list[tuple[Plot, Callable[[], plt.Figure | None]]] = [  # each drawn and saved in turn
        (ACCURACY_VS_NFE, lambda: table_plots.accuracy_vs_nfe(ok, refs) if not ok.empty else None),
        (THROUGHPUT, lambda: table_plots.throughput(every) if timed(every) else None),
        (FLIP_RATE, lambda: table_plots.flip_rates(ok)),
        (TRUNCATION_WINDOWS, lambda: table_plots.truncation_windows(ok)),
        (TIMESTEP_ACCURACY, lambda: part_plots.timestep_accuracy(timesteps) if has(timesteps) else None),
        (RELIABILITY, lambda: part_plots.reliability(bins) if has(bins) else None),
        (DECISION_REGIONS, lambda: part_plots.decision_regions(regions, points) if has(regions, points) else None),
        (MODEL_SAMPLES, lambda: part_plots.model_samples(points) if has(points) else None),
    ]
    made = []
    for plot, draw in drawings:
        fig = draw()
        if fig is not None:
            made.append(save(fig, out / plot.file))
    return made


def timed(frame: pd.DataFrame) -> bool:
    """Whether any row holds a timing (a run rescored from a bank holds none)."""
    return any(c in frame and frame[c].notna().any() for c in ("samples_per_s", "latency_p50_ms"))


def has(*tables: pd.DataFrame | None) -> bool:
    """Whether the run saved every one of these figure parts."""
    return all(table is not None for table in tables)


def runs_side_by_side(runs: list[tuple[str, pd.DataFrame]]) -> bytes | None:
    """Accuracy against NFE and samples/s against trials, every run on the same axes (line style = run), as PNG.

    ``runs``: each run's name and results table. None when no run has a finished cell.
    """
    offline = [literal_text(standings.offline_ok(frame)).assign(run=literal(name)) for name, frame in runs]
    if all(f.empty for f in offline):
        return None
    frame = pd.concat([f for f in offline if not f.empty], ignore_index=True)
    names = [literal(name) for name, _ in runs]
    keys = list(frame.groupby(PANEL, sort=False).groups)
    labels = list(dict.fromkeys(frame["estimator_label"]))
    colors = dict(zip(labels, sns.color_palette(PALETTE, len(labels)), strict=True))
    styles = dict(zip(names, ["-", "--", ":", "-."] * len(runs), strict=False))
    markers = dict(zip(names, ["o", "s", "^", "D", "v"] * len(runs), strict=False))
    fig, axes = plt.subplots(2, len(keys), figsize=(6.5 * len(keys), 8.5), squeeze=False)
    for col, key in enumerate(keys):
        panel = frame.set_index(PANEL).loc[[key]].reset_index()
        first = panel["device"].iloc[0]
        panel = panel[panel["device"] == first]
        for (label, run), line in panel.groupby(["estimator_label", "run"], sort=False):
            line = line.sort_values("nfe_per_sample")
            kw = {"color": colors[label], "ls": styles[run], "marker": markers[run], "ms": 4}
            axes[0][col].plot(line["nfe_per_sample"], line["accuracy"], label=f"{label} · {run}", **kw)
            if "samples_per_s" in line:
                axes[1][col].plot(line["trials"], line["samples_per_s"], **kw)
        axes[0][col].set(
            xscale="log", ylabel="test accuracy", xlabel="NFE per sample", title=f"{key[0]} x {key[1]} ({first})"
        )
        axes[1][col].set(xscale="log", yscale="log", ylabel="samples / s (offline)", xlabel="trials")
        axes[0][col].legend(fontsize=7)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
