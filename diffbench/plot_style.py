"""What every plot shares: a backend that needs no display, the panels, the colours."""

from __future__ import annotations

import matplotlib
import pandas as pd

matplotlib.use("Agg")  # PNGs only: no display needed, on a server or in a test

PANEL = ["dataset_label", "denoiser_label"]  # one panel per dataset x denoiser
PALETTE = "colorblind"  # seaborn's colour-blind-safe palette (after Okabe and Ito), for every categorical colour
SPARSE_BIN = 10  # reliability bins with fewer samples are drawn hollow and grey, off the line: their accuracy is noise


def literal_text(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    """``frame`` with every ``$`` in its text escaped, so matplotlib draws labels, class names and paths as written.

    matplotlib reads text between two ``$`` as math and raises on what its parser cannot read
    (``$\\foo{$``); an escaped ``\\$`` is drawn as ``$``. Every plot draws user text from the
    tables alone, so escaping them where they are read covers every label, legend and title.
    """
    if frame is None:
        return None
    text = [c for c in frame.columns if is_text(frame[c]) and frame[c].map(has_dollar).any()]
    return frame.assign(**{c: frame[c].map(literal) for c in text}) if text else frame


def is_text(column: pd.Series) -> bool:
    return column.dtype == object or pd.api.types.is_string_dtype(column)


def has_dollar(value: object) -> bool:
    return isinstance(value, str) and "$" in value


def literal(value: object) -> object:
    """A string matplotlib draws as written (``$`` escaped); anything else as it is."""
    return value.replace("$", r"\$") if isinstance(value, str) else value
