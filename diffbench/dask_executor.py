"""Running a grid's cells as dask tasks: one training task per model, every cell that needs it waits on it.

Only the client (the ``diffbench run`` process) writes the run folder: results stream back
to it as tasks finish. CUDA cells take a cluster-wide lock per host (and a ``GPU`` resource
where workers declare one), so two never share a GPU.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import torch

from diffbench import plugins, runner
from diffbench.suite import Cell, Suite

INSTALL_HINT = "pip install 'diffbench[dask]'"


def missing_dependency() -> str:
    """Why ``--executor dask`` cannot run here ('' when it can)."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return f"--executor dask needs dask's distributed scheduler: {INSTALL_HINT}"
    return ""


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # said by missing_dependency() before anything runs
    WorkerPlugin = object


class WorkerSetup(WorkerPlugin):
    """Sets each worker up like the client: the same unpackaged plugins, torch threads, allocator."""

    name = "diffbench-setup"

    def __init__(self, threads: int | None, plugin_specs: tuple[str, ...]) -> None:
        self.threads = threads
        self.plugin_specs = tuple(plugin_specs)

    def setup(self, worker) -> None:
        from diffbench.timing import tune_cpu_allocator

        if self.threads:
            torch.set_num_threads(self.threads)
        plugins.load_plugins(self.plugin_specs)
        tune_cpu_allocator()


def train_task(first: Cell, suite: Suite, device: str, cache_dir: Path | None, checkpoint: Path | None):
    """Prepare one group (load or train its model); returns it with the lines it would have logged."""
    messages: list[str] = []
    prepared = runner.prepare(first, suite, torch.device(device), cache_dir, checkpoint, False, messages.append)
    return prepared, messages


def cell_task(cell: Cell, suite: Suite, trained, cache_dir: Path | None, command: str) -> runner.CellResult:
    prepared, _ = trained
    if cell.device != "cuda":
        return runner.run_cell(cell, suite, prepared, cache_dir, command)
    from distributed import Lock

    with Lock(f"diffbench-cuda-{socket.gethostname()}"):
        return runner.run_cell(cell, suite, prepared, cache_dir, command)


def figures_task(cells: list[Cell], suite: Suite, trained) -> dict:
    return runner.figures_data(cells, suite, trained[0])


def connect(workers: int | None, scheduler: str | None, threads: int | None, plugin_specs: tuple[str, ...]):
    """A client of an existing scheduler, or of a new local cluster of ``workers`` processes."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler)
        except (OSError, ValueError) as exc:  # unreachable (after dask's connect timeout) or malformed
            raise runner.ExecutorError(
                f"cannot reach the dask scheduler at {scheduler!r} ({exc}); start one with `dask scheduler` "
                "and give the address it prints, or drop --scheduler for a local cluster"
            ) from None
    else:
        workers = workers or max(1, min(4, os.cpu_count() or 1))
        threads = threads or max(1, (os.cpu_count() or 1) // workers)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    client.register_plugin(WorkerSetup(threads, plugin_specs))
    return client


def has_gpu_resources(client) -> bool:
    return any("GPU" in w.get("resources", {}) for w in client.scheduler_info()["workers"].values())


def run_grid(
    todo: list[Cell],
    suite: Suite,
    train_device: torch.device,
    cache_dir: Path | None,
    checkpoint: Path | None,
    command: str,
    record: Callable[[runner.CellResult], None],
    record_figures: Callable[[list[Cell], dict], None],
    finished_cells: Callable[[list[Cell]], list[Cell]],
    log: Callable[[str], None],
    workers: int | None = None,
    scheduler: str | None = None,
    threads: int | None = None,
    plugin_specs: tuple[str, ...] = (),
) -> None:
    """Submit one training task per model and one task per cell; record results as they arrive."""
    from distributed import as_completed

    client = connect(workers, scheduler, threads, plugin_specs)
    try:
        gpu = {"GPU": 1} if has_gpu_resources(client) else None
        log(f"dask: {len(client.scheduler_info()['workers'])} workers at {client.scheduler.address}")
        pending = as_completed()
        kinds: dict = {}
        remaining: dict[int, int] = {}
        for index, group in enumerate(runner.groups(todo)):
            trained = client.submit(train_task, group[0], suite, train_device.type, cache_dir, checkpoint, pure=False)
            kinds[trained.key] = ("train", index, group, trained)
            pending.add(trained)
            remaining[index] = len(group)
            for cell in group:
                resources = gpu if cell.device == "cuda" else None
                future = client.submit(
                    cell_task, cell, suite, trained, cache_dir, command, pure=False, resources=resources
                )
                kinds[future.key] = ("cell", index, group, trained, cell)
                pending.add(future)
        failed_groups: set[int] = set()
        for future in pending:
            kind, index, group, trained, *rest = kinds[future.key]
            error = future.exception() if future.status == "error" else None
            if kind == "train":
                if error is not None:
                    failed_groups.add(index)
                    log(f"{group[0].dataset!r} x {group[0].denoiser!r} failed: {runner.failure(error)}")
                else:
                    for message in future.result()[1]:
                        log(message)
                continue
            if kind == "figures":
                if error is not None:
                    log(f"figure data for {group[0].dataset!r} x {group[0].denoiser!r} failed: {runner.failure(error)}")
                else:
                    record_figures(group, future.result())
                continue
            if error is not None:  # the group's training failed, or the task itself died
                if index not in failed_groups:
                    log(f"{rest[0].estimator!r} at {rest[0].trials} trials failed: {runner.failure(error)}")
                for result in runner.failed_group([rest[0]], suite, error):
                    record(result)
            else:
                record(future.result())
            remaining[index] -= 1
            if remaining[index] == 0 and index not in failed_groups:
                figures = client.submit(figures_task, finished_cells(group), suite, trained, pure=False)
                kinds[figures.key] = ("figures", index, group, trained)
                pending.add(figures)
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()
