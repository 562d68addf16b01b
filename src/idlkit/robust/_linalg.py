"""Certified float64 solves of ``(I - M) X = R`` with ``M >= 0``, ``R >= 0`` (paper 000 §4, App. D).

Every bound of paper 000 §4.2-4.3 has the form ``X = (I - M)^-1 R`` with ``M = Gamma N(A)``
nonnegative and ``lambda_pf(M) < 1``, so that ``(I - M)^-1 = sum_k M^k >= 0``. This module
computes such an ``X`` and makes it a *certified upper bound*, whatever the rounding of the
solve (dense LU, sparse LU or the fixed-point iteration of Thm 4.1):

1. One extra right-hand side, ``(I - M) v = 1``, gives the hypothesis: ``v > 0`` with
   ``(I - M) v > 0`` proves ``lambda_pf(M) <= max_i (M v)_i / v_i < 1`` (Collatz-Wielandt),
   so no separate eigenvalue computation is needed.
2. With the residual ``E = R - (I - M) X`` (plus a bound on its own rounding), the corrected
   ``X' = X + v max_i(E_i)_+ / min_i((I - M) v)_i`` satisfies ``(I - M) X' >= R``, hence
   ``X' >= (I - M)^-1 R`` because ``(I - M)^-1 >= 0``. The correction is of the order of the
   solve's rounding (1e-16 relative) when the solve succeeded.

Matrices here are float64 numpy arrays or scipy CSR arrays; the torch side lives in
:mod:`idlkit.robust._model`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .._validation import check_choice
from ..errors import ConvergenceError, WellPosednessError

__all__ = ["SolveCertificate", "solve_nonneg", "METHODS"]

METHODS = ("auto", "solve", "iterate")
_EPS = float(np.finfo(np.float64).eps)
_MIXED_MIN_N = 2000  # dense systems this large: float32 LU + float64 iterative refinement


@dataclass(frozen=True)
class SolveCertificate:
    """How a bound ``(I - M)^-1 R`` was computed and certified (float64).

    Attributes:
        method: ``"dense-lu"``, ``"dense-lu-mixed"`` (float32 LU with float64 refinement),
            ``"sparse-lu"``, ``"sparse-triangular"`` or ``"iterate"`` (Thm 4.1's fixed point).
        pf_upper: Collatz-Wielandt upper bound on ``lambda_pf(M)`` (certified ``< 1``).
        correction: relative size of the certification correction added to the solve
            (``0`` when the solve's residual was already nonpositive).
        iterations: fixed-point iterations (0 for the direct solves).
    """

    method: str
    pf_upper: float
    correction: float
    iterations: int = 0


def _matmul(M: np.ndarray | sp.csr_array, X: np.ndarray) -> np.ndarray:
    return np.asarray(M @ X)


def _dense_solve(K: np.ndarray, rhs: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, str]:
    import scipy.linalg as sla

    n = K.shape[0]
    if n < _MIXED_MIN_N:
        return sla.solve(K, rhs, check_finite=False), "dense-lu"
    import torch

    K32 = torch.from_numpy(K).to(torch.float32)
    LU, piv, info = torch.linalg.lu_factor_ex(K32)
    if int(info) != 0:
        raise np.linalg.LinAlgError("singular float32 LU")
    R = torch.from_numpy(rhs)
    X = torch.linalg.lu_solve(LU, piv, R.to(torch.float32)).to(torch.float64)
    Mt = torch.from_numpy(M)
    scale = float(R.abs().max()) or 1.0
    for _ in range(8):  # mixed-precision iterative refinement (LAPACK dsgesv's scheme)
        res = R - (X - Mt @ X)
        if float(res.abs().max()) <= 4 * n * _EPS * max(scale, float(X.abs().max())):
            break
        X = X + torch.linalg.lu_solve(LU, piv, res.to(torch.float32)).to(torch.float64)
    else:  # refinement stalled (ill-conditioned): plain float64 LU
        return sla.solve(K, rhs, check_finite=False), "dense-lu"
    return X.numpy(), "dense-lu-mixed"


def _sparse_solve(M: sp.csr_array, rhs: np.ndarray) -> tuple[np.ndarray, str]:
    from scipy.sparse.linalg import splu, spsolve_triangular

    n = M.shape[0]
    K = (sp.eye_array(n, format="csr") - M).tocsr()
    if sp.triu(M, k=1).nnz == M.nnz:
        return spsolve_triangular(K, rhs, lower=False), "sparse-triangular"
    if sp.tril(M, k=-1).nnz == M.nnz:
        return spsolve_triangular(K, rhs, lower=True), "sparse-triangular"
    return splu(K.tocsc()).solve(rhs), "sparse-lu"


def _iterate(M: np.ndarray | sp.csr_array, rhs: np.ndarray, tol: float, max_iter: int
             ) -> tuple[np.ndarray, int]:
    """``X(t+1) = M X(t) + R`` from ``X(0) = 0`` (paper 000 §4.2, after Thm 4.1)."""
    X = rhs.copy()
    for it in range(1, max_iter + 1):
        X_new = _matmul(M, X) + rhs
        done = float(np.abs(X_new - X).max(initial=0.0)) <= tol * float(np.abs(X_new).max(initial=0.0))
        X = X_new
        if done or not np.isfinite(X).all():
            return X, it
    return X, max_iter


def _pf_message(M: np.ndarray | sp.csr_array, what: str) -> str:
    from ..wellposed import pf_eigenvalue

    try:
        lam = f"{pf_eigenvalue(M):.6g}"
    except Exception:  # pragma: no cover - the message must not fail
        lam = "unknown"
    return (f"{what} needs lambda_pf({_M_NAME}) < 1 (paper 000 Thm 4.1-4.4), but it could not be "
            f"certified: lambda_pf = {lam}. Fix: make the model well-posed first (model.project_(), "
            f"idlkit.wellposed.rescale or a smaller kappa)")


_M_NAME = "Gamma N(A)"


def solve_nonneg(M: np.ndarray | sp.csr_array, R: np.ndarray, *, transpose: bool = False,
                 method: str = "auto", what: str = "the bound", tol: float = 1e-13,
                 max_iter: int = 100_000) -> tuple[np.ndarray, SolveCertificate]:
    """Certified upper bound ``X >= (I - M)^-1 R`` (``(I - M^T)^-1 R`` with ``transpose``), float64.

    Args:
        M: nonnegative ``(L, L)`` matrix (``Gamma N(A)``), dense or scipy sparse.
        R: nonnegative ``(L, r)`` right-hand sides (dense).
        method: ``"solve"`` (dense LU; sparse LU, or a triangular solve when ``M`` is
            triangular), ``"iterate"`` (the fixed-point iteration of §4.2) or ``"auto"``
            (the solve, falling back to the iteration when the factorisation fails).
        what: the bound's name, for error messages.

    Raises:
        WellPosednessError: ``lambda_pf(M) < 1`` could not be certified (the message gives
            ``lambda_pf(M)``).
        ConvergenceError: ``method="iterate"`` did not converge within ``max_iter``.
    """
    check_choice("method", method, METHODS)
    L, r = R.shape
    if transpose:
        M = M.T.tocsr() if sp.issparse(M) else np.ascontiguousarray(M.T)
    if L == 0:
        return np.zeros((0, r)), SolveCertificate("none", 0.0, 0.0)
    rhs = np.concatenate([R, np.ones((L, 1))], axis=1)
    sol, used, iters = None, method, 0
    if method in ("auto", "solve"):
        try:
            if sp.issparse(M):
                sol, used = _sparse_solve(M, rhs)
            else:
                sol, used = _dense_solve(np.eye(L) - M, rhs, M)
            if not np.isfinite(sol).all():
                raise np.linalg.LinAlgError("non-finite solution")
        except (np.linalg.LinAlgError, RuntimeError, MemoryError) as exc:
            if method == "solve":
                raise WellPosednessError(_pf_message(M, what) + f" (the linear solve failed: {exc})") from exc
            sol = None
    if sol is None:
        sol, iters = _iterate(M, rhs, tol, max_iter)
        used = "iterate"
    X, v = sol[:, :r], sol[:, r]
    # certificate of the hypothesis: v > 0 and (I - M) v > 0  =>  lambda_pf(M) < 1
    Mv = _matmul(M, v)
    w = v - Mv
    slack_v = (L + 2) * _EPS * (Mv + np.abs(v))
    c = float((w - slack_v).min())
    if not (np.all(v > 0) and c > 0 and math.isfinite(c)):
        if used == "iterate" and iters >= max_iter:
            raise ConvergenceError(f"the fixed-point iteration for {what} did not converge in "
                                   f"{max_iter} iterations; use method='solve'")
        raise WellPosednessError(_pf_message(M, what))
    pf_upper = float(np.max(Mv / v))
    # certified correction: (I - M) X' >= R  =>  X' >= (I - M)^-1 R
    X = np.maximum(X, 0.0)
    MX = _matmul(M, X)
    E = R - (X - MX) + (L + 2) * _EPS * (MX + X + R)
    t = np.maximum(E.max(axis=0), 0.0) / c
    if np.any(t > 0):
        X = X + v[:, None] * t[None, :]
    scale = float(X.max(initial=0.0)) or 1.0
    corr = float((t * v.max()).max(initial=0.0)) / scale
    return X, SolveCertificate(used, pf_upper, corr, iters)
