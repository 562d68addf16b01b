"""Equilibrium layer with implicit differentiation (paper 000 §6, App. G).

:class:`ImplicitFunction` computes ``X = phi(A X + b)`` by a fixed-point solver
and, in backward, the gradients by implicit differentiation without unrolling:
with ``G = dL/dX``, the adjoint state ``V = dL/db`` solves

    V = J(Z)^T (A^T V + G),    Z = A X + b,         (eq. G.3; G.4 when phi acts entrywise)

and ``dL/dA = V X^T``, ``dL/db = V`` (eq. G.2 and the "summary" of App. G, with
``G = C^T dL/dy`` when the loss sees ``X`` only through ``y = C X + D u``). The
gradients of ``B``, the bias and the input ``u`` then follow by the chain rule
through ``b = B u + bias``, done by torch autograd. The adjoint solve stops when
its l_inf residual is below ``backward_tol * ||G||_inf`` (relative to the incoming
gradient, whose scale depends on the loss). Only ``A, X, Z`` are kept
for backward: memory is O(n^2 + n m), independent of the number of iterations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .activations import Activation
from .solve import SolveInfo, _check_settings, _solve_with_z, adjoint_fixed_point

__all__ = ["SolverSettings", "SolveRecord", "ImplicitFunction", "equilibrium"]


@dataclass(frozen=True)
class SolverSettings:
    """Forward and backward solver settings (see :func:`idlkit.solve.fixed_point`)."""

    method: str = "anderson"
    tol: float = 1e-6
    max_iter: int = 500
    alpha: float | None = None
    anderson_m: int = 5
    beta: float | None = None
    on_nonconvergence: str = "raise"
    backward_method: str | None = None
    backward_tol: float | None = None
    backward_max_iter: int | None = None

    @property
    def adjoint_method(self) -> str:
        if self.backward_method is not None:
            return self.backward_method
        return "triangular" if self.method == "triangular" else "anderson"

    def validate(self) -> SolverSettings:
        """Raise :class:`~idlkit.errors.ConfigurationError` for an invalid forward or
        backward setting (unknown solver, tol <= 0, max_iter < 1, ...); returns ``self``."""
        _check_settings(**{k: v for k, v in self.forward_kwargs().items() if k != "beta"})
        _check_settings(**{k: v for k, v in self.backward_kwargs().items() if k != "beta"})
        return self

    def config(self) -> dict:
        """The constructor's solver arguments, JSON-serialisable (for :mod:`idlkit.io`)."""
        return {"solver": self.method, "tol": self.tol, "max_iter": self.max_iter,
                "backward_solver": self.backward_method, "backward_tol": self.backward_tol,
                "backward_max_iter": self.backward_max_iter, "alpha": self.alpha,
                "anderson_m": self.anderson_m, "on_nonconvergence": self.on_nonconvergence}

    def forward_kwargs(self) -> dict:
        return dict(method=self.method, tol=self.tol, max_iter=self.max_iter, alpha=self.alpha,
                    anderson_m=self.anderson_m, beta=self.beta,
                    on_nonconvergence=self.on_nonconvergence)

    def backward_kwargs(self) -> dict:
        return dict(method=self.adjoint_method,
                    tol=self.tol if self.backward_tol is None else self.backward_tol,
                    max_iter=self.max_iter if self.backward_max_iter is None
                    else self.backward_max_iter,
                    alpha=self.alpha, anderson_m=self.anderson_m, beta=self.beta,
                    on_nonconvergence=self.on_nonconvergence)


@dataclass
class SolveRecord:
    """Where one call records its forward and (later) backward :class:`SolveInfo`."""

    forward: SolveInfo | None = None
    backward: SolveInfo | None = field(default=None)


class ImplicitFunction(torch.autograd.Function):
    """``X = phi(A X + b)`` with the implicit backward of App. G."""

    @staticmethod
    def forward(ctx, A: Tensor, b: Tensor, act: Activation, settings: SolverSettings,  # type: ignore[override]
                x0: Tensor | None, record: SolveRecord) -> Tensor:
        X, Z, info = _solve_with_z(A, b, act, x0=x0, **settings.forward_kwargs())
        record.forward = info
        ctx.act, ctx.settings, ctx.record = act, settings, record
        ctx.save_for_backward(A, X, Z)
        return X

    @staticmethod
    @once_differentiable
    def backward(ctx, gX: Tensor):  # type: ignore[override]
        A, X, Z = ctx.saved_tensors
        # (no .contiguous(): the solvers work on gX.t(), which is contiguous when gX is
        # the column view of a batch-first gradient, as the model produces)
        kwargs = ctx.settings.backward_kwargs()
        # the adjoint tolerance is relative to the size of the incoming gradient, which
        # scales with the loss (e.g. 1/batch for a mean): tol * ||dL/dX||_inf
        scale = float(gX.abs().max()) if gX.numel() else 0.0
        kwargs["tol"] = kwargs["tol"] * scale if scale > 0 else kwargs["tol"]
        V, info = adjoint_fixed_point(A, Z, gX, ctx.act, **kwargs)
        ctx.record.backward = info
        gA = V @ X.t() if ctx.needs_input_grad[0] else None
        gb = V if ctx.needs_input_grad[1] else None
        return gA, gb, None, None, None, None


def equilibrium(A: Tensor, b: Tensor, activation: Activation,
                settings: SolverSettings | None = None, x0: Tensor | None = None
                ) -> tuple[Tensor, SolveRecord]:
    """Differentiable ``X = phi(A X + b)`` (column convention); returns ``(X, record)``."""
    record = SolveRecord()
    X = ImplicitFunction.apply(A, b, activation, settings or SolverSettings(), x0, record)
    return X, record
