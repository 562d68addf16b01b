"""LP relaxation of the worst-case state problem for ReLU models (paper 000 §4.5, Thm 4.5, App. E).

Problem (4.12): ``p* = max_{x, u in U} sum_i f_i(x_i) : x = (A x + B u + b)_+, |x - x0| <= sigma_x``
with ``sigma_x`` the box bound of Thm 4.1, ``sigma_x = (I - |A|)^-1 |B| sigma_u`` (eq. 4.5;
:func:`idlkit.robust.bounds.state_box_bound`, with its cardinality refinement when ``k`` is
given), widened by a certified bound on the model solver's error on ``x0``
(:func:`idlkit.robust.bounds.solution_error`), and ``U`` the box (4.1) or the
cardinality-constrained set (4.2), optionally intersected with a valid input range
``clip = (lo, hi)``. The state box actually used is the tightest cheap one, :func:`start_box`:
the Thm 4.1 box intersected with ``x >= 0``, with the IBP intervals
(:func:`idlkit.robust.interval_bounds`, feed-forward models) and with an optional user box
``start`` (e.g. linear bounds). Optionally (``tighten``) it is replaced by LP bounds of the
pre-activations (:func:`lp_state_bounds`: ``max +-z_i`` over the relaxation, layer by layer for a
feed-forward model, the "implicit LP" bounds of paper 003 Fig. 4.3).

What is solved (all in float64, with scipy's HiGHS):

* **Relaxed constraints** (the bidual of Thm 4.5 for ReLU, end of §4.5): ``x >= A x + B u + b``,
  ``x >= 0``, ``xlo <= x <= xhi`` (the start box, e.g. ``xlo = (x0 - sigma_x)_+``,
  ``xhi = x0 + sigma_x`` intersected with IBP). With
  ``triangle=True`` (default) the upper side of the ReLU graph is added as well (the convex hull
  of ``{(z, z_+) : zlo <= z <= zhi}``, the "triangle" relaxation): ``x_i <= zhi_i (z_i - zlo_i) /
  (zhi_i - zlo_i)`` for an unstable unit, ``x_i <= z_i`` for ``zlo_i >= 0`` and ``x_i <= 0`` for
  ``zhi_i <= 0``, with ``[zlo, zhi]`` the tightest available bounds of ``z = A x + B u + b``:
  interval arithmetic over the boxes of ``x`` and ``u``, intersected with the LP bounds of ``z``
  where ``tighten`` computed them, and with ``z <= x <= xhi``; the state box is then cut to the
  ReLU image ``[max(zlo, 0), max(zhi, 0)]``. Every true pair ``(x(u), u)``, ``u in U``, satisfies all
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
ever reported from it. **Rounding.** A reported bound is never the raw solver optimum (HiGHS' primal
optimum can lie 1e-7 relative on either side of the true one; 2e-15 below a reachable value was
seen): it is the safe dual bound of :meth:`LPProblem.maximize` (weak duality with HiGHS'
multipliers, evaluated with an outward rounding margin), which is valid for *any* multipliers and
so at worst looser by the solver's dual tolerance; a MILP's bound is the smaller of its LP
relaxation's safe bound and HiGHS' dual bound plus ``1e-6 (1 + |v|)``. The LPs of one relaxation
share a warm-started HiGHS instance (scipy's bundled one; only the objective changes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

__all__ = ["lp_attack", "lp_state_bounds", "LPStateBounds", "state_sigma", "start_box", "LPProblem"]

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

    Args:
        model: a ReLU :class:`~idlkit.model.ImplicitModel`.
        sigma_u: ``(p,)`` float64 radius, ``>= 0``.
        k: at most ``k`` inputs perturbed (eq. 4.2); ``None`` for the box set.

    Returns:
        ``(n,)`` float64 array ``sigma_x``.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> sx = state_sigma(model, np.full(3, 0.1))
        >>> sx.shape, np.allclose(sx, idlkit.robust.state_box_bound(model, 0.1).numpy())
        ((5,), True)
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


def _state_slack(model: torch.nn.Module, u0: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """``(n,)`` widening of the Thm 4.1 box around the computed ``x0`` that covers its distance to
    the exact equilibrium at ``u0``: the certified residual bound of
    :func:`idlkit.robust.bounds.solution_error` (the model's solver tolerance, its float32
    arithmetic and the rounding of ``u0`` to the model's dtype included), plus ``1e-12 (1 + |x0|)``."""
    from .bounds import solution_error

    if x0.size == 0:
        return np.zeros(0)
    err = solution_error(model, torch.from_numpy(np.atleast_2d(u0)), torch.from_numpy(np.atleast_2d(x0)))[0]
    return err + 1e-12 * (1.0 + np.abs(x0))


# ----------------------------------------------------------------------------- boxes

_EPS = float(np.finfo(np.float64).eps)


def _model_arrays(model: torch.nn.Module) -> tuple[sp.csr_array, sp.csr_array, np.ndarray]:
    """``A, B`` as float64 scipy CSR (a sparse model stays sparse) and ``b`` (zeros if None)."""
    n, p = model.hidden, model.in_features
    A = sp.csr_array(_to_np(model.A, (n, n)))
    Bm = sp.csr_array(_to_np(model.B, (n, p)))
    b = np.zeros(n) if model.b is None else model.b.detach().to("cpu", torch.float64).numpy()
    return A, Bm, b


def _interval_z(A: sp.csr_array, Bm: sp.csr_array, b: np.ndarray, xlo: np.ndarray, xhi: np.ndarray,
                ulo: np.ndarray, uhi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds of ``z = A x + B u + b`` over the boxes of ``x`` and ``u`` (center/radius
    form), rounded outward by ``4 (n + p + 2) eps`` times the magnitudes of the terms."""
    xc, xr = (xlo + xhi) / 2, (xhi - xlo) / 2
    uc, ur = (ulo + uhi) / 2, (uhi - ulo) / 2
    absA, absB = abs(A), abs(Bm)
    zc = A @ xc + Bm @ uc + b
    zr = absA @ xr + absB @ ur
    mag = (absA @ np.maximum(np.abs(xlo), np.abs(xhi)) + absB @ np.maximum(np.abs(ulo), np.abs(uhi))
           + np.abs(b))
    pad = 4 * (A.shape[1] + Bm.shape[1] + 2) * _EPS * mag + 1e-300
    return zc - zr - pad, zc + zr + pad


def _card_hull_z(Bm: sp.csr_array, b: np.ndarray, u0: np.ndarray, ulo: np.ndarray, uhi: np.ndarray,
                 sigma: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``[min, max]`` of ``z = B u + b`` over the hull of the cardinality set (4.2),
    ``{ulo <= u <= uhi, sum_j |u_j - u0_j| / sigma_j <= k}`` (the LP of ``card_method="hull"``),
    by the fractional knapsack: moving ``u_j`` to the end of its range that raises ``w_j u_j``
    gains ``|w_j| |Delta_j|`` for a budget ``|Delta_j| / sigma_j <= 1``, a density ``|w_j| sigma_j``
    whatever the clipping; the densest moves are taken first, the last one fractionally. Rounded
    outward by ``4 (p + 2) eps`` times the magnitudes."""
    W = Bm.toarray() if sp.issparse(Bm) else np.asarray(Bm)
    m, p = W.shape
    pos = np.where(sigma > 0, sigma, 1.0)
    out = []
    for sgn in (1.0, -1.0):
        Ws = sgn * W
        Dl = np.where(Ws > 0, uhi - u0, ulo - u0)  # the better end of each range
        G = np.maximum(Ws * Dl, 0.0)
        C = np.where(sigma > 0, np.abs(Dl) / pos, 0.0)
        order = np.argsort(-np.abs(W) * sigma, axis=1, kind="stable")
        Gs, Cs = np.take_along_axis(G, order, 1), np.take_along_axis(C, order, 1)
        prev = np.cumsum(Cs, axis=1) - Cs
        frac = np.where(Cs > 0, np.clip((k - prev) / np.where(Cs > 0, Cs, 1.0), 0.0, 1.0), 1.0)
        out.append(Ws @ u0 + (Gs * frac).sum(axis=1))
    mag = np.abs(W) @ np.maximum(np.abs(ulo), np.abs(uhi)) + np.abs(b)
    pad = 4 * (p + 2) * _EPS * mag + 1e-300
    return -out[1] + b - pad, out[0] + b + pad


def _check_start(start: object, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A user state box ``(lower, upper)``, each ``(n,)``, finite or infinite, ``lower <= upper``."""
    if start is None:
        return None
    if not isinstance(start, tuple | list) or len(start) != 2:
        raise ConfigurationError(f"start must be a state box (lower, upper) of two ({n},) arrays, got "
                                 f"{type(start).__name__}")
    out = []
    for name, v in zip(("lower", "upper"), start, strict=True):
        a = np.asarray(v.detach().cpu() if isinstance(v, Tensor) else v, dtype=np.float64)
        if a.ndim == 2 and a.shape[0] == 1:
            a = a[0]
        if a.shape != (n,):
            raise ShapeError(f"start {name} must have shape ({n},) (one bound per state), got "
                             f"{a.shape}")
        if np.isnan(a).any():
            i = int(np.flatnonzero(np.isnan(a))[0])
            raise NonFiniteError(f"start {name} contains NaN (first at state {i}); pass a valid bound or inf")
        out.append(a)
    lo, hi = out
    if (lo > hi).any():
        i = int(np.flatnonzero(lo > hi)[0])
        raise InputError(f"start must have lower <= upper; state {i}: lower {lo[i]:.6g} > upper {hi[i]:.6g}")
    return lo, hi


def start_box(model: torch.nn.Module, u0: np.ndarray, sigma_u: np.ndarray, k: int | None,
              clip: tuple[float, float] | None, x0: np.ndarray, start: object = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tightest cheap state box ``(xlo, xhi, sigma_x)`` the LP starts from.

    The elementwise intersection of: the Thm 4.1 box ``x0 +- sigma_x`` (eq. 4.5, with the
    cardinality refinement for ``k``; widened by the model solver's error on ``x0``, see
    :func:`_state_slack`) and ``x >= 0``; the IBP intervals (:func:`idlkit.robust.interval_bounds`,
    when ``A`` is strictly triangular, i.e. a feed-forward conversion; they bound the exact
    states of the model's weights); and the user box ``start = (lower, upper)`` (e.g. linear
    bounds), which must hold for every input of the set. Every piece is valid, so is the
    intersection.

    Raises:
        InputError: ``start`` does not contain the nominal state ``x0`` (it cannot be valid).

    Args:
        model: a ReLU :class:`~idlkit.model.ImplicitModel`.
        u0: ``(p,)`` float64 nominal input.
        sigma_u: ``(p,)`` float64 radius.
        k: at most ``k`` inputs perturbed (eq. 4.2); ``None`` for the box set.
        clip: valid input range ``(lo, hi)``, or ``None``.
        x0: ``(n,)`` nominal state at ``u0``.
        start: a valid state box ``(lower, upper)`` of ``(n,)`` arrays, or ``None``.

    Returns:
        ``(xlo, xhi, sigma_x)``, three ``(n,)`` float64 arrays.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).double()
        >>> model = idlkit.convert.from_torch(net, torch.zeros(1, 3, dtype=torch.float64))
        >>> u0 = np.zeros(3)
        >>> x0 = model.equilibrium(torch.zeros(1, 3, dtype=torch.float64))[0].detach().numpy()
        >>> xlo, xhi, sx = start_box(model, u0, np.full(3, 0.1), None, None, x0)
        >>> xlo.shape, bool((xlo <= x0).all() and (x0 <= xhi).all())
        ((6,), True)
    """
    from .ibp import interval_bounds

    n = model.hidden
    sx = state_sigma(model, sigma_u, k)
    slack = _state_slack(model, u0, x0)
    sxw = sx * (1 + 1e-9) + slack
    xlo, xhi = np.maximum(x0 - sxw, 0.0), x0 + sxw
    if n:
        if k is None:  # IBP of the clipped box (center/radius); with k the unclipped box (a superset)
            ulo, uhi = input_box(u0, sigma_u, clip)
            uc, ur = (ulo + uhi) / 2, np.maximum((uhi - ulo) / 2, 0.0)
        else:
            uc, ur = u0, sigma_u
        try:
            ib = interval_bounds(model, uc[None], ur, k)
        except ConfigurationError:  # A has a cycle: no IBP
            ib = None
        if ib is not None:
            xlo, xhi = np.maximum(xlo, ib.x_lower[0].numpy()), np.minimum(xhi, ib.x_upper[0].numpy())
    st = _check_start(start, n)
    if st is not None:
        bad = (x0 < st[0] - slack) | (x0 > st[1] + slack)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"start does not contain the nominal state: x0[{i}] = {x0[i]:.6g} is outside "
                             f"[{st[0][i]:.6g}, {st[1][i]:.6g}]; a start box must bound the states of "
                             f"every input of the set (Fix: pass valid bounds, or start=None)")
        xlo, xhi = np.maximum(xlo, st[0]), np.minimum(xhi, st[1])
    return xlo, np.maximum(xhi, xlo), sx


# ----------------------------------------------------------------------------- the LP

def _new_highs() -> tuple[object, object] | None:
    """``(module, Highs instance)`` with its output off, or ``None``: scipy's bundled HiGHS
    (``scipy.optimize._highspy._core``, the solver of ``linprog(method="highs")``; private, so any
    failure falls through), else the ``highspy`` package when installed (it prints a banner once
    per process), else ``None`` (then ``linprog`` is used, without warm starts)."""
    try:
        from scipy.optimize._highspy import _core as hp

        h = hp._Highs()
        opts = hp.HighsOptions()
        opts.output_flag = False
        opts.log_to_console = False
        h.passOptions(opts)
        hp.HighsLp, hp.MatrixFormat.kRowwise, hp.HighsModelStatus.kOptimal  # noqa: B018 - API check
        return hp, h
    except Exception:  # noqa: BLE001 - private API: any change means "not available"
        pass
    try:
        import highspy
    except ImportError:
        return None
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    return highspy, h


@dataclass(frozen=True)
class LPProblem:
    """The relaxed feasible set (box/triangle constraints of the module docstring), float64.

    Variables ``v = [x (n), u (p), t (p if k is not None)]``; ``t`` are the cardinality
    indicators (continuous in [0, 1] for the hull, binary for the MILP). ``zlo, zhi``: the
    pre-activation intervals the triangle cuts use.

    Attributes:
        n: number of states.
        p: number of inputs.
        A_ub: sparse constraint matrix of ``A_ub v <= b_ub``.
        b_ub: right-hand side of the constraints.
        lower: lower bounds of the variables ``v``.
        upper: upper bounds of the variables ``v``.
        integrality: per variable ``1`` for an integer (MILP indicator) and ``0`` otherwise.
        x0: ``(n,)`` nominal state at ``u0``.
        xlo: ``(n,)`` lower state bounds of the start box.
        xhi: ``(n,)`` upper state bounds of the start box.
        sigma_x: ``(n,)`` Thm 4.1 state radius.
        u0: ``(p,)`` nominal input.
        sigma_u: ``(p,)`` input radius.
        k: at most ``k`` inputs perturbed (eq. 4.2); ``None`` for the box set.
        zlo: ``(n,)`` lower pre-activation bounds of the triangle cuts, or ``None``.
        zhi: ``(n,)`` upper pre-activation bounds, or ``None``.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> net = net.double()
        >>> model = idlkit.convert.from_torch(net, torch.zeros(1, 3, dtype=torch.float64))
        >>> u0, sigma = np.zeros(3), np.full(3, 0.1)
        >>> prob = LPProblem.build(model, u0, sigma, None, None, "hull", True)
        >>> c = np.zeros(prob.n); c[0] = 1.0                      # maximise x_1 over the relaxed set
        >>> bound, x, u, status = prob.maximize(c, np.zeros(prob.p))
        >>> U = torch.from_numpy(u0 + sigma * (2 * np.random.default_rng(0).random((64, 3)) - 1))
        >>> status, bool(model.equilibrium(U)[:, 0].max() <= bound + 1e-9)
        ('optimal', True)
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
    zlo: np.ndarray | None = None
    zhi: np.ndarray | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)
    """The warm-started HiGHS instance of :meth:`maximize` (the LP only changes its objective)."""

    @classmethod
    def build(cls, model: torch.nn.Module, u0: np.ndarray, sigma_u: np.ndarray, k: int | None,
              clip: tuple[float, float] | None, card_method: str, triangle: bool,
              x0: np.ndarray | None = None,
              x_bounds: tuple[np.ndarray, np.ndarray] | None = None,
              z_bounds: tuple[np.ndarray, np.ndarray] | None = None,
              start: object = None) -> LPProblem:
        """The relaxed set around ``u0``, starting from :func:`start_box`; ``x_bounds = (lo, hi)``:
        extra valid state bounds (e.g. from :func:`lp_state_bounds`), ``z_bounds``: valid bounds
        of the pre-activations ``z = A x + B u + b`` (used by the triangle cuts).

        Args:
            model: a ReLU :class:`~idlkit.model.ImplicitModel`.
            u0: ``(p,)`` float64 nominal input.
            sigma_u: ``(p,)`` float64 input radius.
            k: at most ``k`` inputs perturbed (eq. 4.2); ``None`` for the box set.
            clip: valid input range ``(lo, hi)``, or ``None``.
            card_method: ``"hull"`` (LP) or ``"milp"`` (binary indicators).
            triangle: add the upper ReLU (triangle) cuts.
            x0: ``(n,)`` nominal state; ``None``: solved here.
            x_bounds: extra valid state bounds ``(lo, hi)``, or ``None``.
            z_bounds: valid pre-activation bounds ``(lo, hi)``, or ``None``.
            start: a valid state box passed to :func:`start_box`, or ``None``.

        Returns:
            The :class:`LPProblem`.
        """
        A, Bm, b = _model_arrays(model)
        if x0 is None:
            x0 = true_states(model, u0)[0]
        xlo, xhi, sx = start_box(model, u0, sigma_u, k, clip, x0, start)
        if x_bounds is not None:
            xlo, xhi = np.maximum(xlo, x_bounds[0]), np.minimum(xhi, x_bounds[1])
            xlo = np.minimum(xlo, xhi)
        ulo, uhi = input_box(u0, sigma_u, clip)
        return cls.assemble(A, Bm, b, xlo, xhi, ulo, uhi, u0, sigma_u, k, card_method, triangle,
                            z_bounds=z_bounds, x0=x0, sigma_x=sx)

    @classmethod
    def assemble(cls, A: sp.csr_array, Bm: sp.csr_array, b: np.ndarray, xlo: np.ndarray, xhi: np.ndarray,
                 ulo: np.ndarray, uhi: np.ndarray, u0: np.ndarray, sigma_u: np.ndarray, k: int | None,
                 card_method: str, triangle: bool, z_bounds: tuple[np.ndarray, np.ndarray] | None = None,
                 x0: np.ndarray | None = None, sigma_x: np.ndarray | None = None) -> LPProblem:
        """The constraints for given boxes: ``x >= A x + B u + b``, ``xlo <= x <= xhi``, ``u`` in its
        box (and the cardinality hull/MILP), and with ``triangle`` the upper ReLU cuts on the
        pre-activation intervals ``[zlo, zhi]`` = interval arithmetic on the boxes intersected with
        ``z_bounds``, ``z <= x <= xhi`` and ``z = x`` where ``x > 0``.

        Args:
            A: ``(n, n)`` sparse state matrix.
            Bm: ``(n, p)`` sparse input matrix.
            b: ``(n,)`` state bias.
            xlo: ``(n,)`` lower state bounds.
            xhi: ``(n,)`` upper state bounds.
            ulo: ``(p,)`` lower input bounds.
            uhi: ``(p,)`` upper input bounds.
            u0: ``(p,)`` nominal input.
            sigma_u: ``(p,)`` input radius.
            k: at most ``k`` inputs perturbed (eq. 4.2); ``None`` for the box set.
            card_method: ``"hull"`` or ``"milp"``.
            triangle: add the upper ReLU cuts.
            z_bounds: valid pre-activation bounds ``(lo, hi)``, or ``None``.
            x0: ``(n,)`` nominal state, kept for the attack, or ``None``.
            sigma_x: ``(n,)`` Thm 4.1 state radius, or ``None``.

        Returns:
            The :class:`LPProblem`.
        """
        n, p = A.shape[0], Bm.shape[1]
        I = sp.identity(n, format="csr")
        rows = [sp.hstack([A - I, Bm], format="csr")]  # A x + B u + b <= x
        rhs = [-b]
        zlo = zhi = None
        if triangle and n:
            zlo, zhi = _interval_z(A, Bm, b, xlo, xhi, ulo, uhi)
            if z_bounds is not None:
                zlo, zhi = np.maximum(zlo, z_bounds[0]), np.minimum(zhi, z_bounds[1])
            zhi = np.minimum(zhi, xhi)  # z <= x <= xhi
            zlo = np.where(xlo > 0, np.maximum(zlo, xlo), zlo)  # x_i > 0 => z_i = x_i
            zlo = np.minimum(zlo, zhi)
            # the ReLU image of [zlo, zhi]
            xhi = np.minimum(xhi, np.maximum(zhi, 0.0))
            xlo = np.minimum(np.maximum(xlo, np.maximum(zlo, 0.0)), xhi)
            inactive = zhi <= 0
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
                   lower=lower, upper=upper, integrality=integrality,
                   x0=np.zeros(n) if x0 is None else x0, xlo=xlo, xhi=xhi,
                   sigma_x=np.zeros(n) if sigma_x is None else sigma_x, u0=u0, sigma_u=sigma_u, k=k,
                   zlo=zlo, zhi=zhi)

    def _dual_bound(self, cfull: np.ndarray, marginals: np.ndarray | None) -> float:
        """A rigorous upper bound of ``max cfull^T v`` from any multipliers ``mu >= 0`` of
        ``A_ub v <= b_ub`` (weak duality; every variable has a finite box ``[lower, upper]``):
        ``cfull^T v <= mu^T b_ub + sum_j max(r_j lower_j, r_j upper_j)``, ``r = cfull - A_ub^T mu``,
        rounded outward for its float64 evaluation (Neumaier-Shcherbina's safe bound). HiGHS'
        multipliers are used, so the bound is the LP optimum up to the solver's dual tolerance
        (~1e-7 relative), never below it."""
        m = self.b_ub.size
        mu = np.zeros(m) if marginals is None else np.maximum(-np.nan_to_num(np.asarray(marginals)), 0.0)
        r = cfull - self.A_ub.T @ mu
        val = float(mu @ self.b_ub + np.maximum(r * self.lower, r * self.upper).sum())
        if "absAT" not in self._cache:
            nnz = int(np.diff(self.A_ub.indptr).max(initial=0)) + int(np.bincount(
                self.A_ub.indices, minlength=1).max(initial=0))
            self._cache["absAT"] = sp.csr_array(abs(self.A_ub).T)
            self._cache["gamma"] = 2.0 * (nnz + m + cfull.size + 8) * _EPS
            self._cache["vmax"] = np.maximum(np.abs(self.lower), np.abs(self.upper))
        vmax, gamma = self._cache["vmax"], self._cache["gamma"]
        mag = float(mu @ np.abs(self.b_ub) + (np.abs(cfull) + self._cache["absAT"] @ mu + np.abs(r)) @ vmax)
        return float(np.nextafter(val + gamma * mag, np.inf))

    def maximize(self, c: np.ndarray, e: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, str]:
        """``max c^T x + e^T u`` over the relaxed set: ``(bound, x, u, status)``; raises on failure.

        ``bound`` is rigorous (never below the relaxation's optimum): for an LP the safe dual bound
        of :meth:`_dual_bound`; for a MILP (``card_method="milp"``) the smaller of the LP
        relaxation's safe bound and HiGHS' MILP dual bound widened by ``1e-6 (1 + |v|)`` (its
        feasibility tolerance 1e-7 with a margin). ``x, u`` is the solver's maximiser.

        Args:
            c: ``(n,)`` state weights.
            e: ``(p,)`` input weights.

        Returns:
            ``(bound, x, u, status)``: the certified upper bound, the ``(n,)`` and ``(p,)`` maximiser
            and the solver's status text.

        Raises:
            SolverError: HiGHS failed or the relaxation is infeasible.
        """
        from scipy.optimize import Bounds, LinearConstraint, milp

        nv = self.lower.size
        obj = np.zeros(nv)
        obj[:self.n], obj[self.n:self.n + self.p] = -c, -e
        bound, v = self._lp_max(obj)
        if self.integrality.any():
            res = milp(obj, constraints=LinearConstraint(self.A_ub, -np.inf, self.b_ub),
                       integrality=self.integrality, bounds=Bounds(self.lower, self.upper))
            if not (res.status == 0 and res.x is not None):
                self._fail(res.status, res.message)
            dual = getattr(res, "mip_dual_bound", None)
            top = max(float(-res.fun), float(-dual) if dual is not None and np.isfinite(dual) else -np.inf)
            bound = min(bound, float(top + _lp_tol(np.array(top))))
            v = res.x
        return bound, v[:self.n], v[self.n:self.n + self.p], "optimal"

    @staticmethod
    def _fail(status: object, message: object) -> None:
        raise SolverError(
            f"HiGHS did not solve the LP relaxation of Thm 4.5 (status {status}: "
            f"{message}); no bound is reported. An infeasible relaxation means the state box "
            f"does not contain the nominal state (check the model's solver tolerance); a time or "
            f"iteration limit: try a smaller problem or card_method='hull'",
            status=(status, message))

    def _lp_max(self, obj: np.ndarray) -> tuple[float, np.ndarray]:
        """Safe upper bound of ``max -obj^T v`` over the LP (integrality dropped) and a maximiser."""
        from scipy.optimize import linprog

        solved = self._solve_highspy(obj)
        if solved is None:
            res = linprog(obj, A_ub=self.A_ub, b_ub=self.b_ub,
                          bounds=np.stack([self.lower, self.upper], axis=1), method="highs")
            if res.status != 0:
                self._fail(res.status, res.message)
            solved = (float(res.fun), res.x, getattr(getattr(res, "ineqlin", None), "marginals", None))
        val, v, marg = solved
        return max(self._dual_bound(-obj, marg), float(np.nextafter(-val, np.inf))), v

    def _solve_highspy(self, obj: np.ndarray) -> tuple[float, np.ndarray, np.ndarray] | None:
        """``min obj^T v`` with a HiGHS instance of its own (:func:`_new_highs`; ``None`` when none
        can be made): one per problem, warm-started from the previous basis (only the objective
        changes between the ``2 n`` bound LPs): ``(value, v, row duals)``."""
        h = self._cache.get("highs")
        if h is None:
            made = _new_highs()
            if made is None:  # scipy's linprog (same HiGHS, no warm start)
                return None
            highspy, h = made
            lp = highspy.HighsLp()
            nv, m = self.lower.size, self.b_ub.size
            lp.num_col_, lp.num_row_ = nv, m
            lp.col_cost_ = np.zeros(nv)
            lp.col_lower_, lp.col_upper_ = self.lower.copy(), self.upper.copy()
            lp.row_lower_, lp.row_upper_ = np.full(m, -np.inf), self.b_ub.copy()
            M = sp.csr_array(self.A_ub)
            lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
            lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = nv, m
            lp.a_matrix_.start_ = M.indptr.astype(np.int32)
            lp.a_matrix_.index_ = M.indices.astype(np.int32)
            lp.a_matrix_.value_ = M.data.astype(np.float64)
            h.passModel(lp)
            self._cache["highs"] = h
            self._cache["optimal"] = highspy.HighsModelStatus.kOptimal  # type: ignore[attr-defined]
            self._cache["cols"] = np.arange(nv, dtype=np.int32)
        h.changeColsCost(obj.size, self._cache["cols"], obj.astype(np.float64))
        h.run()
        if h.getModelStatus() != self._cache["optimal"]:
            self._cache.pop("highs")  # let linprog retry from scratch and report the failure
            return None
        sol = h.getSolution()
        return float(h.getInfo().objective_function_value), np.array(sol.col_value), np.array(sol.row_dual)

    def feasible_u(self, u: np.ndarray, clip_box: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Project a relaxation's ``u`` into the attacked set: the box (and range), then at most
        ``k`` changed inputs (the largest ``|u_j - u0_j| / sigma_j``).

        Args:
            u: ``(p,)`` input of a relaxation's maximiser.
            clip_box: ``(lo, hi)`` ``(p,)`` arrays of the valid input box.

        Returns:
            ``(p,)`` input in the attacked set.
        """
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
    """Per-coordinate LP bounds on the state (Thm 4.5 relaxation), float64.

    Attributes:
        lower: ``(len(coords),)`` tensor: ``lower <= x(u)[coords]`` for every ``u`` in the set
            (rounded outward: safe dual bounds of the LPs).
        upper: ``(len(coords),)`` tensor: ``x(u)[coords] <= upper``, likewise.
        coords: the state coordinates bounded, ``(len(coords),)`` int64.
        x0: ``(n,)`` nominal state.
        sigma_x: ``(n,)`` the Thm 4.1 radius of the start box.
        n_lp: number of LPs solved.
        z_lower: ``(n,)`` lower bounds of the pre-activations ``z = A x + B u + b`` of every
            state: LP bounds where they were solved, interval arithmetic on the boxes elsewhere.
        z_upper: ``(n,)`` upper bounds of the pre-activations, likewise.
        layerwise: the bounds were computed level by level (strictly triangular ``A``).
    """

    lower: Tensor
    upper: Tensor
    coords: Tensor
    x0: Tensor
    sigma_x: Tensor
    n_lp: int
    z_lower: Tensor | None = None
    z_upper: Tensor | None = None
    layerwise: bool = False


def _up(v: float, err: float) -> float:
    """``v + err`` rounded up: ``v`` computed with a float64 error at most ``err``."""
    return float(np.nextafter(v + err, np.inf))


def _lp_tol(v: np.ndarray) -> np.ndarray:
    """Outward widening of a MILP optimum for HiGHS' feasibility/optimality tolerances (~1e-7)."""
    return 1e-6 * (1.0 + np.abs(v))


def _z_bounds(prob: LPProblem, Arow: sp.csr_array, Brow: sp.csr_array, b: np.ndarray,
              todo: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """LP bounds ``[min, max]`` of ``z_i = A_i x + B_i u + b_i`` over ``prob`` for the rows ``todo``
    of ``Arow`` (columns: ``prob``'s states) and ``Brow``; rounded outward."""
    lo, hi = np.full(todo.size, -np.inf), np.full(todo.size, np.inf)
    n_lp = 0
    for j, i in enumerate(todo):
        c = Arow[[i]].toarray()[0] if prob.n else np.zeros(0)
        e = Brow[[i]].toarray()[0]
        if not (np.any(c) or np.any(e)):
            lo[j] = hi[j] = b[i]
            continue
        vmax = prob.maximize(c, e)[0]
        vmin = -prob.maximize(-c, -e)[0]
        n_lp += 2
        # + b_i, rounded outward
        hi[j] = np.nextafter(vmax + b[i], np.inf) + _EPS * abs(b[i])
        lo[j] = np.nextafter(vmin + b[i], -np.inf) - _EPS * abs(b[i])
    return lo, hi, n_lp


def lp_state_bounds(model: torch.nn.Module, u0: Tensor, sigma_u: Tensor | float, k: int | None = None,
                    coords: Tensor | np.ndarray | list[int] | None = None, *,
                    clip: tuple[float, float] | None = None, triangle: bool = True,
                    card_method: Literal["hull", "milp"] = "hull", rounds: int = 1,
                    start: tuple[object, object] | None = None) -> LPStateBounds:
    """Implicit LP bounds on state coordinates (paper 003 Fig. 4.3, "implicit LP"; paper 000 Thm 4.5).

    The LP relaxation of :class:`LPProblem` (the bidual of Thm 4.5 for ReLU: ``x >= A x + B u + b``,
    ``x >= 0``, a state box and, with ``triangle``, the upper ReLU cuts) over the box (4.1) or,
    with ``k``, the hull of the cardinality set (4.2). It starts from :func:`start_box`: the
    intersection of the Thm 4.1 box, IBP (feed-forward models) and the optional user box
    ``start = (lower, upper)``, each ``(n,)``. The LP bounds the **pre-activations**
    ``z_i = A_i x + B_i u + b_i`` (objectives ``+-(A_i, B_i)`` of §4.5); the state bounds are their
    ReLU images ``[max(zlo, 0), max(zhi, 0)]`` intersected with the start box, and the triangle
    cuts of every later LP use these ``[zlo, zhi]``.

    * **Feed-forward (strictly triangular) ``A``** (a :func:`idlkit.convert.from_torch`
      conversion): the states are bounded level by level (the levels of
      :func:`idlkit.robust.ibp.block_levels`). Level ``0`` (``z`` affine in ``u``) is exact
      without LPs (interval arithmetic over the input box; a fractional knapsack over the hull
      of the cardinality set; MILPs for ``card_method="milp"``); level ``L`` is bounded by LPs
      over the relaxation of levels ``< L`` only, whose cuts use the final bounds of those
      levels. This is the layer-by-layer LP-tight bound (each ``[zlo_i, zhi_i]`` is the exact
      optimum of the triangle relaxation of the earlier layers, up to the outward rounding),
      computed in **one** pass, which is a fixed point: re-solving with its own bounds as the
      ``start`` box gives the same bounds (tested), so ``rounds`` is ignored here. Only the levels
      up to the highest one in ``coords`` are solved.
    * **Other ``A``** (a cycle): Jacobi rounds. Each round bounds every ``z_i`` over the full
      relaxation; the bounds of a round give the boxes and cuts of the next; ``rounds`` rounds
      (the last one for ``coords`` only).

    Every true state satisfies the relaxation, so ``[lower, upper]`` contains ``x(u)[coords]`` for
    every ``u`` in the set; the bounds lie inside the start box. Every LP value is a safe dual
    bound (:meth:`LPProblem.maximize`), so no solver tolerance can make a bound too tight.

    Args:
        model: a ReLU :class:`~idlkit.model.ImplicitModel` (dense or sparse) with ``lambda_pf(|A|) < 1``.
        u0: nominal input ``(p,)``.
        sigma_u: box radius, scalar or ``(p,)``.
        k: cardinality.
        coords: state coordinates to bound (default: all ``n``).
        clip: as in :func:`lp_attack`.
        triangle: as in :func:`lp_attack`.
        card_method: as in :func:`lp_attack`.
        rounds: ``>= 1``; Jacobi rounds for a non-triangular ``A`` (ignored for a feed-forward one:
            one pass is LP-tight).
        start: optional valid state box ``(lower, upper)`` (``(n,)`` each, e.g. linear bounds).

    Raises:
        ConfigurationError: not ReLU, bad ``k``/``rounds``/``card_method``/``start``.
        SolverError: HiGHS failed.
        WellPosednessError: Thm 4.1 cannot be certified.
        InputError: ``start`` excludes the nominal state.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
        ...                           torch.nn.ReLU(), torch.nn.Linear(8, 2)).double()
        >>> model = idlkit.convert.from_torch(net, torch.zeros(1, 3, dtype=torch.float64))
        >>> sb = lp_state_bounds(model, torch.zeros(3, dtype=torch.float64), 0.1)
        >>> sb.lower.shape, sb.layerwise
        (torch.Size([16]), True)
    """
    from .ibp import block_levels

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
    A, Bm, b = _model_arrays(model)
    xlo, xhi, sx = start_box(model, u0n, sig, k, clip, x0, start)
    ulo, uhi = input_box(u0n, sig, clip)
    try:
        level = block_levels(A, (1,) * n) if n else np.zeros(0, dtype=np.int64)
    except ConfigurationError:
        level = None
    n_lp = 0

    def relu_box(i: np.ndarray, zl: np.ndarray, zh: np.ndarray) -> None:
        xhi[i] = np.minimum(xhi[i], np.maximum(zh, 0.0))
        xlo[i] = np.minimum(np.maximum(xlo[i], np.maximum(zl, 0.0)), xhi[i])

    zlo, zhi = _interval_z(A, Bm, b, xlo, xhi, ulo, uhi) if n else (np.zeros(0), np.zeros(0))
    if level is not None:
        # one pass is the fixed point (see the docstring): ``rounds`` does not repeat it; only the
        # levels up to the highest one asked for in ``coords`` are bounded
        depth = int(level[idx].max()) + 1 if idx.size else 0
        for L in range(depth):
            S = np.flatnonzero(level == L)
            P = np.flatnonzero(level < L)
            AP = A[P][:, P] if P.size else sp.csr_array((0, 0))
            zl_ia, zh_ia = _interval_z(A[S][:, P], Bm[S], b[S], xlo[P], xhi[P], ulo, uhi)
            if L == 0 and k is None:  # z = B u + b on a box: interval arithmetic is the LP optimum
                zl, zh = zl_ia, zh_ia
            elif L == 0 and card_method == "hull":  # on the cardinality hull: a knapsack, no LP
                zl, zh = _card_hull_z(Bm[S], b[S], u0n, ulo, uhi, sig, k)
                zl, zh = np.maximum(zl, zl_ia), np.minimum(zh, zh_ia)
            else:
                sub = LPProblem.assemble(AP, Bm[P], b[P], xlo[P], xhi[P], ulo, uhi, u0n, sig, k,
                                         card_method, triangle, z_bounds=(zlo[P], zhi[P]))
                zl, zh, m = _z_bounds(sub, A[S][:, P], Bm[S], b[S], np.arange(S.size))
                n_lp += m
                zl, zh = np.maximum(zl, zl_ia), np.minimum(zh, zh_ia)
            zlo[S], zhi[S] = np.maximum(zlo[S], zl), np.minimum(zhi[S], zh)
            zhi[S] = np.minimum(zhi[S], xhi[S])  # z <= x
            zlo[S] = np.minimum(zlo[S], zhi[S])
            relu_box(S, zlo[S], zhi[S])
    else:
        for r in range(rounds):
            prob = LPProblem.assemble(A, Bm, b, xlo, xhi, ulo, uhi, u0n, sig, k, card_method, triangle,
                                      z_bounds=(zlo, zhi), x0=x0, sigma_x=sx)
            todo = idx if r == rounds - 1 else np.arange(n)
            zl, zh, m = _z_bounds(prob, A, Bm, b, todo)
            n_lp += m
            if prob.zlo is not None:
                zlo, zhi = prob.zlo.copy(), prob.zhi.copy()
            zlo[todo], zhi[todo] = np.maximum(zlo[todo], zl), np.minimum(zhi[todo], zh)
            zlo = np.minimum(zlo, zhi)
            xlo, xhi = np.maximum(xlo, prob.xlo), np.minimum(xhi, prob.xhi)
            relu_box(todo, zlo[todo], zhi[todo])
    t = torch.from_numpy
    lo, hi = xlo[idx], xhi[idx]
    return LPStateBounds(t(np.ascontiguousarray(lo)), t(np.ascontiguousarray(hi)), t(idx.copy()), t(x0),
                         t(sx.copy()), n_lp, t(zlo.copy()), t(zhi.copy()), level is not None)


def lp_attack(model: torch.nn.Module, u0: Tensor, sigma_u: Tensor | float, k: int | None = None, *,
              objective: Objective = "l2", c: Tensor | np.ndarray | None = None,
              e: Tensor | np.ndarray | None = None, const: float = 0.0,
              clip: tuple[float, float] | None = None, card_method: Literal["hull", "milp"] = "hull",
              triangle: bool = True, refine: int = 3, tighten: bool | int = False,
              start: tuple[object, object] | None = None) -> AttackResult:
    """LP bound (Thm 4.5) on the worst-case state objective and the attack it suggests.

    Args:
        c: ``(n,)`` state weights of the ``"linear"`` objective.
        e: ``(p,)`` input weights of the ``"linear"`` objective; ``None``: zero.
        const: constant added to the ``"linear"`` objective.
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
        tighten: ``False`` (default) uses the start box (:func:`start_box`: Thm 4.1 box ∩ IBP ∩
            ``start``) and the interval pre-activation bounds on it for the cuts; ``True`` (or an
            integer number of rounds) first computes LP bounds of the pre-activations
            (:func:`lp_state_bounds`, up to ``2 n`` small LPs per round; layer-by-layer LP-tight in
            one round for a feed-forward model) and uses them for the state box and the cuts:
            a tighter (still valid) bound at that cost.
        start: optional valid state box ``(lower, upper)``, ``(n,)`` each (e.g. linear bounds),
            intersected with the start box.

    Returns:
        :class:`AttackResult` with ``u_adv (p,)`` in the set, ``bound`` (float64, an upper bound
        of the objective over the set: the safe dual bound of the LP, see
        :meth:`LPProblem.maximize`, plus the constant, rounded up), ``value`` (the objective at
        the model's true state at ``u_adv``), ``status``; ``extra`` holds ``sigma_x``, ``x0``,
        ``lp_value`` (the relaxation's own objective at its solution) and ``n_lp`` (LPs solved).

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).double()
        >>> model = idlkit.convert.from_torch(net, torch.zeros(1, 3, dtype=torch.float64))
        >>> r = lp_attack(model, torch.zeros(3, dtype=torch.float64), 0.1)
        >>> r.u_adv.shape, r.status, bool(r.value <= r.bound + 1e-9)
        (torch.Size([3]), 'optimal', True)
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
    x_bounds, z_bounds, n_pre = None, None, 0
    if rounds and n:
        sb = lp_state_bounds(model, u0n, sig, k, clip=clip, triangle=triangle, card_method=card_method,
                             rounds=rounds, start=start)
        x_bounds, n_pre = (sb.lower.numpy(), sb.upper.numpy()), sb.n_lp
        z_bounds = (sb.z_lower.numpy(), sb.z_upper.numpy())
    prob = LPProblem.build(model, u0n, sig, k, clip, card_method, triangle, x_bounds=x_bounds,
                           z_bounds=z_bounds, start=start)
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
        terms = (lo - x0) ** 2 - cc * lo
        bound = _up(bound + offset, 4 * (n + 4) * _EPS * (abs(bound) + float(np.abs(terms).sum())
                                                        + float(np.abs(cc * lo).sum())))
        lp_value = float(((x_lp - x0) ** 2).sum())
    else:
        bound, x_lp, u_lp, status = prob.maximize(c_np, e_np)
        bound = _up(bound + const, 4 * _EPS * (abs(bound) + abs(const)))
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
