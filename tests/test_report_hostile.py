"""The report, plots and readers of a run folder with hostile text or damaged files: no traceback, no silent loss."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffbench import plots, report
from diffbench.folder_lock import unlock_folder
from diffbench.plot_style import literal
from diffbench.report_format import script_json
from diffbench.rundir import ResumeError, RunFolder
from tests.test_report import REFERENCE, table_json

HOSTILE = ["$\\foo{$", "<!--<script>", "</script><script>window.pwned=1</script>", "a & b > c \u2028 d $x$"]


@pytest.fixture
def hostile(tmp_path) -> Path:
    """The reference run with hostile estimator labels and class names, and no PNGs (so every plot is drawn)."""
    folder = Path(
        shutil.copytree(REFERENCE, tmp_path / "hostile $x{ run", ignore=shutil.ignore_patterns("*.png", "*.html"))
    )
    frame = pd.read_parquet(folder / "results.parquet")
    labels = {old: HOSTILE[i % len(HOSTILE)] + str(i) for i, old in enumerate(frame["estimator_label"].unique())}
    for name in ("results.parquet", "reliability.parquet", "regions.parquet"):
        table = pd.read_parquet(folder / name)
        if "estimator_label" in table:
            table["estimator_label"] = table["estimator_label"].map(lambda v: labels.get(v, v))
        table.to_parquet(folder / name, index=False)
    frame = pd.read_parquet(folder / "results.parquet")
    frame["dataset_label"] = frame["dataset_label"] + " $\\foo{$"
    frame.to_parquet(folder / "results.parquet", index=False)
    return folder


def test_dollars_in_labels_and_paths_are_drawn_literally(hostile):
    made = plots.plot_run(hostile)
    assert {p.name for p in made} >= {"accuracy_vs_nfe.png", "throughput.png", "reliability.png"}
    frame = pd.read_parquet(hostile / "results.parquet")
    drawn = plots.runs_side_by_side([("$\\foo{$", frame), ("b", frame)])
    assert drawn is not None and drawn.startswith(b"\x89PNG")


def test_hostile_labels_keep_the_whole_table_and_every_section(hostile):
    text = report.build_report([hostile])
    data = table_json(text)
    assert len(data["rows"]) == len(pd.read_parquet(hostile / "results.parquet"))
    labels = {row[[c["name"] for c in data["columns"]].index("estimator_label")] for row in data["rows"]}
    assert any(label.startswith("<!--<script>") for label in labels)
    json_text = re.search(r'id="table-data">(.*?)</script>', text, re.S)[1]
    assert not set("<>&\u2028\u2029") & set(json_text)
    for section in ('id="figures"', 'id="failures"', 'id="provenance"'):
        assert section in text


def test_only_the_pages_own_script_may_run():
    text = report.build_report([REFERENCE])
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text)[1]
    assert "unsafe-inline" not in policy.split("script-src")[1]
    script = re.search(r"<script>(.*?)</script>\s*</body>", text, re.S)[1]
    assert f"'{report.script_hash(script)}'" in policy


IDENTITY = {"dataset_label": "spirals", "denoiser_label": "mlp", "estimator_label": "shared-noise", "device": "cpu"}


def ok_row(ident: str, trials: int) -> dict:
    return {"cell_id": ident, **IDENTITY, "trials": trials, "seed": 0, "status": "ok", "scenario": "offline",
            "accuracy": 0.5, "n_test": 4, "samples_per_s": 10.0, "started_at": float(trials)}  # fmt: skip


def started(path: Path) -> RunFolder:
    folder = RunFolder(path)
    folder.start({"suite": {"trials": [1, 2, 3]}}, resume=False)
    return folder


def test_every_reader_sees_every_finished_cell_when_the_table_lags_a_kill(tmp_path):
    folder = started(tmp_path / "run")
    folder.save_cell("c1", [ok_row("c1", 1)], [])
    folder.write_tables(["c1", "c2", "c3"])  # the last rebuild before the kill
    folder.save_cell("c2", [ok_row("c2", 2)], [])
    folder.save_cell("c3", [ok_row("c3", 3)], [])
    assert len(pd.read_parquet(folder.path / "results.parquet")) == 1
    frame = RunFolder(folder.path).read_table()
    assert list(frame["cell_id"]) == ["c1", "c2", "c3"]
    assert list(pd.read_parquet(folder.path / "results.parquet")["cell_id"]) == ["c1", "c2", "c3"]  # written back
    assert not list(folder.path.glob("*.tmp"))


def test_a_run_stopped_before_its_first_cell_says_so_and_how_to_resume(tmp_path, cli):
    folder = started(tmp_path / "run")
    for write_table in (False, True):
        if write_table:
            folder.write_tables([])  # the table a run interrupted before any cell writes: no row
        result = cli("report", folder.path)
        assert result.exit_code == 2, result.output
        assert "holds no finished cell yet" in result.stderr and f"--resume {folder.path}" in result.stderr
        assert "not a table" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def failed_run(path: Path) -> RunFolder:
    folder = started(path)
    row = {"cell_id": "c1", **IDENTITY, "trials": 1, "seed": 0, "status": "failed", "error": "ValueError: x"}
    folder.save_cell("c1", [row], [])
    folder.write_tables(["c1"])
    return folder


def test_a_damaged_table_with_its_cells_is_rebuilt_and_without_them_is_one_line(tmp_path, cli):
    folder = failed_run(tmp_path / "run")
    (folder.path / "results.parquet").write_bytes(b"PAR1 not a table")
    assert cli("report", folder.path).exit_code == 0
    assert len(pd.read_parquet(folder.path / "results.parquet")) == 1
    shutil.rmtree(folder.path / "cells")
    (folder.path / "results.parquet").write_bytes(b"PAR1 not a table")
    result = cli("report", folder.path)
    assert result.exit_code == 2 and "not a readable parquet table" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unwritable_out_is_one_line(tmp_path, cli):
    folder = failed_run(tmp_path / "run")
    (tmp_path / "file").write_text("")
    result = cli("report", folder.path, "--out", tmp_path / "file" / "report.html")
    assert result.exit_code == 2 and "cannot write the report" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def reference(tmp_path) -> Path:
    return Path(shutil.copytree(REFERENCE, tmp_path / "reference", ignore=shutil.ignore_patterns("*.html")))


def test_damaged_predictions_and_suite_leave_a_page_that_says_what_is_left_out(reference, cli):
    (reference / "predictions.parquet").write_bytes(b"garbage")
    (reference / "suite.json").write_text("{broken")
    result = cli("report", reference)
    assert result.exit_code == 0, result.output
    text = (reference / "report.html").read_text()
    assert "the paired tests are left out" in text and "suite.json&#x27; is unreadable" in text
    assert len(table_json(text)["rows"]) == len(pd.read_parquet(reference / "results.parquet"))


def test_damaged_figure_data_leaves_the_page_without_figures(reference, cli):
    for png in reference.glob("*.png"):
        png.unlink()
    (reference / "reliability.parquet").write_bytes(b"garbage")
    result = cli("report", reference)
    assert result.exit_code == 0, result.output
    text = (reference / "report.html").read_text()
    assert "No figure: they could not be drawn" in text and "reliability.parquet" in text


HOLDER = """
import sys, time
from diffbench.rundir import RunFolder
RunFolder(sys.argv[1]).start({"suite": {}}, resume=False)
print("holding", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_refused_in_one_line_and_readers_are_not(tmp_path):
    folder = failed_run(tmp_path / "run")
    (folder.path / "cells" / "c9.parquetabc.tmp").write_text("half")
    other = tmp_path / "other"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(other)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(
            ResumeError, match=rf"'{other}' is being written by another diffbench process \(pid {holder.pid}\)"
        ):
            RunFolder(other).start({"suite": {}}, resume=True)
    finally:
        holder.kill()
        holder.wait()
    RunFolder(other).start({"suite": {}}, resume=True)  # its process died: the lock went with it
    RunFolder(folder.path).start({"suite": {"trials": [1, 2, 3]}}, resume=True)
    assert not list(folder.path.rglob("*.tmp"))
    assert len(RunFolder(folder.path).read_table()) == 1


@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")
@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from("$<>&\\{}!-")))
def test_any_text_embeds_as_inert_json_and_draws_literally(text):
    embedded = script_json({"label": text})
    assert not set("<>&\u2028\u2029") & set(embedded) and json.loads(embedded) == {"label": text}
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.set_title(literal(text))
    fig.canvas.draw()  # matplotlib's math-text parser would raise on an unescaped `$\\foo{$`
    plt.close(fig)


def test_a_lagging_table_a_live_run_writes_is_rebuilt_in_memory_only(tmp_path):
    folder = started(tmp_path / "run")
    folder.save_cell("c1", [ok_row("c1", 1)], [])
    folder.write_tables(["c1"])
    folder.save_cell("c2", [ok_row("c2", 2)], [], predictions={"sample": [0], "label": [1], "pred": [1]})
    unlock_folder(folder.path)  # this process stops writing; another one starts
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(folder.path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "True"
        reader = RunFolder(folder.path)
        assert list(reader.read_table()["cell_id"]) == ["c1", "c2"]
        assert list(reader.read_predictions()["cell_id"]) == ["c2"]
        assert list(pd.read_parquet(folder.path / "results.parquet")["cell_id"]) == ["c1"]  # the writer's to write
    finally:
        holder.kill()
        holder.wait()


LOCKER = """
import sys, time
from diffbench.folder_lock import try_lock_folder
print(try_lock_folder(sys.argv[1]), flush=True)
time.sleep(60)
"""
