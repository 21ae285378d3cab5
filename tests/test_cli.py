"""End to end: `diffbench run` on a tiny grid writes the table and plots; `plot` redraws; failures are rows."""

import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import diffbench
from diffbench.cli import main
from tests.helpers import write_suite

ESTIMATORS = ["shared-noise", "truncated[t_max=[100,200]]"]
LABELS = ["shared-noise", "truncated[t_max=100]", "truncated[t_max=200]"]
TRIALS = [1, 2]
PLOTS = ["accuracy_vs_nfe.png", "throughput.png", "decision_regions.png", "model_samples.png", "timestep_accuracy.png"]
REQUIRED = (
    "dataset denoiser estimator device trials seed n_test accuracy accuracy_ci_low accuracy_ci_high "
    "nfe_per_sample samples_per_s evals_per_s efficiency wall_s status p_estimator_t_max torch_version "
    "device_name threads git_commit"
).split()

BAD_ESTIMATORS = """
import torch
import diffbench

class WrongShape(diffbench.Estimator):
    name = "wrong-shape"
    params = {}

    def errors(self, model, x, trials, generator):
        return torch.zeros(x.shape[0], model.num_classes + 1)

class NaNs(diffbench.Estimator):
    name = "nan-errors"
    params = {}

    def errors(self, model, x, trials, generator):
        model.eps(x, torch.zeros(len(x), dtype=torch.long), torch.zeros(len(x), dtype=torch.long))
        return torch.full((x.shape[0], model.num_classes), float("nan"))

@diffbench.hookimpl
def register_estimators(register):
    register(WrongShape)
    register(NaNs)
"""


def run_tiny(tmp_path, out="run", cache="cache", *extra, runner=None):
    suite = write_suite(tmp_path / "tiny.toml", estimators=ESTIMATORS, trials=TRIALS)
    args = ["run", "--suite", suite, "--out", tmp_path / out, "--cache", tmp_path / cache, "--seed", "0", *extra]
    runner = runner or CliRunner(env={"DIFFBENCH_PLUGINS": None})
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run shared by this module's tests: (its folder, the CLI result)."""
    base = tmp_path_factory.mktemp("e2e")
    result = run_tiny(base)
    return base / "run", result


@pytest.fixture(scope="module")
def whole_table(tiny_run):
    return pd.read_parquet(tiny_run[0] / "results.parquet")


@pytest.fixture(scope="module")
def table(whole_table):
    """The offline rows: one per cell."""
    return whole_table[whole_table["scenario"] == "offline"].reset_index(drop=True)


@pytest.mark.slow
def test_run_succeeds_and_summarises(tiny_run):
    run_dir, result = tiny_run
    assert result.exit_code == 0, result.output
    assert f"results: {run_dir / 'results.parquet'}" in result.stdout
    assert "running 6 cells on cpu" in result.stderr
    assert (run_dir / "suite.json").is_file()


@pytest.mark.slow
def test_one_row_per_cell_with_the_required_columns(tiny_run, table):
    missing = [c for c in REQUIRED if c not in table.columns]
    assert not missing
    assert len(table) == len(LABELS) * len(TRIALS)
    assert sorted(zip(table["estimator_label"], table["trials"], strict=True)) == sorted(
        (label, trials) for label in LABELS for trials in TRIALS
    )
    assert (table["status"] == "ok").all() and (table["error"] == "").all()
    assert set(table["dataset"]) == {"spirals"} and set(table["denoiser"]) == {"mlp"}
    assert set(table["estimator"]) == {"shared-noise", "truncated"}
    assert set(table["device"]) == {"cpu"} and set(table["seed"]) == {0} and set(table["n_test"]) == {50}
    csv = pd.read_csv(tiny_run[0] / "results.csv")
    csv = csv[csv["scenario"] == "offline"]
    assert list(csv["estimator_label"]) == list(table["estimator_label"])
    assert list(csv["accuracy"]) == pytest.approx(list(table["accuracy"]))


@pytest.mark.slow
def test_every_cell_has_a_single_sample_latency_row(table, whole_table):
    single = whole_table[whole_table["scenario"] == "single"].reset_index(drop=True)
    assert list(single["cell_id"]) == list(table["cell_id"]), "one single-sample row per cell, same order"
    assert list(single["accuracy"]) == list(table["accuracy"]), "the same classification"
    assert (single["latency_p50_ms"] > 0).all() and (single["latency_p90_ms"] >= single["latency_p50_ms"]).all()
    assert single["samples_per_s"].tolist() == pytest.approx((1000 / single["latency_p50_ms"]).tolist())
    assert (single["repeats"] >= 1).all() and table["latency_p50_ms"].isna().all()


@pytest.mark.slow
def test_rows_record_timing_variants_and_chunking(table):
    assert set(table["dtype"]) == {"float32"} and set(table["compile"]) == {False}
    assert table["batch_size_tuned"].all() and (table["batch_size"] >= 1).all()
    assert not table["concurrent"].any(), "the local executor runs one cell at a time"
    assert table["noisy"].dtype == bool and (table["repeats"] >= 1).all()
    assert (table["peak_memory_mb"] > 0).all()


@pytest.mark.slow
def test_measured_values_are_consistent(table):
    assert (table["nfe_per_sample"] == table["trials"] * 2).all(), "spirals has 2 classes"
    assert table["accuracy"].between(0, 1).all()
    assert (table["accuracy_ci_low"] <= table["accuracy"]).all()
    assert (table["accuracy"] <= table["accuracy_ci_high"]).all()
    assert (table["accuracy_ci_high"] - table["accuracy_ci_low"] > 0.05).all(), "50 test points: a wide CI"
    for column in ("samples_per_s", "evals_per_s", "efficiency", "wall_s"):
        assert (table[column] > 0).all() and table[column].map(math.isfinite).all(), column
    evals = table["samples_per_s"] * table["nfe_per_sample"]
    assert list(table["evals_per_s"]) == pytest.approx(list(evals), rel=1e-6)
    t_max = table.set_index("estimator_label")["p_estimator_t_max"]
    assert t_max["truncated[t_max=100]"].tolist() == [100, 100] and t_max["shared-noise"].isna().all()


@pytest.mark.slow
def test_provenance_columns(table):
    assert set(table["torch_version"]) == {torch.__version__}
    assert set(table["threads"]) == {torch.get_num_threads()}
    assert table["device_name"].str.len().gt(0).all()
    # a real commit where diffbench runs from a git checkout (as here, in its own repository); '' is what the
    # code writes without one, and only then is it right
    in_checkout = (Path(diffbench.__file__).resolve().parent.parent / ".git").exists() and shutil.which("git")
    pattern = r"[0-9a-f]{40}(-dirty)?" if in_checkout else ""
    commits = set(table["git_commit"])
    assert len(commits) == 1 and re.fullmatch(pattern, commits.pop()), table["git_commit"].unique()


@pytest.mark.slow
def test_run_draws_the_plots(tiny_run):
    for name in PLOTS:
        path = tiny_run[0] / name
        assert path.is_file() and path.stat().st_size > 1000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_plot_redraws_from_the_saved_tables(tiny_run):
    run_dir = tiny_run[0]
    for name in PLOTS:
        (run_dir / name).unlink()
    result = CliRunner().invoke(main, ["plot", str(run_dir)])
    assert result.exit_code == 0, result.output
    for name in PLOTS:
        assert (run_dir / name).stat().st_size > 1000
        assert f"plot: {run_dir / name}" in result.stdout


def test_plot_of_a_folder_without_a_run_is_one_line(tmp_path, cli):
    result = cli("plot", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("diffbench: error:") and "results.parquet" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused(tiny_run, tmp_path):
    run_dir = tiny_run[0]
    before = (run_dir / "results.parquet").read_bytes(), (run_dir / "results.csv").read_bytes()
    result = run_tiny(tmp_path, out=run_dir, cache="other-cache")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"diffbench: error: '{run_dir}' already holds a run; choose another --out, or finish it with --resume {run_dir}"
    )
    assert ((run_dir / "results.parquet").read_bytes(), (run_dir / "results.csv").read_bytes()) == before
    assert not (tmp_path / "other-cache").exists(), "refused before training"


@pytest.mark.slow
def test_the_same_seed_gives_the_same_accuracy(table, tmp_path):
    """A fresh cache: the model is retrained, and the whole pipeline must reproduce the table."""
    result = run_tiny(tmp_path, "again", "fresh-cache", "--no-plots")
    assert result.exit_code == 0, result.output
    again = pd.read_parquet(tmp_path / "again" / "results.parquet")
    again = again[again["scenario"] == "offline"].reset_index(drop=True)
    assert not again["cache_hit"].any()
    columns = ["estimator_label", "trials", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "nfe_per_sample"]
    pd.testing.assert_frame_equal(again[columns], table[columns])
    assert not list((tmp_path / "again").glob("*.png")), "--no-plots"


@pytest.mark.slow
def test_a_broken_plugin_estimator_fails_its_cells_only(tmp_path):
    plugin = tmp_path / "bad_estimators.py"
    plugin.write_text(BAD_ESTIMATORS)
    suite = write_suite(tmp_path / "tiny.toml", trials=[1])
    args = ["--plugin", plugin, "run", "--suite", suite, "--out", tmp_path / "run", "--cache", tmp_path / "cache"]
    args += ["-e", "wrong-shape", "-e", "shared-noise", "-e", "nan-errors", "--no-plots"]
    result = CliRunner(env={"DIFFBENCH_PLUGINS": None}).invoke(main, [str(a) for a in args])
    assert result.exit_code not in (0, 2), result.output
    assert "2 of 3 cells failed" in result.output
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    table = table[table["scenario"].fillna("offline") == "offline"].set_index("estimator")
    assert list(table["status"]) == ["failed", "ok", "failed"]
    assert table.loc["shared-noise", "accuracy"] > 0
    wrong_shape = "estimator 'wrong-shape' errors() returned shape [50, 3], expected [50, 2]"
    assert wrong_shape in table.loc["wrong-shape", "error"]
    assert "estimator 'nan-errors' errors() returned NaN or inf" in table.loc["nan-errors", "error"]
    assert pd.isna(table.loc["nan-errors", "accuracy"])


@pytest.mark.slow
def test_timed_regions_never_include_training_or_plotting(tmp_path, monkeypatch):
    from diffbench import plots, quality, timing, training

    state = {"timing": False, "timed": 0, "trained": 0, "plotted": 0, "overlaps": []}
    real_timed, real_train, real_save = timing.timed, training.train, plots.save

    def watched_timed(fn, device):
        state["timing"], state["timed"] = True, state["timed"] + 1
        try:
            return real_timed(fn, device)
        finally:
            state["timing"] = False

    def watched(name, real):
        def call(*args, **kwargs):
            state[name] += 1
            if state["timing"]:
                state["overlaps"].append(name)
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(timing, "timed", watched_timed)
    monkeypatch.setattr(quality, "timed", watched_timed)
    monkeypatch.setattr(training, "train", watched("trained", real_train))
    monkeypatch.setattr(plots, "save", watched("plotted", real_save))
    result = run_tiny(tmp_path)
    assert result.exit_code == 0, result.output
    assert state["timed"] > 0 and state["trained"] == 1 and state["plotted"] > 0
    assert state["overlaps"] == []


@pytest.mark.parametrize(
    ("args", "steps"),
    [
        ([], 2000),  # the quick suite's own grid: its [train.mlp] table (tuned on spirals)
        (["-e", "shared-noise", "--trials", "4"], 2000),  # still spirals
        (["-d", "checkerboard"], 4000),  # other data: mlp's own defaults
        (["-d", "spirals"], 4000),  # data chosen on the command line, even the same
        (["--suite", "quick", "-d", "checkerboard"], 2000),  # the suite named: all of it applies
    ],
)
def test_the_quick_suites_training_table_applies_to_its_own_grid_only(args, steps):
    from diffbench import cli

    context = cli.run.make_context("run", ["--device", "cpu", *args])
    suite, _, cells = cli.build_grid(context.params)
    assert {suite.train_settings(c.denoiser).steps for c in cells} == {steps}
    assert {suite.train_settings(c.denoiser).lr for c in cells} == {0.004 if steps == 2000 else 0.002}
