"""Relaxed SIM row problems, all rows at once: the l1 (App. C, problem 11), perspective
(eqs. 4-5, 10) and elastic-net objectives of paper 002, by accelerated proximal gradient on
the Gram matrix. This is SIM's batched first-order engine: the constrained LASSO P(kappa)
(:func:`idlkit.sim.constrained_lasso_batch`) is its ``weight = 0`` case.

For one row ``t`` of the targets (a row of ``Z`` or of ``Y_hat``), with ``F = (X, U[, 1])`` the
shared data matrix (batch-first, ``m x d``) and ``w`` the row ``(a, b[, bias])`` of the
parameters, each objective of paper 002 App. C reads

    min_w  lam ||t - F w||^2 + sum_j pen(w_j)   s.t.  ||w_S||_1 <= kappa,

with ``lam`` the matching weight (``lambda_1`` for state rows, ``lambda_2`` for output rows),
``S`` the coordinates of ``a`` for state rows (the well-posedness constraint 2d; none for
output rows), ``pen`` the relaxation of ``||M||_0`` on the penalised coordinates, and free
coordinates (the bias) neither penalised nor constrained.

* ``"l1"`` (problem 11): ``pen(x) = beta |x|``.
* ``"perspective"`` (problem 10): ``pen(x) = alpha min_{t in [0, 1]} (x^2 / t + t)``, the
  perspective relaxation of eq. 4 with the rotated cones ``x^2 <= s t`` of eq. 5 eliminated in
  closed form: it is the *reverse Huber* function ``alpha (2|x|)`` for ``|x| <= 1`` and
  ``alpha (x^2 + 1)`` for ``|x| > 1``. (Eqs. 5 and 10 as printed weigh only ``sum s``; with
  ``t`` then free in ``[0, 1]`` the optimum takes ``t = 1`` and the objective is a ridge, which
  cannot sparsify: we follow eq. 4, ``sum s + sum t``, scaled by ``alpha``.) Since ``kappa <= 1``,
  every feasible ``|a_j| <= 1``, so on the constrained coordinates the perspective term is
  exactly ``2 alpha |a_j|``; it differs from l1 only on weights larger than 1 in magnitude.
  :mod:`idlkit.sim.cvx` solves the SOCP of eq. 10 itself with cvxpy (the reference the tests
  compare with).
* ``"elastic_net"`` (torchidl's ``CVXSolver(elastic_net=True)``, scikit-learn's and glmnet's
  parametrisation): ``pen(x) = beta (r |x| + (1 - r) / 2 x^2)`` with ``r = l1_ratio`` in
  ``[0, 1]`` (``r = 1`` is l1, ``r = 0`` a ridge).

With ``sigma`` every penalty acts on ``sigma_j w_j`` (standardised penalties).

Method (one deviation from the paper, which calls MOSEK on each row): all rows of a block are
solved together by FISTA with momentum restart (:func:`idlkit._fista.fista_rows`) on the Gram
form ``G = F^T F``, ``c_i = F^T t_i`` (one ``(rows x d) @ (d x d)`` product per iteration), in
the preconditioned coordinates ``x~_j = ||F_j|| x_j`` where the Gram matrix is a correlation
matrix (the columns of ``(X, U)`` differ in scale by powers of the rescaling divisor:
unpreconditioned, the step ``1 / L`` is set by the largest column and the small ones barely
move). Free coordinates are eliminated exactly first (Schur complement,
:func:`idlkit.sim._gram.eliminate_free`). The proximal map of ``pen + indicator(||w_S||_1 <=
kappa)`` is exact. Writing ``pen_j(x) = tau_j |x| + rho_j / 2 x^2`` on ``S`` (l1 and elastic
net; the perspective there is ``2 alpha sigma_j |x|``), the prox of ``s pen`` plus the
(weighted, in ``x~``) ball ``sum_j c_j |x_j| <= kappa`` is, by its KKT conditions,

    x_j = sign(v_j) (|v_j| - s tau_j - theta c_j)_+ / (1 + s rho_j),

with ``theta >= 0`` the root of ``sum_j c_j x_j = kappa`` (0 when already inside), found
exactly by one sort of the ratios ``(|v_j| - s tau_j)_+ / c_j`` (:func:`_ball_threshold`, the
weighted form of the sort-based l1-ball projection); off ``S`` the scalar prox of ``pen``
(soft-thresholding and ridge shrinkage, or for reverse Huber the soft threshold on the branch
``|x| <= 1`` and the ridge shrinkage beyond).

Stopping rule: the Fenchel duality gap, a certificate ``P(w) - P* <= gap``. With ``nu = 2 lam r``
(``r = t - F w`` the residual) scaled by ``s`` into the dual domain, ``F^T nu = s g`` with
``g = 2 lam (c - G w)`` and

    D = 2 lam s (t^T r) - lam s^2 ||r||^2 - h*(s g),

``h*`` the conjugate of the penalty plus the ball. Off ``S``: for l1 the indicator of
``|y_j| <= tau_j`` (hence ``s = min(1, min_j tau_j / |g_j|)``); for the elastic net
``(|y_j| - tau_j)_+^2 / (2 rho_j)``; for reverse Huber ``alpha max(0, (y_j / (alpha
sigma_j))^2 / 4 - 1)``. On ``S``, by Lagrangian duality of ``sup_x {y^T x - pen(x)}`` over the
ball,

    h*_S(y) = min_{theta >= 0}  kappa theta + sum_j sup_x {(|y_j| - tau_j - theta c_j) |x| - rho_j x^2 / 2},

which is ``kappa max_j (|y_j| - tau_j)_+ / c_j`` when ``rho = 0`` and ``kappa theta + sum_j
(|y_j| - tau_j - theta c_j)_+^2 / (2 rho_j)`` at the minimising ``theta`` (the same sort) when
``rho > 0``; any ``theta`` gives an upper bound of ``h*``, hence a valid dual value. A row stops
when ``gap <= tol * P(0)`` (scikit-learn's Lasso convention); rows still above it after
``max_iter`` get status ``"max_iter"`` (the caller retries them with cvxpy).

Arrays: numpy in, numpy out; torch tensors in, tensors out. The iterations run with torch ops
on ``device`` (default: the inputs' device, else the CPU), so a GPU is used when the caller
passes CUDA tensors or ``device="cuda"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._fista import fista_rows
from .._validation import check_choice, check_int, check_positive, check_probability, check_tol
from ..errors import ConfigurationError, NonFiniteError, ShapeError
from ._gram import eliminate_free, engine_device, from_engine, to_engine, wants_numpy

__all__ = ["PENALTIES", "PenalizedResult", "penalized_rows", "penalty_value"]

PENALTIES = ("l1", "perspective", "elastic_net")
_TINY = 1e-300


@dataclass(frozen=True)
class PenalizedResult:
    """Per-row solutions of :func:`penalized_rows` (row ``i`` of each array is target row ``i``;
    numpy arrays, or tensors when the inputs were tensors).

    Attributes:
        W: ``(rows, d)`` solutions.
        objective: primal objective ``P(w)`` per row (``lam ||t - F w||^2 + penalty``).
        gap: duality gap per row (``P(w) - P* <= gap``).
        reference: ``P(0) = lam ||t||^2`` per row (free coordinates at their optimum), the
            scale of the stopping rule ``gap <= tol * P(0)``.
        iterations: FISTA iterations per row.
        status: ``"optimal"`` (``gap <= tol * P(0)``) or ``"max_iter"`` per row.
    """

    W: Any
    objective: Any
    gap: Any
    reference: Any
    iterations: Any
    status: tuple[str, ...]


def penalty_value(W: Any, penalty: str, weight: float, sigma: Any = None, l1_ratio: float = 0.5) -> Any:
    """``sum_j pen(sigma_j w_j)`` per row of ``W`` (module docstring; ``sigma`` default ones).

    Args:
        W: ``(rows, d)`` rows (array or tensor).
        penalty: ``"l1"``, ``"perspective"`` or ``"elastic_net"`` (:data:`PENALTIES`).
        weight: the penalty's weight.
        sigma: ``(d,)`` scales, or None for ones.
        l1_ratio: l1 share of the elastic net, in ``[0, 1]``.

    Returns:
        ``(rows,)`` penalty values, of ``W``'s kind.

    Examples:
        >>> W = np.array([[1.0, -2.0], [0.0, 0.5]])
        >>> penalty_value(W, "l1", 1.0).tolist()                    # sum_j |w_j| per row
        [3.0, 0.5]
    """
    if isinstance(W, Tensor):
        A = W.abs() if sigma is None else W.abs() * torch.as_tensor(sigma, dtype=W.dtype, device=W.device)
        if penalty == "l1":
            return weight * A.sum(dim=1)
        if penalty == "elastic_net":
            return weight * (l1_ratio * A.sum(dim=1) + 0.5 * (1.0 - l1_ratio) * (A * A).sum(dim=1))
        return weight * torch.where(A <= 1.0, 2.0 * A, A * A + 1.0).sum(dim=1)
    return from_engine(penalty_value(to_engine(W, torch.device("cpu")), penalty, weight,
                                     None if sigma is None else to_engine(sigma, torch.device("cpu")),
                                     l1_ratio), True)


def _soft(V: Tensor, tau: Tensor | float) -> Tensor:
    """``sign(v) (|v| - tau)_+`` as ``v - clamp(v, -tau, tau)`` (two operations, exact zeros)."""
    return V - torch.clamp(V, -tau, tau)


def _prox_huber(V: Any, weight: float, sig: Any, step: float | Any) -> Any:
    """Prox of ``step * weight * rh(sig x)`` (reverse Huber): the soft threshold ``2 step
    weight sig`` while ``sig |x| <= 1``, the ridge shrinkage ``v / (1 + 2 step weight sig^2)``
    beyond; the branches meet at ``|v| = 1 / sig + 2 step weight sig``."""
    if not isinstance(V, Tensor):
        cpu = torch.device("cpu")
        out = _prox_huber(to_engine(V, cpu), weight, to_engine(sig, cpu),
                          step if np.isscalar(step) else to_engine(step, cpu))
        return from_engine(out, True)
    k = 2.0 * step * weight * sig
    edge = torch.where(sig > 0, 1.0 / torch.where(sig > 0, sig, torch.ones_like(sig)),
                       torch.full_like(sig, float("inf"))) + k
    return torch.where(V.abs() <= edge, _soft(V, k), V / (1.0 + k * sig))


def _ball_threshold(A: Tensor, c: Tensor, e: Tensor | None, kap: Tensor) -> Tensor:
    """Per row ``i``, the ``theta >= 0`` with ``sum_j c_j (A_ij - theta c_j)_+ / e_j = kap_i``
    (0 when the sum at ``theta = 0`` is already at most ``kap_i``); ``A >= 0``, ``c > 0``,
    ``e > 0`` (default ones). Exact: on the sorted ratios ``A_ij / c_j`` the sum is linear in
    ``theta`` between breakpoints, and the active set is a prefix."""
    if A.shape[1] == 0:
        return A.new_zeros(A.shape[0])
    ce = c if e is None else c / e
    inside = A @ ce <= kap if ce.dim() == 1 else (A * ce).sum(dim=1) <= kap
    if bool(inside.all()):  # the common case inside an iteration: no sort
        return A.new_zeros(A.shape[0])
    order = torch.argsort(A / c, dim=1, descending=True)
    Ao = torch.gather(A, 1, order)
    co = c[order]
    ceo = ce[order]
    theta_k = (torch.cumsum(ceo * Ao, dim=1) - kap[:, None]) / torch.cumsum(ceo * co, dim=1)
    valid = Ao / co > theta_k  # a prefix of each row
    last = torch.clamp(valid.sum(dim=1) - 1, min=0)
    theta = torch.clamp(theta_k.gather(1, last[:, None])[:, 0], min=0.0)
    return torch.where(inside | ~torch.isfinite(kap), torch.zeros_like(theta), theta)


def _project_ball(V: Any, c: Any, kap: Any, e: Tensor | None = None) -> Any:
    """Row ``i`` of ``V`` projected onto ``{sum_j c_j |x_j| <= kap_i}`` (``c > 0``), exactly:
    ``x_j = sign(v_j) max(|v_j| - theta c_j, 0)`` with ``theta`` from :func:`_ball_threshold`.
    With ``e`` the map ``x_j = sign(v_j) (|v_j| - theta c_j)_+ / e_j`` (the prox of a ridge
    term plus the ball)."""
    if not isinstance(V, Tensor):
        cpu = torch.device("cpu")
        out = _project_ball(to_engine(V, cpu), to_engine(c, cpu), to_engine(kap, cpu))
        return from_engine(out, True)
    if V.shape[1] == 0:
        return V
    A = V.abs()
    theta = _ball_threshold(A, c, e, kap)
    mag = torch.clamp(A - theta[:, None] * c[None, :], min=0.0)
    return torch.sign(V) * (mag if e is None else mag / e)


def _check_finite_rows(C: Tensor, tt: Tensor) -> None:
    bad = ~(torch.isfinite(C).all(dim=1) & torch.isfinite(tt))
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        raise NonFiniteError(f"target rows {rows[:10]}{'...' if len(rows) > 10 else ''} "
                             f"({len(rows)} of {C.shape[0]}) have NaN/Inf in F^T t or ||t||^2: the "
                             f"states behind them are not finite; drop or repair those samples")


def _kappa_rows(kappa: Any, r: int, dev: torch.device) -> Tensor:
    """One l1 budget per row (finite, > 0), or ``inf`` without a constraint."""
    if kappa is None:
        return torch.full((r,), float("inf"), dtype=torch.float64, device=dev)
    k = to_engine(kappa, dev)
    if k.dim() == 0:
        k = k.expand(r)
    if k.shape != (r,):
        raise ShapeError(f"kappa must be a scalar or have shape ({r},); got {tuple(k.shape)}")
    if not bool(torch.all(torch.isfinite(k) & (k > 0))):
        raise ConfigurationError(f"kappa must be finite and > 0 (an l1 budget); got {k.tolist()[:5]}")
    return k.clone()


def penalized_rows(G: Any, C: Any, tt: Any, *, lam: float, penalty: str, weight: float,
                   kappa: float | Any | None, constrained: Any | None, free: Any | None = None,
                   sigma: Any | None = None, W0: Any | None = None, tol: float = 1e-4,
                   max_iter: int = 5000, check_every: int = 10, l1_ratio: float = 0.5,
                   device: Any = None) -> PenalizedResult:
    """Solve the relaxed row problems of paper 002 App. C for all target rows together.

    Args:
        G: Gram matrix ``F^T F`` ``(d, d)``.
        C: ``(rows, d)``, row ``i`` is ``F^T t_i``.
        tt: ``(rows,)``, ``||t_i||^2``.
        lam: matching weight (``lambda_1`` or ``lambda_2``), > 0.
        penalty: ``"l1"`` (problem 11), ``"perspective"`` (problem 10) or ``"elastic_net"``.
        weight: ``beta`` (l1, elastic net) or ``alpha`` (perspective), > 0; 0 with every non-free
            coordinate constrained gives the constrained LASSO P(kappa) of the thesis (eq. 3.4)
            with ``lam = 1/2``.
        kappa: l1 budget on the ``constrained`` coordinates, a scalar or one per row (None: no
            constraint).
        constrained: boolean ``(d,)`` mask ``S`` (the ``a`` part of state rows).
        free: boolean ``(d,)`` mask of unpenalised, unconstrained coordinates (the bias).
        sigma: per-coordinate scales ``(d,)``: the penalty acts on ``sigma_j w_j`` (ones: the
            paper's ``sum |M_ij|``; column norms of ``F``: scale-free, as glmnet's
            standardisation). The perspective needs ``sigma_j kappa <= 1`` on ``S``.
        W0: optional warm start ``(rows, d)`` (made feasible by projection).
        tol: a row stops when its duality gap is at most ``tol * P(0)``, ``P(0) = lam ||t||^2``
            the objective at zero (scikit-learn's Lasso convention: the objective is then
            within ``tol * P(0)`` of the optimum).
        max_iter: FISTA iteration limit; rows still above ``tol`` get status ``"max_iter"``.
        check_every: gap evaluation period.
        l1_ratio: ``"elastic_net"`` only: the l1 share ``r`` of ``beta (r |x| + (1 - r)/2 x^2)``.
        device: torch device of the iterations (None: the inputs' device, else the CPU).

    Returns:
        :class:`PenalizedResult` (numpy arrays, or tensors on ``device`` when ``G`` or ``C`` is
        a tensor). See the module docstring for the method.

    Examples:
        >>> F = np.random.default_rng(0).normal(size=(30, 5)); T = F[:, :2].T.copy()
        >>> res = penalized_rows(F.T @ F, T @ F, (T * T).sum(1), lam=1.0, penalty="l1", weight=0.1,
        ...                      kappa=None, constrained=None)
        >>> res.W.shape, res.status
        ((2, 5), ('optimal', 'optimal'))
    """
    check_choice("penalty", penalty, PENALTIES)
    check_positive("lam", lam)
    check_positive("weight", weight, allow_zero=True)
    check_tol(tol)
    check_int("max_iter", max_iter, 1)
    check_int("check_every", check_every, 1)
    if penalty == "elastic_net":
        check_probability("l1_ratio", l1_ratio, example=0.5)
    numpy = wants_numpy(G, C, tt)
    dev = engine_device(device, G, C, tt)
    Gt, Ct, ttt = to_engine(G, dev), to_engine(C, dev), to_engine(tt, dev)
    d = Gt.shape[0]
    if Gt.shape != (d, d) or Ct.dim() != 2 or Ct.shape[1] != d or ttt.shape != (Ct.shape[0],):
        raise ShapeError(f"G {tuple(Gt.shape)}, C {tuple(Ct.shape)} and tt {tuple(ttt.shape)} do not "
                         f"match (d = {d})")
    if not bool(torch.isfinite(Gt).all()):
        raise NonFiniteError("G = F^T F has NaN/Inf entries: some state column is not finite; "
                             "repair the states before fitting")
    _check_finite_rows(Ct, ttt)

    def mask(m: Any) -> Tensor:
        if m is None:
            return torch.zeros(d, dtype=torch.bool, device=dev)
        a = np.asarray(m.cpu() if isinstance(m, Tensor) else m)
        if a.dtype != bool or a.shape != (d,):
            raise ConfigurationError(f"masks must be boolean of shape ({d},); got {a.dtype} {a.shape}")
        return torch.as_tensor(a, device=dev)

    cons = mask(None if kappa is None else constrained)
    fr = mask(free)
    sig_all = torch.ones(d, dtype=torch.float64, device=dev) if sigma is None else to_engine(sigma, dev)
    if sig_all.shape != (d,) or not bool(torch.all(torch.isfinite(sig_all) & (sig_all >= 0))):
        raise ConfigurationError(f"sigma must be ({d},) finite and >= 0")
    if bool((cons & fr).any()):
        raise ConfigurationError("a coordinate cannot be both free and constrained")
    r = Ct.shape[0]
    kap = _kappa_rows(kappa, r, dev)
    if penalty == "perspective" and kappa is not None and bool((sig_all[cons] * kap.max() > 1.0).any()):
        raise ConfigurationError("perspective with constrained coordinates of scale sigma_j > 1 / kappa: "
                                 "the fast solver needs sigma_j kappa <= 1; use solver='cvxpy'")
    if weight == 0 and (penalty != "l1" or bool((~cons & ~fr).any())):
        raise ConfigurationError("weight = 0 (the constrained LASSO P(kappa)) needs penalty 'l1' and every "
                                 "non-free coordinate constrained; otherwise give a weight > 0")

    # preconditioning: work in x~_j = p_j x_j with p_j = ||F_j|| (the Gram diagonal), where
    # the Gram matrix is a correlation matrix; zero columns keep a zero coefficient
    pc = torch.sqrt(torch.clamp(torch.diagonal(Gt), min=0.0))
    dead = pc <= 0
    pc = torch.where(dead, torch.ones_like(pc), pc)
    red = eliminate_free(Gt / torch.outer(pc, pc), Ct / pc, fr)
    H, B = red.H, red.B
    ttr = ttt + 2.0 * red.const  # ||t||^2 - c_U^T G_UU^+ c_U: the residual with w_S = 0, w_U optimal
    P = ~fr
    consP = cons[P]
    cw = 1.0 / pc[P][consP]  # the ball sum |x_j| = sum |x~_j| / p_j
    sig = sig_all[P] / pc[P]  # penalty on sigma_j x_j = (sigma_j / p_j) x~_j
    ref = torch.clamp(lam * ttr, min=_TINY)  # P(0)
    # pen_j(x) = tau_j |x| + rho_j / 2 x^2 (module docstring); reverse Huber on `hub`
    if penalty == "elastic_net":
        tau, rho = weight * l1_ratio * sig, weight * (1.0 - l1_ratio) * sig * sig
    else:
        tau, rho = weight * sig * (2.0 if penalty == "perspective" else 1.0), torch.zeros_like(sig)
    hub = ~consP if penalty == "perspective" else torch.zeros_like(consP)
    plain = ~hub  # l1 / elastic-net coordinates
    box = ~consP & plain & (rho <= 0)  # l1 off S: the dual point must satisfy |y_j| <= tau_j
    quad = ~consP & plain & (rho > 0)
    rhoS = rho[consP]
    idxS = torch.nonzero(consP).flatten()
    # the constrained coordinates of SIM rows are a leading block (a): index them by a slice (a view)
    colS: slice | Tensor = (slice(0, idxS.numel()) if idxS.numel() and int(idxS[-1]) == idxS.numel() - 1
                            else consP)
    any_hub, any_cons = bool(hub.any()), bool(consP.any())
    any_box, any_quad = bool(box.any()), bool(quad.any())

    def residual2(X: Tensor, XH: Tensor, Bx: Tensor, tx: Tensor) -> Tensor:
        return torch.clamp(tx - 2.0 * torch.linalg.vecdot(Bx, X) + torch.linalg.vecdot(X, XH), min=0.0)

    all_plain, any_rho = bool(plain.all()), bool((rho > 0).any())
    tau_p, rho_p = tau[plain], rho[plain]

    def pen_value(X: Tensor) -> Tensor:
        Xp = X if all_plain else X[:, plain]
        pen = Xp.abs() @ tau_p
        if any_rho:
            pen = pen + 0.5 * (Xp * Xp) @ rho_p
        if any_hub:
            pen = pen + penalty_value(X[:, hub], "perspective", weight, sig[hub])
        return pen

    def objective(X: Tensor, XH: Tensor | None, dat: tuple[Tensor, ...]) -> Tensor:
        assert XH is not None
        return lam * residual2(X, XH, dat[0], dat[1]) + pen_value(X)

    def conj_ball(Y: Tensor, kx: Tensor) -> Tensor:
        """h*_S on the constrained coordinates (module docstring)."""
        Aq = torch.clamp(Y.abs() - tau[consP], min=0.0)
        if not bool((rhoS > 0).any()):
            return kx * torch.max(Aq / cw, dim=1).values
        pos = rhoS > 0
        theta0 = torch.max(torch.where(pos, torch.zeros_like(Aq), Aq / cw), dim=1).values
        theta = torch.maximum(_ball_threshold(Aq[:, pos], cw[pos], rhoS[pos], kx), theta0)
        rest = torch.clamp(Aq[:, pos] - theta[:, None] * cw[pos], min=0.0)
        return kx * theta + (rest * rest / (2.0 * rhoS[pos])).sum(dim=1)

    gap = torch.full((r,), float("inf"), dtype=torch.float64, device=dev)

    def dual_gap(X: Tensor, XH: Tensor, f: Tensor, dat: tuple[Tensor, ...]) -> Tensor:
        Bx, tx, kx = dat
        g = 2.0 * lam * (Bx - XH)  # -grad of the smooth part = F^T nu with nu = 2 lam r
        rr = residual2(X, XH, Bx, tx)
        s = torch.ones(X.shape[0], dtype=X.dtype, device=dev)
        if any_box:
            gb = g[:, box].abs()
            ratio = torch.where(gb > 0, tau[box] / torch.where(gb > 0, gb, torch.ones_like(gb)),
                                torch.full_like(gb, float("inf")))
            s = torch.clamp(torch.min(ratio, dim=1).values, max=1.0)
        bt = tx - torch.linalg.vecdot(Bx, X)  # t^T r (reduced)
        Dv = 2.0 * lam * s * bt - lam * s * s * rr
        y = g * s[:, None]
        if any_cons:
            Dv = Dv - conj_ball(y[:, consP], kx)
        if any_quad:
            yq = torch.clamp(y[:, quad].abs() - tau[quad], min=0.0)
            Dv = Dv - (yq * yq / (2.0 * rho[quad])).sum(dim=1)
        if any_hub:  # (alpha rh(sigma .))*(y) = alpha max(0, (y / (alpha sigma))^2 / 4 - 1)
            yh = y[:, hub] / (weight * torch.clamp(sig[hub], min=_TINY))
            Dv = Dv - weight * torch.clamp(yh * yh / 4.0 - 1.0, min=0.0).sum(dim=1)
        return f - Dv

    def check(X: Tensor, XH: Tensor | None, f: Tensor, dat: tuple[Tensor, ...], idx: Tensor) -> Tensor:
        assert XH is not None
        gp = dual_gap(X, XH, f, dat)
        gap[idx] = gp
        return gp <= tol * ref[idx]

    lmax = float(torch.linalg.eigvalsh(H)[-1]) if H.numel() else 0.0
    step = 1.0 / (2.0 * lam * max(lmax, _TINY))

    stepS, eS = step * tau[consP], (1.0 + step * rhoS) if any_rho else None
    thr = step * tau

    def prox(V: Tensor, dat: tuple[Tensor, ...]) -> Tensor:
        out = _soft(V, thr)
        if any_rho:
            out = out / (1.0 + step * rho)
        if any_hub:
            out[:, hub] = _prox_huber(V[:, hub], weight, sig[hub], step)
        if any_cons:  # exact prox of the penalty plus the ball (module docstring)
            # theta = 0 (the soft threshold alone) unless a row leaves the ball
            outside = out[:, colS].abs() @ cw > dat[2]
            if bool(outside.any()):
                rows = torch.nonzero(outside).flatten()
                VS = V[rows][:, colS]
                mag = torch.clamp(VS.abs() - stepS, min=0.0)
                sub = out[rows]
                sub[:, colS] = torch.sign(VS) * _project_ball(mag, cw, dat[2][rows], eS)
                out[rows] = sub
        return out

    X0 = _start(W0, P, consP, cw, kap, B.shape, pc[P], dev)
    X0[:, dead[P]] = 0.0
    res = fista_rows(X0, objective=objective, grad=lambda Y, YH, dat: 2.0 * lam * (YH - dat[0]),
                     prox=prox, step=step, max_iter=int(max_iter), data=(B, ttr, kap), linear=lambda X: X @ H,
                     check=check, check_every=int(check_every), restart="keep")
    done = res.stopped.cpu().numpy()
    status = tuple("optimal" if ok else "max_iter" for ok in done)
    W = torch.zeros((r, d), dtype=torch.float64, device=dev)
    W[:, P] = res.x
    if bool(fr.any()):
        W[:, fr] = red.free_part(res.x)
    W /= pc  # back from x~ to x
    return PenalizedResult(W=from_engine(W, numpy), objective=from_engine(res.f, numpy),
                           gap=from_engine(gap, numpy), reference=from_engine(ref, numpy),
                           iterations=from_engine(res.iterations, numpy), status=status)


def _start(W0: Any, P: Tensor, consP: Tensor, cw: Tensor, kap: Tensor, shape: torch.Size,
           pc: Tensor, dev: torch.device) -> Tensor:
    """Feasible starting point in the preconditioned coordinates: zero, or ``W0`` on the
    penalised coordinates (times ``pc``) with its constrained part projected onto the ball."""
    if W0 is None:
        return torch.zeros(tuple(shape), dtype=torch.float64, device=dev)
    W = to_engine(W0, dev)
    if W.dim() != 2 or W.shape[1] != P.shape[0]:
        raise ShapeError(f"W0 must be (rows, {P.shape[0]}); got {tuple(W.shape)}")
    X = W[:, P].clone()
    if X.shape != shape:
        raise ShapeError(f"W0 has {X.shape[0]} rows and {X.shape[1]} penalised columns; expected "
                         f"{tuple(shape)}")
    X *= pc
    if bool(consP.any()):
        X[:, consP] = _project_ball(X[:, consP], cw, kap)
    return X
