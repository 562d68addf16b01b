"""SIM row problems as conic programs (paper 002 eqs. 8-11), one row at a time.

These are the formulations of the paper written for a convex solver: basis pursuit with exact
matching (eqs. 8-9) as a linear program solved by HiGHS (and, relaxed to a tolerance, as an
SOCP), and the relaxed l1 (problem 11), elastic-net and perspective (problem 10, the rotated
cones ``w_j^2 <= s_j t_j`` of eq. 5) objectives as SOCPs for cvxpy with Clarabel (MOSEK when the
user has it and asks for it, SCS as the fallback). :mod:`idlkit.sim.penalized` and
:mod:`idlkit.sim.exact` solve them much faster, all rows at once; this module is their
reference and their fallback for rows they do not certify.

Each row sees the data through a *reduced factor* of ``F = (X, U[, 1])``: with the thin SVD
``F = Q diag(sv) V^T`` of rank ``r``, ``||t - F w||^2 = ||Q^T t - R w||^2 + ||t - Q Q^T t||^2``
for ``R = diag(sv) V^T`` (``r x d``), so a row problem has ``r <= min(m, d)`` equations instead
of ``m``; exact matching ``F w = t`` is feasible iff ``t - Q Q^T t = 0`` and is then ``R w =
Q^T t`` (``R`` has full row rank, so these equations are always consistent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.optimize as so

from .._validation import check_choice

__all__ = ["Factor", "RowSolution", "bpdn_row", "exact_row", "factor", "relaxed_row"]


@dataclass(frozen=True)
class Factor:
    """Reduced factor of ``F`` (see the module docstring): ``R = diag(sv) V^T`` and ``Q``.

    Attributes:
        R: ``(r, d)`` reduced factor ``diag(sv) V^T`` (``r`` the numerical rank of ``F``).
        Q: ``(m, r)`` orthonormal basis of the range of ``F``.

    Examples:
        >>> F = np.random.default_rng(0).standard_normal((8, 4))
        >>> Y, resid = factor(F).project(F[:, :2].T)       # two targets in the range of F
        >>> Y.shape, bool((resid < 1e-12).all())
        ((2, 4), True)
    """

    R: np.ndarray
    Q: np.ndarray

    def project(self, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(Q^T t_i, ||t_i - Q Q^T t_i||)`` for the rows ``t_i`` of ``T`` (``rows x m``).

        Args:
            T: ``(rows, m)`` targets.

        Returns:
            ``(Y, resid)``: the ``(rows, r)`` reduced targets and the ``(rows,)`` residual norms.
        """
        Y = T @ self.Q
        E = T - Y @ self.Q.T  # explicitly: ||t||^2 - ||Q^T t||^2 loses half the digits
        return Y, np.sqrt(np.einsum("ij,ij->i", E, E))


def factor(F: np.ndarray) -> Factor:
    """Thin SVD factor of the data matrix ``F`` (``m x d``), dropping singular values below
    numpy's rank cut-off ``max(sv) * max(m, d) * eps``.

    Args:
        F: ``(m, d)`` data matrix.

    Returns:
        :class:`Factor` with ``R`` ``(r, d)`` and ``Q`` ``(m, r)``.

    Examples:
        >>> F = np.random.default_rng(0).standard_normal((8, 4))
        >>> fac = factor(F)
        >>> fac.R.shape, fac.Q.shape, np.allclose(fac.R.T @ fac.R, F.T @ F)
        ((4, 4), (8, 4), True)
    """
    Q, sv, Vt = np.linalg.svd(np.asarray(F, dtype=np.float64), full_matrices=False)
    cut = (sv[0] if sv.size else 0.0) * max(F.shape) * np.finfo(np.float64).eps
    k = int(np.sum(sv > cut))
    return Factor(R=sv[:k, None] * Vt[:k], Q=Q[:, :k])


@dataclass(frozen=True)
class RowSolution:
    """One row's solution: ``w`` (None when the solver gave none), the solver's name and
    status (``"optimal"``, ``"optimal_inaccurate"``, ``"infeasible"``, ``"failed"``).

    Attributes:
        w: the ``(d,)`` solution, or None when the solver gave none.
        solver: the solver's name.
        status: ``"optimal"``, ``"optimal_inaccurate"``, ``"infeasible"`` or ``"failed"``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> F = rng.standard_normal((8, 4)); t = F @ np.array([1.0, 0.0, -0.5, 0.0])   # t in range(F)
        >>> fac = factor(F)
        >>> (y,), (res,) = fac.project(t[None, :])
        >>> mask = np.ones(4, dtype=bool)
        >>> sol = exact_row(fac.R, y, kappa=0.1, constrained=mask, penalized=mask)   # budget too small
        >>> sol.w is None, sol.solver, sol.status
        (True, 'highs', 'infeasible')
    """

    w: np.ndarray | None
    solver: str
    status: str


def exact_row(R: np.ndarray, y: np.ndarray, *, kappa: float | None, constrained: np.ndarray,
              penalized: np.ndarray, sigma: np.ndarray | None = None) -> RowSolution:
    """Basis pursuit with exact matching (eqs. 8-9): ``min ||w_P||_1`` s.t. ``R w = y``,
    ``||w_S||_1 <= kappa``; an LP in ``w = w+ - w-`` solved by HiGHS (scipy). With ``sigma``
    the objective is ``sum_j sigma_j |w_j|`` (standardised penalty).

    Args:
        sigma: ``(d,)`` penalty scales, or None for ones.
        R: reduced factor (``R w = y`` is ``F w = t`` when ``t`` lies in the range of ``F``;
            the caller checks that).
        y: reduced target.
        kappa: l1 budget on ``constrained`` coordinates (None: no constraint).
        constrained: boolean ``(d,)`` mask of the l1-constrained coordinates.
        penalized: boolean ``(d,)`` mask of the penalised coordinates (the bias is neither).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> F = rng.standard_normal((8, 4)); t = F @ np.array([1.0, 0.0, -0.5, 0.0])   # t in range(F)
        >>> fac = factor(F)
        >>> (y,), (res,) = fac.project(t[None, :])
        >>> mask = np.ones(4, dtype=bool)
        >>> sol = exact_row(fac.R, y, kappa=None, constrained=mask, penalized=mask)
        >>> sol.status, np.allclose(F @ sol.w, t), bool(np.abs(sol.w).sum() <= 1.5 + 1e-9)
        ('optimal', True, True)
    """
    d = R.shape[1]
    wts = penalized * (np.ones(d) if sigma is None else np.asarray(sigma, dtype=np.float64))
    cost = np.concatenate([wts, wts])
    A_eq = np.hstack([R, -R])
    A_ub = b_ub = None
    if kappa is not None and constrained.any():
        c2 = np.concatenate([constrained, constrained]).astype(np.float64)
        A_ub, b_ub = c2[None, :], np.array([float(kappa)])
    free_idx = ~penalized & ~constrained
    bounds = np.zeros((2 * d, 2))
    bounds[:, 1] = np.inf
    bounds[np.concatenate([np.zeros(d, bool), free_idx]), 1] = 0.0  # free coords: w+ only, sign-free
    bounds[np.concatenate([free_idx, np.zeros(d, bool)]), 0] = -np.inf
    res = so.linprog(cost, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=y, bounds=bounds, method="highs")
    if res.status == 0:
        return RowSolution(res.x[:d] - res.x[d:], "highs", "optimal")
    if res.status == 2:
        return RowSolution(None, "highs", "infeasible")
    return RowSolution(None, "highs", "failed")


def bpdn_row(R: np.ndarray, y: np.ndarray, delta: float, *, kappa: float | None, constrained: np.ndarray,
             penalized: np.ndarray, sigma: np.ndarray | None = None,
             solvers: tuple[str, ...] = ("CLARABEL", "SCS")) -> RowSolution:
    """Basis-pursuit denoising, exact matching relaxed to a tolerance: ``min sum_j sigma_j |w_j|``
    (penalised ``j``) s.t. ``||R w - y|| <= delta``, ``||w_S||_1 <= kappa``; an SOCP for cvxpy
    (the reference and fallback of :func:`idlkit.sim.exact.basis_pursuit_rows` with
    ``eps > 0``, where ``delta^2 = eps^2 ||t||^2 - ||t - Q Q^T t||^2``).

    Args:
        R: ``(r, d)`` reduced factor.
        y: ``(r,)`` reduced target.
        delta: matching tolerance ``>= 0`` of ``||R w - y||``.
        kappa: l1 budget on ``constrained`` coordinates (None: no constraint).
        constrained: boolean ``(d,)`` mask of the l1-constrained coordinates.
        penalized: boolean ``(d,)`` mask of the penalised coordinates.
        sigma: ``(d,)`` penalty scales, or None for ones.
        solvers: cvxpy solvers tried in order.

    Returns:
        :class:`RowSolution`.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> F = rng.standard_normal((8, 4)); t = F @ np.array([1.0, 0.0, -0.5, 0.0])   # t in range(F)
        >>> fac = factor(F)
        >>> (y,), (res,) = fac.project(t[None, :])
        >>> mask = np.ones(4, dtype=bool)
        >>> sol = bpdn_row(fac.R, y, 0.1, kappa=None, constrained=mask, penalized=mask)
        >>> sol.status, bool(np.linalg.norm(fac.R @ sol.w - y) <= 0.1 + 1e-6)
        ('optimal', True)
    """
    import cvxpy as cp

    d = R.shape[1]
    w = cp.Variable(d)
    sg = np.ones(d) if sigma is None else np.asarray(sigma, dtype=np.float64)
    P = np.flatnonzero(penalized)
    obj = cp.sum(cp.multiply(sg[P], cp.abs(w[P]))) if P.size else cp.Constant(0.0)
    cons = [cp.norm(R @ w - y, 2) <= delta]
    S = np.flatnonzero(constrained)
    if kappa is not None and S.size:
        cons.append(cp.norm1(w[S]) <= kappa)
    return _first_solution(cp.Problem(cp.Minimize(obj), cons), w, solvers)


def _first_solution(problem: Any, w: Any, solvers: tuple[str, ...]) -> RowSolution:
    """Solve ``problem`` with the first installed solver of ``solvers`` that returns a solution
    for the variable ``w``; a solver that proves infeasibility ends the search."""
    import cvxpy as cp

    status = "failed"
    for name in solvers:
        if name not in cp.installed_solvers():
            continue
        status = _cvx_solve(problem, name)
        if status in ("optimal", "optimal_inaccurate") and w.value is not None:
            return RowSolution(np.asarray(w.value, dtype=np.float64), name.lower(), status)
        if status in ("infeasible", "infeasible_inaccurate"):
            return RowSolution(None, name.lower(), "infeasible")
    return RowSolution(None, ",".join(s.lower() for s in solvers), status)


def _cvx_solve(problem: object, solver: str) -> str:
    """Solve a cvxpy problem, mapping solver errors to the status ``"failed"``."""
    import cvxpy as cp

    try:
        problem.solve(solver=solver)  # type: ignore[attr-defined]
    except (cp.error.SolverError, ValueError, ArithmeticError):
        return "failed"
    return str(problem.status)  # type: ignore[attr-defined]


def relaxed_row(R: np.ndarray, y: np.ndarray, resid: float, *, objective: str, lam: float,
                weight: float, kappa: float | None, constrained: np.ndarray,
                penalized: np.ndarray, sigma: np.ndarray | None = None,
                solvers: tuple[str, ...] = ("CLARABEL", "SCS"), l1_ratio: float = 0.5) -> RowSolution:
    """The relaxed row problem of paper 002 App. C with cvxpy, trying ``solvers`` in order.

    ``objective="l1"`` (problem 11): ``min weight ||w_P||_1 + lam ||t - F w||^2``;
    ``objective="elastic_net"``: ``min weight (l1_ratio ||w_P||_1 + (1 - l1_ratio)/2 ||w_P||^2) +
    lam ||t - F w||^2``;
    ``objective="perspective"`` (problem 10): ``min weight sum_j (s_j + t_j) + lam ||t - F w||^2``
    with the rotated cones ``w_j^2 <= s_j t_j`` (eq. 5), ``t_j in [0, 1]``, ``s_j >= 0`` on the
    penalised coordinates; both subject to ``||w_S||_1 <= kappa`` (2d). ``||t - F w||^2`` is
    ``||y - R w||^2 + resid^2`` (module docstring). With ``sigma`` the penalty acts on
    ``sigma_j w_j`` (standardised).

    Args:
        R: ``(r, d)`` reduced factor.
        y: ``(r,)`` reduced target.
        resid: norm of the part of the target outside the range of ``F``.
        objective: ``"l1"``, ``"elastic_net"`` or ``"perspective"``.
        lam: weight of the fit term ``||t - F w||^2``.
        weight: weight of the penalty.
        kappa: l1 budget on ``constrained`` coordinates (None: no constraint).
        constrained: boolean ``(d,)`` mask of the l1-constrained coordinates.
        penalized: boolean ``(d,)`` mask of the penalised coordinates.
        sigma: ``(d,)`` penalty scales, or None for ones.
        solvers: cvxpy solvers tried in order.
        l1_ratio: l1 share of the elastic net, in ``[0, 1]``.

    Returns:
        :class:`RowSolution`.

    Raises:
        ConfigurationError: an unknown ``objective``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> F = rng.standard_normal((8, 4)); t = F @ np.array([1.0, 0.0, -0.5, 0.0])   # t in range(F)
        >>> fac = factor(F)
        >>> (y,), (res,) = fac.project(t[None, :])
        >>> mask = np.ones(4, dtype=bool)
        >>> sol = relaxed_row(fac.R, y, res, objective="l1", lam=1.0, weight=1e-3, kappa=None,
        ...                   constrained=mask, penalized=mask)
        >>> sol.status, bool(np.linalg.norm(F @ sol.w - t) < 0.01)
        ('optimal', True)
    """
    import cvxpy as cp

    check_choice("relaxed_row: objective", objective, ("l1", "perspective", "elastic_net"))
    d = R.shape[1]
    w = cp.Variable(d)
    fit = lam * (cp.sum_squares(R @ w - y) + resid**2)
    cons = []
    P = np.flatnonzero(penalized)
    sg = np.ones(d) if sigma is None else np.asarray(sigma, dtype=np.float64)
    v = cp.multiply(sg[P], w[P]) if P.size else None
    if objective == "l1":
        pen = weight * cp.norm1(v) if P.size else 0.0
    elif objective == "elastic_net":
        pen = (weight * (l1_ratio * cp.norm1(v) + 0.5 * (1.0 - l1_ratio) * cp.sum_squares(v))
               if P.size else 0.0)
    else:
        s = cp.Variable(P.size, nonneg=True)
        t = cp.Variable(P.size)
        # w^2 <= s t  <=>  ||(2 w, s - t)||_2 <= s + t  (rotated second-order cone, eq. 5)
        cons += [cp.SOC(s + t, cp.vstack([2 * v, s - t]), axis=0), t >= 0, t <= 1] if P.size else []
        pen = weight * (cp.sum(s) + cp.sum(t)) if P.size else 0.0
    S = np.flatnonzero(constrained)
    if kappa is not None and S.size:
        cons.append(cp.norm1(w[S]) <= kappa)
    return _first_solution(cp.Problem(cp.Minimize(pen + fit), cons), w, solvers)
