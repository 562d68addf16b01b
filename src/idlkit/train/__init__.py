"""Training implicit models (paper 000 §6, App. G-H; paper 001 §4; paper 004).

So far: the losses of eq. 6.2 (:mod:`.losses`) and the penalties of §4.3, §5.1 and
paper 004 (:mod:`.penalties`). Projected gradient itself is ``model.attach_projection``
on any torch optimizer.
"""

from .losses import cross_entropy, squared_error
from .penalties import (
    PENALTIES,
    feature_selection,
    group_columns,
    l1,
    lipschitz_bound,
    lipschitz_penalty,
    mu_inf_torch,
    mu_lipschitz_bound,
    sensitivity_matrix,
    sensitivity_penalty,
)

__all__ = [
    "squared_error",
    "cross_entropy",
    "l1",
    "group_columns",
    "feature_selection",
    "lipschitz_bound",
    "lipschitz_penalty",
    "sensitivity_matrix",
    "sensitivity_penalty",
    "mu_inf_torch",
    "mu_lipschitz_bound",
    "PENALTIES",
]
