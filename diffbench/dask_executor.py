"""Running the runner's tasks on a dask cluster: a local one of worker processes, or an existing scheduler.

Every task becomes a dask future whose ``Result`` arguments are the futures of the tasks it
needs, so a cell starts as soon as its model is trained. Only the client (the ``diffbench run``
process) writes the run folder: outcomes stream back to it as tasks finish. GPU tasks take a
cluster-wide lock per host (and a ``GPU`` resource where workers declare one), so two never
share a GPU.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import torch

from diffbench import plugins
from diffbench.executor import ExecutorError, Outcome, Task, resolve
from diffbench.interrupts import contained

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
        from diffbench.memory import tune_cpu_allocator

        if self.threads:
            torch.set_num_threads(self.threads)
        plugins.load_plugins(self.plugin_specs)
        tune_cpu_allocator()


def on_gpu_alone(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` holding this host's GPU lock."""
    from distributed import Lock

    with Lock(f"diffbench-cuda-{socket.gethostname()}"):
        return fn(*args)


DEFAULT_SHARDS = 4  # bank tasks per model on an existing scheduler, unless --workers says how many


def local_workers() -> int:
    """Worker processes of a local cluster when --workers does not say: one per core, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


class DaskExecutor:
    """Runs tasks on a dask cluster; ``scheduler`` names an existing one, else a local one is started.

    ``shards``: the bank tasks per model in ``--errors bank`` mode (``diffbench.bank_tasks``), one per worker.
    """

    in_process = False

    def __init__(
        self,
        workers: int | None = None,
        scheduler: str | None = None,
        threads: int | None = None,
        plugin_specs: tuple[str, ...] = (),
        log: Callable[[str], None] = print,
    ) -> None:
        self.workers, self.scheduler, self.threads = workers, scheduler, threads
        self.plugin_specs, self.log = tuple(plugin_specs), log
        self.shards = workers or (DEFAULT_SHARDS if scheduler else local_workers())

    def connect(self):
        """A client of the existing scheduler, or of a new local cluster of ``workers`` processes."""
        from distributed import Client, LocalCluster

        if self.scheduler:
            try:
                client = Client(self.scheduler)
            except (OSError, ValueError) as exc:  # unreachable (after dask's connect timeout) or malformed
                raise ExecutorError(
                    f"cannot reach the dask scheduler at {self.scheduler!r} ({exc}); start one with `dask scheduler` "
                    "and give the address it prints, or drop --scheduler for a local cluster"
                ) from None
        else:
            workers = self.workers or local_workers()
            threads = self.threads or max(1, (os.cpu_count() or 1) // workers)
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
            self.threads = threads
        client.register_plugin(WorkerSetup(self.threads, self.plugin_specs))
        return client

    def execute(self, tasks: list[Task]) -> Iterator[Outcome]:
        from distributed import as_completed

        client = self.connect()
        try:
            workers = client.scheduler_info()["workers"]
            gpu = {"GPU": 1} if any("GPU" in w.get("resources", {}) for w in workers.values()) else None
            self.log(f"dask: {len(workers)} workers at {client.scheduler.address}")
            futures: dict[str, Any] = {}
            by_key: dict[str, Task] = {}
            for task in tasks:
                args = resolve(task.args, futures)  # a placeholder becomes the future of its task
                fn, args = (on_gpu_alone, (task.fn, *args)) if task.gpu else (task.fn, args)
                resources = gpu if task.gpu else None  # `contained`: a plugin's sys.exit() fails only its task
                future = client.submit(contained, fn, *args, pure=False, resources=resources)
                futures[task.key], by_key[future.key] = future, task
            for future in as_completed(list(futures.values())):
                task = by_key[future.key]
                if future.status == "error":
                    error = future.exception()
                    failed_deps = [k for k in task.dependencies() if futures[k].status == "error"]
                    yield Outcome(task, error=error, upstream=bool(failed_deps))
                else:
                    yield Outcome(task, future.result())
        finally:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()
