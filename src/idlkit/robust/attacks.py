"""Adversarial attacks on implicit classifiers and the success-rate loop (paper 000 §7.3; thesis ch. 4).

Every attack has the signature ``attack(model, u, y, budget, **options) -> AttackResult`` with
batch-first ``u`` ``(batch, p)`` (or ``(p,)``), integer labels ``y`` ``(batch,)`` and a
:class:`Budget`:

* ``k``: number (``int``) or fraction (``float`` in ``(0, 1]``, rounded up) of inputs that may
  change (the cardinality set (4.2)); ``None``: all of them.
* ``epsilon``: the largest change of one input, ``|u_j' - u_j| <= epsilon`` (the box (4.1));
  ``None``: any value in ``clip`` (then ``clip`` is required).
* ``clip``: the valid input range ``(lo, hi)``; every attacked input is clipped to it.

A ``float`` budget means ``Budget(epsilon=...)``; a count of inputs alone is not a budget (the
change needs ``epsilon`` or ``clip``).

Attacks (the "margin" below is ``max_{j != y} yhat_j - yhat_y``: positive = misclassified):

* :func:`sensitivity_attack` (§7.3.1): perturbs the ``k`` inputs with the largest entries of row
  ``y`` of the sensitivity matrix ``S = |C|(I - |A|)^-1 |B| + |D|`` (Thm 4.3) - the same inputs for
  every sample of a class. ``mode="sign"`` (default) moves them by ``epsilon`` in the direction
  that increases the cross-entropy loss of the true class (the sign of its gradient at ``u``:
  ``S`` says *which* inputs matter, not in which direction); ``mode="random"`` sets them to random
  values in ``[u - epsilon, u + epsilon]`` (or ``clip``), as the paper's Table 1 ("perturb the
  input features into small random values").
* :func:`saliency_attack` (§7.3.1, the comparison): the same, with the inputs ranked per sample by
  ``|grad_u loss(u, y)|`` (saliency map).
* :func:`fgsm_attack`: ``u + epsilon sign(grad_u loss)`` on every input (l_inf).
* :func:`pgd_attack`: projected gradient descent (Madry et al. 2018), the iterated FGSM: from a
  random point of the l_inf ball (intersected with ``clip``), ``steps`` sign-gradient steps of the
  cross-entropy (or margin) loss, each projected back onto the set; the iterate with the largest
  margin is kept, over ``restarts`` random starts.
* :func:`jsma_attack` (thesis §4.4; Papernot et al. 2016): the Jacobian saliency map over pairs of
  inputs, moved step by step until the class changes or ``k`` inputs are spent (targeted, or
  untargeted by the best target).
* :func:`lp_margin_attack` (§7.3.2): for each sample and each wrong class ``j``, the LP relaxation of
  Thm 4.5 (:func:`idlkit.robust.lp.lp_attack`) maximises the linear margin ``(C_j - C_y) x +
  (D_j - D_y) u + d_j - d_y`` over the box (or the cardinality set for ``k``); the candidate with the
  largest true margin is kept, and ``bound`` holds the certified upper bound of the margin
  (``< 0``: the sample is certified robust). ``objective="l2"`` attacks the state discrepancy instead,
  as in the paper's Figures 17-18. One sample at a time (LPs), ReLU models only.

:func:`success_rate` runs an attack over a data set in batches and reports a :class:`SuccessRate`:
the fraction of the clean-correct samples that the attack misclassifies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_choice, check_int, check_positive, check_probability, check_scalar
from ..errors import ConfigurationError, InputError, ShapeError
from ..model import batch_input
from .lp import _dense, _to_np, lp_attack, state_sigma
from .result import AttackResult

__all__ = ["Budget", "SuccessRate", "attack", "sensitivity_attack", "saliency_attack", "fgsm_attack",
           "pgd_attack", "jsma_attack", "inversion_attack", "lp_margin_attack", "success_rate", "ATTACKS"]


@dataclass(frozen=True)
class Budget:
    """What an attack may change (see the module docstring).

    Args:
        k: inputs that may change: an int count (``>= 0``), a float fraction in ``(0, 1]`` of ``p``,
            or ``None`` for all of them (eq. 4.2 vs 4.1).
        epsilon: largest change per input (``>= 0``), or ``None`` for the ``clip`` range only.
        clip: valid input range ``(lo, hi)``, ``lo <= hi``, or ``None`` for unbounded inputs.

    Raises:
        ConfigurationError: a ``k`` of another type, a ``clip`` with ``lo > hi``, or neither
            ``epsilon`` nor ``clip``.
        InputError: a negative ``k`` or ``epsilon``, or a fraction outside ``(0, 1]``.

    Examples:
        >>> b = Budget(k=2, epsilon=0.1, clip=(0.0, 1.0))   # change at most 2 inputs by at most 0.1
        >>> b.k, b.epsilon, b.clip
        (2, 0.1, (0.0, 1.0))
        >>> Budget(epsilon=-1.0)
        Traceback (most recent call last):
            ...
        idlkit.errors.ConfigurationError: Budget.epsilon must be a finite number >= 0 or None, got ...
    """

    k: int | float | None = None
    epsilon: float | None = None
    clip: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        k, eps, clip = self.k, self.epsilon, self.clip
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, (int, float)):
                raise ConfigurationError(f"Budget.k must be an int (count) or float (fraction), got {k!r}")
            if isinstance(k, int):
                check_int("Budget.k", k, 0)
            else:
                check_probability("Budget.k (a fraction of the inputs)", k, low_inclusive=False)
        check_positive("Budget.epsilon", eps, allow_zero=True, allow_none=True, example=0.1)
        if clip is not None:
            if len(clip) != 2 or not all(math.isfinite(float(c)) for c in clip) or not clip[0] <= clip[1]:
                raise ConfigurationError(f"Budget.clip must be (lo, hi) with lo <= hi, got {clip!r}")
        if eps is None and clip is None:
            raise ConfigurationError("a Budget needs epsilon (largest change per input) or clip "
                                     "(the valid range), or both")

    def count(self, p: int) -> int:
        """Number of inputs that may change, out of ``p``.

        Args:
            p: number of inputs of the model.

        Returns:
            ``min(k, p)`` for a count, ``ceil(k p)`` for a fraction, ``p`` for ``k=None``.
        """
        if self.k is None:
            return p
        if isinstance(self.k, float):
            return min(p, math.ceil(self.k * p - 1e-9))
        if self.k > p:
            raise ConfigurationError(f"Budget.k = {self.k} exceeds the number of inputs p = {p}")
        return self.k


def as_budget(budget: Budget | int | float) -> Budget:
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, bool):
        raise ConfigurationError(f"budget must be a Budget, int (k) or float (epsilon), got {budget!r}")
    if isinstance(budget, int):
        raise ConfigurationError("an int budget (k inputs) also needs epsilon or clip: "
                                 "use Budget(k=..., epsilon=..., clip=...)")
    if isinstance(budget, float):
        return Budget(epsilon=budget)
    raise ConfigurationError(f"budget must be a Budget, int (k) or float (epsilon), got {budget!r}")


def _inputs(model: torch.nn.Module, u: Tensor, y: Tensor | int) -> tuple[Tensor, Tensor, bool]:
    U, squeeze = batch_input(u, model.in_features, model.A.dtype)
    Y = torch.as_tensor(y, device=U.device)
    Y = Y.reshape(1) if Y.dim() == 0 else Y
    if Y.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16) or Y.dim() != 1:
        raise InputError(f"y must hold integer class labels of shape (batch,), got {Y.dtype} "
                         f"{tuple(Y.shape)}")
    if Y.shape[0] != U.shape[0]:
        raise ShapeError(f"y has {Y.shape[0]} labels for {U.shape[0]} inputs")
    q = model.out_features
    if Y.numel() and (int(Y.min()) < 0 or int(Y.max()) >= q):
        raise InputError(f"labels must lie in [0, {q}), got range [{int(Y.min())}, {int(Y.max())}]")
    return U.detach(), Y.long(), squeeze


def margins(logits: Tensor, y: Tensor) -> Tensor:
    """``max_{j != y} logits_j - logits_y`` per row (positive: misclassified)."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], -math.inf).max(dim=1).values
    return other - true


def _loss_grad(model: torch.nn.Module, U: Tensor, Y: Tensor) -> Tensor:
    """``grad_u`` of the summed cross-entropy loss of the true class (implicit backward)."""
    with torch.enable_grad():
        Ug = U.clone().requires_grad_(True)
        loss = F.cross_entropy(model(Ug), Y, reduction="sum")
        (g,) = torch.autograd.grad(loss, Ug)
    return g


def _finish(model: torch.nn.Module, U: Tensor, Y: Tensor, Uadv: Tensor, squeeze: bool, method: str,
            bound: Tensor | None = None, status: str = "ok", extra: dict | None = None) -> AttackResult:
    with torch.no_grad():
        mg = margins(model(Uadv), Y)
    changed = (Uadv != U).sum(dim=1)
    if squeeze:
        Uadv, mg, changed = Uadv[0], mg[0], changed[0]
        bound = None if bound is None else bound[0]
    return AttackResult(u_adv=Uadv.detach(), bound=bound, value=mg, status=status, objective="margin",
                        success=mg > 0, n_perturbed=changed, extra={"method": method, **(extra or {})})


def _perturb(U: Tensor, mask: Tensor, direction: Tensor | None, budget: Budget,
             generator: torch.Generator | None) -> Tensor:
    """Change the masked inputs: by ``epsilon sign(direction)`` (or to the range end), or to random
    values (``direction=None``) in ``[u - epsilon, u + epsilon]`` (intersected with ``clip``)."""
    eps, clip = budget.epsilon, budget.clip
    lo = U - eps if eps is not None else torch.full_like(U, float(clip[0]))  # type: ignore[index]
    hi = U + eps if eps is not None else torch.full_like(U, float(clip[1]))  # type: ignore[index]
    if clip is not None:
        lo, hi = lo.clamp(min=float(clip[0])), hi.clamp(max=float(clip[1]))
    if direction is None:
        r = torch.rand(U.shape, generator=generator, dtype=U.dtype).to(U.device)
        new = lo + r * (hi - lo)
    else:
        new = torch.where(direction > 0, hi, torch.where(direction < 0, lo, U))
    out = torch.where(mask, new, U)
    if clip is not None:
        out = out.clamp(float(clip[0]), float(clip[1]))
    return out


def _top_mask(scores: Tensor, k: int) -> Tensor:
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, scores.topk(k, dim=1).indices, True)
    return mask


def model_sensitivity(model: torch.nn.Module) -> Tensor:
    """``S = |C| (I - |A|)^-1 |B| + |D|`` (Thm 4.3), float64 ``(q, p)``.

    Uses :func:`idlkit.robust.sensitivity.sensitivity_matrix` when it exists (it also covers BLIP
    maps); otherwise this formula by a (sparse) linear solve.
    """
    try:
        from .sensitivity import sensitivity_matrix  # type: ignore[import-not-found]
    except ImportError:
        sensitivity_matrix = None
    if sensitivity_matrix is not None:
        return torch.as_tensor(sensitivity_matrix(model), dtype=torch.float64)
    n, p, q = model.hidden, model.in_features, model.out_features
    D = abs(_to_np(model.D, (q, p)))
    if n == 0:
        return torch.as_tensor(_dense(D))
    state_sigma(model, np.zeros(p))  # checks lambda_pf(|A|) < 1
    A, B, C = (abs(_to_np(M, s)) for M, s in ((model.A, (n, n)), (model.B, (n, p)), (model.C, (q, n))))
    if sp.issparse(A):
        Z = sp.linalg.spsolve(sp.identity(n, format="csc") - A.tocsc(), _dense(B))
        Z = np.asarray(Z).reshape(n, p)
    else:
        Z = np.linalg.solve(np.eye(n) - A, _dense(B))
    return torch.as_tensor(C @ Z + _dense(D))


def sensitivity_attack(model: torch.nn.Module, u: Tensor, y: Tensor | int, budget: Budget | float, *,
                       mode: str = "sign", S: Tensor | None = None,
                       generator: torch.Generator | None = None) -> AttackResult:
    """Sensitivity-matrix attack (§7.3.1): the ``k`` inputs with the largest ``S[y, :]``.

    ``S`` (the ``(q, p)`` sensitivity matrix) may be passed to reuse it across calls.

    Args:
        model: an implicit classifier ``(batch, p) -> (batch, q)``.
        u: inputs ``(batch, p)`` or ``(p,)``.
        y: integer labels ``(batch,)`` (or one ``int``).
        budget: a :class:`Budget` (``k`` inputs per class, ``epsilon`` or ``clip``).
        mode: ``"sign"`` (along the loss gradient's sign) or ``"random"`` (module docstring).
        S: the ``(q, p)`` sensitivity matrix, to reuse it (default: computed).
        generator: the random numbers of ``mode="random"``.

    Returns:
        :class:`~idlkit.robust.AttackResult` with ``u_adv`` of ``u``'s shape.

    Examples:
        >>> model = idlkit.ImplicitModel(4, 6, 3)
        >>> u = torch.rand(5, 4); y = torch.tensor([0, 1, 2, 0, 1])
        >>> r = sensitivity_attack(model, u, y, Budget(k=2, epsilon=0.5))
        >>> r.u_adv.shape, bool((((r.u_adv - u).abs() > 0).sum(dim=1) <= 2).all())
        (torch.Size([5, 4]), True)
    """
    b = as_budget(budget)
    U, Y, squeeze = _inputs(model, u, y)
    check_choice("mode", mode, ("sign", "random"))
    S = model_sensitivity(model) if S is None else torch.as_tensor(S, dtype=torch.float64)
    if tuple(S.shape) != (model.out_features, model.in_features):
        raise ShapeError(f"S must have shape ({model.out_features}, {model.in_features}), got "
                         f"{tuple(S.shape)}")
    k = b.count(model.in_features)
    mask = _top_mask(S[Y.cpu()].to(U.device), k)
    direction = _loss_grad(model, U, Y) if mode == "sign" else None
    return _finish(model, U, Y, _perturb(U, mask, direction, b, generator), squeeze, "sensitivity")


def saliency_attack(model: torch.nn.Module, u: Tensor, y: Tensor | int, budget: Budget | float, *,
                    mode: str = "sign", generator: torch.Generator | None = None) -> AttackResult:
    """Gradient-saliency attack (§7.3.1): the ``k`` inputs with the largest ``|grad_u loss(u, y)|``.

    Args:
        model: a classifier ``(batch, p) -> (batch, q)``.
        u: inputs ``(batch, p)`` or ``(p,)``.
        y: integer labels ``(batch,)`` (or one ``int``).
        budget: a :class:`Budget` (``k`` inputs per sample, ``epsilon`` or ``clip``).
        mode: ``"sign"`` (along the loss gradient's sign) or ``"random"`` (module docstring).
        generator: the random numbers of ``mode="random"``.

    Returns:
        :class:`~idlkit.robust.AttackResult` with ``u_adv`` of ``u``'s shape.

    Examples:
        >>> model = idlkit.ImplicitModel(4, 6, 3)
        >>> u = torch.rand(5, 4); y = torch.tensor([0, 1, 2, 0, 1])
        >>> r = saliency_attack(model, u, y, Budget(k=1, epsilon=0.5))
        >>> r.u_adv.shape, ((r.u_adv - u).abs() > 0).sum(dim=1).tolist()   # one input changed per sample
        (torch.Size([5, 4]), [1, 1, 1, 1, 1])
    """
    b = as_budget(budget)
    U, Y, squeeze = _inputs(model, u, y)
    check_choice("mode", mode, ("sign", "random"))
    g = _loss_grad(model, U, Y)
    mask = _top_mask(g.abs(), b.count(model.in_features))
    return _finish(model, U, Y, _perturb(U, mask, g if mode == "sign" else None, b, generator), squeeze,
                   "saliency")


def fgsm_attack(model: torch.nn.Module, u: Tensor, y: Tensor | int, budget: Budget | float
                ) -> AttackResult:
    """FGSM: ``clip(u + epsilon sign(grad_u loss(u, y)))`` on every input (l_inf ball).

    Args:
        model: a classifier ``(batch, p) -> (batch, q)``.
        u: inputs ``(batch, p)`` or ``(p,)``.
        y: integer labels ``(batch,)`` (or one ``int``).
        budget: a :class:`Budget` with ``epsilon`` (``k`` must be ``None``), or a ``float``.

    Returns:
        :class:`~idlkit.robust.AttackResult` with ``u_adv`` of ``u``'s shape.

    Examples:
        >>> model = idlkit.ImplicitModel(4, 6, 3)
        >>> u = torch.rand(5, 4); y = torch.tensor([0, 1, 2, 0, 1])
        >>> r = fgsm_attack(model, u, y, Budget(epsilon=0.1, clip=(0.0, 1.0)))
        >>> r.u_adv.shape, r.success.shape
        (torch.Size([5, 4]), torch.Size([5]))
        >>> bool(((r.u_adv - u).abs() <= 0.1 + 1e-6).all()), bool(((r.u_adv >= 0) & (r.u_adv <= 1)).all())
        (True, True)
    """
    b = as_budget(budget)
    if b.epsilon is None:
        raise ConfigurationError("fgsm_attack needs Budget.epsilon")
    if b.k is not None:
        raise ConfigurationError("fgsm_attack perturbs every input (Budget.k must be None); for k inputs "
                                 "use saliency_attack")
    U, Y, squeeze = _inputs(model, u, y)
    g = _loss_grad(model, U, Y)
    return _finish(model, U, Y, _perturb(U, torch.ones_like(U, dtype=torch.bool), g, b, None), squeeze,
                   "fgsm")


def _ball(U: Tensor, budget: Budget, who: str) -> tuple[Tensor, Tensor]:
    """``[lo, hi]``: the l_inf ball ``|u' - u| <= epsilon`` intersected with ``clip`` (as FGSM's
    :func:`_perturb` clips); every input may change (``Budget.k`` must be ``None``)."""
    if budget.epsilon is None:
        raise ConfigurationError(f"{who} needs Budget.epsilon (the l_inf radius), e.g. Budget(epsilon=0.1)")
    if budget.k is not None:
        raise ConfigurationError(f"{who} perturbs every input (Budget.k must be None); for k inputs use "
                                 f"saliency_attack or sensitivity_attack")
    lo, hi = U - budget.epsilon, U + budget.epsilon
    if budget.clip is not None:
        lo, hi = lo.clamp(min=float(budget.clip[0])), hi.clamp(max=float(budget.clip[1]))
        if bool((lo > hi).any()):
            bad = int(torch.nonzero((lo > hi).any(dim=1))[0, 0])
            raise InputError(f"{who}: input row {bad} lies farther than epsilon = {budget.epsilon:g} outside "
                             f"clip = {budget.clip}: the attacked set is empty; clip the inputs first "
                             f"or widen Budget.clip")
    return lo, hi


def _pgd_loss(logits: Tensor, Y: Tensor, loss: str) -> Tensor:
    """Per-sample loss the attack ascends: cross entropy of the true class, or the margin."""
    if loss == "ce":
        return F.cross_entropy(logits, Y, reduction="none")
    return margins(logits, Y)


def pgd_attack(model: torch.nn.Module, u: Tensor, y: Tensor | int, budget: Budget | float, *,
               steps: int = 10, step_size: float | None = None, restarts: int = 1, loss: str = "ce",
               random_start: bool = True, generator: torch.Generator | None = None) -> AttackResult:
    """Projected gradient descent in the l_inf ball (Madry et al. 2018; the iterated FGSM).

    The set is ``S = {u' : |u' - u|_inf <= epsilon} ∩ clip^p`` (eq. 4.1 with ``k = None``, clipped
    as :func:`fgsm_attack` clips). From ``u^0`` uniform in ``S`` (``random_start``; else ``u``)::

        u^{t+1} = Proj_S(u^t + step_size * sign(grad_u L(u^t, y)))        t = 0 .. steps - 1

    with ``L`` the cross entropy of the true class (``loss="ce"``) or the margin ``max_{j != y}
    yhat_j - yhat_y`` (``loss="margin"``), gradients by the implicit backward. ``Proj_S`` is the
    componentwise clamp (exact for a box). Of all iterates ``u^0 .. u^steps`` (and all
    ``restarts``) the one with the largest margin is kept; a restart attacks only the samples no
    earlier restart has flipped. ``step_size`` defaults to ``2.5 epsilon / steps`` (Madry et al.).

    Shapes: ``u (batch, p)`` or ``(p,)``, ``y (batch,)``; the result's ``u_adv`` has ``u``'s shape,
    ``value`` (the margin at ``u_adv``) and ``success`` are ``(batch,)``. ``bound`` is ``None``
    (a heuristic attack: it never certifies robustness).

    Args:
        model: a classifier ``(batch, p) -> (batch, q)`` (an :class:`~idlkit.ImplicitModel`, ...).
        u: ``(batch, p)`` or ``(p,)`` clean inputs.
        y: ``(batch,)`` integer labels, or one label for every row.
        budget: :class:`Budget` (its ``epsilon`` and ``clip``), or a float ``epsilon``.
        steps: gradient steps per restart, ``>= 1``.
        step_size: the sign step; ``None``: ``2.5 epsilon / steps``.
        restarts: random restarts, ``>= 1``.
        loss: ``"ce"`` (cross entropy) or ``"margin"``.
        random_start: start uniform in the box (else at ``u``).
        generator: torch generator of the random starts (``None``: the global one).

    Returns:
        :class:`~idlkit.robust.AttackResult` with ``u_adv`` of ``u``'s shape.

    Raises:
        ConfigurationError: a bad ``budget`` or an unknown ``loss``.
        InputError: a non-positive ``steps``, ``restarts`` or ``step_size``, or bad labels.
        ShapeError: ``y`` and ``u`` disagree in batch size.

    Examples:
        >>> model = idlkit.ImplicitModel(4, 6, 3)
        >>> u = torch.rand(5, 4); y = torch.tensor([0, 1, 2, 0, 1])
        >>> r = pgd_attack(model, u, y, Budget(epsilon=0.1, clip=(0.0, 1.0)), steps=5)
        >>> bool(((r.u_adv - u).abs() <= 0.1 + 1e-7).all()), r.u_adv.shape
        (True, torch.Size([5, 4]))
    """
    b = as_budget(budget)
    steps = check_int("steps", steps, 0)
    restarts = check_int("restarts", restarts, 1)
    check_choice("loss", loss, ("ce", "margin"))
    U, Y, squeeze = _inputs(model, u, y)
    lo, hi = _ball(U, b, "pgd_attack")
    eps = float(b.epsilon)  # type: ignore[arg-type]
    alpha = (2.5 * eps / max(steps, 1) if step_size is None
             else check_positive("step_size", step_size, example=0.01))
    best_u, best_m = U.clone(), torch.full((U.shape[0],), -math.inf, dtype=U.dtype, device=U.device)
    todo = torch.arange(U.shape[0], device=U.device)
    for _ in range(restarts):
        if todo.numel() == 0:
            break
        l, h = lo[todo], hi[todo]
        Yr = Y[todo]
        if random_start:
            r = torch.rand(l.shape, generator=generator, dtype=U.dtype).to(U.device)
            x = l + r * (h - l)
        else:
            x = U[todo].clone()
        for t in range(steps + 1):
            with torch.enable_grad():
                xg = x.clone().requires_grad_(True)
                logits = model(xg)
                mg = margins(logits.detach(), Yr)
                if t < steps:
                    (g,) = torch.autograd.grad(_pgd_loss(logits, Yr, loss).sum(), xg)
            better = mg > best_m[todo]
            if bool(better.any()):
                idx = todo[better]
                best_m[idx] = mg[better]
                best_u[idx] = x[better]
            if t < steps:
                x = torch.minimum(torch.maximum(x + alpha * g.sign(), l), h)
        todo = todo[best_m[todo] <= 0]
    return _finish(model, U, Y, best_u, squeeze, "pgd",
                   extra={"steps": steps, "step_size": alpha, "restarts": restarts, "loss": loss})


def lp_margin_attack(model: torch.nn.Module, u: Tensor, y: Tensor | int, budget: Budget | float, *,
                     objective: str = "margin", card_method: str = "hull", triangle: bool = True
                     ) -> AttackResult:
    """LP-relaxation attack (§7.3.2, Thm 4.5), one sample at a time; see the module docstring.

    ``bound`` is a ``(batch,)`` float64 tensor: for ``objective="margin"`` a certified upper bound of
    the margin over the set (``< 0``: certified robust), for ``"l2"`` of ``||x - x0||_2^2``.

    Args:
        model: a ReLU :class:`~idlkit.ImplicitModel` classifier.
        u: inputs ``(batch, p)`` or ``(p,)``.
        y: integer labels ``(batch,)`` (or one ``int``).
        budget: a :class:`Budget` with ``epsilon`` (and optionally ``k``, ``clip``).
        objective: ``"margin"`` or ``"l2"`` (module docstring).
        card_method: ``"hull"`` or ``"milp"``, as in :func:`idlkit.robust.lp.lp_attack`.
        triangle: add the triangle cuts, as in :func:`idlkit.robust.lp.lp_attack`.

    Returns:
        :class:`~idlkit.robust.AttackResult` with ``u_adv`` of ``u``'s shape.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 4, 2, kappa=0.5, dtype=torch.float64)
        >>> u = torch.rand(2, 3, dtype=torch.float64); y = torch.tensor([0, 1])
        >>> r = lp_margin_attack(model, u, y, Budget(epsilon=0.1))
        >>> r.u_adv.shape, bool(((r.u_adv - u).abs() <= 0.1 + 1e-9).all())
        (torch.Size([2, 3]), True)
    """
    b = as_budget(budget)
    if b.epsilon is None:
        raise ConfigurationError("lp_margin_attack needs Budget.epsilon (the box radius of eq. 4.1)")
    check_choice("objective", objective, ("margin", "l2"))
    U, Y, squeeze = _inputs(model, u, y)
    n, p, q = model.hidden, model.in_features, model.out_features
    k = None if b.k is None else b.count(p)
    C = _dense(_to_np(model.C, (q, n)))
    D = _dense(_to_np(model.D, (q, p)))
    d = np.zeros(q) if model.d is None else model.d.detach().to("cpu", torch.float64).numpy()
    rows, bounds = [], []
    for i in range(U.shape[0]):
        ui, yi = U[i], int(Y[i])
        if objective == "l2":
            r = lp_attack(model, ui, b.epsilon, k, clip=b.clip, card_method=card_method, triangle=triangle)
            rows.append(r.u_adv.to(U))
            bounds.append(r.bound)
            continue
        best_u, best_v, best_b = ui, -math.inf, -math.inf
        for j in range(q):
            if j == yi:
                continue
            r = lp_attack(model, ui, b.epsilon, k, objective="linear", c=C[j] - C[yi], e=D[j] - D[yi],
                          const=float(d[j] - d[yi]), clip=b.clip, card_method=card_method,
                          triangle=triangle, refine=0)
            best_b = max(best_b, r.bound)
            if r.value > best_v:
                best_u, best_v = r.u_adv.to(U), r.value
        rows.append(best_u)
        bounds.append(best_b)
    Uadv = torch.stack(rows) if rows else U.clone()
    return _finish(model, U, Y, Uadv, squeeze, "lp", bound=torch.tensor(bounds, dtype=torch.float64),
                   status="optimal", extra={"objective": objective})


def _jsma_targeted(model: torch.nn.Module, U: Tensor, T: Tensor, lo: Tensor, hi: Tensor, kmax: int,
                   theta: float, mixed: bool, max_iter: int, logits: bool = False) -> Tensor:
    """Papernot et al.'s JSMA towards the targets ``T`` (one per row): the adversarial rows."""
    X = U.clone()
    B, p = X.shape
    active = torch.ones(B, dtype=torch.bool, device=X.device)
    rows = torch.arange(B, device=X.device)
    eye = torch.eye(p, dtype=torch.bool, device=X.device)
    step = abs(theta)
    for _ in range(max_iter):
        with torch.enable_grad():
            Xg = X.clone().requires_grad_(True)
            out = model(Xg)
            out = out if logits else torch.softmax(out, dim=1)
            (gt,) = torch.autograd.grad(out.gather(1, T[:, None]).sum(), Xg, retain_graph=True)
            (ga,) = torch.autograd.grad(out.sum(), Xg)
        active &= out.detach().argmax(dim=1) != T
        if not bool(active.any()):
            break
        alpha, beta = gt, ga - gt  # d Z_t / du and d sum_{j != t} Z_j / du (logits Z)
        sgn = (torch.where(alpha >= 0, 1.0, -1.0).to(X.dtype) if mixed
               else torch.full_like(X, 1.0 if theta > 0 else -1.0))
        a, b = sgn * alpha, sgn * beta
        movable = torch.where(sgn > 0, X < hi, X > lo)
        fresh = (X == U).to(torch.int64)  # moving it adds one changed feature
        room = kmax - (X != U).sum(dim=1)  # (B,)
        pa, pb = a[:, :, None] + a[:, None, :], b[:, :, None] + b[:, None, :]
        pnew = fresh[:, :, None] + fresh[:, None, :]
        ok = (movable[:, :, None] & movable[:, None, :] & ~eye & (pa > 0) & (pb < 0)
              & (pnew <= room[:, None, None]))
        score = torch.where(ok, pa * pb.abs(), torch.full_like(pa, -math.inf)).reshape(B, -1)
        best, idx = score.max(dim=1)
        # no admissible pair (one slot or one feature left): the best single feature
        ok1 = movable & (a > 0) & (b < 0) & (fresh <= room[:, None])
        s1 = torch.where(ok1, a * b.abs(), torch.full_like(a, -math.inf))
        best1, idx1 = s1.max(dim=1)
        use_pair = torch.isfinite(best)
        active &= use_pair | torch.isfinite(best1)
        if not bool(active.any()):
            break
        i = torch.where(use_pair, idx // p, idx1)
        j = torch.where(use_pair, idx % p, idx1)
        for f in (i, j):
            r, c = rows[active], f[active]
            new = X[r, c] + sgn[r, c] * step
            X[r, c] = torch.minimum(torch.maximum(new, lo[r, c]), hi[r, c])
    return X


def jsma_attack(model: torch.nn.Module, u: Tensor, y: Tensor | int, budget: Budget | float, *,
                theta: float = 1.0, target: Tensor | int | None = None, mixed: bool = False,
                max_iter: int | None = None, logits: bool = False) -> AttackResult:
    """Jacobian-based saliency map attack (Papernot et al. 2016; thesis §4.4's comparison).

    For a target class ``t`` and the outputs ``F`` (the softmax probabilities, as in the paper;
    the logits with ``logits=True``), ``alpha_i = dF_t/du_i`` and ``beta_i = sum_{j != t} dF_j/du_i``;
    each iteration picks the pair of features ``(p, q)``
    (still movable, ``p != q``) maximising ``(alpha_p + alpha_q) |beta_p + beta_q|`` subject to
    ``alpha_p + alpha_q > 0`` and ``beta_p + beta_q < 0`` (the saliency map over pairs) and moves
    both by ``theta`` (``theta > 0`` increases features, ``< 0`` decreases them, as in the paper),
    clipped to the budget's box ``[u - epsilon, u + epsilon] ∩ clip``; a feature at its end leaves
    the search domain. It stops when the prediction is ``t``, when no pair qualifies, or after
    ``max_iter`` iterations (default: ``k`` times the steps that cross the widest box). At most
    ``Budget.k`` features change: a pair is admissible only if it keeps the count within ``k``;
    when no pair is (one slot or one movable feature left), the best single feature is taken.

    ``target=None`` runs the attack towards every class ``t != y`` and keeps, per sample, the
    best result (a success with the fewest changed features, else the largest margin):
    untargeted by the best target. ``mixed=True`` lets each feature move in its own direction
    (the sign of ``alpha_i``; the "maximal JSMA" generalisation), which needs no choice of sign.
    With probabilities ``beta = -alpha`` (they sum to 1), so the map ranks pairs by the target's
    probability gradient; with logits the sign conditions are stricter. Measured on a digits
    model (``tests/test_robust_certs.py``'s, k = 4, epsilon = 0.5, 139 samples): probabilities
    61 % (mixed 67 %), logits 43 % (mixed 47 %), the saliency attack 49 %.

    Args:
        model: a classifier ``(batch, p) -> (batch, q)`` (an :class:`~idlkit.ImplicitModel`, ...).
        u: ``(batch, p)`` or ``(p,)`` clean inputs.
        y: ``(batch,)`` integer labels, or one label for every row.
        budget: :class:`Budget` (``k``: changed features; ``epsilon``/``clip``: the box).
        theta: the step per iteration, nonzero and finite.
        target: ``(batch,)`` or one class for every row; must differ from ``y``.
        mixed: each feature moves in the sign of its own ``alpha_i`` (the "maximal JSMA").
        max_iter: iterations at most; ``None``: ``k`` times the steps that cross the widest box.
        logits: use the logits as ``F`` instead of the softmax probabilities.

    Returns:
        :class:`AttackResult` with ``extra["target"]`` the ``(batch,)`` classes aimed at.

    Examples:
        >>> res = jsma_attack(model, u, y, Budget(k=4, clip=(0.0, 1.0)), theta=1.0)  # doctest: +SKIP
    """
    b = as_budget(budget)
    U, Y, squeeze = _inputs(model, u, y)
    theta = check_scalar("theta", theta, why="the change of a feature per iteration")
    if theta == 0:
        raise ConfigurationError("theta must be nonzero (> 0 increases features, < 0 decreases "
                                 "them), got 0")
    if not isinstance(mixed, bool):
        raise ConfigurationError(f"mixed must be True or False, got {mixed!r}")
    q, p = model.out_features, model.in_features
    kmax = b.count(p)
    eps, clip = b.epsilon, b.clip
    lo = U - eps if eps is not None else torch.full_like(U, float(clip[0]))  # type: ignore[index]
    hi = U + eps if eps is not None else torch.full_like(U, float(clip[1]))  # type: ignore[index]
    if clip is not None:
        lo, hi = lo.clamp(min=float(clip[0])), hi.clamp(max=float(clip[1]))
        lo, hi = torch.minimum(lo, U), torch.maximum(hi, U)  # an input outside clip stays put
    if max_iter is None:
        width = float((hi - lo).max()) if U.numel() else 0.0
        max_iter = max(1, kmax * max(1, math.ceil(width / abs(theta) - 1e-12)))
    else:
        max_iter = check_int("max_iter", max_iter, 1)
    if target is not None:
        T = torch.as_tensor(target, device=U.device)
        if T.dtype.is_floating_point or T.dim() > 1:
            raise InputError(f"target must hold integer classes, got {T.dtype} {tuple(T.shape)}")
        T = T.long().expand(U.shape[0]) if T.dim() == 0 else T.long()
        if T.shape[0] != U.shape[0]:
            raise ShapeError(f"target has {T.shape[0]} classes for {U.shape[0]} inputs")
        if T.numel() and (int(T.min()) < 0 or int(T.max()) >= q):
            raise InputError(f"targets must lie in [0, {q}), got [{int(T.min())}, {int(T.max())}]")
        if bool((T == Y).any()):
            raise InputError("a target equals the true label y: a targeted attack needs another "
                             "class (or target=None for the best one)")
        Uadv = _jsma_targeted(model, U, T, lo, hi, kmax, theta, mixed, max_iter, logits)
        return _finish(model, U, Y, Uadv, squeeze, "jsma", extra={"target": T})
    Uadv, best_t = U.clone(), torch.full_like(Y, -1)
    key = torch.full((U.shape[0],), -math.inf, dtype=torch.float64, device=U.device)
    for t in range(q):
        sel = (Y != t).nonzero().flatten()
        if not sel.numel():
            continue
        Tt = torch.full((sel.numel(),), t, dtype=torch.long, device=U.device)
        Xt = _jsma_targeted(model, U[sel], Tt, lo[sel], hi[sel], kmax, theta, mixed, max_iter,
                            logits)
        with torch.no_grad():
            mg = margins(model(Xt), Y[sel]).to(torch.float64)
        changed = (Xt != U[sel]).sum(dim=1).to(torch.float64)
        # success first (fewest changes), then the largest margin
        k_t = torch.where(mg > 0, 1e6 - changed, torch.clamp(mg, max=0.0) - 1e6)
        better = k_t > key[sel]
        idx = sel[better]
        Uadv[idx], key[idx], best_t[idx] = Xt[better], k_t[better], t
    return _finish(model, U, Y, Uadv, squeeze, "jsma", extra={"target": best_t})


def inversion_attack(model: torch.nn.Module, u: Tensor, y: Tensor | int, budget: Budget | float, *,
                     center: float = 0.5) -> AttackResult:
    """Inversion attack of paper 004 (slides, "Empirical robustness of INNs"):
    ``u_adv = clip(u + epsilon sign(center - u))``, every pixel pushed towards the middle grey
    (``center = 1/2`` for inputs in ``[0, 1]``), clipped to ``Budget.clip`` when given (the
    domain of the other attacks; a float budget is ``Budget(epsilon=...)``, unclipped as in the
    paper's formula). Needs no gradient, so any classifier ``(batch, p) -> (batch, q)`` works
    (:class:`~idlkit.ImplicitModel`, :class:`~idlkit.baselines.MON`, MLPs).

    Args:
        model: any classifier ``(batch, p) -> (batch, q)`` (no gradient is needed).
        u: ``(batch, p)`` or ``(p,)`` clean inputs.
        y: ``(batch,)`` integer labels, or one label for every row.
        budget: :class:`Budget` (its ``epsilon`` and ``clip``), or a float ``epsilon``.
        center: the value each input is pushed towards (``0.5``: mid grey for ``[0, 1]`` inputs).

    Returns:
        :class:`~idlkit.robust.AttackResult` with ``u_adv`` of ``u``'s shape.

    Raises:
        ConfigurationError: a bad ``budget`` (e.g. without ``epsilon``).
        InputError: bad labels or a non-finite ``center``.

    Examples:
        >>> net = torch.nn.Linear(4, 3)
        >>> r = inversion_attack(net, torch.tensor([[0., 1., .2, .9]]), torch.tensor([0]), 0.25)
        >>> r.u_adv
        tensor([[0.2500, 0.7500, 0.4500, 0.6500]])
    """
    b = as_budget(budget)
    if b.epsilon is None or b.k is not None:
        raise ConfigurationError(f"inversion_attack moves every input by epsilon: it needs "
                                 f"Budget.epsilon and Budget.k=None, got {b!r}")
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    p = getattr(model, "in_features", u.shape[-1] if isinstance(u, Tensor) else 0)
    U, squeeze = batch_input(u, p, dtype, None)
    Y = torch.as_tensor(y, device=U.device).reshape(-1)
    if Y.is_floating_point() or Y.shape[0] != U.shape[0]:
        raise InputError(f"y must hold {U.shape[0]} integer class labels, got {Y.dtype} "
                         f"{tuple(Y.shape)}")
    Uadv = U + b.epsilon * torch.sign(float(center) - U)
    if b.clip is not None:
        Uadv = Uadv.clamp(float(b.clip[0]), float(b.clip[1]))
    return _finish(model, U.detach(), Y.long(), Uadv.detach(), squeeze, "inversion")


ATTACKS: dict[str, Callable[..., AttackResult]] = {
    "sensitivity": sensitivity_attack, "saliency": saliency_attack, "fgsm": fgsm_attack,
    "pgd": pgd_attack, "lp": lp_margin_attack,
    "jsma": jsma_attack, "inversion": inversion_attack,
}


def attack(model: torch.nn.Module, u: Tensor, y: Tensor | int, budget: Budget | float,
           method: str = "sensitivity", **options: object) -> AttackResult:
    """Run the attack named ``method`` (one of :data:`ATTACKS`).

    Args:
        model: a classifier ``(batch, p) -> (batch, q)`` (an implicit model or any module).
        u: inputs ``(batch, p)`` or ``(p,)``.
        y: integer labels ``(batch,)`` (or one ``int``).
        budget: a :class:`Budget`, or a ``float``: ``Budget(epsilon=...)``.
        method: a name of :data:`ATTACKS`.
        **options: the attack's own options.

    Returns:
        The attack's :class:`~idlkit.robust.AttackResult`.

    Examples:
        >>> model = idlkit.ImplicitModel(4, 6, 3)
        >>> u = torch.rand(5, 4); y = torch.tensor([0, 1, 2, 0, 1])
        >>> r = attack(model, u, y, Budget(epsilon=0.1, clip=(0.0, 1.0)), method="fgsm")
        >>> r.u_adv.shape, bool(((r.u_adv - u).abs() <= 0.1 + 1e-6).all())
        (torch.Size([5, 4]), True)
        >>> sorted(ATTACKS)[:3]
        ['fgsm', 'inversion', 'jsma']
    """
    if method not in ATTACKS:
        raise ConfigurationError(f"unknown attack {method!r}; choose from {sorted(ATTACKS)}")
    return ATTACKS[method](model, u, y, budget, **options)


@dataclass(frozen=True)
class SuccessRate:
    """Result of :func:`success_rate`.

    Attributes:
        rate: ``n_success / n_attacked`` (0 when nothing was attacked).
        n_success: attacked samples misclassified after the attack.
        n_attacked: samples attacked (the clean-correct ones, or all with ``only_correct=False``).
        n_total: samples given.
        clean_accuracy: accuracy without attack.
        mean_perturbed: mean number of changed inputs over the attacked samples.
        method: the attack's name.
        budget: the :class:`Budget` used.
    """

    rate: float
    n_success: int
    n_attacked: int
    n_total: int
    clean_accuracy: float
    mean_perturbed: float
    method: str
    budget: Budget


def success_rate(model: torch.nn.Module, method: str | Callable[..., AttackResult], U: Tensor, Y: Tensor,
                 budget: Budget | float, *, batch_size: int = 256, only_correct: bool = True,
                 **options: object) -> SuccessRate:
    """Attack success rate over a data set (paper 000 Table 1 / thesis Table 4.1), in batches.

    Only the samples the model classifies correctly are attacked (``only_correct=True``): the rate
    is the fraction of them the attack flips.

    Args:
        model: a classifier ``(batch, p) -> (batch, q)``.
        method: a name of :data:`ATTACKS` or an attack function.
        U: inputs ``(m, p)``.
        Y: integer labels ``(m,)``.
        budget: a :class:`Budget`, or a ``float``: ``Budget(epsilon=...)``.
        batch_size: samples attacked at once.
        only_correct: attack only the correctly classified samples.
        **options: the attack's own options.

    Returns:
        :class:`SuccessRate`.

    Examples:
        >>> model = idlkit.ImplicitModel(4, 6, 3)
        >>> U = torch.rand(8, 4); Y = model(U).argmax(1)          # every sample is correct
        >>> sr = success_rate(model, "fgsm", U, Y, Budget(epsilon=0.2))
        >>> sr.n_total, sr.n_attacked, sr.clean_accuracy, 0.0 <= sr.rate <= 1.0
        (8, 8, 1.0, True)
    """
    b = as_budget(budget)
    fn = ATTACKS.get(method) if isinstance(method, str) else method
    if fn is None:
        raise ConfigurationError(f"unknown attack {method!r}; choose from {sorted(ATTACKS)}")
    check_int("batch_size", batch_size, 1)
    Ub, Yb, _ = _inputs(model, U, Y)
    n_total, n_correct, n_att, n_succ, changed = Ub.shape[0], 0, 0, 0, 0
    for s in range(0, n_total, batch_size):
        u, y = Ub[s:s + batch_size], Yb[s:s + batch_size]
        with torch.no_grad():
            ok = model(u).argmax(dim=1) == y
        n_correct += int(ok.sum())
        sel = ok if only_correct else torch.ones_like(ok)
        if not bool(sel.any()):
            continue
        res = fn(model, u[sel], y[sel], b, **options)
        n_att += int(sel.sum())
        n_succ += int(res.success.sum())  # type: ignore[union-attr]
        changed += int(res.n_perturbed.sum())  # type: ignore[union-attr]
    name = method if isinstance(method, str) else getattr(method, "__name__", "attack")
    return SuccessRate(rate=n_succ / n_att if n_att else 0.0, n_success=n_succ, n_attacked=n_att,
                       n_total=n_total, clean_accuracy=n_correct / n_total if n_total else 0.0,
                       mean_perturbed=changed / n_att if n_att else 0.0, method=name, budget=b)
