"""The quality passes hand the estimator bounded batches of samples (``diffbench.batching``)."""

from __future__ import annotations

import torch

from diffbench import batching, quality
from diffbench.cell import Cell
from tests.helpers import Recorder, estimator, gen, make_model, points

N, HELD, TRIALS, K, DIM = 40, 30, 2, 3, 2


def sizes_seen(per_call_elements: int | None, monkeypatch, max_batch: int = 4096):
    """Quality of shared-noise on a fixed model and data: its columns, predictions and the sizes errors() got."""
    if per_call_elements is not None:
        monkeypatch.setattr(batching, "MAX_CALL_ELEMENTS", per_call_elements)
    seen: list[int] = []
    shared = estimator("shared-noise")
    original = type(shared).errors

    def recording(self, model, x, trials, generator):
        seen.append(x.shape[0])
        return original(self, model, x, trials, generator)

    monkeypatch.setattr(type(shared), "errors", recording)
    model = make_model(Recorder(DIM, K), num_classes=K, dim=DIM, timesteps=50, max_batch=max_batch)
    data = quality.CellData(
        points(N, DIM, seed=1), torch.arange(N) % K, points(HELD, DIM, seed=2), torch.arange(HELD) % K
    )
    cell = Cell(None, None, shared, TRIALS, "cpu", 0)
    columns, _, _, predictions = quality.quality(cell, shared, model, data, gen(0))
    monkeypatch.undo()
    return columns, predictions, seen


def test_samples_per_call_bounds_samples_trials_classes_and_sample_size():
    assert batching.samples_per_call(4, 10, (3, 32, 32)) == batching.MAX_CALL_ELEMENTS // (4 * 10 * 3 * 32 * 32)
    assert batching.samples_per_call(100, 1000, (3, 256, 256)) == 1, "at least one sample, however large"
    assert batching.samples_per_call(1, 2, (2,)) == batching.MAX_CALL_ELEMENTS // 4


def test_below_the_bound_each_pass_is_one_call_as_before(monkeypatch):
    columns, predictions, seen = sizes_seen(None, monkeypatch)
    assert seen == [N, HELD] + [N] * quality.GAP_REPEATS, "accuracy, calibration, then the repeats"
    assert columns["samples_per_call"] == N
    whole = estimator("shared-noise")
    model = make_model(Recorder(DIM, K), num_classes=K, dim=DIM, timesteps=50)
    direct = whole.errors(model, points(N, DIM, seed=1), TRIALS, gen(0)).argmin(1)
    assert torch.equal(torch.as_tensor(predictions["pred"]), direct), "the same draws as one errors() call"


def test_above_the_bound_every_pass_is_streamed_in_fixed_batches(monkeypatch):
    per_call = 16
    columns, predictions, seen = sizes_seen(per_call * TRIALS * K * DIM, monkeypatch)
    assert seen == [16, 16, 8] + [16, 14] + [16, 16, 8] * quality.GAP_REPEATS
    assert columns["samples_per_call"] == per_call and columns["n_test"] == N
    assert len(predictions["pred"]) == N
    again, again_predictions, again_seen = sizes_seen(per_call * TRIALS * K * DIM, monkeypatch, max_batch=7)
    assert again_seen == seen, "the batches do not depend on the model's batch size"
    assert (again_predictions["pred"] == predictions["pred"]).all() and again["accuracy"] == columns["accuracy"]
    assert again["temperature"] == columns["temperature"] and again["flip_rate"] == columns["flip_rate"]


def test_batched_errors_are_the_calls_on_consecutive_slices_concatenated():
    x = points(N, DIM, seed=1)
    shared = estimator("shared-noise")
    model = make_model(Recorder(DIM, K), num_classes=K, dim=DIM, timesteps=50)
    generator = gen(0)
    batched = batching.in_batches(lambda part: shared.errors(model, part, TRIALS, generator), x, 16)
    generator = gen(0)
    parts = [shared.errors(model, x[i : i + 16], TRIALS, generator) for i in (0, 16, 32)]
    assert torch.equal(batched, torch.cat(parts)) and batched.shape == (N, K)
