"""Bank tasks: a model's errors computed once, sharded by samples, before its cells read them (``--errors bank``).

Where tasks run in parallel (``Executor.shards`` > 0: a dask cluster) two cells of one model would each
compute, in its own process, the errors they share. So per model with bank cells the runner adds, after
its training: one ``bank-fit`` task that runs every such cell's ``fit`` on the held-out data, then
``shards`` ``bank`` tasks, each running every such cell's quality passes (the seeded test pass, the
calibration pass, the repeats) on its slice of the samples, and the cells depend on all of them. Every
error goes to the model's bank and its shards to the cache, where the cells' own passes read it back
(``bank.open_bank`` reads the shards written since). The draws of the design are a function of each
sample alone, so a slice replays exactly what the whole pass draws there; a draw a slice cannot replay
(a request for part of a batch, from the cell's generator) is only a miss the cell computes itself.

These tasks never fail their cells: a cell whose pass fails here is left to fail (and say why) in its
own task. Each returns the rows it computed per cell (``FilledRows``), which the run's ``errors.json``
adds to the cells' own. The local executor runs no bank task: its cells, one after another in one
process, fill the bank as they go.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from diffbench.draws import Design
from diffbench.measurement import CellResult, bank_scorer, cell_model, fitted, measure_cell
from diffbench.model import ConditionalModel
from diffbench.plan import CellPlan
from diffbench.preparation import Trained
from diffbench.quality import GAP_REPEATS, GAP_SAMPLES, classifier, replaying


@dataclass
class FilledRows:
    """What a bank task computed: denoiser rows per cell id, how long it took, the batch sizes it used."""

    task: str
    computed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    batch_sizes: dict[tuple, int] = field(default_factory=dict)  # by numerics (device, dtype, compile)


def fill_fits(key: str, plans: list[CellPlan], trained: Trained) -> FilledRows:
    """Run each bank cell's ``fit`` on the held-out data (the ``fit`` stream), so no shard fits twice."""
    return _fill(key, plans, trained, lambda run: run.fit(), {})


def fill_shard(
    key: str, plans: list[CellPlan], trained: Trained, shard: int, shards: int, fits: FilledRows
) -> FilledRows:
    """Run each bank cell's quality passes on slice ``shard`` of ``shards`` of its samples, after the
    ``bank-fit`` task (``fits``: its batch sizes are reused, not tuned again)."""
    return _fill(key, plans, trained, lambda run: run.passes(shard, shards), fits.batch_sizes)


def after_bank(plan: CellPlan, trained: Trained, _filled: list[FilledRows]) -> CellResult:
    """``measure_cell`` once the model's bank tasks are done (their results only order the tasks)."""
    return measure_cell(plan, trained)


def _fill(key: str, plans: list[CellPlan], trained: Trained, step, batch_sizes: dict[tuple, int]) -> FilledRows:
    out, started = FilledRows(key, batch_sizes=dict(batch_sizes)), time.perf_counter()
    if trained.prepared is None:  # a skipped pair: its cells say so
        return out
    models: dict[tuple, ConditionalModel] = {}  # one model per numerics, shared by the task's cells
    for plan in plans:
        run = CellFill(plan, trained, models, out.batch_sizes)
        try:
            step(run)
        except Exception:  # noqa: S112 (the cell's own task runs this pass again and reports the failure)
            pass
        finally:
            out.computed[plan.id] = run.computed()
            run.close()
    out.seconds = time.perf_counter() - started
    return out


class CellFill:
    """One cell's model, bank and fitted estimator, as its own task makes them (``measurement.answers``).

    The model is made once per numerics and task (``models``), its batch size tuned at most once per run's
    bank tasks (``batch_sizes``): the batch size only splits the rows, the errors are the same.
    """

    def __init__(self, plan: CellPlan, trained: Trained, models: dict, batch_sizes: dict) -> None:
        self.plan, self.prepared = plan, trained.prepared
        self.models, self.batch_sizes = models, batch_sizes
        self.model = self.scorer = None

    def open(self) -> None:
        cell = self.plan.cell
        numerics = (cell.device, cell.dtype, cell.compile)
        self.model = self.models.get(numerics)
        if self.model is None:
            plan = self.plan
            if numerics in self.batch_sizes:
                plan = dataclasses.replace(plan, batch_size=self.batch_sizes[numerics])
            self.model, _ = cell_model(plan, self.prepared)  # Unsupported: the cell skips itself
            self.models[numerics], self.batch_sizes[numerics] = self.model, self.model.max_batch
        self.model.reset_nfe()
        self.scorer = bank_scorer(self.plan, self.prepared, self.model)
        self.design = Design(cell.seed, self.scorer.t_grid)
        self.model.bank = self.scorer
        splits, model = self.prepared.splits, self.model
        self.x, self.y = splits.test_x.to(model.device, model.dtype), splits.test_y.to(model.device)
        self.heldout_x = self.prepared.heldout_x.to(model.device, model.dtype)
        self.heldout_y = self.prepared.heldout_y.to(model.device)
        self.generator = torch.Generator(device=model.device).manual_seed(cell.seed)

    def fit(self):
        """The cell's fitted copy of its estimator (its fit errors read from, or added to, the bank)."""
        if self.model is None:
            self.open()
        with replaying(self.model, self.heldout_x, self.design, "fit"):
            return fitted(self.plan.cell.estimator, self.model, self.heldout_x, self.heldout_y, self.generator)

    def passes(self, shard: int, shards: int) -> None:
        """``quality``'s passes (test, calibration, repeats) over this shard's slice of their samples (the test
        pass alone where the suite's ``quality`` is "accuracy")."""
        estimator = self.fit()
        cell, model = self.plan.cell, self.model
        classify, _ = classifier(cell, estimator, model, self.design)
        test = _slice(self.x, shard, shards)
        if test.shape[0]:
            classify(test, self.generator)
        if self.plan.quality == "accuracy":
            return
        heldout = _slice(self.heldout_x, shard, shards)
        if self.heldout_x.shape[0] >= 2 and heldout.shape[0]:
            classify(heldout, self.generator, "calibration")
        repeated = _slice(self.x[: min(self.x.shape[0], GAP_SAMPLES)], shard, shards)
        for r in range(GAP_REPEATS if repeated.shape[0] else 0):
            independent = torch.Generator(device=model.device).manual_seed(cell.seed + 1 + r)
            classify(repeated, independent, f"repeat-{r + 1}")

    def computed(self) -> int:
        return self.scorer.computed if self.scorer is not None else 0

    def close(self) -> None:
        if self.model is not None:
            self.model.bank = None
        if self.scorer is not None:
            self.scorer.bank.flush()


def _slice(x: torch.Tensor, shard: int, shards: int) -> torch.Tensor:
    """Contiguous slice ``shard`` of ``shards`` of the rows of ``x`` (empty where there are fewer rows)."""
    n = x.shape[0]
    return x[n * shard // shards : n * (shard + 1) // shards]
