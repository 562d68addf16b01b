"""The lean iteration: the whole batch as one block, one global residual per check.

Where retiring converged samples cannot pay (small ``batch x n``, see
:func:`idlkit.solve.tracked.retirement_pays`) the per-sample bookkeeping of
:class:`~idlkit.solve.tracked.Output` (first-hit iterations, residual history, partial
retirement) costs more than it saves: an iteration of a small problem is a handful of
small tensor operations, each with a fixed cost of a few microseconds. The lean loop does
per iteration only

    Z = X A^T + b^T,  F(X) = phi(Z)   (paper 000 eq. 2.4),

and computes and reads the residual ``r = max |F(X) - X|`` only where it can stop the
solve: from the contraction rate seen between two reads it predicts how many steps are
still needed and reads again then (:func:`_next_gap`). An easy solve reads two or three
times, not once per step; on an accelerator, where a read synchronises the device, reads
are at least ``DEVICE_CHECK_EVERY`` steps apart (``check_every`` fixes the spacing). It
stops on the same rule as the tracked solvers (``max_j ||F(x_j) - x_j||_inf <= tol``); a
read that falls past convergence costs a few extra contractions, which only move the
iterate closer to the fixed point. ``SolveInfo.per_sample_iterations`` then holds the
solve's iteration count for every sample (``SolveInfo.per_sample`` is false).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .anderson import _REJECT_FACTOR, History, anderson, plain_rate
from .info import SolveInfo, finish, finite_or_raise, row_inf_norm
from .maps import FixedPointMap

__all__ = ["iterate_lean", "anderson_lean", "anderson_sync_free"]

_MAX_GAP = 64  # most iterations between two residual reads (bounds the delay of a NaN report)
# read again after this fraction of the predicted steps: the rate of a ReLU solve improves as
# its active set settles (whole predictions overshot the adjoint solves of MNIST training by
# 8 of 11 steps); halving the distance each time costs log2 reads and overshoots by ~1 step
_READ_AHEAD = 0.5
# a read counts as progress when the residual fell below this fraction of the best so far
_PROGRESS = 0.7


def _empty(X: Tensor, method: str, tol: float) -> tuple[Tensor, Tensor, SolveInfo]:
    m = X.shape[0]
    info = SolveInfo(method, 0, 0.0, True, torch.zeros(m, dtype=torch.long, device=X.device),
                     X.new_zeros(m), tol, 0, False)
    return X.t(), X.t().clone(), info


def _next_gap(r: float, r_prev: float, gap_prev: int, tol: float, min_gap: int,
              max_gap: int) -> int:
    """Iterations until the next residual read: the whole batch contracts at a rate
    ``rho = (r / r_prev)^(1 / gap_prev)`` per step (asymptotically the linear rate of the
    iteration, paper 000 Thm 2.2), so ``N = log(tol / r) / log(rho)`` more steps reach
    ``tol``; reading again after ``N / 2`` of them (at least ``min_gap``, at most
    ``max_gap``) skips reads that cannot stop the solve while a rate that improves costs at
    most a step or two past convergence (only more accurate)."""
    if not (0.0 < r < r_prev < math.inf):
        return min_gap
    rho = (r / r_prev) ** (1.0 / gap_prev)
    if not 0.0 < rho < 1.0:
        return min_gap
    need = math.log(tol / r) / math.log(rho)
    return int(min(max(_READ_AHEAD * need, min_gap), max_gap))


def _plain_steps(F: FixedPointMap, X: Tensor, alpha: float, tol: float, max_iter: int,
                 method: str, first: tuple[Tensor, Tensor] | None, check: int | None,
                 min_gap: int, slow: float | None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, int, bool]:
    """Plain (``alpha = 1``) or averaged steps until ``max r <= tol``, the budget, or (when
    ``slow`` is given) a read whose residual fell by less than ``slow`` per step since the
    previous read (not counting the first step, whose rate from ``x = 0`` is a transient:
    in MNIST training the adjoint's first step contracts by 0.81, every later one by 0.48).

    Residual reads: every ``check`` iterations when given, else on the schedule of
    :func:`_next_gap` (at least ``min_gap`` apart). Returns
    ``(X, F(X), Z, |F(X) - X|, iterations, slowed)``.
    """
    FX, Z = F(X) if first is None else first
    it, r_prev, gap, next_read = 0, math.inf, 1, 0
    while True:
        if it >= next_read or it >= max_iter:
            D = (FX - X).abs_()
            r = float(D.max())
            if not math.isfinite(r):
                finite_or_raise(D.amax(dim=1), method, it)
            if r <= tol or it >= max_iter:
                return X, FX, Z, D, it, False
            # (the first step, from x = 0, is a transient: it does not decide the switch)
            if slow is not None and it > gap and r > slow ** gap * r_prev:
                return X, FX, Z, D, it, True
            gap = check if check is not None else _next_gap(r, r_prev, gap, tol, min_gap, _MAX_GAP)
            r_prev, next_read = r, it + gap
        X = FX if alpha == 1.0 else torch.lerp(X, FX, alpha)
        FX, Z = F(X)
        it += 1


def iterate_lean(F: FixedPointMap, X: Tensor, alpha: float, tol: float, max_iter: int,
                 method: str, on_nonconvergence: str, first: tuple[Tensor, Tensor] | None = None,
                 check_every: int | None = None, min_gap: int = 1
                 ) -> tuple[Tensor, Tensor, SolveInfo]:
    """Picard (``alpha = 1``) or averaged iteration of the whole batch ``X (m, n)``.

    Returns ``(X, aux, info)`` in column convention ``(n, m)``, as the tracked solvers.

    Args:
        F: the :class:`~idlkit.solve.maps.FixedPointMap` ``X -> (F(X), aux)``.
        X: ``(m, n)`` batch-first start.
        alpha: averaging step in ``(0, 1]`` (``1``: Picard).
        tol: stop when every sample's residual is at most ``tol``.
        max_iter: iteration budget.
        method: the solver's name, reported in :class:`SolveInfo`.
        on_nonconvergence: ``"raise"``, ``"warn"`` or ``"ignore"`` when ``max_iter`` is spent.
        first: ``(F(X), aux)`` when the caller already has it, or ``None``.
        check_every: residual reads every this many iterations (``None``: the adaptive schedule).
        min_gap: fewest iterations between residual reads.

    Returns:
        ``(X, aux, info)``: ``(n, m)`` iterate and auxiliary (column convention) and a :class:`SolveInfo`.

    Raises:
        ConvergenceError: ``max_iter`` spent above ``tol`` with ``on_nonconvergence="raise"``.
        NonFiniteError: the iteration diverged to NaN/Inf.

    Examples:
        >>> from idlkit.solve.maps import ForwardMap
        >>> A = 0.5 * torch.eye(3, dtype=torch.float64); b = torch.ones(3, 4, dtype=torch.float64)
        >>> F = ForwardMap(A, b.T, idlkit.get_activation("relu"))   # x = relu(A x + b), batch-first rows
        >>> X0 = torch.zeros(4, 3, dtype=torch.float64)
        >>> X, Z, info = iterate_lean(F, X0, 1.0, 1e-10, 100, "picard", "raise")
        >>> X.shape, bool(info.converged), torch.allclose(X, torch.full((3, 4), 2.0, dtype=torch.float64))
        (torch.Size([3, 4]), True, True)
    """
    if X.shape[0] == 0 or X.shape[1] == 0:
        return _empty(X, method, tol)
    X, _, Z, D, it, _ = _plain_steps(F, X, alpha, tol, max_iter, method, first, check_every,
                                     min_gap, None)
    iters = torch.full((X.shape[0],), it, dtype=torch.long, device=X.device)
    info = finish(method, D.amax(dim=1), it, iters, tol, on_nonconvergence, per_sample=False, X=X)
    return X.t(), Z.t(), info


def anderson_lean(F: FixedPointMap, X: Tensor, alpha: float, tol: float, max_iter: int, m: int,
                  beta: float, on_nonconvergence: str, first: tuple[Tensor, Tensor] | None = None,
                  check_every: int | None = None, min_gap: int = 1
                  ) -> tuple[Tensor, Tensor, SolveInfo]:
    """Anderson acceleration entered from lean plain steps.

    Plain steps run lean while they contract faster than
    :func:`~idlkit.solve.anderson.plain_rate` per step (the point where an Anderson step
    becomes the better buy); the solve then continues with
    :func:`~idlkit.solve.anderson.anderson` from that iterate (its history starts there).

    Args:
        F: the :class:`~idlkit.solve.maps.FixedPointMap` ``X -> (F(X), aux)``.
        X: ``(m, n)`` batch-first start.
        alpha: averaging step in ``(0, 1]`` (``1``: Picard).
        tol: stop when every sample's residual is at most ``tol``.
        max_iter: iteration budget.
        m: Anderson memory (number of stored iterates).
        beta: Anderson mixing parameter.
        on_nonconvergence: ``"raise"``, ``"warn"`` or ``"ignore"`` when ``max_iter`` is spent.
        first: ``(F(X), aux)`` when the caller already has it, or ``None``.
        check_every: residual reads every this many iterations (``None``: the adaptive schedule).
        min_gap: fewest iterations between residual reads.

    Returns:
        ``(X, aux, info)``: ``(n, m)`` iterate and auxiliary (column convention) and a :class:`SolveInfo`.

    Raises:
        ConvergenceError: ``max_iter`` spent above ``tol`` with ``on_nonconvergence="raise"``.
        NonFiniteError: the iteration diverged to NaN/Inf.

    Examples:
        >>> from idlkit.solve.maps import ForwardMap
        >>> A = 0.5 * torch.eye(3, dtype=torch.float64); b = torch.ones(3, 4, dtype=torch.float64)
        >>> F = ForwardMap(A, b.T, idlkit.get_activation("relu"))   # x = relu(A x + b), batch-first rows
        >>> X0 = torch.zeros(4, 3, dtype=torch.float64)
        >>> X, Z, info = anderson_lean(F, X0, 1.0, 1e-10, 100, 5, 1.0, "raise")
        >>> X.shape, bool(info.converged), torch.allclose(X, torch.full((3, 4), 2.0, dtype=torch.float64))
        (torch.Size([3, 4]), True, True)
    """
    B, n = X.shape
    if B == 0 or n == 0:
        return _empty(X, "anderson", tol)
    X, FX, Z, D, it, slowed = _plain_steps(F, X, alpha, tol, max_iter, "anderson", first,
                                           check_every, min_gap, plain_rate(B, n, m, lean=True))
    if not slowed:
        iters = torch.full((B,), it, dtype=torch.long, device=X.device)
        info = finish("anderson", D.amax(dim=1), it, iters, tol, on_nonconvergence,
                      per_sample=False, X=X)
        return X.t(), Z.t(), info
    if X.device.type != "cpu":  # no host read per step on an accelerator
        return anderson_sync_free(F, X, alpha, tol, max_iter, m, beta, on_nonconvergence,
                                  (FX, Z), check_every, min_gap, start=it)
    return anderson(F, X, alpha, tol, max_iter, m, beta, on_nonconvergence, (FX, Z),
                    start=it, plain_phase=False, per_sample=False)


def anderson_sync_free(F: FixedPointMap, X: Tensor, alpha: float, tol: float, max_iter: int,
                       m: int, beta: float, on_nonconvergence: str,
                       first: tuple[Tensor, Tensor] | None = None, check_every: int | None = None,
                       min_gap: int = 1, start: int = 0) -> tuple[Tensor, Tensor, SolveInfo]:
    """Anderson acceleration of the whole batch with no host read between residual reads.

    The same step and safeguard as :func:`~idlkit.solve.anderson.anderson`, decided on the
    device by masks instead of by host-side branches: a sample whose Anderson step raises
    its residual by more than ``_REJECT_FACTOR`` (or to NaN) keeps its previous iterate,
    restarts its history there and takes the plain step ``x + alpha G`` next (one wasted
    evaluation instead of an immediate re-evaluation, which would need a host read). The
    residual is read on the schedule of the lean loop (:func:`_next_gap`, at least
    ``min_gap`` steps apart: :data:`~idlkit.solve.registry.DEVICE_CHECK_EVERY` on an
    accelerator). Two reads without progress (rounding noise: float32 with ``tol`` near an
    ulp of the state) switch the whole batch to plain steps, which contract to the
    floating-point fixed point. Samples are not retired; ``per_sample_iterations`` is the
    solve's count.

    Args:
        F: the :class:`~idlkit.solve.maps.FixedPointMap` ``X -> (F(X), aux)``.
        X: ``(m, n)`` batch-first start.
        alpha: averaging step in ``(0, 1]`` (``1``: Picard).
        tol: stop when every sample's residual is at most ``tol``.
        max_iter: iteration budget.
        m: Anderson memory (number of stored iterates).
        beta: Anderson mixing parameter.
        on_nonconvergence: ``"raise"``, ``"warn"`` or ``"ignore"`` when ``max_iter`` is spent.
        first: ``(F(X), aux)`` when the caller already has it, or ``None``.
        check_every: residual reads every this many iterations (``None``: the adaptive schedule).
        min_gap: fewest iterations between residual reads.
        start: iterations already done (counted in ``info``).

    Returns:
        ``(X, aux, info)``: ``(n, m)`` iterate and auxiliary (column convention) and a :class:`SolveInfo`.

    Raises:
        ConvergenceError: ``max_iter`` spent above ``tol`` with ``on_nonconvergence="raise"``.
        NonFiniteError: the iteration diverged to NaN/Inf.

    Examples:
        >>> from idlkit.solve.maps import ForwardMap
        >>> A = 0.5 * torch.eye(3, dtype=torch.float64); b = torch.ones(3, 4, dtype=torch.float64)
        >>> F = ForwardMap(A, b.T, idlkit.get_activation("relu"))   # x = relu(A x + b), batch-first rows
        >>> X0 = torch.zeros(4, 3, dtype=torch.float64)
        >>> X, Z, info = anderson_sync_free(F, X0, 1.0, 1e-10, 100, 5, 1.0, "raise")
        >>> X.shape, bool(info.converged), torch.allclose(X, torch.full((3, 4), 2.0, dtype=torch.float64))
        (torch.Size([3, 4]), True, True)
    """
    B, n = X.shape
    FX, Z = F(X) if first is None else first
    G = FX - X
    r = row_inf_norm(G)
    hist = History(X, m)
    plain = torch.zeros(B, dtype=torch.bool, device=X.device)  # rows to step plainly next
    it, count, r_prev, gap, next_read = start, 0, math.inf, 1, start
    best, stalls, all_plain = math.inf, 0, False
    while True:
        if it >= next_read or it >= max_iter:
            rmax = float(r.max())
            if not math.isfinite(rmax):
                finite_or_raise(r, "anderson", it)
            if rmax <= tol or it >= max_iter:
                break
            # no real progress over two reads: extrapolation is lost in rounding noise (float32
            # with tol near an ulp of the state); plain steps contract to the fixed point
            best, stalls = (rmax, 0) if rmax < _PROGRESS * best else (min(best, rmax), stalls + 1)
            all_plain = all_plain or stalls >= 2
            gap = (check_every if check_every is not None
                   else _next_gap(rmax, r_prev, gap, tol, min_gap, _MAX_GAP))
            r_prev, next_read = rmax, it + gap
        if all_plain:
            X = X + alpha * G
            FX, Z = F(X)
            G = FX - X
            r = row_inf_norm(G)
            it += 1
            continue
        hist.store(X, G, beta, count % m, count < m)
        count += 1
        it += 1
        Xn = torch.where(plain[:, None], X + alpha * G, hist.step())
        FXn, Zn = F(Xn)
        Gn = FXn - Xn
        rn = row_inf_norm(Gn)
        bad = ~(rn <= _REJECT_FACTOR * r)  # a blow-up or NaN: keep the previous iterate
        keep = bad[:, None]
        X, Z, G = torch.where(keep, X, Xn), torch.where(keep, Z, Zn), torch.where(keep, G, Gn)
        r = torch.where(bad, r, rn)
        hist.restart_where(bad, X, G, beta)
        plain = bad
    iters = torch.full((B,), it, dtype=torch.long, device=X.device)
    info = finish("anderson", r, it, iters, tol, on_nonconvergence, per_sample=False, X=X)
    return X.t(), Z.t(), info

