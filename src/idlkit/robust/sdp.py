"""SDP relaxation of the maximal state discrepancy for ReLU models (paper 000 §4.6, eq. 4.14-4.19).

Problem (4.14): ``p* = max_{u in U^box} ||x - x0||_2^2 : x = (A x + B u + b)_+, |x - x0| <= sigma_x``.
The ReLU is written with quadratic constraints (4.15): ``x >= 0, x >= z, x o x <= x o z`` and every
interval ``l <= v <= h`` as ``v o v <= (l + h) o v - l o h`` (4.16-4.17); this is the QCQP (4.18).
Its bidual (4.19) replaces ``[x; u; 1][x; u; 1]^T`` by a PSD matrix

    M = [[X, Xxu, x], [Xux, Uu, u], [x^T, u^T, 1]] >= 0,

and maximises ``Tr(X) - 2 x^T x0 + ||x0||^2`` subject to ``x >= 0``, ``x >= A x + B u + b``,
``diag(X) <= diag(A X) + diag(B Xux) + b o x``, ``diag(Uu) <= (lo + hi) o u - lo o hi`` and
``diag(X) <= (xlo + xhi) o x - xlo o xhi``. Here ``[lo, hi]`` is the input box (4.1), intersected
with ``clip`` if given, and ``[xlo, xhi] = [(x0 - sigma_x)_+, x0 + sigma_x]`` the state box of Thm 4.1
(``(x0 - sigma_x)_+`` instead of ``x0 - sigma_x``: ``x >= 0`` anyway, a valid tightening). The
linear box constraints on ``x`` and ``u`` are added too (implied for a rank-one ``M``).

The attack is extracted in the two ways §4.6 names: the optimal ``u`` (the last column of ``M``),
and the rank-one approximation ``M ~ lambda_1 v v^T`` (``u = v_u / v_last``); each is put back
into the box and the model is solved at it. Solved with cvxpy (Clarabel, SCS as fallback), imported
lazily; meant for small models (``n + p`` up to a few hundred).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigurationError, SolverError
from .lp import (
    _dense,
    _state_slack,
    _to_np,
    check_sigma,
    check_u0,
    input_box,
    require_relu,
    state_sigma,
    true_states,
)
from .result import AttackResult

__all__ = ["sdp_attack"]

_MAX_SIZE = 400
_SOLVER_TOL = {"CLARABEL": 1e-8, "SCS": 1e-4}  # their default relative gap / feasibility tolerances


def sdp_attack(model: torch.nn.Module, u0: Tensor, sigma_u: Tensor | float, k: int | None = None, *,
               clip: tuple[float, float] | None = None, solver: str | None = None,
               max_size: int = _MAX_SIZE, **solver_options: object) -> AttackResult:
    """SDP bound (4.19) on ``max ||x - x0||_2^2`` over the input box, and the extracted attack.

    Args:
        max_size: largest ``n + p + 1`` (the SDP matrix side) accepted.
        model: a ReLU :class:`~idlkit.model.ImplicitModel` (sparse matrices are densified:
            ``n + p + 1 <= max_size``).
        u0: nominal input ``(p,)``.
        sigma_u: box radius (scalar or ``(p,)``, ``>= 0``).
        k: must be ``None``: the SDP (4.19) is stated for the box set (4.1) only; a cardinality
            set raises :class:`~idlkit.errors.ConfigurationError` naming the alternatives.
        clip: valid input range ``(lo, hi)`` intersected with the box.
        solver: ``"CLARABEL"`` or ``"SCS"``; ``None`` tries Clarabel, then SCS.
        solver_options: passed to ``problem.solve``.

    Returns:
        :class:`AttackResult`: ``bound`` = the optimal value of (4.19) (an upper bound of ``p*``
        up to the solver's tolerance), rounded outward by 100 times the solver's default
        tolerance (``1e-6 (1 + |v|)`` for Clarabel, ``1e-2 (1 + |v|)`` for SCS) and never below
        the value of the extracted attack; for a rigorous bound use :func:`lp_attack` (a safe dual
        bound), ``u_adv`` = the better of the two extractions, ``value`` its
        true discrepancy; ``extra``: ``value_u`` and ``u_opt`` (optimal-``u`` extraction),
        ``value_rank1`` and ``u_rank1`` (rank-one extraction), ``rank1_ratio``
        (``lambda_2 / lambda_1`` of ``M``: 0 when the relaxation is exact), ``solver``.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).double()
        >>> model = idlkit.convert.from_torch(net, torch.zeros(1, 3, dtype=torch.float64))
        >>> r = sdp_attack(model, torch.zeros(3, dtype=torch.float64), 0.1)
        >>> r.u_adv.shape, bool(r.value <= r.bound)
        (torch.Size([3]), True)
    """
    require_relu(model, "the SDP relaxation (eq. 4.19)")
    if k is not None:
        raise ConfigurationError(
            f"sdp_attack (the SDP relaxation 4.19) supports the box set (4.1) only, got k = {k!r} "
            f"(the cardinality set 4.2). Alternatives: lp_attack(model, u0, sigma_u, k=k, "
            f"card_method='hull' or 'milp') for a bound and an attack over the cardinality set, "
            f"state_box_bound(model, sigma_u, k=k) / output_box_bound (Thm 4.1-4.4 with k), or "
            f"sdp_attack with k=None (a valid, looser bound over the whole box)")
    try:
        import cvxpy as cp
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ConfigurationError("sdp_attack needs cvxpy: pip install cvxpy clarabel") from exc
    n, p = model.hidden, model.in_features
    N = n + p + 1
    if N > max_size:
        raise ConfigurationError(f"the SDP has a ({N} x {N}) matrix variable (n + p + 1), above "
                                 f"max_size = {max_size}; use lp_attack for large models or raise "
                                 f"max_size")
    u0n = check_u0(model, u0)
    sig = check_sigma(sigma_u, p)
    lo, hi = input_box(u0n, sig, clip)
    x0 = true_states(model, u0n)[0]
    sx = state_sigma(model, sig)
    sxw = sx * (1 + 1e-9) + _state_slack(model, u0n, x0)
    xlo, xhi = np.maximum(x0 - sxw, 0.0), x0 + sxw
    A = _dense(_to_np(model.A, (n, n)))
    Bm = _dense(_to_np(model.B, (n, p)))
    b = np.zeros(n) if model.b is None else model.b.detach().to("cpu", torch.float64).numpy()

    M = cp.Variable((N, N), PSD=True)
    X, Xux, Uu = M[:n, :n], M[n:n + p, :n], M[n:n + p, n:n + p]
    x, u = M[:n, N - 1], M[n:n + p, N - 1]
    cons = [M[N - 1, N - 1] == 1, x >= 0, x >= A @ x + Bm @ u + b,
            cp.diag(X) <= cp.diag(A @ X) + cp.diag(Bm @ Xux) + cp.multiply(b, x),
            cp.diag(Uu) <= cp.multiply(lo + hi, u) - lo * hi,
            cp.diag(X) <= cp.multiply(xlo + xhi, x) - xlo * xhi,
            x >= xlo, x <= xhi, u >= lo, u <= hi]
    prob = cp.Problem(cp.Maximize(cp.trace(X) - 2 * x0 @ x + float(x0 @ x0)), cons)
    tried = [solver] if solver is not None else ["CLARABEL", "SCS"]
    failures = []
    for name in tried:
        try:
            prob.solve(solver=name, **solver_options)
        except cp.error.SolverError as exc:
            failures.append(f"{name}: {exc}")
            continue
        if prob.status == cp.OPTIMAL:
            break
        failures.append(f"{name}: status {prob.status}")
    else:
        raise SolverError(f"the SDP relaxation (4.19) was not solved to optimality ({'; '.join(failures)}); "
                          f"no bound is reported", status=failures)
    Mv = np.asarray(M.value, dtype=np.float64)

    def value(uc: np.ndarray) -> tuple[np.ndarray, float]:
        uc = np.clip(uc, lo, hi)
        return uc, float(((true_states(model, uc)[0] - x0) ** 2).sum())

    u_opt, v_opt = value(Mv[n:n + p, N - 1])
    w, V = np.linalg.eigh((Mv + Mv.T) / 2)
    top = V[:, -1] * np.sqrt(max(w[-1], 0.0))
    ratio = float(w[-2] / w[-1]) if N > 1 and w[-1] > 0 else 0.0
    if abs(top[-1]) > 1e-9:
        u_r1, v_r1 = value(top[n:n + p] / top[-1])
    else:  # the rank-one factor has no affine part: fall back on the optimal u
        u_r1, v_r1 = u_opt, v_opt
    u_best, v_best = (u_opt, v_opt) if v_opt >= v_r1 else (u_r1, v_r1)
    # outward: the solvers stop at a relative gap/feasibility tolerance (Clarabel 1e-8, SCS 1e-4);
    # widened by 100x it (not a rigorous certificate, unlike the LP's safe dual bound)
    tol = _SOLVER_TOL.get(name, 1e-4) * 100
    bound = max(float(np.nextafter(float(prob.value) + tol * (1 + abs(float(prob.value))), np.inf)), v_best)
    return AttackResult(u_adv=torch.as_tensor(u_best, dtype=model.A.dtype), bound=bound,
                        value=v_best, status=str(prob.status), objective="l2",
                        n_perturbed=torch.tensor(int((u_best != u0n).sum())),
                        extra={"u_opt": u_opt, "value_u": v_opt, "u_rank1": u_r1, "value_rank1": v_r1,
                               "rank1_ratio": ratio, "solver": name, "x0": x0, "sigma_x": sx})
