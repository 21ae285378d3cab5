"""What every plot shares: a backend that needs no display, the panels, the colours."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # PNGs only: no display needed, on a server or in a test

PANEL = ["dataset_label", "denoiser_label"]  # one panel per dataset x denoiser
PALETTE = "colorblind"  # seaborn's colour-blind-safe palette (after Okabe and Ito), for every categorical colour
SPARSE_BIN = 10  # reliability bins with fewer samples are drawn hollow and grey, off the line: their accuracy is noise
