"""Public entry points of :mod:`idlkit.solve`: ``fixed_point``, ``adjoint_fixed_point``,
``iterate_map`` — validation at the edge, then the registry's solver does the work."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import all_finite
from ..activations import Activation, get_activation
from ..errors import NonFiniteError, ShapeError
from .info import SolveInfo
from .maps import FixedPointMap
from .registry import SolveOptions, get_solver
from .settings import check_solve_args
from .triangular import PlanCache

__all__ = ["fixed_point", "adjoint_fixed_point", "iterate_map", "solve_forward", "solve_adjoint"]


def _validate_system(A: Tensor, b: Tensor) -> None:
    if not isinstance(A, Tensor) or A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ShapeError(f"A must be a square (n, n) tensor, got {getattr(A, 'shape', A)!r}")
    if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[0] != A.shape[0]:
        raise ShapeError(f"b must be an (n, m) tensor with n = {A.shape[0]} (one column per "
                         f"sample), got {getattr(b, 'shape', b)!r}")


def solve_forward(A: Tensor, b: Tensor, act: Activation, method: str, opts: SolveOptions,
                  x0: Tensor | None = None, cache: PlanCache | None = None
                  ) -> tuple[Tensor, Tensor, SolveInfo]:
    """Forward solve for already validated settings: ``(X, Z = A X + b, info)``, column
    convention, no autograd graph (the hot path of :class:`~idlkit.function.ImplicitFunction`).

    Args:
        A: ``(n, n)`` state matrix (dense or sparse).
        b: ``(n, m)`` column-convention term ``B U^T + b`` (one column per sample).
        act: the activation ``phi``.
        method: solver name (``"picard"``, ``"averaged"``, ``"anderson"``, ``"triangular"``, ...).
        opts: validated :class:`~idlkit.solve.registry.SolveOptions`.
        x0: ``(n, m)`` warm start, or ``None``.
        cache: triangular plan cache reused across calls, or ``None``.

    Returns:
        ``(X, Z, info)``: ``(n, m)`` states, ``(n, m)`` pre-activations and a :class:`SolveInfo`.

    Raises:
        ShapeError: ``x0`` of the wrong shape.
        NonFiniteError: the iteration produced NaN/Inf.

    Examples:
        >>> from idlkit.solve.registry import SolveOptions
        >>> A = 0.5 * torch.eye(2, dtype=torch.float64); b = torch.ones(2, 3, dtype=torch.float64)
        >>> relu = idlkit.get_activation("relu")
        >>> X, Z, info = solve_forward(A, b, relu, "anderson", SolveOptions(tol=1e-10))
        >>> X.shape, torch.allclose(Z, A @ X + b)
        (torch.Size([2, 3]), True)
        >>> torch.allclose(X, torch.full((2, 3), 2.0, dtype=torch.float64))    # x = relu(x / 2 + 1)
        True
    """
    with torch.no_grad():
        A, b = A.detach(), b.detach()
        if not all_finite(b):
            raise NonFiniteError("the right-hand side b (B u + bias) contains NaN/Inf; check the "
                                 "input u and the parameters B, bias")
        if x0 is not None:
            if x0.shape != b.shape:
                raise ShapeError(f"warm start x0 must have shape {tuple(b.shape)}, got "
                                 f"{tuple(x0.shape)}")
            x0 = x0.detach().to(b.dtype)
        return get_solver(method).forward(A, b, act, x0, opts, cache)


def solve_adjoint(A: Tensor, Z: Tensor, G: Tensor, act: Activation, method: str,
                  opts: SolveOptions, x0: Tensor | None = None, cache: PlanCache | None = None
                  ) -> tuple[Tensor, SolveInfo]:
    """Adjoint solve for already validated settings (see :func:`adjoint_fixed_point`).

    Args:
        A: ``(n, n)`` state matrix (dense or sparse).
        Z: ``(n, m)`` pre-activations of the forward solve (``phi'`` is taken at them).
        G: ``(n, m)`` incoming gradient ``dL/dx``.
        act: the activation ``phi``.
        method: solver name.
        opts: validated :class:`~idlkit.solve.registry.SolveOptions`.
        x0: ``(n, m)`` warm start, or ``None``.
        cache: triangular plan cache reused across calls, or ``None``.

    Returns:
        ``(W, info)``: the ``(n, m)`` adjoint solution and a :class:`SolveInfo`.

    Raises:
        NonFiniteError: the iteration produced NaN/Inf.

    Examples:
        >>> from idlkit.solve.registry import SolveOptions
        >>> A = 0.5 * torch.eye(2, dtype=torch.float64)
        >>> Z, G = torch.ones(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
        >>> relu = idlkit.get_activation("relu")
        >>> V, info = solve_adjoint(A, Z, G, relu, "anderson", SolveOptions(tol=1e-10))
        >>> V.shape, torch.allclose(V, torch.full((2, 3), 2.0, dtype=torch.float64))   # (I - A^T)^-1 G
        (torch.Size([2, 3]), True)
    """
    with torch.no_grad():
        if not all_finite(G):
            raise NonFiniteError("the incoming gradient contains NaN/Inf (check the loss)")
        return get_solver(method).adjoint(A.detach(), Z, G, act,
                                          None if x0 is None else x0.detach(), opts, cache)


def fixed_point(A: Tensor, b: Tensor, activation: str | Activation = "relu", *,
                method: str = "anderson", tol: float = 1e-6, max_iter: int = 500,
                x0: Tensor | None = None, alpha: float | None = None, anderson_m: int = 5,
                beta: float | None = None, on_nonconvergence: str = "raise",
                per_sample: bool | None = None, check_every: int | None = None
                ) -> tuple[Tensor, SolveInfo]:
    """Solve ``X = phi(A X + b)`` column by column (paper 000 eq. 2.4).

    Args:
        A: ``(n, n)`` matrix (dense or torch sparse).
        b: ``(n, m)`` right-hand side, one column per sample (``B u + b`` in the model).
        activation: name or :class:`~idlkit.activations.Activation`.
        method: a name of :data:`idlkit.solve.SOLVERS`.
        tol: stop when every column's l_inf residual is at most ``tol``.
        max_iter: iteration budget.
        x0: warm start, ``(n, m)`` (default zeros).
        alpha: averaging step for ``averaged`` and for Anderson's fallback step
            (default: the solver's ``default_step``: 1 for picard; for anderson 1 when
            ``||A||_inf < 1``, else :func:`default_alpha`).
        anderson_m: Anderson memory.
        beta: Anderson mixing parameter (default ``alpha``: Anderson then accelerates the
            averaged map, which is a contraction under the mu_inf condition even when
            ``||A||_inf >= 1``).
        on_nonconvergence: ``"raise"`` (default), ``"warn"`` or ``"ignore"``.
        per_sample: each column's own depth in ``info.per_sample_iterations`` and retirement
            of converged columns (``True``); one block (``False``, the lean loop); ``None``:
            by problem size.
        check_every: residual reads every this many iterations in lean loops.

    Returns:
        ``(X, info)`` with ``X`` of shape ``(n, m)`` (no autograd graph) and a :class:`SolveInfo`.

    Accuracy: the residual bounds the error, ``||x - x*||_inf <= r / (1 - L)`` for a map
    with l_inf contraction factor ``L`` (``L = kappa`` when ``||A||_inf <= kappa`` and
    ``phi`` is CONE). At ``kappa = 0.99`` a column stopped at ``tol = 1e-6`` may be
    ``1e-4`` from the fixed point, enough to flip a few ReLU units: choose ``tol`` for
    the accuracy you need, not only for the residual.

    Examples:
        >>> A = 0.5 * torch.eye(2, dtype=torch.float64); b = torch.ones(2, 3, dtype=torch.float64)
        >>> X, info = fixed_point(A, b, "relu")
        >>> torch.allclose(X, torch.full((2, 3), 2.0, dtype=torch.float64))
        True
    """
    opts = _options(method, tol, max_iter, on_nonconvergence, alpha, anderson_m, beta,
                    per_sample, check_every)
    _validate_system(A, b)
    X, _, info = solve_forward(A, b, get_activation(activation), method, opts, x0)
    return X, info


def adjoint_fixed_point(A: Tensor, Z: Tensor, G: Tensor, activation: str | Activation = "relu",
                        *, method: str = "anderson", tol: float = 1e-6, max_iter: int = 500,
                        x0: Tensor | None = None, alpha: float | None = None,
                        anderson_m: int = 5, beta: float | None = None,
                        on_nonconvergence: str = "raise", per_sample: bool | None = None,
                        check_every: int | None = None) -> tuple[Tensor, SolveInfo]:
    """Solve the adjoint equilibrium ``V = J(Z)^T (A^T V + G)`` (paper 000 eq. G.3-G.4).

    For componentwise maps ``J(Z)^T`` is the entrywise product with ``Psi =
    phi'(Z)``, giving eq. G.4, ``V = Psi o (A^T V + C^T L)``. ``V`` is the gradient
    of the loss with respect to the pre-activation; ``G`` is the gradient with
    respect to the state ``X``. It is linear in ``V``; the same solvers apply, and
    ``tol`` is absolute here (the models apply their ``backward_stop`` rule first).

    Args:
        A: ``(n, n)`` matrix.
        Z: ``(n, m)`` pre-activations of the forward solution (column convention).
        G: ``(n, m)`` gradient of the loss with respect to the state ``X``.
        activation: name or :class:`~idlkit.activations.Activation`.
        method: a name of :data:`idlkit.solve.SOLVERS`.
        tol: absolute l_inf stopping rule.
        max_iter: iteration budget.
        x0: warm start ``(n, m)``.
        alpha: step of ``averaged`` and of Anderson's fallback.
        anderson_m: Anderson memory.
        beta: Anderson mixing.
        on_nonconvergence: ``"raise"``, ``"warn"`` or ``"ignore"``.
        per_sample: retire converged samples (``None``: by size).
        check_every: residual-read period (``None``: adaptive).

    Returns:
        ``(V, info)``: ``V`` ``(n, m)`` and the :class:`~idlkit.solve.SolveInfo`.

    Examples:
        >>> A = 0.5 * torch.eye(2, dtype=torch.float64)
        >>> Z = torch.ones(2, 3, dtype=torch.float64)          # pre-activations, ReLU active
        >>> G = torch.ones(2, 3, dtype=torch.float64)
        >>> V, info = adjoint_fixed_point(A, Z, G, "relu")
        >>> V.shape, bool(info.converged)
        (torch.Size([2, 3]), True)
        >>> torch.allclose(V, torch.linalg.solve(torch.eye(2, dtype=torch.float64) - A.T, G))
        True
    """
    act = get_activation(activation)
    opts = _options(method, tol, max_iter, on_nonconvergence, alpha, anderson_m, beta,
                    per_sample, check_every)
    _validate_system(A, G)
    if Z.shape != G.shape:
        raise ShapeError(f"Z and G must have the same shape, got {tuple(Z.shape)} and "
                         f"{tuple(G.shape)}")
    if x0 is not None and x0.shape != G.shape:
        raise ShapeError(f"warm start x0 must have shape {tuple(G.shape)}, got {tuple(x0.shape)}")
    return solve_adjoint(A, Z, G, act, method, opts, x0)


def iterate_map(F: FixedPointMap, X: Tensor, method: str, alpha: float, tol: float,
                max_iter: int, anderson_m: int = 5, beta: float | None = None,
                on_nonconvergence: str = "raise", zero_start: bool = False,
                per_sample: bool | None = None, check_every: int | None = None
                ) -> tuple[Tensor, Tensor, SolveInfo]:
    """Solve ``X = F(X)`` for any batch-first map (a :class:`FixedPointMap`: ``F(X) -> (F(X),
    aux)`` and ``F.restrict(rows)``) with an iterative solver of the registry.

    ``X``: ``(m, d)`` start; ``alpha``: the step. Returns ``(X, aux, info)`` in column
    convention ``(d, m)``. ``zero_start``: ``X`` is zero and ``F`` has ``at_zero()``, its
    value there without the matrix product.

    Args:
        F: the map (:class:`~idlkit.solve.maps.FixedPointMap`).
        X: ``(m, d)`` start.
        method: an iterative solver of the registry.
        alpha: the step.
        tol: stop when every sample's l_inf residual is at most ``tol``.
        max_iter: iteration budget.
        anderson_m: Anderson memory.
        beta: Anderson mixing (``None``: the step).
        on_nonconvergence: ``"raise"``, ``"warn"`` or ``"ignore"``.
        zero_start: ``X`` is zero and ``F`` has ``at_zero()``, its value there without the
            matrix product.
        per_sample: retire converged samples (``None``: by size).
        check_every: residual-read period of the lean loops (``None``: adaptive).

    Returns:
        ``(X, aux, info)``, ``X`` and ``aux`` in column convention ``(d, m)``.

    Examples:
        >>> from idlkit.solve.maps import ForwardMap
        >>> A = 0.5 * torch.eye(2, dtype=torch.float64); b = torch.ones(2, 3, dtype=torch.float64)
        >>> F = ForwardMap(A, b.T.contiguous(), idlkit.get_activation("relu"))
        >>> X, Z, info = iterate_map(F, torch.zeros(3, 2, dtype=torch.float64), "picard", 1.0, 1e-10, 200)
        >>> X.shape, bool(info.converged)  # column convention (n, m)
        (torch.Size([2, 3]), True)
        >>> torch.allclose(X, torch.full((2, 3), 2.0, dtype=torch.float64))
        True
    """
    solver = get_solver(method, iterative=True)
    opts = SolveOptions(tol, max_iter, alpha, anderson_m, beta, on_nonconvergence, per_sample,
                        check_every)
    first = F.at_zero() if zero_start else None  # type: ignore[attr-defined]
    return solver.iterate(F, X, alpha, opts, first)


def _options(method: str, tol: float, max_iter: int, on_nonconvergence: str,
             alpha: float | None, anderson_m: int, beta: float | None,
             per_sample: bool | None, check_every: int | None) -> SolveOptions:
    check_solve_args(method, tol, max_iter, on_nonconvergence, alpha, anderson_m, beta,
                      per_sample, check_every)
    return SolveOptions(float(tol), int(max_iter), None if alpha is None else float(alpha),
                        int(anderson_m), beta, on_nonconvergence, per_sample, check_every)
