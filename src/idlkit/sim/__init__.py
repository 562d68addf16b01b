"""State-driven implicit modeling (SIM, paper 002; thesis ch. 3).

``extract_states(baseline, U)`` returns the baseline's pre- and post-activation states and
outputs (paper 002 §3), rescaled by default so that exact matching with ``||A||_inf <= kappa``
is strictly feasible (paper 002 §3, Thm 2.4). ``SIM(objective=...).fit(baseline, U)`` fits an
implicit model to them row by row, in parallel (Alg. 1), and returns ``(model, SIMReport)``.
States come from the converter's exact implicit form, or from forward hooks on the
activation modules of any network (:mod:`idlkit.sim.hooks`, ``extract_states(method="hooks")``,
the automatic fallback); they are saved and reloaded with ``States.save`` / ``States.load``.
After a fit, :func:`regen_states` refits ``(C, D)`` on the model's own equilibrium states and
:func:`evaluate` measures the model against labels and the teacher (:mod:`idlkit.sim.refit`).
The row solvers are public too: :func:`penalized_rows` (l1 / perspective / elastic net,
problems 10-11; the batched engine, on any torch device), :func:`constrained_lasso_batch` and
:func:`constrained_lasso` (P(kappa), thesis Alg. 1-2), :func:`basis_pursuit_rows` and
:func:`basis_pursuit` (exact matching, eqs. 6, 8-9, with certificates).
"""

from .exact import BasisPursuitResult, basis_pursuit, basis_pursuit_rows
from .fit import BACKENDS, OBJECTIVES, SIM, SIMReport
from .hooks import HookedStates, StateLayer, hook_states
from .lasso import constrained_lasso, constrained_lasso_rows, gram, lasso_cd
from .lasso_batch import BatchLassoResult, constrained_lasso_batch
from .penalized import PenalizedResult, penalized_rows
from .refit import Evaluation, RegenReport, evaluate, regen_states
from .states import States, extract_states

__all__ = [
    "BACKENDS",
    "OBJECTIVES",
    "SIM",
    "BasisPursuitResult",
    "BatchLassoResult",
    "Evaluation",
    "HookedStates",
    "PenalizedResult",
    "RegenReport",
    "SIMReport",
    "StateLayer",
    "States",
    "basis_pursuit",
    "basis_pursuit_rows",
    "constrained_lasso",
    "constrained_lasso_batch",
    "constrained_lasso_rows",
    "evaluate",
    "extract_states",
    "gram",
    "hook_states",
    "lasso_cd",
    "penalized_rows",
    "regen_states",
]
