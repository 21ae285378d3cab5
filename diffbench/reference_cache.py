"""A reference's answers, cached by content: fitted once, read back by every later run on the same data.

A reference row's cost is its ``fit`` (the small CNN trains for epochs). What the row needs from the fitted
classifier is only its probabilities on the test subset and the held-out part, and those depend on nothing
but the reference (name and params), the exact data it fits and answers and the seed (``Reference.fit``
must depend only on its arguments). So they are kept in the cache folder under a key of all of these,
``<cache>/references/<reference>-<dataset>-<key>.npz`` (numpy arrays and a JSON header, no pickle), with
the seconds the fit and the median timed predict pass took in the run that fitted it. A later run reads
them back instead of fitting: its row says ``cache_hit``, ``train_s`` = 0 (as a cached model's) and its
``samples_per_s`` is the fitting run's, which ``timing_note`` says. ``--no-cache`` fits afresh; a file
that cannot be read is fitted again and replaced.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffbench.atomic import replace_atomically

FORMAT = 1  # bump when what a key's answers would be changes
FOLDER = "references"
TIMING_NOTE = "reference answers from the cache: samples_per_s is the run that fitted it (--no-cache refits)"


@dataclass
class FittedAnswers:
    """A fitted reference's probabilities ``[N, K]`` on the test subset and held-out part, and its seconds."""

    test: torch.Tensor
    heldout: torch.Tensor | None  # None where there was no held-out part to calibrate on
    fit_s: float
    predict_s: float  # median seconds of a timed predict pass over the test subset


def answers_key(reference, seed: int, tensors: list[torch.Tensor]) -> str:
    """A hash of the reference (name, params), the seed and the exact bits, shapes and dtypes of ``tensors``."""
    ident = {"format": FORMAT, "reference": [reference.name, reference.params], "seed": seed}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode())
    for tensor in tensors:
        array = tensor.detach().cpu().contiguous().numpy()
        h.update(f"{array.dtype}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()[:20]


def cache_path(cache_dir: Path, reference, dataset, key: str) -> Path:
    return Path(cache_dir) / FOLDER / f"{reference.name}-{dataset.name}-{key}.npz"


def load(path: Path) -> FittedAnswers | None:
    """The answers kept at ``path``; None where there are none. Raises ValueError where the file is damaged."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            header = json.loads(str(f["header"]))
            test = torch.from_numpy(np.array(f["test"], dtype=np.float32))
            heldout = torch.from_numpy(np.array(f["heldout"], dtype=np.float32)) if header["heldout"] else None
        fit_s, predict_s = float(header["fit_s"]), float(header["predict_s"])
    except Exception as exc:  # a truncated zip, a missing array, a bad header: all the same to the caller
        raise ValueError(f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}") from None
    if header.get("format") != FORMAT or not torch.isfinite(test).all():
        raise ValueError(f"format {header.get('format')!r} or non-finite answers")
    return FittedAnswers(test, heldout, fit_s, predict_s)


def save(path: Path, answers: FittedAnswers) -> None:
    """Keep ``answers`` at ``path``, atomically (a killed run leaves the old file or none)."""
    header = {"format": FORMAT, "fit_s": answers.fit_s, "predict_s": answers.predict_s}
    header["heldout"] = answers.heldout is not None
    heldout = answers.heldout if answers.heldout is not None else torch.zeros(0)
    arrays = {"header": np.array(json.dumps(header)), "test": answers.test.numpy(), "heldout": heldout.numpy()}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    replace_atomically(path, write)
