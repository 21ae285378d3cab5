"""diffbench: benchmark diffusion classifiers — which estimator buys the most accuracy per compute."""

from diffbench.contract import DataError, Dataset, Denoiser, Estimator, ParamError, Splits
from diffbench.hookspecs import hookimpl
from diffbench.model import ConditionalModel

__version__ = "0.1.0"

__all__ = [
    "ConditionalModel",
    "DataError",
    "Dataset",
    "Denoiser",
    "Estimator",
    "ParamError",
    "Splits",
    "__version__",
    "hookimpl",
]
