"""Building blocks the built-in networks share: the sinusoidal timestep embedding and the (time, class) condition.

Not a plugin (it registers nothing); imported as ``diffbench_plugins.layers`` by `mlp`, `resmlp`,
`unet` and `dit`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps ``t [N]`` -> ``[N, dim]`` (Transformer / DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ConditionedNet(nn.Module):
    """Base of a network conditioned on timestep and class: ``self.time`` and ``self.label``, made by ``add_condition``.

    ``time`` is an MLP over ``timestep_embedding(t, emb_dim)`` and ``label`` a learned class table,
    both of width ``width``. Their attribute names are part of every checkpoint's state-dict keys
    (``time.0.weight``, ``label.weight``): keep them. A subclass calls ``add_condition`` where its
    ``__init__`` made them before, so initial weights under a seed stay what they were.
    """

    def add_condition(self, emb_dim: int, width: int, num_classes: int) -> None:
        self.emb_dim = emb_dim
        self.time = nn.Sequential(nn.Linear(emb_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.label = nn.Embedding(num_classes, width)

    def time_embedding(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``[N, width]``: the time MLP over the sinusoidal embedding of ``t [N]``, in ``dtype``."""
        return self.time(timestep_embedding(t, self.emb_dim).to(dtype))

    def condition(self, t: torch.Tensor, c: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``[N, width]``: time embedding + class embedding, the condition every block receives."""
        return self.time_embedding(t, dtype) + self.label(c)
