"""Relaxed SIM row problems, all rows at once: the l1 (App. C, problem 11) and perspective
(eqs. 4-5, 10) objectives of paper 002, by accelerated proximal gradient on the Gram matrix.

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

Method (one deviation from the paper, which calls MOSEK on each row): all rows of a block are
solved together by FISTA with momentum restart on the Gram form ``G = F^T F``, ``c_i = F^T t_i``
(one ``(rows x d) @ (d x d)`` product per iteration), in the preconditioned coordinates
``x~_j = ||F_j|| x_j`` where the Gram matrix is a correlation matrix (the columns of ``(X, U)``
differ in scale by powers of the rescaling divisor: unpreconditioned, the step ``1 / L`` is set
by the largest column and the small ones barely move). Free coordinates are eliminated exactly
first (Schur complement, :func:`idlkit.sim.lasso_batch.eliminate_free`). The proximal map of
``pen + indicator(||w_S||_1 <= kappa)`` is exact: on ``S`` soft-thresholding followed by the
projection on the (in ``x~``, weighted) l1 ball -- both shrink ``|v_j|`` by thresholds, so their
composition is the prox; off ``S`` the scalar prox of ``pen`` (soft-thresholding, or for reverse
Huber the soft threshold on the branch ``|x| <= 1`` and the ridge shrinkage beyond).

Stopping rule: the Fenchel duality gap, a certificate ``P(w) - P* <= gap``. With ``nu = 2 lam r``
(``r = t - F w`` the residual) scaled by ``s`` into the dual domain, ``F^T nu = s g`` with
``g = 2 lam (c - G w)`` and

    D = 2 lam s (t^T r) - lam s^2 ||r||^2 - h*(s g),

``h*`` the conjugate of the penalty: ``kappa max_j (|y_j| - tau_j)_+ / c_j`` on ``S`` (the
weighted ball ``sum c_j |x_j| <= kappa``); off ``S``, the indicator of ``|y_j| <= tau_j`` (l1:
hence ``s = min(1, min_j tau_j / |g_j|)``) or ``sum alpha max(0, (y_j / alpha)^2 / 4 - 1)``
(reverse Huber). A row stops when ``gap <= tol * P(0)`` (scikit-learn's Lasso convention);
rows still above it after ``max_iter`` get status ``"max_iter"`` (the caller retries them with
cvxpy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import check_choice, check_positive, check_tol
from ..errors import ConfigurationError, ShapeError
from .lasso_batch import eliminate_free

__all__ = ["PENALTIES", "PenalizedResult", "penalized_rows", "penalty_value"]

PENALTIES = ("l1", "perspective")
_TINY = 1e-300


@dataclass(frozen=True)
class PenalizedResult:
    """Per-row solutions of :func:`penalized_rows` (row ``i`` of each array is target row ``i``).

    Attributes:
        W: ``(rows, d)`` solutions.
        objective: primal objective ``P(w)`` per row (``lam ||t - F w||^2 + penalty``).
        gap: duality gap per row (``P(w) - P* <= gap``).
        reference: ``P(0) = lam ||t||^2`` per row (free coordinates at their optimum), the
            scale of the stopping rule ``gap <= tol * P(0)``.
        iterations: FISTA iterations per row.
        status: ``"optimal"`` (``gap <= tol * P(0)``) or ``"max_iter"`` per row.
    """

    W: np.ndarray
    objective: np.ndarray
    gap: np.ndarray
    reference: np.ndarray
    iterations: np.ndarray
    status: tuple[str, ...]


def penalty_value(W: np.ndarray, penalty: str, weight: float, sigma: np.ndarray | None = None) -> np.ndarray:
    """``sum_j pen(sigma_j w_j)`` per row of ``W`` (module docstring; ``sigma`` default ones)."""
    A = np.abs(W) if sigma is None else np.abs(W) * sigma
    if penalty == "l1":
        return weight * A.sum(axis=1)
    return weight * np.where(A <= 1.0, 2.0 * A, A * A + 1.0).sum(axis=1)


def _soft(V: np.ndarray, tau: np.ndarray | float) -> np.ndarray:
    return np.sign(V) * np.maximum(np.abs(V) - tau, 0.0)


def _prox_huber(V: np.ndarray, weight: float, sig: np.ndarray, step: float | np.ndarray) -> np.ndarray:
    """Prox of ``step * weight * rh(sig x)`` (reverse Huber): the soft threshold ``2 step
    weight sig`` while ``sig |x| <= 1``, the ridge shrinkage ``v / (1 + 2 step weight sig^2)``
    beyond; the branches meet at ``|v| = 1 / sig + 2 step weight sig``."""
    k = 2.0 * step * weight * sig
    edge = np.where(sig > 0, 1.0 / np.where(sig > 0, sig, 1.0), np.inf) + k
    return np.where(np.abs(V) <= edge, _soft(V, k), V / (1.0 + k * sig))


def _project_ball(V: np.ndarray, c: np.ndarray, kap: np.ndarray) -> np.ndarray:
    """Row ``i`` of ``V`` projected onto ``{sum_j c_j |x_j| <= kap_i}`` (``c > 0``), exactly:
    ``x_j = sign(v_j) max(|v_j| - theta c_j, 0)`` with ``theta`` from the sorted ratios
    ``|v_j| / c_j`` (the weighted form of the sort-based l1-ball projection)."""
    if V.shape[1] == 0:
        return V
    A = np.abs(V)
    inside = A @ c <= kap
    if inside.all():
        return V
    order = np.argsort(-(A / c), axis=1)
    Ao = np.take_along_axis(A, order, axis=1)
    co = c[order]
    theta_k = (np.cumsum(co * Ao, axis=1) - kap[:, None]) / np.cumsum(co * co, axis=1)
    valid = Ao / co > theta_k  # a prefix of each row
    last = np.maximum(valid.sum(axis=1) - 1, 0)
    theta = np.maximum(theta_k[np.arange(V.shape[0]), last], 0.0)
    theta = np.where(inside, 0.0, theta)
    return np.sign(V) * np.maximum(A - theta[:, None] * c[None, :], 0.0)


def penalized_rows(G: np.ndarray, C: np.ndarray, tt: np.ndarray, *, lam: float, penalty: str,
                   weight: float, kappa: float | None, constrained: np.ndarray | None,
                   free: np.ndarray | None = None, sigma: np.ndarray | None = None,
                   W0: np.ndarray | None = None, tol: float = 1e-4, max_iter: int = 5000,
                   check_every: int = 10) -> PenalizedResult:
    """Solve the relaxed row problems of paper 002 App. C for all target rows together.

    Args:
        G: Gram matrix ``F^T F`` ``(d, d)``.
        C: ``(rows, d)``, row ``i`` is ``F^T t_i``.
        tt: ``(rows,)``, ``||t_i||^2``.
        lam: matching weight (``lambda_1`` or ``lambda_2``), > 0.
        penalty: ``"l1"`` (problem 11) or ``"perspective"`` (problem 10).
        weight: ``beta`` (l1) or ``alpha`` (perspective), > 0; 0 with every non-free coordinate
            constrained gives the constrained LASSO P(kappa) of the thesis (eq. 3.4) with
            ``lam = 1/2``.
        kappa: l1 budget on the ``constrained`` coordinates (None: no constraint).
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

    Returns:
        :class:`PenalizedResult`. See the module docstring for the method.
    """
    check_choice("penalty", penalty, PENALTIES)
    check_positive("lam", lam)
    check_positive("weight", weight, allow_zero=True)
    check_tol(tol)
    G = np.asarray(G, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    d = G.shape[0]
    if G.shape != (d, d) or C.ndim != 2 or C.shape[1] != d or tt.shape != (C.shape[0],):
        raise ShapeError(f"G {G.shape}, C {C.shape} and tt {tt.shape} do not match (d = {d})")
    cons = np.zeros(d, bool) if constrained is None or kappa is None else np.asarray(constrained, bool)
    fr = np.zeros(d, bool) if free is None else np.asarray(free, bool)
    sig_all = np.ones(d) if sigma is None else np.asarray(sigma, dtype=np.float64)
    if sig_all.shape != (d,) or np.any(~np.isfinite(sig_all)) or np.any(sig_all < 0):
        raise ConfigurationError(f"sigma must be ({d},) finite and >= 0")
    if np.any(cons & fr):
        raise ConfigurationError("a coordinate cannot be both free and constrained")
    if penalty == "perspective" and kappa is not None and np.any(sig_all[cons] * kappa > 1.0):
        raise ConfigurationError("perspective with constrained coordinates of scale sigma_j > 1 / kappa: "
                                 "the fast solver needs sigma_j kappa <= 1; use solver='cvxpy'")
    if weight == 0 and (penalty != "l1" or np.any(~cons & ~fr)):
        raise ConfigurationError("weight = 0 (the constrained LASSO P(kappa)) needs penalty 'l1' and every "
                                 "non-free coordinate constrained; otherwise give a weight > 0")
    r = C.shape[0]
    kap = np.full(r, float(kappa) if kappa is not None else np.inf)
    kap_c = np.where(np.isfinite(kap), kap, 1.0)

    # preconditioning: work in x~_j = p_j x_j with p_j = ||F_j|| (the Gram diagonal), where
    # the Gram matrix is a correlation matrix; zero columns keep a zero coefficient
    pc = np.sqrt(np.maximum(np.diag(G), 0.0))
    dead = pc <= 0
    pc = np.where(dead, 1.0, pc)
    Gs = G / np.outer(pc, pc)
    Cs = C / pc
    red = eliminate_free(Gs, Cs, fr)
    H, B = red.H, red.B
    ttr = tt + 2.0 * red.const  # ||t||^2 - c_U^T G_UU^+ c_U: the residual with w_S = 0, w_U optimal
    P = ~fr
    consP = cons[P]
    cw = 1.0 / pc[P][consP]  # the ball sum |x_j| = sum |x~_j| / p_j
    sig = sig_all[P] / pc[P]  # penalty on sigma_j x_j = (sigma_j / p_j) x~_j
    ref = np.maximum(lam * ttr, _TINY)  # P(0)
    # l1 thresholds per coordinate; on S the perspective is 2 alpha sigma |x| (sigma |x| <= 1)
    tau = weight * sig * (2.0 if penalty == "perspective" else 1.0)
    hub = np.zeros(sig.size, bool) if penalty == "l1" else ~consP

    def primal(X: np.ndarray, XH: np.ndarray, Bx: np.ndarray, tx: np.ndarray) -> np.ndarray:
        rr = np.maximum(tx - 2.0 * np.einsum("ij,ij->i", Bx, X) + np.einsum("ij,ij->i", X, XH), 0.0)
        pen = np.abs(X[:, ~hub]) @ tau[~hub]
        if hub.any():
            pen = pen + penalty_value(X[:, hub], "perspective", weight, sig[hub])
        return lam * rr + pen

    def dual_gap(X: np.ndarray, XH: np.ndarray, Bx: np.ndarray, tx: np.ndarray, kx: np.ndarray,
                 Pv: np.ndarray) -> np.ndarray:
        g = 2.0 * lam * (Bx - XH)  # -grad of the smooth part = F^T nu with nu = 2 lam r
        rr = np.maximum(tx - 2.0 * np.einsum("ij,ij->i", Bx, X) + np.einsum("ij,ij->i", X, XH), 0.0)
        s = np.ones(X.shape[0])
        box = ~consP & ~hub  # l1 off S: the dual point must satisfy |y_j| <= tau_j
        if box.any():
            gb = np.abs(g[:, box])
            ratio = np.where(gb > 0, tau[box] / np.where(gb > 0, gb, 1.0), np.inf)
            s = np.minimum(1.0, np.min(ratio, axis=1))
        bt = tx - np.einsum("ij,ij->i", Bx, X)  # t^T r (reduced)
        Dv = 2.0 * lam * s * bt - lam * s * s * rr
        if consP.any():  # h*(y) = kappa max_j (|y_j| - tau_j)_+ / c_j on the weighted ball
            over = np.max((np.abs(g[:, consP]) * s[:, None] - tau[consP]) / cw, axis=1)
            Dv -= np.where(np.isfinite(kx), kx * np.maximum(over, 0.0), 0.0)
        if hub.any():  # (alpha rh(sigma .))*(y) = alpha max(0, (y / (alpha sigma))^2 / 4 - 1)
            y = g[:, hub] * s[:, None] / (weight * np.maximum(sig[hub], _TINY))
            Dv -= weight * np.maximum(y * y / 4.0 - 1.0, 0.0).sum(axis=1)
        return Pv - Dv

    Lip = 2.0 * lam * max(float(np.linalg.eigvalsh(H)[-1]) if H.size else 0.0, _TINY)
    step = 1.0 / Lip

    def prox(V: np.ndarray, k: np.ndarray) -> np.ndarray:
        out = _soft(V, step * tau)
        if hub.any():
            out[:, hub] = _prox_huber(V[:, hub], weight, sig[hub], step)
        if consP.any():  # soft threshold then projection: exact (both shrink by thresholds)
            out[:, consP] = _project_ball(out[:, consP], cw, k)
        return out

    X = _start(W0, P, consP, cw, kap_c, B.shape, pc[P])
    X[:, dead[P]] = 0.0
    XH = X @ H
    f = primal(X, XH, B, ttr)
    gap = dual_gap(X, XH, B, ttr, kap, f)
    Xp, XHp = X.copy(), XH.copy()
    t = np.ones(r)
    iters = np.zeros(r, dtype=np.int64)
    act = np.flatnonzero(gap > tol * ref)
    k = 0
    while act.size and k < max_iter:
        k += 1
        tn = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t[act] ** 2))
        mom = ((t[act] - 1.0) / tn)[:, None]
        Xa, XHa = X[act], XH[act]
        Y = Xa + mom * (Xa - Xp[act])
        YH = XHa + mom * (XHa - XHp[act])
        Ba = B[act]
        Xn = prox(Y - step * 2.0 * lam * (YH - Ba), kap_c[act])
        XHn = Xn @ H
        fn = primal(Xn, XHn, Ba, ttr[act])
        tn = np.where(fn > f[act], 1.0, tn)  # momentum restart (O'Donoghue & Candes)
        Xp[act], XHp[act] = Xa, XHa
        X[act], XH[act] = Xn, XHn
        f[act], t[act] = fn, tn
        iters[act] = k
        if k % check_every == 0 or k == max_iter:
            gp = dual_gap(Xn, XHn, Ba, ttr[act], kap[act], fn)
            gap[act] = gp
            act = act[gp > tol * ref[act]]

    left = set(act.tolist())
    status = tuple("max_iter" if i in left else "optimal" for i in range(r))
    W = np.zeros((r, d))
    W[:, P] = X
    if fr.any():
        W[:, fr] = red.free_part(X)
    W /= pc  # back from x~ to x
    return PenalizedResult(W=W, objective=f, gap=gap, reference=ref, iterations=iters, status=status)


def _start(W0: np.ndarray | None, P: np.ndarray, consP: np.ndarray, cw: np.ndarray, kap: np.ndarray,
           shape: tuple[int, int], pc: np.ndarray) -> np.ndarray:
    """Feasible starting point in the preconditioned coordinates: zero, or ``W0`` on the
    penalised coordinates (times ``pc``) with its constrained part projected onto the ball."""
    if W0 is None:
        return np.zeros(shape)
    X = np.array(np.asarray(W0, dtype=np.float64)[:, P], copy=True)
    if X.shape != shape:
        raise ShapeError(f"W0 has {X.shape[0]} rows and {X.shape[1]} penalised columns; expected {shape}")
    X *= pc
    if consP.any():
        X[:, consP] = _project_ball(X[:, consP], cw, kap)
    return X
