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

from .._validation import check_choice, check_int, check_positive, check_probability
from ..errors import ConfigurationError, InputError, ShapeError
from ..model import batch_input
from .lp import _dense, _to_np, lp_attack, state_sigma
from .result import AttackResult

__all__ = ["Budget", "SuccessRate", "attack", "sensitivity_attack", "saliency_attack", "fgsm_attack",
           "lp_margin_attack", "success_rate", "ATTACKS"]


@dataclass(frozen=True)
class Budget:
    """What an attack may change (see the module docstring)."""

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
        """Number of inputs that may change, out of ``p``."""
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
    """Gradient-saliency attack (§7.3.1): the ``k`` inputs with the largest ``|grad_u loss(u, y)|``."""
    b = as_budget(budget)
    U, Y, squeeze = _inputs(model, u, y)
    check_choice("mode", mode, ("sign", "random"))
    g = _loss_grad(model, U, Y)
    mask = _top_mask(g.abs(), b.count(model.in_features))
    return _finish(model, U, Y, _perturb(U, mask, g if mode == "sign" else None, b, generator), squeeze,
                   "saliency")


def fgsm_attack(model: torch.nn.Module, u: Tensor, y: Tensor | int, budget: Budget | float
                ) -> AttackResult:
    """FGSM: ``clip(u + epsilon sign(grad_u loss(u, y)))`` on every input (l_inf ball)."""
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


def lp_margin_attack(model: torch.nn.Module, u: Tensor, y: Tensor | int, budget: Budget | float, *,
                     objective: str = "margin", card_method: str = "hull", triangle: bool = True
                     ) -> AttackResult:
    """LP-relaxation attack (§7.3.2, Thm 4.5), one sample at a time; see the module docstring.

    ``bound`` is a ``(batch,)`` float64 tensor: for ``objective="margin"`` a certified upper bound of
    the margin over the set (``< 0``: certified robust), for ``"l2"`` of ``||x - x0||_2^2``.
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


def inversion_attack(model: torch.nn.Module, u: Tensor, y: Tensor | int, budget: Budget | float, *,
                     center: float = 0.5) -> AttackResult:
    """Inversion attack of paper 004 (slides, "Empirical robustness of INNs"):
    ``u_adv = clip(u + epsilon sign(center - u))``, every pixel pushed towards the middle grey
    (``center = 1/2`` for inputs in ``[0, 1]``), clipped to ``Budget.clip`` when given (the
    domain of the other attacks; a float budget is ``Budget(epsilon=...)``, unclipped as in the
    paper's formula). Needs no gradient, so any classifier ``(batch, p) -> (batch, q)`` works
    (:class:`~idlkit.ImplicitModel`, :class:`~idlkit.baselines.MON`, MLPs).

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
    "lp": lp_margin_attack,
    "inversion": inversion_attack,
}


def attack(model: torch.nn.Module, u: Tensor, y: Tensor | int, budget: Budget | float,
           method: str = "sensitivity", **options: object) -> AttackResult:
    """Run the attack named ``method`` (one of :data:`ATTACKS`)."""
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
        method: the attack's name; budget: the :class:`Budget` used.
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
