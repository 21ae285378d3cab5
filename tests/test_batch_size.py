"""The batch-size sweep's re-check and its cache (issue 24): a sweep disturbed by another process is never reused.

Every timing here is on a fake clock: a module whose call on n rows takes ``seconds(n, now)``; the process's
CPU clock is the same fake clock (it has a whole core) unless a test says otherwise.
"""

import json

import pytest
import torch

from diffbench import batch_size, timing
from diffbench.batch_size import (
    BATCH_SIZE_CACHE,
    RECHECK_ROUNDS,
    Sweep,
    cached_batch_size,
    sweep_batch_sizes,
    tune_batch_size,
)
from tests.helpers import make_model


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing, "clock", fake)
    monkeypatch.setattr(batch_size, "cpu_clock", fake)
    return fake


class Ticking(torch.nn.Module):
    """A denoiser whose call on n rows takes ``seconds(n, now)`` on the fake clock; it records each call's rows."""

    def __init__(self, clock: FakeClock, seconds) -> None:
        super().__init__()
        self.clock, self.seconds = clock, seconds
        self.rows: list[int] = []

    def forward(self, x_t, t, c):
        self.rows.append(x_t.shape[0])
        self.clock.now += self.seconds(x_t.shape[0], self.clock.now)
        return torch.zeros_like(x_t)


def quiet(rows: int, now: float) -> float:
    """Bigger calls always run more rows/s: the sweep climbs to the largest candidate, 65536."""
    return 1 / 1024 + rows / 2**20


def trained_alongside(start: float, stop: float):
    """``quiet``, but 44x slower while another process trains, from ``start`` to ``stop`` on the fake clock."""
    return lambda rows, now: quiet(rows, now) * (44 if start <= now < stop else 1)


def test_a_steady_sweep_is_clear_cached_with_its_rates_and_reused(clock, tmp_path):
    module = Ticking(clock, quiet)
    model = make_model(module)
    assert cached_batch_size(model, tmp_path, "mlp|cpu") == (65536, False)
    entry = json.loads((tmp_path / BATCH_SIZE_CACHE).read_text())["mlp|cpu"]
    assert entry["batch_size"] == 65536 and entry["clear"] is True
    assert sorted(entry["rows_per_s"]) == ["16384", "65536"], "the winner and its measured neighbour"
    assert entry["cpu_share"] == 1.0
    assert all(len(rates) == 1 + RECHECK_ROUNDS for rates in entry["rows_per_s"].values())
    calls = len(module.rows)
    assert cached_batch_size(model, tmp_path, "mlp|cpu") == (65536, True)
    assert len(module.rows) == calls, "a cached size runs nothing"


# Regression (issue 24): a sweep run while another process trained picked 256 rows and was cached for good.
def test_a_sweep_disturbed_by_another_process_is_used_once_then_swept_again(clock, tmp_path):
    module = Ticking(clock, trained_alongside(start=0.06, stop=0.5))  # 256 is timed quiet, 1024 while training
    model = make_model(module)
    assert cached_batch_size(model, tmp_path, "k") == (256, False), "this run uses what it measured"
    entry = json.loads((tmp_path / BATCH_SIZE_CACHE).read_text())["k"]
    assert entry["batch_size"] == 256 and entry["clear"] is False, "written down for the record, with its rates"
    assert cached_batch_size(model, tmp_path, "k") == (65536, False), "not reused: swept again, now quiet"
    assert cached_batch_size(model, tmp_path, "k") == (65536, True)


def test_the_recheck_does_not_change_the_pick(clock):
    module = Ticking(clock, trained_alongside(start=0.06, stop=0.5))
    sweep = sweep_batch_sizes(make_model(module))
    assert sweep.batch_size == 256 and set(module.rows) == {256, 1024}
    assert not sweep.clear, "the re-check times 1024 quiet: it beats 256 by far"
    assert sweep.rows_per_s[1024][0] < sweep.rows_per_s[256][0] < min(sweep.rows_per_s[1024][1:])


def test_a_winner_timed_during_a_burst_is_not_clear(clock):
    steady_then_burst = trained_alongside(start=0.3, stop=0.35)  # one re-check of the winner lands in it
    sweep = sweep_batch_sizes(make_model(Ticking(clock, steady_then_burst)), candidates=(256, 1024))
    assert sweep.batch_size == 1024 and not sweep.clear


def test_running_out_of_memory_during_the_recheck_leaves_the_sweep_unclear(clock):
    def seconds(rows, now):
        if rows == 1024 and now > 0.15:  # another process took the memory after the sweep (ends near 0.104)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return quiet(rows, now)

    sweep = sweep_batch_sizes(make_model(Ticking(clock, seconds)), candidates=(256, 1024))
    assert sweep.batch_size == 1024 and sweep.rows_per_s[1024] == [524288.0] and not sweep.clear


# Seen on a shared 2-core machine: a steady load slowed every size ~300x alike, the per-call budget stopped the
# sweep at 1024 rows (4096 quiet), and the rates agreed: only the process's share of a core tells.
def test_a_sweep_on_a_cpu_shared_with_other_processes_is_not_clear(clock, monkeypatch, tmp_path):
    monkeypatch.setattr(batch_size, "cpu_clock", lambda: clock.now / 3)  # a third of a core while it was timed
    sweep = sweep_batch_sizes(make_model(Ticking(clock, quiet)))
    assert sweep.batch_size == 65536 and sweep.cpu_share == pytest.approx(1 / 3) and not sweep.clear
    assert cached_batch_size(make_model(Ticking(clock, quiet)), tmp_path, "k") == (65536, False)
    assert cached_batch_size(make_model(Ticking(clock, quiet)), tmp_path, "k") == (65536, False), "not cached"
    monkeypatch.setattr(batch_size, "cpu_clock", clock)
    assert cached_batch_size(make_model(Ticking(clock, quiet)), tmp_path, "k") == (65536, False)
    assert cached_batch_size(make_model(Ticking(clock, quiet)), tmp_path, "k") == (65536, True)


@pytest.mark.parametrize(
    ("rates", "clear"),
    [
        ({1024: [100, 100, 100, 100]}, True),
        ({1024: [100, 104, 96, 100], 256: [50, 51, 49, 50], 4096: [95, 97, 99, 98]}, True),  # 4096 within 10%
        ({1024: [100, 100, 100, 100], 4096: [120, 120, 120, 120]}, False),  # beaten by a neighbour
        ({1024: [100, 60, 100, 100]}, False),  # the winner's rates disagree
        ({1024: [100, 100, 100]}, False),  # a re-check is missing
        ({1024: [100, 100, 100, 100], 4096: [90]}, False),
        ({}, False),
    ],
)
def test_a_winner_is_clear_when_its_rates_agree_and_no_neighbour_beats_it(rates, clear):
    rows_per_s = {size: [float(r) for r in values] for size, values in rates.items()}
    assert Sweep(1024, rows_per_s).clear is clear
    assert Sweep(1024, rows_per_s, cpu_share=0.95).clear is clear
    assert not Sweep(1024, rows_per_s, cpu_share=0.5).clear and not Sweep(1024, rows_per_s, float("nan")).clear


def test_an_entry_round_trips_through_json():
    for share in (None, 0.97):
        sweep = Sweep(1024, {256: [1.0, 2.0, 2.0, 2.0], 1024: [3.0, 3.0, 3.0, 3.0]}, share)
        assert Sweep.from_json(json.loads(json.dumps(sweep.to_json()))) == sweep


@pytest.mark.parametrize(
    "entry",
    [
        256,  # an older diffbench's bare size: its sweep was never re-checked
        {"batch_size": 256, "clear": True, "rows_per_s": {"256": [1, 10, 1, 10]}},  # the rates say otherwise
        {"batch_size": 256, "clear": True, "rows_per_s": {"256": [1, 1, 1, float("inf")]}},
        {"batch_size": 256, "clear": True, "rows_per_s": {"256": [1, 1, 1, True]}},
        {"batch_size": 0, "clear": True, "rows_per_s": {"0": [1, 1, 1, 1]}},
        {"batch_size": 256, "clear": True, "rows_per_s": {"x": [1, 1, 1, 1]}},
        {"batch_size": 256, "clear": True},
        {"batch_size": 256, "clear": True, "rows_per_s": {"256": [1, 1, 1, 1]}},  # no cpu_share: not re-checkable
        {"batch_size": 256, "clear": True, "rows_per_s": {"256": [1, 1, 1, 1]}, "cpu_share": 0.3},
        {"batch_size": 256, "clear": True, "rows_per_s": {"256": [1, 1, 1, 1]}, "cpu_share": "1"},
        None,
    ],
)
def test_an_entry_without_a_clear_winner_is_swept_again(monkeypatch, tmp_path, entry):
    (tmp_path / BATCH_SIZE_CACHE).write_text(json.dumps({"k": entry, "other": 7}))
    monkeypatch.setattr(batch_size, "sweep_batch_sizes", lambda model: Sweep(4096, {4096: [5.0] * 4}))
    model = make_model(torch.nn.Identity())
    assert cached_batch_size(model, tmp_path, "k") == (4096, False)
    assert json.loads((tmp_path / BATCH_SIZE_CACHE).read_text()) == {
        "k": Sweep(4096, {4096: [5.0] * 4}).to_json(),
        "other": 7,
    }
    assert cached_batch_size(model, tmp_path, "k") == (4096, True)


def test_an_unclear_sweep_keeps_a_clear_entry_another_run_wrote_meanwhile(monkeypatch, tmp_path):
    path, theirs = tmp_path / BATCH_SIZE_CACHE, Sweep(1024, {1024: [5.0] * 4})

    def sweep_while_another_run_caches(model):
        path.write_text(json.dumps({"k": theirs.to_json()}))
        return Sweep(256, {256: [1.0, 9.0, 1.0, 9.0]})

    monkeypatch.setattr(batch_size, "sweep_batch_sizes", sweep_while_another_run_caches)
    assert cached_batch_size(make_model(torch.nn.Identity()), tmp_path, "k") == (256, False)
    assert json.loads(path.read_text()) == {"k": theirs.to_json()}


def test_each_key_is_swept_once_and_a_corrupt_cache_counts_as_empty(monkeypatch, tmp_path):
    swept = []
    monkeypatch.setattr(batch_size, "sweep_batch_sizes", lambda model: swept.append(model) or Sweep(8, {8: [1.0] * 4}))
    (tmp_path / BATCH_SIZE_CACHE).write_text("{not json")
    model = make_model(torch.nn.Identity())
    assert [cached_batch_size(model, tmp_path, key) for key in ("a", "a", "b", "b")] == [
        (8, False),
        (8, True),
        (8, False),
        (8, True),
    ]
    assert len(swept) == 2 and sorted(json.loads((tmp_path / BATCH_SIZE_CACHE).read_text())) == ["a", "b"]


def test_without_a_cache_dir_every_call_sweeps(monkeypatch):
    swept = []
    monkeypatch.setattr(batch_size, "sweep_batch_sizes", lambda model: swept.append(model) or Sweep(8, {8: [1.0] * 4}))
    model = make_model(torch.nn.Identity())
    assert cached_batch_size(model, None, "k") == cached_batch_size(model, None, "k") == (8, False)
    assert len(swept) == 2


def test_on_a_quiet_machine_the_pick_is_the_sweeps_as_before(clock):
    """The re-check only decides caching: the sizes picked are the old sweep's (see tests/test_timing.py too)."""
    assert tune_batch_size(make_model(Ticking(clock, quiet))) == 65536
    call_s = {100: 1 / 128, 200: 1 / 128, 400: 4 / 128, 800: 1 / 128}
    assert tune_batch_size(make_model(Ticking(clock, lambda rows, now: call_s[rows])), candidates=tuple(call_s)) == 200
