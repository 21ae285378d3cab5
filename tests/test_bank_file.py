"""Portable error banks: `bank export` writes one file, `rescore` replays it without the model or the cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from diffbench import bank_file
from diffbench.bank import open_bank
from diffbench.rescore import MissingErrors, RefusingModule
from tests.helpers import error_lines, write_suite

ANSWERS = ["cell_id", "estimator_label", "trials", "accuracy", "nfe_per_sample", "temperature", "nll", "flip_rate"]
ESTIMATORS = ["shared-noise", "truncated[t_max=300]", "full-mc"]


def bank_run(cli, tmp_path):
    """A tiny run scored with --errors bank (offline only), exported to ``tmp_path/bank.npz``."""
    suite = write_suite(
        tmp_path / "tiny.toml", estimators=ESTIMATORS, scenarios=["offline"], max_time_s=0.1, batch_size=4096
    )
    run = tmp_path / "run"
    args = ["--suite", suite, "--out", run, "--cache", tmp_path / "cache", "--errors", "bank", "--no-plots"]
    assert cli("run", *args, "--no-report").exit_code == 0
    result = cli("bank", "export", run, tmp_path / "bank.npz")
    assert result.exit_code == 0, result.output
    return run, tmp_path / "bank.npz"


def answers(folder) -> pd.DataFrame:
    frame = pd.read_parquet(folder / "results.parquet")
    return (
        frame[frame["scenario"] == "offline"][ANSWERS].sort_values(["estimator_label", "trials"]).reset_index(drop=True)
    )


def test_rescore_in_a_fresh_process_without_the_cache_gives_the_runs_answers(cli, tmp_path):
    run, file = bank_run(cli, tmp_path)
    shutil.rmtree(tmp_path / "cache")  # no weights, no shards: only the file
    out = tmp_path / "rescored"
    command = [sys.executable, "-c", "from diffbench.cli import main; main()", "rescore", file, "--out", out]
    command += ["--no-plots", "--no-report"]
    done = subprocess.run(
        [str(a) for a in command],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    pd.testing.assert_frame_equal(answers(out), answers(run))
    table = pd.read_parquet(out / "results.parquet")
    assert (table["timing_note"] == "rescored from a bank: no timing").all()
    assert table["samples_per_s"].isna().all() and (table["computed_nfe"] == 0).all()
    assert (table["errors_source"] == "bank").all()


def test_a_window_the_bank_cannot_serve_is_one_line_naming_the_estimator(cli, tmp_path):
    _, file = bank_run(cli, tmp_path)
    served = cli("rescore", file, "-e", "truncated[t_max=300]", "--trials", "1", "--out", tmp_path / "a")
    assert served.exit_code == 0, served.output
    drawn = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"reliability.png", "accuracy_vs_nfe.png", "report.html"} <= drawn
    assert "throughput.png" not in drawn  # nothing was timed
    result = cli("rescore", file, "-e", "truncated[t_min=600,t_max=900]", "--trials", "2", "--out", tmp_path / "b")
    assert result.exit_code == 2
    [line] = error_lines(result)[1:]  # after the "rescoring ..." line
    assert "estimator 'truncated[t_min=600,t_max=900]' at 2 trials needs errors the bank does not hold" in line
    assert "rescore with estimators/trials the run used, or run it with --errors bank" in line


def test_export_needs_bank_rows_and_their_shards(cli, tmp_path):
    run, _ = bank_run(cli, tmp_path)
    result = cli("bank", "export", run, tmp_path / "x.npz", "--cache", tmp_path / "elsewhere")
    assert result.exit_code == 2 and "has no shards" in error_lines(result)[0]
    rows = pd.DataFrame({"status": ["ok"], "errors_bank": [""]})
    with pytest.raises(bank_file.BankFileError, match="no finished cell scored with --errors bank"):
        bank_file.bank_rows(rows, tmp_path)


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def test_a_damaged_foreign_or_other_design_file_is_one_line(cli, tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a bank at all")
    foreign = write_npz(tmp_path / "foreign.npz", weights=np.zeros(3))
    header = {"format": bank_file.FORMAT, "version": bank_file.VERSION + 1, "design": bank_file.DESIGN, "models": []}
    other = write_npz(tmp_path / "other.npz", header=np.array(json.dumps(header)))
    for file, words in ((garbage, "not an .npz archive"), (foreign, "not a readable"), (other, "another design")):
        result = cli("rescore", file, "--out", tmp_path / f"out-{file.stem}")
        assert result.exit_code == 2
        assert len(error_lines(result)) == 1 and words in error_lines(result)[0]
        assert not (tmp_path / f"out-{file.stem}").exists()


def test_a_process_keeps_one_bank_per_cache_folder(tmp_path):
    first = open_bank("k", 2, tmp_path / "a")
    assert open_bank("k", 2, tmp_path / "a") is first
    assert open_bank("k", 2, tmp_path / "b").folder == tmp_path / "b" / "banks" / "k"


def test_the_refusing_module_names_the_draws_it_was_asked_for():
    with pytest.raises(MissingErrors, match="3 rows, the first at timestep 7 for class 2"):
        RefusingModule()(torch.zeros(3, 2), torch.tensor([7, 8, 9]), torch.tensor([2, 0, 1]))


def test_an_accuracy_only_run_skips_calibration_and_repeats_and_rescores_the_same(cli, tmp_path):
    suite = write_suite(
        tmp_path / "tiny.toml", estimators=ESTIMATORS, scenarios=["offline"], max_time_s=0.1, quality="accuracy"
    )
    full = tmp_path / "full"
    base = ["run", "--suite", suite, "--cache", tmp_path / "cache", "--errors", "bank", "--no-plots", "--no-report"]
    assert cli(*base, "--out", full, "--quality", "full").exit_code == 0
    run = tmp_path / "run"
    assert cli(*base, "--out", run).exit_code == 0
    only, whole = (pd.read_parquet(f / "results.parquet").set_index("cell_id") for f in (run, full))
    skipped = ["temperature", "nll", "ece", "brier", "flip_rate", "gap_variance", "nfe_per_sample_iqr"]
    assert only[skipped].isna().all().all() and whole[skipped].notna().all().all()
    # the seeded test pass is the same pass: same draws, same answers; the skipped passes cost nothing
    assert (only["accuracy"] == whole.loc[only.index, "accuracy"]).all()
    assert (only["live_nfe"] < whole.loc[only.index, "live_nfe"] / 2).all()
    assert not (run / "reliability.parquet").exists() or pd.read_parquet(run / "reliability.parquet").empty
    assert cli("bank", "export", run, tmp_path / "bank.npz").exit_code == 0
    rescored = cli("rescore", tmp_path / "bank.npz", "--out", tmp_path / "again", "--no-plots", "--no-report")
    assert rescored.exit_code == 0, rescored.output
    pd.testing.assert_frame_equal(answers(tmp_path / "again"), answers(run))
