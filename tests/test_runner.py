"""The runner on its own: the tasks it builds, how executors run them, and the one loop that records outcomes."""

import pandas as pd
import pytest

import diffbench
from diffbench.cell import Cell
from diffbench.executor import LocalExecutor, Outcome, Result, Task
from diffbench.plan import CellPlan, ModelPlan, plan_cells
from diffbench.runner import build_tasks, run
from diffbench.suite import Suite


class Data(diffbench.Dataset):
    name = "data"
    params = {"n": 4}


class Net(diffbench.Denoiser):
    name = "net"


class Guess(diffbench.Estimator):
    name = "guess"
    params = {"k": 1}


def grid(datasets=(4, 8), estimators=(1, 2), trials=(1,), device="cpu") -> list[Cell]:
    return [Cell(Data(n=n), Net(), Guess(k=k), t, device, 0) for n in datasets for k in estimators for t in trials]


# -- the local executor --------------------------------------------------------------------------------------------


def test_the_local_executor_hands_results_to_the_tasks_that_need_them():
    tasks = [
        Task("a", lambda: 2, ()),
        Task("b", lambda a, k: a * k, (Result("a"), 5)),
        Task("c", lambda xs, b: sum(xs) + b, ([Result("a"), Result("a"), 1], Result("b"))),
    ]
    outcomes = list(LocalExecutor().execute(tasks))
    assert [(o.task.key, o.result, o.error) for o in outcomes] == [("a", 2, None), ("b", 10, None), ("c", 15, None)]


def test_a_failed_task_fails_its_dependents_without_running_them():
    ran = []
    boom = RuntimeError("boom")

    def fail():
        raise boom

    tasks = [
        Task("train", fail, ()),
        Task("cell", lambda p: ran.append(p), (Result("train"),)),
        Task("figures", lambda p, c: ran.append(c), (Result("train"), Result("cell"))),
        Task("other", lambda: ran.append("other") or 1, ()),
    ]
    outcomes = {o.task.key: o for o in LocalExecutor().execute(tasks)}
    assert outcomes["train"].error is boom and not outcomes["train"].upstream
    assert outcomes["cell"].error is boom and outcomes["cell"].upstream
    assert outcomes["figures"].error is boom and outcomes["figures"].upstream
    assert outcomes["other"].result == 1
    assert ran == ["other"]


# -- the tasks -----------------------------------------------------------------------------------------------------


def plans(cells: list[Cell], suite: Suite | None = None) -> list[CellPlan]:
    return plan_cells(suite or Suite(), cells, None, None, False, {"git_commit": "", "command": ""})


def test_one_training_per_model_then_its_cells_then_its_figures():
    tasks = build_tasks(plans(grid()), set())
    assert [t.kind for t in tasks] == ["train", "cell", "cell", "figures"] * 2
    for train, first, second, figures in (tasks[:4], tasks[4:]):
        assert first.dependencies() == second.dependencies() == [train.key]
        assert figures.dependencies() == [train.key, first.key, second.key]
        assert isinstance(train.subject, ModelPlan) and figures.subject is train.subject
        assert first.subject.model is second.subject.model is train.subject
        assert first.subject.cell.group_id == train.subject.group_id
    assert len({t.key for t in tasks}) == len(tasks)


def test_figures_see_every_finished_cell_of_their_model_and_cuda_cells_ask_for_the_gpu():
    cells = grid(datasets=(4,), estimators=(1, 2, 3), device="cuda")
    done = {cells[0].id}
    tasks = build_tasks(plans(cells), done)
    figures = tasks[-1]
    _, everyone, before = figures.args[:3]
    assert [p.cell for p in everyone] == cells and before == done
    assert [t.gpu for t in tasks] == [False, True, True, False]
    assert [t.subject.cell for t in tasks if t.kind == "cell"] == cells[1:], "the finished cell is not measured again"


def test_a_model_whose_cells_all_finished_gets_no_task():
    cells = grid(datasets=(4, 8), estimators=(1,))
    tasks = build_tasks(plans(cells), {cells[0].id})
    assert [(t.kind, t.subject.pair() if t.kind != "cell" else t.subject.cell.id) for t in tasks] == [
        ("train", "data[n=8] x net"),
        ("cell", cells[1].id),
        ("figures", "data[n=8] x net"),
    ]


def test_plans_resolve_the_suite_once_and_pickle():
    import pickle

    suite = Suite(batch_size=64, scenarios=["single"], repeats=3, max_time_s=2.0, schedule="cosine", timesteps=50)
    cells = grid(datasets=(4,), estimators=(1, 2), device="cuda")
    first, second = plans(cells, suite)
    assert first.model is second.model, "one plan per model, shared by its cells"
    assert (first.batch_size, first.scenarios, first.repeats, first.max_time_s) == (64, ("single",), 3, 2.0)
    assert (first.model.schedule, first.model.timesteps, first.model.device) == ("cosine", 50, "cuda")
    assert first.model.train == suite.train_settings(cells[0].denoiser)
    assert plans(cells, Suite(batch_size="auto"))[0].batch_size is None, "auto: tuned per device"
    again = pickle.loads(pickle.dumps(first))
    assert again.cell.id == first.cell.id and again.model.group_id == first.model.group_id == cells[0].group_id


# -- the recording loop --------------------------------------------------------------------------------------------


class TrainingFails:
    """An executor whose every training fails; what depends on it comes back failed upstream."""

    in_process = True

    def __init__(self) -> None:
        self.tasks: list[Task] = []

    def execute(self, tasks):
        self.tasks = tasks
        error = RuntimeError("no data here")
        for task in tasks:
            yield Outcome(task, error=error, upstream=task.kind != "train")


def test_a_failed_training_gives_each_of_its_cells_a_failed_row_and_is_said_once(tmp_path):
    lines: list[str] = []
    cells = grid(datasets=(4,), estimators=(1, 2))
    table = run(Suite(), cells, tmp_path / "run", TrainingFails(), None, log=lines.append)
    assert list(table["status"]) == ["failed", "failed"]
    assert set(table["error"]) == {"RuntimeError: no data here"}
    assert list(table["cell_id"]) == [c.id for c in cells]
    failures = [line for line in lines if " failed: " in line]
    assert failures == ["data x net failed: RuntimeError: no data here"]
    assert pd.read_parquet(tmp_path / "run" / "results.parquet").shape[0] == 2, "written to the run folder"


def test_a_cell_selected_twice_runs_once_and_the_run_says_so(tmp_path):
    lines: list[str] = []
    executor = TrainingFails()
    cells = grid(datasets=(4,), estimators=(1,), trials=(1, 1))
    table = run(Suite(), cells, tmp_path / "run", executor, None, log=lines.append)
    assert len(table) == 1
    assert [t.kind for t in executor.tasks] == ["train", "cell", "figures"]
    assert lines[0] == "1 cell(s) selected more than once run once (same dataset, denoiser, estimator and settings)"


def test_the_run_writes_its_settings_and_suite_before_any_cell(tmp_path):
    run(Suite(), grid(), tmp_path / "run", TrainingFails(), None, log=lambda line: None)
    assert (tmp_path / "run" / "run.json").is_file() and (tmp_path / "run" / "suite.json").is_file()


@pytest.mark.parametrize("interrupt_after", [0, 1])
def test_an_interrupt_keeps_every_recorded_cell_in_the_table(tmp_path, interrupt_after):
    class Interrupted(TrainingFails):
        def execute(self, tasks):
            for i, outcome in enumerate(super().execute(tasks)):
                if outcome.task.kind == "cell" and i > interrupt_after:
                    raise KeyboardInterrupt
                yield outcome

    with pytest.raises(KeyboardInterrupt):
        run(Suite(), grid(datasets=(4,), estimators=(1, 2)), tmp_path / "run", Interrupted(), None, log=lambda _: None)
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert len(table) == interrupt_after


def test_the_progress_bar_counts_cells_and_names_the_next_one(tmp_path, capsys):
    cells = grid(datasets=(4,), estimators=(1, 2))
    run(Suite(), cells, tmp_path / "run", TrainingFails(), None, progress=True, log=lambda _: None)
    shown = capsys.readouterr().err
    assert "2/2" in shown, "every cell counted"
    assert "now: data x net, guess[k=2] at 1 trials on cpu" in shown


def test_no_progress_bar_when_disabled(tmp_path, capsys):
    run(Suite(), grid(), tmp_path / "run", TrainingFails(), None, progress=False, log=lambda _: None)
    assert "cells" not in capsys.readouterr().err


def test_nothing_below_the_runner_meets_the_suite():
    from tests.test_architecture import core_imports

    graph = core_imports()
    for below in ("measurement", "quality", "preparation", "figures", "dask_executor", "executor"):
        assert "suite" not in graph[below], f"{below} imports the suite"
    assert "suite" in graph["plan"] and "plan" in graph["runner"], "the plans are made from it, by the runner"
