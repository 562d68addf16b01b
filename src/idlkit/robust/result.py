"""The result of an attack or of a relaxation that yields one (paper 000 §4.5-4.6, §7.3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["AttackResult"]


@dataclass(frozen=True)
class AttackResult:
    """An adversarial input with its certified bound (when the method gives one).

    Attributes:
        u_adv: the adversarial input, inside the attacked set: ``(p,)`` for a single-sample
            relaxation (:func:`~idlkit.robust.lp.lp_attack`, :func:`~idlkit.robust.sdp.sdp_attack`),
            ``(batch, p)`` for the batched attacks of :mod:`idlkit.robust.attacks`.
        bound: certified upper bound on the objective over the whole set (float64; LP/SDP), or
            ``None`` for heuristic attacks (sensitivity, saliency, FGSM).
        value: the true objective at ``u_adv`` (the model solved at ``u_adv``): a float for a
            relaxation; for batched attacks the ``(batch,)`` margin ``max_{j != y} y_j - y_y``
            (positive = misclassified).
        status: solver / attack status (``"optimal"``, ``"ok"``, ...).
        objective: what ``bound`` and ``value`` measure (``"linear"``, ``"l2"``, ``"margin"``).
        success: ``(batch,)`` bool, the prediction at ``u_adv`` differs from the label
            (classification attacks only).
        n_perturbed: ``(batch,)`` number of changed inputs (``u_adv != u``).
        extra: method-specific numbers (e.g. both SDP extractions), documented by each method.
    """

    u_adv: Tensor
    bound: float | Tensor | None
    value: float | Tensor
    status: str
    objective: str = ""
    success: Tensor | None = None
    n_perturbed: Tensor | None = None
    extra: dict = field(default_factory=dict)
