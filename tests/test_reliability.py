"""Issue 14: what an adversarial probe broke, one test per root cause (not per reproduction).

1. the module's output (shape, dtype, finiteness) is checked where the core calls it;
2. a broken model is a failure (failed rows), never a skip; non-finite weights are never cached or loaded;
3. every numeric input is range-checked where it enters, and a table write cannot lose a finished cell;
4. a cell selected twice runs once (through the CLI);
5. an unusable --out, --cache or --suite is one line, exit 2, before anything trains;
6. plot and compare on a damaged or foreign table: one line naming the file;
7. a plugin's sys.exit() or stray KeyboardInterrupt fails its task; the user's Ctrl-C still stops the run;
8. impossible params against the schedule, one-class data, copied cell files, list --json, unknown [train.x].
"""

from __future__ import annotations

import json
import os
import signal
import time

import pandas as pd
import pytest
import torch

import diffbench
from diffbench import interrupts, rundir
from diffbench.acceleration import unsupported
from diffbench.checkpoints import CheckpointError, TrainingError, load_checkpoint, save_cached_checkpoint
from diffbench.contract import PluginOutputError, Splits, check_splits
from diffbench.executor import LocalExecutor, Task
from diffbench.runner import run
from diffbench.schedule import NoiseSchedule
from diffbench.suite import Suite
from diffbench.training import TrainSettings, train
from tests.helpers import TINY_DENOISER, error_lines, make_model, write_suite
from tests.test_runner import TrainingFails, grid

BAD_PLUGIN = '''
import sys
import torch
import diffbench


class Net(torch.nn.Module):
    """A small conditional module that misbehaves as its mode says (some modes only once trained)."""

    def __init__(self, dim, mode):
        super().__init__()
        self.lin = torch.nn.Linear(dim + 2, dim)
        self.mode = mode

    def forward(self, x, t, c):
        out = self.lin(torch.cat([x, t[:, None].float() / 1000, c[:, None].float()], 1))
        if self.mode == "narrow":
            return out[:, :1]
        if not self.training and self.mode == "nan-eval":
            return out * float("nan")
        if not self.training and self.mode == "raise-eval":
            raise RuntimeError("boom at eval")
        if not self.training and self.mode == "exit-eval":
            sys.exit(3)
        if not self.training and self.mode == "keyboard-eval":
            raise KeyboardInterrupt
        return out


class Bad(diffbench.Denoiser):
    name = "bad"
    params = {"mode": "narrow"}

    def build(self, data_shape, num_classes):
        return Net(data_shape[0], self.params["mode"])


class Odd(diffbench.Estimator):
    name = "odd"
    params = {"limit": float("inf"), "nothing": float("nan")}


@diffbench.hookimpl
def register_denoisers(register):
    register(Bad)


@diffbench.hookimpl
def register_estimators(register):
    register(Odd)
'''


@pytest.fixture
def bad_plugin(tmp_path):
    path = tmp_path / "bad_plugin.py"
    path.write_text(BAD_PLUGIN)
    return path


class Narrow(torch.nn.Module):
    """eps_hat of shape [N, 1] for x_t [N, 2]: broadcasts silently against eps without the check."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.scale = scale

    def forward(self, x, t, c):
        return self.lin(x)[:, :1] * self.scale


class Returns(torch.nn.Module):
    """Returns whatever ``make(x)`` gives."""

    def __init__(self, make) -> None:
        super().__init__()
        self.make = make

    def forward(self, x, t, c):
        return self.make(x)


def rows(n: int = 6, dim: int = 2):
    return torch.randn(n, dim), torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)


# -- 1. the module's output is part of the contract ---------------------------------------------------------------


@pytest.mark.parametrize("max_batch", [100, 4])  # one call, and chunks
def test_the_model_refuses_a_module_output_of_the_wrong_shape_or_dtype_naming_the_plugin(max_batch):
    x, t, c = rows()
    make_model(Returns(torch.round), max_batch=max_batch).eps(x, t, c)  # a floating module of the right shape
    model = make_model(Narrow(), max_batch=max_batch, name="denoiser 'narrow'")
    says = r"denoiser 'narrow' forward\(\) returned shape \[\d, 1\] for x_t of shape \[\d, 2\]"
    with pytest.raises(PluginOutputError, match=says):
        model.eps(x, t, c)
    with pytest.raises(PluginOutputError, match=says):
        model.eps_error(x, t, c, torch.zeros_like(x))
    integers = make_model(Returns(lambda x: x.long()), max_batch=max_batch, name="denoiser 'ints'")
    with pytest.raises(PluginOutputError, match="denoiser 'ints' forward\\(\\) returned dtype torch.int64"):
        integers.eps(x, t, c)


def test_non_finite_module_outputs_are_noted_without_a_sync_and_raised_by_check_finite():
    x, t, c = rows(8)
    model = make_model(Returns(lambda x: torch.where(x > 0, x, float("nan"))), max_batch=3, name="denoiser 'n'")
    model.eps(x.abs() + 1, t, c)
    model.check_finite()  # all finite so far
    model.eps_error(x, t, c, x)
    with pytest.raises(PluginOutputError, match="denoiser 'n' forward\\(\\) returned NaN or inf during a test"):
        model.check_finite("during a test")
    model.check_finite()  # the flag was cleared
    model.check_values = False  # what the runner does after a cell's first passes: shape and dtype only
    model.eps(x, t, c)
    model.check_finite()


def test_training_refuses_a_wrong_shape_and_a_loss_that_is_not_finite():
    splits = Splits(torch.randn(20, 2), torch.arange(20) % 2, torch.randn(4, 2), torch.arange(4) % 2, ["a", "b"])
    schedule, settings = NoiseSchedule("linear", 100), TrainSettings(steps=3, batch_size=8)
    with pytest.raises(PluginOutputError, match=r"denoiser 'n' forward\(\) returned shape \[8, 1\] for x_t of shape"):
        train(Narrow(), splits, schedule, settings, 0, torch.device("cpu"), progress=False, name="denoiser 'n'")

    class Diverges(Narrow):
        def forward(self, x, t, c):
            return self.lin(x) * float("nan")

    with pytest.raises(TrainingError, match="trained to a loss of nan at step 1 of 3"):
        train(Diverges(), splits, schedule, settings, 0, torch.device("cpu"), progress=False)


# -- 2. a broken model is a failure, never a skip ----------------------------------------------------------------


def test_the_dtype_probe_raises_for_a_broken_module_and_skips_only_a_real_dtype_limit():
    cpu = torch.device("cpu")
    for module, error in (
        (Returns(lambda x: x * float("nan")), PluginOutputError),
        (Returns(lambda x: 1 / 0), ZeroDivisionError),
        (Narrow(), PluginOutputError),
    ):
        for dtype in ("float32", "bfloat16"):
            with pytest.raises(error):
                unsupported(module, cpu, dtype, False, (2,), 3)

    def fine_in_float32_only(x):
        return x * (float("inf") if torch.is_autocast_enabled("cpu") else 1.0)

    assert "NaN or inf in bfloat16" in unsupported(Returns(fine_in_float32_only), cpu, "bfloat16", False, (2,), 3)


def test_non_finite_weights_are_never_cached_nor_loaded(tmp_path):
    module = torch.nn.Linear(2, 2)
    with torch.no_grad():
        module.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="weight"):
        save_cached_checkpoint(module, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()
    torch.save(module.state_dict(), tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="holds NaN or inf in weight"):
        load_checkpoint(torch.nn.Linear(2, 2), tmp_path / "nan.pt", "linear")
    masked = torch.nn.Linear(2, 2)
    masked.register_buffer("mask", torch.tensor([0.0, -float("inf")]))
    torch.save(masked.state_dict(), tmp_path / "mask.pt")
    target = torch.nn.Linear(2, 2)
    target.register_buffer("mask", torch.zeros(2))
    load_checkpoint(target, tmp_path / "mask.pt", "masked")  # an inf buffer (a mask) is fine
    assert target.mask[1] == -float("inf")


@pytest.mark.slow
def test_broken_models_give_failed_rows_and_exit_1_while_the_good_one_runs(cli, tmp_path, bad_plugin):
    suite = write_suite(tmp_path / "s.toml", trials=[1], scenarios=["offline"], max_time_s=0.1, train={"steps": 5})
    modes = ["narrow", "nan-eval", "raise-eval", "exit-eval", "keyboard-eval"]
    selectors = [arg for mode in modes for arg in ("-m", f"bad[mode={mode}]")]
    result = cli(
        "--plugin", bad_plugin, "run", "--suite", suite, *selectors, "-m", TINY_DENOISER,
        "--out", tmp_path / "run", "--cache", tmp_path / "c", "--no-plots",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    table = pd.read_parquet(tmp_path / "run" / "results.parquet").set_index("denoiser_label")
    assert table.loc[TINY_DENOISER, "status"] == "ok"
    errors = table.drop(TINY_DENOISER)["error"]
    assert (table.drop(TINY_DENOISER)["status"] == "failed").all() and len(errors) == len(modes)
    assert "returned shape [512, 1] for x_t of shape [512, 2]" in errors["bad"]  # training batch
    assert "forward() returned NaN or inf" in errors["bad[mode=nan-eval]"]
    assert errors["bad[mode=raise-eval]"] == "RuntimeError: boom at eval"
    assert "sys.exit(3)" in errors["bad[mode=exit-eval]"]
    assert "KeyboardInterrupt, but no Ctrl-C" in errors["bad[mode=keyboard-eval]"]
    assert "skipping" not in result.stderr
    cached = sorted(p.name.split("-")[0] for p in (tmp_path / "c").glob("*.pt"))
    assert cached == ["bad", "bad", "bad", "bad", "mlp"], "every model that trained finitely is cached; narrow never"


def test_a_checkpoint_with_nan_weights_is_one_line_before_anything_runs(cli, tmp_path):
    state = {"w": torch.tensor([1.0, float("nan")])}
    torch.save(state, tmp_path / "nan.pt")
    suite = write_suite(tmp_path / "s.toml")
    result = cli("run", "--suite", suite, "--checkpoint", tmp_path / "nan.pt", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"diffbench: error: checkpoint '{tmp_path / 'nan.pt'}' holds NaN in w: these weights are broken"
    ]
    assert not (tmp_path / "run").exists()


# -- 3. numeric input is range-checked where it enters; a finished cell is never lost -----------------------------

HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    "option",
    [
        ["--seed", HUGE],
        ["--batch-size", "1e20"],
        ["--batch-size", HUGE],
        ["--trials", HUGE],
        ["--trials", "1," + "9" * 5000],
        ["--repeats", HUGE],
        ["--max-time", "inf"],
        ["--max-time", "nan"],
        ["--threads", HUGE],
        ["-e", "truncated[t_max=1e30]"],
        ["-e", f"truncated[t_min={HUGE}]"],
    ],
)
def test_numeric_options_out_of_range_are_exit_2_before_anything_runs(cli, tmp_path, option):
    suite = write_suite(tmp_path / "s.toml")
    result = cli("run", "--suite", suite, *option, "--out", tmp_path / "run", "--cache", tmp_path / "c")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()


def test_workers_out_of_range_are_exit_2(cli, tmp_path):
    result = cli("run", "--executor", "dask", "--workers", HUGE, "--out", tmp_path / "run")
    assert result.exit_code == 2 and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "keys",
    [
        {"seed": 2**63 - 1},
        {"timesteps": 10**9},
        {"repeats": 10**12},
        {"trials": [1, 2**40]},
        {"max_time_s": 1e300},
        {"train": {"steps": 2**62}},
        {"train": {"lr": 1e400}},  # TOML reads inf
        {"estimators": ["truncated[t_max=1e30]"]},
    ],
)
def test_suite_file_numbers_out_of_range_are_one_line_exit_2(cli, tmp_path, keys):
    train = keys.pop("train", None)
    suite = write_suite(tmp_path / "s.toml", train=train, **keys)
    result = cli("run", "--suite", suite, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert len(error_lines(result)) == 1 and error_lines(result)[0].startswith("diffbench: error: ")
    assert not (tmp_path / "run").exists()


def test_a_cell_whose_values_parquet_cannot_hold_is_saved_as_text_and_said(tmp_path):
    folder = rundir.RunFolder(tmp_path / "run")
    first = [{"cell_id": "a", "status": "ok", "p_estimator_x": 2**70, "mixed": 1}]
    second = [{"cell_id": "b", "status": "ok", "p_estimator_x": 1, "mixed": "text"}]
    note = folder.save_cell("a", first, [])
    assert note == "cell a: column(s) p_estimator_x saved as text (parquet cannot hold their values)"
    folder.save_cell("b", second, [])
    table = folder.write_tables(["a", "b"])  # mixed types across cells: the table is still written
    assert list(pd.read_parquet(tmp_path / "run" / "results.parquet")["cell_id"]) == ["a", "b"]
    assert str(2**70) in set(table["p_estimator_x"])


def test_a_failed_table_write_loses_no_cell_and_is_said_once(tmp_path, monkeypatch):
    real = rundir.write_atomic

    def no_table(frame, path):
        if path.name.startswith("results."):
            raise OSError(28, "No space left on device")
        real(frame, path)

    monkeypatch.setattr(rundir, "write_atomic", no_table)
    lines: list[str] = []
    cells = grid(datasets=(4,), estimators=(1, 2))
    with pytest.raises(rundir.TableWriteError, match="every finished cell is kept in"):
        run(Suite(), cells, tmp_path / "run", TrainingFails(), None, log=lines.append)
    assert len(list((tmp_path / "run" / "cells").glob("*.parquet"))) == 2, "both cells are saved"
    assert sum("cannot write the tables" in line for line in lines) == 1
    monkeypatch.setattr(rundir, "write_atomic", real)
    folder = rundir.RunFolder(tmp_path / "run")
    folder.load()
    assert len(folder.write_tables([c.id for c in cells])) == 2


# -- 4. a cell selected twice runs once, through the CLI ----------------------------------------------------------


@pytest.mark.slow
def test_the_cli_runs_a_cell_selected_twice_once(cli, tmp_path):
    suite = write_suite(tmp_path / "s.toml", scenarios=["offline"], max_time_s=0.1, train={"steps": 5})
    result = cli(
        "run", "--suite", suite, "--trials", "1,1", "-e", "shared-noise", "-e", "shared-noise[loss=l2]",
        "--out", tmp_path / "run", "--cache", tmp_path / "c", "--no-plots",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 cell(s) selected more than once run once" in result.stderr
    assert len(pd.read_parquet(tmp_path / "run" / "results.parquet")) == 1


# -- 5. unusable folders: one line, exit 2, before anything trains -----------------------------------------------


def unusable(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = {
        "out under a file": ["--out", tmp_path / "file" / "run"],
        "out on /proc": ["--out", "/proc/diffbench-run"],
        "out is a file": ["--out", tmp_path / "file"],
        "cache is a file": ["--out", tmp_path / "run", "--cache", tmp_path / "file"],
        "cache under a file": ["--out", tmp_path / "run", "--cache", tmp_path / "file" / "c"],
        "suite is a folder": ["--out", tmp_path / "run", "--suite", tmp_path],
    }
    return cases


@pytest.mark.parametrize(
    "case",
    ["out under a file", "out on /proc", "out is a file", "cache is a file", "cache under a file", "suite is a folder"],
)
def test_unusable_folders_are_one_line_exit_2_before_anything_trains(cli, tmp_path, case):
    args = unusable(tmp_path)[case]
    suite = [] if "--suite" in args else ["--suite", write_suite(tmp_path / "s.toml")]
    cache = [] if "--cache" in args else ["--cache", tmp_path / "cache"]
    result = cli("run", *suite, *cache, *args)
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("diffbench: error: "), lines
    assert not (tmp_path / "cache").exists(), "nothing trained"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_out_folder_without_write_permission_is_one_line(cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = cli("run", "--suite", write_suite(tmp_path / "s.toml"), "--out", locked / "run")
    assert result.exit_code == 2 and "cannot be written" in result.stderr


# -- 6. plot and compare on a damaged or foreign table -----------------------------------------------------------


@pytest.mark.parametrize("damage", ["random bytes", "foreign parquet", "text accuracy"])
def test_plot_and_compare_on_a_damaged_table_say_which_file_in_one_line(cli, tmp_path, damage):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    table = run_dir / "results.parquet"
    if damage == "random bytes":
        table.write_bytes(os.urandom(512))
    elif damage == "foreign parquet":
        pd.DataFrame({"x": [1, 2]}).to_parquet(table)
    else:
        cols = dict.fromkeys(["cell_id", "dataset_label", "denoiser_label", "estimator_label", "device"], ["a"])
        numbers = {"trials": [1], "seed": [0], "n_test": [1], "nfe_per_sample": [1.0], "samples_per_s": [1.0]}
        pd.DataFrame({**cols, **numbers, "status": ["ok"], "accuracy": ["high"]}).to_parquet(table)
    for args in (["plot", run_dir], ["compare", run_dir, run_dir]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        lines = error_lines(result)
        assert len(lines) == 1 and f"'{table}'" in lines[0], lines


# -- 7. a plugin's sys.exit or KeyboardInterrupt fails its task; the user's Ctrl-C stops the run ------------------


def test_sys_exit_and_a_stray_keyboard_interrupt_fail_only_their_task():
    def leaves():
        raise SystemExit(4)

    def interrupts_itself():
        raise KeyboardInterrupt

    tasks = [Task("exit", leaves, ()), Task("kbd", interrupts_itself, ()), Task("fine", lambda: 1, ())]
    with interrupts.watch_ctrl_c():
        outcomes = {o.task.key: o for o in LocalExecutor().execute(tasks)}
    assert isinstance(outcomes["exit"].error, interrupts.PluginExit) and "sys.exit(4)" in str(outcomes["exit"].error)
    assert isinstance(outcomes["kbd"].error, interrupts.PluginExit)
    assert outcomes["fine"].result == 1


def test_the_users_ctrl_c_inside_a_task_still_stops_the_run_with_the_table_written(tmp_path, monkeypatch):
    from diffbench import runner
    from diffbench.preparation import Trained

    calls = []

    def pressed_ctrl_c(*args):
        calls.append(1)
        if len(calls) == 2:  # the second cell: the first is saved
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the signal arrives during the task
        return runner.failed_result(args[0], RuntimeError("measured"))

    monkeypatch.setattr(runner, "measure_cell", pressed_ctrl_c)
    monkeypatch.setattr(runner, "train", lambda plan: Trained(None, []))
    monkeypatch.setattr(runner, "model_figures", lambda *a: {})
    cells = grid(datasets=(4,), estimators=(1, 2, 3))
    with pytest.raises(KeyboardInterrupt):
        run(Suite(), cells, tmp_path / "run", LocalExecutor(), None, log=lambda _: None)
    assert len(pd.read_parquet(tmp_path / "run" / "results.parquet")) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is restored"


# -- 8. the smaller ones ------------------------------------------------------------------------------------------


def test_params_impossible_on_the_schedule_are_exit_2_before_training(cli, tmp_path):
    suite = write_suite(tmp_path / "s.toml")
    result = cli("run", "--suite", suite, "-e", "truncated[t_max=100000]", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert error_lines(result) == [
        "diffbench: error: truncated t_max=100000 is outside the schedule's timesteps [0, 1000); give t_max below 1000"
    ]
    assert not (tmp_path / "run").exists()


def test_the_default_check_schedule_accepts_the_shortest_schedule_and_an_override_still_refuses(tmp_path):
    from diffbench import cli

    suite = write_suite(tmp_path / "s.toml", timesteps=2)  # T = 2, the shortest schedule a suite takes

    def grid_of(estimator: str) -> list:
        return cli.build_grid(cli.run.make_context("run", ["--suite", str(suite), "-e", estimator]).params)[2]

    cells = grid_of("shared-noise")
    assert type(cells[0].estimator).check_schedule is diffbench.Estimator.check_schedule, "it keeps the default"
    assert [repr(c.estimator) for c in cells] == ["shared-noise", "shared-noise"], "its cells are in the grid"
    assert len(grid_of("truncated[t_max=1]")) == 2
    with pytest.raises(cli.InputError, match="truncated t_max=300 is outside the schedule's timesteps"):
        grid_of("truncated")  # its own check_schedule runs


def test_a_dataset_with_fewer_than_two_classes_is_refused():
    x = torch.randn(10, 2)
    one_name = Splits(x, torch.zeros(10, dtype=torch.long), x, torch.zeros(10, dtype=torch.long), ["only"])
    with pytest.raises(PluginOutputError, match="needs at least two classes"):
        check_splits(one_name, "one")
    one_label = Splits(x, torch.zeros(10, dtype=torch.long), x, torch.zeros(10, dtype=torch.long), ["a", "b"])
    with pytest.raises(PluginOutputError, match="needs at least two classes"):
        check_splits(one_label, "one")


def test_a_copy_of_a_cell_file_counts_once(tmp_path):
    folder = rundir.RunFolder(tmp_path / "run")
    folder.save_cell("abc", [{"cell_id": "abc", "status": "ok", "accuracy": 0.5}], [])
    (folder.cells_dir / "abc (copy).parquet").write_bytes((folder.cells_dir / "abc.parquet").read_bytes())
    lines: list[str] = []
    again = rundir.RunFolder(tmp_path / "run")
    again.load(lines.append)
    assert list(again.rows) == ["abc"] and len(again.table(["abc"])) == 1
    assert len(lines) == 1 and "holds cell abc again" in lines[0]


def test_list_json_is_valid_json_even_with_inf_and_nan_params(cli, bad_plugin):
    result = cli("--plugin", bad_plugin, "list", "--json")
    assert result.exit_code == 0

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    listing = json.loads(result.stdout, parse_constant=refuse)
    odd = next(e for e in listing["estimators"] if e["name"] == "odd")
    assert odd["params"] == {"limit": "inf", "nothing": "nan"}


def test_an_unknown_train_table_is_said(cli, tmp_path):
    suite = write_suite(tmp_path / "s.toml", train={"steps": 5})
    suite.write_text(suite.read_text() + "[train.mpl]\nsteps = 10\n")
    result = cli("run", "--suite", suite, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "[train.mpl] names no denoiser; did you mean 'mlp'?" in result.stderr


@pytest.mark.parametrize(
    "source",
    [
        "import sys\nsys.exit(5)\n",
        "import sys, diffbench\n@diffbench.hookimpl\ndef register_estimators(register):\n    sys.exit(9)\n",
    ],
)
def test_a_plugin_calling_sys_exit_while_loading_is_one_line_exit_2(cli, tmp_path, source):
    path = tmp_path / "exits.py"
    path.write_text(source)
    result = cli("--plugin", path, "list")
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "SystemExit" in lines[0] and "exits.py" in lines[0], lines
