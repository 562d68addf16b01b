"""Per-sample bookkeeping of the iterative solvers (paper 000 §1: "depth adaptability").

:class:`Output` records, for each sample, the iteration at which its residual first
reached ``tol`` and retires converged samples from the active set when that saves work
(large ``batch x n``). :func:`iterate_tracked` is the Picard / averaged iteration with
this bookkeeping; the lean loop of :mod:`idlkit.solve.lean` is used where it does not pay.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .info import SolveInfo, finish, finite_or_raise, row_inf_norm
from .maps import FixedPointMap

__all__ = ["Output", "iterate_tracked", "RETIRE_WORK", "retirement_pays"]

RETIRE_WORK = 1 << 20


def retirement_pays(batch: int, n: int) -> bool:
    """Whether retiring converged samples piecewise can save more than it costs: a batch
    whose whole iteration (about ``batch n (n + 32)`` flops) is at least twice
    ``RETIRE_WORK`` (see :class:`Output`).

    Args:
        batch: number of samples.
        n: size of each sample's unknown.

    Returns:
        ``True`` when piecewise retirement can pay.

    Examples:
        >>> retirement_pays(batch=4, n=3), retirement_pays(batch=1024, n=1000)
        (False, True)
    """
    return batch * n * (n + 32) >= 2 * RETIRE_WORK


class Output:
    """Collects each sample's final state, pre-activation and residual as it leaves the
    active set: converged samples are frozen, so later iterations cost only the rest.

    Retiring costs a dozen small tensor operations, more than a few extra iterations of
    a few samples cost when ``n`` is small. Samples at ``tol`` are retired when their
    number times ``n (n + 32)`` (about the work of one of their iterations) reaches
    ``RETIRE_WORK``, or when every live sample is at ``tol``; a batch whose whole
    iteration is below twice that work is never retired piecewise. Until retired, a
    sample keeps iterating (its residual keeps falling for Picard; an Anderson sample
    that drifts back above ``tol`` is retired later). ``per_sample_iterations`` reports
    the iteration at which each sample first reached ``tol``, found afterwards from the
    residuals of the iterations since the last compaction (no per-iteration cost).

    Args:
        X: ``(m, n)`` batch-first start (sets the batch, size, dtype and device).

    Examples:
        >>> out = Output(torch.zeros(4, 3))            # room for 4 samples' states (n = 3)
        >>> type(out).__name__
        'Output'
    """

    def __init__(self, X: Tensor) -> None:
        B, self.n = X.shape
        self.size = B
        self.like = X
        self.X = self.Z = self.r = self.iters = None  # allocated when samples retire piecewise
        self.first = torch.full((B,), -1, dtype=torch.long, device=X.device)  # before t0
        self.history: list[Tensor] = []  # residuals of the active rows at iterations t0, ...
        self.t0 = 0
        self.piecewise = retirement_pays(B, self.n)
        self.partial = False  # some samples retired but still in the active set
        self.dead = 0  # how many
        self.hi = math.inf  # largest live residual seen by the last due()

    def due(self, r: Tensor, live: Tensor, it: int, tol: float, max_iter: int, method: str) -> bool:
        """Whether to :meth:`settle` now: every live sample at ``tol``, the budget spent, or
        enough samples at ``tol`` to be worth retiring (see the class docstring).

        Also raises on NaN/Inf in a live residual (``max`` propagates NaN). One reduction
        and one host read while no sample is at ``tol``.

        Args:
            r: residuals of the live samples.
            live: indices of the live samples.
            it: iterations done.
            tol: the tolerance.
            max_iter: iteration budget.
            method: the solver's name (for the message).

        Returns:
            ``True`` when it is time to :meth:`settle`.

        Raises:
            NonFiniteError: a NaN/Inf residual.
        """
        if r.numel() == 0:
            return True
        self.history.append(r)
        if len(self.history) == 64:  # bound the memory: fold the history into first hits
            self.first, self.history, self.t0 = self._first_hits(tol), [], it + 1
        if not self.piecewise:
            hi = self.hi = float(r.amax())
            if not math.isfinite(hi):
                finite_or_raise(r, method, it)
            return hi <= tol or it >= max_iter
        if self.partial:
            lo = float(r.masked_fill(~live, math.inf).amin())
            hi = float(r.masked_fill(~live, 0.0).amax())
        else:
            lo_t, hi_t = torch.aminmax(r)
            lo, hi = float(lo_t), float(hi_t)
        self.hi = hi
        if not math.isfinite(hi):
            finite_or_raise(r.masked_fill(~live, 0.0), method, it)
        if hi <= tol or it >= max_iter:
            return True
        if lo > tol:
            return False
        count = int(((r <= tol) & live).sum())
        return count * self.n * (self.n + 32) >= RETIRE_WORK

    def _first_hits(self, tol: float) -> Tensor:
        """Per active row, the first iteration at which its residual was at ``tol`` (-1: never)."""
        if not self.history:  # just folded (or nothing iterated): all is in ``first``
            return self.first
        R = torch.stack(self.history) <= tol  # (iterations since t0, rows)
        seen = R.any(dim=0)
        when = self.t0 + R.to(torch.uint8).argmax(dim=0)  # the first True
        fresh = torch.where(seen, when, torch.full_like(when, -1))
        return torch.where(self.first >= 0, self.first, fresh)

    def settle(self, rows: Tensor, live: Tensor, X: Tensor, Z: Tensor, r: Tensor, it: int,
               tol: float, max_iter: int) -> tuple[Tensor, Tensor | None, bool]:
        """Retire the live samples at ``tol`` (all of them once ``it`` hits ``max_iter``).

        Returns ``(live, sel, finished)``: ``sel`` holds the rows to keep when it is time
        to compact the active set (else None); ``finished`` when no sample is left.

        Args:
            rows: positions of the live samples in the active batch.
            live: indices of the live samples in the whole batch.
            X: ``(active, n)`` iterates.
            Z: ``(active, n)`` auxiliaries (pre-activations).
            r: ``(active,)`` residuals.
            it: iterations done.
            tol: the tolerance.
            max_iter: iteration budget.

        Returns:
            ``(live, sel, finished)``.
        """
        if live.numel() == 0:  # an empty batch: nothing to solve
            self.X, self.Z, self.r = X, Z, r
            self.iters = self.first
            return live, None, True
        if self.dead == 0 and rows.numel() == self.size and (self.hi <= tol or it >= max_iter):
            # the whole batch at once, none retired before: no copies
            self.X, self.Z, self.r, self.iters = X, Z, r, self._first_hits(tol)
            return live.logical_not_(), None, True
        if self.X is None:
            like = self.like
            self.X, self.Z = torch.empty_like(like), torch.empty_like(like)
            self.r = like.new_zeros(self.size)
            self.iters = torch.full((self.size,), -1, dtype=torch.long, device=like.device)
        done = (r <= tol) & live if it < max_iter else live
        didx = done.nonzero().squeeze(1)
        if didx.numel() == 0:
            return live, None, False
        first = self._first_hits(tol)
        idx = rows.index_select(0, didx)
        self.X.index_copy_(0, idx, X.index_select(0, didx))
        self.Z.index_copy_(0, idx, Z.index_select(0, didx))
        self.r.index_copy_(0, idx, r.index_select(0, didx))
        self.iters.index_copy_(0, idx, first.index_select(0, didx))
        live = live.index_fill(0, didx, False)
        self.dead += int(didx.numel())
        if self.dead == live.numel():
            return live, None, True
        # drop retired samples once they are half the active set (copies amortised)
        sel = live.nonzero().squeeze(1) if 2 * self.dead >= live.numel() else None
        if sel is not None:
            self.dead = 0
            self.first = first.index_select(0, sel)
            self.history, self.t0 = [], it + 1
        self.partial = sel is None
        return live, sel, False

    def result(self, method: str, it: int, tol: float, on_nonconvergence: str,
               fallbacks: int = 0, per_sample: bool = True) -> tuple[Tensor, Tensor, SolveInfo]:
        """``(X, Z, info)`` back in column convention ``(n, m)``.

        Args:
            method: the solver's name.
            it: iterations done.
            tol: the tolerance.
            on_nonconvergence: ``"raise"``, ``"warn"`` or ``"ignore"``.
            fallbacks: samples solved again by a fallback.
            per_sample: whether per-sample counts were kept.

        Returns:
            ``(X, Z, info)`` in column convention ``(n, m)``.

        Raises:
            ConvergenceError: a sample above ``tol`` with ``on_nonconvergence="raise"``.
        """
        iters = torch.where(self.r <= tol, self.iters, it)  # the budget for the unconverged
        info = finish(method, self.r, it, iters, tol, on_nonconvergence, fallbacks, per_sample,
                      self.X)
        return self.X.t(), self.Z.t(), info


def iterate_tracked(F: FixedPointMap, X: Tensor, alpha: float, tol: float, max_iter: int,
                    method: str, on_nonconvergence: str,
                    first: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, SolveInfo]:
    """Picard (``alpha = 1``) or averaged iteration on batch-first ``X``, active samples only.

    ``first``: ``F(X)`` when the caller has it for free (``X = 0``).

    Args:
        F: the :class:`~idlkit.solve.maps.FixedPointMap` ``X -> (F(X), aux)``.
        X: ``(m, n)`` batch-first start.
        alpha: averaging step in ``(0, 1]`` (``1``: Picard).
        tol: stop when every sample's residual is at most ``tol``.
        max_iter: iteration budget.
        method: the solver's name, reported in :class:`SolveInfo`.
        on_nonconvergence: ``"raise"``, ``"warn"`` or ``"ignore"`` when ``max_iter`` is spent.
        first: ``(F(X), aux)`` when the caller already has it, or ``None``.

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
        >>> X, Z, info = iterate_tracked(F, X0, 1.0, 1e-10, 100, "picard", "raise")
        >>> X.shape, info.per_sample_iterations.shape
        (torch.Size([3, 4]), torch.Size([4]))
        >>> torch.allclose(X, torch.full((3, 4), 2.0, dtype=torch.float64))
        True
    """
    out = Output(X)
    rows = torch.arange(X.shape[0], device=X.device)
    live = torch.ones(X.shape[0], dtype=torch.bool, device=X.device)
    it = 0
    FX, Z = F(X) if first is None else first
    while True:
        r = row_inf_norm(FX - X)
        if out.due(r, live, it, tol, max_iter, method):
            live, sel, finished = out.settle(rows, live, X, Z, r, it, tol, max_iter)
            if finished:
                break
            if sel is not None:
                rows, X, FX, live = rows[sel], X[sel], FX[sel], live[sel]
                F = F.restrict(sel)
        X = FX if alpha == 1.0 else torch.lerp(X, FX, alpha)
        it += 1
        FX, Z = F(X)
    return out.result(method, it, tol, on_nonconvergence)
