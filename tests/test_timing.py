"""Timing against the bare forward, single-sample latency, and the batch-size sweep that uses the same timers."""

import itertools

import pytest
import torch

from diffbench import timing
from diffbench.batch_size import parse_batch_size, tune_batch_size
from diffbench.timing import MIN_REGION_S, measure, measure_latency, timed
from tests.helpers import make_model

CPU = torch.device("cpu")


class FakeClock:
    """A clock that moves only when a fake pass or module says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing, "clock", fake)
    return fake


class Ticking(torch.nn.Module):
    """A denoiser whose call takes ``seconds(rows)`` on the fake clock; it records the rows of every call."""

    def __init__(self, clock: FakeClock, seconds=lambda rows: 0.0) -> None:
        super().__init__()
        self.clock, self.seconds = clock, seconds
        self.rows: list[int] = []

    def forward(self, x_t, t, c):
        self.rows.append(x_t.shape[0])
        self.clock.advance(self.seconds(x_t.shape[0]))
        return torch.zeros_like(x_t)


def fake_pass(model, clock: FakeClock, durations, rows: int = 12):
    """A pass that takes the next of ``durations`` on the fake clock, then calls the model on ``rows`` rows."""
    durations = iter(durations)
    x, t, c = torch.zeros(rows, 2), torch.zeros(rows, dtype=torch.long), torch.zeros(rows, dtype=torch.long)

    def run_pass():
        clock.advance(next(durations))
        model.eps(x, t, c)

    return run_pass


def measure_repeats(monkeypatch, clock, durations, **kw):
    """``measure`` with one pass per region and no warm-up, so region i takes ``durations[i]``."""
    monkeypatch.setattr(timing, "calibrate", lambda *args: 1)
    model = make_model(Ticking(clock))
    return measure(fake_pass(model, clock, durations), model, 4, torch.Generator(), first_pass_s=1.0, **kw)


def test_measure_counts_evaluations_through_the_model(clock):
    """Passes of 20 rows for 4 samples: 5 evaluations per sample, read from the model's counter."""
    model = make_model(Ticking(clock, lambda rows: 1 / 128))
    run_pass = fake_pass(model, clock, itertools.repeat(1 / 128), rows=20)
    speed = measure(run_pass, model, 4, torch.Generator(), first_pass_s=1 / 64, min_repeats=2, max_repeats=2)
    assert speed.repeats == 2, "max_repeats stops before the 10 repeats that may settle"
    assert speed.inner_passes == 1, "a warm pass of 1/64 s fills a 5 ms region"
    assert (speed.samples_per_s, speed.evals_per_s, speed.bare_rows_per_s) == (4 * 64, 20 * 64, 20 * 128)
    assert speed.efficiency == 0.5, "half of each pass is the module's call"
    assert speed.warmup_s == 4 / 64, "the caller's pass and three warm ones pass WARMUP_S"
    assert speed.noisy and speed.timing_note == "only 2 repeat(s)"


def test_each_timed_region_lasts_at_least_min_region_s(clock):
    """A cold first pass of 50 ms would time one 2 ms warm pass per region: warm regions are checked and scaled up."""
    model = make_model(Ticking(clock))
    run_pass = fake_pass(model, clock, itertools.repeat(0.002), rows=6)
    speed = measure(run_pass, model, 2, torch.Generator(), first_pass_s=0.05, max_repeats=1)
    region_s = speed.inner_passes * 2 / speed.samples_per_s
    assert speed.inner_passes > 1 and region_s >= MIN_REGION_S
    assert region_s == pytest.approx(speed.inner_passes * 0.002)


def test_measure_rates_and_efficiency_on_a_fake_clock(clock):
    """Each pass spends 1/64 s of its own plus one 1/64 s module call: half the bare rate."""
    model = make_model(Ticking(clock, lambda rows: 1 / 64))
    speed = measure(fake_pass(model, clock, itertools.repeat(1 / 64)), model, 4, torch.Generator(), first_pass_s=0.1)
    assert speed.inner_passes == 1, "one pass of 1/32 s fills a region of at least 5 ms"
    assert (speed.samples_per_s, speed.evals_per_s, speed.bare_rows_per_s) == (4 * 32, 12 * 32, 12 * 64)
    assert speed.efficiency == 0.5 and speed.efficiency_iqr == 0
    assert (speed.efficiency_ci_low, speed.efficiency_ci_high) == (0.5, 0.5)
    assert (speed.samples_per_s_ci_low, speed.samples_per_s_ci_high) == (128.0, 128.0)
    assert (speed.repeats, speed.noisy, speed.rel_iqr, speed.timing_note) == (10, False, 0.0, "")


@pytest.mark.parametrize(
    ("first_pass_s", "warm_passes", "warmup_s", "estimate_s"), [(0.02, 1, 0.0825, 0.0625), (0.5, 0, 0.5, 0.5)]
)
def test_warm_up_counts_the_callers_first_pass(monkeypatch, clock, first_pass_s, warm_passes, warmup_s, estimate_s):
    passes, calibrated = [], []

    def run_pass():
        passes.append(1)
        clock.advance(0.0625)

    def calibrate(run, device, estimate):
        calibrated.append((len(passes), estimate))
        return 1

    monkeypatch.setattr(timing, "calibrate", calibrate)
    model = make_model(Ticking(clock))
    speed = measure(run_pass, model, 1, torch.Generator(), first_pass_s=first_pass_s)
    assert calibrated == [(warm_passes, estimate_s)], "calibrated from the warm passes' mean once warm"
    assert speed.warmup_s == warmup_s


def test_measure_stops_at_min_repeats_when_they_agree(monkeypatch, clock):
    speed = measure_repeats(monkeypatch, clock, itertools.repeat(0.25))
    assert (speed.repeats, speed.samples_per_s, speed.rel_iqr, speed.noisy) == (10, 16.0, 0.0, False)


def test_measure_repeats_while_they_disagree_and_stops_once_they_agree(monkeypatch, clock):
    durations = itertools.chain([0.125, 0.375] * 3, itertools.repeat(0.25))
    speed = measure_repeats(monkeypatch, clock, durations)
    assert speed.repeats == 13, "the 90% interval (ranks 4 and 10 of 13) is the first to leave out 3 outliers a side"
    assert speed.samples_per_s == 16.0 and not speed.noisy
    assert (speed.samples_per_s_ci_low, speed.samples_per_s_ci_high) == (16.0, 16.0)


def test_measure_honours_min_repeats(monkeypatch, clock):
    assert measure_repeats(monkeypatch, clock, itertools.repeat(0.25), min_repeats=12).repeats == 12
    speed = measure_repeats(monkeypatch, clock, itertools.repeat(0.25), min_repeats=2)
    assert speed.repeats == timing.MIN_SETTLED_REPEATS == 10 and not speed.noisy, "never fewer than 10 repeats"


def test_measure_stops_at_max_repeats(monkeypatch, clock):
    speed = measure_repeats(monkeypatch, clock, itertools.cycle([0.125, 0.375]), max_repeats=12)
    assert speed.repeats == 12
    assert speed.noisy and speed.rel_iqr > 0.05
    assert speed.timing_note.startswith("samples/s median known to +-")


def test_measure_stops_at_the_time_cap(monkeypatch, clock):
    speed = measure_repeats(monkeypatch, clock, itertools.cycle([0.125, 0.375]), max_time_s=1.0)
    assert speed.repeats == 4, "0.125 + 0.375 + 0.125 + 0.375 s reach the 1 s cap"
    assert speed.noisy


def test_measure_time_cap_overrides_min_repeats(monkeypatch, clock):
    speed = measure_repeats(monkeypatch, clock, itertools.repeat(2.0), min_repeats=5, max_time_s=3.0)
    assert speed.repeats == 2
    assert speed.noisy and speed.rel_iqr == 0, "fewer than min_repeats are noisy however well they agree"
    assert speed.timing_note == "only 2 repeat(s)"


def test_measure_always_times_one_repeat(monkeypatch, clock):
    assert measure_repeats(monkeypatch, clock, itertools.repeat(2.0), max_time_s=0.0).repeats == 1


def test_measure_alternates_which_region_goes_first(monkeypatch, clock):
    """A machine slowing down within each repeat must not always favour the region that runs first."""
    monkeypatch.setattr(timing, "calibrate", lambda *args: 1)
    model = make_model(Ticking(clock))
    order = []
    bare_call = timing.BareForward.__call__
    monkeypatch.setattr(timing.BareForward, "__call__", lambda self: (order.append("B"), bare_call(self)))
    run_pass = fake_pass(model, clock, itertools.repeat(0.25))
    measure(lambda: (order.append("E"), run_pass()), model, 4, torch.Generator(), first_pass_s=1.0, max_repeats=4)
    # no warm-up pass (the caller's first pass of 1 s is warm-up enough) and calibrate is patched out
    assert order == ["E", "B", "B"] + ["B", "E"] + ["E", "B"] + ["B", "E"], "the bare region warmed once, then ABBA"


def test_efficiency_above_the_ceiling_keeps_timing_then_flags(monkeypatch, clock):
    """A bare region slower than the same rows inside the estimator is an artefact: timed on to the cap, flagged."""
    monkeypatch.setattr(timing, "calibrate", lambda *args: 1)
    model = make_model(Ticking(clock, lambda rows: 1 / 64))
    bare_call = timing.BareForward.__call__
    monkeypatch.setattr(timing.BareForward, "__call__", lambda self: (clock.advance(1 / 16), bare_call(self)))
    run_pass = fake_pass(model, clock, itertools.repeat(0.0))
    speed = measure(run_pass, model, 4, torch.Generator(), first_pass_s=1.0, max_time_s=2.0)
    assert speed.efficiency == pytest.approx(5.0), "the estimator's region: 1/64 s; the bare one: 1/64 + 1/16 s"
    assert speed.noisy and "efficiency 5.000 above 1.02" in speed.timing_note
    assert speed.repeats == 21, "repeats of 6/64 s (the first 11/64 s, warming the bare) pass the 2 s cap at the 21st"


def test_timed_synchronizes_cuda_before_and_after(monkeypatch, clock):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", device)))
    cuda = torch.device("cuda")
    seconds = timed(lambda: (events.append("fn"), clock.advance(0.5)), cuda)
    assert seconds == 0.5
    assert events == [("sync", cuda), "fn", ("sync", cuda)]


def test_timed_does_not_synchronize_cpu(monkeypatch, clock):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    assert timed(lambda: clock.advance(0.25), CPU) == 0.25
    assert calls == []


def latency_model_and_call(clock, own_s, rows=lambda i: 6):
    """A model whose module call takes 1/64 s, and ``run_one(i)`` taking ``own_s(i)`` plus one module call."""
    module = Ticking(clock, lambda n: 1 / 64)
    model = make_model(module)
    called = []

    def run_one(i):
        called.append(i)
        clock.advance(own_s(i))
        n = rows(i)
        model.eps(torch.zeros(n, 2), torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))

    return model, module, run_one, called


def test_measure_latency_percentiles(clock):
    model, _, run_one, called = latency_model_and_call(clock, lambda i: (i + 1) / 64)
    lat = measure_latency(run_one, model, torch.Generator(), max_time_s=1e9, max_count=10)
    assert called == [0, *range(10)], "one warm-up call, then i = 0, 1, ..."
    ms = 1000 / 64  # calls take 2..11 units of 1/64 s
    assert lat.repeats == 10
    assert lat.latency_p50_ms == pytest.approx(6.5 * ms)
    assert lat.latency_p90_ms == pytest.approx(10.1 * ms)
    assert lat.latency_iqr_ms == pytest.approx(4.5 * ms)
    assert lat.bare_latency_p50_ms == pytest.approx(ms)
    assert lat.efficiency == pytest.approx((1 / 6 + 1 / 7) / 2), "the median of bare / call over calls 2/64..11/64"
    assert (lat.latency_ci_low_ms, lat.latency_ci_high_ms) == pytest.approx((3 * ms, 10 * ms)), "ranks 2 and 9"
    assert lat.noisy and lat.timing_note == "only 10 call(s)", "fewer than MIN_LATENCY_CALLS calls"


def test_measure_latency_bare_forward_runs_the_rows_of_each_call(clock):
    model, module, run_one, _ = latency_model_and_call(clock, lambda i: 0.0, rows=lambda i: i + 1)
    measure_latency(run_one, model, torch.Generator(), max_count=3)
    warm = [1, 1]  # the warm-up call on 1 row, then the bare forward on 1 row warmed
    call_0 = [1, 1]  # call i=0 (1 row), bare on 1 row
    later = [2, 2, 2, 3, 3, 3]  # call i, bare of i+1 rows warmed, bare timed
    assert module.rows == warm + call_0 + later


def test_measure_latency_is_steady_when_calls_agree(clock):
    model, _, run_one, _ = latency_model_and_call(clock, lambda i: 1 / 64)
    lat = measure_latency(run_one, model, torch.Generator(), max_time_s=1e9, min_count=10, max_count=12)
    assert lat.repeats == 10 and not lat.noisy and lat.timing_note == "", "settled once min_count calls agree"
    assert lat.efficiency == 0.5


def test_measure_latency_stops_at_the_time_cap_after_min_count(clock):
    model, _, run_one, _ = latency_model_and_call(clock, lambda i: (1 + 2 * (i % 2)) / 64)  # never settles
    lat = measure_latency(run_one, model, torch.Generator(), max_time_s=0.25, min_count=2)
    assert lat.repeats == 4 and lat.noisy, "calls of 3/64 and 5/64 s, each and its bare, reach 0.25 s after 4"
    assert lat.timing_note.startswith("latency median known to +-")
    assert measure_latency(run_one, model, torch.Generator(), max_time_s=0.0, min_count=4).repeats == 4
    assert measure_latency(run_one, model, torch.Generator(), max_time_s=0.0, min_count=0).repeats == 1


def test_measure_latency_below_min_count_is_noisy(clock):
    model, _, run_one, _ = latency_model_and_call(clock, lambda i: 1 / 64)
    lat = measure_latency(run_one, model, torch.Generator(), min_count=10, max_count=5)
    assert lat.repeats == 5 and lat.noisy


def tune_with_call_times(clock, seconds, candidates, budget_s=1.0):
    """``tune_batch_size`` with a module whose call on n rows takes ``seconds(n)``; returns the size and rows seen."""
    module = Ticking(clock, seconds)
    return tune_batch_size(make_model(module), candidates=candidates, budget_s=budget_s), set(module.rows)


def test_tune_batch_size_keeps_the_best_before_out_of_memory(clock):
    def seconds(rows):
        if rows > 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return 1 / 1024 + rows / 2**20  # bigger chunks always run more rows/s

    size, seen = tune_with_call_times(clock, seconds, (8, 32, 128, 512))
    assert size == 32 and seen == {8, 32, 128}


def test_tune_batch_size_stops_when_rows_per_s_falls(clock):
    call_s = {100: 1 / 128, 200: 1 / 128, 400: 4 / 128, 800: 1 / 128}
    size, seen = tune_with_call_times(clock, call_s.get, tuple(call_s))
    assert size == 200 and seen == {100, 200, 400}, "400 runs half as many rows/s as 200: 800 is never tried"


def test_tune_batch_size_stops_after_a_call_over_a_quarter_of_the_budget(clock):
    call_s = {100: 0.2, 200: 0.3, 400: 0.001}
    size, seen = tune_with_call_times(clock, call_s.get, tuple(call_s), budget_s=1.0)
    assert size == 200 and seen == {100, 200}


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), (64, 64), ("64", 64), (1, 1)])
def test_parse_batch_size_accepts_positive_integers_and_auto(value, expected):
    assert parse_batch_size(value, "here") == expected


@pytest.mark.parametrize("value", [0, -1, "0", "x", 1.5, True, 2**31, "1e20", None])
def test_parse_batch_size_names_where_the_bad_value_came_from(value):
    with pytest.raises(ValueError, match=r"^--batch-size: the batch size must be an integer from 1 to"):
        parse_batch_size(value, "--batch-size")


def test_timed_samples_keeps_the_whole_test_set_when_a_pass_fits_a_region():
    assert timing.timed_samples(1000, MIN_REGION_S, 3, 1024) == 1000
    assert timing.timed_samples(1, 10.0, 3, 1024) == 1


def test_timed_samples_cuts_a_long_pass_to_about_12_ms_but_keeps_two_full_chunks():
    assert timing.TIMED_PASS_S == 0.012
    assert timing.timed_samples(1000, 0.2, 96, 1024) == 60, "6% of a 0.2 s pass (22 samples fill 2 chunks)"
    assert timing.timed_samples(1000, 0.2, 1024, 1024) == 60, "the 12 ms of work beat 2 chunks' 2 samples"
    assert timing.timed_samples(1000, 0.2, 8, 1024) == 256, "2 chunks of 1024 rows beat 12 ms' 60 samples"
    assert timing.timed_samples(10_000, 2.0, 3, 1024) == 683, "2 chunks of 1024 rows at 3 rows per sample"
    assert timing.timed_samples(100, 10.0, 3, 1024) == 100, "never more than the test set"


def test_evenly_spaced_spreads_a_subset_over_the_test_set():
    assert timing.evenly_spaced(10, 3).tolist() == [0, 4, 9], "0, 4.5 (rounded half to even), 9"
    assert timing.evenly_spaced(4, 9).tolist() == [0, 1, 2, 3]
    picked = timing.evenly_spaced(1000, 250)
    assert len(set(picked.tolist())) == 250 and picked[0] == 0 and picked[-1] == 999
