"""The runner: resolves a grid into plans, builds their tasks, hands them to an executor, records every outcome.

The runner is the last to see the ``Suite``: it resolves it once into a ``ModelPlan`` per trained
model and a ``CellPlan`` per cell (``diffbench.plan``), and tasks are typed calls on those plans:
``preparation.train(model plan) -> Trained``, ``measurement.measure_cell(cell plan, trained) ->
CellResult`` and ``model_figures(model plan, cell plans, ...) -> frames``. Per trained model there
is one training task, one task per cell that needs it, and one figure-data task after its cells.

The runner knows no executor: it is given one (``diffbench.executor.LocalExecutor``,
``diffbench.dask_executor.DaskExecutor``, ...) and reads back outcomes in whatever order they
finish. One loop, ``Recorder.record``, writes everything into the run folder, so every executor
leaves the same files.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from diffbench import resume_identity
from diffbench.bank import TASK_PART
from diffbench.bank_file import record_cache_dir
from diffbench.bank_tasks import after_bank, fill_fits, fill_shard
from diffbench.cell import Cell, unique
from diffbench.executor import Executor, Outcome, Result, Task
from diffbench.figures import NOTES, figures_data
from diffbench.interrupts import ctrl_c_deferred, watch_ctrl_c
from diffbench.measurement import CellResult, failed_result, failure, measure_cell
from diffbench.memory import tune_cpu_allocator
from diffbench.plan import CellPlan, ModelPlan, by_model, plan_cells, plan_models
from diffbench.preparation import Trained, train
from diffbench.provenance import run_info
from diffbench.reference_cell import ReferencePlan, failed_reference, measure_reference, reference_plans
from diffbench.rundir import RunFolder, TableWriteError
from diffbench.suite import Suite

Log = Callable[[str], None]


def model_figures(
    model: ModelPlan, cells: list[CellPlan], finished_before: set[str], trained: Trained, results: list[CellResult]
) -> dict[str, pd.DataFrame]:
    """Figure data of one model, over its cells that finished ok in this run (``results``) or before it."""
    ok = finished_before | {r.cell_id for r in results if r.rows and all(x["status"] == "ok" for x in r.rows)}
    return figures_data(model, [p for p in cells if p.id in ok], trained.prepared)


def train_task(model: ModelPlan) -> Task:
    """The task that loads or trains one model."""
    return Task(f"train-{model.group_id}", train, (model,), "train", model)


def say_training(model: ModelPlan, outcome: Outcome, say: Log) -> bool:
    """Say how a model's training went (its own lines, or why it failed); returns whether it failed."""
    if outcome.error is not None:
        say(f"{model.pair()} failed: {failure(outcome.error)}")
        return True
    for message in outcome.result.messages:
        say(message)
    return False


def bank_tasks(model: ModelPlan, banked: list[CellPlan], trained: Result, shards: int) -> list[Task]:
    """A model's bank tasks (none without ``banked`` cells): one ``bank-fit``, then ``shards`` ``bank-shard``."""
    if not banked:
        return []
    gpu = any(p.cell.device == "cuda" for p in banked)
    key = f"bank-fit-{model.group_id}"
    tasks = [Task(key, fill_fits, (key, banked, trained), "bank", model, gpu=gpu)]
    for shard in range(shards):
        name = f"bank-shard-{model.group_id}-{shard}"
        args = (name, banked, trained, shard, shards, Result(key))
        tasks.append(Task(name, fill_shard, args, "bank", model, gpu=gpu))
    return tasks


def build_tasks(
    plans: list[CellPlan], finished: set[str], references: list[ReferencePlan] = (), shards: int = 0
) -> list[Task]:
    """The tasks that measure the cells of ``plans`` not yet ``finished``, in a runnable order.

    First one task per reference row not yet finished (each trains its own classifier); then per
    model with cells to measure: its training, one task per such cell, and its figure data over
    every cell of the model that finishes ok (now or before). With ``shards`` (an executor that runs
    tasks at once) a model's bank cells first wait for its bank tasks (``bank_tasks.bank_tasks``).
    """
    todo_references = [r for r in references if r.id not in finished]
    tasks = [Task(f"reference-{r.id}", measure_reference, (r,), "reference", r) for r in todo_references]
    for model, cells in by_model(plans):
        todo = [p for p in cells if p.id not in finished]
        if not todo:
            continue
        tasks.append(train_task(model))
        trained = Result(tasks[-1].key)
        banked = [p for p in todo if p.errors == "bank"] if shards else []
        banked_ids = {p.id for p in banked}
        filling = bank_tasks(model, banked, trained, shards)
        tasks += filling
        filled = [Result(t.key) for t in filling if t.kind == "bank" and t.key.startswith("bank-shard")]
        measured = []
        for plan in todo:
            gpu = plan.cell.device == "cuda"
            fn, args = (measure_cell, (plan, trained))
            if plan.id in banked_ids:  # after its model's bank tasks
                fn, args = after_bank, (plan, trained, filled)
            tasks.append(Task(f"cell-{plan.id}", fn, args, "cell", plan, gpu=gpu))
            measured.append(Result(tasks[-1].key))
        before = {p.id for p in cells if p.id in finished}
        args = (model, cells, before, trained, measured)
        tasks.append(Task(f"figures-{model.group_id}", model_figures, args, "figures", model))
    return tasks


# A finished cell is in its own file at once (``--resume`` rebuilds from those); the run's tables, rebuilt
# from all of them, are rewritten at most this often while cells and figures finish, and always at the end or on
# any exception.
TABLES_EVERY_S = 5.0


class Recorder:
    """Writes every outcome into the run folder the moment it arrives, and says what happened."""

    def __init__(self, folder: RunFolder, order: list[str], log: Log) -> None:
        self.folder, self.order, self.log = folder, order, log
        self.said: set[str] = set()
        self.failed_groups: set[str] = set()
        self.tables_written_at = -math.inf

    def say(self, message: str, once: bool = False) -> None:
        if not (once and message in self.said):
            self.log(message)
        self.said.add(message)

    def record(self, outcome: Outcome) -> None:
        task = outcome.task
        getattr(self, f"record_{task.kind}")(task.subject, outcome)

    def record_train(self, model: ModelPlan, outcome: Outcome) -> None:
        if say_training(model, outcome, self.say):
            self.failed_groups.add(model.group_id)

    def record_cell(self, plan: CellPlan, outcome: Outcome) -> None:
        if outcome.error is not None:  # the model's training failed, or the task itself died
            if plan.model.group_id not in self.failed_groups:
                self.say(f"{plan.cell.describe()} failed: {failure(outcome.error)}")
            result = failed_result(plan, outcome.error)
        else:
            result = outcome.result
        for message in result.messages:
            self.say(message, once=result.skipped)  # a skip is said once, not once per cell
        if result.skipped:
            return
        note = self.folder.save_cell(result.cell_id, result.rows, result.bins, result.predictions)
        if note:
            self.say(note)
        self.write_tables(every_s=TABLES_EVERY_S)

    def write_tables(self, every_s: float = 0.0) -> None:
        """Rebuild the tables (unless they were rebuilt less than ``every_s`` ago); a failure is said
        (once) and the run goes on: the cells' files are kept."""
        if time.monotonic() - self.tables_written_at < every_s:
            return
        try:
            self.folder.write_tables(self.order)
        except TableWriteError as exc:
            self.say(str(exc), once=True)
        self.tables_written_at = time.monotonic()

    def record_bank(self, model: ModelPlan, outcome: Outcome) -> None:
        """Keep the rows a bank task computed (``errors.json`` adds them to its cells'); its cells say any failure."""
        filled = outcome.result
        if outcome.error is None and filled.computed:
            frame = pd.DataFrame({"cell_id": list(filled.computed), "computed_nfe": list(filled.computed.values())})
            frame["task"], frame["seconds"] = filled.task, filled.seconds
            self.folder.save_part(filled.task, TASK_PART, frame)

    def record_reference(self, plan: ReferencePlan, outcome: Outcome) -> None:
        result = failed_reference(plan, outcome.error) if outcome.error is not None else outcome.result
        for message in result.messages:
            self.say(message, once=result.skipped)
        if not result.skipped:
            self.folder.save_cell(result.cell_id, result.rows, result.bins, result.predictions)
            self.write_tables(every_s=TABLES_EVERY_S)

    def record_figures(self, model: ModelPlan, outcome: Outcome) -> None:
        if outcome.error is not None:
            if not outcome.upstream:  # an upstream failure was said with the training
                self.say(f"figure data for {model.pair()} failed: {failure(outcome.error)}")
            return
        for kind, frame in outcome.result.items():
            if kind == NOTES:  # lines to say, not figure data (a skip is kept in skipped.json)
                for line in frame["line"]:
                    self.say(line, once=True)
                continue
            self.folder.save_part(model.group_id, kind, frame)
        self.write_tables(every_s=TABLES_EVERY_S)


def run(
    suite: Suite,
    grid: list[Cell],
    out: Path,
    executor: Executor,
    cache_dir: Path | None,
    progress: bool = False,
    log: Log = print,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> pd.DataFrame:
    """Measure every cell of ``grid`` not yet finished in ``out``, saving each as it finishes; returns the table."""
    grid, dropped = unique(grid)
    if dropped:
        log(f"{dropped} cell(s) selected more than once run once (same dataset, denoiser, estimator and settings)")
    folder = RunFolder(out)
    log = folder.keeping_skips(log)  # skip reasons go into the folder too, for the report
    settings = {"suite": suite.to_dict(), "devices": sorted({c.device for c in grid}), "checkpoint": checkpoint}
    try:
        folder.start(settings, resume, log)
        if suite.errors == "bank":  # where `diffbench bank export` finds the banks' shards
            record_cache_dir(out, cache_dir)
        references = reference_plans(suite, grid, run_info(), cache_dir)
        rows = f" and {len(references)} reference row(s)" if references else ""
        log(f"running {len(grid)} cells{rows} on {', '.join(settings['devices'])}; results go to {out}")
        tune_cpu_allocator()
        order = [c.id for c in grid] + [r.id for r in references]
        finished = folder.finished() & set(order)
        if resume:
            log(f"resuming {out}: {len(finished)} of {len(order)} cells already finished")
        plans = plan_cells(suite, grid, cache_dir, checkpoint, progress and executor.in_process, run_info())
        if resume:  # each model is checked against what its finished cells recorded, once prepared
            plans = resume_identity.with_recorded(plans, out, folder.rows, finished)
        return measure(folder, plans, finished, order, executor, progress, log, references)
    finally:
        folder.release()  # the next run or --resume of this folder, here or in another process, may write it


def measure(
    folder: RunFolder,
    plans: list[CellPlan],
    finished: set[str],
    order: list[str],
    executor: Executor,
    progress: bool,
    log: Log,
    references: list[ReferencePlan] = (),
) -> pd.DataFrame:
    """Run the tasks of the cells (and reference rows) not yet ``finished``, recording each outcome; returns the
    rebuilt table.

    The last rebuild of the tables (at the end, or on Ctrl-C or any exception) runs to its end through a
    further Ctrl-C, which is raised once the tables hold every finished cell.
    """
    tasks = build_tasks(plans, finished, references, getattr(executor, "shards", 0))
    with CellProgress(tasks, progress, executor.in_process) as bar:
        recorder = Recorder(folder, order, bar.wrap(log))
        try:
            with watch_ctrl_c():  # the user's Ctrl-C stops the run; a plugin's KeyboardInterrupt fails its cell
                for outcome in executor.execute(tasks):
                    recorder.record(outcome)
                    bar.done(outcome.task)
        except BaseException:  # Ctrl-C, a dying executor: the table holds every cell finished before it
            with ctrl_c_deferred():
                recorder.write_tables()
            raise
    with ctrl_c_deferred():
        return folder.write_tables(order)


class CellProgress:
    """A progress bar over a run's cells on the terminal: cells done, time left, the cell being measured.

    Where tasks run one at a time in this process the bar names the cell being measured now;
    elsewhere (a cluster runs many at once) the one that finished last. Log lines are written
    above the bar. Disabled, it does nothing.
    """

    def __init__(self, tasks: list[Task], enabled: bool, in_order: bool) -> None:
        self.pending = [t for t in tasks if t.kind == "cell"]
        self.in_order = in_order
        self.bar = tqdm(
            total=len(self.pending), desc="cells", unit="cell", disable=not enabled, file=sys.stderr, leave=False
        )
        self.show(self.pending[0] if self.pending and in_order else None, "now")

    def __enter__(self) -> CellProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def wrap(self, log: Log) -> Log:
        if self.bar.disable:
            return log
        return lambda message: self.bar.write(message, file=sys.stderr)

    def show(self, task: Task | None, when: str) -> None:
        if task is not None:
            cell = task.subject.cell
            self.bar.set_postfix_str(f"{when}: {cell.dataset!r} x {cell.denoiser!r}, {cell.describe()}")

    def done(self, task: Task) -> None:
        if task.kind != "cell":
            return
        self.pending = [t for t in self.pending if t.key != task.key]
        self.bar.update(1)
        if self.in_order:
            self.show(self.pending[0] if self.pending else None, "now")
        else:
            self.show(task, "last")
        self.bar.refresh()  # tqdm skips redraws within its minimum interval: every cell shows


def train_only(
    suite: Suite, grid: list[Cell], executor: Executor, cache_dir: Path | None, progress: bool = True, log: Log = print
) -> int:
    """Train (or confirm cached) every model a grid needs; returns how many failed."""
    models = plan_models(suite, grid, cache_dir, None, progress and executor.in_process)
    tasks = [train_task(model) for model in models.values()]
    with watch_ctrl_c():
        return sum(say_training(o.task.subject, o, log) for o in executor.execute(tasks))
