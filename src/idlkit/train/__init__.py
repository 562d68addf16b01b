"""Training implicit models (paper 000 §6, App. G-H; paper 001 §4; paper 004).

So far: projected-gradient training (:class:`Trainer`, problem 6.4), Frank-Wolfe
(:func:`frank_wolfe`, §6.2), the alternating block scheme of §7.1, Fenchel-divergence
block-coordinate descent (:func:`fenchel_bcd`, paper 001 §4, paper 000 §6.3; its per-layer,
proxy-free form of paper 001 §7.1, :func:`layered_bcd`), the losses of
eq. 6.2 (:mod:`.losses`), the penalties of §4.3, §5.1 and paper 004 (:mod:`.penalties`) and
adversarial training (:func:`adversarial_fit`, the empirical baseline of issue 17); robust
training by convex relaxations (:func:`robust_fit`, paper 001 §5: robust counterpart, LP
relaxation, affine recourse, and the adversarial baseline; convex blocks in :mod:`.robust_convex`).
"""

from .adversarial import ADVERSARIAL_ATTACKS, adversarial_fit
from .alternating import AlternatingResult, alternating_fit, fit_output_layer
from .fenchel import (
    FENCHEL_ACTIVATIONS,
    FENCHEL_LOSSES,
    FenchelBCDResult,
    FenchelSweep,
    LayeredBCDResult,
    fenchel_bcd,
    fenchel_divergence,
    group_lasso_prox,
    layered_bcd,
    relaxed_objective,
)
from .frank_wolfe import FWRecord, FWResult, frank_wolfe, fw_gap, lmo_inf_ball, lmo_l1_ball
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
from .trainer import LOSSES, OPTIMIZERS, EpochRecord, Trainer, TrainResult

# isort: split
# --- robust training (paper 001 §5)
from .robust import (
    ROBUST_METHODS,
    RobustFitResult,
    RobustRecord,
    TrainingCertificate,
    robust_fit,
    training_certificate,
)

__all__ = [
    "adversarial_fit",
    "ADVERSARIAL_ATTACKS",
    "frank_wolfe",
    "FWResult",
    "FWRecord",
    "lmo_inf_ball",
    "lmo_l1_ball",
    "fw_gap",
    "alternating_fit",
    "fit_output_layer",
    "AlternatingResult",
    "Trainer",
    "TrainResult",
    "EpochRecord",
    "LOSSES",
    "OPTIMIZERS",
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
    "fenchel_bcd",
    "fenchel_divergence",
    "group_lasso_prox",
    "relaxed_objective",
    "FenchelBCDResult",
    "FenchelSweep",
    "FENCHEL_ACTIVATIONS",
    "FENCHEL_LOSSES",
    "layered_bcd",
    "LayeredBCDResult",
    "robust_fit",
    "RobustFitResult",
    "RobustRecord",
    "TrainingCertificate",
    "training_certificate",
    "ROBUST_METHODS",
]
