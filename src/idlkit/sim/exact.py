"""Exact state matching for all SIM rows at once: batched basis pursuit (paper 002 eqs. 6, 8-9).

For one row ``t`` of the targets (a row of ``Z`` or ``Y_hat``) and the shared data ``F = (X, U[,
1])`` (``m x d``), exact matching with the l1 objective of eq. 6 is the basis-pursuit problem

    BP:    min_w  sum_{j in P} sigma_j |w_j|   s.t.   F w = t,   ||w_S||_1 <= kappa,

(eq. 8 for state rows, ``S`` the coordinates of ``a``; eq. 9, without ``S``, for output rows;
``P`` the penalised coordinates, all but the free bias; ``sigma = 1`` is the paper's
``sum |M_ij|``). With ``eps > 0`` the matching is relaxed to a relative tolerance
("exact matching plus l1", basis-pursuit denoising):

    BPDN:  min_w  sum_{j in P} sigma_j |w_j|   s.t.   ||F w - t|| <= eps ||t||,   ||w_S||_1 <= kappa.

Consistency (what "exact" can mean). With the reduced factor ``R = diag(sv) V^T`` of ``F``
(:func:`idlkit.sim.cvx.factor`, ``F = Q R``) and ``y = Q^T t``,
``||F w - t||^2 = ||R w - y||^2 + ||t - Q Q^T t||^2``. When ``m > d`` (2,000 samples for
``d = 896`` on Fashion-MNIST) ``F w = t`` has a solution only if ``t`` lies in ``range(F)``, i.e.
the *range residual* ``rho_t = ||t - Q Q^T t|| / ||t||`` vanishes; a rescaled baseline's states
(§3) are linear in ``(X, U)`` by construction, so ``rho_t`` is round-off (1e-15 .. 1e-10), and
noisy or foreign targets are not. A row is declared **infeasible** when ``rho_t > match_tol``
(BP) or ``rho_t > eps`` (BPDN, where it is exactly the condition that the ball
``||F w - t|| <= eps ||t||`` meets ``range(F)``); BP then solves ``R w = y``, i.e. it matches the
projection ``Q Q^T t`` exactly and ``t`` to ``rho_t``.

Reduced (range / null-space) form. Free coordinates ``U`` are eliminated exactly: with ``Qc`` an
orthonormal basis of ``range(R_U)^perp``, ``R w = y`` for some ``w_U`` iff ``Qc^T R_{~U} v = Qc^T
y`` (``v = w_{~U}``; full row rank), and then ``w_U = R_U^+ (y - R_{~U} v)``. Columns of ``F``
that are zero (dead units, constant-zero pixels) get coefficient 0. In the scaled coordinates
``x_j = sigma_j v_j`` the objective is ``||x||_1`` and the budget the weighted ball ``sum_{j in
S} |x_j| / sigma_j <= kappa``; write ``R'' = Qc^T R_{~U} D^{-1} = L Q1^T`` (``D = diag(sigma)``)
with ``Q1`` (``d' x r``) and ``N`` (``d' x k``) orthonormal bases of its row and null spaces, from
one complete QR of ``R''^T`` (BP; ``L`` lower triangular) or its SVD (BPDN, or a numerically
rank-deficient ``R''``; ``L = diag(s)`` with numpy's rank cut-off). The feasible set of BP is
the affine set ``x0 + range(N)``, ``x0 = Q1 L^{-1} b`` the minimum-norm solution, whose
projection ``x -> x0 + N N^T x`` (or ``x - Q1 Q1^T x + x0`` when ``k > d'/2``) costs two thin
products. On Fashion-MNIST's 2,000-sample states ``r = 881`` and ``k = 2`` once the 13 zero
columns are dropped: the LP of eq. 8 is a 2-dimensional problem in disguise. With ``k = 0``
the solution is unique: optimal, or infeasible when it breaks the budget (solver
``"unique"``).

Method: ADMM (Douglas-Rachford splitting, over-relaxation 1.6) on ``min h(x) + indicator_A(x)``,
``h(x) = ||x||_1 + indicator(weighted ball)``, for all rows together with per-row penalty
``rho``:

    x <- P_A(z - u),    z <- prox_{h / rho}(x + u),    u <- u + x - z,

``P_A`` the projection on the affine set (BP) or on the cylinder ``{x : ||L Q1^T x - b|| <=
delta}`` (BPDN; along ``Q1`` a one-dimensional secular equation, solved by Newton warm-started
from the previous iteration, the null-space component passes through), ``prox`` the soft
threshold followed by the exact weighted-ball projection (the sort of
:func:`idlkit.sim.penalized._ball_threshold`). ``rho`` is rebalanced per row from the
normalised primal and dual residuals (``u`` rescaled with it). For BP the support ``E`` and
signs of ``z`` are polished (:func:`_polish`): the point of the affine set with ``x_j = 0`` off
``E`` (and the budget tight when ``z`` is on the ball's boundary) by least squares, in the
cheaper of the range and null-space forms, and the LP dual at that vertex; the polished point
(feasible to round-off, exactly sparse) replaces ``z`` when it is certified -- a vertex of the
LP is identified exactly once ADMM has found its support. For BPDN the polish
(:func:`_polish_bpdn`) solves the optimality conditions on ``z``'s support and signs in closed
form (a quadratic in the matching multiplier), which puts the point exactly on the cylinder with
exactly ``z``'s support. A polish that fails to certify waits twice as long before the next try
(it costs a factorisation of the support's columns). Until the polish certifies, BPDN's
candidate is ``z`` when it meets the matching constraint, else the (dense) ``x = P_C(z - u)``;
a row certified only by that dense point keeps iterating, up to four times the iterations of its
first certificate, for a certified polished (sparse) one.
ADMM needs more iterations when ``k`` is large (fewer samples than unknowns); with ``m > d`` and
a small null space (the SIM setting: Fashion-MNIST in < 10 s on 2 cores) it is fast.

Certificates (per row). Primal: the returned ``w`` with its objective ``h``, its matching residual
``||F w - t|| / ||t||`` (``feasibility``) and ``||w_S||_1 <= kappa`` (kept exactly: ``z`` lies in
the ball by construction, a polished point is accepted only inside it). Dual: weak duality of
``min h(x) + indicator_C(x)`` gives, for any ``g = R''^T nu``,

    p* >= nu^T b - delta ||nu|| - h*(g),    h*(g) = indicator(|g_j| <= 1, j not in S)
                                                        + kappa max_{j in S} (|g_j| - 1)_+ sigma_j,

(``delta = 0`` for BP: ``sup_{R'' x = b} -g^T x = -nu^T b``; for BPDN the support function of
the ball adds ``delta ||nu||``). ADMM's ``rho u`` is a subgradient of ``h`` at ``z``; projected
onto ``range(Q1)`` it is ``g = R''^T nu`` with ``nu^T b = g^T x0`` and ``||nu|| = ||L^{-T} Q1^T
g||``, and scaled by ``s = min(1, min_{j not in S} 1/|g_j|)`` into the domain of ``h*``
(the scaled point is still of the form ``R''^T nu``). ``gap = h(w) - D`` bounds ``h(w) - p*``
whenever ``w`` is feasible; the polished vertex's dual is certified the same way (the larger
lower bound is kept). A row is ``"optimal"`` when ``|gap| <= tol * max(h(w), tiny)`` (a point
infeasible enough to undercut the bound is not certified either), the matching residual is
within ``match_tol`` (BP) or ``eps + match_tol`` (BPDN) and the budget holds; rows left
after ``max_iter`` are ``"max_iter"`` and, with ``fallback=True``, solved by HiGHS (BP, the LP of
:func:`idlkit.sim.cvx.exact_row`) or Clarabel (BPDN): ``"fallback"``, or ``"infeasible"`` when
that solver proves the budget ``||w_S||_1 <= kappa`` unreachable. An infeasible row's ``w`` is
NaN, never a silent zero.

Arrays: numpy in, numpy out; tensors in, tensors out; the iterations run with torch ops on
``device`` (default: the inputs' device, else the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._validation import check_int, check_positive, check_tol
from ..errors import ConfigurationError, NonFiniteError, ShapeError
from ._gram import engine_device, from_engine, to_engine, wants_numpy
from .penalized import _ball_threshold

__all__ = ["BasisPursuitResult", "basis_pursuit", "basis_pursuit_rows"]

_TINY = 1e-300
_RELAX = 1.6  # ADMM over-relaxation (Boyd et al. 2011, §3.4.3)
_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class BasisPursuitResult:
    """Per-row solutions of :func:`basis_pursuit_rows` (row ``i`` of each array is target row
    ``i``; numpy arrays, or tensors when the inputs were tensors).

    Attributes:
        W: ``(rows, d)`` solutions (NaN rows where ``status`` is ``"infeasible"``).
        objective: ``sum_{j in P} sigma_j |w_j|`` per row.
        dual: certified lower bound ``D <= p*`` per row (module docstring; NaN for rows not
            solved by ADMM).
        gap: ``objective - dual`` (``>= objective - p*`` for a feasible ``w``).
        feasibility: matching residual ``||F w - t|| / ||t||`` per row.
        range_residual: ``||t - Q Q^T t|| / ||t||``, the part of ``t`` outside ``range(F)``.
        l1: ``||w_S||_1`` per row (``<= kappa``).
        iterations: ADMM iterations per row.
        rho: final ADMM penalty per row.
        status: ``"optimal"``, ``"infeasible"`` (range residual above the tolerance, or the
            fallback solver proved the budget unreachable), ``"max_iter"`` (not certified and
            ``fallback=False``), ``"fallback"`` (solved by the fallback solver),
            ``"inaccurate"`` (the fallback solver's solution is marked inaccurate).
        solver: per row, ``"admm"``, ``"admm-polish"`` (the polished support), ``"highs"``,
            ``"clarabel"``, ``"range"`` (infeasible by the range test) or ``"unique"`` (``F``
            has full column rank on the penalised coordinates, so ``F w = t`` has one solution:
            optimal, or infeasible when it breaks the budget; no iteration ran).
    """

    W: Any
    objective: Any
    dual: Any
    gap: Any
    feasibility: Any
    range_residual: Any
    l1: Any
    iterations: Any
    rho: Any
    status: tuple[str, ...]
    solver: tuple[str, ...]

    @property
    def infeasible_rows(self) -> tuple[int, ...]:
        """Indices of the rows whose status is ``"infeasible"``."""
        return tuple(i for i, s in enumerate(self.status) if s == "infeasible")


def basis_pursuit(F: Any, T: Any, **kwargs: Any) -> BasisPursuitResult:
    """:func:`basis_pursuit_rows` from the data ``F`` (``m x d``) and targets ``T`` (``rows x m``,
    one target row per row) directly: the reduced factor is :func:`idlkit.sim.cvx.factor`.

    Args:
        F: ``(m, d)`` data matrix.
        T: ``(rows, m)`` targets, one row per row problem.
        **kwargs: the keyword arguments of :func:`basis_pursuit_rows` (``kappa``, ``constrained``, ...).

    Returns:
        :class:`BasisPursuitResult`, one entry per row.

    Raises:
        ShapeError: ``T`` with another number of columns than ``F`` has rows.

    Examples:
        >>> rng = np.random.default_rng(0); F = rng.normal(size=(12, 20)); w = np.zeros(20); w[3] = 0.5
        >>> res = basis_pursuit(F, (F @ w)[None, :], kappa=None, constrained=None)
        >>> res.status, bool(np.allclose(res.W[0], w, atol=1e-8))
        (('optimal',), True)
    """
    from .cvx import factor

    numpy = wants_numpy(F, T)
    Fa = np.asarray(F.detach().cpu() if isinstance(F, Tensor) else F, dtype=np.float64)
    Ta = np.asarray(T.detach().cpu() if isinstance(T, Tensor) else T, dtype=np.float64)
    if Fa.ndim != 2 or Ta.ndim != 2 or Ta.shape[1] != Fa.shape[0]:
        raise ShapeError(f"F must be (m, d) and T (rows, m); got F {Fa.shape}, T {Ta.shape}")
    fac = factor(Fa)
    Y, resid = fac.project(Ta)
    tnorm = np.linalg.norm(Ta, axis=1)
    if not numpy:
        dev = engine_device(kwargs.get("device"), F, T)
        return basis_pursuit_rows(*(torch.from_numpy(a).to(dev) for a in (fac.R, Y, resid, tnorm)), **kwargs)
    return basis_pursuit_rows(fac.R, Y, resid, tnorm, **kwargs)


@dataclass(frozen=True)
class _Reduced:
    """The scaled, free-eliminated, range / null-space form of the rows (module docstring):
    ``R'' = L Q1^T`` with ``Q1`` (``d' x r``) and ``N`` (``d' x k``) orthonormal bases of the row
    space and the null space of ``R''``, and ``L`` (``r x r``) lower triangular (QR) or diagonal
    (SVD: ``L = diag(s)``, the targets ``b`` then in the left singular basis)."""

    live: Tensor  # (d,) coordinates in the problem (not free, column nonzero)
    sig: Tensor  # (d',) penalty scales of the live coordinates
    Q1: Tensor  # (d', r)
    L: Tensor  # (r, r)
    diagonal: bool  # L = diag(s) (SVD path)
    N: Tensor  # (d', k)
    X0: Tensor  # (rows, d') minimum-norm solution of R'' x = b
    b: Tensor  # (rows, r) reduced targets
    out2: Tensor  # (rows,) squared part of the targets outside range(R'') (rank cut)
    RU_pinv: Tensor | None  # (u, r0) R_U^+
    RnotU: Tensor  # (r0, d - u) R_{~U}
    notU: Tensor  # (d,) non-free coordinates


def _reduce(R: Tensor, Y: Tensor, free: Tensor, sigma: Tensor, svd: bool) -> _Reduced:
    """Eliminate the free coordinates and zero columns, scale, and split range / null space:
    by one complete QR of ``R''^T`` when ``R''`` has full row rank (BP), else (or with ``svd``,
    which BPDN's projection needs) by its SVD with numpy's rank cut-off."""
    d = R.shape[1]
    notU = ~free
    RU, RnotU = R[:, free], R[:, notU]
    Rp, Yp, RU_pinv = RnotU, Y, None
    if RU.shape[1]:  # Qc^T R_{~U} v = Qc^T y with Qc a basis of range(R_U)^perp (full row rank)
        Qf, su, Vhu = torch.linalg.svd(RU, full_matrices=True)
        ku = int((su > max(float(su.max()) if su.numel() else 0.0, _TINY) * max(RU.shape) * _EPS).sum())
        Qu, Qc = Qf[:, :ku], Qf[:, ku:]
        RU_pinv = Vhu[:ku].T @ (Qu.T / su[:ku, None])
        Rp, Yp = Qc.T @ RnotU, Y @ Qc
    coln = torch.linalg.vector_norm(Rp, dim=0)
    alive = coln > max(float(coln.max()) if coln.numel() else 0.0, _TINY) * max(R.shape) * _EPS
    live = torch.zeros(d, dtype=torch.bool, device=R.device)
    live[torch.nonzero(notU).flatten()[alive]] = True
    sig = sigma[live]
    Rs = Rp[:, alive] / sig  # R'' = Qc^T R_{~U} D^{-1} on the live coordinates
    r0, dl = Rs.shape
    common = dict(live=live, sig=sig, RU_pinv=RU_pinv, RnotU=RnotU, notU=notU)
    if not svd and 0 < r0 <= dl:
        Q, Rq = torch.linalg.qr(Rs.T, mode="complete")  # R''^T = Q1 Rq
        dg = torch.diagonal(Rq).abs()
        if float(dg.min()) > float(dg.max()) * max(r0, dl) * _EPS * 10:
            L = Rq[:r0].T
            b = Yp
            X0 = torch.linalg.solve_triangular(L, b.T, upper=False).T @ Q[:, :r0].T
            return _Reduced(Q1=Q[:, :r0], L=L, diagonal=False, N=Q[:, r0:], X0=X0, b=b,
                            out2=torch.zeros(Y.shape[0], dtype=Y.dtype, device=Y.device), **common)
    if dl:
        Ur, s, Vh = torch.linalg.svd(Rs, full_matrices=True)
        rank = int((s > max(float(s.max()) if s.numel() else 0.0, _TINY) * max(Rs.shape) * _EPS).sum())
    else:
        Ur, s, Vh, rank = Rs.new_zeros((r0, 0)), Rs.new_zeros(0), Rs.new_zeros((0, 0)), 0
    Ur, s = Ur[:, :rank], s[:rank]
    b = Yp @ Ur
    e = Yp - b @ Ur.T
    return _Reduced(Q1=Vh[:rank].T, L=torch.diag(s), diagonal=True, N=Vh[rank:].T, X0=(b / s) @ Vh[:rank],
                    b=b, out2=(e * e).sum(dim=1), **common)


def _secular(E: Tensor, s: Tensor, delta: Tensor, mu0: Tensor) -> Tensor:
    """Per row, ``mu >= 0`` with ``||E_i / (1 + mu s^2)|| = delta_i`` (0 when already inside):
    Newton on ``psi(mu) = 1 / q(mu) - 1 / delta`` (``q`` the norm), which is concave and
    increasing, so from the left of the root the iterates increase monotonically to it; a warm
    start ``mu0`` right of the root overshoots once to the left (clamped at 0) and then climbs."""
    s2 = s * s
    E2 = E * E
    out = torch.sqrt(E2.sum(dim=1)) > delta
    mu = torch.where(out, mu0, torch.zeros_like(mu0))
    if not bool(out.any()):
        return mu
    for _ in range(60):
        den = 1.0 + mu[:, None] * s2
        q2 = (E2 / den**2).sum(dim=1)
        q = torch.sqrt(torch.clamp(q2, min=_TINY))
        dq2 = -2.0 * (E2 * s2 / den**3).sum(dim=1)
        dpsi = -0.5 * dq2 / (q2 * q)  # d(1/q)/dmu
        step = (1.0 / torch.clamp(delta, min=_TINY) - 1.0 / q) / torch.clamp(dpsi, min=_TINY)
        new = torch.where(out, torch.clamp(mu + step, min=0.0), mu)
        conv = bool((torch.abs(new - mu) <= 1e-12 * (1.0 + new)).all())
        mu = new
        if conv:
            break
    return mu


def basis_pursuit_rows(R: Any, Y: Any, resid: Any, tnorm: Any, *, kappa: float | None,
                       constrained: Any | None, free: Any | None = None, sigma: Any | None = None,
                       eps: float = 0.0, match_tol: float = 1e-6, tol: float = 1e-6,
                       max_iter: int = 20_000, check_every: int = 10, fallback: bool = True,
                       device: Any = None) -> BasisPursuitResult:
    """Basis pursuit (or, with ``eps > 0``, basis-pursuit denoising) for all target rows at once.

    Args:
        R: ``(r0, d)`` reduced factor of ``F`` (``R^T R = F^T F``, full row rank), e.g.
            ``idlkit.sim.cvx.factor(F).R``.
        Y: ``(rows, r0)`` reduced targets ``Q^T t_i`` (``factor(F).project(T)[0]``).
        resid: ``(rows,)`` ``||t_i - Q Q^T t_i||`` (``factor(F).project(T)[1]``).
        tnorm: ``(rows,)`` ``||t_i||``.
        kappa: l1 budget ``||w_S||_1 <= kappa`` (> 0; None: no budget).
        constrained: boolean ``(d,)`` mask ``S``.
        free: boolean ``(d,)`` mask of free coordinates (the bias: neither penalised nor
            constrained).
        sigma: ``(d,)`` penalty scales (> 0 on the non-free coordinates; default ones).
        eps: relative matching tolerance of BPDN (0: exact matching, BP).
        match_tol: BP: range residual above which a row is infeasible; both: the allowance on
            the matching residual of a certified row.
        tol: relative duality-gap tolerance (``gap <= tol * objective``).
        max_iter: ADMM iteration limit.
        check_every: certificate (and polish, and ``rho`` update) period.
        fallback: solve uncertified rows with HiGHS (BP) or Clarabel (BPDN).
        device: torch device of the iterations (None: the inputs' device, else the CPU).

    Returns:
        :class:`BasisPursuitResult`; see the module docstring for the method and certificates.

    Examples:
        >>> from idlkit.sim.cvx import factor
        >>> rng = np.random.default_rng(0)
        >>> F = rng.standard_normal((8, 4))
        >>> T = np.array([[1.0, 0.0, -0.5, 0.0], [0.0, 2.0, 0.0, 0.0]]) @ F.T    # 2 targets in range(F)
        >>> fac = factor(F); Y, resid = fac.project(T)
        >>> res = basis_pursuit_rows(fac.R, Y, resid, np.linalg.norm(T, axis=1), kappa=None,
        ...                          constrained=None)
        >>> res.W.shape, res.status, np.allclose(res.W @ F.T, T, atol=1e-5)
        ((2, 4), ('optimal', 'optimal'), True)
    """
    check_tol(eps, "eps")
    check_positive("match_tol", match_tol)
    check_tol(tol)
    check_int("max_iter", max_iter, 1)
    check_int("check_every", check_every, 1)
    if kappa is not None:
        check_positive("kappa", kappa, why="it is the l1 budget ||w_S||_1 <= kappa")
    numpy = wants_numpy(R, Y, resid, tnorm)
    dev = engine_device(device, R, Y, resid, tnorm)
    Rt, Yt = to_engine(R, dev), to_engine(Y, dev)
    rt, tn = to_engine(resid, dev).reshape(-1), to_engine(tnorm, dev).reshape(-1)
    if Rt.dim() != 2 or Yt.dim() != 2 or Yt.shape[1] != Rt.shape[0] or rt.shape != (Yt.shape[0],) \
            or tn.shape != rt.shape:
        raise ShapeError(f"R must be (r0, d), Y (rows, r0), resid and tnorm (rows,); got R "
                         f"{tuple(Rt.shape)}, Y {tuple(Yt.shape)}, resid {tuple(rt.shape)}, "
                         f"tnorm {tuple(tn.shape)}")
    if not bool(torch.isfinite(Rt).all()):
        raise NonFiniteError("the factor R of F has NaN/Inf entries: some state column is not finite")
    bad = ~(torch.isfinite(Yt).all(dim=1) & torch.isfinite(rt) & torch.isfinite(tn))
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        raise NonFiniteError(f"target rows {rows[:10]}{'...' if len(rows) > 10 else ''} ({len(rows)} of "
                             f"{Yt.shape[0]}) are not finite; drop or repair the samples behind them")
    d, r = Rt.shape[1], Yt.shape[0]

    def mask(m: Any, name: str) -> Tensor:
        if m is None:
            return torch.zeros(d, dtype=torch.bool, device=dev)
        a = np.asarray(m.cpu() if isinstance(m, Tensor) else m)
        if a.dtype != bool or a.shape != (d,):
            raise ConfigurationError(f"{name} must be a boolean mask of shape ({d},); got {a.dtype} "
                                     f"{a.shape}")
        return torch.as_tensor(a, device=dev)

    cons = mask(constrained if kappa is not None else None, "constrained")
    fr = mask(free, "free")
    if bool((cons & fr).any()):
        raise ConfigurationError("a coordinate cannot be both free and constrained")
    sig_all = torch.ones(d, dtype=torch.float64, device=dev) if sigma is None else to_engine(sigma, dev)
    if sig_all.shape != (d,) or not bool(torch.isfinite(sig_all).all()):
        raise ConfigurationError(f"sigma must be a finite ({d},) vector")

    rel_range = rt / torch.clamp(tn, min=_TINY)
    zero = tn <= 0
    range_bad = ~zero & (rel_range > (eps if eps > 0 else match_tol))

    red = _reduce(Rt, Yt, fr, sig_all, svd=eps > 0)
    if bool((red.sig <= 0).any()):
        raise ConfigurationError("sigma must be > 0 on the penalised coordinates whose column of F is "
                                 "nonzero (a zero scale leaves the coefficient unpenalised: mark it free)")
    consL = cons[red.live]
    cw = 1.0 / red.sig[consL]  # ball weights in x: sum |x_j| / sigma_j
    dl, k = red.N.shape
    kap = float(kappa) if kappa is not None else float("inf")
    has_ball = bool(consL.any())
    use_null = k <= dl - k  # project with the thinner basis
    out2 = red.out2
    # BPDN radius in the reduced coordinates: ||L Q1^T x - b||^2 + out2 + resid^2 <= eps^2 ||t||^2
    delta = torch.sqrt(torch.clamp((eps * tn) ** 2 - rt * rt - out2, min=0.0)) if eps > 0 else None

    def project(V: Tensor, X0: Tensor, b: Tensor, dl_: Tensor | None, mu0: Tensor) -> tuple[Tensor, Tensor]:
        if delta is None:  # affine set x0 + range(N)
            if use_null:
                return X0 + (V @ red.N) @ red.N.T, mu0
            return V - (V @ red.Q1) @ red.Q1.T + X0, mu0
        sv = torch.diagonal(red.L)  # BPDN: the SVD path, L = diag(s)
        A = V @ red.Q1  # range part; the null part passes through
        E = sv * A - b
        mu = _secular(E, sv, dl_, mu0)  # type: ignore[arg-type]
        An = (A + mu[:, None] * sv * b) / (1.0 + mu[:, None] * sv**2)
        return V + (An - A) @ red.Q1.T, mu

    def prox(V: Tensor, thr: Tensor, kx: Tensor) -> Tensor:
        out = torch.sign(V) * torch.clamp(V.abs() - thr[:, None], min=0.0)
        if has_ball:
            VS = out[:, consL]
            theta = _ball_threshold(VS.abs(), cw, None, kx)
            out[:, consL] = torch.sign(VS) * torch.clamp(VS.abs() - theta[:, None] * cw, min=0.0)
        return out

    def match2(Xv: Tensor, b: Tensor) -> Tensor:
        """``||L Q1^T x - b||^2`` (the in-range part; ``out2`` is what the rank cut left outside)."""
        E = (Xv @ red.Q1) @ red.L.T - b
        return (E * E).sum(dim=1)

    def dual_value(G: Tensor, X0: Tensor, kx: Tensor, dl_: Tensor | None) -> Tensor:
        A = G @ red.Q1  # g projected onto range(Q1) = range(R''^T)
        Gp = A @ red.Q1.T
        off = ~consL
        s = torch.ones(G.shape[0], dtype=G.dtype, device=dev)
        if bool(off.any()):
            mx = Gp[:, off].abs().max(dim=1).values
            s = torch.where(mx > 1.0, 1.0 / mx, s)
        Dv = s * (Gp * X0).sum(dim=1)
        if has_ball:
            over = torch.clamp(s[:, None] * Gp[:, consL].abs() - 1.0, min=0.0) / cw
            Dv = Dv - kx * over.max(dim=1).values
        if dl_ is not None:
            Dv = Dv - dl_ * s * torch.linalg.vector_norm(A / torch.diagonal(red.L), dim=1)  # ||nu||
        return Dv

    def ball_ok(Xv: Tensor, kx: Tensor) -> Tensor:
        if not has_ball:
            return torch.ones(Xv.shape[0], dtype=torch.bool, device=dev)
        return (Xv[:, consL].abs() * cw).sum(dim=1) <= kx * (1.0 + 1e-12)

    feas_allow = (eps if eps > 0 else 0.0) + match_tol
    # ------------------------------------------------------------------ ADMM on the active rows
    todo = torch.nonzero(~zero & ~range_bad).flatten()
    Xbest = torch.zeros((r, dl), dtype=torch.float64, device=dev)
    best_dual = torch.full((r,), float("nan"), dtype=torch.float64, device=dev)
    polished = torch.zeros(r, dtype=torch.bool, device=dev)
    done = torch.zeros(r, dtype=torch.bool, device=dev)
    ball_bad = torch.zeros(r, dtype=torch.bool, device=dev)
    iters = torch.zeros(r, dtype=torch.int64, device=dev)
    rho_out = torch.full((r,), float("nan"), dtype=torch.float64, device=dev)
    done[zero] = True
    best_dual[zero] = 0.0
    if todo.numel() and k == 0 and delta is None:
        # the affine set is the single point x0: optimal if it meets the budget, else infeasible
        X0 = red.X0[todo]
        inside = ball_ok(X0, torch.full((todo.numel(),), kap, dtype=torch.float64, device=dev))
        Xbest[todo] = X0
        best_dual[todo] = X0.abs().sum(dim=1)  # p* = h(x0): the feasible set is {x0}
        done[todo[inside]] = True
        ball_bad[todo[~inside]] = True
        polished[todo] = True
    elif todo.numel():
        # per-row state of the active rows, compacted together when rows finish
        S: dict[str, Tensor] = {"act": todo, "X0": red.X0[todo], "b": red.b[todo], "tn": tn[todo],
                                "rt": rt[todo], "o2": out2[todo],
                                "kx": torch.full((todo.numel(),), kap, dtype=torch.float64, device=dev)}
        if delta is not None:
            S["dl"] = delta[todo]
        nx0 = torch.linalg.vector_norm(S["X0"], dim=1)
        S["rho"] = torch.clamp(float(np.sqrt(max(dl, 1))) / torch.clamp(nx0, min=_TINY), min=1e-12, max=1e12)
        S["Z"] = prox(S["X0"], 1.0 / S["rho"], S["kx"])
        S["U"] = torch.zeros_like(S["Z"])
        S["sgn"] = torch.sign(S["Z"])
        S["mu"] = torch.zeros(todo.numel(), dtype=torch.float64, device=dev)  # BPDN secular warm starts
        S["nextp"] = torch.zeros(todo.numel(), dtype=torch.int64, device=dev)  # next polish iteration
        S["wait"] = torch.full((todo.numel(),), check_every, dtype=torch.int64, device=dev)
        S["cert"] = torch.full((todo.numel(),), -1, dtype=torch.int64, device=dev)  # first dense certificate

        def matching(Xv: Tensor) -> Tensor:
            """``||F w - t|| / ||t||`` of the rows ``Xv`` of the active rows."""
            return torch.sqrt(match2(Xv, S["b"]) + S["o2"] + S["rt"] ** 2) / S["tn"]

        def matching_row(x: Tensor, j: int) -> Tensor:
            return torch.sqrt(match2(x[None], S["b"][j:j + 1])[0] + S["o2"][j] + S["rt"][j] ** 2) / S["tn"][j]

        k_it = 0
        while S["act"].numel() and k_it < max_iter:
            k_it += 1
            Z, Uu, rho = S["Z"], S["U"], S["rho"]
            Xa, S["mu"] = project(Z - Uu, S["X0"], S["b"], S.get("dl"), S["mu"])
            Xr = _RELAX * Xa + (1.0 - _RELAX) * Z  # over-relaxation
            Zn = prox(Xr + Uu, 1.0 / rho, S["kx"])
            Uu = Uu + Xr - Zn
            dz = Zn - Z
            S["Z"], S["U"] = Zn, Uu
            iters[S["act"]] = k_it
            if k_it % check_every and k_it != max_iter:
                continue
            # --- certificates: ADMM's point z with the dual rho u, and (BP) the polished support
            Z = Zn
            cand, cobj, cfe = Z.clone(), Z.abs().sum(dim=1), matching(Z)
            Dv = dual_value(rho[:, None] * Uu, S["X0"], S["kx"], S.get("dl"))
            xin = torch.zeros(Z.shape[0], dtype=torch.bool, device=dev)
            if delta is not None:  # BPDN: z reaches the cylinder slowly; x = P_C(z - u) is in it
                xin = ball_ok(Xa, S["kx"]) & (cfe > feas_allow)
                if bool(xin.any()):
                    cand[xin] = Xa[xin]
                    cobj = torch.where(xin, Xa.abs().sum(dim=1), cobj)
                    cfe = torch.where(xin, matching(Xa), cfe)
            pol = torch.zeros(Z.shape[0], dtype=torch.bool, device=dev)
            sgn = torch.sign(Z)
            steady = (sgn == S["sgn"]).all(dim=1)
            S["sgn"] = sgn
            # rows ADMM already certifies are polished too (an exact vertex is exactly sparse)
            near = steady | ((cobj - Dv <= tol * torch.clamp(cobj, min=_TINY)) & (cfe <= feas_allow))
            # a failed polish waits twice as long before the next try (a polish costs a factorisation
            # of the support's columns, hundreds of ADMM iterations of that row)
            tried = near & (S["nextp"] <= k_it)
            for j in torch.nonzero(tried).flatten().tolist():
                sl = slice(j, j + 1)
                if delta is None:
                    found = _polish(red, S["X0"][j], S["b"][j], Z[j], consL, cw, float(S["kx"][j]))
                else:
                    found = _polish_bpdn(red, S["b"][j], Z[j], S["dl"][j], consL, cw, float(S["kx"][j]))
                if found is None:
                    continue
                xp, gpol = found
                pf = matching_row(xp, j)
                if pf > feas_allow or not bool(ball_ok(xp[None], S["kx"][sl])[0]):
                    continue
                Dj = Dv[j]
                if gpol is not None:
                    Dj = torch.maximum(Dj, dual_value(gpol[None], S["X0"][sl], S["kx"][sl], S["dl"][sl]
                                                      if delta is not None else None)[0])
                po = xp.abs().sum()
                pol_gap, admm_gap = float(po - Dj), float(cobj[j] - Dv[j])
                admm_ok = admm_gap <= tol * max(float(cobj[j]), _TINY) and bool(cfe[j] <= feas_allow)
                if pol_gap > tol * max(float(po), _TINY) and (admm_ok or pol_gap >= admm_gap):
                    continue  # a certified polished point wins; else the better certified point
                cand[j], cobj[j], cfe[j], Dv[j], pol[j] = xp, po, pf, Dj, True
            # the certificate trusts no step of the iteration: budget, matching and gap are measured
            # (|gap|: a point infeasible enough to undercut the dual bound is not certified either)
            ok = (((cobj - Dv).abs() <= tol * torch.clamp(cobj, min=_TINY)) & (cfe <= feas_allow)
                  & ball_ok(cand, S["kx"]))
            failed = tried & ~pol
            S["nextp"] = torch.where(failed, k_it + S["wait"], S["nextp"])
            S["wait"] = torch.where(failed, 2 * S["wait"], S["wait"])
            # a row certified only by the dense x keeps iterating for a sparse polished point, up to
            # 4x the iterations of its first certificate (its certified point is kept meanwhile)
            dense = ok & xin & ~pol
            S["cert"] = torch.where(dense & (S["cert"] < 0), k_it, S["cert"])
            finish = ok & (~dense | (k_it >= 4 * S["cert"]))
            upd = ok | (S["cert"] < 0)
            act = S["act"]
            Xbest[act[upd]], best_dual[act[upd]], polished[act[upd]] = cand[upd], Dv[upd], pol[upd]
            rho_out[act] = rho
            done[act[finish]] = True
            # --- rho balancing on the normalised residuals; the scaled dual u follows rho
            nrm = torch.linalg.vector_norm
            rp = nrm(Xa - Z, dim=1) / torch.clamp(torch.maximum(nrm(Xa, dim=1), nrm(Z, dim=1)), min=_TINY)
            rd = nrm(rho[:, None] * dz, dim=1) / torch.clamp(nrm(rho[:, None] * Uu, dim=1), min=_TINY)
            ratio = torch.sqrt(torch.clamp(rp, min=_TINY) / torch.clamp(rd, min=_TINY))
            change = (ratio > 5.0) | (ratio < 0.2)
            new_rho = torch.where(change, torch.clamp(rho * ratio, min=1e-12, max=1e12), rho)
            S["U"] = Uu * (rho / new_rho)[:, None]
            S["rho"] = new_rho
            if bool(finish.any()):
                S = {key: v[~finish] for key, v in S.items()}
        done[S["act"][S["cert"] >= 0]] = True  # certified before max_iter, no polished point found

    # ------------------------------------------------------------------ assemble, fall back
    W = torch.zeros((r, d), dtype=torch.float64, device=dev)
    W[:, red.live] = Xbest / red.sig
    if red.RU_pinv is not None:  # w_U = R_U^+ (y - R_{~U} v)
        W[:, fr] = (Yt - W[:, red.notU] @ red.RnotU.T) @ red.RU_pinv.T
    W[zero] = 0.0
    status = ["optimal" if bool(done[i]) else "max_iter" for i in range(r)]
    solver = ["admm-polish" if bool(polished[i]) else "admm" for i in range(r)]
    for i in torch.nonzero(range_bad).flatten().tolist():
        status[i], solver[i] = "infeasible", "range"
    for i in torch.nonzero(ball_bad).flatten().tolist():
        status[i], solver[i] = "infeasible", "unique"
    if fallback:
        left = [i for i in range(r) if status[i] == "max_iter"]
        if left:
            from .cvx import bpdn_row, exact_row

            Rn, Yn = Rt.cpu().numpy(), Yt.cpu().numpy()
            pen = (~fr).cpu().numpy()
            sg, cn = sig_all.cpu().numpy(), cons.cpu().numpy()
            for i in left:
                if eps > 0:
                    delta2 = float((eps * tn[i]) ** 2 - rt[i] ** 2)
                    sol = bpdn_row(Rn, Yn[i], float(np.sqrt(max(delta2, 0.0))), kappa=kappa, constrained=cn,
                                   penalized=pen, sigma=sg)
                else:
                    sol = exact_row(Rn, Yn[i], kappa=kappa, constrained=cn, penalized=pen, sigma=sg)
                solver[i] = sol.solver
                if sol.w is None:
                    status[i] = "infeasible" if sol.status == "infeasible" else "max_iter"
                    continue
                W[i] = torch.as_tensor(sol.w, dtype=torch.float64, device=dev)
                status[i] = "fallback" if sol.status == "optimal" else "inaccurate"
                best_dual[i] = float("nan")
    infeasible = torch.tensor([s == "infeasible" for s in status], dtype=torch.bool, device=dev)
    W[infeasible] = float("nan")
    pen_mask = ~fr
    objective = (W[:, pen_mask].abs() * sig_all[pen_mask]).sum(dim=1)
    res = Yt - W @ Rt.T
    feasibility = torch.sqrt((res * res).sum(dim=1) + rt * rt) / torch.clamp(tn, min=_TINY)
    feasibility[zero] = 0.0
    l1 = W[:, cons].abs().sum(dim=1)
    gap = objective - best_dual
    return BasisPursuitResult(
        W=from_engine(W, numpy), objective=from_engine(objective, numpy), dual=from_engine(best_dual, numpy),
        gap=from_engine(gap, numpy), feasibility=from_engine(feasibility, numpy),
        range_residual=from_engine(torch.where(zero, torch.zeros_like(rel_range), rel_range), numpy),
        l1=from_engine(l1, numpy), iterations=from_engine(iters, numpy), rho=from_engine(rho_out, numpy),
        status=tuple(status), solver=tuple(solver))


def _lstsq(A: Tensor, rhs: Tensor) -> Tensor:
    """Least squares ``min ||A c - rhs||`` (QR with column pivoting on the CPU)."""
    driver = "gelsy" if A.device.type == "cpu" else None
    return torch.linalg.lstsq(A, rhs[:, None], driver=driver).solution[:, 0]


def _polish(red: _Reduced, x0: Tensor, b: Tensor, z: Tensor, consL: Tensor, cw: Tensor,
            kap: float) -> tuple[Tensor, Tensor | None] | None:
    """Active-set polish of an ADMM point ``z`` of BP (module docstring): the vertex of the LP
    with ``z``'s support ``E`` and signs, and the dual that certifies it.

    Primal: the point of the affine set ``R'' x = b`` with ``x_j = 0`` off ``E`` and, when ``z`` is
    on the boundary of the ball, ``sum_{j in S} c_j sign(z_j) x_j = kappa``. In the null-space
    form ``x = x0 + N c`` these are ``(|~E| [+ 1]) x k`` equations in ``c``; in the range form
    ``L Q1_E^T x_E = b`` they are ``(r [+ 1]) x |E|`` equations in ``x_E``: the smaller system is
    solved by least squares (its residual is judged by the caller's matching test). Dual: the
    optimality conditions of the LP at that vertex, ``g_E = sign(x_E) (1 + mu c_E [E in S])``
    with ``g perp N``: with ``g = Q1 a`` (range form) ``Q1_E a - mu (sign(x) c)_{E cap S} =
    sign(x_E)``, ``|E| x (r [+ 1])``; with ``g`` free off ``E`` (null form) ``N_{~E}^T g_{~E} +
    mu N_E^T (sign(x) c)_{E cap S} = -N_E^T sign(x_E)``, ``k x (|~E| [+ 1])``. Its solution is
    returned for the caller to certify (a valid dual point only after the caller's scaling).
    Returns None when the primal system is far from consistent (the support is not yet that
    of a vertex)."""
    N, Q1, L = red.N, red.Q1, red.L
    E = z != 0
    off = ~E
    nE, noff = int(E.sum()), int(off.sum())
    if nE == 0:
        return None
    sg = torch.sign(z)
    k, r = N.shape[1], Q1.shape[1]
    ballv = torch.zeros_like(z)
    ballv[consL] = cw
    bw = ballv * sg  # the ball's linear form on the orthant of z
    active = bool(consL.any()) and float((z.abs() * ballv).sum()) >= kap * (1.0 - 1e-9)
    kap_t = torch.tensor([kap], dtype=z.dtype, device=z.device)
    range_form = r * nE < noff * k
    if range_form:  # unknowns x_E
        A = (Q1[E] @ L.T).T
        rhs = b
        if active:
            A, rhs = torch.cat([A, bw[E][None]]), torch.cat([rhs, kap_t])
        xE = _lstsq(A, rhs)
        res = A @ xE - rhs
        x = torch.zeros_like(z)
        x[E] = xE
        if float(res.abs().max()) > 1e-6 * max(float(rhs.abs().max()), _TINY):
            return None
    else:  # unknowns c
        A, rhs = N[off], -x0[off]
        if active:
            A, rhs = torch.cat([A, (bw @ N)[None]]), torch.cat([rhs, kap_t - (bw @ x0)[None]])
        if A.shape[0] == 0:
            return None
        c = _lstsq(A, rhs)
        x = x0 + N @ c
        scale = max(float(x0.abs().max()), float(x.abs().max()), _TINY)
        if float((A @ c - rhs).abs().max()) > 1e-6 * scale:
            return None  # far from consistent; small residuals are judged by the caller's matching test
        x = torch.where(off, torch.zeros_like(x), x)
    # dual at the vertex
    g = None
    ball_col = sg[E] * ballv[E]
    if range_form or k == 0:
        M = Q1[E]
        if active:
            M = torch.cat([M, -ball_col[:, None]], dim=1)
        if M.shape[1]:
            sol = _lstsq(M, sg[E])
            g = Q1 @ sol[:r]
    else:
        NE = N[E]
        M = N[off].T
        if active:
            M = torch.cat([M, (NE.T @ ball_col)[:, None]], dim=1)
        if M.shape[1]:
            sol = _lstsq(M, -(NE.T @ sg[E]))
            g = sg.clone()
            g[off] = sol[:noff]
            if active:
                g[E] = sg[E] * (1.0 + sol[-1] * ballv[E])
    return x, g


def _polish_bpdn(red: _Reduced, b: Tensor, z: Tensor, delta: Tensor, consL: Tensor, cw: Tensor,
                 kap: float) -> tuple[Tensor, Tensor | None] | None:
    """Support polish of an ADMM point ``z`` of BPDN (SVD form, ``A = diag(s) Q1^T``): the point
    with ``z``'s support ``E`` and signs ``s_E`` that satisfies the optimality conditions of

        min ||x||_1   s.t.   ||A x - b|| <= delta,   sum_{j in S} c_j |x_j| <= kappa

    with the matching constraint tight. Stationarity on ``E`` is ``A_E^T (b - A_E x_E) = lam
    (s_E + nu (c s)_{E cap S})`` (``lam > 0`` the inverse multiplier of the matching constraint,
    ``nu >= 0`` the budget's), so with ``mu = lam nu``

        x_E = p - lam q - mu q2,   p = A_E^+ b,   q = G^{-1} s_E,   q2 = G^{-1} (c s)_{E cap S}

    (``G = A_E^T A_E``, ``A_E`` of full column rank). When ``z`` is on the budget's boundary the
    budget is kept tight, ``(c s)^T x = kappa``, which fixes ``mu`` as an affine function of
    ``lam``; ``||A_E x_E(lam) - b||^2 = delta^2`` is then a quadratic in ``lam``, whose positive
    root is taken. Dual: ``g = A^T (b - A x) / lam``, a subgradient of the objective at ``x`` when
    the support and signs are right (the caller certifies it through the weak-duality bound in
    any case, and measures the matching and the budget of ``x``). Returns None when ``A_E`` is
    rank deficient or the quadratic has no positive root."""
    E = z != 0
    nE = int(E.sum())
    sv, Q1 = torch.diagonal(red.L), red.Q1
    if nE == 0 or nE > sv.numel():
        return None
    sg = torch.sign(z[E])
    AE = sv[:, None] * Q1[E].T  # (r, nE)
    Qa, Ra = torch.linalg.qr(AE)
    dg = torch.diagonal(Ra).abs()
    if float(dg.min()) <= float(dg.max()) * max(AE.shape) * _EPS * 100:
        return None

    def ginv(v: Tensor) -> Tensor:  # G^{-1} v = Ra^{-1} Ra^{-T} v
        w = torch.linalg.solve_triangular(Ra.T, v[:, None], upper=False)
        return torch.linalg.solve_triangular(Ra, w, upper=True)[:, 0]

    p = torch.linalg.solve_triangular(Ra, (Qa.T @ b)[:, None], upper=True)[:, 0]
    q = ginv(sg)
    ballv = torch.zeros_like(z)
    ballv[consL] = cw
    cE = ballv[E] * sg  # (c s) on E (zero off S)
    active = bool(consL.any()) and float((z.abs() * ballv).sum()) >= kap * (1.0 - 1e-9) and bool(cE.any())
    if active:
        q2 = ginv(cE)
        den = float(cE @ q2)
        if abs(den) <= _TINY:
            return None
        p = p - q2 * (float(cE @ p) - kap) / den
        q = q - q2 * float(cE @ q) / den
    r0, r1 = AE @ p - b, AE @ q
    a, beta, c0 = float(r1 @ r1), float(r0 @ r1), float(r0 @ r0) - float(delta) ** 2
    disc = beta * beta - a * c0
    if a <= _TINY or disc < 0.0:
        return None
    lam = (beta + np.sqrt(disc)) / a
    if lam <= 0.0:
        return None
    x = torch.zeros_like(z)
    x[E] = p - lam * q
    g = Q1 @ (sv * (b - (x @ Q1) * sv)) / lam
    return x, g
