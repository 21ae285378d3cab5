"""Converting a denoiser's raw output (epsilon, v or x0, perhaps with a learned variance) to epsilon.

With x_t = sqrt(abar) x0 + sqrt(1 - abar) eps and v = sqrt(abar) eps - sqrt(1 - abar) x0:
eps = sqrt(abar) v + sqrt(1 - abar) x_t, and eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar).
"""

from __future__ import annotations

import torch

#: What a denoiser's output may be: diffusers' ``scheduler.config.prediction_type`` values.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class ToEpsilon:
    """``convert(output, x_t, t) -> eps``: keeps the first C channels, then maps v or x0 to epsilon.

    The square-root tables are made once, in float64, and cast to the model's device and dtype.
    """

    def __init__(
        self,
        prediction_type: str,
        learned_variance: bool,
        alphas_cumprod: torch.Tensor,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            known = ", ".join(PREDICTION_TYPES)
            raise ValueError(f"unknown prediction_type '{prediction_type}'; choose one of {known}")
        self.prediction_type = prediction_type
        self.learned_variance = learned_variance
        abar = alphas_cumprod.double()
        self.sqrt_abar = abar.sqrt().to(device, dtype)
        self.sqrt_one_minus_abar = (1 - abar).sqrt().to(device, dtype)

    def __call__(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.learned_variance:
            output = output[:, : x_t.shape[1]]
        if self.prediction_type == "epsilon":
            return output
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        a = self.sqrt_abar[t].reshape(shape)
        s = self.sqrt_one_minus_abar[t].reshape(shape)
        if self.prediction_type == "v_prediction":
            return torch.addcmul(s * x_t, a, output)
        return (x_t - a * output) / s


def needs_conversion(prediction_type: str, learned_variance: bool) -> bool:
    return prediction_type != "epsilon" or learned_variance
