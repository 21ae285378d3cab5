"""Plans: what each task needs, resolved once from the suite (command-line overrides folded in) at grid time.

The runner turns a ``Suite`` and a grid into one ``ModelPlan`` per trained model and one
``CellPlan`` per cell; tasks receive plans and nothing below the runner sees the suite. Plans
are frozen and pickle, so the dask executor ships them to its workers as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffbench.cell import GROUP_KEY, Cell, key_id
from diffbench.contract import Plugin
from diffbench.resume_identity import Recorded
from diffbench.suite import Suite
from diffbench.training import TrainSettings


@dataclass(frozen=True)
class ModelPlan:
    """One trained model: its data and denoiser, how it is trained (or loaded) and under which schedule."""

    dataset: Plugin
    denoiser: Plugin
    seed: int
    schedule: str  # the suite's noise schedule and its length (a pretrained model brings its own)
    timesteps: int
    train: TrainSettings
    device: str  # where it trains: cuda when any cell of the grid uses it, else cpu
    cache_dir: Path | None = None
    checkpoint: Path | None = None
    progress: bool = False  # draw a training progress bar (only where tasks run in this process)
    recorded: Recorded | None = None  # on --resume, what its finished cells recorded of its data and module

    @property
    def group_id(self) -> str:
        """The id its cells share (``Cell.group_id``)."""
        labels = {"dataset_label": repr(self.dataset), "denoiser_label": repr(self.denoiser), "seed": self.seed}
        return key_id(labels, GROUP_KEY)

    def pair(self) -> str:
        """How a log line names the model."""
        return f"{self.dataset!r} x {self.denoiser!r}"

    def group_labels(self) -> dict[str, str]:
        """What the figure tables of this model are keyed by."""
        return {
            "dataset": self.dataset.name,
            "denoiser": self.denoiser.name,
            "dataset_label": repr(self.dataset),
            "denoiser_label": repr(self.denoiser),
        }


@dataclass(frozen=True)
class CellPlan:
    """One cell and everything its measurement needs besides the prepared model."""

    cell: Cell
    model: ModelPlan
    batch_size: int | None  # rows per denoiser call; None: tuned per device by a short sweep ("auto")
    scenarios: tuple[str, ...]
    repeats: int  # the fewest timed repeats per scenario
    max_time_s: float  # seconds of timed repeats per scenario before the stopping rule gives up
    cache_dir: Path | None = None  # where tuned batch sizes are cached
    run: dict[str, str] = field(default_factory=dict)  # provenance.run_info() of the process that started the run
    errors: str = "bank"  # where the quality passes' errors come from: "bank" (diffbench.bank) or "live"
    t_grid: int = 0  # the bank's timestep grid (diffbench.draws.Design; 0: all T)
    quality: str = "full"  # which quality passes run: "full", or "accuracy" (the seeded test pass only)

    @property
    def id(self) -> str:
        return self.cell.id


def train_device(cells: list[Cell]) -> str:
    """Models are trained once, on CUDA when any cell uses it, and loaded onto every device."""
    return "cuda" if any(c.device == "cuda" for c in cells) else "cpu"


def plan_models(
    suite: Suite, grid: list[Cell], cache_dir: Path | None, checkpoint: Path | None, progress: bool
) -> dict[str, ModelPlan]:
    """One plan per trained model of ``grid``, by group id, in grid order."""
    device = train_device(grid)
    plans: dict[str, ModelPlan] = {}
    for cell in grid:
        if cell.group_id not in plans:
            plans[cell.group_id] = ModelPlan(
                cell.dataset,
                cell.denoiser,
                cell.seed,
                suite.schedule,
                suite.timesteps,
                suite.train_settings(cell.denoiser, cell.dataset),
                device,
                cache_dir,
                checkpoint,
                progress,
            )
    return plans


def plan_cells(
    suite: Suite,
    grid: list[Cell],
    cache_dir: Path | None,
    checkpoint: Path | None,
    progress: bool,
    run: dict[str, Any],
) -> list[CellPlan]:
    """One plan per cell of ``grid`` (in its order), each pointing at its model's plan."""
    models = plan_models(suite, grid, cache_dir, checkpoint, progress)
    batch_size = None if suite.batch_size == "auto" else int(suite.batch_size)
    return [
        CellPlan(
            cell,
            models[cell.group_id],
            batch_size,
            tuple(suite.scenarios),
            suite.repeats,
            suite.max_time_s,
            cache_dir,
            dict(run),
            suite.errors,
            suite.t_grid,
            suite.quality,
        )
        for cell in grid
    ]


def by_model(plans: list[CellPlan]) -> list[tuple[ModelPlan, list[CellPlan]]]:
    """Cell plans grouped by the model they classify with, in order of first appearance."""
    found: dict[str, tuple[ModelPlan, list[CellPlan]]] = {}
    for plan in plans:
        found.setdefault(plan.model.group_id, (plan.model, []))[1].append(plan)
    return list(found.values())
