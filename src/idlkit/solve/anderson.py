"""Type-II Anderson acceleration with safeguards, per sample (Walker & Ni 2011).

Accelerates the Picard / averaged map of any :class:`~idlkit.solve.maps.FixedPointMap`
(forward equilibrium, adjoint, low-rank latent map). See :func:`anderson`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .info import SolveInfo, finite_or_raise, row_inf_norm
from .maps import FixedPointMap
from .tracked import Output

__all__ = ["anderson", "History", "plain_rate"]

_REJECT_FACTOR = 100.0
# residual reduction per Anderson step, relative, where plain steps are about to lose: in MNIST
# training (n = 100, batch 100, kappa 0.95) Anderson cut a solve from 20.5 to 14.8 iterations at
# ~2.5x the cost per step, a net loss; 0.2 (the rate on a random kappa = 0.5 problem) switched
# too early there (7.0 vs 5.1 ms per training step, measured in one process, alternating)
_ANDERSON_RATE = 0.5
_OP_WORK = 2e5  # fixed cost of one small tensor operation, in flops (~4 us at ~50 GFlop/s)
_FLOOR_ULPS = 1024


class History:
    """Anderson's memory for a batch ``(m_batch, n)``: iterates ``x_i + beta G_i`` and
    residuals ``G_i`` batch-first ``(m_batch, memory, n)``, their Gram matrices, and the
    bordered system ``[[0, 1^T], [1, H]]``.

    Batch-first, the mixing ``sum_i a_i y_i`` is one batched product (``bmm`` of
    ``(B, 1, m)`` by ``(B, m, n)``, ~2x faster than the elementwise product and reduction it
    replaced at n = 300, batch 256); the Gram row stays an elementwise product and a sum
    (the batched matrix-vector product is 4x slower there).

    The system always has the full memory size: a slot not yet filled has a zero border
    entry and a zero Gram row and column, so its equation reads ``1e-10 a_j = 0`` and its
    weight is exactly 0. No view depends on the number of filled slots, so the views an
    iteration touches are made once (at small ``n`` making them cost a third of an
    iteration).

    Args:
        X: ``(m_batch, n)`` first iterate (sets the batch, size, dtype and device).
        m: the memory size.

    Examples:
        >>> h = History(torch.zeros(4, 3), m=5)        # a batch of 4 samples with n = 3, memory 5
        >>> type(h).__name__
        'History'
    """

    def __init__(self, X: Tensor, m: int) -> None:
        B, n = X.shape
        f64 = dict(dtype=torch.float64, device=X.device)
        self.m = m
        self.Yh = X.new_zeros(B, m, n)
        self.Gh = X.new_zeros(B, m, n)
        self.H = torch.zeros(B, m, m, **f64)
        self.system = torch.zeros(B, m + 1, m + 1, **f64)
        self.rhs = torch.zeros(B, m + 1, 1, **f64)
        self.rhs[:, 0] = 1.0
        self._views()

    def _views(self) -> None:
        H, system = self.H, self.system
        self.buf = torch.empty_like(self.Gh)  # workspace of the Gram update
        self.G_slot, self.Y_slot = list(self.Gh.unbind(1)), list(self.Yh.unbind(1))
        self.H_row, self.H_col = list(H.unbind(1)), list(H.unbind(2))
        self.border_row = list(system[:, 0, 1:].unbind(1))
        self.border_col = list(system[:, 1:, 0].unbind(1))
        self.H_diag = H.diagonal(dim1=1, dim2=2)
        self.inner = system[:, 1:, 1:]
        self.inner_diag = self.inner.diagonal(dim1=1, dim2=2)

    def select(self, sel: Tensor) -> History:
        """The same memory for the samples ``sel`` only (in place of a new allocation).

        Args:
            sel: indices of the samples kept.

        Returns:
            This :class:`History`, restricted.
        """
        self.Yh, self.Gh, self.H = self.Yh[sel], self.Gh[sel], self.H[sel]
        self.system, self.rhs = self.system[sel], self.rhs[sel]
        self._views()
        return self

    def store(self, X: Tensor, G: Tensor, beta: float, slot: int, new: bool) -> None:
        """Put ``(x + beta G, G)`` in ``slot`` and update the Gram matrix (``new``: the slot
        was empty, so its border entries are switched on).

        Args:
            X: ``(m_batch, n)`` iterates.
            G: ``(m_batch, n)`` residuals ``F(x) - x``.
            beta: Anderson mixing parameter.
            slot: the memory slot written.
            new: the slot was empty before.
        """
        torch.add(X, G, alpha=beta, out=self.Y_slot[slot])
        self.G_slot[slot].copy_(G)
        # (an elementwise product and a sum: a batched matrix-vector bmm is 4x slower here)
        row = torch.mul(self.Gh, G.unsqueeze(1), out=self.buf).sum(dim=2)  # (B, m)
        self.H_row[slot].copy_(row)
        self.H_col[slot].copy_(row)
        if new:
            self.border_row[slot].fill_(1.0)
            self.border_col[slot].fill_(1.0)

    def restart(self, idx: Tensor, X: Tensor, G: Tensor, beta: float) -> None:
        """Samples ``idx`` forget their history: every slot holds ``(x + beta G, G)``.

        Args:
            idx: indices of the samples restarted.
            X: ``(len(idx), n)`` their iterates.
            G: ``(len(idx), n)`` their residuals.
            beta: Anderson mixing parameter.
        """
        self.Yh[idx] = (X + beta * G).unsqueeze(1)
        self.Gh[idx] = G.unsqueeze(1)
        g2 = (G.to(torch.float64) ** 2).sum(dim=1)
        self.H[idx] = g2[:, None, None].expand(-1, self.m, self.m)
        self.system[idx, 0, 1:] = 1.0
        self.system[idx, 1:, 0] = 1.0

    def restart_where(self, mask: Tensor, X: Tensor, G: Tensor, beta: float) -> None:
        """:meth:`restart` for the samples where ``mask`` holds, by masks only (no host read:
        the sync-free solver of :mod:`idlkit.solve.lean` uses it on accelerators).

        Args:
            mask: ``(m_batch,)`` bool, the samples restarted.
            X: ``(m_batch, n)`` iterates.
            G: ``(m_batch, n)`` residuals.
            beta: Anderson mixing parameter.
        """
        mk = mask[:, None, None]
        self.Yh.copy_(torch.where(mk, (X + beta * G).unsqueeze(1), self.Yh))
        self.Gh.copy_(torch.where(mk, G.unsqueeze(1), self.Gh))
        g2 = (G.to(torch.float64) ** 2).sum(dim=1)[:, None, None].expand(-1, self.m, self.m)
        self.H.copy_(torch.where(mk, g2, self.H))
        on = mask[:, None].to(self.system.dtype)
        self.system[:, 0, 1:].copy_(torch.maximum(self.system[:, 0, 1:], on))
        self.system[:, 1:, 0].copy_(torch.maximum(self.system[:, 1:, 0], on))

    def step(self) -> Tensor:
        """``sum_i a_i (x_i + beta G_i)`` with ``a`` solving the bordered normal equations of
        ``min ||sum_i a_i G_i|| : sum_i a_i = 1`` over the filled slots, in float64, scaled by
        the largest ``|G_i|^2`` and Tikhonov-regularised (1e-10). A singular system gives
        NaN/Inf weights: the caller's safeguard then rejects the step."""
        scale = self.H_diag.amax(dim=1).clamp_(min=1e-300)
        torch.div(self.H, scale.view(-1, 1, 1), out=self.inner)
        self.inner_diag.add_(1e-10)
        sol = torch.linalg.solve_ex(self.system, self.rhs)[0]
        a = sol.narrow(1, 1, self.m).transpose(1, 2).to(self.Yh.dtype)  # (B, 1, m)
        return torch.bmm(a, self.Yh).squeeze(1)


def plain_rate(batch: int, n: int, m: int, lean: bool = False) -> float:
    """Contraction per plain step below which plain steps beat Anderson (see :func:`anderson`).

    Cost model in flops: a plain step is one GEMM ``2 B n^2`` plus ~8 small operations of
    fixed cost ``_OP_WORK`` (~2 in the lean loop, which reads the residual rarely, see
    :mod:`idlkit.solve.lean`) and ``4 B n`` of entrywise work; an Anderson step adds ~22
    small operations and ``16 m B n`` of history work (Gram row, mixing, stores).

    Args:
        batch: number of samples.
        n: size of each sample's unknown.
        m: Anderson memory.
        lean: the cost of the lean loop (rare residual reads).

    Returns:
        The rate, a float in ``(0, 1)``.

    Examples:
        >>> r = plain_rate(batch=256, n=300, m=5)
        >>> 0.0 < r < 1.0, plain_rate(256, 300, 5, lean=True) >= r   # cheaper lean steps pay at slower rates
        (True, True)
    """
    gemm = 2.0 * batch * n * n
    plain = gemm + (2 if lean else 8) * _OP_WORK + 4.0 * batch * n
    anderson = gemm + 30 * _OP_WORK + 16.0 * m * batch * n
    return _ANDERSON_RATE ** (plain / anderson)


def anderson(F: FixedPointMap, X: Tensor, alpha: float, tol: float, max_iter: int,
             m: int, beta: float, on_nonconvergence: str,
             first: tuple[Tensor, Tensor] | None = None, *, start: int = 0,
             plain_phase: bool = True, per_sample: bool = True
             ) -> tuple[Tensor, Tensor, SolveInfo]:
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
    than :func:`plain_rate` (about 0.76 for ``n = 100``, 0.52 for ``n = 1000``): where an
    Anderson step costs ``c`` plain steps and cuts the residual by ``_ANDERSON_RATE``, a
    plain step is the better buy while it contracts faster than ``_ANDERSON_RATE^(1/c)``.
    An easy problem is then solved at the cost of plain steps, several times cheaper than
    Anderson steps at small ``n``; a hard one loses at most a few plain steps.

    Every iteration costs two small GEMMs against the history besides ``F``, and a
    fixed number of tensor operations (about 25), which matters for small ``n``.

    ``start``, ``plain_phase=False``: the lean solver (:func:`idlkit.solve.lean.anderson_lean`)
    hands over after ``start`` plain steps of its own, at the point where they slowed down;
    ``per_sample=False`` then marks the per-sample iterations as not measured from 0.

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
        start: plain steps already done by the lean solver before the hand-over.
        plain_phase: begin with plain steps while they contract fast enough (:func:`plain_rate`).
        per_sample: whether the per-sample iteration counts are measured from 0 (``False``
            after a hand-over from the lean solver).

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
        >>> X, Z, info = anderson(F, X0, 1.0, 1e-10, 100, 5, 1.0, "raise")
        >>> X.shape, bool(info.converged), torch.allclose(X, torch.full((3, 4), 2.0, dtype=torch.float64))
        (torch.Size([3, 4]), True, True)
    """
    B, n = X.shape
    dev, dt = X.device, X.dtype
    eps = torch.finfo(dt).eps
    out = Output(X)
    rows = torch.arange(B, device=dev)
    polish = torch.zeros(B, dtype=torch.bool, device=dev)
    any_polish = False
    FX, Z = F(X) if first is None else first
    G = FX - X
    r = row_inf_norm(G)
    r_best = r.clone()
    r_window = r.clone()  # best residual at the start of the current stall window
    count, it, fallbacks = 0, start, 0
    out.t0 = start
    window = 2 * m

    live = torch.ones(B, dtype=torch.bool, device=dev)
    plain = plain_phase  # the plain-step phase (see the docstring)
    hist: History | None = None if plain else History(X, m)
    hi_prev = math.inf
    rate = plain_rate(B, n, m)
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
        if plain and out.hi > rate * hi_prev:  # plain steps have become the slower way
            plain = False
            r_best, r_window = r.clone(), r.clone()
            hist = History(X, m)
        if plain:
            hi_prev = out.hi
            Xn = FX if alpha == 1.0 else torch.lerp(X, FX, alpha)
            FX, Zn = F(Xn)
            G = FX - Xn
            X, Z, r = Xn, Zn, row_inf_norm(G)
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
        rn = row_inf_norm(Gn)
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
            rn[idx] = row_inf_norm(Gn[idx])
            finite_or_raise(rn[idx], "anderson", it)
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
    return out.result("anderson", it, tol, on_nonconvergence, fallbacks, per_sample)
