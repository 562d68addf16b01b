"""Convex machinery of robust training (paper 001 §5.1-5.4): interval states, the robust
counterpart constraints, the worst-case cross entropy, and the two convex blocks.

Convention. Public helpers take batch-first tensors (``U (m, p)``, states ``(m, n)``); the
cvxpy blocks work in the papers' column convention (``U`` is ``p x m``), as
:mod:`idlkit.train.fenchel` does. Everything here is float64. The activation is the ReLU.

**Uncertainty** (eq. 16): every sample ``u`` lies in ``{u_hat + delta : |delta| <= sigma}``.

**States.** Paper 001 replaces the equilibrium ``x = relu(A x + B u)`` by the LP relaxation
``x >= 0, x >= A x + B u`` (eq. 17) and asks it for every ``u`` of the set (eq. 18), which for
interval uncertainty reads ``X >= A X + B U_hat + |B| sigma 1^T`` (§5.3). As printed this is a
certificate only when ``A >= 0`` (then ``relu(A . + B u)`` is monotone and a super-solution
bounds the equilibrium from above); for a mixed-sign ``A`` and to bound the *outputs*
(``C`` has mixed signs) one needs a lower state too. We therefore keep, per sample, an
interval of states, affine in the perturbation (the affine recourse of §5.4, with ``R = 0``
for the counterpart)::

    x(u) in [lo + R delta, hi + R delta],   center c = (hi + lo)/2, radius r = (hi - lo)/2 >= 0.

For ``x`` in that interval ``A x <= A c + |A| r + A R delta`` (row-wise maximum of a linear
form over a box), so ``z = A x + B u + b`` has ``z <= z_hi(delta) := A c + |A| r + B u_hat + b +
(A R + B) delta`` and ``z >= z_lo(delta)`` with ``-|A| r``. The **robust counterpart
constraints**, required for every ``|delta| <= sigma`` and written with ``g := |A R + B - R|
sigma`` (the support function of the box, paper 000 §4.5: ``max_{|delta| <= sigma} v^T delta =
|v|^T sigma``)::

    (upper)  hi >= A c + |A| r + B u_hat + b + g,     hi >= |R| sigma        [hi(delta) >= relu(z_hi(delta))]
    (lower)  lo <= A c - |A| r + B u_hat + b - g      (an "active" unit)
         or  lo <= -|R| sigma                          (an "inactive" unit)  [lo(delta) <= relu(z_lo(delta))]
    (order)  r >= 0.

With ``R = 0``, ``A >= 0`` and ``lo = 0`` the upper constraint is §5.3's ``X >= A X + B U_hat +
|B| sigma 1^T`` verbatim; with ``R != 0`` its ``g`` is §5.4's ``|A R - R + B| sigma``, and
``hi >= |R| sigma`` is §5.4's ``X + R U_hat >= |R| sigma 1^T``.

*Soundness* (ours). Fix ``u`` in the set. The interval ``I = [lo(delta), hi(delta)]`` is nonempty
(``r >= 0``) and the Picard map ``T(x) = relu(A x + B u + b)`` sends ``I`` into itself: for
``x in I``, ``z_lo(delta) <= A x + B u + b <= z_hi(delta)``, ``relu`` is monotone, ``hi(delta) >=
relu(z_hi(delta))`` and ``lo(delta) <= relu(z_lo(delta))``. With ``||A||_inf < 1`` the map is an
``l_inf`` contraction, its iterates from a point of ``I`` stay in the closed ``I`` and converge to the
equilibrium ``x*(u)``: hence ``x*(u) in I`` for every ``u`` of the set.

**Worst-case loss** (§5.4). The margins ``y_j - y_t`` (``t`` the label, ``W = C_j - C_t``,
``V = D_j - D_t``) are bounded over the set by::

    M_j = W c + |W| r + V u_hat + d_j - d_t + |W R + V| sigma        (M_t = 0),

and the cross entropy ``log sum_j exp(y_j - y_t)`` increases in every margin, so
``max_u CE <= lse_j(M_j)``. This is §5.4's bound ``log sum_i exp(z_i + sigma^T |h_i|) - y^T z +
sigma^T |H^T y|`` taken on the margins instead of on each output separately (the maxima over
``delta`` of ``h_j delta`` and ``-h_t delta`` are taken jointly, ``|h_j - h_t|`` instead of ``|h_j| +
|h_t|``): never larger, still an upper bound, still convex. A sample is **certified** when
``max_{j != t} M_j < 0``.

**Convexity.** With the states ``(c, r, R)`` fixed, every constraint and ``M_j`` is convex in the
model ``(A, B, b, C, D, d)`` (``|A| r`` with ``r >= 0``, ``|W| r``, ``|A R + B - R|``, ``|W R + V|``
are convex; the lower constraint is "affine - convex <= 0"...: ``lo - A c + |A| r - B u_hat - b + g
<= 0`` is convex); ``lse`` of convex functions is convex; ``||A||_inf <= kappa`` is convex. With the
model fixed, they are linear in ``(c, r)`` and convex in ``R``. The choice active/inactive is a
convex *inner* approximation of ``lo <= relu(z_lo)`` (a union), taken from the current iterate.

**The state block in closed form.** With the model and ``R`` fixed, the margins bounds are
monotone in the interval (a smaller interval never raises ``M_j``), so the best states are the
*smallest* feasible interval: the fixed point of::

    hi <- max(A+ hi - A- lo + B u_hat + b + g, |R| sigma),
    lo <- max(A+ lo - A- hi + B u_hat + b - g, -|R| sigma)            (A c +- |A| r = A+ hi/lo - A- lo/hi)

an ``l_inf`` contraction with factor ``||A||_inf`` on ``(lo, hi)`` (:func:`interval_states`). At its
fixed point ``lo <= hi`` (``w = hi - lo`` satisfies ``w >= |A| w`` row-wise, hence ``w >= 0`` when
``lambda_pf(|A|) < 1``). The cvxpy state block (:func:`state_step_cvx`) solves the same problem as an
LP and is the reference of the tests; with ``sigma = 0`` and ``R = 0`` the interval collapses to the
equilibrium (the fixed point is unique).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigurationError, InfeasibleError, SolverError

__all__ = [
    "IntervalStates",
    "interval_states",
    "margin_bounds",
    "worst_case_cross_entropy",
    "constraint_violation",
    "state_step_cvx",
    "model_step_cvx",
]

_F64 = torch.float64


@dataclass(frozen=True)
class IntervalStates:
    """Interval states of :mod:`.robust_convex` (module docstring), batch-first float64.

    Attributes:
        lo: ``(m, n)`` lower end of the interval at the nominal inputs;
            ``x(u) in [lo, hi] + R (u - u_hat)``.
        hi: ``(m, n)`` upper end of that interval.
        R: ``(n, p)`` recourse matrix (zeros for the counterpart).
        iterations: fixed-point iterations used (0 for a cvxpy solution).
        residual: ``l_inf`` size of the last fixed-point update.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 4, 2, kappa=0.5, dtype=torch.float64)
        >>> U = torch.randn(5, 3, dtype=torch.float64); Y = torch.tensor([0, 1, 0, 1, 1])
        >>> sigma = torch.full((3,), 0.05, dtype=torch.float64)
        >>> s = interval_states(model, U, sigma)
        >>> s.lo.shape, s.R.shape, bool((s.lo <= s.hi).all())
        (torch.Size([5, 4]), torch.Size([4, 3]), True)
        >>> x = model.equilibrium(U + sigma * (2 * torch.rand(5, 3, dtype=torch.float64) - 1))
        >>> bool(((s.lo - 1e-9 <= x) & (x <= s.hi + 1e-9)).all())     # the states of the set lie inside
        True
    """

    lo: Tensor
    hi: Tensor
    R: Tensor
    iterations: int = 0
    residual: float = 0.0


def _mats(model: object) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    A, B, C, D = (getattr(model, k).detach().to("cpu", _F64) for k in "ABCD")
    b = getattr(model, "b", None)
    d = getattr(model, "d", None)
    b = torch.zeros(A.shape[0], dtype=_F64) if b is None else b.detach().to("cpu", _F64)
    d = torch.zeros(C.shape[0], dtype=_F64) if d is None else d.detach().to("cpu", _F64)
    return A, B, b, C, D, d


def _g(A: Tensor, B: Tensor, R: Tensor, sigma: Tensor) -> Tensor:
    """``|A R + B - R| sigma`` (``|B| sigma`` for ``R = 0``), ``(n,)``."""
    return (A @ R + B - R).abs() @ sigma


def interval_step(A: Tensor, B: Tensor, b: Tensor, R: Tensor, sigma: Tensor, U: Tensor,
                  lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """One sweep of the monotone interval map (module docstring), batch-first, differentiable."""
    Ap, Am = A.clamp(min=0), (-A).clamp(min=0)
    base = U @ B.T + b
    g = _g(A, B, R, sigma)
    floor = R.abs() @ sigma
    hi_new = torch.maximum(hi @ Ap.T - lo @ Am.T + base + g, floor)
    lo_new = torch.maximum(lo @ Ap.T - hi @ Am.T + base - g, -floor)
    return lo_new, hi_new


def interval_states(model: object, U: Tensor, sigma: Tensor, R: Tensor | None = None, *,
                    tol: float = 1e-12, max_iter: int = 10_000,
                    start: tuple[Tensor, Tensor] | None = None) -> IntervalStates:
    """The smallest feasible interval states of ``model`` at ``U`` (``(m, p)``) for the radius
    ``sigma`` (``(p,)``) and the recourse ``R`` (``(n, p)``, default 0): the fixed point of the
    interval map (module docstring), iterated in float64 until the update is below ``tol``.

    Args:
        model: an :class:`~idlkit.ImplicitModel` (ReLU, ``||A||_inf < 1``).
        U: ``(m, p)`` nominal inputs.
        sigma: ``(p,)`` input radius.
        R: ``(n, p)`` recourse matrix, or ``None`` for zeros (the robust counterpart).
        tol: stop when the ``l_inf`` update is below it.
        max_iter: iterations at most.
        start: a warm start ``(lo, hi)`` of ``(m, n)`` tensors, or ``None``.

    Returns:
        :class:`IntervalStates`, ``(m, n)`` ``lo``/``hi`` float64.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> s = interval_states(model, torch.zeros(4, 3, dtype=torch.float64), torch.full((3,), 0.1))
        >>> bool((s.lo <= s.hi).all())
        True
    """
    A, B, b, _, _, _ = _mats(model)
    U = U.detach().to("cpu", _F64)
    sigma = sigma.to(_F64)
    R = torch.zeros_like(B) if R is None else R.detach().to(_F64)
    m, n = U.shape[0], A.shape[0]
    if start is None:
        lo = torch.zeros(m, n, dtype=_F64)
        hi = torch.zeros(m, n, dtype=_F64)
    else:
        lo, hi = (t.detach().to(_F64).clone() for t in start)
    res, it = math.inf, 0
    with torch.no_grad():
        for it in range(1, max_iter + 1):  # noqa: B007
            lo2, hi2 = interval_step(A, B, b, R, sigma, U, lo, hi)
            res = float(torch.maximum((lo2 - lo).abs().amax(), (hi2 - hi).abs().amax())) if m * n else 0.0
            lo, hi = lo2, hi2
            if res <= tol:
                break
    return IntervalStates(lo, hi, R, it, res)


def margin_bounds(C: Tensor, D: Tensor, d: Tensor, R: Tensor, sigma: Tensor, U: Tensor, Y: Tensor,
                  lo: Tensor, hi: Tensor) -> Tensor:
    """``(m, q)`` upper bounds ``M_j`` of the margins ``y_j(u) - y_t(u)`` over the set (module
    docstring; ``M_t = 0``), batch-first, differentiable in every argument.

    Args:
        C: ``(q, n)`` output matrix.
        D: ``(q, p)`` feed-through matrix.
        d: ``(q,)`` output bias.
        R: ``(n, p)`` recourse matrix.
        sigma: ``(p,)`` input radius.
        U: ``(m, p)`` nominal inputs.
        Y: ``(m,)`` integer labels ``t``.
        lo: ``(m, n)`` lower interval states.
        hi: ``(m, n)`` upper interval states.

    Returns:
        ``(m, q)`` tensor of margin bounds ``M_j`` (``M_t = 0``).

    Examples:
        >>> model = idlkit.ImplicitModel(3, 4, 2, kappa=0.5, dtype=torch.float64)
        >>> U = torch.randn(5, 3, dtype=torch.float64); Y = torch.tensor([0, 1, 0, 1, 1])
        >>> sigma = torch.full((3,), 0.05, dtype=torch.float64)
        >>> s = interval_states(model, U, sigma)
        >>> C, D, d = (t.detach() for t in (model.C, model.D, model.d))
        >>> Mb = margin_bounds(C, D, d, s.R, sigma, U, Y, s.lo, s.hi)
        >>> y = model(U + sigma * (2 * torch.rand(5, 3, dtype=torch.float64) - 1)).detach()   # in the set
        >>> margins = y - y.gather(1, Y[:, None])
        >>> Mb.shape, bool((margins <= Mb + 1e-9).all())
        (torch.Size([5, 2]), True)
    """
    c, r = (hi + lo) / 2, (hi - lo) / 2
    q = C.shape[0]
    out = torch.zeros(U.shape[0], q, dtype=c.dtype, device=c.device)
    for t in torch.unique(Y).tolist():
        idx = (Y == t).nonzero()[:, 0]
        W = C - C[t]
        V = D - D[t]
        Mt = c[idx] @ W.T + r[idx] @ W.abs().T + U[idx] @ V.T + (d - d[t]) + (W @ R + V).abs() @ sigma
        out = out.index_put((idx,), Mt)
    return out


def worst_case_cross_entropy(M: Tensor) -> Tensor:
    """``(m,)`` bound ``lse_j M_j`` of the worst-case cross entropy (module docstring).

    Args:
        M: ``(m, q)`` margin bounds of :func:`margin_bounds`.

    Returns:
        ``(m,)`` tensor ``logsumexp_j M_j``.

    Examples:
        >>> M = torch.tensor([[0.0, -1.0, -2.0]], dtype=torch.float64)   # margins y_j - y_t, M_t = 0
        >>> worst_case_cross_entropy(M), torch.logsumexp(M, dim=1)
        (tensor([0.4076], dtype=torch.float64), tensor([0.4076], dtype=torch.float64))
    """
    return torch.logsumexp(M, dim=1)


def constraint_violation(model: object, U: Tensor, sigma: Tensor, states: IntervalStates,
                         kappa: float | None = None) -> tuple[float, Tensor]:
    """Largest violation (``> 0`` = violated) of the robust counterpart constraints by
    ``states`` for ``model`` (float64), and the ``(m,)`` per-sample violation. The lower
    constraint of each unit is the better of its active/inactive forms.

    Args:
        model: an :class:`~idlkit.ImplicitModel` (ReLU).
        U: ``(m, p)`` nominal inputs.
        sigma: ``(p,)`` input radius.
        states: the :class:`IntervalStates` to check.
        kappa: also report ``||A||_inf - kappa`` as a violation, or ``None``.

    Returns:
        ``(largest, per_sample)``: a float and an ``(m,)`` float64 tensor.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 4, 2, kappa=0.5, dtype=torch.float64)
        >>> U = torch.randn(5, 3, dtype=torch.float64); Y = torch.tensor([0, 1, 0, 1, 1])
        >>> sigma = torch.full((3,), 0.05, dtype=torch.float64)
        >>> s = interval_states(model, U, sigma)
        >>> worst, per_sample = constraint_violation(model, U, sigma, s)
        >>> worst <= 1e-9, per_sample.shape                   # the fixed point is feasible
        (True, torch.Size([5]))
    """
    A, B, b, _, _, _ = _mats(model)
    U = U.detach().to("cpu", _F64)
    lo, hi, R = states.lo, states.hi, states.R
    g = _g(A, B, R, sigma)
    floor = R.abs() @ sigma
    Ap, Am = A.clamp(min=0), (-A).clamp(min=0)
    base = U @ B.T + b
    up = torch.maximum(hi @ Ap.T - lo @ Am.T + base + g, floor) - hi
    low = lo - torch.maximum(lo @ Ap.T - hi @ Am.T + base - g, -floor)
    order = lo - hi
    v = torch.maximum(torch.maximum(up, low), order).amax(dim=1) if A.shape[0] else torch.zeros(U.shape[0])
    worst = float(v.max()) if v.numel() else 0.0
    if kappa is not None and A.shape[0]:
        worst = max(worst, float(A.abs().sum(1).max()) - kappa)
    return worst, v


# ----------------------------------------------------------------------------- cvxpy blocks


def _cvxpy() -> object:
    try:
        import cvxpy as cp
    except ImportError as exc:  # pragma: no cover - dev extra
        raise ConfigurationError("the convex robust-training blocks need cvxpy: pip install cvxpy "
                                 "clarabel (or pass solver='first_order')") from exc
    return cp


def _solve(prob: object, what: str) -> None:
    cp = _cvxpy()
    try:
        prob.solve(solver=cp.CLARABEL)  # type: ignore[attr-defined]
    except cp.error.SolverError:  # type: ignore[attr-defined]
        try:
            prob.solve(solver=cp.SCS, eps=1e-8, max_iters=20_000)  # type: ignore[attr-defined]
        except cp.error.SolverError as exc:  # type: ignore[attr-defined]
            raise SolverError(f"{what}: Clarabel and SCS failed ({exc})", status=str(exc)) from exc
    status = prob.status  # type: ignore[attr-defined]
    if status in ("infeasible", "infeasible_inaccurate"):
        raise InfeasibleError(f"{what} is infeasible (status {status})", status=status)
    if status not in ("optimal", "optimal_inaccurate"):
        raise SolverError(f"{what}: solver status {status}", status=status)


def _class_groups(Y: np.ndarray) -> list[tuple[int, np.ndarray]]:
    return [(int(t), np.flatnonzero(Y == t)) for t in np.unique(Y)]


def _margin_expr(cp: object, C: object, D: object, d: object, R: object, sigma: np.ndarray,
                 Uc: np.ndarray, c: object, r: object, t: int, q: int) -> object:
    """cvxpy ``(q, m_t)`` margin bounds of the samples of class ``t`` (column convention)."""
    ones = np.ones((q, 1))
    W = C - ones @ C[t:t + 1, :]
    V = D - ones @ D[t:t + 1, :]
    mt = Uc.shape[1]
    H = W @ R + V if W.shape[1] else V
    shift = (np.abs(H) if isinstance(H, np.ndarray) else cp.abs(H)) @ sigma + (d - d[t])  # type: ignore[attr-defined]
    if isinstance(shift, np.ndarray):
        bias = np.outer(shift, np.ones(mt))
    else:
        bias = cp.reshape(shift, (q, 1), order="F") @ np.ones((1, mt))  # type: ignore[attr-defined]
    if W.shape[1] == 0:  # no states
        return V @ Uc + bias
    absW = np.abs(W) if isinstance(W, np.ndarray) else cp.abs(W)  # type: ignore[attr-defined]
    return W @ c + absW @ r + V @ Uc + bias  # type: ignore[attr-defined]


def state_step_cvx(model: object, U: Tensor, Y: Tensor, sigma: Tensor, *, recourse: bool = False,
                   R0: Tensor | None = None, active: Tensor | None = None,
                   state_bound: float | None = None) -> tuple[IntervalStates, float]:
    """The state block with the model fixed, by cvxpy (Clarabel): minimise the mean worst-case
    cross entropy over ``(lo, hi)`` (and ``R`` with ``recourse``) subject to the robust counterpart
    constraints, the lower constraint in its active form where ``active`` (``(m, n)`` bool; default:
    where the fixed point's lower state is above ``-|R0| sigma``). ``state_bound`` adds ``hi <= bound``.
    Returns the states and the optimal value. The reference of :func:`interval_states`.

    Args:
        model: an :class:`~idlkit.ImplicitModel` (ReLU), held fixed.
        U: ``(m, p)`` nominal inputs.
        Y: ``(m,)`` integer labels.
        sigma: ``(p,)`` input radius.
        recourse: also optimise the recourse matrix ``R``.
        R0: ``(n, p)`` current recourse (the default active set), or ``None`` for zeros.
        active: ``(m, n)`` bool, where the lower constraint takes its active form, or ``None``.
        state_bound: upper bound on ``hi``, or ``None``.

    Returns:
        ``(states, value)``: the :class:`IntervalStates` and the optimal value.

    Raises:
        ConfigurationError: cvxpy missing.
        InfeasibleError: the problem is infeasible.
        SolverError: Clarabel and SCS failed.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 4, 2, kappa=0.5, dtype=torch.float64)
        >>> U = torch.randn(5, 3, dtype=torch.float64); Y = torch.tensor([0, 1, 0, 1, 1])
        >>> sigma = torch.full((3,), 0.05, dtype=torch.float64)
        >>> s, value = state_step_cvx(model, U, Y, sigma)
        >>> s.lo.shape, value >= 0.0
        (torch.Size([5, 4]), True)
    """
    cp = _cvxpy()
    A, B, b, C, D, d = (t.numpy() for t in _mats(model))
    Un = U.detach().to("cpu", _F64).numpy()
    Yn = Y.detach().cpu().numpy().astype(np.int64)
    s = sigma.to(_F64).numpy()
    m, n, p, q = Un.shape[0], A.shape[0], Un.shape[1], C.shape[0]
    R0 = torch.zeros(n, p, dtype=_F64) if R0 is None else R0.to(_F64)
    if active is None:
        fp = interval_states(model, U, sigma, R0)
        active = fp.lo > -(R0.abs() @ sigma.to(_F64)) + 1e-12
    act = active.T.numpy().astype(float)
    lo, hi = cp.Variable((n, m)), cp.Variable((n, m))  # type: ignore[attr-defined]
    R = cp.Variable((n, p)) if recourse else None  # type: ignore[attr-defined]
    Rm = R if recourse else R0.numpy()
    g = cp.abs(A @ Rm + B - Rm) @ s if recourse else np.abs(A @ Rm + B - Rm) @ s  # type: ignore[attr-defined]
    floor = cp.abs(Rm) @ s if recourse else np.abs(Rm) @ s  # type: ignore[attr-defined]
    Ap, Am = np.maximum(A, 0), np.maximum(-A, 0)
    base = B @ Un.T + b[:, None]
    ones_m = np.ones((1, m))
    col = (lambda v: cp.reshape(v, (n, 1), order="F") @ ones_m) if recourse else (lambda v: v[:, None])  # type: ignore[attr-defined]  # noqa: E731
    cons = [hi >= Ap @ hi - Am @ lo + base + col(g), hi >= col(floor), lo <= hi]
    z_lo = Ap @ lo - Am @ hi + base - col(g)
    cons.append(cp.multiply(act, lo - z_lo) <= 0)  # type: ignore[attr-defined]
    cons.append(cp.multiply(1 - act, lo + col(floor)) <= 0)  # type: ignore[attr-defined]
    if state_bound is not None:
        cons.append(hi <= state_bound)
    c, r = (hi + lo) / 2, (hi - lo) / 2
    terms = []
    for t, idx in _class_groups(Yn):
        Mt = _margin_expr(cp, C, D, d, Rm, s, Un[idx].T, c[:, idx], r[:, idx], t, q)
        terms.append(cp.sum(cp.log_sum_exp(Mt, axis=0)))  # type: ignore[attr-defined]
    prob = cp.Problem(cp.Minimize(sum(terms) / max(m, 1)), cons)  # type: ignore[attr-defined]
    _solve(prob, "the state block of robust training")
    Rv = torch.from_numpy(np.asarray(R.value)) if recourse else R0
    st = IntervalStates(torch.from_numpy(np.asarray(lo.value).T.copy()),
                        torch.from_numpy(np.asarray(hi.value).T.copy()), Rv)
    return st, float(prob.value)


@dataclass(frozen=True)
class ModelStep:
    """The model block's solution (float64): matrices and the optimal value."""

    A: Tensor
    B: Tensor
    b: Tensor
    C: Tensor
    D: Tensor
    d: Tensor
    value: float
    loss: float


def model_step_cvx(model: object, U: Tensor, Y: Tensor, sigma: Tensor, states: IntervalStates, *,
                   kappa: float, weight_decay: float = 0.0, l1: float = 0.0, prox: float = 0.0,
                   has_bias: bool = True) -> ModelStep:
    """The model block with the states fixed, by cvxpy (Clarabel)::

        min  1/m sum_k lse_j M_jk + wd/2 ||(B, C, D)||_F^2 + l1 ||(B, C, D)||_1 + prox/2 ||theta - theta_0||^2
        s.t. the robust counterpart constraints at ``states`` (active set of ``states``),
             ||A||_inf <= kappa

    (module docstring: convex in the model). ``prox`` keeps the step near the current model
    ``theta_0`` (a proximal alternating scheme). Without ``has_bias`` ``b`` and ``d`` stay 0.

    The block separates into two convex problems, solved one after the other: the output part
    ``(C, D, d)`` carries the whole loss and no constraint (exponential cones), the state part
    ``(A, B, b)`` carries the constraints and only penalties (a QP, itself separable by rows of
    ``(A, B, b)``, as problem 13 of paper 001). Hence, with the states fixed, ``A`` and ``B`` move
    only as far as the penalties pull them inside the set the states certify: the loss reaches
    them through the next state block (their effect on the smallest interval). This is the
    paper's alternating scheme; the first-order path differentiates through the state block
    instead, and learns ``A, B`` much faster (see :func:`~idlkit.train.robust_fit`).

    Args:
        model: an :class:`~idlkit.ImplicitModel` (ReLU), the current ``theta_0``.
        U: ``(m, p)`` nominal inputs.
        Y: ``(m,)`` integer labels.
        sigma: ``(p,)`` input radius.
        states: the fixed :class:`IntervalStates`.
        kappa: bound ``||A||_inf <= kappa``.
        weight_decay: ``wd`` of ``wd/2 ||(B, C, D)||_F^2``.
        l1: weight of ``||(B, C, D)||_1``.
        prox: weight of the proximal term ``prox/2 ||theta - theta_0||^2``.
        has_bias: fit ``b`` and ``d`` (else they stay 0).

    Returns:
        :class:`ModelStep` with the new matrices and the optimal value.

    Raises:
        ConfigurationError: cvxpy missing.
        InfeasibleError: the problem is infeasible.
        SolverError: Clarabel and SCS failed.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 4, 2, kappa=0.5, dtype=torch.float64)
        >>> U = torch.randn(5, 3, dtype=torch.float64); Y = torch.tensor([0, 1, 0, 1, 1])
        >>> sigma = torch.full((3,), 0.05, dtype=torch.float64)
        >>> s = interval_states(model, U, sigma)
        >>> step = model_step_cvx(model, U, Y, sigma, s, kappa=0.5)
        >>> step.A.shape, bool(step.A.abs().sum(1).max() <= 0.5 + 1e-6)
        (torch.Size([4, 4]), True)
    """
    cp = _cvxpy()
    A0, B0, b0, C0, D0, d0 = (t.numpy() for t in _mats(model))
    Un = U.detach().to("cpu", _F64).numpy()
    Yn = Y.detach().cpu().numpy().astype(np.int64)
    s = sigma.to(_F64).numpy()
    m, n, q = Un.shape[0], A0.shape[0], C0.shape[0]
    lo, hi, Rn = (t.to(_F64).numpy() for t in (states.lo.T, states.hi.T, states.R))
    c, r = (hi + lo) / 2, np.maximum((hi - lo) / 2, 0.0)
    floor = np.abs(Rn) @ s
    C = cp.Variable(C0.shape) if n else C0  # type: ignore[attr-defined]
    D = cp.Variable(D0.shape)  # type: ignore[attr-defined]
    d = cp.Variable(q) if has_bias else np.zeros(q)  # type: ignore[attr-defined]
    ones_m = np.ones((1, m))

    def col(v: object, k: int) -> object:
        return cp.reshape(v, (k, 1), order="F") @ ones_m  # type: ignore[attr-defined]

    cons = []
    if n:
        A, B = cp.Variable(A0.shape), cp.Variable(B0.shape)  # type: ignore[attr-defined]
        b = cp.Variable(n) if has_bias else np.zeros(n)  # type: ignore[attr-defined]
        g = cp.abs(A @ Rn + B - Rn) @ s  # type: ignore[attr-defined]
        base = B @ Un.T + col(b, n) if has_bias else B @ Un.T
        absAr = cp.abs(A) @ r  # type: ignore[attr-defined]
        cons.append(hi - (A @ c + absAr + base + col(g, n)) >= 0)
        active = (lo > -floor[:, None] + 1e-12).astype(float)
        cons.append(cp.multiply(active, lo - (A @ c - absAr + base - col(g, n))) <= 0)  # type: ignore[attr-defined]
        cons.append(cp.sum(cp.abs(A), axis=1) <= kappa)  # type: ignore[attr-defined]
    else:  # no states: y = D u + d (the block is the whole, convex, problem)
        A, B, b = A0, B0, b0
    terms = []
    for t, idx in _class_groups(Yn):
        Mt = _margin_expr(cp, C, D, d, Rn, s, Un[idx].T, c[:, idx], r[:, idx], t, q)
        terms.append(cp.sum(cp.log_sum_exp(Mt, axis=0)))  # type: ignore[attr-defined]
    loss = sum(terms) / max(m, 1)

    def penalties(mats: list, pairs: list) -> object:
        out = 0.0
        if weight_decay:
            out = out + weight_decay / 2 * sum(cp.sum_squares(M) for M in mats)  # type: ignore[attr-defined]
        if l1:
            out = out + l1 * sum(cp.sum(cp.abs(M)) for M in mats)  # type: ignore[attr-defined]
        if prox:
            out = out + prox / 2 * sum(cp.sum_squares(V - V0) for V, V0 in pairs)  # type: ignore[attr-defined]
        return out

    # the block separates: the loss sees only (C, D, d), the constraints only (A, B, b)
    out_pairs = [(D, D0)] + ([(C, C0)] if n else []) + ([(d, d0)] if has_bias else [])
    prob_out = cp.Problem(cp.Minimize(loss + penalties([D] + ([C] if n else []), out_pairs)))  # type: ignore[attr-defined]
    _solve(prob_out, "the output part (C, D, d) of the model block of robust training")
    value = float(prob_out.value)
    if n:
        st_pairs = [(A, A0), (B, B0)] + ([(b, b0)] if has_bias else [])
        pen = penalties([B], st_pairs)
        if isinstance(pen, float):  # no penalty at all: stay at the (feasible) current point
            A, B, b = A0, B0, b0
        else:
            prob_st = cp.Problem(cp.Minimize(pen), cons)  # type: ignore[attr-defined]
            _solve(prob_st, "the state part (A, B, b) of the model block of robust training")
            value += float(prob_st.value)

    def val(v: object, like: np.ndarray) -> Tensor:
        if like.size == 0:
            return torch.zeros(like.shape, dtype=_F64)
        arr = np.asarray(v.value if hasattr(v, "value") else v, dtype=np.float64)
        return torch.from_numpy(arr.reshape(like.shape).copy())

    return ModelStep(val(A, A0), val(B, B0), val(b, b0), val(C, C0), val(D, D0), val(d, d0),
                     value, float(loss.value))
