"""The data behind the figures that the results table alone cannot give: model samples, decision regions."""

from __future__ import annotations

import pandas as pd
import torch

from diffbench.cell import Cell
from diffbench.contract import Splits
from diffbench.measurement import fitted
from diffbench.model import ConditionalModel, sample
from diffbench.preparation import Prepared
from diffbench.schedule import NoiseSchedule
from diffbench.suite import Suite

REGION_GRID = 48  # decision regions are drawn on a REGION_GRID x REGION_GRID lattice
SAMPLES_PER_CLASS = 300  # 2-D points per class drawn from the model
IMAGES_PER_CLASS = 8  # images per class drawn from the model
SAMPLE_STEPS = 100  # respaced DDPM steps per drawing (of the schedule's T): a tenth of the calls of all 1000


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


def figures_data(cells: list[Cell], suite: Suite, prepared: Prepared | None) -> dict[str, pd.DataFrame]:
    """The figure tables of one trained model: its samples and (2-D data) the decision regions of ``cells``."""
    if prepared is None or not cells or prepared.pretrained:  # T steps of sampling a big model cost too much
        return {}
    first = cells[0]
    ids = first.group_labels()
    splits = prepared.splits
    schedule = NoiseSchedule(suite.schedule, suite.timesteps)
    device = torch.device(first.device)
    module = prepared.module.to(device).eval()
    name = f"denoiser '{first.denoiser!r}'"
    model = ConditionalModel(module, schedule, splits.num_classes, splits.data_shape, device, name=name)
    out = {"samples": samples_data(model, splits, first.seed, ids)}
    plain = [c for c in cells if c.dtype == "float32" and not c.compile and c.device == first.device]
    if splits.data_shape == (2,) and plain:
        out["regions"] = regions_data(plain, model, prepared, first.seed, ids)
    return out
