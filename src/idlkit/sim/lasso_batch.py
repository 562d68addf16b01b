"""Batched constrained LASSO for SIM: every row of (A, B) at once (thesis ch. 3, eq. 3.4, Alg. 2).

For each row ``i`` the state-matching problem of thesis eq. 3.4 (``ell = 0``) on the shared Gram
matrix ``G = F^T F`` reads

    P_i(kappa_i):  min_w 1/2 w^T G w - c_i^T w   subject to   ||w_S||_1 <= kappa_i,

with ``c_i = F^T z_i`` and ``S`` the constrained coordinates (``mask``; all when None). The thesis
solves P(kappa) through bisection on the penalised problem Q(lam) (Alg. 1, Lemmas 1-2), one row
after the other with warm starts (Alg. 2); :mod:`idlkit.sim.lasso` implements that exactly.
This module solves all rows *together* on the constrained problem directly:

* Free coordinates ``U = ~S`` are eliminated exactly (partial minimisation of a convex quadratic):
  ``w_U = G_UU^+ (c_U - G_US w_S)`` leaves the reduced problem
  ``min 1/2 w_S^T H w_S - b^T w_S`` s.t. ``||w_S||_1 <= kappa`` with the Schur complement
  ``H = G_SS - G_SU G_UU^+ G_US`` and ``b = c_S - G_SU G_UU^+ c_U``. For SIM (eq. 3.4 constrains
  only the A-part) this shrinks the iteration from ``n + p`` to ``n`` unknowns. Deviation from
  the thesis, which iterates on the full vector; exact when ``c_U`` lies in the range of ``G_UU``
  (always true for a Gram matrix ``F^T F`` and ``c = F^T z``).
* Accelerated projected gradient (FISTA) with step ``1/L``, ``L = lambda_max(H)`` (one ``eigvalsh``
  shared by all rows; ``L <= lambda_max(G)``), one GEMM ``X @ H`` per iteration for all active rows
  (the gradient at the extrapolated point is the same linear combination of the stored products),
  momentum restart per row when the objective increases (O'Donoghue & Candes), and the exact
  row-wise l1-ball projection of :func:`idlkit.wellposed._project_rows_l1` (sort based; per-row
  radii by scaling, ``P_r(v) = r P_1(v / r)``). The thesis analyses proximal gradient on Q(lam)
  (Lemma 3); here the prox is replaced by the projection of the constrained problem.
* Stopping, per row, on the Frank-Wolfe duality gap of the reduced problem,
  ``gap = g^T w + kappa ||g||_inf >= f(w) - f*`` with ``g = H w - b`` (a certificate: the
  objective error is at most ``gap``); a row stops when ``gap <= tol * max(|objective|, tiny)``
  and is then frozen.
* Inactive constraint (thesis assumption A1 violated): rows whose least-squares solution
  ``H^+ b`` is feasible are returned at once with status ``"inactive"``.
* Polishing: rows that do not reach ``tol`` within ``max_iter`` are handed to the exact solver
  :func:`idlkit.sim.lasso.constrained_lasso` (status ``"fallback"``), or reported as
  ``"max_iter"`` when ``polish=False``. No row is silently left unsolved.

Pure numpy/torch on the CPU, float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from idlkit._validation import check_int, check_tol
from idlkit.sim.lasso import _check_mask, _check_rows, constrained_lasso
from idlkit.wellposed import _project_rows_l1

__all__ = ["BatchLassoResult", "FreeElimination", "constrained_lasso_batch", "eliminate_free"]

_TINY = 1e-300


@dataclass(frozen=True)
class BatchLassoResult:
    """Per-row solutions of :func:`constrained_lasso_batch` (row ``i`` of each array is row ``i``).

    Attributes
    ----------
    W: (rows, n) solutions ``(a, b)``.
    objective: ``1/2 w^T G w - c^T w`` per row (add ``1/2 ||z||^2`` for ``1/2 ||z - F w||^2``).
    l1: ``||w_S||_1`` per row (<= kappa).
    gap: duality-gap certificate ``f(w) - f* <= gap`` per row (reduced problem; 0 for
        ``"inactive"`` rows, NaN for ``"fallback"`` rows, which carry the exact solver's KKT check).
    iterations: FISTA iterations per row (0 for ``"inactive"`` rows).
    status: ``"optimal"`` (gap <= tol), ``"inactive"`` (least-squares solution feasible),
        ``"fallback"`` (FISTA hit ``max_iter``; solved by :func:`idlkit.sim.lasso.constrained_lasso`),
        ``"fallback-<its status>"`` when that solver did not verify optimality, ``"max_iter"``
        (FISTA hit ``max_iter`` and ``polish=False``).
    kkt: largest KKT violation of P(kappa) per row (Lemma 2's stationarity conditions with the
        multiplier ``lam = ||(c - G w)_S||_inf`` for active rows, 0 otherwise), relative to
        ``max(||c||_inf, lam)`` as in :mod:`idlkit.sim.lasso`.
    lam: that multiplier per row.
    """

    W: np.ndarray
    objective: np.ndarray
    l1: np.ndarray
    gap: np.ndarray
    iterations: np.ndarray
    status: tuple[str, ...]
    kkt: np.ndarray
    lam: np.ndarray


def _pinv_sym(M: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of a symmetric PSD matrix through one ``eigh`` (cut-off as numpy's pinv)."""
    if M.size == 0:
        return M.copy()
    ev, V = np.linalg.eigh(M)
    cut = max(float(np.max(np.abs(ev))), _TINY) * M.shape[0] * np.finfo(np.float64).eps
    inv = np.where(ev > cut, 1.0 / np.where(ev > cut, ev, 1.0), 0.0)
    P = (V * inv) @ V.T
    return 0.5 * (P + P.T)


@dataclass(frozen=True)
class FreeElimination:
    """Exact partial minimisation of ``1/2 w^T G w - c_i^T w`` over free coordinates ``U``.

    ``w_U = G_UU^+ (c_U - G_US w_S)`` leaves ``1/2 w_S^T H w_S - b_i^T w_S + const_i`` with the
    Schur complement ``H = G_SS - G_SU G_UU^+ G_US``, ``b_i = c_S - G_SU G_UU^+ c_U`` and
    ``const_i = -1/2 c_U^T G_UU^+ c_U`` (exact when ``c_U`` lies in the range of ``G_UU``, as
    for ``G = F^T F``, ``c = F^T z``).
    """

    H: np.ndarray
    B: np.ndarray
    const: np.ndarray
    _CU: np.ndarray
    _PU: np.ndarray
    _K: np.ndarray

    def free_part(self, XS: np.ndarray) -> np.ndarray:
        """The optimal free coordinates ``w_U`` for the rows ``w_S`` of ``XS``."""
        return self._CU @ self._PU - XS @ self._K


def eliminate_free(G: np.ndarray, C: np.ndarray, free: np.ndarray) -> FreeElimination:
    """:class:`FreeElimination` of the ``free`` coordinates (boolean mask) of all rows of ``C``."""
    S, U = np.flatnonzero(~free), np.flatnonzero(free)
    if not U.size:
        empty = np.zeros((0, 0))
        return FreeElimination(G, C.copy(), np.zeros(C.shape[0]), np.zeros((C.shape[0], 0)), empty,
                               np.zeros((S.size, 0)))
    PU = _pinv_sym(G[np.ix_(U, U)])
    GSU = G[np.ix_(S, U)]
    K = GSU @ PU  # G_SU G_UU^+
    H = G[np.ix_(S, S)] - K @ GSU.T
    CU = C[:, U]
    return FreeElimination(0.5 * (H + H.T), C[:, S] - CU @ K.T,
                           -0.5 * np.einsum("ij,ij->i", CU @ PU, CU), CU, PU, K)


def _project(V: np.ndarray, kap: np.ndarray) -> np.ndarray:
    """Row ``i`` of ``V`` projected onto ``{||v||_1 <= kap_i}`` (exact, via ``_project_rows_l1``)."""
    T = torch.from_numpy(V / kap[:, None])
    return _project_rows_l1(T, 1.0).numpy() * kap[:, None]


def _kkt_rows(
    G: np.ndarray, C: np.ndarray, W: np.ndarray, pen: np.ndarray, active: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`idlkit.sim.lasso._kkt_violation` with ``lam = ||r_S||_inf`` on active rows."""
    R = C - W @ G
    lam = np.where(active, np.max(np.abs(R[:, pen]), axis=1, initial=0.0), 0.0)
    L = lam[:, None]
    V = np.where(
        pen[None, :],
        np.where(W != 0.0, np.abs(R - L * np.sign(W)), np.maximum(np.abs(R) - L, 0.0)),
        np.abs(R),
    )
    scale = np.maximum(np.maximum(np.max(np.abs(C), axis=1), lam), _TINY)
    return np.max(V, axis=1) / scale, lam


def constrained_lasso_batch(
    G: object,
    C: object,
    kappa: float | object,
    mask: object | None = None,
    *,
    tol: float = 1e-10,
    max_iter: int = 20_000,
    polish: bool = True,
    check_every: int = 10,
) -> BatchLassoResult:
    """Solve P(kappa_i) for all rows ``C[i] = F^T z_i`` together (thesis eq. 3.4, Alg. 2, batched).

    Parameters
    ----------
    G: Gram matrix ``F^T F`` (n x n), shared by every row.
    C: (rows, n), row ``i`` is ``F^T z_i``.
    kappa: l1 budget, a scalar or one value per row, each > 0.
    mask: boolean (n,), the constrained coordinates ``S`` (None: all, as in Alg. 1).
    tol: relative duality-gap tolerance (``gap <= tol * |objective|``).
    max_iter: FISTA iteration limit per row.
    polish: hand rows that did not reach ``tol`` to the exact solver
        :func:`idlkit.sim.lasso.constrained_lasso` (status ``"fallback"``).
    check_every: evaluate the duality gap every this many iterations (the objective, used for
        the restart, is evaluated every iteration).

    See the module docstring for the method. Returns a :class:`BatchLassoResult`.
    """
    Ga, Ca, kap = _check_rows(G, C, kappa)
    n, r = Ga.shape[0], Ca.shape[0]
    pen = _check_mask(mask, n)
    tol_f = check_tol(tol)
    check_int("max_iter", max_iter, 1)
    check_int("check_every", check_every, 1)
    max_it, every = int(max_iter), int(check_every)

    S, U = np.flatnonzero(pen), np.flatnonzero(~pen)
    W = np.zeros((r, n))
    gap = np.zeros(r)
    iters = np.zeros(r, dtype=np.int64)
    status = ["optimal"] * r
    if r == 0:
        return BatchLassoResult(W, np.zeros(0), np.zeros(0), gap, iters, (), np.zeros(0), np.zeros(0))

    # exact elimination of the free coordinates: Schur complement H, reduced linear term B
    red = eliminate_free(Ga, Ca, ~pen)
    H, B, const = red.H, red.B, red.const

    if S.size:
        ev, V = np.linalg.eigh(H)
        Lip = float(ev[-1])
        # cut-off relative to G (not H): a Schur complement that is round-off of G counts as zero
        gscale = max(float(np.max(np.abs(np.diag(Ga)))), _TINY)
        cut = gscale * n * np.finfo(np.float64).eps
        inv = np.where(ev > cut, 1.0 / np.where(ev > cut, ev, 1.0), 0.0)
        X_ls = ((B @ V) * inv) @ V.T  # min-norm least squares H^+ b per row
        inactive = np.sum(np.abs(X_ls), axis=1) <= kap
    else:  # no constrained coordinate: plain least squares
        Lip, cut, gscale = 0.0, 0.0, 1.0
        X_ls, inactive = np.zeros((r, 0)), np.ones(r, dtype=bool)

    XS = np.zeros((r, S.size))
    XS[inactive] = X_ls[inactive]
    for i in np.flatnonzero(inactive):
        status[i] = "inactive"

    todo = np.flatnonzero(~inactive)
    if todo.size and Lip <= cut:  # H is round-off: take a unit step (b is round-off too for a Gram G)
        Lip = max(Lip, gscale)
    if todo.size:
        Bt, kt = B[todo], kap[todo]
        X = np.zeros_like(Bt)  # feasible start
        XH = np.zeros_like(Bt)
        Xp, XHp = X.copy(), XH.copy()
        f = np.zeros(todo.size)
        t = np.ones(todo.size)
        act = np.arange(todo.size)  # positions (in todo) still iterating
        it_row = np.zeros(todo.size, dtype=np.int64)
        gap_row = np.full(todo.size, np.inf)
        ctd = const[todo]
        k = 0
        while act.size and k < max_it:
            k += 1
            tn = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t[act] ** 2))
            beta = ((t[act] - 1.0) / tn)[:, None]
            Xa, XHa = X[act], XH[act]
            Y = Xa + beta * (Xa - Xp[act])
            YH = XHa + beta * (XHa - XHp[act])
            Ba = Bt[act]
            Xn = _project(Y - (YH - Ba) / Lip, kt[act])
            XHn = Xn @ H  # the one GEMM of the iteration
            fn = 0.5 * np.einsum("ij,ij->i", Xn, XHn) - np.einsum("ij,ij->i", Ba, Xn)
            up = fn > f[act]
            tn = np.where(up, 1.0, tn)  # restart the momentum of rows whose objective went up
            Xp[act], XHp[act] = Xa, XHa
            X[act], XH[act] = Xn, XHn
            f[act], t[act] = fn, tn
            it_row[act] = k
            if k % every == 0 or k == max_it:
                g = XHn - Ba
                gp = np.einsum("ij,ij->i", g, Xn) + kt[act] * np.max(np.abs(g), axis=1)
                gap_row[act] = gp
                done = gp <= tol_f * np.maximum(np.abs(fn + ctd[act]), _TINY)
                act = act[~done]
        XS[todo] = X
        gap[todo] = gap_row
        iters[todo] = it_row
        for j in act:
            status[int(todo[j])] = "max_iter"

    W[:, S] = XS
    if U.size:
        W[:, U] = red.free_part(XS)

    if polish:
        for i in [i for i in range(r) if status[i] == "max_iter"]:
            res = constrained_lasso(Ga, Ca[i], float(kap[i]), pen, tol=1e-12)
            W[i] = res.w
            gap[i] = np.nan
            status[i] = "fallback" if res.status in ("optimal", "inactive") else f"fallback-{res.status}"

    objective = 0.5 * np.einsum("ij,ij->i", W @ Ga, W) - np.einsum("ij,ij->i", Ca, W)
    l1 = np.sum(np.abs(W[:, pen]), axis=1)
    active = np.array([s != "inactive" for s in status]) & (l1 >= kap * (1.0 - 1e-9))
    kkt, lam = _kkt_rows(Ga, Ca, W, pen, active)
    return BatchLassoResult(
        W=W, objective=objective, l1=l1, gap=gap, iterations=iters, status=tuple(status), kkt=kkt, lam=lam
    )
