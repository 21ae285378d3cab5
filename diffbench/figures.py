"""The data behind the figures that the results table alone cannot give: model samples, decision regions,
the single-timestep accuracies (``timestep_accuracy``).

One task per trained model, after its cells: it receives the model's plan, its cells' plans and the prepared model.
"""

from __future__ import annotations

import pandas as pd
import torch

from diffbench.cell import Cell
from diffbench.contract import Splits
from diffbench.measurement import fitted
from diffbench.model import ConditionalModel, sample
from diffbench.plan import CellPlan, ModelPlan
from diffbench.preparation import Prepared, conditional_model, model_name
from diffbench.timestep_accuracy import figure_scorer, timesteps_data

REGION_GRID = 48  # decision regions are drawn on a REGION_GRID x REGION_GRID lattice
SAMPLES_PER_CLASS = 300  # 2-D points per class drawn from the model
IMAGES_PER_CLASS = 8  # images per class drawn from the model
SAMPLE_STEPS = 100  # respaced DDPM steps per drawing (of the schedule's T): a tenth of the calls of all 1000
NOTES = "notes"  # not figure data: a frame of lines (column ``line``) the runner says, a skip kept in skipped.json


def regions_data(cells: list[Cell], model: ConditionalModel, prepared: Prepared, seed: int, ids: dict) -> pd.DataFrame:
    """Each estimator's predicted class on a lattice over the 2-D test data, at its largest trials.

    Each estimator is fitted afresh on the held-out data, with the generator its cell used: the
    regions show the same fitted estimator the cell measured, whichever executor ran it.
    """
    splits = prepared.splits
    lo = splits.test_x.min(0).values - 0.3
    hi = splits.test_x.max(0).values + 0.3
    axes = [torch.linspace(lo[i].item(), hi[i].item(), REGION_GRID) for i in range(2)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="xy"), dim=-1).reshape(-1, 2)
    best: dict[str, Cell] = {}
    for cell in cells:
        label = repr(cell.estimator)
        if label not in best or cell.trials > best[label].trials:
            best[label] = cell
    heldout_x = prepared.heldout_x.to(model.device, model.dtype)
    heldout_y = prepared.heldout_y.to(model.device)
    frames = []
    for label, cell in best.items():
        fit_generator = torch.Generator(device=model.device).manual_seed(cell.seed)
        estimator = fitted(cell.estimator, model, heldout_x, heldout_y, fit_generator)
        generator = torch.Generator(device=model.device).manual_seed(seed)
        err = estimator.errors(model, grid.to(model.device, model.dtype), cell.trials, generator)
        prob = torch.softmax(-err.float(), dim=1).cpu()
        frames.append(
            pd.DataFrame(
                {
                    **ids,
                    "estimator_label": label,
                    "trials": cell.trials,
                    "x0": grid[:, 0].numpy(),
                    "x1": grid[:, 1].numpy(),
                    "pred": prob.argmax(1).numpy(),
                    "confidence": prob.max(1).values.numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def samples_data(model: ConditionalModel, splits: Splits, seed: int, ids: dict) -> pd.DataFrame:
    """The model's own samples per class beside test data, flattened to columns x0, x1, ..."""
    per_class = SAMPLES_PER_CLASS if splits.data_shape == (2,) else IMAGES_PER_CLASS
    generator = torch.Generator(device=model.device).manual_seed(seed)
    labels = torch.arange(model.num_classes).repeat_interleave(per_class)
    drawn = sample(model, labels, generator, steps=SAMPLE_STEPS).float().cpu()
    if splits.data_shape == (2,):
        test_x, test_y = splits.test_x, splits.test_y
    else:  # the first few test images of each class
        keep = torch.cat([torch.nonzero(splits.test_y == c)[:per_class, 0] for c in range(model.num_classes)])
        test_x, test_y = splits.test_x[keep], splits.test_y[keep]
    shape = "x".join(map(str, splits.data_shape))
    frames = []
    for source, x, y in (("model", drawn, labels), ("test", test_x, test_y)):
        flat = x.reshape(len(x), -1).numpy()
        columns = {f"x{i}": flat[:, i] for i in range(flat.shape[1])}
        frames.append(pd.DataFrame({**ids, "shape": shape, "source": source, "label": y.numpy(), **columns}))
    return pd.concat(frames, ignore_index=True)


def figures_data(model: ModelPlan, cells: list[CellPlan], prepared: Prepared | None) -> dict[str, pd.DataFrame]:
    """The figure tables of one trained model: its samples, (2-D data) the decision regions of ``cells``, and
    the accuracy of the single-timestep classifier across t (``timesteps``, through the model's error bank
    where its cells ran in bank mode); under ``NOTES`` the lines saying what was skipped, if anything.

    The model runs as its cells run it (``conditional_model``), on the first cell's device in float32.
    """
    if prepared is None or not cells or prepared.pretrained:  # T steps of sampling a big model cost too much
        return {}
    ids = model.group_labels()
    splits = prepared.splits
    device = cells[0].cell.device
    running = conditional_model(prepared, torch.device(device), model_name(model.denoiser))
    out = {"samples": samples_data(running, splits, model.seed, ids)}
    plain = [p.cell for p in cells if p.cell.dtype == "float32" and not p.cell.compile and p.cell.device == device]
    if splits.data_shape == (2,) and plain:
        out["regions"] = regions_data(plain, running, prepared, model.seed, ids)
    timesteps, skipped = timesteps_data(running, splits, model.seed, ids, figure_scorer(cells, prepared, running))
    if timesteps is not None:
        out["timesteps"] = timesteps
    if skipped:
        out[NOTES] = pd.DataFrame({"line": [skipped]})
    return out
