"""Fixed-point solvers for ``X = phi(A X + b)`` and its adjoint, with :class:`SolveInfo`.

Column convention (the papers'): ``X`` and ``b`` are ``(n, m)``, one column per sample.
Every solver is batched over columns and stops when the l_inf residual
``||phi(A x + b) - x||_inf`` of every column is below ``tol``; it raises
:class:`~idlkit.errors.ConvergenceError` (or warns, on request) when ``max_iter`` is
reached first, and :class:`~idlkit.errors.NonFiniteError` as soon as NaN/Inf appears.

The package:

* :mod:`~idlkit.solve.registry`: :data:`SOLVERS`, the immutable mapping from a name to a
  :class:`Solver` (forward iteration, adjoint, default step); ``picard``, ``averaged``,
  ``anderson``, ``triangular``. Adding a solver touches that file only.
* :mod:`~idlkit.solve.settings`: :class:`SolverSettings` (frozen, per model), the adjoint's
  stopping rule (``backward_stop``), validation naming the registered choices.
* :mod:`~idlkit.solve.lean` and :mod:`~idlkit.solve.tracked`: the whole-batch loop with
  one residual read per check, and the loop with per-sample depths and retirement of
  converged samples; chosen by problem size unless ``per_sample`` is given.
* :mod:`~idlkit.solve.anderson`, :mod:`~idlkit.solve.triangular`: Anderson acceleration;
  back-substitution by levels with its :class:`PlanCache` (owned by the model).
* :mod:`~idlkit.solve.maps`, :mod:`~idlkit.solve.info`: the batch-first maps
  (forward, adjoint) and :class:`SolveInfo`.
"""

from .api import adjoint_fixed_point, fixed_point, iterate_map
from .info import ConvergenceWarning, SolveInfo
from .maps import FixedPointMap
from .registry import SOLVERS, SolveOptions, Solver, default_alpha, get_solver
from .settings import BACKWARD_STOP, SolverSettings
from .triangular import PlanCache, triangular_levels

__all__ = [
    "SolveInfo",
    "ConvergenceWarning",
    "SOLVERS",
    "Solver",
    "SolveOptions",
    "SolverSettings",
    "BACKWARD_STOP",
    "get_solver",
    "fixed_point",
    "adjoint_fixed_point",
    "default_alpha",
    "triangular_levels",
    "iterate_map",
    "FixedPointMap",
    "PlanCache",
]
