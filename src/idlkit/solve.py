"""Fixed-point solvers for ``X = phi(A X + b)`` and its adjoint, with :class:`SolveInfo`.

Column convention (the papers'): ``X`` and ``b`` are ``(n, m)``, one column per
sample. Every solver is batched over columns, stops when the l_inf residual
``||phi(A x + b) - x||_inf`` of every column is below ``tol``, records for each
column the iteration at which it got there (the papers' "depth adaptability")
and freezes it there (later iterations only touch the columns still running),
and raises :class:`~idlkit.errors.ConvergenceError` (or warns, on request) when
``max_iter`` is reached first. NaN/Inf appearing in an iterate raises at once.

Methods (registry :data:`SOLVERS`):

* ``picard``: ``x <- phi(A x + b)`` (paper 000 eq. 2.4); a contraction in l_inf
  when ``||A||_inf < 1`` (Thm 2.2, Remark 2.4).
* ``averaged``: ``x <- (1 - alpha) x + alpha phi(A x + b)`` (paper 004). For a
  monotone componentwise ``phi`` with ``0 <= phi' <= 1`` the Jacobian of the step
  is ``(1 - alpha) I + alpha D A`` with ``D = diag(d)``, ``d in [0, 1]``; if
  ``alpha <= 1 / (1 + max_i (-A_ii)_+)`` its diagonal is nonnegative and its
  l_inf norm is ``max_i 1 - alpha (1 - d_i r_i) <= 1 - alpha (1 - mu_inf(A)_+)``
  with ``r_i`` the row measure. The default ``alpha = 1 / (1 + max_i (-A_ii)_+)``
  is the largest such step (derived here; the slides say "small enough alpha").
* ``anderson``: type-II Anderson acceleration (Walker & Ni 2011) with memory
  ``m``, per column, with a safeguard: a column whose residual increases is sent
  back to the fallback step (Picard, or the averaged step when ``alpha < 1``)
  from its previous iterate, and its history is restarted.
* ``triangular``: exact back-substitution by levels of the dependency graph for
  (block) strictly upper-triangular ``A`` (Thm 2.8/2.9): ``x_I = phi_I(b_I +
  sum_{J > I} A_IJ x_J)``, one matrix product per level; for upper-triangular
  ``A`` with ``diag(A) < 1`` and a piecewise-linear positively homogeneous map
  (ReLU, LeakyReLU, identity), the closed form of Remark 2.5,
  ``x_i = phi(c_i) / (1 - A_ii phi'(c_i))`` with ``c_i = b_i + sum_{j>i} A_ij x_j``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from . import _triangular as _tri
from ._validation import all_finite
from .activations import Activation, Centered, ComponentwiseActivation, get_activation
from .errors import (
    ConfigurationError,
    ConvergenceError,
    NonFiniteError,
    ShapeError,
    WellPosednessError,
)

__all__ = [
    "SolveInfo",
    "ConvergenceWarning",
    "SOLVERS",
    "fixed_point",
    "adjoint_fixed_point",
    "default_alpha",
    "triangular_levels",
    "iterate_map",
    "FixedPointMap",
]

SOLVERS = ("picard", "averaged", "anderson", "triangular")
ON_NONCONVERGENCE = ("raise", "warn", "ignore")
_REJECT_FACTOR = 100.0
# residual reduction per Anderson step, relative, where plain steps are about to lose: in MNIST
# training (n = 100, batch 100, kappa 0.95) Anderson cut a solve from 20.5 to 14.8 iterations at
# ~2.5x the cost per step, a net loss; 0.2 (the rate on a random kappa = 0.5 problem) switched
# too early there (7.0 vs 5.1 ms per training step, measured in one process, alternating)
_ANDERSON_RATE = 0.5
_OP_WORK = 2e5  # fixed cost of one small tensor operation, in flops (~4 us at ~50 GFlop/s)
_RETIRE_WORK = 1 << 20
_FLOOR_ULPS = 1024


class ConvergenceWarning(UserWarning):
    """Issued instead of :class:`ConvergenceError` when ``on_nonconvergence="warn"``."""


@dataclass(frozen=True)
class SolveInfo:
    """What a fixed-point solve did.

    Attributes:
        method: solver name.
        iterations: number of updates of the iterate (levels for ``triangular``).
        residual: ``max_j ||phi(A x_j + b_j) - x_j||_inf`` at the returned state.
        converged: ``residual <= tol`` (always true for ``triangular``, which is exact).
        per_sample_iterations: ``(m,)`` int64 tensor, updates each column needed to
            reach ``tol`` (``iterations`` for a column that never did).
        per_sample_residual: ``(m,)`` tensor of the final residual of each column.
        tol: the tolerance asked for.
        fallbacks: Anderson steps rejected by the safeguard (column-steps).
    """

    method: str
    iterations: int
    residual: float
    converged: bool
    per_sample_iterations: Tensor
    per_sample_residual: Tensor
    tol: float
    fallbacks: int = 0

    def __str__(self) -> str:
        psi = self.per_sample_iterations.double()
        spread = (f"per sample min/mean/max {int(psi.min())}/{psi.mean():.1f}/{int(psi.max())}"
                  if psi.numel() else "no samples")
        return (f"SolveInfo({self.method}: {self.iterations} iterations, residual "
                f"{self.residual:.3g} (tol {self.tol:g}), converged={self.converged}, {spread}"
                + (f", {self.fallbacks} safeguard fallbacks" if self.fallbacks else "") + ")")


# The iterative solvers work batch-first internally (one *row* per sample, ``(m, n)``):
# dropping converged samples is then a contiguous row selection, and ``X A^T`` is one GEMM
# with a transposed operand. Activations see the column-convention view ``Z.t()``.


def _elementwise(act: Activation) -> bool:
    """``act`` applies one scalar function to every entry, so it may act on the batch-first
    layout directly (no transposed views): componentwise maps and their centred shifts."""
    base = act.base if isinstance(act, Centered) else act
    return isinstance(base, ComponentwiseActivation)


class _ForwardMap:
    """``F(x) = phi(A x + b)`` on rows: returns ``(F(X), Z)`` with ``Z = X A^T + b^T``."""

    def __init__(self, A: Tensor, bT: Tensor, act: Activation) -> None:
        self.A, self.bT, self.act = A, bT, act
        self.elementwise = _elementwise(act)
        self.AT = A.t() if A.layout == torch.strided else None

    def restrict(self, rows: Tensor) -> _ForwardMap:
        return _ForwardMap(self.A, self.bT[rows], self.act)

    def at_zero(self) -> tuple[Tensor, Tensor]:
        """``(F(0), Z)`` with ``Z = b^T``: no matrix product."""
        Z = self.bT.clone()
        return (self.act(Z) if self.elementwise else self.act(Z.t()).t()), Z

    def __call__(self, X: Tensor) -> tuple[Tensor, Tensor]:
        if self.AT is not None:
            Z = torch.addmm(self.bT, X, self.AT)
        else:
            Z = (self.A @ X.t()).t() + self.bT
        return (self.act(Z) if self.elementwise else self.act(Z.t()).t()), Z


class _AdjointMap:
    """``F(v) = J(z)^T (A^T v + g)`` on rows (eq. G.3): returns ``(F(V), V A + G^T)``.

    For an entrywise map ``J(z)^T`` is the diagonal ``Psi = phi'(z)`` (eq. G.4), computed
    once: an iteration is then one matrix product and one entrywise product.
    """

    def __init__(self, A: Tensor, ZT: Tensor, GT: Tensor, act: Activation,
                 psi: Tensor | None = None) -> None:
        self.A, self.ZT, self.GT, self.act = A, ZT, GT, act
        if psi is None and _elementwise(act):
            psi = act.derivative(ZT)  # type: ignore[attr-defined]
        self.psi = psi

    def restrict(self, rows: Tensor) -> _AdjointMap:
        return _AdjointMap(self.A, self.ZT[rows], self.GT[rows], self.act,
                           None if self.psi is None else self.psi[rows])

    def at_zero(self) -> tuple[Tensor, Tensor]:
        """``(F(0), W)`` with ``W = G^T``: no matrix product."""
        W = self.GT.clone()
        if self.psi is not None:
            return self.psi * W, W
        return self.act.vjp(self.ZT.t(), W.t()).t(), W

    def __call__(self, V: Tensor) -> tuple[Tensor, Tensor]:
        if self.A.layout == torch.strided:
            W = torch.addmm(self.GT, V, self.A)
        else:
            W = (self.A.t() @ V.t()).t() + self.GT
        if self.psi is not None:
            return self.psi * W, W
        return self.act.vjp(self.ZT.t(), W.t()).t(), W


class FixedPointMap(Protocol):
    """A batch-first map for :func:`iterate_map`: ``F(X) -> (F(X), aux)`` with ``X`` and
    ``aux`` of shape ``(m, d)``, and ``F.restrict(rows)``, the same map on those samples."""

    def restrict(self, rows: Tensor) -> FixedPointMap: ...

    def __call__(self, X: Tensor) -> tuple[Tensor, Tensor]: ...


def iterate_map(F: FixedPointMap, X: Tensor, method: str, alpha: float, tol: float,
                max_iter: int, anderson_m: int = 5, beta: float | None = None,
                on_nonconvergence: str = "raise", zero_start: bool = False
                ) -> tuple[Tensor, Tensor, SolveInfo]:
    """Solve ``X = F(X)`` for any batch-first map (used by the model's forward and adjoint
    solves and by :mod:`idlkit.lowrank`'s latent solves).

    ``method``: ``picard``, ``averaged`` (step ``alpha``) or ``anderson`` (fallback step
    ``alpha``, mixing ``beta``, default ``alpha``). ``X``: ``(m, d)`` start. Returns
    ``(X, aux, info)`` in column convention ``(d, m)``. ``zero_start``: ``X`` is zero and
    ``F`` has ``at_zero()``, its value there without the matrix product.
    """
    first = F.at_zero() if zero_start else None  # type: ignore[attr-defined]
    if method == "anderson":
        return _anderson(F, X, alpha, tol, max_iter, anderson_m,
                         alpha if beta is None else beta, on_nonconvergence, first)
    if method not in ("picard", "averaged"):
        raise ConfigurationError(f"iterate_map solves with picard, averaged or anderson, got "
                                 f"{method!r}")
    return _iterate_simple(F, X, alpha if method == "averaged" else 1.0, tol, max_iter, method,
                           on_nonconvergence, first)


def default_alpha(A: Tensor) -> float:
    """Largest averaged step with a certified contraction (see module doc): 1 / (1 + max(-A_ii)_+)."""
    d = torch.diagonal(A.to_dense() if A.layout != torch.strided else A).detach()
    neg = float(torch.clamp(-d, min=0).max()) if d.numel() else 0.0
    return 1.0 / (1.0 + neg)


def _check_settings(method: str, tol: float, max_iter: int, on_nonconvergence: str,
                    alpha: float | None, anderson_m: int) -> None:
    if method not in SOLVERS:
        raise ConfigurationError(f"unknown solver {method!r}; choose one of {list(SOLVERS)}")
    if isinstance(tol, bool) or not (isinstance(tol, int | float) and math.isfinite(tol) and tol > 0):
        raise ConfigurationError(f"tol must be a positive finite number, got {tol!r}")
    if isinstance(max_iter, bool) or not (isinstance(max_iter, int | np.integer) and max_iter >= 1):
        raise ConfigurationError(f"max_iter must be a positive integer, got {max_iter!r}")
    if on_nonconvergence not in ON_NONCONVERGENCE:
        raise ConfigurationError(f"on_nonconvergence must be one of {list(ON_NONCONVERGENCE)}, "
                                 f"got {on_nonconvergence!r}")
    if alpha is not None and not (0 < float(alpha) <= 1):
        raise ConfigurationError(f"alpha (averaging step) must lie in (0, 1], got {alpha!r}")
    if isinstance(anderson_m, bool) or not (isinstance(anderson_m, int | np.integer) and anderson_m >= 1):
        raise ConfigurationError(f"anderson_m must be a positive integer, got {anderson_m!r}")


def _residual(FX: Tensor, X: Tensor) -> Tensor:
    """Per-sample l_inf residual of batch-first iterates ``(m, n)``."""
    return _row_inf_norm(FX - X)


def _row_inf_norm(G: Tensor) -> Tensor:
    """``max_j |G_ij|`` per row."""
    if G.shape[1] == 0:
        return G.new_zeros(G.shape[0])
    return G.abs().amax(dim=1)


def _finite_or_raise(r: Tensor, method: str, it: int) -> None:
    if not bool(torch.isfinite(r).all()):
        bad = int((~torch.isfinite(r)).nonzero()[0])
        raise NonFiniteError(
            f"{method}: NaN/Inf appeared in the iterate at iteration {it} (first bad sample "
            f"{bad}); the input or the parameters contain NaN/Inf, or A is not well-posed and "
            f"the iteration diverged (check model.certificate())")


def _finish(method: str, r: Tensor, it: int, iters: Tensor, tol: float,
            on_nonconvergence: str, fallbacks: int = 0) -> SolveInfo:
    resid = float(r.max()) if r.numel() else 0.0
    converged = resid <= tol
    info = SolveInfo(method, it, resid, converged, iters, r.detach(), tol, fallbacks)
    if not converged and on_nonconvergence != "ignore":
        worst = int(r.argmax())
        msg = (f"{method} solver did not converge in {it} iterations: l_inf residual {resid:.3g} "
               f"> tol {tol:g} (worst sample {worst}). Fix: raise max_iter, loosen tol, use "
               f"solver='anderson', or restore well-posedness (model.certificate(), project_()).")
        if on_nonconvergence == "raise":
            raise ConvergenceError(msg, info)
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    return info


class _Output:
    """Collects each sample's final state, pre-activation and residual as it leaves the
    active set: converged samples are frozen, so later iterations cost only the rest.

    Retiring costs a dozen small tensor operations, more than a few extra iterations of
    a few samples cost when ``n`` is small. Samples at ``tol`` are retired when their
    number times ``n (n + 32)`` (about the work of one of their iterations) reaches
    ``_RETIRE_WORK``, or when every live sample is at ``tol``; a batch whose whole
    iteration is below twice that work is never retired piecewise. Until retired, a
    sample keeps iterating (its residual keeps falling for Picard; an Anderson sample
    that drifts back above ``tol`` is retired later). ``per_sample_iterations`` reports
    the iteration at which each sample first reached ``tol``, found afterwards from the
    residuals of the iterations since the last compaction (no per-iteration cost).
    """

    def __init__(self, X: Tensor) -> None:
        B, self.n = X.shape
        self.size = B
        self.like = X
        self.X = self.Z = self.r = self.iters = None  # allocated when samples retire piecewise
        self.first = torch.full((B,), -1, dtype=torch.long, device=X.device)  # before t0
        self.history: list[Tensor] = []  # residuals of the active rows at iterations t0, ...
        self.t0 = 0
        self.piecewise = B * self.n * (self.n + 32) >= 2 * _RETIRE_WORK
        self.partial = False  # some samples retired but still in the active set
        self.dead = 0  # how many
        self.hi = math.inf  # largest live residual seen by the last due()

    def due(self, r: Tensor, live: Tensor, it: int, tol: float, max_iter: int, method: str) -> bool:
        """Whether to :meth:`settle` now: every live sample at ``tol``, the budget spent, or
        enough samples at ``tol`` to be worth retiring (see the class docstring).

        Also raises on NaN/Inf in a live residual (``max`` propagates NaN). One reduction
        and one host read while no sample is at ``tol``.
        """
        if r.numel() == 0:
            return True
        self.history.append(r)
        if len(self.history) == 64:  # bound the memory: fold the history into first hits
            self.first, self.history, self.t0 = self._first_hits(tol), [], it + 1
        if not self.piecewise:
            hi = self.hi = float(r.amax())
            if not math.isfinite(hi):
                _finite_or_raise(r, method, it)
            return hi <= tol or it >= max_iter
        if self.partial:
            lo = float(r.masked_fill(~live, math.inf).amin())
            hi = float(r.masked_fill(~live, 0.0).amax())
        else:
            lo_t, hi_t = torch.aminmax(r)
            lo, hi = float(lo_t), float(hi_t)
        self.hi = hi
        if not math.isfinite(hi):
            _finite_or_raise(r.masked_fill(~live, 0.0), method, it)
        if hi <= tol or it >= max_iter:
            return True
        if lo > tol:
            return False
        count = int(((r <= tol) & live).sum())
        return count * self.n * (self.n + 32) >= _RETIRE_WORK

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
               fallbacks: int = 0) -> tuple[Tensor, Tensor, SolveInfo]:
        """``(X, Z, info)`` back in column convention ``(n, m)``."""
        iters = torch.where(self.r <= tol, self.iters, it)  # the budget for the unconverged
        info = _finish(method, self.r, it, iters, tol, on_nonconvergence, fallbacks)
        return self.X.t(), self.Z.t(), info


def _iterate_simple(F: FixedPointMap, X: Tensor, alpha: float, tol: float, max_iter: int,
                    method: str, on_nonconvergence: str,
                    first: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, SolveInfo]:
    """Picard (``alpha = 1``) or averaged iteration on batch-first ``X``, active samples only.

    ``first``: ``F(X)`` when the caller has it for free (``X = 0``)."""
    out = _Output(X)
    rows = torch.arange(X.shape[0], device=X.device)
    live = torch.ones(X.shape[0], dtype=torch.bool, device=X.device)
    it = 0
    FX, Z = F(X) if first is None else first
    while True:
        r = _residual(FX, X)
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


class _History:
    """Anderson's memory for a batch ``(m_batch, n)``: iterates ``x_i + beta G_i`` and
    residuals ``G_i`` slot-first ``(memory, m_batch, n)``, their Gram matrices, and the
    bordered system ``[[0, 1^T], [1, H]]``.

    The system always has the full memory size: a slot not yet filled has a zero border
    entry and a zero Gram row and column, so its equation reads ``1e-10 a_j = 0`` and its
    weight is exactly 0. No view depends on the number of filled slots, so the views an
    iteration touches are made once (at small ``n`` making them cost a third of an
    iteration).
    """

    def __init__(self, X: Tensor, m: int) -> None:
        B, n = X.shape
        f64 = dict(dtype=torch.float64, device=X.device)
        self.m = m
        self.Yh = X.new_zeros(m, B, n)
        self.Gh = X.new_zeros(m, B, n)
        self.H = torch.zeros(B, m, m, **f64)
        self.system = torch.zeros(B, m + 1, m + 1, **f64)
        self.rhs = torch.zeros(B, m + 1, 1, **f64)
        self.rhs[:, 0] = 1.0
        self._views()

    def _views(self) -> None:
        H, system = self.H, self.system
        self.buf = torch.empty_like(self.Gh)  # workspace of the Gram update and the mixing
        self.G_slot, self.Y_slot = list(self.Gh.unbind(0)), list(self.Yh.unbind(0))
        self.H_row, self.H_col = list(H.unbind(1)), list(H.unbind(2))
        self.border_row = list(system[:, 0, 1:].unbind(1))
        self.border_col = list(system[:, 1:, 0].unbind(1))
        self.H_diag = H.diagonal(dim1=1, dim2=2)
        self.inner = system[:, 1:, 1:]
        self.inner_diag = self.inner.diagonal(dim1=1, dim2=2)

    def select(self, sel: Tensor) -> _History:
        """The same memory for the samples ``sel`` only (in place of a new allocation)."""
        self.Yh, self.Gh, self.H = self.Yh[:, sel], self.Gh[:, sel], self.H[sel]
        self.system, self.rhs = self.system[sel], self.rhs[sel]
        self._views()
        return self

    def store(self, X: Tensor, G: Tensor, beta: float, slot: int, new: bool) -> None:
        """Put ``(x + beta G, G)`` in ``slot`` and update the Gram matrix (``new``: the slot
        was empty, so its border entries are switched on)."""
        torch.add(X, G, alpha=beta, out=self.Y_slot[slot])
        self.G_slot[slot].copy_(G)
        row = torch.mul(self.Gh, G, out=self.buf).sum(dim=2).t()  # (B, m), to float64 by copy_
        self.H_row[slot].copy_(row)
        self.H_col[slot].copy_(row)
        if new:
            self.border_row[slot].fill_(1.0)
            self.border_col[slot].fill_(1.0)

    def restart(self, idx: Tensor, X: Tensor, G: Tensor, beta: float) -> None:
        """Samples ``idx`` forget their history: every slot holds ``(x + beta G, G)``."""
        self.Yh[:, idx] = X + beta * G
        self.Gh[:, idx] = G
        g2 = (G.to(torch.float64) ** 2).sum(dim=1)
        self.H[idx] = g2[:, None, None].expand(-1, self.m, self.m)
        self.system[idx, 0, 1:] = 1.0
        self.system[idx, 1:, 0] = 1.0

    def step(self) -> Tensor:
        """``sum_i a_i (x_i + beta G_i)`` with ``a`` solving the bordered normal equations of
        ``min ||sum_i a_i G_i|| : sum_i a_i = 1`` over the filled slots, in float64, scaled by
        the largest ``|G_i|^2`` and Tikhonov-regularised (1e-10). A singular system gives
        NaN/Inf weights: the caller's safeguard then rejects the step."""
        scale = self.H_diag.amax(dim=1).clamp_(min=1e-300)
        torch.div(self.H, scale.view(-1, 1, 1), out=self.inner)
        self.inner_diag.add_(1e-10)
        sol = torch.linalg.solve_ex(self.system, self.rhs)[0]
        a = sol.narrow(1, 1, self.m).transpose(0, 1).to(self.Yh.dtype)  # (m, B, 1)
        return torch.mul(self.Yh, a, out=self.buf).sum(dim=0)


def _plain_rate(batch: int, n: int, m: int) -> float:
    """Contraction per plain step below which plain steps beat Anderson (see :func:`_anderson`).

    Cost model in flops: a plain step is one GEMM ``2 B n^2`` plus ~8 small operations of
    fixed cost ``_OP_WORK`` and ``4 B n`` of entrywise work; an Anderson step adds ~22
    small operations and ``16 m B n`` of history work (Gram row, mixing, stores).
    """
    gemm = 2.0 * batch * n * n
    plain = gemm + 8 * _OP_WORK + 4.0 * batch * n
    anderson = gemm + 30 * _OP_WORK + 16.0 * m * batch * n
    return _ANDERSON_RATE ** (plain / anderson)


def _anderson(F: FixedPointMap, X: Tensor, alpha: float, tol: float, max_iter: int,
              m: int, beta: float, on_nonconvergence: str,
              first: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, SolveInfo]:
    """Type-II Anderson acceleration, per sample, with safeguards (batch-first ``X``).

    With ``G_i = F(x_i) - x_i`` for the last ``m`` iterates, the weights solve
    ``min ||sum_i a_i G_i||_2 : sum_i a_i = 1`` (through the bordered normal
    equations in float64, Tikhonov-regularised), and
    ``x+ = sum_i a_i (x_i + beta G_i)``. The history is stored slot-first,
    ``(memory, m_batch, n)``, so storing an iterate is one contiguous copy; the Gram
    matrix gains one row per iteration (O(m n) per sample), and the bordered system
    lives in a preallocated buffer whose border is set once.

    Safeguards, per sample: a step that multiplies the residual by more than
    ``_REJECT_FACTOR`` (or gives NaN, e.g. from a singular system) is replaced by the
    fallback step ``x + alpha (F(x) - x)`` from the previous iterate and the history
    restarts; a sample whose best residual has not improved over a window of ``2 m``
    steps while within ``_FLOOR_ULPS`` ulps of its largest entry continues with fallback
    steps only (rounding noise in float32 with ``tol`` near an ulp of the state defeats
    extrapolation, while plain steps reach the floating-point fixed point).
    Converged samples are frozen and leave the active set.

    Acceleration starts when it pays: the solve begins with fallback (plain) steps and
    switches to Anderson at the first step that cuts the largest live residual by less
    than :func:`_plain_rate` (about 0.76 for ``n = 100``, 0.52 for ``n = 1000``): where an
    Anderson step costs ``c`` plain steps and cuts the residual by ``_ANDERSON_RATE``, a
    plain step is the better buy while it contracts faster than ``_ANDERSON_RATE^(1/c)``.
    An easy problem is then solved at the cost of plain steps, several times cheaper than
    Anderson steps at small ``n``; a hard one loses at most a few plain steps.

    Every iteration costs two small GEMMs against the history besides ``F``, and a
    fixed number of tensor operations (about 25), which matters for small ``n``.
    """
    B, n = X.shape
    dev, dt = X.device, X.dtype
    eps = torch.finfo(dt).eps
    out = _Output(X)
    rows = torch.arange(B, device=dev)
    polish = torch.zeros(B, dtype=torch.bool, device=dev)
    any_polish = False
    FX, Z = F(X) if first is None else first
    G = FX - X
    r = _row_inf_norm(G)
    r_best = r.clone()
    r_window = r.clone()  # best residual at the start of the current stall window
    count, it, fallbacks = 0, 0, 0
    window = 2 * m

    live = torch.ones(B, dtype=torch.bool, device=dev)
    plain = True  # the plain-step phase (see the docstring)
    hist: _History | None = None
    hi_prev = math.inf
    plain_rate = _plain_rate(B, n, m)
    while True:
        if out.due(r, live, it, tol, max_iter, "anderson"):
            live, sel, finished = out.settle(rows, live, X, Z, r, it, tol, max_iter)
            if finished:
                break
            if sel is not None:
                rows, X, G, Z, r, live = rows[sel], X[sel], G[sel], Z[sel], r[sel], live[sel]
                polish, r_best, r_window = polish[sel], r_best[sel], r_window[sel]
                if hist is not None:
                    hist = hist.select(sel)
                if plain:
                    FX = FX[sel]
                F = F.restrict(sel)
        if plain and out.hi > plain_rate * hi_prev:  # plain steps have become the slower way
            plain = False
            r_best, r_window = r.clone(), r.clone()
            hist = _History(X, m)
        if plain:
            hi_prev = out.hi
            Xn = FX if alpha == 1.0 else torch.lerp(X, FX, alpha)
            FX, Zn = F(Xn)
            G = FX - Xn
            X, Z, r = Xn, Zn, _row_inf_norm(G)
            it += 1
            continue
        assert hist is not None
        hist.store(X, G, beta, count % m, count < m)
        count += 1
        it += 1
        Xn = hist.step()
        if any_polish:  # samples at the rounding floor take plain steps
            Xn = torch.where(polish[:, None], X + alpha * G, Xn)
        FXn, Zn = F(Xn)
        Gn = FXn - Xn
        rn = _row_inf_norm(Gn)
        # a blow-up (residual up by more than _REJECT_FACTOR, or NaN) is rejected; Anderson's
        # residuals are not monotone, and rejecting every increase stalls it (measured)
        bad = ~(rn <= _REJECT_FACTOR * r)
        if out.partial:
            bad &= live
        if any_polish:
            bad &= ~polish
        if bool(bad.any()):
            idx = bad.nonzero().squeeze(1)
            fallbacks += int(idx.numel())
            Xs = X[idx] + alpha * G[idx]
            FXs, Zs = F.restrict(idx)(Xs)
            Xn[idx], Zn[idx] = Xs, Zs
            Gn[idx] = FXs - Xs
            rn[idx] = _row_inf_norm(Gn[idx])
            _finite_or_raise(rn[idx], "anderson", it)
            hist.restart(idx, Xs, Gn[idx], beta)  # these samples start over at the new point
        torch.minimum(r_best, rn, out=r_best)
        if it % window == 0:
            # no progress over a window of 2m steps within ~1000 ulps of the state:
            # extrapolation is lost in rounding noise (float32 with tol near an ulp of the
            # state); plain steps converge
            stalled = r_best >= r_window
            if bool(stalled.any()):
                floor = _FLOOR_ULPS * eps * Xn.abs().amax(dim=1) if n else r_best
                polish |= stalled & (r_best <= floor)
                any_polish = bool(polish.any())
            r_window = r_best.clone()
        X, G, Z, r = Xn, Gn, Zn, rn
    return out.result("anderson", it, tol, on_nonconvergence, fallbacks)


# ----------------------------------------------------------------------------- triangular


def triangular_levels(A: Tensor, sizes: tuple[int, ...] | None = None,
                      allow_diagonal: bool = False) -> list[Tensor]:
    """Level sets of the dependency graph of an upper (block) triangular ``A`` (Thm 2.8/2.9).

    Block ``I`` depends on block ``J`` when ``A_IJ != 0`` and ``J != I``; its level is
    ``1 + max level(J)`` (0 without dependencies). Blocks of one level are
    independent given the lower levels, so ``triangular`` solves them with one
    matrix product. Computed by vectorised frontier propagation over the (sparse)
    pattern, with no per-row Python loop (:func:`idlkit._triangular.block_levels`).
    Raises :class:`ConfigurationError` when ``A`` has a nonzero entry below the (block)
    diagonal, or a nonzero diagonal (block) when ``allow_diagonal`` is false.
    """
    n = A.shape[0]
    if sizes is None:
        sizes = (1,) * n
    level = _tri.block_levels(A.detach(), tuple(sizes), allow_diagonal)
    return _tri.level_sets(level, tuple(sizes), A.device)


def _homog_diag_check(diag: Tensor, base: ComponentwiseActivation) -> None:
    bad = diag * base.slope_max >= 1
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise WellPosednessError(
            f"upper-triangular A with {base.name} is well-posed iff diag(A) < 1 (Remark 2.5, "
            f"Thm 2.8); A[{i}, {i}] = {float(diag[i]):.6g}. Fix: project the diagonal below 1.")


def _triangular(A: Tensor, b: Tensor, act: Activation, tol: float,
                owner: Tensor | None = None) -> tuple[Tensor, Tensor, SolveInfo]:
    """Back-substitution by levels (Thm 2.8/2.9): ``x_I = phi_I(b_I + A_I. x)``, one product
    per level with the cached plan of ``owner`` (the caller's ``A`` object, see
    :func:`idlkit._triangular.plan_for`); ``Z`` is assembled level by level (no extra product)."""
    plan = _tri.plan_for(owner if owner is not None else A, act)
    X = torch.zeros_like(b)
    Z = torch.empty_like(b)
    n = X.shape[0]
    base = getattr(act, "base", act)
    diag = plan.diag
    if plan.homog:
        assert diag is not None
        _homog_diag_check(diag, base)
    for k, idx in enumerate(plan.levels):
        sl = plan.slices[k]
        sel = sl if sl is not None else idx
        C = plan.row_block(A, k) @ X
        C += b[sel]
        if plan.homog:
            # closed form of Remark 2.5: x_i = phi(c_i) / (1 - A_ii phi'(c_i))
            d = diag[sel][:, None]
            Xk = act(C) / (1 - d * act.derivative(C))
            X[sel] = Xk
            Z[sel] = C + d * Xk
        else:
            X[sel] = _act_rows(act, C, idx, n)
            Z[sel] = C
    r = _residual(act(Z).t(), X.t())
    _finite_or_raise(r, "triangular", len(plan.levels))
    iters = torch.full((X.shape[1],), len(plan.levels), dtype=torch.long, device=X.device)
    resid = float(r.max()) if r.numel() else 0.0
    # exact up to rounding: converged by construction
    return X, Z, SolveInfo("triangular", len(plan.levels), resid, True, iters, r, tol)


def _act_rows(act: Activation, C: Tensor, idx: Tensor, n: int) -> Tensor:
    """Apply a (block) activation to the rows ``idx`` only (whole blocks by construction)."""
    if act.componentwise:
        return act(C)
    full = C.new_zeros(n, C.shape[1])
    full[idx] = C
    return act(full)[idx]


def _triangular_adjoint(A: Tensor, Z: Tensor, G: Tensor, act: Activation,
                        owner: Tensor | None = None) -> Tensor:
    """Solve ``V = J(Z)^T (A^T V + G)`` for triangular A by levels in reverse order, with the
    cached per-level row blocks of ``A^T`` (built on the first adjoint solve)."""
    plan = _tri.plan_for(owner if owner is not None else A, act)
    V = torch.zeros_like(G)
    n = A.shape[0]
    diag = plan.diag
    for k in range(len(plan.levels) - 1, -1, -1):
        idx, sl = plan.levels[k], plan.slices[k]
        sel = sl if sl is not None else idx
        C = plan.row_block_t(A, k) @ V
        C += G[sel]
        if plan.homog:
            assert diag is not None
            d = act.derivative(Z[sel])
            V[sel] = d * C / (1 - diag[sel][:, None] * d)
        elif act.componentwise:
            V[sel] = act.vjp(Z[sel], C)
        else:
            full = C.new_zeros(n, C.shape[1])
            full[idx] = C
            V[sel] = act.vjp(Z, full)[idx]
    return V


# ----------------------------------------------------------------------------- public API


def _validate_system(A: Tensor, b: Tensor) -> None:
    if not isinstance(A, Tensor) or A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ShapeError(f"A must be a square (n, n) tensor, got {getattr(A, 'shape', A)!r}")
    if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[0] != A.shape[0]:
        raise ShapeError(f"b must be an (n, m) tensor with n = {A.shape[0]} (one column per "
                         f"sample), got {getattr(b, 'shape', b)!r}")


def fixed_point(A: Tensor, b: Tensor, activation: str | Activation = "relu", *,
                method: str = "anderson", tol: float = 1e-6, max_iter: int = 500,
                x0: Tensor | None = None, alpha: float | None = None, anderson_m: int = 5,
                beta: float | None = None, on_nonconvergence: str = "raise"
                ) -> tuple[Tensor, SolveInfo]:
    """Solve ``X = phi(A X + b)`` column by column.

    Args:
        A: ``(n, n)`` matrix (dense or torch sparse).
        b: ``(n, m)`` right-hand side, one column per sample (``B u + b`` in the model).
        activation: name or :class:`~idlkit.activations.Activation`.
        method: one of :data:`SOLVERS`.
        tol: stop when every column's l_inf residual is at most ``tol``.
        max_iter: iteration budget.
        x0: warm start, ``(n, m)`` (default zeros).
        alpha: averaging step for ``averaged`` and for Anderson's fallback step
            (default: 1 when ``||A||_inf < 1``, else :func:`default_alpha`).
        anderson_m: Anderson memory; ``beta``: Anderson mixing parameter (default
            ``alpha``: Anderson then accelerates the averaged map, which is a
            contraction under the mu_inf condition even when ``||A||_inf >= 1``).
        on_nonconvergence: ``"raise"`` (default), ``"warn"`` or ``"ignore"``.

    Returns:
        ``(X, info)`` with ``X`` of shape ``(n, m)`` (no autograd graph) and a :class:`SolveInfo`.

    Accuracy: the residual bounds the error, ``||x - x*||_inf <= r / (1 - L)`` for a map
    with l_inf contraction factor ``L`` (``L = kappa`` when ``||A||_inf <= kappa`` and
    ``phi`` is CONE). At ``kappa = 0.99`` a column stopped at ``tol = 1e-6`` may be
    ``1e-4`` from the fixed point, enough to flip a few ReLU units: choose ``tol`` for
    the accuracy you need, not only for the residual.
    """
    X, _, info = _solve_with_z(A, b, get_activation(activation), method=method, tol=tol,
                               max_iter=max_iter, x0=x0, alpha=alpha, anderson_m=anderson_m,
                               beta=beta, on_nonconvergence=on_nonconvergence)
    return X, info


def _solve_with_z(A: Tensor, b: Tensor, act: Activation, *, method: str, tol: float,
                  max_iter: int, x0: Tensor | None, alpha: float | None, anderson_m: int,
                  beta: float | None, on_nonconvergence: str) -> tuple[Tensor, Tensor, SolveInfo]:
    """Forward solve returning also the pre-activation ``Z = A X + b`` at the solution."""
    _check_settings(method, tol, max_iter, on_nonconvergence, alpha, anderson_m)
    _validate_system(A, b)
    with torch.no_grad():
        owner, A, b = A, A.detach(), b.detach()
        if not all_finite(b):
            raise NonFiniteError("the right-hand side b (B u + bias) contains NaN/Inf; check the "
                                 "input u and the parameters B, bias")
        if method == "triangular":
            return _triangular(A, b, act, tol, owner)
        if x0 is None:
            X = b.new_zeros(b.shape[1], b.shape[0])
        else:
            if x0.shape != b.shape:
                raise ShapeError(f"warm start x0 must have shape {tuple(b.shape)}, got "
                                 f"{tuple(x0.shape)}")
            X = x0.detach().to(b.dtype).t().contiguous()
        a = _alpha(A, alpha, method)
        F = _ForwardMap(A, b.t().contiguous(), act)
        return iterate_map(F, X, method, a, tol, max_iter, anderson_m, beta, on_nonconvergence,
                           zero_start=x0 is None)


def _alpha(A: Tensor, alpha: float | None, method: str) -> float:
    if alpha is not None:
        return float(alpha)
    if method == "picard":
        return 1.0
    dense = A.to_dense() if A.layout != torch.strided else A
    if method == "anderson" and float(dense.abs().sum(dim=1).max() if A.numel() else 0) < 1:
        return 1.0
    return default_alpha(dense)


def adjoint_fixed_point(A: Tensor, Z: Tensor, G: Tensor, activation: str | Activation = "relu",
                        *, method: str = "anderson", tol: float = 1e-6, max_iter: int = 500,
                        x0: Tensor | None = None, alpha: float | None = None,
                        anderson_m: int = 5, beta: float | None = None,
                        on_nonconvergence: str = "raise") -> tuple[Tensor, SolveInfo]:
    """Solve the adjoint equilibrium ``V = J(Z)^T (A^T V + G)`` (paper 000 eq. G.3-G.4).

    For componentwise maps ``J(Z)^T`` is the entrywise product with ``Psi =
    phi'(Z)``, giving eq. G.4, ``V = Psi o (A^T V + C^T L)``. ``V`` is the gradient
    of the loss with respect to the pre-activation; ``G`` is the gradient with
    respect to the state ``X``. It is linear in ``V``; the same solvers apply.
    """
    act = get_activation(activation)
    _check_settings(method, tol, max_iter, on_nonconvergence, alpha, anderson_m)
    _validate_system(A, G)
    if Z.shape != G.shape:
        raise ShapeError(f"Z and G must have the same shape, got {tuple(Z.shape)} and "
                         f"{tuple(G.shape)}")
    with torch.no_grad():
        owner, A = A, A.detach()
        if not all_finite(G):
            raise NonFiniteError("the incoming gradient contains NaN/Inf (check the loss)")
        if method == "triangular":
            V = _triangular_adjoint(A, Z, G, act, owner)
            B = V.shape[1]
            info = SolveInfo("triangular", 0, 0.0, True,
                             torch.zeros(B, dtype=torch.long, device=V.device),
                             V.new_zeros(B), tol)
            return V, info
        X = G.new_zeros(G.shape[1], G.shape[0]) if x0 is None else x0.detach().t().contiguous()
        a = _alpha(A, alpha, method)
        F = _AdjointMap(A, Z.t().contiguous(), G.t().contiguous(), act)
        V, _, info = iterate_map(F, X, method, a, tol, max_iter, anderson_m, beta,
                                 on_nonconvergence, zero_start=x0 is None)
        return V, info
