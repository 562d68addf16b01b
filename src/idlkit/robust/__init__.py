"""Robustness of implicit models (paper 000 §4, §5.4; paper 003 ch. 4; paper 004).

Certified bounds (float64): state bounds under box and cardinality-constrained inputs
(eq. 4.1-4.5, Thm 4.1-4.2), the sensitivity matrix (Thm 4.3-4.4), Lipschitz bounds
(eq. 4.8, paper 004), worst-case losses (§4.4), the model-error bound (Thm 5.1), and
interval bound propagation for comparison (paper 003 Fig. 4.3).
"""

# --- bounds, sensitivity, Lipschitz, worst-case losses, model error, IBP
from .bounds import (
    BoxBounds,
    StateBound,
    box_bounds,
    solution_error,
    state_block_bound,
    state_bound,
    state_box_bound,
    state_linf_bound,
)
from .ibp import BoundComparison, IntervalBounds, compare_bounds, interval_bounds
from .lipschitz import LipschitzBounds, lipschitz_bound, lipschitz_bounds, state_lipschitz_bound
from .model_error import model_error_bound, perturbation_bound
from .sensitivity import Sensitivity, output_box_bound, sensitivity, sensitivity_matrix
from .worst_case import WorstCaseLoss, worst_case_loss

# isort: split
# --- relaxations and attacks (lp.py, sdp.py, attacks.py, result.py)
from .attacks import (
    ATTACKS,
    Budget,
    SuccessRate,
    attack,
    fgsm_attack,
    jsma_attack,
    lp_margin_attack,
    pgd_attack,
    saliency_attack,
    sensitivity_attack,
    success_rate,
)
from .lp import LPStateBounds, lp_attack, lp_state_bounds
from .result import AttackResult
from .sdp import sdp_attack

# isort: split
# --- linear bound propagation (CROWN / alpha-CROWN) and the one entry for all bounds
from .certified import CertifiedAccuracy, certified_accuracy
from .certify import BOUND_METHODS, OutputBounds, StateBounds, output_bounds, state_bounds
from .linear import LinearBounds, linear_bounds

__all__ = [
    # bounds
    "BoxBounds",
    "StateBound",
    "box_bounds",
    "solution_error",
    "state_block_bound",
    "state_bound",
    "state_box_bound",
    "state_linf_bound",
    "Sensitivity",
    "output_box_bound",
    "sensitivity",
    "sensitivity_matrix",
    "BoundComparison",
    "IntervalBounds",
    "compare_bounds",
    "interval_bounds",
    "LipschitzBounds",
    "lipschitz_bound",
    "lipschitz_bounds",
    "state_lipschitz_bound",
    "model_error_bound",
    "perturbation_bound",
    "WorstCaseLoss",
    "worst_case_loss",
    # relaxations and attacks
    "AttackResult", "lp_attack", "lp_state_bounds", "LPStateBounds", "sdp_attack",
    "Budget", "SuccessRate", "attack", "ATTACKS",
    "sensitivity_attack", "saliency_attack", "fgsm_attack", "pgd_attack", "jsma_attack",
    "lp_margin_attack", "success_rate",
    # linear bounds and the one entry
    "LinearBounds", "linear_bounds", "OutputBounds", "StateBounds", "output_bounds", "state_bounds",
    "CertifiedAccuracy", "certified_accuracy",
    "BOUND_METHODS",
]
