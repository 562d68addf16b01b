"""Constrained LASSO row solver for SIM (thesis ch. 3, Alg. 1-2).

For one row of (A, B) the state-matching problem (thesis eq. 3.4, with ``ell = 0``) is

    P(kappa):  min_w 1/2 ||z - F w||_2^2   subject to   ||w_S||_1 <= kappa,

with ``F = [X; U]^T`` (the thesis's ``M = (X^T, U^T)``), ``w = (a, b)`` and ``S`` the
penalised coordinates (``mask``). Eq. 3.4 constrains only the A-part ``a``; the thesis's
Algorithm Design paragraph overloads ``a := (a, b)`` and constrains the whole row. Both are
covered here: ``mask=None`` constrains every coordinate (Alg. 1 as written), a boolean mask
constrains only the selected ones (eq. 3.4, ``mask`` = the A-columns) and leaves the others free.

Following the thesis, P(kappa) is solved through the penalised problem

    Q(lam):  min_w 1/2 w^T G w - c^T w + lam ||w_S||_1,     G = F^T F,  c = F^T z,

(``1/2||z - Fw||^2 = 1/2 w^T G w - c^T w + 1/2||z||^2``): by Lemma 1 ``g(lam) = ||w*_Q(lam),S||_1``
(eq. 3.6-3.7) is continuous, piecewise linear and non-increasing, and by Lemma 2 the solution of
``Q(lam_kappa)`` with ``g(lam_kappa) = kappa`` solves P(kappa). Alg. 1 bisects on
``lam in [0, lam_max]`` and each Q(lam) is warm-started from the previous solution (Lemma 4,
Theorem 4). All functions work on the Gram matrix only, so ``G`` is formed once for all rows
(every row shares ``F``; only ``c = F^T z`` differs) -- Alg. 2.

Deviations from the thesis (all documented where they occur):

* Inner solver: cyclic coordinate descent with active-set sweeps on the Gram matrix
  (:func:`lasso_cd`) instead of the proximal-gradient method of Lemma 3.
* Exactness: the thesis stops bisection at ``u - l < eps`` (eps = 0.01 in its experiments),
  which leaves the constraint only approximately active. Because ``g`` is piecewise linear
  (Lemma 1) and, on one linear piece, the solution is ``w_E(lam) = G_EE^+ (c_E - lam s_E)``
  for the active set ``E`` and signs ``s``, after every bisection step we solve
  ``s^T w_E(lam) = kappa`` for ``lam`` in closed form (a homotopy / Newton step on ``g``) and
  accept it when the KKT conditions of P(kappa) (Lemma 2's list) hold to round-off. Bisection is
  the safeguard; the answer is then exact, not eps-approximate.
* ``lam_max``: the thesis uses ``||M^T z||_inf``; with unpenalised coordinates the bracket is
  ``||(c - G w_U)_S||_inf`` with ``w_U`` the least-squares fit on the free coordinates only.
* Inactive constraint (thesis assumption A1 violated): ``lam_kappa = 0`` whenever *some*
  least-squares solution satisfies ``||w_S||_1 <= kappa``. When ``G`` is singular the
  least-squares solutions form an affine set, and the minimum-norm one ``G^+ c`` need not be the
  one with the smallest ``||w_S||_1``, so three candidates are checked (each by the KKT
  conditions of P(kappa) with ``lam = 0``, i.e. ``c - G w = 0``, Lemma 2): ``G^+ c``; the
  free-only fit ``(w_S, w_U) = (0, G_UU^+ c_U)``, which is a least-squares solution exactly when
  ``lam_max = 0`` (e.g. the free columns span the samples, so ``F_U w_U = z`` is solvable); and
  the end ``lam -> 0`` of the last linear piece of the path, ``w_E(0) = G_EE^+ c_E``, found by the
  exact step when its closed-form ``lam`` is negative (``g(0+) < kappa``: the path never reaches
  the budget). Any of them is returned with ``lam = 0`` and status ``"inactive"``.
* Alg. 2 warm-starts row ``i`` from row ``i - 1``; :func:`constrained_lasso_rows` does this
  (the previous row's ``w`` and ``lam`` seed the next row's first bisection step).

Pure numpy, float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from idlkit._validation import check_int, check_kappa, check_positive
from idlkit.errors import ConfigurationError, NonFiniteError, ShapeError
from idlkit.sim._gram import pinv_psd

__all__ = [
    "gram",
    "lasso_cd",
    "LassoCDResult",
    "ConstrainedLassoResult",
    "ConstrainedLassoRowsResult",
    "constrained_lasso",
    "constrained_lasso_rows",
]


# ----------------------------------------------------------------------------------------------
# validation helpers


def _as_float_array(x: object, name: str, ndim: int) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"{name} must be a real numeric array; got {type(x).__name__}") from exc
    if a.ndim != ndim:
        raise ShapeError(f"{name} must be {ndim}-D; got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise NonFiniteError(f"{name} contains {bad} NaN/Inf entries; clean the states before fitting")
    return a


def _check_gram(G: object) -> np.ndarray:
    Ga = _as_float_array(G, "G", 2)
    n, m = Ga.shape
    if n != m:
        raise ShapeError(f"G must be square (the Gram matrix F^T F); got shape {Ga.shape}")
    if n == 0:
        raise ShapeError("G is empty: the row problem has no unknowns")
    scale = max(float(np.max(np.abs(Ga))), 1e-300)
    if not np.allclose(Ga, Ga.T, rtol=0.0, atol=1e-10 * scale):
        raise ShapeError("G must be symmetric (the Gram matrix F^T F); build it with gram(F)")
    if np.any(np.diag(Ga) < -1e-12 * scale):
        raise ConfigurationError("G has a negative diagonal entry, so it is not a Gram matrix F^T F")
    return np.ascontiguousarray(Ga)


def _check_mask(mask: object, n: int) -> np.ndarray:
    if mask is None:
        return np.ones(n, dtype=bool)
    m = np.asarray(mask)
    if m.dtype != bool:
        raise ConfigurationError(f"mask must be a boolean array of length {n}; got dtype {m.dtype}")
    if m.shape != (n,):
        raise ShapeError(f"mask must have shape ({n},); got {m.shape}")
    return m.copy()


def _check_kappa(kappa: float) -> float:
    return check_kappa(kappa, high=None, why="the l1 budget ||w_S||_1 <= kappa")


# ----------------------------------------------------------------------------------------------
# Gram matrix and inner solver


def gram(F: object) -> np.ndarray:
    """Return the Gram matrix ``G = F^T F`` (float64, exactly symmetric).

    ``F`` is the shared design matrix ``M = (X^T, U^T)`` of thesis §3.3 (samples x unknowns).
    Computed once and reused for every row (Alg. 2).

    Args:
        F: ``(samples, n)`` design matrix (array or tensor).

    Returns:
        ``(n, n)`` float64 array.

    Examples:
        >>> F = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]])
        >>> gram(F).tolist(), np.allclose(gram(F), F.T @ F)
        ([[10.0, 14.0], [14.0, 21.0]], True)
    """
    Fa = _as_float_array(F, "F", 2)
    G = Fa.T @ Fa
    return np.ascontiguousarray(0.5 * (G + G.T))


@dataclass(frozen=True)
class LassoCDResult:
    """Result of :func:`lasso_cd`: the iterate, sweeps used and whether the tolerance was met.

    Attributes:
        w: the ``(n,)`` iterate.
        iterations: sweeps used.
        converged: whether the tolerance was met.
    """

    w: np.ndarray
    iterations: int
    converged: bool


def _soft(x: float, t: float) -> float:
    if x > t:
        return x - t
    if x < -t:
        return x + t
    return 0.0


def _cd(
    G: np.ndarray,
    c: np.ndarray,
    lam_vec: np.ndarray,
    w: np.ndarray,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, int, bool]:
    """Cyclic coordinate descent on Q(lam) with active-set sweeps (in place on a copy of ``w``)."""
    w = w.copy()
    q = G @ w
    diag = np.diag(G).copy()
    scale = max(float(np.max(np.abs(c))), float(np.max(lam_vec)), 1e-300)
    thresh = tol * scale
    all_idx = np.flatnonzero(diag > 0.0)
    w[diag <= 0.0] = 0.0  # zero columns of F: the coordinate does not enter the objective
    sweeps = 0
    full = True
    while sweeps < max_iter:
        idx = all_idx if full else all_idx[w[all_idx] != 0.0]
        maxd = 0.0
        for j in idx:
            gj = diag[j]
            wj = w[j]
            rho = c[j] - q[j] + gj * wj
            new = _soft(rho, lam_vec[j]) / gj
            d = new - wj
            if d != 0.0:
                q += d * G[j]
                w[j] = new
                ad = abs(d) * gj
                if ad > maxd:
                    maxd = ad
        sweeps += 1
        if maxd <= thresh:
            if full:
                return w, sweeps, True
            full = True  # active set converged: check all coordinates once more
        else:
            full = False
    return w, sweeps, False


def lasso_cd(
    G: object,
    c: object,
    lam: float,
    w0: object | None = None,
    mask: object | None = None,
    *,
    tol: float = 1e-10,
    max_iter: int = 10_000,
) -> LassoCDResult:
    """Solve the penalised LASSO Q(lam) (thesis eq. 3.7) from the Gram matrix alone.

    Minimises ``1/2 w^T G w - c^T w + lam ||w_S||_1`` with ``S = mask`` (all coordinates when
    ``mask`` is None) by cyclic coordinate descent: a full sweep, then sweeps over the nonzero
    coordinates until they settle, then a full sweep to confirm (glmnet-style active set).
    Deviation: the thesis analyses proximal gradient (Lemma 3); CD needs no step size and
    is faster on Gram matrices. ``w0`` warm-starts the iteration (Lemma 4).

    Convergence: the largest coordinate change in one full sweep, measured as
    ``|dw_j| G_jj`` (a change of the gradient), is below ``tol * max(||c||_inf, lam)``.
    ``iterations`` counts sweeps (full or active-set).

    Args:
        G: Gram matrix ``F^T F``, ``(n, n)``.
        c: ``F^T z``, ``(n,)``.
        lam: penalty weight ``>= 0``.
        w0: warm start ``(n,)``, or None (zeros).
        mask: boolean ``(n,)``, the penalised coordinates ``S`` (None: all).
        tol: relative tolerance of the stopping rule.
        max_iter: sweeps at most.

    Returns:
        :class:`LassoCDResult` with ``w`` ``(n,)``.

    Raises:
        ShapeError: ``G`` not square and symmetric, or ``c``/``w0``/``mask`` of the wrong shape.
        InputError: a negative ``lam`` or a bad ``tol``/``max_iter``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> F = rng.standard_normal((20, 5)); z = F @ np.array([1.0, 0.0, 0.0, -2.0, 0.0])
        >>> res = lasso_cd(gram(F), F.T @ z, lam=0.0)             # no penalty: least squares
        >>> res.converged, np.round(res.w, 6).tolist()
        (True, [1.0, 0.0, -0.0, -2.0, 0.0])
        >>> w = lasso_cd(gram(F), F.T @ z, lam=1e3).w                # a large penalty: all zero
        >>> bool((w == 0).all())
        True
    """
    Ga = _check_gram(G)
    n = Ga.shape[0]
    ca = _as_float_array(c, "c", 1)
    if ca.shape != (n,):
        raise ShapeError(f"c must have shape ({n},) to match G {Ga.shape}; got {ca.shape}")
    lam_f = check_positive("lam", lam, allow_zero=True, example=0.1)
    pen = _check_mask(mask, n)
    if w0 is None:
        w = np.zeros(n)
    else:
        w = _as_float_array(w0, "w0", 1)
        if w.shape != (n,):
            raise ShapeError(f"w0 must have shape ({n},); got {w.shape}")
    check_int("max_iter", max_iter, 1)
    lam_vec = np.where(pen, lam_f, 0.0)
    w, it, ok = _cd(Ga, ca, lam_vec, w, float(tol), int(max_iter))
    return LassoCDResult(w=w, iterations=it, converged=ok)


# ----------------------------------------------------------------------------------------------
# constrained problem P(kappa)


@dataclass(frozen=True)
class ConstrainedLassoResult:
    """Solution of P(kappa) for one row.

    Attributes:
        w: the row ``(a, b)``.
        lam: the multiplier ``lam_kappa`` of Lemma 2 (0 when the constraint is inactive).
        l1: ``||w_S||_1`` (<= kappa).
        objective: ``1/2 w^T G w - c^T w`` plus ``1/2 ||z||^2`` when ``zz = ||z||^2`` was given,
            i.e. ``1/2 ||z - F w||^2`` in that case.
        iterations: total coordinate-descent sweeps over all bisection steps.
        bisections: number of Q(lam) solves (bisection steps of Alg. 1).
        status: ``"optimal"`` (KKT of P(kappa) verified, constraint active, ``lam > 0``),
            ``"inactive"`` (a least-squares solution is feasible, ``lam = 0``; KKT verified),
            ``"approximate"`` (bisection ended at its tolerance without a verified exact step; the
            returned ``w`` is feasible).
        kkt: largest KKT violation of P(kappa) at ``w`` relative to ``max(||c||_inf, lam)``.
    """

    w: np.ndarray
    lam: float
    l1: float
    objective: float
    iterations: int
    bisections: int
    status: str
    kkt: float


def _kkt_violation(G: np.ndarray, c: np.ndarray, w: np.ndarray, lam: float, pen: np.ndarray) -> float:
    """Largest violation of the stationarity conditions of Q(lam) (= those of P(kappa), Lemma 2)."""
    r = c - G @ w  # minus the gradient of the smooth part
    scale = max(float(np.max(np.abs(c))), lam, 1e-300)
    v = np.zeros_like(w)
    free = ~pen
    v[free] = np.abs(r[free])
    nz = pen & (w != 0.0)
    v[nz] = np.abs(r[nz] - lam * np.sign(w[nz]))
    z = pen & (w == 0.0)
    v[z] = np.maximum(np.abs(r[z]) - lam, 0.0)
    return float(np.max(v)) / scale if v.size else 0.0


def _objective(G: np.ndarray, c: np.ndarray, w: np.ndarray, zz: float | None) -> float:
    val = 0.5 * float(w @ (G @ w)) - float(c @ w)
    if zz is not None:
        val += 0.5 * zz
    return val


def _exact_step(
    G: np.ndarray, c: np.ndarray, w: np.ndarray, pen: np.ndarray, kappa: float, kkt_tol: float
) -> tuple[np.ndarray, float] | None:
    """Closed-form solve of ``g(lam) = kappa`` on the linear piece of ``w`` (Lemma 1: g is piecewise
    linear). Returns ``(w*, lam*)`` when the KKT conditions of P(kappa) hold, else None.

    When the closed-form ``lam`` is negative, ``g`` stays below ``kappa`` on this whole piece
    down to ``lam = 0`` (possible only for singular ``G``, where ``g(0+)`` is the smallest
    ``||w_S||_1`` over the least-squares solutions and can be below ``||(G^+ c)_S||_1``); then
    ``w_E(0) = G_EE^+ c_E`` is tried with ``lam = 0``: if it is a least-squares solution (KKT
    with ``lam = 0``) it solves P(kappa) with the constraint inactive."""
    E = np.flatnonzero(~pen | (w != 0.0))
    if E.size == 0:
        return None
    s = np.where(pen, np.sign(w), 0.0)[E]
    if not np.any(s):
        return None
    GEE = G[np.ix_(E, E)]
    rhs = np.column_stack([c[E], s])
    X, *_ = np.linalg.lstsq(GEE, rhs, rcond=None)
    xc, xs = X[:, 0], X[:, 1]
    den = float(s @ xs)
    if not np.isfinite(den) or den <= 0.0:
        return None
    lam = (float(s @ xc) - kappa) / den
    if not np.isfinite(lam):
        return None
    lam = max(lam, 0.0)  # lam < 0: the budget is not reached on this piece; try its end lam = 0
    wE = xc - lam * xs
    # sign consistency on the penalised active coordinates (a coordinate reaching 0 is allowed)
    wmax = max(float(np.max(np.abs(wE))), 1e-300)
    signed = s * wE
    if np.any(signed[s != 0.0] < -1e-10 * wmax):
        return None
    wE = np.where((s != 0.0) & (signed < 0.0), 0.0, wE)
    w_new = np.zeros_like(w)
    w_new[E] = wE
    if _kkt_violation(G, c, w_new, lam, pen) > kkt_tol:
        return None
    return w_new, lam


def _project_budget(w: np.ndarray, pen: np.ndarray, kappa: float) -> np.ndarray:
    """Scale ``w_S`` onto the l1 ball if round-off left it marginally outside."""
    l1 = float(np.sum(np.abs(w[pen])))
    if l1 > kappa:
        w = w.copy()
        w[pen] *= kappa / l1
    return w


def _zero_null_columns(G: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Set coordinates of zero columns of F (``G_jj = 0``, hence ``G_j = 0``) exactly to 0: they do
    not enter the objective, and pseudo-inverses leave round-off there."""
    dead = np.diag(G) <= 0.0
    if np.any(dead) and np.any(w[dead] != 0.0):
        w = w.copy()
        w[dead] = 0.0
    return w


def _inactive(
    G: np.ndarray, c: np.ndarray, w: np.ndarray, pen: np.ndarray, zz: float | None, iters: int, steps: int
) -> ConstrainedLassoResult:
    """Result for ``lam_kappa = 0``: ``w`` is a least-squares solution with ``||w_S||_1 <= kappa``."""
    w = _zero_null_columns(G, w)
    return ConstrainedLassoResult(
        w=w,
        lam=0.0,
        l1=float(np.sum(np.abs(w[pen]))),
        objective=_objective(G, c, w, zz),
        iterations=iters,
        bisections=steps,
        status="inactive",
        kkt=_kkt_violation(G, c, w, 0.0, pen),
    )


def _solve_row(
    G: np.ndarray,
    c: np.ndarray,
    kappa: float,
    pen: np.ndarray,
    w_ls: np.ndarray,
    lam_max: float,
    w_free: np.ndarray,
    *,
    w0: np.ndarray | None,
    lam0: float | None,
    warm_start: bool,
    tol: float,
    max_iter: int,
    max_bisect: int,
    eps: float,
    kkt_tol: float,
    zz: float | None,
) -> ConstrainedLassoResult:
    n = G.shape[0]
    l1_ls = float(np.sum(np.abs(w_ls[pen])))
    if l1_ls <= kappa:  # assumption A1 fails: the constraint is inactive
        return _inactive(G, c, w_ls, pen, zz, 0, 0)
    # w_S = 0 is optimal for every lam >= lam_max; if lam_max = 0 (to the KKT tolerance), the
    # free-only fit is a least-squares solution with ||w_S||_1 = 0 <= kappa: inactive as well
    # (e.g. the free columns span the samples; G^+ c above may still spread weight onto S).
    if _kkt_violation(G, c, w_free, 0.0, pen) <= kkt_tol:
        return _inactive(G, c, w_free, pen, zz, 0, 0)
    lo, hi = 0.0, lam_max
    w = np.zeros(n) if w0 is None else w0.copy()
    w_feas: np.ndarray | None = None
    lam_feas = hi
    iters = 0
    steps = 0
    found: tuple[np.ndarray, float] | None = None
    while steps < max_bisect:
        if steps == 0 and lam0 is not None and lo < lam0 < hi:
            lam = lam0
        else:
            lam = 0.5 * (lo + hi)
        start = w if warm_start else np.zeros(n)
        w, it, _ = _cd(G, c, np.where(pen, lam, 0.0), start, tol, max_iter)
        iters += it
        steps += 1
        g = float(np.sum(np.abs(w[pen])))
        if g >= kappa:  # Alg. 1: ||a_Q(lam)||_1 >= kappa  =>  l <- lam
            lo = lam
        else:
            hi = lam
            w_feas, lam_feas = w, lam
        found = _exact_step(G, c, w, pen, kappa, kkt_tol)
        if found is not None:
            break
        if hi - lo <= eps * lam_max:
            break
    if found is not None:
        w_out = _project_budget(found[0], pen, kappa)
        lam_out = found[1]
        if lam_out == 0.0:  # g(0+) < kappa: a least-squares solution meets the budget
            return _inactive(G, c, w_out, pen, zz, iters, steps)
        status = "optimal"
    else:
        if w_feas is None:  # every step was on the infeasible side: solve once at the upper end
            w_feas, it, _ = _cd(G, c, np.where(pen, hi, 0.0), w, tol, max_iter)
            iters += it
            lam_feas = hi
        w_out = _project_budget(w_feas, pen, kappa)
        lam_out = lam_feas
        status = "approximate"
    w_out = _zero_null_columns(G, w_out)
    return ConstrainedLassoResult(
        w=w_out,
        lam=float(lam_out),
        l1=float(np.sum(np.abs(w_out[pen]))),
        objective=_objective(G, c, w_out, zz),
        iterations=iters,
        bisections=steps,
        status=status,
        kkt=_kkt_violation(G, c, w_out, lam_out, pen),
    )


def _lam_max(
    G: np.ndarray, c: np.ndarray, pen: np.ndarray, pinv_free: np.ndarray | None
) -> tuple[float, np.ndarray]:
    """Smallest lam with w_S = 0 optimal for Q(lam), and that solution ``(0, w_U)``.

    ``lam_max = ||(c - G w)_S||_inf`` with ``w = (0, w_U)``, ``w_U = G_UU^+ c_U`` the least-squares
    fit on the free coordinates only (the thesis's ``||M^T z||_inf`` when every coordinate is
    penalised). ``G_UU^+`` is exact also for a rank-deficient free block, since ``c_U`` lies in
    the range of ``G_UU = F_U^T F_U``.
    """
    free = ~pen
    w = np.zeros_like(c)
    if not np.any(free) or pinv_free is None:
        return float(np.max(np.abs(c[pen]))), w
    w[free] = pinv_free @ c[free]
    r = c[pen] - G[np.ix_(pen, free)] @ w[free]
    return float(np.max(np.abs(r))), w


def _free_pinv(G: np.ndarray, pen: np.ndarray) -> np.ndarray | None:
    """``G_UU^+`` of the free block (numpy's ``pinv`` cut-off ``1e-15 max |eig|``), or None."""
    free = ~pen
    if not np.any(free):
        return None
    return pinv_psd(G[np.ix_(free, free)], rtol=1e-15)


def constrained_lasso(
    G: object,
    c: object,
    kappa: float,
    mask: object | None = None,
    *,
    w0: object | None = None,
    lam0: float | None = None,
    warm_start: bool = True,
    tol: float = 1e-10,
    max_iter: int = 10_000,
    max_bisect: int = 60,
    eps: float = 1e-12,
    kkt_tol: float = 1e-8,
    zz: float | None = None,
) -> ConstrainedLassoResult:
    """Solve P(kappa): ``min 1/2||z - F w||^2  s.t.  ||w_S||_1 <= kappa`` (thesis Alg. 1).

    Args:
        G: Gram matrix ``F^T F``, ``(n, n)``.
        c: ``F^T z``, ``(n,)``.
        kappa: l1 budget, > 0 (the well-posedness bound ``||a||_1 <= kappa`` of eq. 3.4).
        mask: boolean (n,), the constrained coordinates ``S`` (None: all, as in Alg. 1).
        w0: warm-start solution ``(n,)`` of a neighbouring problem (Alg. 2), or None.
        lam0: warm-start multiplier of that problem, or None.
        warm_start: warm-start each Q(lam) from the previous bisection step (Lemma 4); False
            restarts every Q(lam) from zero -- only useful to measure the gain.
        tol: inner coordinate-descent tolerance (:func:`lasso_cd`).
        max_iter: inner coordinate-descent sweep limit.
        max_bisect: bisection steps at most.
        eps: bisection stops at ``hi - lo <= eps * lam_max``.
        kkt_tol: relative KKT tolerance for accepting the exact piecewise-linear step.
        zz: ``||z||^2``; when given, ``objective`` is ``1/2||z - F w||^2``.

    Bisection on ``lam in [0, lam_max]`` (Alg. 1) with an exact step per iteration: see the
    module docstring for this deviation. Returns a :class:`ConstrainedLassoResult`.

    Returns:
        :class:`ConstrainedLassoResult` with the row ``w`` ``(n,)`` and its certificate.

    Raises:
        ShapeError: ``G`` not square and symmetric, or ``c``/``mask``/``w0`` of the wrong shape.
        ConfigurationError: ``G`` with a negative diagonal (not a Gram matrix).
        InputError: ``kappa <= 0`` or a bad tolerance or limit.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> F = rng.standard_normal((20, 5)); z = F @ np.array([1.0, 0.0, 0.0, -2.0, 0.0])
        >>> res = constrained_lasso(gram(F), F.T @ z, kappa=1.5)
        >>> res.status, round(res.l1, 6), res.w.shape              # the l1 ball binds: ||w||_1 = kappa
        ('optimal', 1.5, (5,))
    """
    Ga = _check_gram(G)
    n = Ga.shape[0]
    ca = _as_float_array(c, "c", 1)
    if ca.shape != (n,):
        raise ShapeError(f"c must have shape ({n},) to match G {Ga.shape}; got {ca.shape}")
    k = _check_kappa(kappa)
    pen = _check_mask(mask, n)
    w0a = None
    if w0 is not None:
        w0a = _as_float_array(w0, "w0", 1)
        if w0a.shape != (n,):
            raise ShapeError(f"w0 must have shape ({n},); got {w0a.shape}")
    _check_limits(max_iter, max_bisect)
    w_ls = pinv_psd(Ga, rtol=1e-15) @ ca
    if not np.any(pen):
        return ConstrainedLassoResult(
            w=w_ls,
            lam=0.0,
            l1=0.0,
            objective=_objective(Ga, ca, w_ls, zz),
            iterations=0,
            bisections=0,
            status="inactive",
            kkt=_kkt_violation(Ga, ca, w_ls, 0.0, pen),
        )
    lam_max, w_free = _lam_max(Ga, ca, pen, _free_pinv(Ga, pen))
    return _solve_row(
        Ga,
        ca,
        k,
        pen,
        w_ls,
        lam_max,
        w_free,
        w0=w0a,
        lam0=lam0,
        warm_start=warm_start,
        tol=tol,
        max_iter=int(max_iter),
        max_bisect=int(max_bisect),
        eps=eps,
        kkt_tol=kkt_tol,
        zz=zz,
    )


def _check_rows(G: object, C: object, kappa: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``(G, C, kappa per row)`` of a batch of rows ``C[i] = F^T z_i`` on one Gram ``G``."""
    Ga = _check_gram(G)
    n = Ga.shape[0]
    Ca = _as_float_array(C, "C", 2)
    if Ca.shape[1] != n:
        raise ShapeError(f"C must have shape (rows, {n}) to match G {Ga.shape}; got {Ca.shape}")
    r = Ca.shape[0]
    if isinstance(kappa, str):
        raise ConfigurationError(f"kappa must be a positive real number or array; got {kappa!r}")
    kap = np.asarray(kappa, dtype=np.float64)
    if kap.ndim == 0:
        kap = np.full(r, float(kap))
    if kap.shape != (r,):
        raise ShapeError(f"kappa must be a scalar or have shape ({r},); got {kap.shape}")
    return Ga, Ca, np.array([_check_kappa(v) for v in kap], dtype=np.float64)


def _check_limits(max_iter: object, max_bisect: object) -> None:
    check_int("max_iter", max_iter, 1)
    check_int("max_bisect", max_bisect, 1)


@dataclass(frozen=True)
class ConstrainedLassoRowsResult:
    """Per-row solutions of :func:`constrained_lasso_rows` (row ``i`` of each array is row ``i``).

    Attributes:
        W: ``(rows, n)`` solutions.
        lam: ``(rows,)`` multipliers.
        l1: ``(rows,)`` ``||w_S||_1``.
        objective: ``(rows,)`` objectives (as in :class:`ConstrainedLassoResult`).
        iterations: ``(rows,)`` coordinate-descent sweeps.
        bisections: ``(rows,)`` bisection steps.
        status: one status per row (as in :class:`ConstrainedLassoResult`).
        kkt: ``(rows,)`` relative KKT violations.
    """

    W: np.ndarray
    lam: np.ndarray
    l1: np.ndarray
    objective: np.ndarray
    iterations: np.ndarray
    bisections: np.ndarray
    status: tuple[str, ...]
    kkt: np.ndarray


def constrained_lasso_rows(
    G: object,
    C: object,
    kappa: float | object,
    mask: object | None = None,
    *,
    warm_start_rows: bool = True,
    tol: float = 1e-10,
    max_iter: int = 10_000,
    max_bisect: int = 60,
    eps: float = 1e-12,
    kkt_tol: float = 1e-8,
    zz: object | None = None,
) -> ConstrainedLassoRowsResult:
    """Solve P(kappa) for every row ``C[i] = F^T z_i`` with one shared Gram matrix (thesis Alg. 2).

    ``G`` is validated once and its pseudo-inverse (for the least-squares solutions and the
    ``lam_max`` bracket) computed once. With ``warm_start_rows`` each row starts from the previous
    row's solution and multiplier, as in Alg. 2 ("warm start Q(lam_i) with the optimal solution to
    Q(lam_{i-1})"). ``kappa`` is a scalar or one value per row; ``zz`` optional ``||z_i||^2`` per row.
    Serial; parallel execution over row blocks belongs to the caller (joblib backends).

    Args:
        G: Gram matrix ``F^T F``, ``(n, n)``, shared by every row.
        C: ``(rows, n)``, row ``i`` is ``F^T z_i``.
        kappa: l1 budget ``> 0``, a scalar or one value per row.
        mask: boolean ``(n,)``, the constrained coordinates ``S`` (None: all).
        warm_start_rows: start each row from the previous row's solution (Alg. 2).
        tol: inner coordinate-descent tolerance (:func:`lasso_cd`).
        max_iter: inner coordinate-descent sweep limit.
        max_bisect: bisection steps at most, per row.
        eps: bisection stops at ``hi - lo <= eps * lam_max``.
        kkt_tol: relative KKT tolerance for accepting the exact piecewise-linear step.
        zz: ``(rows,)`` ``||z_i||^2``, or None.

    Returns:
        :class:`ConstrainedLassoRowsResult`, one entry per row.

    Raises:
        ShapeError: ``G`` not square and symmetric, or ``C``/``kappa``/``mask`` of the wrong shape.
        ConfigurationError: ``G`` with a negative diagonal (not a Gram matrix).
        InputError: a ``kappa <= 0``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> F = rng.standard_normal((20, 5)); Z = rng.standard_normal((3, 20))  # 3 targets
        >>> res = constrained_lasso_rows(gram(F), Z @ F, kappa=0.5)
        >>> res.W.shape, bool((res.l1 <= 0.5 + 1e-9).all())
        ((3, 5), True)
        >>> one = constrained_lasso(gram(F), Z[1] @ F, kappa=0.5).w
        >>> np.allclose(res.W[1], one, atol=1e-6)
        True
    """
    Ga, Ca, kap = _check_rows(G, C, kappa)
    n, r = Ga.shape[0], Ca.shape[0]
    zza = None
    if zz is not None:
        zza = _as_float_array(zz, "zz", 1)
        if zza.shape != (r,):
            raise ShapeError(f"zz must have shape ({r},); got {zza.shape}")
    pen = _check_mask(mask, n)
    _check_limits(max_iter, max_bisect)
    P = pinv_psd(Ga, rtol=1e-15)
    W_ls = Ca @ P  # P symmetric: row i is G^+ c_i
    Pf = _free_pinv(Ga, pen)
    results: list[ConstrainedLassoResult] = []
    prev: ConstrainedLassoResult | None = None
    for i in range(r):
        ci = Ca[i]
        zi = None if zza is None else float(zza[i])
        if not np.any(pen):
            wi = W_ls[i]
            res = ConstrainedLassoResult(
                w=wi,
                lam=0.0,
                l1=0.0,
                objective=_objective(Ga, ci, wi, zi),
                iterations=0,
                bisections=0,
                status="inactive",
                kkt=_kkt_violation(Ga, ci, wi, 0.0, pen),
            )
        else:
            use_prev = warm_start_rows and prev is not None and prev.lam > 0.0
            lam_max_i, w_free_i = _lam_max(Ga, ci, pen, Pf)
            res = _solve_row(
                Ga,
                ci,
                float(kap[i]),
                pen,
                W_ls[i],
                lam_max_i,
                w_free_i,
                w0=prev.w if use_prev and prev is not None else None,
                lam0=prev.lam if use_prev and prev is not None else None,
                warm_start=True,
                tol=tol,
                max_iter=int(max_iter),
                max_bisect=int(max_bisect),
                eps=eps,
                kkt_tol=kkt_tol,
                zz=zi,
            )
        results.append(res)
        prev = res
    return ConstrainedLassoRowsResult(
        W=np.array([x.w for x in results]).reshape(r, n),
        lam=np.array([x.lam for x in results]),
        l1=np.array([x.l1 for x in results]),
        objective=np.array([x.objective for x in results]),
        iterations=np.array([x.iterations for x in results], dtype=np.int64),
        bisections=np.array([x.bisections for x in results], dtype=np.int64),
        status=tuple(x.status for x in results),
        kkt=np.array([x.kkt for x in results]),
    )
