"""LP relaxation of the worst-case state problem for ReLU models (paper 000 §4.5, Thm 4.5, App. E).

Problem (4.12): ``p* = max_{x, u in U} sum_i f_i(x_i) : x = (A x + B u + b)_+, |x - x0| <= sigma_x``
with ``sigma_x`` the box bound of Thm 4.1, ``sigma_x = (I - |A|)^-1 |B| sigma_u`` (eq. 4.5;
:func:`idlkit.robust.bounds.state_box_bound`, with its cardinality refinement when ``k`` is
given), widened by the model solver's tolerance, and ``U`` the box (4.1) or the
cardinality-constrained set (4.2), optionally intersected with a valid input range
``clip = (lo, hi)``. Optionally (``tighten``) the box is replaced by per-unit LP bounds
(:func:`lp_state_bounds`: ``max +-x_i`` over the relaxation, the "implicit LP" bounds of
paper 003 Fig. 4.3).

What is solved (all in float64, with scipy's HiGHS):

* **Relaxed constraints** (the bidual of Thm 4.5 for ReLU, end of §4.5): ``x >= A x + B u + b``,
  ``x >= 0``, ``xlo <= x <= xhi`` with ``xlo = (x0 - sigma_x)_+``, ``xhi = x0 + sigma_x``. With
  ``triangle=True`` (default) the upper side of the ReLU graph is added as well (the convex hull
  of ``{(z, z_+) : zlo <= z <= zhi}``, the "triangle" relaxation): ``x_i <= zhi_i (z_i - zlo_i) /
  (zhi_i - zlo_i)`` for an unstable unit, ``x_i <= z_i`` for ``zlo_i >= 0`` and ``x_i <= 0`` for
  ``zhi_i <= 0``, with ``[zlo, zhi]`` interval bounds of ``z = A x + B u + b`` over the boxes of
  ``x`` and ``u`` (and ``z <= x <= xhi``). Every true pair ``(x(u), u)``, ``u in U``, satisfies all
  of them, so the optimum is an upper bound on ``p*`` either way; the cuts only make it tighter
  and the attack better (without them, ``max c^T x`` with ``c >= 0`` is attained at ``x = xhi``
  whatever ``u``).
* **Objectives**: ``"linear"``: ``c^T x + e^T u + const`` (§4.5, ``f_i(xi) = c_i xi``; the term in
  ``u`` serves output margins ``y_j - y_y``). ``"l2"``: the state discrepancy
  ``||x - x0||_2^2`` of §4.5/§7.3.2 (``f_i(xi) = (xi - x0_i)^2``). In the bidual of Thm 4.5,
  ``-g_i^*`` is the concave envelope of ``f_i`` on ``[xlo_i, xhi_i]``; for a convex ``f_i`` it is
  the chord ``f_i(xlo_i) + (xhi_i + xlo_i - 2 x0_i)(xi - xlo_i)``, which is linear: the l2 bound
  is **one LP** with that linear objective (exact at the box corners). The attack is then
  improved by ``refine`` rounds of linearisation at the true state (``c = 2 (x(u) - x0)``, the
  gradient of the discrepancy: a DC / Frank-Wolfe step on the relaxation); the best true value
  is kept. The bound stays the chord LP.
* **Cardinality** (4.2), ``k`` inputs at most: ``card_method="hull"`` (default) solves the
  paper's bidual (end of §4.5) over the convex hull ``|u - u0| <= sigma_u``,
  ``||diag(sigma_u)^-1 (u - u0)||_1 <= k`` (an LP: a valid bound over ``U^card``); its ``u``
  is made feasible by keeping the ``k`` largest ``|u_j - u0_j| / sigma_j`` (the rest reset to
  ``u0``). ``card_method="milp"`` models ``U^card`` exactly with binaries
  (``|u_j - u0_j| <= sigma_j s_j``, ``sum s <= k``, ``scipy.optimize.milp``): a tighter bound and
  a feasible ``u`` directly, at MILP cost (small ``p``).

A non-optimal solver status raises :class:`~idlkit.errors.SolverError` with the status: no bound is
ever reported from it. The bound is the solver's primal optimum (HiGHS tolerances ~1e-7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .._matrix import as_matrix
from .._validation import check_choice, check_int, check_scalar
from ..errors import (
    ConfigurationError,
    InputError,
    NonFiniteError,
    ShapeError,
    SolverError,
    WellPosednessError,
)
from .result import AttackResult

__all__ = ["lp_attack", "lp_state_bounds", "LPStateBounds", "state_sigma", "LPProblem"]

Objective = Literal["l2", "linear"]


# ----------------------------------------------------------------------------- shared helpers

def _to_np(M: Tensor | None, shape: tuple[int, ...]) -> np.ndarray | sp.csr_array:
    """float64 numpy (dense) or scipy CSR (sparse) copy of a model matrix; zeros for None."""
    if M is None:
        return np.zeros(shape)
    return as_matrix(M)


def _dense(M: np.ndarray | sp.csr_array) -> np.ndarray:
    return M.toarray() if sp.issparse(M) else M


def require_relu(model: torch.nn.Module, what: str) -> None:
    """Raise :class:`ConfigurationError` unless the model's activation is the componentwise ReLU."""
    act = model.activation
    if getattr(act, "name", None) != "relu":
        raise ConfigurationError(
            f"{what} is defined for the ReLU activation only (paper 000 §4.5-4.6: it uses the "
            f"representation x = z_+), got activation "
            f"{getattr(act, 'name', type(act).__name__)!r} ({act!r}). Fix: use a ReLU model (e.g. "
            f"ImplicitModel(..., activation='relu') or a converted ReLU network), or use the "
            f"activation-agnostic bounds: state_box_bound / output_box_bound / sensitivity_matrix "
            f"(Thm 4.1-4.4, any Lipschitz map) or interval_bounds (IBP, triangular models)")


def check_sigma(sigma_u: Tensor | np.ndarray | float, p: int) -> np.ndarray:
    """``sigma_u`` as a float64 ``(p,)`` array; scalar broadcast; NaN/Inf/negative raise."""
    s = np.asarray(sigma_u.detach().cpu() if isinstance(sigma_u, Tensor) else sigma_u, dtype=np.float64)
    if s.ndim == 0:
        s = np.full(p, float(s))
    if s.shape != (p,):
        raise ShapeError(f"sigma_u must be a scalar or have shape ({p},), got {s.shape}")
    if not np.isfinite(s).all():
        j = int(np.flatnonzero(~np.isfinite(s))[0])
        raise NonFiniteError(f"sigma_u contains NaN or Inf (sigma_u[{j}] = {s[j]})")
    if (s < 0).any():
        j = int(np.flatnonzero(s < 0)[0])
        raise InputError(f"sigma_u must be >= 0 (an input box radius), got sigma_u[{j}] = {s[j]:.6g}")
    return s


def check_u0(model: torch.nn.Module, u0: Tensor | np.ndarray) -> np.ndarray:
    """The nominal input as a float64 ``(p,)`` array (a ``(1, p)`` batch is accepted)."""
    p = model.in_features
    u = np.asarray(u0.detach().cpu() if isinstance(u0, Tensor) else u0, dtype=np.float64)
    if u.ndim == 2 and u.shape[0] == 1:
        u = u[0]
    if u.shape != (p,):
        raise ShapeError(f"u0 must have shape ({p},) (one sample), got {tuple(u.shape)}")
    if not np.isfinite(u).all():
        raise NonFiniteError("u0 contains NaN or Inf")
    return u


def check_k(k: int | None, p: int) -> int | None:
    if k is None:
        return None
    return check_scalar("k", k, kind=int, low=0, high=p,  # type: ignore[return-value]
                        why="the number of perturbed inputs of eq. 4.2; None for the box set")


def input_box(u0: np.ndarray, sigma: np.ndarray, clip: tuple[float, float] | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """``[u0 - sigma, u0 + sigma]`` intersected with the valid range ``clip``."""
    lo, hi = u0 - sigma, u0 + sigma
    if clip is not None:
        a, b = (float(c) for c in clip)
        if not a <= b:
            raise ConfigurationError(f"clip must be (lo, hi) with lo <= hi, got {clip!r}")
        if (u0 < a).any() or (u0 > b).any():
            raise InputError(f"u0 lies outside the valid range clip={clip!r} (min {u0.min():.6g}, "
                             f"max {u0.max():.6g}); clip it first")
        lo, hi = np.maximum(lo, a), np.minimum(hi, b)
    return lo, hi


def state_sigma(model: torch.nn.Module, sigma_u: np.ndarray, k: int | None = None) -> np.ndarray:
    """Thm 4.1 (eq. 4.5): ``sigma_x = (I - |A|)^-1 |B| sigma_u`` for a CONE map, float64 ``(n,)``.

    A thin wrapper of :func:`idlkit.robust.bounds.state_box_bound` (certified linear solve, sparse
    when ``A`` is sparse; the fixed-point iteration as fallback). With ``k`` (eq. 4.2) it is the
    cardinality refinement of that function: the ``k`` largest entries of each row of
    ``(I - |A|)^-1 |B| diag(sigma_u)``, never larger than the box bound.

    Raises:
        WellPosednessError: ``lambda_pf(|A|) < 1`` cannot be certified (the bound would be
            meaningless); the message names ``lambda_pf``.
    """
    from .bounds import state_box_bound

    if model.hidden == 0:
        return np.zeros(0)
    if k == 0:  # no input may change: x = x0 (bounds.py takes k >= 1); still certify lambda_pf
        return np.zeros_like(state_box_bound(model, sigma_u).numpy(), dtype=np.float64)
    sx = state_box_bound(model, sigma_u, k).numpy().astype(np.float64, copy=True)
    if not np.isfinite(sx).all() or (sx < 0).any():  # pragma: no cover - state_box_bound certifies
        raise WellPosednessError("(I - |A|)^-1 |B| sigma_u is not finite and nonnegative: "
                                 "lambda_pf(|A|) is too close to 1 for Thm 4.1")
    return sx


@torch.no_grad()
def true_states(model: torch.nn.Module, U: np.ndarray) -> np.ndarray:
    """Equilibrium states ``(m, n)`` (float64 copy) of the model at the rows of ``U``."""
    dtype = model.A.dtype
    X = model.equilibrium(torch.as_tensor(np.atleast_2d(U), dtype=dtype, device=model.A.device))
    return X.detach().to("cpu", torch.float64).numpy()


def _state_slack(model: torch.nn.Module) -> float:
    """Widening of the state box covering the solver's error on ``x0`` and ``x(u)``."""
    tol = float(getattr(model.settings, "tol", 1e-6))
    eps = float(torch.finfo(model.A.dtype).eps)
    return 10.0 * max(tol, 100 * eps)


# ----------------------------------------------------------------------------- the LP

@dataclass(frozen=True)
class LPProblem:
    """The relaxed feasible set (box/triangle constraints of the module docstring), float64.

    Variables ``v = [x (n), u (p), t (p if k is not None)]``; ``t`` are the cardinality
    indicators (continuous in [0, 1] for the hull, binary for the MILP).
    """

    n: int
    p: int
    A_ub: sp.csr_array
    b_ub: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    integrality: np.ndarray
    x0: np.ndarray
    xlo: np.ndarray
    xhi: np.ndarray
    sigma_x: np.ndarray
    u0: np.ndarray
    sigma_u: np.ndarray
    k: int | None

    @classmethod
    def build(cls, model: torch.nn.Module, u0: np.ndarray, sigma_u: np.ndarray, k: int | None,
              clip: tuple[float, float] | None, card_method: str, triangle: bool,
              x0: np.ndarray | None = None,
              x_bounds: tuple[np.ndarray, np.ndarray] | None = None) -> LPProblem:
        """The relaxed set around ``u0``; ``x_bounds = (lo, hi)``: extra valid state bounds (e.g.
        from :func:`lp_state_bounds`, already widened for the solver tolerance), intersected with
        the Thm 4.1 box."""
        n, p = model.hidden, model.in_features
        A = sp.csr_array(_to_np(model.A, (n, n)))
        Bm = sp.csr_array(_to_np(model.B, (n, p)))
        b = np.zeros(n) if model.b is None else model.b.detach().to("cpu", torch.float64).numpy()
        ulo, uhi = input_box(u0, sigma_u, clip)
        sx = state_sigma(model, sigma_u, k)  # Thm 4.1; with k: the cardinality refinement (4.2)
        if x0 is None:
            x0 = true_states(model, u0)[0]
        # widen for the error of the model's solver on x0 (and x(u)) and for rounding
        slack = _state_slack(model) * (1.0 + np.abs(x0))
        sxw = sx * (1 + 1e-9) + slack
        xlo, xhi = np.maximum(x0 - sxw, 0.0), x0 + sxw
        if x_bounds is not None:
            xlo, xhi = np.maximum(xlo, x_bounds[0]), np.minimum(xhi, x_bounds[1])
            xlo = np.minimum(xlo, xhi)
        I = sp.identity(n, format="csr")
        rows = [sp.hstack([A - I, Bm], format="csr")]  # A x + B u + b <= x
        rhs = [-b]
        if triangle and n:
            xc, xr = (xlo + xhi) / 2, (xhi - xlo) / 2
            uc, ur = (ulo + uhi) / 2, (uhi - ulo) / 2
            zc = A @ xc + Bm @ uc + b
            zr = abs(A) @ xr + abs(Bm) @ ur
            zr = zr * (1 + 1e-9) + 1e-12
            zlo, zhi = zc - zr, np.minimum(zc + zr, xhi)  # z <= x <= xhi
            zlo = np.where(xlo > 0, np.maximum(zlo, xlo), zlo)  # x_i > 0 => z_i = x_i
            inactive = zhi <= 0
            xhi = np.where(inactive, 0.0, xhi)
            xlo = np.minimum(xlo, xhi)
            active = (zlo >= 0) & ~inactive
            unstable = ~inactive & ~active
            a = np.where(active, 1.0, 0.0)
            a[unstable] = zhi[unstable] / (zhi[unstable] - zlo[unstable])
            off = np.where(unstable, -zlo, 0.0)
            sel = np.flatnonzero(active | unstable)
            if sel.size:
                Da = sp.diags_array(a[sel])
                Esel = I[sel]
                rows.append(sp.hstack([Esel - Da @ A[sel], -(Da @ Bm[sel])], format="csr"))
                rhs.append(a[sel] * (b[sel] + off[sel]))  # x - a (Ax + Bu) <= a (b - zlo)
        lower, upper = np.concatenate([xlo, ulo]), np.concatenate([xhi, uhi])
        integrality = np.zeros(n + p)
        if k is not None:
            # |u_j - u0_j| <= sigma_j t_j, sum t <= k (t binary: exact (4.2); t in [0,1]: its hull)
            Sg = sp.diags_array(sigma_u)
            Z = sp.csr_array((p, n))
            Ip = sp.identity(p, format="csr")
            rows = [sp.hstack([R, sp.csr_array((R.shape[0], p))], format="csr") for R in rows]
            rows += [sp.hstack([Z, Ip, -Sg], format="csr"), sp.hstack([Z, -Ip, -Sg], format="csr"),
                     sp.hstack([sp.csr_array((1, n + p)), sp.csr_array(np.ones((1, p)))], format="csr")]
            rhs += [u0, -u0, np.array([float(k)])]
            lower, upper = np.concatenate([lower, np.zeros(p)]), np.concatenate([upper, np.ones(p)])
            integrality = np.concatenate([integrality, np.full(p, 1.0 if card_method == "milp" else 0.0)])
        return cls(n=n, p=p, A_ub=sp.vstack(rows, format="csr"), b_ub=np.concatenate(rhs),
                   lower=lower, upper=upper, integrality=integrality, x0=x0, xlo=xlo, xhi=xhi,
                   sigma_x=sx, u0=u0, sigma_u=sigma_u, k=k)

    def maximize(self, c: np.ndarray, e: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, str]:
        """``max c^T x + e^T u`` over the relaxed set: ``(value, x, u, status)``; raises on failure."""
        from scipy.optimize import Bounds, LinearConstraint, linprog, milp

        nv = self.lower.size
        obj = np.zeros(nv)
        obj[:self.n], obj[self.n:self.n + self.p] = -c, -e
        if self.integrality.any():
            res = milp(obj, constraints=LinearConstraint(self.A_ub, -np.inf, self.b_ub),
                       integrality=self.integrality, bounds=Bounds(self.lower, self.upper))
            ok = res.status == 0 and res.x is not None
        else:
            res = linprog(obj, A_ub=self.A_ub, b_ub=self.b_ub,
                          bounds=np.stack([self.lower, self.upper], axis=1), method="highs")
            ok = res.status == 0
        if not ok:
            raise SolverError(
                f"HiGHS did not solve the LP relaxation of Thm 4.5 (status {res.status}: "
                f"{res.message}); no bound is reported. An infeasible relaxation means the state box "
                f"does not contain the nominal state (check the model's solver tolerance); a time or "
                f"iteration limit: try a smaller problem or card_method='hull'",
                status=(res.status, res.message))
        v = res.x
        return float(-res.fun), v[:self.n], v[self.n:self.n + self.p], "optimal"

    def feasible_u(self, u: np.ndarray, clip_box: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Project a relaxation's ``u`` into the attacked set: the box (and range), then at most
        ``k`` changed inputs (the largest ``|u_j - u0_j| / sigma_j``)."""
        u = np.clip(u, *clip_box)
        if self.k is None:
            return u
        d = np.abs(u - self.u0)
        score = np.where(self.sigma_u > 0, d / np.where(self.sigma_u > 0, self.sigma_u, 1.0), 0.0)
        keep = np.zeros(self.p, dtype=bool)
        if self.k:
            top = np.argsort(-score, kind="stable")[:self.k]
            keep[top] = score[top] > 0
        return np.where(keep, u, self.u0)


@dataclass(frozen=True)
class LPStateBounds:
    """Per-coordinate LP bounds on the state (Thm 4.5 relaxation with ``f = +-e_i``), float64.

    Attributes:
        lower, upper: ``(len(coords),)`` tensors: ``lower <= x(u)[coords] <= upper`` for every
            ``u`` in the set (widened outward for the solver tolerance).
        coords: the state coordinates bounded, ``(len(coords),)`` int64.
        x0: ``(n,)`` nominal state; ``sigma_x``: ``(n,)`` the Thm 4.1 radius the LP starts from.
        n_lp: number of LPs solved.
    """

    lower: Tensor
    upper: Tensor
    coords: Tensor
    x0: Tensor
    sigma_x: Tensor
    n_lp: int


def _lp_tol(v: np.ndarray) -> np.ndarray:
    """Outward widening of an LP optimum for HiGHS' feasibility/optimality tolerances (~1e-7)."""
    return 1e-6 * (1.0 + np.abs(v))


def lp_state_bounds(model: torch.nn.Module, u0: Tensor, sigma_u: Tensor | float, k: int | None = None,
                    coords: Tensor | np.ndarray | list[int] | None = None, *,
                    clip: tuple[float, float] | None = None, triangle: bool = True,
                    card_method: Literal["hull", "milp"] = "hull", rounds: int = 1) -> LPStateBounds:
    """Implicit LP bounds on state coordinates (paper 003 Fig. 4.3, "implicit LP"; paper 000 Thm 4.5).

    For each coordinate ``i`` in ``coords`` solves ``max +-x_i`` over the relaxed set of
    :class:`LPProblem` (the bidual of Thm 4.5 with ``f_i(xi) = +-xi``, i.e. the linear
    objective ``c = +-e_i`` of §4.5: ``x >= A x + B u + b``, ``x >= 0``, the Thm 4.1 box
    ``|x - x0| <= sigma_x`` and, with ``triangle``, the upper ReLU cuts), over the box (4.1) or,
    with ``k``, the hull of the cardinality set (4.2). Every true state satisfies the relaxation,
    so ``[lower, upper]`` contains ``x(u)[coords]`` for every ``u`` in the set; the result always
    lies inside the Thm 4.1 box (``x0 +- sigma_x``, widened only by the solver tolerance).

    ``rounds > 1`` iterates: all ``2 n`` bounds of a round become the state box of the next LP
    (tighter interval bounds of ``z = A x + B u + b``, hence tighter triangle cuts). For a
    converted feed-forward network ``rounds = depth`` gives LP-tight bounds layer by layer.

    Args:
        model: a ReLU :class:`~idlkit.model.ImplicitModel` with ``lambda_pf(|A|) < 1``.
        u0: nominal input ``(p,)``; sigma_u: box radius, scalar or ``(p,)``; k: cardinality.
        coords: state coordinates to bound (default: all ``n``).
        clip, triangle, card_method: as in :func:`lp_attack`.
        rounds: tightening rounds (``>= 1``); each costs ``2 n`` LPs (the last ``2 len(coords)``).

    Raises:
        ConfigurationError: not ReLU, bad ``k``/``rounds``/``card_method``; SolverError: HiGHS
        failed; WellPosednessError: Thm 4.1 cannot be certified.
    """
    require_relu(model, "the LP relaxation (Thm 4.5)")
    check_choice("card_method", card_method, ("hull", "milp"))
    check_int("rounds", rounds, 1)
    n, p = model.hidden, model.in_features
    u0n = check_u0(model, u0)
    sig = check_sigma(sigma_u, p)
    k = check_k(k, p)
    if coords is None:
        idx = np.arange(n)
    else:
        idx = np.asarray(coords.detach().cpu() if isinstance(coords, Tensor) else coords).astype(np.int64)
        idx = idx.reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ShapeError(f"coords must be state indices in [0, {n}), got min {idx.min()}, "
                             f"max {idx.max()}")
    x0 = true_states(model, u0n)[0]
    bounds: tuple[np.ndarray, np.ndarray] | None = None
    n_lp = 0
    prob = None
    for r in range(rounds):
        prob = LPProblem.build(model, u0n, sig, k, clip, card_method, triangle, x0=x0, x_bounds=bounds)
        todo = idx if r == rounds - 1 else np.arange(n)
        lo, hi = prob.xlo[todo].copy(), prob.xhi[todo].copy()
        e0 = np.zeros(p)
        for j, i in enumerate(todo):
            c = np.zeros(n)
            if prob.xhi[i] > prob.xlo[i]:
                c[i] = 1.0
                vmax = prob.maximize(c, e0)[0]
                c[i] = -1.0
                vmin = -prob.maximize(c, e0)[0]
                n_lp += 2
                hi[j] = min(hi[j], vmax + _lp_tol(np.array(vmax)))
                lo[j] = max(lo[j], vmin - _lp_tol(np.array(vmin)))
        lo = np.minimum(lo, hi)
        if r < rounds - 1:
            bounds = (lo, hi)
    assert prob is not None
    t = torch.from_numpy
    return LPStateBounds(t(np.ascontiguousarray(lo)), t(np.ascontiguousarray(hi)), t(idx.copy()), t(x0),
                         t(prob.sigma_x.copy()), n_lp)


def lp_attack(model: torch.nn.Module, u0: Tensor, sigma_u: Tensor | float, k: int | None = None, *,
              objective: Objective = "l2", c: Tensor | np.ndarray | None = None,
              e: Tensor | np.ndarray | None = None, const: float = 0.0,
              clip: tuple[float, float] | None = None, card_method: Literal["hull", "milp"] = "hull",
              triangle: bool = True, refine: int = 3, tighten: bool | int = False) -> AttackResult:
    """LP bound (Thm 4.5) on the worst-case state objective and the attack it suggests.

    Args:
        model: a ReLU :class:`~idlkit.model.ImplicitModel` (dense or sparse matrices) with
            ``lambda_pf(|A|) < 1``.
        u0: nominal input ``(p,)``.
        sigma_u: box radius (eq. 4.1), scalar or ``(p,)``, ``>= 0``.
        k: ``None`` for the box set (dense attack); an integer for the cardinality set (4.2)
            (sparse attack: at most ``k`` inputs change).
        objective: ``"l2"`` (``||x - x0||_2^2``, §7.3.2) or ``"linear"``
            (``c^T x + e^T u + const``; ``c (n,)`` required, ``e (p,)`` optional).
        clip: valid input range ``(lo, hi)`` intersected with the set.
        card_method: ``"hull"`` (LP over the convex hull of (4.2), default) or ``"milp"``.
        triangle: add the upper ReLU cuts (tighter, still valid; see the module docstring).
        refine: linearisation rounds improving the l2 attack (the bound does not change).
        tighten: ``False`` (default) uses the Thm 4.1 box as the state box; ``True`` (or an
            integer number of rounds) first replaces it by per-unit LP bounds
            (:func:`lp_state_bounds`, ``2 n`` small LPs per round): a tighter (still valid) bound
            and better triangle cuts, at ``2 n`` times the LP cost.

    Returns:
        :class:`AttackResult` with ``u_adv (p,)`` in the set, ``bound`` (float64, an upper bound
        of the objective over the set), ``value`` (the objective at the model's true state at
        ``u_adv``), ``status``; ``extra`` holds ``sigma_x``, ``x0``, ``lp_value`` (the relaxation's
        own objective at its solution) and ``n_lp`` (LPs solved).
    """
    require_relu(model, "the LP relaxation (Thm 4.5)")
    check_choice("objective", objective, ("l2", "linear"))
    check_choice("card_method", card_method, ("hull", "milp"))
    n, p = model.hidden, model.in_features
    u0n = check_u0(model, u0)
    sig = check_sigma(sigma_u, p)
    k = check_k(k, p)
    check_int("refine", refine, 0)
    e_np = np.zeros(p) if e is None else np.asarray(e.detach().cpu() if isinstance(e, Tensor) else e,
                                                    dtype=np.float64)
    if e_np.shape != (p,):
        raise ShapeError(f"e must have shape ({p},), got {e_np.shape}")
    if objective == "linear":
        if c is None:
            raise ConfigurationError("objective='linear' needs c, a (n,) vector (c^T x + e^T u + const)")
        c_np = np.asarray(c.detach().cpu() if isinstance(c, Tensor) else c, dtype=np.float64)
        if c_np.shape != (n,):
            raise ShapeError(f"c must have shape ({n},), got {c_np.shape}")
        if not (np.isfinite(c_np).all() and np.isfinite(e_np).all() and np.isfinite(const)):
            raise NonFiniteError("c, e or const contains NaN or Inf")
    if isinstance(tighten, bool):
        rounds = int(tighten)
    elif isinstance(tighten, int) and tighten >= 0:
        rounds = tighten
    else:
        raise ConfigurationError(f"tighten must be a bool or an integer >= 0, got {tighten!r}")
    x_bounds, n_pre = None, 0
    if rounds and n:
        sb = lp_state_bounds(model, u0n, sig, k, clip=clip, triangle=triangle, card_method=card_method,
                             rounds=rounds)
        x_bounds, n_pre = (sb.lower.numpy(), sb.upper.numpy()), sb.n_lp
    prob = LPProblem.build(model, u0n, sig, k, clip, card_method, triangle, x_bounds=x_bounds)
    box = input_box(u0n, sig, clip)
    x0 = prob.x0

    def true_value(u: np.ndarray) -> tuple[float, np.ndarray]:
        x = true_states(model, u)[0]
        if objective == "l2":
            return float(((x - x0) ** 2).sum()), x
        return float(c_np @ x + e_np @ u + const), x

    if objective == "l2":
        lo, hi = prob.xlo, prob.xhi
        cc = hi + lo - 2 * x0  # chord slope of (xi - x0)^2 on [lo, hi]
        offset = float(((lo - x0) ** 2 - cc * lo).sum())
        bound, x_lp, u_lp, status = prob.maximize(cc, np.zeros(p))
        bound += offset
        lp_value = float(((x_lp - x0) ** 2).sum())
    else:
        bound, x_lp, u_lp, status = prob.maximize(c_np, e_np)
        bound += const
        lp_value = bound
    u_best = prob.feasible_u(u_lp, box)
    best, x_best = true_value(u_best)
    n_lp = 1 + n_pre
    if objective == "l2":
        for _ in range(refine):
            g = 2 * (x_best - x0)
            if not np.any(g):
                break
            _, _, u_r, _ = prob.maximize(g, np.zeros(p))
            n_lp += 1
            u_r = prob.feasible_u(u_r, box)
            val, x_r = true_value(u_r)
            if val <= best * (1 + 1e-12):
                break
            best, u_best, x_best = val, u_r, x_r
    dtype = model.A.dtype
    return AttackResult(u_adv=torch.as_tensor(u_best, dtype=dtype), bound=float(bound), value=best,
                        status=status, objective=objective,
                        n_perturbed=torch.tensor(int((u_best != u0n).sum())),
                        extra={"sigma_x": prob.sigma_x, "x0": x0, "lp_value": lp_value, "n_lp": n_lp,
                               "card_method": card_method if k is not None else None})
