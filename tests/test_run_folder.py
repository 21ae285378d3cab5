"""Never lose a result: cells saved as they finish, SIGKILL leaves a readable table, --resume finishes the rest."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from diffbench import rundir
from tests.helpers import error_lines, write_suite

ACCURACY = ["cell_id", "scenario", "estimator_label", "trials", "accuracy", "nfe_per_sample"]


def offline_accuracy(folder) -> pd.DataFrame:
    frame = pd.read_parquet(folder / "results.parquet")
    frame = frame[frame["scenario"] == "offline"]
    return frame[ACCURACY].sort_values(["estimator_label", "trials"]).reset_index(drop=True)


@pytest.mark.slow
def test_each_finished_cell_is_its_own_file_and_the_settings_are_recorded(cli, tmp_path):
    suite = write_suite(tmp_path / "tiny.toml", trials=[1, 2], max_time_s=0.2)
    result = cli("run", "--suite", suite, "--out", tmp_path / "run", "--cache", tmp_path / "c", "--no-plots")
    assert result.exit_code == 0, result.output
    cells = sorted(p.name for p in (tmp_path / "run" / "cells").glob("*.parquet") if p.name.count(".") == 1)
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert cells == sorted(f"{i}.parquet" for i in table["cell_id"].unique())
    assert len(cells) == 2
    settings = rundir.RunFolder(tmp_path / "run").settings()
    assert settings["suite"]["trials"] == [1, 2] and settings["devices"] == ["cpu"]


@pytest.mark.slow
def test_resume_runs_only_the_missing_cells(cli, tmp_path):
    suite = write_suite(tmp_path / "tiny.toml", trials=[1, 2, 4], max_time_s=0.2)
    args = ["--cache", tmp_path / "c", "--no-plots"]
    assert cli("run", "--suite", suite, "--out", tmp_path / "full", *args).exit_code == 0
    reference = offline_accuracy(tmp_path / "full")
    # a run folder with one cell removed, as if the run had been killed before it finished
    assert cli("run", "--suite", suite, "--out", tmp_path / "run", *args).exit_code == 0
    folder = tmp_path / "run"
    victim = reference["cell_id"].iloc[1]
    (folder / "cells" / f"{victim}.parquet").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (folder / "cells").glob("*.parquet") if victim not in p.name}
    result = cli("run", "--resume", folder, *args)
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stderr and "2 of 3 cells already finished" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "cells").glob("*.parquet") if p.name in kept} == kept
    pd.testing.assert_frame_equal(offline_accuracy(folder), reference)


@pytest.mark.slow
def test_resume_reruns_a_damaged_cell_file_and_says_so(cli, tmp_path):
    suite = write_suite(tmp_path / "tiny.toml", trials=[1, 2], max_time_s=0.2)
    folder, args = tmp_path / "run", ["--cache", tmp_path / "c", "--no-plots"]
    assert cli("run", "--suite", suite, "--out", folder, *args).exit_code == 0
    reference = offline_accuracy(folder)
    damaged = folder / "cells" / f"{reference['cell_id'].iloc[0]}.parquet"
    damaged.write_bytes(damaged.read_bytes()[:100])
    result = cli("run", "--resume", folder, *args)
    assert result.exit_code == 0, result.output
    assert f"cell {damaged.stem} in {folder / 'cells'} is unreadable (" in result.stderr
    assert "it runs again" in result.stderr and "1 of 2 cells already finished" in result.stderr
    assert damaged.with_name(damaged.name + ".unreadable").is_file()
    pd.testing.assert_frame_equal(offline_accuracy(folder), reference)


def test_out_must_be_a_folder(cli, tmp_path):
    (tmp_path / "file").write_text("")
    result = cli("run", "--out", tmp_path / "file")
    assert result.exit_code == 2
    assert error_lines(result)[-1] == (
        f"diffbench: error: --out '{tmp_path / 'file'}' is a file, not a folder; give a folder for the run's results"
    )


@pytest.mark.slow
def test_resume_refuses_other_settings_with_one_line(cli, tmp_path):
    suite = write_suite(tmp_path / "tiny.toml", trials=[1], max_time_s=0.2)
    folder = tmp_path / "run"
    assert cli("run", "--suite", suite, "--out", folder, "--cache", tmp_path / "c", "--no-plots").exit_code == 0
    before = (folder / "results.parquet").read_bytes()
    result = cli("run", "--resume", folder, "--trials", "1,2", "--cache", tmp_path / "c", "--no-plots")
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert line.startswith(f"diffbench: error: cannot resume '{folder}': its settings differ (suite.trials: [1] then")
    assert "start a new run with another --out" in line
    assert (folder / "results.parquet").read_bytes() == before


def test_resume_needs_a_run_folder(cli, tmp_path):
    result = cli("run", "--resume", tmp_path)
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"diffbench: error: '{tmp_path}' holds no run.json: it is not a diffbench run folder to resume"
    ]


def test_a_folder_holding_a_run_is_refused_without_resume(cli, tmp_path):
    suite = write_suite(tmp_path / "tiny.toml", trials=[1], max_time_s=0.2)
    folder = tmp_path / "run"
    rundir.RunFolder(folder).start({"suite": {"trials": [1]}}, resume=False)  # a run started here (its settings)
    before = (folder / "run.json").read_bytes()
    result = cli("run", "--suite", suite, "--out", folder, "--cache", tmp_path / "c")
    assert result.exit_code == 2 and f"--resume {folder}" in result.stderr
    assert not (tmp_path / "c").exists(), "refused before training"
    assert (folder / "run.json").read_bytes() == before and not (folder / "cells").exists()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_leaves_a_readable_table_and_resume_finishes_it(tmp_path):
    suite = write_suite(
        tmp_path / "tiny.toml", estimators=["shared-noise", "full-mc"], trials=[1, 2, 4, 8], max_time_s=0.3
    )
    folder, cache = tmp_path / "run", tmp_path / "c"
    command = [sys.executable, "-c", "from diffbench.cli import main; main()", "run", "--suite", str(suite)]
    command += ["--cache", str(cache), "--no-plots", "--threads", "1"]
    env = {**os.environ, "DIFFBENCH_PLUGINS": ""}
    # train first, so the kill lands while cells are measured
    subprocess.run(command[:3] + ["train", "--suite", str(suite), "--cache", str(cache)], env=env, check=True)
    process = subprocess.Popen(command + ["--out", str(folder)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((folder / "cells").glob("*[0-9a-f].parquet"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = pd.read_parquet(folder / "results.parquet")  # readable after the kill
    assert 1 <= partial["cell_id"].nunique() < 8
    assert (partial["status"] == "ok").all()
    resumed = subprocess.run(command + ["--resume", str(folder)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    subprocess.run(command + ["--out", str(tmp_path / "fresh")], env=env, check=True, capture_output=True)
    pd.testing.assert_frame_equal(offline_accuracy(folder), offline_accuracy(tmp_path / "fresh"))


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_keeps_the_table(tmp_path):
    suite = write_suite(
        tmp_path / "tiny.toml", estimators=["shared-noise", "full-mc"], trials=[1, 2, 4, 8], max_time_s=0.3
    )
    folder, cache = tmp_path / "run", tmp_path / "c"
    command = [sys.executable, "-c", "from diffbench.cli import main; main()", "run", "--suite", str(suite)]
    command += ["--cache", str(cache), "--no-plots", "--threads", "1", "--out", str(folder)]
    env = {**os.environ, "DIFFBENCH_PLUGINS": ""}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((folder / "cells").glob("*[0-9a-f].parquet")):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert f"finish the run with: diffbench run --resume {folder}" in stderr
    assert pd.read_parquet(folder / "results.parquet")["cell_id"].nunique() >= 1


def test_a_run_folder_reads_back_what_it_saved(tmp_path):
    folder = rundir.RunFolder(tmp_path / "run")
    assert folder.read_skipped() is None, "a folder from before skip records"
    folder.start({"suite": {"trials": [1, 2]}}, resume=False)
    assert folder.read_suite() == {"trials": [1, 2]}
    row = {"cell_id": "a", "status": "ok", "dataset_label": "d", "denoiser_label": "m", "estimator_label": "e"}
    bins = [{"cell_id": "a", "bin": 3, "count": 7}]
    predictions = {"sample": [0, 1], "label": [1, 0], "pred": [1, 1], "test_digest": "x"}
    folder.save_cell("a", [{**row, "trials": 1, "device": "cpu", "seed": 0, "accuracy": 0.5}], bins, predictions)
    assert folder.read_skipped() == [], "a run that keeps skip records and skipped nothing"
    assert folder.read_predictions().empty and folder.read_reliability_bins() is None, "no table written yet"
    folder.save_part("g", "samples", pd.DataFrame({"x0": [0.5], "label": [1]}))
    folder.write_tables(["a"])
    folder.note_skipped("skipping d x m: m takes images")
    assert folder.read_skipped() == ["skipping d x m: m takes images"]
    assert folder.read_table(required_ok=())["accuracy"].tolist() == [0.5]
    assert folder.read_predictions()[["cell_id", "pred"]].to_dict("list") == {"cell_id": ["a", "a"], "pred": [1, 1]}
    assert folder.read_reliability_bins().to_dict("records") == bins
    assert folder.read_samples().to_dict("list") == {"x0": [0.5], "label": [1]}
    assert folder.read_regions() is None


def test_only_the_run_folder_names_its_files_and_only_the_plots_name_their_pngs():
    from pathlib import Path

    import diffbench

    owners = {"rundir.py", "results.py"}  # results.py declares the table names rundir reads and writes
    for path in Path(diffbench.__file__).parent.glob("*.py"):
        text = path.read_text()
        if path.name not in owners:
            for name in (
                '"suite.json"',
                '"skipped.json"',
                '/ "cells"',
                "cells/",
                'predictions.parquet"',
                'regions.parquet"',
            ):
                assert name not in text, f"{path.name} names {name}: read it through RunFolder"
        if path.name != "plots.py":
            assert '.png"' not in text, f"{path.name} names a PNG: the plots declare them (plots.PLOTS)"
