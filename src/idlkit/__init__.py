"""idlkit: implicit deep learning.

Implicit models predict ``y = C x + D u`` where the state solves
``x = phi(A x + B u)``. See ``../shared/DESIGN.md`` (the project's design page)
and the docstrings, which cite the papers' equations.
"""

from . import (
    activations,
    compose,
    compress,
    convert,
    datasets,
    errors,
    function,
    lowrank,
    plot,
    rnn,
    robust,
    sim,
    solve,
    train,
    wellposed,
)
from .activations import get_activation
from .compress import LowRankImplicitModel
from .errors import (
    ConfigurationError,
    ConvergenceError,
    IdlError,
    InputError,
    NonFiniteError,
    ShapeError,
    WellPosednessError,
)
from .io import load, save
from .model import ImplicitModel
from .rnn import ImplicitRNN
from .solve import SolveInfo, fixed_point

__version__ = "0.1.0"

_SKLEARN = ("ImplicitClassifier", "ImplicitRegressor")


def __getattr__(name: str) -> object:
    """The scikit-learn estimators, imported on first use (scikit-learn is optional:
    ``pip install idlkit[sklearn]``)."""
    if name in _SKLEARN:
        from . import sklearn as _sk

        return getattr(_sk, name)
    raise AttributeError(f"module 'idlkit' has no attribute {name!r}")

__all__ = [
    "ImplicitModel",
    "ImplicitRNN",
    "LowRankImplicitModel",
    "ImplicitClassifier",
    "ImplicitRegressor",
    "SolveInfo",
    "fixed_point",
    "get_activation",
    "save",
    "load",
    "activations",
    "compose",
    "compress",
    "convert",
    "datasets",
    "lowrank",
    "plot",
    "rnn",
    "robust",
    "sim",
    "errors",
    "function",
    "solve",
    "train",
    "wellposed",
    "IdlError",
    "ConfigurationError",
    "ConvergenceError",
    "InputError",
    "NonFiniteError",
    "ShapeError",
    "WellPosednessError",
    "__version__",
]
