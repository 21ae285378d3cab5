"""Metrics beyond accuracy: calibrated probabilities and the variance of the class-error gap."""

from __future__ import annotations

import math

import torch

CALIBRATION_BINS = 15


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (well behaved at 0 and 1)."""
    if n == 0:
        return math.nan, math.nan
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def log_probs(errors: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(c | x) = log softmax(-errors / temperature): lower error, higher probability."""
    return torch.log_softmax(-errors.double() / temperature, dim=1)


def fit_temperature(errors: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature minimising the NLL of softmax(-errors / T) on held-out data.

    A 1-D problem solved by a coarse log-spaced scan, then golden-section refinement.
    """
    errors, labels = errors.double(), labels.long()
    spread = (errors - errors.mean(1, keepdim=True)).abs().mean().item()
    scale = spread if spread > 0 else 1.0

    def nll(log_t: float) -> float:
        return torch.nn.functional.nll_loss(log_probs(errors, math.exp(log_t)), labels).item()

    grid = [math.log(scale) + k * 0.5 for k in range(-16, 17)]
    best = min(range(len(grid)), key=lambda i: nll(grid[i]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)


def calibration(errors: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, float]:
    """NLL, expected calibration error (equal-width bins) and Brier score of softmax(-errors / T)."""
    logp = log_probs(errors, temperature)
    prob = logp.exp()
    labels = labels.long()
    confidence, pred = prob.max(1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, CALIBRATION_BINS + 1, dtype=torch.float64)
    bins = torch.bucketize(confidence, edges[1:-1])
    ece = 0.0
    for b in range(CALIBRATION_BINS):
        inside = bins == b
        if inside.any():
            ece += inside.double().mean().item() * abs(confidence[inside].mean().item() - correct[inside].mean().item())
    onehot = torch.nn.functional.one_hot(labels, prob.shape[1]).double()
    return {
        "nll": torch.nn.functional.nll_loss(logp, labels).item(),
        "ece": ece,
        "brier": (prob - onehot).square().sum(1).mean().item(),
    }


def calibration_skipped() -> dict[str, float]:
    """``calibration``'s columns where no temperature was fitted (the suite's ``quality = "accuracy"``): NaN."""
    return {"nll": float("nan"), "ece": float("nan"), "brier": float("nan")}


def reliability_bins(errors: torch.Tensor, labels: torch.Tensor, temperature: float) -> list[dict[str, float]]:
    """Per confidence bin: mean confidence, accuracy and count (the reliability diagram's data)."""
    prob = log_probs(errors, temperature).exp()
    confidence, pred = prob.max(1)
    correct = (pred == labels.long()).double()
    edges = torch.linspace(0, 1, CALIBRATION_BINS + 1, dtype=torch.float64)
    bins = torch.bucketize(confidence, edges[1:-1])
    out = []
    for b in range(CALIBRATION_BINS):
        inside = bins == b
        if inside.any():
            out.append(
                {
                    "bin": b,
                    "confidence": confidence[inside].mean().item(),
                    "bin_accuracy": correct[inside].mean().item(),
                    "count": int(inside.sum()),
                }
            )
    return out


def gap_variance(repeated: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over samples of the variance, across independent repeats, of err[true] - err[strongest rival].

    ``repeated`` is ``[R, B, K]``: the estimator run R times with independent generators.
    The strongest rival is the non-true class with the lowest mean error over the repeats.
    """
    repeated = repeated.double()
    labels = labels.long()
    mean = repeated.mean(0)
    rival_mean = mean.scatter(1, labels[:, None], math.inf)
    rival = rival_mean.argmin(1)
    true_err = repeated.gather(2, labels[None, :, None].expand(repeated.shape[0], -1, 1))[..., 0]
    rival_err = repeated.gather(2, rival[None, :, None].expand(repeated.shape[0], -1, 1))[..., 0]
    return (true_err - rival_err).var(0).mean().item()


def flip_rate(predictions: torch.Tensor) -> float:
    """Share of samples whose predicted class differs between two independent repeats of the estimator.

    ``predictions`` is ``[R, B]``: the predicted class of B samples in R repeats with independent
    generators. Averaged over every pair of repeats, so it does not grow with R: it is the
    chance that running the estimator again changes a sample's answer.
    """
    repeats = predictions.shape[0]
    if repeats < 2 or predictions.shape[1] == 0:
        return math.nan
    pairs = [(i, j) for i in range(repeats) for j in range(i + 1, repeats)]
    return sum((predictions[i] != predictions[j]).double().mean().item() for i, j in pairs) / len(pairs)
