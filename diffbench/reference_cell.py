"""Reference rows: an ordinary classifier trained on the run's training split and scored on its test subset.

A *reference cell* is one dataset x reference classifier x seed: it has no denoiser, no estimator,
no trials and no NFE, so it is its own kind of cell in the plan, one per dataset of the grid and
reference of the suite (not per denoiser). Its data is exactly a model's (``preparation.prepare_data``):
the same fixed test subset, and the training split less the held-out part, which the reference trains
on; the held-out part fits the softmax temperature its calibration columns use, as it does for the
estimators. Its row carries the table's ``kind`` = ``reference``; the core computes its accuracy,
Wilson CI, calibration and timing, and the reference only fits and predicts. Its answers (probabilities on
the test subset and the held-out part) are cached by content (``reference_cache``): a later run on the same
data reads them instead of fitting. ``measure_reference``
never raises: a failure is a failed row naming the reference and the fix.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffbench import columns, metrics, reference_cache
from diffbench.cell import key_id
from diffbench.contract import Dataset, PluginOutputError, Reference, check_probabilities
from diffbench.measurement import CellResult, failure
from diffbench.preparation import prepare_data
from diffbench.provenance import device_name, provenance
from diffbench.reference_cache import FittedAnswers

KIND = "reference"
PREDICT_REPEATS = 3  # timed predict passes over the test subset; samples_per_s is their median


@dataclass(frozen=True)
class ReferenceCell:
    """One reference row of the grid: a reference classifier on one dataset, with the run's seed."""

    dataset: Dataset
    reference: Reference
    seed: int

    def labels(self) -> dict[str, Any]:
        """The cell ``KEY`` columns of its row: no denoiser, trials 0, on the CPU in float32."""
        return {
            "dataset_label": repr(self.dataset),
            "denoiser_label": "",
            "estimator_label": repr(self.reference),
            "trials": 0,
            "device": "cpu",
            "seed": self.seed,
            "dtype": "float32",
            "compile": False,
        }

    @property
    def id(self) -> str:
        return key_id(self.labels())

    def pair(self) -> str:
        """How a log line names it."""
        return f"{self.dataset!r} x reference {self.reference!r}"


@dataclass(frozen=True)
class ReferencePlan:
    """A reference cell and what its task needs (``prepare_data`` reads ``dataset`` and ``seed``)."""

    cell: ReferenceCell
    run: dict[str, str] = field(default_factory=dict)  # provenance.run_info() of the process that started the run
    cache_dir: Path | None = None  # where fitted references' answers are cached (reference_cache); None: always fit

    @property
    def id(self) -> str:
        return self.cell.id

    @property
    def dataset(self) -> Dataset:
        return self.cell.dataset

    @property
    def seed(self) -> int:
        return self.cell.seed


def reference_cells(references: list[Reference], datasets: list[Dataset], seed: int) -> list[ReferenceCell]:
    """One cell per dataset (first appearance, by label) and reference, datasets outermost."""
    unique = {repr(d): d for d in datasets}
    return [ReferenceCell(dataset, reference, seed) for dataset in unique.values() for reference in references]


def identity(cell: ReferenceCell) -> dict[str, Any]:
    """The columns that say which reference row this is."""
    return {
        "cell_id": cell.id,
        "kind": KIND,
        "dataset": cell.dataset.name,
        "denoiser": "",
        "estimator": cell.reference.name,
        **cell.labels(),
        "variance_baseline": False,
        **columns.param_columns("dataset", cell.dataset.params),
        **columns.param_columns("reference", cell.reference.params),
    }


def scored(reference: Reference, x: torch.Tensor, classes: int) -> torch.Tensor:
    """The reference's checked probabilities for ``x``, as float32."""
    got = calling(reference, "predict_proba", x)
    return check_probabilities(got, x.shape[0], classes, reference.name).float()


def calling(reference: Reference, method: str, *args: Any) -> Any:
    """``reference.<method>(*args)``; whatever it raises becomes a PluginOutputError naming it and the fix."""
    try:
        return getattr(reference, method)(*args)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200]
        raise PluginOutputError(
            f"reference '{reference!r}' {method}() raised {type(exc).__name__}: {detail}; "
            "mend the plugin (diffbench.testing.check_reference puts it through what the core asks)"
        ) from None


def fitted_answers(cell: ReferenceCell, data) -> FittedAnswers:
    """Fit a fresh copy of the reference on the training split; its probabilities on the test and held-out data."""
    splits = data.splits
    reference, classes = copy.deepcopy(cell.reference), splits.num_classes
    started = time.perf_counter()
    calling(reference, "fit", splits.train_x, splits.train_y, classes, cell.seed)
    fit_s = time.perf_counter() - started
    seconds, probabilities = [], None
    for _ in range(PREDICT_REPEATS):
        started = time.perf_counter()
        probabilities = scored(reference, splits.test_x, classes)
        seconds.append(time.perf_counter() - started)
    heldout = scored(reference, data.heldout_x, classes) if data.heldout_y.shape[0] >= 2 else None
    return FittedAnswers(probabilities, heldout, fit_s, statistics.median(seconds))


def cached_answers(cell: ReferenceCell, data, cache_dir: Path | None) -> tuple[FittedAnswers, bool, list[str]]:
    """The reference's answers from the cache where it holds them for this data (``reference_cache``), else
    fitted now (and kept there); whether the cache had them, and a line where its file was unreadable."""
    if cache_dir is None:
        return fitted_answers(cell, data), False, []
    splits = data.splits
    exact = [splits.train_x, splits.train_y, splits.test_x, splits.test_y, data.heldout_x, data.heldout_y]
    path = reference_cache.cache_path(
        cache_dir, cell.reference, cell.dataset, reference_cache.answers_key(cell.reference, cell.seed, exact)
    )
    messages: list[str] = []
    try:
        got = reference_cache.load(path)
    except ValueError as exc:
        messages.append(f"{cell.pair()}: cached answers '{path}' are unreadable ({exc}); fitting it again")
        got = None
    shape = (splits.test_y.shape[0], splits.num_classes)
    if got is not None and tuple(got.test.shape) == shape and (got.heldout is None) == (data.heldout_y.shape[0] < 2):
        return got, True, messages
    got = fitted_answers(cell, data)
    reference_cache.save(path, got)
    return got, False, messages


def scored_answers(got: FittedAnswers, data, cache_hit: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """A reference row's quality and timing columns and its per-sample predictions, from its answers."""
    y, probabilities = data.splits.test_y, got.test
    errors = -probabilities.clamp_min(1e-12).log()  # metrics' convention: lower error, more likely
    temperature = 1.0
    if got.heldout is not None:
        temperature = metrics.fit_temperature(-got.heldout.clamp_min(1e-12).log(), data.heldout_y)
    n, correct = y.shape[0], int((probabilities.argmax(1) == y).sum())
    low, high = metrics.wilson_interval(correct, n)
    measured = {
        "scenario": "offline",
        "n_test": n,
        "accuracy": correct / n,
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "nfe_per_sample": float("nan"),
        "temperature": temperature,
        **metrics.calibration(errors, y, temperature),
        "cache_hit": cache_hit,
        "train_s": 0.0 if cache_hit else got.fit_s,
        "samples_per_s": n / max(got.predict_s, 1e-9),
        "repeats": PREDICT_REPEATS,
        **({"timing_note": reference_cache.TIMING_NOTE} if cache_hit else {}),
    }
    predictions = {"sample": torch.arange(n).numpy(), "label": y.numpy(), "pred": probabilities.argmax(1).numpy()}
    return measured, predictions


def measure_reference(plan: ReferencePlan) -> CellResult:
    """The runner's task for one reference row; never raises (a failure is a failed row and one line)."""
    cell = plan.cell
    started, start = time.time(), time.perf_counter()
    ident = identity(cell)
    about: dict[str, Any] = {"device_name": device_name("cpu")}
    predictions = None
    try:
        data = prepare_data(plan)
        about.update(data.columns)
        shape = data.splits.data_shape
        if not cell.reference.supports(shape):
            line = (
                f"skipping {cell.pair()}: {cell.reference.name} takes {cell.reference.accepts}, "
                f"but {cell.dataset.name} has samples of shape {list(shape)}"
            )
            return CellResult(cell.id, [], [], [line], skipped=True)
        if data.splits.train_x.shape[0] == 0:
            line = f"skipping {cell.pair()}: {cell.dataset!r} has no training split to train a reference on"
            return CellResult(cell.id, [], [], [line], skipped=True)
        got, cache_hit, messages = cached_answers(cell, data, plan.cache_dir)
        measured, predictions = scored_answers(got, data, cache_hit)
        predictions["test_digest"] = data.columns["test_digest"]
        parts: tuple[dict[str, Any], ...] = (measured, {"status": "ok", "error": ""})
    except Exception as exc:
        error = failure(exc)
        parts, messages, predictions = ({"status": "failed", "error": error},), [f"{cell.pair()} failed: {error}"], None
    when = {"wall_s": time.perf_counter() - start, "started_at": started, "finished_at": time.time()}
    row = columns.row(ident, about, *parts, provenance(plan.run), when)
    return CellResult(cell.id, [row], [], messages, predictions=predictions)


def failed_reference(plan: ReferencePlan, exc: BaseException) -> CellResult:
    """A reference row whose task died (the executor lost it), as one failed row."""
    now = time.time()
    outcome = {"status": "failed", "error": failure(exc)}
    row = columns.row(identity(plan.cell), outcome, provenance(plan.run), {"started_at": now, "finished_at": now})
    return CellResult(plan.cell.id, [row], [], [f"{plan.cell.pair()} failed: {failure(exc)}"])


def reference_plans(suite, grid: list, run: dict[str, str], cache_dir: Path | None = None) -> list[ReferencePlan]:
    """The reference rows of a run: every reference of ``suite.references`` on every dataset of ``grid``, their
    answers cached in ``cache_dir`` (None: fitted every run)."""
    from diffbench.suite import instantiate  # the suite reads plugins: imported where the run needs it

    references = [r for selector in suite.references for r in instantiate("reference", selector)]
    cells = reference_cells(references, [c.dataset for c in grid], suite.seed)
    return [ReferencePlan(cell, dict(run), cache_dir) for cell in cells]
