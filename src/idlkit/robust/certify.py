"""One entry for certified state and output bounds: ``output_bounds`` and ``state_bounds``.

Methods (all float64, all sound: every state/output of every input of the set lies inside):

* ``"box"``: the implicit box of Thm 4.1-4.4 (paper 000), ``x0 +- sigma_x``, ``y0 +- S sigma_u``;
  any well-posed model and any Lipschitz activation; ``k`` (eq. 4.2) supported. ``clip`` is
  ignored (the box over the unclipped set contains the clipped one).
* ``"ibp"``: interval bound propagation (:func:`idlkit.robust.interval_bounds`); triangular ``A``,
  any activation.
* ``"crown"`` / ``"alpha-crown"``: linear bounds (:func:`idlkit.robust.linear_bounds`); any ``A``
  (CROWN for triangular ``A``, the truncated-substitution method otherwise), componentwise
  activations.
* ``"crown-ibp"``: one backward CROWN pass for the outputs over IBP's pre-activation intervals,
  on the sparse matrices (triangular ``A``; for models too large to densify, e.g. ResNet-20).
* ``"lp"``: the LP relaxation of Thm 4.5 (:func:`idlkit.robust.lp_state_bounds`, ReLU only, one
  input at a time, ``2 n`` LPs per round): the state bounds are its per-unit LP bounds; the output
  bounds are ``max +-(C_j x + D_j u) + d_j`` over the same relaxation with those state bounds
  (``2 q`` more LPs), widened for HiGHS' tolerances. It starts from the tightest cheap box: Thm
  4.1, IBP and (without ``k``) CROWN's state bounds, intersected (``lp_state_bounds(start=)``).
  ``k`` supported (hull of eq. 4.2).
* ``"best"``: the elementwise intersection (max of lowers, min of uppers) of the methods that
  apply: box, IBP, CROWN with IBP-intersected pre-activation bounds, and alpha-CROWN when the
  ``time_budget`` allows it (estimated from CROWN's time); for a ReLU model *with* a
  ``time_budget``, also the LP, input by input while the budget lasts (it is often the tightest
  on small nets, but costs ~1-2 s per input on a 784-100-50-10 net, so it is not run without a
  budget); with ``k``: box and LP. The intersection of sound intervals is sound.

``k`` (cardinality-constrained inputs, eq. 4.2) is supported by ``box`` and ``lp`` only.

General (non-triangular) ``A``: IBP does not apply (no sweep order); the linear bounds need the
Thm 4.1 starting box, i.e. a certified ``lambda_pf(gamma |A|) < 1`` (else
:class:`~idlkit.errors.WellPosednessError`); ``"best"`` skips the methods that do not apply and
intersects the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._validation import check_choice, check_scalar
from ..errors import ConfigurationError, InputError, WellPosednessError
from ._model import as_batch64, as_sigma, check_k, componentwise_maps

__all__ = ["OutputBounds", "StateBounds", "output_bounds", "state_bounds", "BOUND_METHODS"]

BOUND_METHODS = ("best", "alpha-crown", "crown", "crown-ibp", "lp", "ibp", "box")
_K_METHODS = ("box", "lp")


@dataclass(frozen=True)
class _Bounds:
    lower: Tensor
    upper: Tensor
    method: str
    seconds: float

    @property
    def width(self) -> Tensor:
        """``upper - lower``."""
        return self.upper - self.lower


@dataclass(frozen=True)
class OutputBounds(_Bounds):
    """``lower <= y(u) <= upper`` for every ``u`` of the set, ``(batch, q)`` float64.

    Attributes:
        lower: ``(batch, q)`` float64 lower bounds.
        upper: ``(batch, q)`` float64 upper bounds.
        method: the method used (for ``"best"``: ``"best(m1,m2,...)"``, the methods combined).
        seconds: wall time of the computation.
    """


@dataclass(frozen=True)
class StateBounds(_Bounds):
    """``lower <= x(u) <= upper`` for every ``u`` of the set, ``(batch, n)`` float64.

    Attributes:
        lower: ``(batch, n)`` float64 lower bounds.
        upper: ``(batch, n)`` float64 upper bounds.
        method: as in :class:`OutputBounds`.
        seconds: as in :class:`OutputBounds`.
    """


_Four = tuple[Tensor, Tensor, Tensor, Tensor]


def _box(model: object, U: np.ndarray, s: np.ndarray, k: int | None) -> _Four:
    """Thm 4.1-4.4 around the model's nominal states, widened by the certified distance of those
    to the exact equilibria (:func:`idlkit.robust.linear.equilibrium_error`; ~1e-15 for a
    triangular solve, up to the solver tolerance for an iterative one), so that the box holds for
    the exact equilibrium whatever the solver's tolerance."""
    from .bounds import box_bounds
    from .linear import equilibrium_error

    bb = box_bounds(model, torch.from_numpy(U), s, k)
    try:
        _, err = equilibrium_error(model, U)
    except ConfigurationError:  # no componentwise error bound (block maps): the Thm 4.1 box as is
        return bb.x_lower, bb.x_upper, bb.y_lower, bb.y_upper
    C = model.C.detach().cpu().to(torch.float64)  # type: ignore[attr-defined]
    C = C.to_dense() if C.layout != torch.strided else C
    ex = torch.from_numpy(err)
    ey = ex @ C.abs().T
    return bb.x_lower - ex, bb.x_upper + ex, bb.y_lower - ey, bb.y_upper + ey


def _ibp(model: object, U: np.ndarray, s: np.ndarray, clip: tuple[float, float] | None) -> _Four:
    from .ibp import interval_bounds
    from .linear import input_box

    if clip is None:
        ib = interval_bounds(model, torch.from_numpy(U), s)
        return ib.x_lower, ib.x_upper, ib.y_lower, ib.y_upper
    lo, hi = input_box(U, s, clip)
    parts = [interval_bounds(model, torch.from_numpy((a + b)[None] / 2), (b - a) / 2)
             for a, b in zip(lo, hi, strict=True)]
    cat = lambda name: torch.cat([getattr(ib, name) for ib in parts])  # noqa: E731
    return cat("x_lower"), cat("x_upper"), cat("y_lower"), cat("y_upper")


def _linear(model: object, U: np.ndarray, s: np.ndarray, clip: tuple[float, float] | None, alpha: bool,
            alpha_iters: int, intersect_ibp: bool = False, intermediate: str = "crown") -> _Four:
    from .linear import linear_bounds

    lb = linear_bounds(model, torch.from_numpy(U), s, clip=clip, alpha=alpha, alpha_iters=alpha_iters,
                       intersect_ibp=intersect_ibp, intermediate=intermediate)
    return lb.x_lower, lb.x_upper, lb.y_lower, lb.y_upper


def _lp(model: object, U: np.ndarray, s: np.ndarray, k: int | None, clip: tuple[float, float] | None,
        rounds: int, start: tuple[Tensor, Tensor] | None = None) -> _Four:
    """LP bounds per input; ``start`` (``(m, n)`` lower and upper state bounds, e.g. CROWN's)
    is intersected with the LP's own starting box (Thm 4.1 and IBP), so the LP starts from the
    tightest cheap box and its triangle cuts from the tightest pre-activation intervals."""
    from .lp import LPProblem, _lp_tol, lp_state_bounds

    C = model.C.detach().cpu().to(torch.float64)  # type: ignore[attr-defined]
    C = (C.to_dense() if C.layout != torch.strided else C).numpy()
    D = model.D.detach().cpu().to(torch.float64)  # type: ignore[attr-defined]
    D = (D.to_dense() if D.layout != torch.strided else D).numpy()
    dv = getattr(model, "d", None)
    dd = np.zeros(C.shape[0]) if dv is None else dv.detach().cpu().to(torch.float64).numpy()
    xs, ys = [], []
    for r, u in enumerate(U):
        st = None if start is None else (start[0][r].numpy(), start[1][r].numpy())
        try:
            sb = lp_state_bounds(model, u, s, k, clip=clip, rounds=rounds, start=st)  # type: ignore[arg-type]
        except InputError:  # a start box that misses the solver's x0 by its tolerance: start without it
            sb = lp_state_bounds(model, u, s, k, clip=clip, rounds=rounds)  # type: ignore[arg-type]
        lo, hi = sb.lower.numpy(), sb.upper.numpy()
        zb = None if sb.z_lower is None else (sb.z_lower.numpy(), sb.z_upper.numpy())
        prob = LPProblem.build(model, u, s, k, clip, "hull", True, x0=sb.x0.numpy(),  # type: ignore[arg-type]
                               x_bounds=(lo, hi), z_bounds=zb)
        yl, yh = np.empty(C.shape[0]), np.empty(C.shape[0])
        for j in range(C.shape[0]):
            vmax = prob.maximize(C[j], D[j])[0]
            vmin = -prob.maximize(-C[j], -D[j])[0]
            yh[j] = vmax + dd[j] + _lp_tol(np.array(vmax + dd[j]))
            yl[j] = vmin + dd[j] - _lp_tol(np.array(vmin + dd[j]))
        xs.append((lo, hi))
        ys.append((yl, yh))
    t = lambda a: torch.from_numpy(np.stack(a))  # noqa: E731
    return t([a for a, _ in xs]), t([b for _, b in xs]), t([a for a, _ in ys]), t([b for _, b in ys])


def _require(model: object, method: str, k: int | None) -> None:
    """Typed errors naming the alternatives for a method that cannot handle the request."""
    if k is not None and method not in _K_METHODS + ("best",):
        raise ConfigurationError(
            f"method={method!r} does not support cardinality-constrained inputs (k={k}, eq. 4.2); "
            f"use method='box' (Thm 4.1-4.4 with the cardinality refinement), 'lp' (ReLU, the hull "
            f"of eq. 4.2) or 'best' (their intersection), or k=None for the box set")
    act = model.activation  # type: ignore[attr-defined]
    if method in ("crown", "alpha-crown", "crown-ibp") and componentwise_maps(act) is None:
        raise ConfigurationError(
            f"method={method!r} needs a componentwise activation (or a Blockwise of them), got {act!r}; "
            f"use method='ibp' (any map, triangular A), 'box' (any Lipschitz map) or 'best'")
    if method == "lp" and getattr(act, "name", None) != "relu":
        raise ConfigurationError(
            f"method='lp' (Thm 4.5) is defined for ReLU models only, got {act!r}; use method='crown', "
            f"'alpha-crown', 'ibp', 'box' or 'best'")


def _compute(model: object, u0: object, sigma_u: object, k: int | None, method: str,
             clip: tuple[float, float] | None, time_budget: float | None, alpha_iters: int,
             lp_rounds: int) -> tuple[_Four, str, float]:
    check_choice("method", method, BOUND_METHODS)
    if time_budget is not None:
        check_scalar("time_budget", time_budget, low=0.0, low_inclusive=False)
    p = model.B.shape[1]  # type: ignore[attr-defined]
    U = as_batch64(u0, p, "u0")
    s = as_sigma(sigma_u, p)
    k = check_k(k, p)
    _require(model, method, k)
    if clip is not None:
        from .linear import input_box

        input_box(U, s, clip)  # validates clip and u0 against it
    t0 = time.perf_counter()
    if method == "box":
        return _box(model, U, s, k), "box", time.perf_counter() - t0
    if method == "ibp":
        return _ibp(model, U, s, clip), "ibp", time.perf_counter() - t0
    if method in ("crown", "alpha-crown"):
        out = _linear(model, U, s, clip, method == "alpha-crown", alpha_iters)
        return out, method, time.perf_counter() - t0
    if method == "crown-ibp":
        return _linear(model, U, s, clip, False, 0, intermediate="ibp"), method, time.perf_counter() - t0
    if method == "lp":
        return _lp(model, U, s, k, clip, lp_rounds, _linear_start(model, U, s, k, clip)), "lp", \
            time.perf_counter() - t0
    # best: intersect what applies
    results: list[tuple[str, _Four]] = []

    def attempt(name: str, fn) -> float:
        t = time.perf_counter()
        try:
            results.append((name, fn()))
        except (ConfigurationError, WellPosednessError):  # the method does not apply to this model
            pass
        return time.perf_counter() - t

    budget = np.inf if time_budget is None else float(time_budget)
    attempt("box", lambda: _box(model, U, s, k))
    is_relu = getattr(model.activation, "name", None) == "relu"  # type: ignore[attr-defined]
    if k is not None:
        if is_relu and time.perf_counter() - t0 < budget:
            attempt("lp", lambda: _lp(model, U, s, k, clip, lp_rounds))
    else:
        attempt("ibp", lambda: _ibp(model, U, s, clip))
        if componentwise_maps(model.activation) is not None:  # type: ignore[attr-defined]
            n_before = len(results)
            tc = attempt("crown", lambda: _linear(model, U, s, clip, False, 0, intersect_ibp=True))
            if len(results) == n_before:  # too large to densify (or cyclic A): the sparse CROWN-IBP
                attempt("crown-ibp", lambda: _linear(model, U, s, clip, False, 0, intermediate="ibp"))
            elif time.perf_counter() - t0 + (alpha_iters + 2) * tc < budget:
                attempt("alpha-crown", lambda: _linear(model, U, s, clip, True, alpha_iters,
                                                       intersect_ibp=True))
        if is_relu and time_budget is not None and results:
            start = (torch.stack([r[0] for _, r in results]).amax(0),
                     torch.stack([r[1] for _, r in results]).amin(0))
            _lp_rows(model, U, s, clip, lp_rounds, t0 + budget, results, start)
    if not results:
        raise ConfigurationError("no bound method applies to this model; see output_bounds' methods")
    xl = torch.stack([r[0] for _, r in results]).amax(0)
    xh = torch.stack([r[1] for _, r in results]).amin(0)
    yl = torch.stack([r[2] for _, r in results]).amax(0)
    yh = torch.stack([r[3] for _, r in results]).amin(0)
    name = "best(" + ",".join(n for n, _ in results) + ")"
    return (xl, xh, yl, yh), name, time.perf_counter() - t0


def _linear_start(model: object, U: np.ndarray, s: np.ndarray, k: int | None,
                  clip: tuple[float, float] | None) -> tuple[Tensor, Tensor] | None:
    """CROWN's state bounds (intersected with IBP) as the LP's start box, when they apply."""
    if k is not None or componentwise_maps(model.activation) is None:  # type: ignore[attr-defined]
        return None
    try:
        out = _linear(model, U, s, clip, False, 0, intersect_ibp=True)
    except (ConfigurationError, WellPosednessError):
        return None
    return out[0], out[1]


def _lp_rows(model: object, U: np.ndarray, s: np.ndarray, clip: tuple[float, float] | None, rounds: int,
             deadline: float, results: list, start: tuple[Tensor, Tensor] | None = None) -> None:
    """LP bounds row by row while the time lasts (a row is started when the time left exceeds the
    previous row's LP time, so the budget may be overrun by at most one row); rows without an LP
    keep infinite bounds, so the intersection is unchanged there."""
    m = U.shape[0]
    xs = [torch.full((m, model.A.shape[0]), -np.inf, dtype=torch.float64),  # type: ignore[attr-defined]
          torch.full((m, model.A.shape[0]), np.inf, dtype=torch.float64),  # type: ignore[attr-defined]
          torch.full((m, model.C.shape[0]), -np.inf, dtype=torch.float64),  # type: ignore[attr-defined]
          torch.full((m, model.C.shape[0]), np.inf, dtype=torch.float64)]  # type: ignore[attr-defined]
    done, last = 0, 0.0
    for r in range(m):
        left = deadline - time.perf_counter()
        if left <= 0 or left < last:
            break
        t = time.perf_counter()
        try:
            out = _lp(model, U[r:r + 1], s, None, clip, rounds,
                      None if start is None else (start[0][r:r + 1], start[1][r:r + 1]))
        except (ConfigurationError, WellPosednessError):
            return
        for j in range(4):
            xs[j][r] = out[j][0]
        last, done = time.perf_counter() - t, done + 1
    if done:
        results.append((f"lp[{done}/{m}]" if done < m else "lp", tuple(xs)))


def output_bounds(model: object, u0: object, sigma_u: object, k: int | None = None, method: str = "best", *,
                  clip: tuple[float, float] | None = None, time_budget: float | None = None,
                  alpha_iters: int = 20, lp_rounds: int = 1) -> OutputBounds:
    """Certified output bounds over ``{u : |u - u0| <= sigma_u}`` (eq. 4.1; with ``k``: eq. 4.2).

    Args:
        model: an :class:`~idlkit.ImplicitModel` (converted nets: triangular ``A``).
        u0: ``(batch, p)`` or ``(p,)`` nominal inputs.
        sigma_u: scalar or ``(p,)`` radius ``>= 0``.
        k: at most ``k`` inputs perturbed (eq. 4.2): methods ``"box"``, ``"lp"``, ``"best"`` only.
        method: ``"best"``, ``"alpha-crown"``, ``"crown"``, ``"lp"``, ``"ibp"`` or ``"box"`` (see
            the module docstring).
        clip: valid input range ``(lo, hi)`` intersected with the set (not used by ``"box"``).
        time_budget: seconds ``"best"`` may spend (alpha-CROWN is skipped when CROWN's time says
            it would not fit; the LP of a ReLU model runs input by input in what is left, overrunning
            by at most one input's LP); ``None``: no limit, and no LP (the cheap methods only).
        alpha_iters: alpha-CROWN iterations.
        lp_rounds: LP tightening rounds (``lp_state_bounds``).

    Returns:
        :class:`OutputBounds` with ``(batch, q)`` float64 ``lower``, ``upper``.

    Raises:
        ConfigurationError: ``k`` with a method that does not support it, an activation the method
            does not support (the message names the alternatives), an unknown method.
        ShapeError: ``u0`` / ``sigma_u`` of the wrong shape.
        NonFiniteError: NaN/Inf in ``u0`` / ``sigma_u``.
        InputError: otherwise bad ``u0`` / ``sigma_u`` (e.g. a negative radius).

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> model = idlkit.convert.from_torch(net, torch.zeros(1, 4))
        >>> ob = output_bounds(model, torch.zeros(3, 4), 0.1)
        >>> ob.lower.shape, bool((ob.lower <= ob.upper).all())
        (torch.Size([3, 2]), True)
    """
    (_, _, yl, yh), name, sec = _compute(model, u0, sigma_u, k, method, clip, time_budget, alpha_iters,
                                         lp_rounds)
    return OutputBounds(yl.to(torch.float64), yh.to(torch.float64), name, sec)


def state_bounds(model: object, u0: object, sigma_u: object, k: int | None = None, method: str = "best", *,
                 clip: tuple[float, float] | None = None, time_budget: float | None = None,
                 alpha_iters: int = 20, lp_rounds: int = 1) -> StateBounds:
    """Certified state bounds, ``(batch, n)``; arguments and errors as :func:`output_bounds`
    (alpha-CROWN optimises the output bounds; its state bounds are the best over its iterates on a
    triangular ``A``, CROWN's on a general one).

    Args:
        model: an :class:`~idlkit.ImplicitModel`.
        u0: ``(batch, p)`` or ``(p,)`` nominal inputs.
        sigma_u: input radius, scalar or ``(p,)``, ``>= 0`` (eq. 4.1).
        k: at most ``k`` inputs perturbed (eq. 4.2); ``None`` for the box set.
        method: one of :data:`BOUND_METHODS`; default ``"best"`` (the tightest of those applicable).
        clip: valid input range ``(lo, hi)`` intersected with the set; ``None`` for none.
        time_budget: seconds allowed to the slower methods (``None``: no limit).
        alpha_iters: optimisation steps of alpha-CROWN.
        lp_rounds: tightening rounds of the LP bound.

    Returns:
        :class:`StateBounds`, ``lower``/``upper`` of shape ``(batch, n)`` float64.

    Raises:
        ConfigurationError: an unknown ``method``, or one that does not apply to the model.
        ShapeError: ``u0`` or ``sigma_u`` of the wrong shape.
        InputError: a negative ``sigma_u`` or a bad ``k``.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).double()
        >>> model = idlkit.convert.from_torch(net, torch.zeros(1, 3, dtype=torch.float64))
        >>> sb = state_bounds(model, torch.zeros(3, 3, dtype=torch.float64), 0.1, method="crown")
        >>> sb.lower.shape, bool((sb.lower <= sb.upper).all())
        (torch.Size([3, 6]), True)
        >>> x = model.equilibrium(0.1 * (2 * torch.rand(3, 3, dtype=torch.float64) - 1))   # inside the set
        >>> bool(((sb.lower - 1e-9 <= x) & (x <= sb.upper + 1e-9)).all())
        True
    """
    (xl, xh, _, _), name, sec = _compute(model, u0, sigma_u, k, method, clip, time_budget, alpha_iters,
                                         lp_rounds)
    return StateBounds(xl.to(torch.float64), xh.to(torch.float64), name, sec)
