"""Executors: run a graph of tasks and yield each one's outcome as it finishes.

The runner builds the tasks (trainings, cells, figure data) and records what comes back;
an executor only runs them. A task's arguments may hold ``Result(key)`` placeholders (alone
or in a list): the executor replaces each by the result of the task with that key, which it
runs first. A task whose dependency failed is not run: it comes back with that failure.

``LocalExecutor`` runs tasks one after another in this process; ``diffbench.dask_executor``
runs them on a dask cluster. Another backend (a process pool, a Slurm cluster) is one class
with an ``execute`` method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from diffbench.interrupts import contained

if TYPE_CHECKING:
    from diffbench.plan import CellPlan, ModelPlan


class ExecutorError(RuntimeError):
    """The executor cannot start (an unreachable dask scheduler, say)."""


@dataclass(frozen=True)
class Result:
    """Stands, in a task's arguments, for the result of the task with this key."""

    key: str


@dataclass
class Task:
    """One unit of work: ``fn(*args)``, with ``Result`` placeholders resolved.

    ``kind`` and ``subject`` are the runner's own: what the task is ("train", "cell", "figures")
    and the plan it works on (a model's for "train" and "figures", a cell's for "cell"), which
    says what to do with the outcome. ``gpu`` asks for exclusive use of the host's GPU while it runs.
    """

    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kind: str = ""
    subject: ModelPlan | CellPlan | None = None
    gpu: bool = False

    def dependencies(self) -> list[str]:
        found = []
        for arg in self.args:
            for item in arg if isinstance(arg, list) else [arg]:
                if isinstance(item, Result):
                    found.append(item.key)
        return found


@dataclass
class Outcome:
    """What running a task gave: its result, or the exception it (or a task it needed) raised."""

    task: Task
    result: Any = None
    error: BaseException | None = None
    upstream: bool = False  # the error is a dependency's, the task itself never ran


def resolve(args: tuple[Any, ...], results: dict[str, Any]) -> tuple[Any, ...]:
    """``args`` with every ``Result`` placeholder (alone or in a list) replaced by its task's result."""

    def one(item: Any) -> Any:
        return results[item.key] if isinstance(item, Result) else item

    return tuple([one(i) for i in arg] if isinstance(arg, list) else one(arg) for arg in args)


class Executor(Protocol):
    #: Whether tasks run in this process, so they may draw progress bars on its terminal.
    in_process: bool
    #: How many tasks may run at once, where that is more than one (else 0): in ``--errors bank`` mode the
    #: runner then computes each model's errors once, in that many bank tasks (``diffbench.bank_tasks``).
    shards: int

    def execute(self, tasks: list[Task]) -> Iterator[Outcome]:
        """Run every task (dependencies first) and yield its outcome as it finishes."""
        ...


class LocalExecutor:
    """Runs the tasks in this process, in the order given (each after the tasks it needs)."""

    in_process = True
    shards = 0  # one task at a time: each cell fills the bank as it goes

    def execute(self, tasks: list[Task]) -> Iterator[Outcome]:
        results: dict[str, Any] = {}
        errors: dict[str, BaseException] = {}
        for task in tasks:
            failed = [errors[k] for k in task.dependencies() if k in errors]
            if failed:
                errors[task.key] = failed[0]
                yield Outcome(task, error=failed[0], upstream=True)
                continue
            try:  # a plugin's sys.exit() or stray KeyboardInterrupt fails this task; the user's Ctrl-C stops all
                results[task.key] = contained(task.fn, *resolve(task.args, results))
            except Exception as exc:
                errors[task.key] = exc
                yield Outcome(task, error=exc)
                continue
            yield Outcome(task, results[task.key])
