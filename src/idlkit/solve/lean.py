"""The lean iteration: the whole batch as one block, one global residual per check.

Where retiring converged samples cannot pay (small ``batch x n``, see
:func:`idlkit.solve.tracked.retirement_pays`) the per-sample bookkeeping of
:class:`~idlkit.solve.tracked.Output` (first-hit iterations, residual history, partial
retirement) costs more than it saves: an iteration of a small problem is a handful of
small tensor operations, each with a fixed cost of a few microseconds. The lean loop does
per iteration only

    Z = X A^T + b^T,  F(X) = phi(Z),  r = max |F(X) - X|   (paper 000 eq. 2.4),

three small operations besides the GEMM, and reads ``r`` on the host once every
``check_every`` iterations (every iteration on the CPU, where a read costs nothing; less
often on an accelerator, where it synchronises the device). It stops on the same rule as
the tracked solvers (``max_j ||F(x_j) - x_j||_inf <= tol``); a check that falls past
convergence costs at most ``check_every - 1`` extra contractions, which only move the
iterate closer to the fixed point. ``SolveInfo.per_sample_iterations`` then holds the
solve's iteration count for every sample (``SolveInfo.per_sample`` is false).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .anderson import anderson, plain_rate
from .info import SolveInfo, finish, finite_or_raise
from .maps import FixedPointMap

__all__ = ["iterate_lean", "anderson_lean"]


def _empty(X: Tensor, method: str, tol: float) -> tuple[Tensor, Tensor, SolveInfo]:
    m = X.shape[0]
    info = SolveInfo(method, 0, 0.0, True, torch.zeros(m, dtype=torch.long, device=X.device),
                     X.new_zeros(m), tol, 0, False)
    return X.t(), X.t().clone(), info


def _plain_steps(F: FixedPointMap, X: Tensor, alpha: float, tol: float, max_iter: int,
                 method: str, first: tuple[Tensor, Tensor] | None, check_every: int,
                 slow: float | None) -> tuple[Tensor, Tensor, Tensor, Tensor, int, bool]:
    """Plain (``alpha = 1``) or averaged steps until ``max r <= tol``, the budget, or (when
    ``slow`` is given) a check whose residual fell by less than ``slow`` per step.

    Returns ``(X, F(X), Z, |F(X) - X|, iterations, slowed)``.
    """
    FX, Z = F(X) if first is None else first
    it, r_prev = 0, math.inf
    while True:
        if it % check_every == 0 or it >= max_iter:
            D = (FX - X).abs_()
            r = float(D.max())
            if not math.isfinite(r):
                finite_or_raise(D.amax(dim=1), method, it)
            if r <= tol or it >= max_iter:
                return X, FX, Z, D, it, False
            if slow is not None and r > slow ** check_every * r_prev:
                return X, FX, Z, D, it, True
            r_prev = r
        X = FX if alpha == 1.0 else torch.lerp(X, FX, alpha)
        FX, Z = F(X)
        it += 1


def iterate_lean(F: FixedPointMap, X: Tensor, alpha: float, tol: float, max_iter: int,
                 method: str, on_nonconvergence: str, first: tuple[Tensor, Tensor] | None = None,
                 check_every: int = 1) -> tuple[Tensor, Tensor, SolveInfo]:
    """Picard (``alpha = 1``) or averaged iteration of the whole batch ``X (m, n)``.

    Returns ``(X, aux, info)`` in column convention ``(n, m)``, as the tracked solvers.
    """
    if X.shape[0] == 0 or X.shape[1] == 0:
        return _empty(X, method, tol)
    X, _, Z, D, it, _ = _plain_steps(F, X, alpha, tol, max_iter, method, first, check_every, None)
    iters = torch.full((X.shape[0],), it, dtype=torch.long, device=X.device)
    info = finish(method, D.amax(dim=1), it, iters, tol, on_nonconvergence, per_sample=False)
    return X.t(), Z.t(), info


def anderson_lean(F: FixedPointMap, X: Tensor, alpha: float, tol: float, max_iter: int, m: int,
                  beta: float, on_nonconvergence: str, first: tuple[Tensor, Tensor] | None = None,
                  check_every: int = 1) -> tuple[Tensor, Tensor, SolveInfo]:
    """Anderson acceleration entered from lean plain steps.

    Plain steps run lean while they contract faster than
    :func:`~idlkit.solve.anderson.plain_rate` per step (the point where an Anderson step
    becomes the better buy); the solve then continues with
    :func:`~idlkit.solve.anderson.anderson` from that iterate (its history starts there).
    """
    B, n = X.shape
    if B == 0 or n == 0:
        return _empty(X, "anderson", tol)
    X, FX, Z, D, it, slowed = _plain_steps(F, X, alpha, tol, max_iter, "anderson", first,
                                           check_every, plain_rate(B, n, m))
    if not slowed:
        iters = torch.full((B,), it, dtype=torch.long, device=X.device)
        info = finish("anderson", D.amax(dim=1), it, iters, tol, on_nonconvergence,
                      per_sample=False)
        return X.t(), Z.t(), info
    return anderson(F, X, alpha, tol, max_iter, m, beta, on_nonconvergence, (FX, Z),
                    start=it, plain_phase=False, per_sample=False)

