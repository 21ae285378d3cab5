"""The end of a run: the last rebuild of the tables survives a second Ctrl-C, the folder is let go when the run
ends, and a Ctrl-C during the plots or report says where the results are saved (exit 130)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

from diffbench import interrupts
from diffbench.rundir import RunFolder
from diffbench.suite import Suite
from tests.helpers import error_lines
from tests.test_cli import run_tiny
from tests.test_runner import TrainingFails, grid, run

LOCKER = """
import sys
from diffbench.folder_lock import try_lock_folder
print(try_lock_folder(sys.argv[1]), flush=True)
"""


def another_process_can_write(folder) -> bool:
    done = subprocess.run([sys.executable, "-c", LOCKER, str(folder)], capture_output=True, text=True, check=True)
    return done.stdout.strip() == "True"


def ctrl_c_during_rebuild(monkeypatch, which: int) -> list[str]:
    """Press Ctrl-C inside the ``which``-th rebuild of the tables (1-based); returns the rebuilds that ran whole."""
    whole, original = [], RunFolder._write_tables
    calls = []

    def rebuild(self, order):
        calls.append(1)
        if len(calls) == which:
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler at the next bytecode: right here
        frame = original(self, order)
        whole.append(len(calls))
        return frame

    monkeypatch.setattr(RunFolder, "_write_tables", rebuild)
    return whole


def test_a_ctrl_c_during_the_final_rebuild_is_raised_once_the_table_is_whole(tmp_path, monkeypatch):
    cells = grid(datasets=(4,), estimators=(1, 2, 3))
    monkeypatch.setattr("diffbench.runner.TABLES_EVERY_S", 3600.0)  # one rebuild while cells finish, then the last
    whole = ctrl_c_during_rebuild(monkeypatch, which=2)
    with pytest.raises(KeyboardInterrupt):
        run(Suite(), cells, tmp_path / "run", TrainingFails(), None, log=lambda _: None)
    assert whole == [1, 2], "the last rebuild ran to its end"
    assert len(pd.read_parquet(tmp_path / "run" / "results.parquet")) == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is restored"


def test_a_second_ctrl_c_during_the_rebuild_after_the_first_still_writes_the_table(tmp_path, monkeypatch):
    class Interrupted(TrainingFails):
        def execute(self, tasks):
            for outcome in super().execute(tasks):
                yield outcome
                if outcome.task.kind == "cell":
                    raise KeyboardInterrupt  # the first Ctrl-C, after one cell

    monkeypatch.setattr("diffbench.runner.TABLES_EVERY_S", 3600.0)
    whole = ctrl_c_during_rebuild(monkeypatch, which=2)  # the second Ctrl-C, inside the rebuild on the way out
    with pytest.raises(KeyboardInterrupt):
        run(Suite(), grid(datasets=(4,), estimators=(1, 2)), tmp_path / "run", Interrupted(), None, log=print)
    assert whole == [1, 2]
    assert len(pd.read_parquet(tmp_path / "run" / "results.parquet")) == 1


def test_ctrl_c_deferred_runs_the_block_to_its_end_then_raises():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("after the keypress")
    assert done == ["after the keypress"]
    with interrupts.ctrl_c_deferred():  # no keypress: nothing raised
        done.append("quiet")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("how", ["finished", "interrupted", "refused"])
def test_the_run_lets_its_folder_go_when_it_ends(tmp_path, how):
    class Interrupted(TrainingFails):
        def execute(self, tasks):
            raise KeyboardInterrupt
            yield

    folder = tmp_path / "run"
    cells = grid(datasets=(4,), estimators=(1,))
    if how == "refused":  # --resume with other settings: refused after the lock was taken
        run(Suite(), cells, folder, TrainingFails(), None, log=lambda _: None)
        with pytest.raises(ValueError, match="its settings differ"):
            run(Suite(repeats=7), cells, folder, TrainingFails(), None, log=lambda _: None, resume=True)
    else:
        executor = Interrupted() if how == "interrupted" else TrainingFails()
        try:
            run(Suite(), cells, folder, executor, None, log=lambda _: None)
        except KeyboardInterrupt:
            pass
    assert another_process_can_write(folder)
    run(Suite(), cells, folder, TrainingFails(), None, log=lambda _: None, resume=True)  # and this one again


def test_ctrl_c_during_the_plots_says_the_results_are_saved_and_exits_130(tmp_path, monkeypatch):
    from diffbench import plots

    def pressed(folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_run", pressed)
    result = run_tiny(tmp_path, "run", "cache")
    assert result.exit_code == 130
    folder = tmp_path / "run"
    assert error_lines(result)[-1] == (
        f"interrupted: every result is saved in {folder / 'results.parquet'}; draw the plots and report again "
        f"with: diffbench plot {folder}; diffbench report {folder}"
    )
    assert not pd.read_parquet(folder / "results.parquet").empty


def test_resume_removes_what_a_killed_run_left_half_written(tmp_path):
    folder = tmp_path / "run"
    cells = grid(datasets=(4,), estimators=(1,))
    run(Suite(), cells, folder, TrainingFails(), None, log=lambda _: None)
    left = [folder / "results.parquetx1.tmp", folder / "cells" / "c.parquetab.tmp", folder / ".diffbench-write-check-q"]
    for path in left:
        path.write_text("half")
    run(Suite(), cells, folder, TrainingFails(), None, log=lambda _: None, resume=True)
    assert not [p for p in left if p.exists()]
