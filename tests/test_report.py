"""`diffbench report`: one self-contained page per run (or runs compared), and the plots it shows."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffbench import part_plots, plots, report, table_plots
from diffbench.report_format import esc, format_value
from tests.helpers import write_suite

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"


@pytest.fixture
def reference(tmp_path) -> Path:
    """A copy of the committed reference run (its tables and PNGs), so the test writes nothing into the repo."""
    return Path(shutil.copytree(REFERENCE, tmp_path / "reference", ignore=shutil.ignore_patterns("report.html")))


def table_json(text: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="table-data">(.*?)</script>', text, re.S)[1])


def test_the_page_is_self_contained_and_holds_every_row_and_figure(reference):
    text = report.build_report([reference])
    assert not re.findall(r'(?:src|href)\s*=\s*"(?!data:|#)', text), "every resource is inlined"
    assert "http://" not in text and "https://" not in text and "@import" not in text
    frame = pd.read_parquet(reference / "results.parquet")
    data = table_json(text)
    assert len(data["rows"]) == len(frame) and [c["name"] for c in data["columns"]] != []
    assert {c["name"] for c in data["columns"]} == set(frame.columns)
    figures = [p.file for p in plots.PLOTS if (reference / p.file).is_file()]
    assert text.count('<img src="data:image/png;base64,') == len(figures) >= 5
    for title in ("Summary: the best estimator", "Ranking of estimators", "Failed and skipped", "Provenance"):
        assert title in text
    assert frame["git_commit"].iloc[0] in text and frame["torch_version"].iloc[0] in text


def test_the_summary_names_the_best_estimator_at_each_budget(reference):
    text = report.build_report([reference])
    frame = pd.read_parquet(reference / "results.parquet")
    top = frame[(frame["scenario"] == "offline")].sort_values("accuracy").iloc[-1]
    expected = f"At {top['nfe_per_sample']:g} NFE per sample, {top['estimator_label']} ({top['trials']} trials)"
    assert expected in text
    assert f"{top['accuracy']:.3f} [{top['accuracy_ci_low']:.3f}, {top['accuracy_ci_high']:.3f}]" in text


@pytest.mark.parametrize(
    "column,value,text",
    [
        ("accuracy", 0.91234, "0.912"),
        ("samples_per_s", 14965.4, "14,965"),
        ("samples_per_s", 12.345, "12.3"),
        ("latency_p50_ms", 0.31234, "0.312"),
        ("flip_rate", 0.0625, "6.2%"),
        ("nfe_per_sample", 64.0, "64"),
        ("trials", np.int64(32), "32"),
        ("peak_memory_mb", 1234.5, "1,234"),
        ("variance_reduction", 34896.2, "34,896"),
        ("gap_variance", 0.000123456, "0.000123"),
        ("started_at", 0.0, "1970-01-01 00:00:00"),
        ("concurrent", np.bool_(False), "no"),
        ("accuracy", float("nan"), ""),
        ("error", "boom", "boom"),
    ],
)
def test_numbers_are_formatted_per_metric(column, value, text):
    assert format_value(column, value) == text


def test_several_runs_make_one_comparison_page(reference, tmp_path, cli):
    other = Path(shutil.copytree(reference, tmp_path / "again"))
    result = cli("report", reference, other, "--out", tmp_path / "both.html")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "both.html").read_text()
    assert "B = again against A = reference" in text
    assert text.count('class="verdict v-same"') >= 36  # identical runs: every accuracy the same
    assert "Runs side by side" in text
    data = table_json(text)
    assert len(data["rows"]) == 2 * len(pd.read_parquet(reference / "results.parquet"))


def test_a_folder_without_a_run_is_one_error_line(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("report", tmp_path / "empty")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("diffbench: error: ") and "holds no results.parquet" in result.stderr


def test_reliability_leaves_nearly_empty_bins_off_the_line_and_grey():
    bins = pd.DataFrame(
        {
            "dataset_label": "d",
            "denoiser_label": "m",
            "estimator_label": "e",
            "trials": 4,
            "device": "cpu",
            "bin": [2, 9, 14],
            "confidence": [0.15, 0.62, 0.97],
            "bin_accuracy": [0.0, 0.6, 0.96],
            "count": [1, 80, 900],
        }  # fmt: skip
    )
    top, hist = part_plots.reliability(bins).axes[:2]
    line = [ln for ln in top.get_lines() if ln.get_linestyle() == "-"][0]
    assert list(line.get_ydata()) == [0.6, 0.96], "the one-sample bin is not on the line"
    sparse = [c for c in top.collections if len(c.get_offsets()) and list(c.get_offsets()[0]) == [0.15, 0.0]]
    assert sparse and sparse[0].get_facecolor().size == 0 or sparse[0].get_facecolor()[0][3] == 0, "hollow"
    sizes = [c.get_sizes() for c in top.collections if len(c.get_offsets()) == 2][0]
    assert sizes[1] > sizes[0], "marker area grows with the count"
    assert [p.get_height() for p in hist.patches] == [1, 80, 900], "a histogram of the counts beneath"


@pytest.mark.slow
def test_a_run_writes_its_report_predictions_and_flip_rate(cli, tmp_path):
    suite = write_suite(tmp_path / "tiny.toml", estimators=["full-mc", "shared-noise"], trials=[1, 2], max_time_s=0.2,
                        scenarios=["offline"], dtypes=["float32", "float16"])  # fmt: skip
    out = tmp_path / "run"
    result = cli("run", "--suite", suite, "--out", out, "--cache", tmp_path / "c", "--no-plots")
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report.html'}" in result.stderr
    frame = pd.read_parquet(out / "results.parquet")
    preds = pd.read_parquet(out / "predictions.parquet")
    for cell_id, part in preds.groupby("cell_id"):
        accuracy = frame.loc[frame["cell_id"] == cell_id, "accuracy"].iloc[0]
        assert (part["pred"] == part["label"]).mean() == pytest.approx(accuracy)
        assert part["sample"].tolist() == list(range(len(part))) and part["test_digest"].nunique() == 1
    assert set(preds["cell_id"]) == set(frame["cell_id"])
    assert frame["flip_rate"].between(0, 1).all() and "flip_rate_vs_full_mc" in frame
    assert (frame.loc[frame["estimator"] == "full-mc", "flip_rate_vs_full_mc"] == 1).all()
    text = (out / "report.html").read_text()
    skipped = json.loads((out / "skipped.json").read_text()) if (out / "skipped.json").is_file() else []
    for line in skipped:  # float16 on a CPU that cannot run it is skipped with a reason, shown in the report
        assert line.startswith("skipping ") and esc(line) in text
    assert "paired (McNemar exact)" in text
    compared = cli("compare", out, out)
    assert "paired (McNemar exact) test on the same test points" in compared.stdout


def test_skip_lines_are_kept_once_in_the_run_folder_and_shown(reference):
    from diffbench.rundir import RunFolder

    said = []
    log = RunFolder(reference).keeping_skips(said.append)
    for line in (
        "skipping spirals x unet: unet takes images",
        "trained in 3s",
        "skipping spirals x unet: unet takes images",
    ):
        log(line)
    assert len(said) == 3, "every line is still said"
    assert json.loads((reference / "skipped.json").read_text()) == ["skipping spirals x unet: unet takes images"]
    assert "<li>skipping spirals x unet: unet takes images</li>" in report.build_report([reference])


def test_the_flip_rate_plot_needs_no_full_mc(tmp_path):
    frame = pd.DataFrame(
        {
            "dataset_label": "d",
            "denoiser_label": "m",
            "device": "cpu",
            "estimator_label": "shared-noise",
            "nfe_per_sample": [2.0, 4.0],
            "flip_rate": [0.2, 0.1],
            "flip_rate_vs_full_mc": [np.nan, np.nan],
        }  # fmt: skip
    )
    assert plots.save(table_plots.flip_rates(frame), tmp_path / "f.png").stat().st_size > 1000
    assert table_plots.flip_rates(frame.assign(flip_rate=np.nan)) is None


BROKEN_DATA = """
import diffbench

class Broken(diffbench.Dataset):
    name = "broken-data"
    params = {}

    def load(self, seed):
        raise OSError("the data files are gone")

@diffbench.hookimpl
def register_datasets(register):
    register(Broken)
"""


def failures_listed(text: str) -> list[str]:
    """The error column of the page's table of failed cells."""
    section = re.search(r'<section id="failures">(.*?)</section>', text, re.S)[1]
    return re.findall(r"<td[^>]*>([^<]*Error: [^<]*)</td>", section)


def test_a_run_whose_every_cell_failed_writes_the_page_of_its_failures_and_exits_1(cli, tmp_path):
    plugin, out = tmp_path / "broken_data.py", tmp_path / "run"
    plugin.write_text(BROKEN_DATA)
    args = ["-d", "broken-data", "-m", "mlp[width=16,depth=1]", "-e", "shared-noise", "--trials", "1,2"]
    result = cli("--plugin", plugin, "run", *args, "--device", "cpu", "--out", out, "--no-cache")
    assert result.exit_code == 1, result.output
    assert "2 of 2 cells failed" in result.output
    assert f"report: {out / 'report.html'}" in result.stderr and "not written" not in result.stderr
    text = (out / "report.html").read_text()
    assert "<p>2 cells failed:</p>" in text
    assert failures_listed(text) == ["OSError: the data files are gone"] * 2
    assert "No cell finished" in text


def test_the_report_command_writes_the_page_of_a_run_whose_every_cell_failed(cli, tmp_path):
    from diffbench.rundir import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.start({"suite": {"trials": [1, 2]}}, resume=False)
    identity = {"dataset_label": "spirals", "denoiser_label": "mlp", "estimator_label": "shared-noise"}
    for trials, error in ((1, "RuntimeError: out of memory"), (2, "ValueError: bad shape")):
        row = {"cell_id": f"c{trials}", **identity, "trials": trials, "device": "cpu", "seed": 0}
        folder.save_cell(f"c{trials}", [{**row, "status": "failed", "error": error}], [])
    folder.write_tables(["c1", "c2"])
    result = cli("report", folder.path)
    assert result.exit_code == 0, result.output
    text = (folder.path / "report.html").read_text()
    assert failures_listed(text) == ["RuntimeError: out of memory", "ValueError: bad shape"]
    assert "2 cells (0 finished, 2 failed)" in text and "No cell finished" in text
