"""diffbench: benchmark diffusion classifiers — which estimator buys the most accuracy per compute."""

from diffbench import montecarlo
from diffbench.contract import (
    Choice,
    DataError,
    Dataset,
    Denoiser,
    Estimator,
    ParamError,
    Pretrained,
    Reference,
    Splits,
)
from diffbench.hookspecs import hookimpl
from diffbench.model import ConditionalModel
from diffbench.noise_process import NoiseProcess

__version__ = "0.1.0"

__all__ = [
    "Choice",
    "ConditionalModel",
    "DataError",
    "Dataset",
    "Denoiser",
    "Estimator",
    "NoiseProcess",
    "ParamError",
    "Pretrained",
    "Reference",
    "Splits",
    "__version__",
    "hookimpl",
    "montecarlo",
]
