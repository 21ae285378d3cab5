"""The error bank and the design of draws: exact replay, honest NFE, distributions, independence, reuse."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from diffbench import plugins
from diffbench.bank import BankScorer, ErrorBank, accounting, draw_key
from diffbench.draws import Replay, normals, row_hash, stream_keys, uniforms
from diffbench.model import ConditionalModel
from diffbench.montecarlo import LOSSES
from diffbench.schedule import NoiseSchedule
from tests.helpers import write_suite

ESTIMATORS = sorted(plugins.registry()["estimator"])
SHAPES = {"mlp": (2,), "unet": (1, 8, 8)}


def untrained(denoiser: str, classes: int = 3) -> ConditionalModel:
    torch.manual_seed(0)
    shape = SHAPES[denoiser]
    module = plugins.registry()["denoiser"][denoiser].cls().build(shape, classes).eval()
    return ConditionalModel(module, NoiseSchedule("linear", 1000), classes, shape, "cpu")


def run_estimator(name, model, x, trials, bank: ErrorBank | None, stream="test"):
    """``errors`` of a fresh estimator drawing from the design; through ``bank`` when given, else live."""
    scorer = BankScorer(bank) if bank is not None else None
    model.bank, model.replay = scorer, Replay(x, 0, stream)
    model.reset_nfe()
    computed = model.evaluated
    try:
        with torch.no_grad():
            estimator = plugins.registry()["estimator"][name].cls()
            errors = estimator.errors(model, x, trials, torch.Generator().manual_seed(5))
    finally:
        model.bank = model.replay = None
    return errors, model.reset_nfe(), model.evaluated - computed


@pytest.mark.parametrize("denoiser", sorted(SHAPES))
@pytest.mark.parametrize("name", ESTIMATORS)
def test_bank_errors_equal_a_live_computation_of_the_same_draws(name, denoiser):
    model = untrained(denoiser)
    x = torch.randn(5, *model.data_shape, generator=torch.Generator().manual_seed(1))
    bank = ErrorBank(model.num_classes)
    for trials in (1, 4, 7):
        live, live_nfe, live_computed = run_estimator(name, model, x, trials, None)
        banked, nfe, _ = run_estimator(name, model, x, trials, bank)
        again, again_nfe, again_computed = run_estimator(name, model, x, trials, bank)
        torch.testing.assert_close(banked, live, rtol=1e-5, atol=1e-6)
        assert torch.equal(again, banked)  # a replay reads the very same errors
        assert live_nfe == nfe == again_nfe == live_computed  # NFE stays what the estimator needs live
        assert again_computed == 0  # ... while nothing new reaches the network


def test_shared_prefix_is_reused_and_losses_cost_nothing():
    model = untrained("mlp")
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(1))
    bank = ErrorBank(model.num_classes)
    _, nfe16, computed16 = run_estimator("shared-noise", model, x, 16, bank)
    assert computed16 == nfe16 == 20 * 16 * 3
    _, nfe4, computed4 = run_estimator("shared-noise", model, x, 4, bank)  # slots 0..3 of the same draws
    assert (nfe4, computed4) == (20 * 4 * 3, 0)
    scorer = BankScorer(bank)
    model.bank, model.replay = scorer, Replay(x, 0, "test")
    estimator = plugins.registry()["estimator"]["shared-noise"].cls(loss="l1")
    before = model.evaluated
    estimator.errors(model, x, 16, torch.Generator())
    model.bank = model.replay = None
    assert model.evaluated == before and scorer.requested == 20 * 16 * 3


def test_streams_give_independent_draws_and_each_draw_has_its_distribution():
    hashes = row_hash(torch.randn(2000, 2, generator=torch.Generator().manual_seed(0)))
    slots = torch.arange(8).expand(2000, 8)
    test, repeat = uniforms(stream_keys(hashes, 0, "test"), slots), uniforms(stream_keys(hashes, 0, "repeat-1"), slots)
    assert 0 <= float(test.min()) and float(test.max()) < 1
    assert abs(float(test.mean()) - 0.5) < 0.01 and abs(float(test.var()) - 1 / 12) < 0.005
    assert abs(float(torch.corrcoef(torch.stack([test.flatten(), repeat.flatten()]))[0, 1])) < 0.03
    counts = torch.bincount((test.flatten() * 10).long(), minlength=10).double()
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    assert chi2 < 30  # 9 degrees of freedom: p < 0.001 beyond 27.9
    noise = normals(stream_keys(hashes[:500], 0, "test"), slots[:500], (4, 4), torch.float64)
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1) < 0.01
    assert abs(float(((noise - noise.mean()) ** 4).mean() / noise.var() ** 2) - 3) < 0.1  # kurtosis of a normal
    other = normals(stream_keys(hashes[:500], 1, "test"), slots[:500], (4, 4), torch.float64)
    assert not torch.equal(noise, other)  # another seed, other draws


def test_rejection_draws_are_uniform_on_the_window_and_share_slots_with_wider_windows():
    model = untrained("mlp")
    x = torch.randn(400, 2, generator=torch.Generator().manual_seed(2))
    model.replay = Replay(x, 0, "test")
    from diffbench.montecarlo import draw_timesteps

    narrow = draw_timesteps(model, 400, 8, torch.Generator(), low=100, high=200)
    model.replay = Replay(x, 0, "test")
    everything = draw_timesteps(model, 400, 64, torch.Generator())
    model.replay = None
    assert int(narrow.min()) >= 100 and int(narrow.max()) < 200
    assert abs(float(narrow.double().mean()) - 149.5) < 3
    # the window's draws are the full design's draws that fall in it, in order
    first_inside = [row[(row >= 100) & (row < 200)][:1] for row in everything]
    matches = [int(n[0]) == int(f[0]) for n, f in zip(narrow, first_inside, strict=True) if f.numel()]
    assert len(matches) > 300 and all(matches)


def peaked(T: int = 1000) -> torch.Tensor:
    """A distribution over [0, T) that puts most of its mass on small t, like a fitted importance proposal."""
    return 0.1 / T + 0.9 * torch.softmax(-torch.arange(T, dtype=torch.float64) / 80, 0)


def test_draws_from_a_distribution_thin_the_uniform_slots_and_keep_its_law():
    from diffbench.montecarlo import draw_timesteps, draw_uniform

    model = untrained("mlp")
    x = torch.randn(3000, 2, generator=torch.Generator().manual_seed(4))
    q = peaked()
    model.replay = Replay(x, 0, "test")
    thinned = draw_timesteps(model, 3000, 4, torch.Generator(), probs=q * 7)  # any scale
    model.replay = Replay(x, 0, "test")
    uniform = draw_timesteps(model, 3000, 256, torch.Generator())
    model.replay = None
    # the law of q: chi-square over 10 bins of equal q-mass
    edges = torch.searchsorted(q.cumsum(0) / q.sum(), torch.linspace(0, 1, 11)[1:-1].double())
    counts = torch.bincount(torch.bucketize(thinned.flatten(), edges, right=True), minlength=10).double()
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    assert chi2 < 30, counts  # 9 degrees of freedom: p < 0.001 beyond 27.9
    # ... drawn from the very slots the uniform draws use, so they meet them: each thinned t is among them
    met = [set(row.tolist()) >= set(own.tolist()) for row, own in zip(uniform, thinned, strict=True)]
    assert sum(met) > 0.95 * len(met)
    # live: the inverse CDF of the generator's uniforms, as before
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    live = draw_timesteps(model, 50, 6, g1, probs=q)
    u = draw_uniform(model, 50, 6, g2)
    assert torch.equal(live, torch.searchsorted(q.cumsum(0) / q.sum(), u, right=True).clamp_(max=999))


BAD_PROBS = [torch.ones(999), -torch.ones(1000), torch.zeros(1000), torch.full((1000,), float("nan"))]


@pytest.mark.parametrize("bad", BAD_PROBS)
def test_draws_from_a_distribution_refuse_bad_weights_and_a_window(bad):
    from diffbench.montecarlo import draw_timesteps

    model = untrained("mlp")
    with pytest.raises(ValueError, match="probs must be 1000 finite nonnegative"):
        draw_timesteps(model, 2, 3, torch.Generator(), probs=bad)
    with pytest.raises(ValueError, match="not both"):
        draw_timesteps(model, 2, 3, torch.Generator(), high=500, probs=torch.ones(1000))


@pytest.mark.parametrize("stratify", [False, True])
@pytest.mark.parametrize("denoiser", sorted(SHAPES))
def test_a_fitted_importance_replays_exactly_and_meets_shared_noise(denoiser, stratify):
    model = untrained(denoiser)
    x = torch.randn(6, *model.data_shape, generator=torch.Generator().manual_seed(1))
    estimator = plugins.registry()["estimator"]["importance"].cls(stratify=stratify)
    estimator.proposal = peaked()
    bank = ErrorBank(model.num_classes)
    run_estimator("shared-noise", model, x, 256, bank)
    for trials in (1, 4):
        errors = {}
        for mode in ("live", "bank"):
            model.bank, model.replay = (BankScorer(bank) if mode == "bank" else None), Replay(x, 0, "test")
            before = model.evaluated
            with torch.no_grad():
                errors[mode] = estimator.errors(model, x, trials, torch.Generator().manual_seed(5))
            computed = model.evaluated - before
            model.bank = model.replay = None
        torch.testing.assert_close(errors["bank"], errors["live"], rtol=1e-5, atol=1e-6)
        if not stratify:  # thinned from the slots shared-noise computed: almost nothing is new
            assert computed < 0.2 * 6 * trials * model.num_classes


def test_stratified_design_draws_take_one_draw_per_stratum():
    model = untrained("mlp")
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(3))
    model.replay = Replay(x, 0, "test")
    from diffbench.montecarlo import draw_uniform

    u = draw_uniform(model, 300, 5, torch.Generator(), stratify=True)
    model.replay = None
    stratum = (u * 5).floor().long()
    assert torch.equal(stratum, torch.arange(5).expand(300, 5))
    within = u * 5 - stratum
    assert abs(float(within.mean()) - 0.5) < 0.02


def test_row_hash_sees_every_bit_and_is_batch_free():
    x = torch.randn(64, 3, 4)
    assert torch.equal(row_hash(x)[10:20], row_hash(x[10:20]))
    y = x.clone()
    y[5, 2, 3] = torch.nextafter(y[5, 2, 3], torch.tensor(10.0))
    assert (row_hash(x) != row_hash(y)).sum() == 1
    t = torch.zeros(64, dtype=torch.long)
    assert not torch.equal(draw_key(row_hash(x), t, row_hash(x)), draw_key(row_hash(x), t + 1, row_hash(x)))
    assert row_hash(x[:0]).shape == (0,), "no held-out data: no rows, no error"


def test_bank_shards_survive_a_new_process(tmp_path):
    model = untrained("mlp")
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(1))
    first = ErrorBank(model.num_classes, tmp_path / "bank")
    errors, _, computed = run_estimator("shared-noise", model, x, 8, first)
    first.flush()
    assert computed > 0 and list((tmp_path / "bank").glob("shard-*.npz"))
    (tmp_path / "bank" / "shard-torn.npz").write_bytes(b"not a shard")  # ignored, never fatal
    reopened = ErrorBank(model.num_classes, tmp_path / "bank")
    again, _, computed_again = run_estimator("shared-noise", model, x, 8, reopened)
    assert computed_again == 0 and torch.equal(again, errors)


def test_opening_another_models_bank_writes_the_open_one_and_lets_it_go(tmp_path, monkeypatch):
    from diffbench import bank as bank_module

    monkeypatch.setattr(bank_module, "_OPEN", {})
    model = untrained("mlp")
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(1))
    first = bank_module.open_bank("model-a", model.num_classes, tmp_path)
    errors, _, _ = run_estimator("shared-noise", model, x, 8, first)  # rows in memory, not yet written
    in_memory = bank_module.open_bank("no-folder", model.num_classes, None)
    assert bank_module.open_bank("model-a", model.num_classes, tmp_path) is first  # a bank without one: no effect
    bank_module.open_bank("model-b", model.num_classes, tmp_path)
    assert set(bank_module._OPEN) == {("no-folder", None), ("model-b", tmp_path / "banks" / "model-b")}
    assert bank_module.open_bank("no-folder", model.num_classes, None) is in_memory
    reopened = bank_module.open_bank("model-a", model.num_classes, tmp_path)
    assert reopened is not first  # read back from its shards: nothing was lost, nothing is computed again
    again, _, computed = run_estimator("shared-noise", model, x, 8, reopened)
    assert computed == 0 and torch.equal(again, errors)


def test_a_bank_with_a_folder_holds_about_one_shard_in_memory_and_reads_the_rest_back(tmp_path):
    """Shards of 1,024 rows: a bank of ~10,000 draws keeps at most one shard (plus one call's rows) in memory,
    writes shards as it goes, and a new process (and a compacted folder) reads every error back exactly."""
    model = untrained("mlp")
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(2))
    tiny = 1024 * model.num_classes * len(LOSSES) * 8
    bank = ErrorBank(model.num_classes, tmp_path / "bank", shard_bytes=tiny)
    assert bank.shard_rows == 1024
    held, results = [], []
    for stream in range(8):  # 8 passes of 40 samples x 32 draws
        results.append(run_estimator("shared-noise", model, x, 32, bank, stream=f"s{stream}")[0])
        held.append(len(bank.index))
    bank.flush()
    assert max(held) <= bank.shard_rows + 40 * 32
    assert len(bank) == 8 * 40 * 32 and len(list((tmp_path / "bank").glob("shard-*.npz"))) >= 8
    reopened = ErrorBank(model.num_classes, tmp_path / "bank", shard_bytes=tiny)
    assert len(reopened.index) == 0 and len(reopened) == 8 * 40 * 32  # keys known, values left on disk
    for stream, expected in enumerate(results):
        again, _, computed = run_estimator("shared-noise", model, x, 32, reopened, stream=f"s{stream}")
        assert computed == 0 and torch.equal(again, expected)
    keys, values = reopened.entries()
    assert len(keys) == 8 * 40 * 32 and not np.isnan(values).all(axis=(1, 2)).any()
    before = len(list((tmp_path / "bank").glob("shard-*.npz")))
    for i in range(70):  # many small shards (as many cells leave): merged into shards of about 1,024 rows when opened
        one = np.zeros((1, model.num_classes, len(LOSSES)))
        np.savez(tmp_path / "bank" / f"shard-small-{i:02d}.npz", keys=np.array([10**12 + i]), values=one)
    merged = ErrorBank(model.num_classes, tmp_path / "bank", shard_bytes=tiny)
    assert len(list((tmp_path / "bank").glob("shard-*.npz"))) <= before + 1 and len(merged) == 8 * 40 * 32 + 70
    again, _, computed = run_estimator("shared-noise", model, x, 32, merged, stream="s3")
    assert computed == 0 and torch.equal(again, results[3])


def test_accounting_sums_each_cell_once():
    frame = pd.DataFrame(
        {
            "cell_id": ["a", "a", "b"],
            "status": "ok",
            "dataset_label": "spirals",
            "denoiser_label": "mlp",
            "seed": 0,
            "device": "cpu",
            "dtype": "float32",
            "compile": False,
            "errors_source": "bank",
            "errors_bank": "k",
            "live_nfe": [100, 100, 50],
            "computed_nfe": [40, 40, 0],
        }
    )
    (model,) = accounting(frame)
    assert (model["live_nfe"], model["computed_nfe"], model["cells"]) == (150, 40, 2)


@pytest.mark.slow
def test_bank_mode_run_computes_less_and_agrees_with_live(cli, tmp_path):
    suite = write_suite(
        tmp_path / "tiny.toml", estimators=["full-mc", "shared-noise"], trials=[2, 8], scenarios=["offline"]
    )
    tables = {}
    for mode in ("live", "bank"):
        args = ["--suite", suite, "--cache", tmp_path / "cache", "--errors", mode, "--no-plots", "--no-report"]
        result = cli("run", *args, "--out", tmp_path / mode, "--max-time", "0.1")
        assert result.exit_code == 0, result.output
        tables[mode] = pd.read_parquet(tmp_path / mode / "results.parquet").set_index("cell_id")
        assert (tmp_path / mode / "errors.json").is_file()
    live, bank = tables["live"], tables["bank"]
    assert (bank["errors_source"] == "bank").all() and (live["errors_source"] == "live").all()
    assert (live["computed_nfe"] == live["live_nfe"]).all()
    assert bank["computed_nfe"].sum() < 0.8 * bank["live_nfe"].sum()
    assert (bank["nfe_per_sample"] == live["nfe_per_sample"]).all()
    diff = (bank["accuracy"] - live["accuracy"]).abs()
    half_width = (live["accuracy_ci_high"] - live["accuracy_ci_low"]) / 2
    assert (diff <= 2 * half_width).all()


def test_occurrences_count_earlier_draws_at_the_same_timestep():
    from diffbench.draws import occurrences

    t = torch.tensor([[5, 3, 5, 5, 3], [1, 2, 3, 4, 1]])
    assert occurrences(t).tolist() == [[0, 0, 1, 2, 1], [0, 0, 0, 0, 1]]
    assert occurrences(torch.tensor([[3, 7]]), before=torch.tensor([[3, 3, 9]])).tolist() == [[2, 0]]


def test_noise_is_keyed_by_timestep_so_cells_meet_and_a_call_never_reuses_one():
    from diffbench.montecarlo import draw_noise

    model = untrained("mlp")
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(4))
    t_a, t_b = torch.tensor([[7, 9, 7]]).expand(50, 3), torch.tensor([[9, 7, 7, 8]]).expand(50, 4)
    model.replay = Replay(x, 0, "test")
    a = draw_noise(model, (50, 3), torch.Generator(), timesteps=t_a)
    model.replay = Replay(x, 0, "test")
    b = draw_noise(model, (50, 4), torch.Generator(), timesteps=t_b)
    model.replay = None
    assert torch.equal(a[:, 1], b[:, 0])  # t = 9, first visit: the same noise in both calls
    assert torch.equal(a[:, 0], b[:, 1]) and torch.equal(a[:, 2], b[:, 2])  # t = 7, first and second visits
    assert not torch.equal(a[:, 0], a[:, 2])  # two visits of one call: independent draws
    assert abs(float(torch.corrcoef(torch.stack([a[:, 0].flatten(), a[:, 2].flatten()]))[0, 1])) < 0.4


def test_a_timestep_grid_draws_uniformly_over_its_points_in_the_window():
    from diffbench.draws import Design
    from diffbench.montecarlo import draw_timesteps

    model = untrained("mlp")
    x = torch.randn(400, 2, generator=torch.Generator().manual_seed(5))
    model.replay = Replay(x, Design(0, t_grid=10), "test")
    t = draw_timesteps(model, 400, 16, torch.Generator(), low=0, high=500)
    strata = draw_timesteps(model, 400, 5, torch.Generator(), stratify=True, low=0, high=500)
    model.replay = Replay(x, Design(0, t_grid=10), "test")
    with pytest.raises(ValueError, match="no timestep of the design's grid"):
        draw_timesteps(model, 400, 4, torch.Generator(), low=1, high=40)
    model.replay = Replay(x, Design(0, t_grid=2000), "test")
    with pytest.raises(ValueError, match="lower t_grid"):
        draw_timesteps(model, 400, 4, torch.Generator())
    model.replay = None
    assert set(t.unique().tolist()) == {50, 150, 250, 350, 450}
    counts = torch.bincount(t.flatten() // 100, minlength=5).double()
    assert float(((counts - counts.mean()) ** 2 / counts.mean()).sum()) < 20  # 4 degrees of freedom
    assert torch.equal(strata, torch.tensor([50, 150, 250, 350, 450]).expand(400, 5))


def test_t_grid_runs_on_the_grid_and_is_refused_outside_bank_mode(cli, tmp_path):
    suite = write_suite(tmp_path / "tiny.toml", estimators=["shared-noise"], trials=[4], scenarios=["offline"])
    base = ["run", "--suite", suite, "--cache", tmp_path / "cache", "--no-plots", "--no-report", "--max-time", "0.1"]
    refused = cli(*base, "--t-grid", "10", "--errors", "live", "--out", tmp_path / "live")
    assert refused.exit_code == 2 and 't_grid = 10 is part of the error bank\'s design; set errors = "bank"' in (
        refused.output
    )
    result = cli(*base, "--t-grid", "10", "--errors", "bank", "--out", tmp_path / "grid")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "grid" / "results.parquet")
    assert (table["t_grid"] == 10).all() and (table["errors_source"] == "bank").all()
