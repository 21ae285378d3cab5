"""The single-timestep accuracies: their data per model (live and through the bank), the table, the plot, the report."""

import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from diffbench import bank, metrics, plots, plugins, report, rundir, timestep_accuracy
from diffbench.cell import Cell
from diffbench.contract import Splits
from diffbench.executor import Outcome, Task
from diffbench.figures import NOTES, figures_data
from diffbench.plan import plan_cells
from diffbench.preparation import Prepared
from diffbench.runner import Recorder
from diffbench.schedule import NoiseSchedule
from diffbench.suite import Suite
from tests.helpers import estimator

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"
T, K, SWITCH = 100, 3, 50  # the oracle classifies right below t = SWITCH and wrong from it on
COLUMNS = [
    "dataset", "denoiser", "dataset_label", "denoiser_label", "t", "t_fraction", "num_timesteps", "accuracy",
    "accuracy_ci_low", "accuracy_ci_high", "n_test", "n_test_total", "draws", "num_classes", "loss",
    "errors_source", "live_nfe", "computed_nfe",
]  # fmt: skip


class Oracle(torch.nn.Module):
    """The exact noise of x_t = sqrt(abar) mu_c + sqrt(1 - abar) eps for class c below SWITCH, for class c + 1 from it.

    On test points at the class means, the true class's error is 0 below SWITCH (accuracy 1), and from SWITCH
    on the class before the true one has error 0 (accuracy 0).
    """

    def __init__(self, means: torch.Tensor, abar: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("means", means)
        self.register_buffer("abar", abar.float())

    def forward(self, x_t, t, c):
        mu = self.means[(c + (t >= SWITCH).long()) % K]
        a = self.abar[t][:, None]
        return (x_t - a.sqrt() * mu) / (1 - a).sqrt()


@pytest.fixture(autouse=True)
def fresh_banks(monkeypatch):
    """Each test opens its own banks (the process keeps them by key)."""
    monkeypatch.setattr(bank, "_OPEN", {})


def prepared(n_test: int = 12) -> Prepared:
    schedule = NoiseSchedule("linear", T)
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    y = torch.arange(n_test) % K
    splits = Splits(means[y], y, means[y], y, ["a", "b", "c"])
    module = Oracle(means, schedule.alphas_cumprod)
    return Prepared(splits, means[y[:6]], y[:6], module, {}, math.nan, 0.0, schedule)


def cell_plans(errors: str, cache: Path | None):
    dataset, denoiser = plugins.get("dataset", "spirals").cls(), plugins.get("denoiser", "mlp").cls()
    cells = [Cell(dataset, denoiser, estimator("shared-noise"), 1, "cpu", 0)]
    return plan_cells(Suite(errors=errors), cells, cache, None, False, {"git_commit": "", "command": ""})


def timesteps(errors: str = "live", cache: Path | None = None, prep: Prepared | None = None) -> pd.DataFrame:
    plans = cell_plans(errors, cache)
    return figures_data(plans[0].model, plans, prep or prepared())["timesteps"]


def test_one_row_per_timestep_of_the_grid_with_its_columns():
    frame = timesteps()
    assert list(frame.columns) == COLUMNS
    grid = [t for t in range(T // 20 // 2, T, T // 20)]
    assert frame["t"].tolist() == grid and len(grid) == timestep_accuracy.TIMESTEP_GRID
    assert frame["t_fraction"].tolist() == [t / T for t in grid]
    assert set(frame["dataset_label"]) == {"spirals"} and set(frame["errors_source"]) == {"live"}
    assert set(frame["n_test"]) == set(frame["n_test_total"]) == {12}
    assert set(frame["draws"]) == {2} and set(frame["loss"]) == {"l2"}
    assert set(frame["live_nfe"]) == set(frame["computed_nfe"]) == {12 * 2 * K}, "live mode runs every row"


def test_the_accuracy_at_each_t_is_the_oracles_by_hand():
    frame = timesteps()
    expected = [1.0 if t < SWITCH else 0.0 for t in frame["t"]]
    assert frame["accuracy"].tolist() == expected
    low, high = metrics.wilson_interval(12, 12)
    early = frame[frame["t"] < SWITCH]
    assert early["accuracy_ci_low"].tolist() == [low] * len(early) and set(early["accuracy_ci_high"]) == {high}


def test_bank_mode_computes_the_data_once_and_gives_live_mode_s_numbers(tmp_path):
    cache = tmp_path / "cache"
    first = timesteps("bank", cache)
    assert set(first["errors_source"]) == {"bank"}
    assert first["computed_nfe"].sum() == first["live_nfe"].sum() == 20 * 12 * 2 * K
    (opened,) = bank._OPEN.values()
    size = len(opened)
    again = timesteps("bank", cache)
    assert again["computed_nfe"].sum() == 0, "the second figure task reads every error from the bank"
    assert len(opened) == size
    bank._OPEN.clear()  # a later run in a fresh process: the bank's shards in the cache answer
    assert timesteps("bank", cache)["computed_nfe"].sum() == 0
    live = timesteps("live")
    pd.testing.assert_series_equal(first["accuracy"], live["accuracy"])


def test_over_the_budget_an_evenly_spaced_subset_is_classified(monkeypatch):
    monkeypatch.setattr(timestep_accuracy, "ROWS_BUDGET", 20 * 2 * K * 5)
    frame = timesteps()
    assert set(frame["n_test"]) == {5} and set(frame["n_test_total"]) == {12}
    assert frame["computed_nfe"].sum() == 20 * 2 * K * 5


def test_a_model_whose_one_sample_passes_the_budget_is_skipped_and_said_once(monkeypatch, tmp_path):
    monkeypatch.setattr(timestep_accuracy, "ROWS_BUDGET", 20 * 2 * K - 1)
    plans = cell_plans("live", None)
    out = figures_data(plans[0].model, plans, prepared())
    assert "timesteps" not in out and "samples" in out
    (line,) = out[NOTES]["line"]
    assert line.startswith("skipping the single-timestep accuracies of spirals x mlp: one test sample costs 120")
    folder = rundir.RunFolder(tmp_path / "run")
    said = []
    recorder = Recorder(folder, [], folder.keeping_skips(said.append))
    task = Task("figures", lambda: None, (), "figures", plans[0].model)
    for _ in range(2):
        recorder.record(Outcome(task, out))
    assert said == [line]
    assert folder.read_skipped() == [line]
    assert not list(folder.parts_dir.glob(f"*.{NOTES}.parquet")), "notes are not figure data"


def saved_timesteps(tmp_path: Path, label: str = "spirals") -> Path:
    """A copy of the reference run with one model's single-timestep accuracies saved as a part."""
    folder = Path(shutil.copytree(REFERENCE, tmp_path / "run", ignore=shutil.ignore_patterns("*.png", "report.html")))
    frame = timesteps().assign(dataset_label=label)
    rundir.RunFolder(folder).save_part("g", "timesteps", frame)
    return folder


def test_the_table_merges_the_parts_and_a_reader_sees_a_part_newer_than_it(tmp_path):
    folder = rundir.RunFolder(saved_timesteps(tmp_path))
    assert len(folder.read_timesteps()) == 20, "read from parts/ before any table was merged"
    folder.write_tables([])
    table = folder.path / "timesteps.parquet"
    os.utime(table, ns=(1_000_000_000, 1_000_000_000))  # the table's time, well before any part's
    assert folder.read_timesteps() is not None and len(pd.read_parquet(table)) == 20
    later = folder.read_timesteps().assign(dataset_label="moons")
    folder.save_part("h", "timesteps", later)  # a run killed before the tables were merged again
    assert sorted(set(folder.read_timesteps()["dataset_label"])) == ["moons", "spirals"]


def test_the_plot_is_drawn_with_labels_as_written_and_the_report_reads_it(tmp_path):
    path = saved_timesteps(tmp_path, label="spirals $\\foo{$")
    made = plots.plot_run(path)
    assert path / plots.TIMESTEP_ACCURACY.file in made
    text = report.build_report([path])
    assert "<h2>Which timesteps carry the class</h2>" in text
    assert "On spirals $\\foo{$ x mlp, the single timestep t = 2 (2% of T = 100) carries the class best: " in text
    assert "accuracy 1.000 [" in text and "against 0.000 at t = 52, the worst of the 20 timesteps." in text
    section = text.split('<section id="timesteps">')[1].split("</section>")[0]
    assert section.count('<img src="data:image/png;base64,') == 1
    figures = [p for p in plots.PLOTS if (path / p.file).is_file()]
    assert text.count('<img src="data:image/png;base64,') == len(figures), "each figure shown once"


def test_a_run_without_the_data_says_so_in_the_section(tmp_path):
    folder = Path(shutil.copytree(REFERENCE, tmp_path / "run", ignore=shutil.ignore_patterns("report.html")))
    text = report.build_report([folder])
    section = text.split('<section id="timesteps">')[1].split("</section>")[0]
    assert "No single-timestep accuracies" in section and "<img" not in section
