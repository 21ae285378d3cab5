"""diffbench-plugin-example: the `rings` dataset and the `midrange` estimator.

diffbench finds this module through the ``diffbench`` entry-point group in ``pyproject.toml``
and calls its hooks; each hook hands diffbench the classes of one kind.
"""

import diffbench

from diffbench_plugin_example.midrange import Midrange
from diffbench_plugin_example.rings import Rings

__version__ = "0.1.0"
__all__ = ["Midrange", "Rings", "__version__"]


@diffbench.hookimpl
def register_datasets(register):
    register(Rings)


@diffbench.hookimpl
def register_estimators(register):
    register(Midrange)
