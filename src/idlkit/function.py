"""Equilibrium layer with implicit differentiation (paper 000 §6, App. G).

:class:`ImplicitFunction` computes ``X = phi(A X + b)`` by a fixed-point solver
and, in backward, the gradients by implicit differentiation without unrolling:
with ``G = dL/dX``, the adjoint state ``V = dL/db`` solves

    V = J(Z)^T (A^T V + G),    Z = A X + b,         (eq. G.3; G.4 when phi acts entrywise)

and ``dL/dA = V X^T``, ``dL/db = V`` (eq. G.2 and the "summary" of App. G, with
``G = C^T dL/dy`` when the loss sees ``X`` only through ``y = C X + D u``). The
gradients of ``B``, the bias and the input ``u`` then follow by the chain rule
through ``b = B u + bias``, done by torch autograd. The adjoint solve stops on the
model's ``backward_stop`` rule (:mod:`idlkit.solve.settings`): by default when its
l_inf residual is below ``backward_tol * ||G||_inf`` (relative to the incoming
gradient, whose scale depends on the loss), or at ``backward_tol`` itself
(``"absolute"``). Only ``A, X, Z`` are kept for backward: memory is
O(n^2 + n m), independent of the number of iterations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .activations import Activation
from .solve import SolveInfo, SolverSettings
from .solve.api import solve_adjoint, solve_forward
from .solve.triangular import PlanCache

__all__ = ["SolverSettings", "SolveRecord", "ImplicitFunction", "equilibrium"]


@dataclass
class SolveRecord:
    """Where one call records its forward and (later) backward :class:`SolveInfo`.

    Attributes:
        forward: the forward solve's :class:`SolveInfo`, or ``None`` before it ran.
        backward: the backward (adjoint) solve's :class:`SolveInfo`, or ``None``.

    Examples:
        >>> A = 0.5 * torch.eye(2, dtype=torch.float64)
        >>> X, record = equilibrium(A, torch.ones(2, 1, dtype=torch.float64), idlkit.get_activation("relu"))
        >>> isinstance(record, SolveRecord), record.forward.iterations >= 1, record.backward
        (True, True, None)
    """

    forward: SolveInfo | None = None
    backward: SolveInfo | None = field(default=None)


class ImplicitFunction(torch.autograd.Function):
    """``X = phi(A X + b)`` with the implicit backward of App. G.

    Examples:
        >>> A = 0.5 * torch.eye(2, dtype=torch.float64)
        >>> b = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
        >>> X, record = equilibrium(A, b, idlkit.get_activation("relu"))  # applies ImplicitFunction
        >>> X.grad_fn.name()
        'ImplicitFunctionBackward'
        >>> torch.allclose(X, torch.full((2, 3), 2.0, dtype=torch.float64))
        True
    """

    @staticmethod
    def forward(ctx, A: Tensor, b: Tensor, act: Activation, settings: SolverSettings,  # type: ignore[override]
                x0: Tensor | None, record: SolveRecord, cache: PlanCache | None = None) -> Tensor:
        """The forward solve (no autograd graph); its :class:`SolveInfo` goes to ``record``.

        Args:
            A: ``(n, n)`` state matrix (dense or sparse).
            b: ``(n, m)`` term ``B U^T + b``.
            act: the activation ``phi``.
            settings: the solver settings.
            x0: ``(n, m)`` warm start, or ``None``.
            record: the :class:`SolveRecord` receiving the forward and backward reports.
            cache: triangular plan cache, or ``None``.

        Returns:
            ``(n, m)`` states ``X``.
        """
        X, Z, info = solve_forward(A, b, act, settings.method, settings.forward_options, x0, cache)
        record.forward = info
        ctx.act, ctx.settings, ctx.record, ctx.cache = act, settings, record, cache
        ctx.save_for_backward(A, X, Z)
        return X

    @staticmethod
    @once_differentiable
    def backward(ctx, gX: Tensor):  # type: ignore[override]
        """The implicit backward (App. G): one adjoint solve, then ``dA = V X^T``, ``db = V``.

        Args:
            gX: ``(n, m)`` incoming gradient ``dL/dX``.

        Returns:
            ``(dA, db, None, None, None, None, None)``.
        """
        A, X, Z = ctx.saved_tensors
        # (no .contiguous(): the solvers work on gX.t(), which is contiguous when gX is
        # the column view of a batch-first gradient, as the model produces)
        s: SolverSettings = ctx.settings
        V, info = solve_adjoint(A, Z, gX, ctx.act, s.adjoint_method, s.adjoint_options(gX), None,
                                ctx.cache)
        ctx.record.backward = info
        gA = V @ X.t() if ctx.needs_input_grad[0] else None
        gb = V if ctx.needs_input_grad[1] else None
        return gA, gb, None, None, None, None, None


def equilibrium(A: Tensor, b: Tensor, activation: Activation,
                settings: SolverSettings | None = None, x0: Tensor | None = None,
                cache: PlanCache | None = None) -> tuple[Tensor, SolveRecord]:
    """Differentiable ``X = phi(A X + b)`` (column convention); returns ``(X, record)``.

    ``cache``: the caller's triangular :class:`~idlkit.solve.triangular.PlanCache` (a model
    passes its own; without one the ``triangular`` solver plans afresh each call).

    Args:
        A: ``(n, n)`` state matrix (dense or sparse).
        b: ``(n, m)`` term ``B U^T + b`` (one column per sample).
        activation: the activation ``phi``.
        settings: solver settings; ``None``: the defaults.
        x0: ``(n, m)`` warm start, or ``None``.
        cache: the caller's triangular plan cache, or ``None``.

    Returns:
        ``(X, record)``: the ``(n, m)`` states (differentiable) and the :class:`SolveRecord`.

    Raises:
        ConvergenceError: the solver did not converge (with ``on_nonconvergence="raise"``).
        NonFiniteError: the iteration produced NaN/Inf.

    Examples:
        >>> A = (0.5 * torch.eye(2, dtype=torch.float64)).requires_grad_()
        >>> b = torch.ones(2, 3, dtype=torch.float64)
        >>> X, record = equilibrium(A, b, idlkit.get_activation("relu"))
        >>> X.shape, bool(record.forward.converged)
        (torch.Size([2, 3]), True)
        >>> X.sum().backward()
        >>> A.grad.shape, record.backward is not None
        (torch.Size([2, 2]), True)
        >>> A2 = A.detach().clone().requires_grad_()  # ReLU is active: X = (I - A)^{-1} b
        >>> torch.linalg.solve(torch.eye(2, dtype=torch.float64) - A2, b).sum().backward()
        >>> torch.allclose(A.grad, A2.grad)
        True
    """
    record = SolveRecord()
    X = ImplicitFunction.apply(A, b, activation, settings or SolverSettings(), x0, record, cache)
    return X, record
