"""A fitted estimator's answers, not its speed: accuracy, calibration and how noisy its answers are.

In order, on the generators the cell's seed gives: one seeded pass over the test set (accuracy,
the per-sample predictions, and the seconds it took: the timing starts from it), a temperature
fitted on the held-out data, then GAP_REPEATS independent passes over the first GAP_SAMPLES
test samples (gap variance, flip rate and the spread of NFE). With ``passes = "accuracy"`` (suite key
``quality``) only the seeded pass runs: the columns of the other two are NaN and there are no
reliability bins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from diffbench import batching, metrics
from diffbench.cell import Cell
from diffbench.contract import Estimator, PluginOutputError, check_errors
from diffbench.draws import Design, Replay
from diffbench.model import ConditionalModel
from diffbench.summary import median_iqr
from diffbench.timing import timed

GAP_SAMPLES = 128  # test samples behind gap_variance
GAP_REPEATS = 4  # independent repeats behind gap_variance

Classify = Callable[..., torch.Tensor]  # classify(inputs, generator, stream="test") -> errors [N, K]


@dataclass
class CellData:
    """What a cell classifies (test) and may tune on (held-out training data), on the model's device."""

    x: torch.Tensor
    y: torch.Tensor
    heldout_x: torch.Tensor
    heldout_y: torch.Tensor


def classifier(
    cell: Cell, estimator: Estimator, model: ConditionalModel, design: Design | int | None = None
) -> tuple[Classify, int]:
    """The estimator's checked errors over any number of samples (streamed in fixed batches), and that batch.

    ``classify(inputs, generator, stream)``: with a ``design`` (bank mode: a ``Design``, or its seed) each
    call draws from the design of draws (``diffbench.draws``) of its samples on ``stream``, one stream per pass.
    """
    name, trials, k = cell.estimator.name, cell.trials, model.num_classes

    def one_call(inputs: torch.Tensor, generator: torch.Generator, stream: str) -> torch.Tensor:
        with replaying(model, inputs, design, stream):
            errors = estimator.errors(model, inputs, trials, generator)
        model.check_finite(f"during a pass of estimator '{name}'")  # blame the module, not the estimator
        return check_errors(errors, inputs.shape[0], k, name)

    per_call = batching.samples_per_call(trials, k, model.data_shape)  # the same batches on every device

    def classify(inputs: torch.Tensor, generator: torch.Generator, stream: str = "test") -> torch.Tensor:
        return batching.in_batches(lambda part: one_call(part, generator, stream), inputs, per_call)

    return classify, per_call


@contextmanager
def replaying(
    model: ConditionalModel, inputs: torch.Tensor, design: Design | int | None, stream: str
) -> Iterator[None]:
    """Draws from the design for ``inputs`` on ``stream`` inside the block (nothing without a design seed)."""
    if design is None:
        yield
        return
    model.replay = Replay(inputs, design, stream)
    try:
        yield
    finally:
        model.replay = None


def answer_noise(
    cell: Cell, classify: Classify, model: ConditionalModel, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float, list[float]]:
    """Raw gap variance, flip rate and NFE per sample of GAP_REPEATS independent passes over the first samples."""
    subset = slice(0, min(x.shape[0], GAP_SAMPLES))
    repeated, nfe = [], []
    for r in range(GAP_REPEATS):
        independent = torch.Generator(device=model.device).manual_seed(cell.seed + 1 + r)
        repeated.append(classify(x[subset], independent, f"repeat-{r + 1}").cpu())
        nfe.append(model.reset_nfe() / x[subset].shape[0])
    stacked = torch.stack(repeated)
    return metrics.gap_variance(stacked, y[subset]), metrics.flip_rate(stacked.argmin(2)), nfe


def quality(
    cell: Cell,
    estimator: Estimator,
    model: ConditionalModel,
    data: CellData,
    generator: torch.Generator,
    design: Design | int | None = None,
    passes: str = "full",
) -> tuple[dict[str, Any], float, list[dict], dict[str, Any]]:
    """Accuracy, calibration and noise of a fitted estimator (draws from the design given a ``design``).

    Returns its columns, the first pass's seconds, the reliability bins and the seeded pass's
    per-sample labels and predictions (what paired comparisons need). ``passes = "accuracy"`` runs the
    seeded pass alone.
    """
    x, y = data.x, data.y
    n = x.shape[0]
    classify, per_call = classifier(cell, estimator, model, design)
    errors: list[torch.Tensor] = []
    first_s = timed(lambda: errors.append(classify(x, generator)), model.device)
    pass_nfe = [model.reset_nfe() / n]
    if pass_nfe[0] == 0:
        raise PluginOutputError(
            f"estimator '{cell.estimator.name}' errors() never called model.eps: "
            "errors must come from the model (NFE = 0)"
        )
    err = errors[0].float().cpu()
    y_cpu = y.cpu()
    predictions = {"sample": torch.arange(n).numpy(), "label": y_cpu.numpy(), "pred": err.argmin(1).numpy()}
    correct = int((err.argmin(1) == y_cpu).sum())
    low, high = metrics.wilson_interval(correct, n)
    columns = {
        "n_test": n,
        "samples_per_call": min(n, per_call),
        "accuracy": correct / n,
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "nfe_per_sample": pass_nfe[0],
    }
    if passes == "accuracy":
        nan = float("nan")
        skipped = {"nfe_per_sample_iqr": nan, "temperature": nan, "gap_variance": nan, "flip_rate": nan}
        return {**columns, **skipped, **metrics.calibration_skipped()}, first_s, [], predictions
    temperature = 1.0
    if data.heldout_x.shape[0] >= 2:
        temperature = metrics.fit_temperature(
            classify(data.heldout_x, generator, "calibration").cpu(), data.heldout_y.cpu()
        )
    model.check_values = False  # fit and the full passes above checked the outputs' values; the rest repeats them
    model.reset_nfe()
    gap_var, flips, repeat_nfe = answer_noise(cell, classify, model, x, y_cpu)
    pass_nfe += repeat_nfe
    nfe_mid, nfe_iqr = median_iqr(pass_nfe)
    columns |= {
        "nfe_per_sample_iqr": nfe_iqr,
        "temperature": temperature,
        **metrics.calibration(err, y_cpu, temperature),
        "gap_variance": gap_var * nfe_mid,
        "flip_rate": flips,
    }
    return columns, first_s, metrics.reliability_bins(err, y_cpu, temperature), predictions
