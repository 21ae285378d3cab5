"""Peak memory of building an error bank, beyond the model and the data (docs/error-bank.md, "Memory").

    python tests/benchmarks/bank_memory.py digits    # 360 test digits (8 x 8), all T = 1000, E = 2
    python tests/benchmarks/bank_memory.py folder    # 1,000 PNGs (32 x 32 x 3) of an image folder, t_grid = 100
    python tests/benchmarks/bank_memory.py digits live   # the same errors computed without a bank: the
                                                       # working set of the calls alone, to subtract

Builds the bank of the single-timestep classifier (``timestep_accuracy.correct_counts``) at every t of the
grid, E = 2 noises per (sample, t), through ``open_bank`` with a cache folder, in batches of
``batching.samples_per_call`` samples, then ``flush``. The network is a stand-in of the model's shapes that
costs next to nothing, since what the bank holds does not depend on the network. Prints the resident set
before (data and model loaded) and its peak after (``VmHWM``, reset first), and the shards written.
Not collected by pytest: a measurement, run by hand.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffbench import batching
from diffbench.bank import BankScorer, open_bank
from diffbench.memory import peak_memory_mb, reset_peak_memory
from diffbench.model import ConditionalModel
from diffbench.montecarlo import li_timesteps
from diffbench.schedule import NoiseSchedule
from diffbench.suite import instantiate
from diffbench.timestep_accuracy import correct_counts

CPU = torch.device("cpu")
DRAWS = 2


class StandIn(torch.nn.Module):
    """eps_hat = x_t / 2 + a per-class constant: the model's shapes, next to no cost."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.linspace(-1, 1, num_classes))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x * 0.5 + self.bias[y].view(-1, *([1] * (x.dim() - 1)))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def folder_data(root: Path, n: int = 2000, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random 32 x 32 RGB PNGs in class folders, read back through the image-folder dataset: its test
    split (half of them)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    (dataset,) = instantiate("dataset", f"image-folder[root={root},test_fraction=0.5]")
    splits = dataset.load(0)
    return splits.test_x, splits.test_y


def main(which: str, errors: str = "bank") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if which == "digits":
            (dataset,) = instantiate("dataset", "digits")
            splits = dataset.load(0)
            x, y, grid = splits.test_x, splits.test_y, 1000
        else:
            x, y = folder_data(Path(tmp) / "images")
            grid = 100
        classes = int(y.max()) + 1
        shape = tuple(x.shape[1:])
        model = ConditionalModel(StandIn(classes), NoiseSchedule("linear", 1000), classes, shape, CPU)
        timesteps = li_timesteps(1000, grid)
        scorer = BankScorer(open_bank(f"memory-{which}", classes, Path(tmp) / "cache"), "memory")
        per_call = batching.samples_per_call(len(timesteps) * DRAWS, classes, shape)
        before = rss_mb()
        reset_peak_memory(CPU)
        started = time.perf_counter()
        model.bank = scorer if errors == "bank" else None
        with torch.no_grad():
            for start in range(0, x.shape[0], per_call):
                part = slice(start, start + per_call)
                correct_counts(model, x[part], y[part], timesteps, DRAWS, seed=0)
        scorer.bank.flush()
        seconds = time.perf_counter() - started
        peak = peak_memory_mb(CPU)
        shards = list((Path(tmp) / "cache" / "banks").rglob("*.npz"))
        size = sum(p.stat().st_size for p in shards) / 2**20
        draws = x.shape[0] * len(timesteps) * DRAWS
        print(
            f"{which} ({errors}): {x.shape[0]} samples {list(shape)}, {len(timesteps)} timesteps x {DRAWS} draws = "
            f"{draws:,} draws; {per_call} samples a call; RSS before {before:.0f} MB, peak {peak:.0f} MB "
            f"(+{peak - before:.0f} MB); {len(shards)} shard(s), {size:.0f} MiB on disk; {seconds:.0f} s"
        )


if __name__ == "__main__":
    main(*(sys.argv[1:] or ["digits"]))
