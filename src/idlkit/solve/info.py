"""What a fixed-point solve reports (:class:`SolveInfo`) and how it ends (stopping, errors).

Shared by every solver of the registry: the per-sample l_inf residual, the NaN/Inf
guard, and :func:`finish`, which turns the last residuals into a :class:`SolveInfo`
and raises :class:`~idlkit.errors.ConvergenceError` (or warns) when ``tol`` was missed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConvergenceError, NonFiniteError

__all__ = ["SolveInfo", "ConvergenceWarning", "ON_NONCONVERGENCE", "finish", "row_inf_norm",
           "finite_or_raise"]

ON_NONCONVERGENCE = ("raise", "warn", "ignore")


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
            reach ``tol`` (``iterations`` for a column that never did). Measured per
            sample only when ``per_sample`` is true; a lean solve (``per_sample=False``)
            iterates the batch as a whole and reports ``iterations`` for every sample.
        per_sample_residual: ``(m,)`` tensor of the final residual of each column.
        tol: the (absolute) tolerance the solve stopped on.
        fallbacks: Anderson steps rejected by the safeguard (column-steps).
        per_sample: whether ``per_sample_iterations`` was measured sample by sample.

    Examples:
        >>> A = 0.5 * torch.eye(2, dtype=torch.float64)
        >>> X, info = idlkit.fixed_point(A, torch.ones(2, 3, dtype=torch.float64), "relu", method="picard")
        >>> info.method, bool(info.converged), info.per_sample_iterations.shape, info.residual <= info.tol
        ('picard', True, torch.Size([3]), True)
    """

    method: str
    iterations: int
    residual: float
    converged: bool
    per_sample_iterations: Tensor
    per_sample_residual: Tensor
    tol: float
    fallbacks: int = 0
    per_sample: bool = True

    def __str__(self) -> str:
        psi = self.per_sample_iterations.double()
        spread = (f"per sample min/mean/max {int(psi.min())}/{psi.mean():.1f}/{int(psi.max())}"
                  if psi.numel() and self.per_sample else
                  "whole batch" if psi.numel() else "no samples")
        return (f"SolveInfo({self.method}: {self.iterations} iterations, residual "
                f"{self.residual:.3g} (tol {self.tol:g}), converged={self.converged}, {spread}"
                + (f", {self.fallbacks} safeguard fallbacks" if self.fallbacks else "") + ")")


def row_inf_norm(G: Tensor) -> Tensor:
    """``max_j |G_ij|`` per row of a batch-first ``(m, n)`` tensor (zeros when ``n = 0``).

    Args:
        G: ``(m, n)`` tensor.

    Returns:
        ``(m,)`` tensor.

    Examples:
        >>> row_inf_norm(torch.tensor([[1.0, -3.0], [0.5, 0.0]]))
        tensor([3.0000, 0.5000])
    """
    if G.shape[1] == 0:
        return G.new_zeros(G.shape[0])
    return G.abs().amax(dim=1)


def finite_or_raise(r: Tensor, method: str, it: int) -> None:
    """Raise :class:`NonFiniteError` when a residual is NaN/Inf (the iterate diverged).

    Args:
        r: residuals.
        method: the solver's name (for the message).
        it: the iteration reached (for the message).

    Raises:
        NonFiniteError: a NaN/Inf residual.

    Examples:
        >>> finite_or_raise(torch.tensor([0.1, 0.2]), "picard", 3)
        >>> finite_or_raise(torch.tensor([0.1, float("nan")]), "picard", 3)
        Traceback (most recent call last):
            ...
        idlkit.errors.NonFiniteError: picard: NaN/Inf appeared in the iterate at iteration 3 ...
    """
    if r.numel() and not bool(r.isfinite().all()):
        bad = int((~r.isfinite()).nonzero()[0]) if r.dim() else 0
        raise NonFiniteError(
            f"{method}: NaN/Inf appeared in the iterate at iteration {it} (first bad sample "
            f"{bad}); the input or the parameters contain NaN/Inf, or A is not well-posed and "
            f"the iteration diverged (check model.certificate())")


def finish(method: str, r: Tensor, it: int, iters: Tensor, tol: float, on_nonconvergence: str,
           fallbacks: int = 0, per_sample: bool = True, X: Tensor | None = None) -> SolveInfo:
    """The :class:`SolveInfo` of a solve that stopped after ``it`` updates with per-sample
    residuals ``r``; raises :class:`ConvergenceError` (or warns) when ``max r > tol``.

    ``X``: the returned iterate; when the solve failed with a residual within a few ulps of
    its largest entry, the message says that ``tol`` is below the rounding floor.

    Args:
        method: the solver's name.
        r: ``(m,)`` final residuals.
        it: updates done.
        iters: ``(m,)`` per-sample iteration counts.
        tol: the tolerance.
        on_nonconvergence: ``"raise"``, ``"warn"`` or ``"ignore"``.
        fallbacks: samples solved again by a fallback solver.
        per_sample: whether ``iters`` is per sample.
        X: the returned iterate, or ``None``.

    Returns:
        The :class:`SolveInfo`.

    Raises:
        ConvergenceError: ``max r > tol`` with ``on_nonconvergence="raise"``.

    Examples:
        >>> r = torch.tensor([1e-8, 1e-9]); iters = torch.tensor([5, 4])
        >>> info = finish("picard", r, 5, iters, 1e-6, "raise")
        >>> info.converged, info.iterations, info.per_sample_iterations.tolist()
        (True, 5, [5, 4])
    """
    resid = float(r.max()) if r.numel() else 0.0
    converged = resid <= tol
    info = SolveInfo(method, it, resid, converged, iters, r.detach(), tol, fallbacks, per_sample)
    if not converged and on_nonconvergence != "ignore":
        if not math.isfinite(resid):
            finite_or_raise(r, method, it)
        worst = int(r.argmax())
        msg = (f"{method} solver did not converge in {it} iterations: l_inf residual {resid:.3g} "
               f"> tol {tol:g} (worst sample {worst}). Fix: raise max_iter, loosen tol, use "
               f"solver='anderson', or restore well-posedness (model.certificate(), project_()).")
        if X is not None and X.numel() and X.is_floating_point():
            ulp = torch.finfo(X.dtype).eps * float(X.abs().max())
            if resid <= 16 * ulp:
                msg += (f" The residual is at the rounding floor of {X.dtype} (an ulp of the "
                        f"largest state entry is {ulp:.2g} > tol): loosen tol to ~{16 * ulp:.1g} "
                        f"or solve in float64.")
        if on_nonconvergence == "raise":
            raise ConvergenceError(msg, info)
        warnings.warn(msg, ConvergenceWarning, stacklevel=4)
    return info
