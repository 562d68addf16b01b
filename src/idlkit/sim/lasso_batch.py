"""Batched constrained LASSO for SIM: every row of (A, B) at once (thesis ch. 3, eq. 3.4, Alg. 2).

For each row ``i`` the state-matching problem of thesis eq. 3.4 (``ell = 0``) on the shared Gram
matrix ``G = F^T F`` reads

    P_i(kappa_i):  min_w 1/2 w^T G w - c_i^T w   subject to   ||w_S||_1 <= kappa_i,

with ``c_i = F^T z_i`` and ``S`` the constrained coordinates (``mask``; all when None). The thesis
solves P(kappa) through bisection on the penalised problem Q(lam) (Alg. 1, Lemmas 1-2), one row
after the other with warm starts (Alg. 2); :mod:`idlkit.sim.lasso` implements that exactly.
This module solves all rows *together* on the constrained problem directly, with SIM's one
batched engine, in three steps:

* Inactive constraint (thesis assumption A1 violated): after the exact elimination of the free
  coordinates ``U = ~S`` (:func:`idlkit.sim._gram.eliminate_free`: ``w_U = G_UU^+ (c_U - G_US
  w_S)`` leaves ``min 1/2 w_S^T H w_S - b^T w_S`` with the Schur complement ``H``), rows whose
  least-squares solution ``H^+ b`` meets the budget are returned at once with status
  ``"inactive"`` (the eigen cut-off is relative to ``G``, not ``H``: a Schur complement that is
  round-off of ``G`` counts as zero).
* The other rows: :func:`idlkit.sim.penalized.penalized_rows` with ``weight = 0``, ``lam = 1/2``
  (accelerated projected gradient in the column-normalised coordinates, momentum restart, the
  exact weighted l1-ball projection; the thesis analyses proximal gradient on Q(lam), Lemma 3:
  here the prox is the projection of the constrained problem). A row stops on the Fenchel
  duality gap, ``gap <= tol * P(0)`` with ``P(0) = 1/2 ||P_F z||^2`` (the objective at
  ``w_S = 0``, taking ``||z||^2 = c^T G^+ c`` unless ``zz`` gives it; the part of ``z`` outside
  ``range(F)`` is a constant of the problem), a certificate ``f(w) - f* <= gap``.
* Polishing: rows that do not reach ``tol`` within ``max_iter`` are handed to the exact solver
  :func:`idlkit.sim.lasso.constrained_lasso` (bisection on Q(lam) with the exact piecewise-linear
  step; status ``"fallback"``), or reported as ``"max_iter"`` when ``polish=False``. No row is
  silently left unsolved.

float64; the batched iterations run with torch ops on ``device`` (default CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from idlkit._validation import check_int, check_tol
from idlkit.sim._gram import FreeElimination, eliminate_free, lstsq_rows, psd_eig
from idlkit.sim.lasso import _as_float_array, _check_mask, _check_rows, constrained_lasso
from idlkit.sim.penalized import penalized_rows

__all__ = ["BatchLassoResult", "FreeElimination", "constrained_lasso_batch", "eliminate_free"]

_TINY = 1e-300


@dataclass(frozen=True)
class BatchLassoResult:
    """Per-row solutions of :func:`constrained_lasso_batch` (row ``i`` of each array is row ``i``).

    Attributes:
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
    W0: object | None = None,
    zz: object | None = None,
    device: Any = None,
) -> BatchLassoResult:
    """Solve P(kappa_i) for all rows ``C[i] = F^T z_i`` together (thesis eq. 3.4, Alg. 2, batched).

    Args:
        G: Gram matrix ``F^T F`` (n x n), shared by every row.
        C: (rows, n), row ``i`` is ``F^T z_i``.
        kappa: l1 budget, a scalar or one value per row, each > 0.
        mask: boolean (n,), the constrained coordinates ``S`` (None: all, as in Alg. 1).
        tol: relative duality-gap tolerance (``gap <= tol * P(0)``, module docstring).
        max_iter: FISTA iteration limit per row.
        polish: hand rows that did not reach ``tol`` to the exact solver
            :func:`idlkit.sim.lasso.constrained_lasso` (status ``"fallback"``).
        check_every: evaluate the duality gap every this many iterations (the objective, used for
            the restart, is evaluated every iteration).
        W0: optional warm start (rows, n) (projected onto the budget).
        zz: optional ``||z_i||^2`` per row (the scale ``P(0)`` of the stopping rule; default
            ``c_i^T G^+ c_i``).
        device: torch device of the batched iterations (None: the CPU).

    See the module docstring for the method. Returns a :class:`BatchLassoResult` (numpy).

    Returns:
        :class:`BatchLassoResult` (NumPy arrays), one entry per row.

    Examples:
        >>> F = np.random.default_rng(0).normal(size=(40, 6)); Z = F[:, :3].T  # z_i = F e_i
        >>> res = constrained_lasso_batch(F.T @ F, Z @ F, 0.5)
        >>> res.status, bool(np.all(res.l1 <= 0.5 + 1e-12))
        (('optimal', 'optimal', 'optimal'), True)
    """
    Ga, Ca, kap = _check_rows(G, C, kappa)
    n, r = Ga.shape[0], Ca.shape[0]
    pen = _check_mask(mask, n)
    tol_f = check_tol(tol)
    check_int("max_iter", max_iter, 1)
    check_int("check_every", check_every, 1)

    S = np.flatnonzero(pen)
    W = np.zeros((r, n))
    gap = np.zeros(r)
    iters = np.zeros(r, dtype=np.int64)
    status = ["optimal"] * r
    if r == 0:
        return BatchLassoResult(W, np.zeros(0), np.zeros(0), gap, iters, (), np.zeros(0), np.zeros(0))

    # inactive rows: the least-squares solution H^+ b of the reduced problem meets the budget
    red = eliminate_free(Ga, Ca, ~pen)
    if S.size:
        ev, V, _ = psd_eig(torch.from_numpy(red.H))
        ev, V = ev.numpy(), V.numpy()
        # cut-off relative to G (not H): a Schur complement that is round-off of G counts as zero
        cut = max(float(np.max(np.abs(np.diag(Ga)))), _TINY) * n * np.finfo(np.float64).eps
        inv = np.where(ev > cut, 1.0 / np.where(ev > cut, ev, 1.0), 0.0)
        X_ls = ((red.B @ V) * inv) @ V.T  # min-norm least squares H^+ b per row
        inactive = np.sum(np.abs(X_ls), axis=1) <= kap
    else:  # no constrained coordinate: plain least squares
        X_ls, inactive = np.zeros((r, 0)), np.ones(r, dtype=bool)
    XS = np.where(inactive[:, None], X_ls, 0.0)
    W[:, S] = XS
    if (~pen).any():
        W[:, ~pen] = red.free_part(XS)  # rows solved below are overwritten
    for i in np.flatnonzero(inactive):
        status[i] = "inactive"

    todo = np.flatnonzero(~inactive)
    if todo.size:
        if zz is None:
            tt = np.einsum("ij,ij->i", lstsq_rows(Ga, Ca[todo]), Ca[todo])  # ||P_F z||^2
        else:
            tt = _as_float_array(zz, "zz", 1)[todo]
        res = penalized_rows(Ga, Ca[todo], tt, lam=0.5, penalty="l1", weight=0.0, kappa=kap[todo],
                             constrained=pen, free=~pen, W0=None if W0 is None else np.asarray(W0)[todo],
                             tol=tol_f, max_iter=int(max_iter), check_every=int(check_every), device=device)
        W[todo] = res.W
        gap[todo] = res.gap
        iters[todo] = res.iterations
        for k, i in enumerate(todo):
            status[i] = res.status[k]

    if polish:
        for i in [i for i in range(r) if status[i] == "max_iter"]:
            ex = constrained_lasso(Ga, Ca[i], float(kap[i]), pen, tol=1e-12)
            W[i] = ex.w
            gap[i] = np.nan
            status[i] = "fallback" if ex.status in ("optimal", "inactive") else f"fallback-{ex.status}"

    objective = 0.5 * np.einsum("ij,ij->i", W @ Ga, W) - np.einsum("ij,ij->i", Ca, W)
    l1 = np.sum(np.abs(W[:, pen]), axis=1)
    active = np.array([s != "inactive" for s in status]) & (l1 >= kap * (1.0 - 1e-9))
    kkt, lam = _kkt_rows(Ga, Ca, W, pen, active)
    return BatchLassoResult(
        W=W, objective=objective, l1=l1, gap=gap, iterations=iters, status=tuple(status), kkt=kkt, lam=lam
    )
