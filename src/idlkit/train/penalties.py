"""Penalties of the training problem (paper 000 §4.3, §5, §6; paper 004), differentiable.

Every function takes model matrices (torch tensors, any dtype) and returns a scalar
tensor with autograd. ``||.||_inf`` is the max-row-sum norm throughout.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from ..errors import ConfigurationError, InputError, ShapeError, WellPosednessError

_F = TypeVar("_F", bound=Callable[..., Tensor])


def _matrices(fn: _F) -> _F:
    """Check that the matrix arguments of a penalty are floating tensors (a typed error naming
    the argument instead of an AttributeError deep in torch); the rest is passed through."""
    params = inspect.signature(fn).parameters.values()
    names = [p.name for p in params if p.annotation in ("Tensor", Tensor)]

    @functools.wraps(fn)
    def checked(*args: object, **kwargs: object) -> Tensor:
        for name, value in zip(names, args, strict=False):
            if not isinstance(value, Tensor) or not value.is_floating_point():
                got = (f"a tensor of dtype {value.dtype}" if isinstance(value, Tensor)
                       else type(value).__name__)
                raise InputError(f"{fn.__name__}: {name} must be a floating torch.Tensor (a model matrix "
                                 f"such as model.A), got {got}")
        return fn(*args, **kwargs)

    return checked  # type: ignore[return-value]

__all__ = [
    "l1",
    "group_columns",
    "feature_selection",
    "inf_norm_torch",
    "mu_inf_torch",
    "lipschitz_bound",
    "lipschitz_penalty",
    "sensitivity_matrix",
    "sensitivity_penalty",
    "mu_lipschitz_bound",
    "nuclear",
    "PENALTIES",
]


@_matrices
def inf_norm_torch(M: Tensor) -> Tensor:
    """``||M||_inf = max_i sum_j |M_ij|`` with autograd (0 for an empty matrix).

    Args:
        M: a matrix.

    Returns:
        Scalar tensor, differentiable.

    Examples:
        >>> M = torch.tensor([[0.5, -0.25], [0.1, 0.2]], requires_grad=True)
        >>> v = inf_norm_torch(M)
        >>> v.backward()
        >>> v.item(), M.grad                        # the gradient is sign(M) on the largest row
        (0.75, tensor([[ 1., -1.],
                [ 0.,  0.]]))
    """
    if M.numel() == 0:
        return M.new_zeros(())
    return M.abs().sum(dim=1).amax()


@_matrices
def mu_inf_torch(A: Tensor) -> Tensor:
    """``mu_inf(A) = max_i (A_ii + sum_{j != i} |A_ij|)`` (paper 004) with autograd.

    Args:
        A: ``(n, n)`` matrix.

    Returns:
        Scalar tensor, differentiable.

    Raises:
        ShapeError: ``A`` is not square.

    Examples:
        >>> A = torch.tensor([[-1.0, 0.5], [0.25, 0.5]])
        >>> mu_inf_torch(A).item(), idlkit.wellposed.mu_inf(A)
        (0.75, 0.75)
    """
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ShapeError(f"A must be square, got {tuple(A.shape)}")
    d = torch.diagonal(A)
    return (d + A.abs().sum(dim=1) - d.abs()).amax()


@_matrices
def l1(M: Tensor) -> Tensor:
    """Elementwise sparsity penalty ``sum_ij |M_ij|`` (paper 000 §5, §6).

    Args:
        M: a matrix (any shape).

    Returns:
        Scalar tensor, differentiable.

    Examples:
        >>> l1(torch.tensor([[1.0, -2.0], [0.0, 0.5]]))
        tensor(3.5000)
    """
    return M.abs().sum()


@_matrices
def group_columns(N: Tensor, alpha: float = 2.0) -> Tensor:
    """Column-sparsity penalty ``sum_j ||N e_j||_alpha`` (paper 000 §5, alpha > 1).

    Row sparsity is ``group_columns(N.T)``.

    Args:
        N: ``(k, p)`` matrix.
        alpha: the column norm, ``> 1`` (``2``: group lasso).

    Returns:
        Scalar tensor, differentiable.

    Raises:
        ConfigurationError: ``alpha <= 1``.

    Examples:
        >>> group_columns(torch.tensor([[3.0, 1.0], [4.0, 0.0]]))     # 5 + 1
        tensor(6.)
    """
    a = float(alpha)
    if not (a > 1 or math.isinf(a)):
        raise ConfigurationError(f"alpha must be > 1 (or inf), got {alpha!r}")
    return torch.linalg.vector_norm(N, ord=a, dim=0).sum()


@_matrices
def feature_selection(B: Tensor, D: Tensor, alpha: float = 2.0) -> Tensor:
    """``P(B, D) = sum_j ||(B; D) e_j||_alpha`` (eq. 5.1): a zero column ``j`` removes input ``j``.

    Args:
        B: ``(n, p)`` input matrix.
        D: ``(q, p)`` feed-through matrix.
        alpha: the column norm, ``> 1``.

    Returns:
        Scalar tensor, differentiable.

    Raises:
        ShapeError: ``B`` and ``D`` with different numbers of columns.

    Examples:
        >>> B = torch.tensor([[3.0, 0.0], [0.0, 0.0]]); D = torch.tensor([[4.0, 0.0]])
        >>> feature_selection(B, D)                 # ||(3, 0, 4)||_2 + ||(0, 0, 0)||_2
        tensor(5.)
    """
    if B.shape[1] != D.shape[1]:
        raise ShapeError(f"B and D must have the same number of columns (inputs), got "
                         f"{B.shape[1]} and {D.shape[1]}")
    return group_columns(torch.cat([B, D], dim=0), alpha)


def _contraction_margin(A: Tensor, what: str) -> Tensor:
    a = inf_norm_torch(A)
    if float(a.detach()) >= 1:
        raise WellPosednessError(f"{what} needs ||A||_inf < 1, got {float(a):.6g}; project A "
                                 f"first (model.project_()) or rescale it (idlkit.wellposed.rescale)")
    return 1 - a


@_matrices
def lipschitz_bound(A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """``kappa = ||B|| ||C|| / (1 - ||A||) + ||D||`` (eq. 4.8): l_inf -> l_inf Lipschitz
    constant of ``u -> y`` for a CONE activation and ``||A||_inf < 1``.

    Args:
        A: ``(n, n)`` state matrix with ``||A||_inf < 1``.
        B: ``(n, p)`` input matrix.
        C: ``(q, n)`` output matrix.
        D: ``(q, p)`` feed-through matrix.

    Returns:
        Scalar tensor, differentiable.

    Raises:
        WellPosednessError: ``||A||_inf >= 1``.

    Examples:
        >>> A, B = 0.5 * torch.eye(2), torch.ones(2, 3)
        >>> C, D = torch.ones(1, 2), torch.zeros(1, 3)
        >>> lipschitz_bound(A, B, C, D)             # 3 * 2 / (1 - 0.5) + 0
        tensor(12.)
    """
    return inf_norm_torch(B) * inf_norm_torch(C) / _contraction_margin(A, "eq. 4.8") + inf_norm_torch(D)


@_matrices
def lipschitz_penalty(A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """``P = 1/2 (||B||^2 + ||C||^2) / (1 - ||A||) + ||D||`` (eq. 4.9), a convex upper bound
    of :func:`lipschitz_bound` (AM-GM: ``||B|| ||C|| <= (||B||^2 + ||C||^2) / 2``).

    Args:
        A: ``(n, n)`` state matrix with ``||A||_inf < 1``.
        B: ``(n, p)`` input matrix.
        C: ``(q, n)`` output matrix.
        D: ``(q, p)`` feed-through matrix.

    Returns:
        Scalar tensor, differentiable.

    Raises:
        WellPosednessError: ``||A||_inf >= 1``.

    Examples:
        >>> A, B = 0.5 * torch.eye(2), torch.ones(2, 3)
        >>> C, D = torch.ones(1, 2), torch.zeros(1, 3)
        >>> lipschitz_penalty(A, B, C, D)           # (9 + 4) / 2 / 0.5 >= the bound 12
        tensor(13.)
    """
    b, c = inf_norm_torch(B), inf_norm_torch(C)
    return 0.5 * (b * b + c * c) / _contraction_margin(A, "eq. 4.9") + inf_norm_torch(D)


@_matrices
def sensitivity_matrix(A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """``S = |C| (I - |A|)^-1 |B| + |D|`` (Thm 4.3), with autograd, for a CONE activation.

    ``|y(u) - y(u0)| <= S |u - u0|`` componentwise. Needs ``lambda_pf(|A|) < 1``; solved
    with a dense linear solve (``(n, n)``).

    Args:
        A: ``(n, n)`` state matrix with ``lambda_pf(|A|) < 1``.
        B: ``(n, p)`` input matrix.
        C: ``(q, n)`` output matrix.
        D: ``(q, p)`` feed-through matrix.

    Returns:
        ``(q, p)`` tensor ``S``, differentiable.

    Raises:
        WellPosednessError: ``lambda_pf(|A|) >= 1`` (``I - |A|`` is not an M-matrix).

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> S = sensitivity_matrix(model.A, model.B, model.C, model.D)
        >>> S.shape, S.requires_grad, torch.allclose(S.detach(), idlkit.robust.sensitivity_matrix(model))
        (torch.Size([2, 3]), True, True)
    """
    from ..wellposed import pf_eigenvalue

    lam = pf_eigenvalue(A.detach().abs())
    if lam >= 1:
        raise WellPosednessError(f"the sensitivity matrix needs lambda_pf(|A|) < 1, got {lam:.6g}")
    n = A.shape[0]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    X = torch.linalg.solve(eye - A.abs(), B.abs())
    return C.abs() @ X + D.abs()


@_matrices
def sensitivity_penalty(A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """``||S||_inf`` of the sensitivity matrix (paper 000 §6, "an l_inf-norm bound on S");
    ``||y(u) - y(u0)||_inf <= ||S||_inf ||u - u0||_inf``, never larger than eq. 4.8.

    Args:
        A: ``(n, n)`` state matrix with ``lambda_pf(|A|) < 1``.
        B: ``(n, p)`` input matrix.
        C: ``(q, n)`` output matrix.
        D: ``(q, p)`` feed-through matrix.

    Returns:
        Scalar tensor, differentiable.

    Raises:
        WellPosednessError: ``lambda_pf(|A|) >= 1``.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> P = sensitivity_penalty(model.A, model.B, model.C, model.D)
        >>> S = idlkit.robust.sensitivity_matrix(model)
        >>> P.shape, abs(P.item() - idlkit.wellposed.inf_norm(S)) < 1e-12
        (torch.Size([]), True)
    """
    return inf_norm_torch(sensitivity_matrix(A, B, C, D))


@_matrices
def mu_lipschitz_bound(A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """``||B|| ||C|| / (1 - mu_inf(A)_+) + ||D||`` (paper 004, input-output Lipschitz bound,
    plus the direct term), for monotone CONE activations and ``mu_inf(A) < 1``.

    Args:
        A: ``(n, n)`` state matrix with ``mu_inf(A) < 1``.
        B: ``(n, p)`` input matrix.
        C: ``(q, n)`` output matrix.
        D: ``(q, p)`` feed-through matrix.

    Returns:
        Scalar tensor, differentiable.

    Raises:
        WellPosednessError: ``mu_inf(A) >= 1``.

    Examples:
        >>> A, B = torch.tensor([[-1.0, 0.0], [0.0, 0.5]]), torch.ones(2, 3)
        >>> C, D = torch.ones(1, 2), torch.zeros(1, 3)
        >>> mu_lipschitz_bound(A, B, C, D)           # 3 * 2 / (1 - mu_inf(A)), mu_inf(A) = 0.5 < ||A||_inf
        tensor(12.)
    """
    mu = mu_inf_torch(A)
    if float(mu.detach()) >= 1:
        raise WellPosednessError(f"the mu_inf Lipschitz bound needs mu_inf(A) < 1, got {float(mu):.6g}")
    return inf_norm_torch(B) * inf_norm_torch(C) / (1 - torch.clamp(mu, min=0)) + inf_norm_torch(D)


def nuclear(A: Tensor | torch.nn.Module) -> Tensor:
    """Rank-sparsity penalty ``||A||_* = sum_i sigma_i(A)`` (paper 001 §6.3: the convex envelope
    of ``rank A``), differentiable; :func:`idlkit.compress.nuclear_norm` (which also takes a
    model, a :class:`~idlkit.compress.LowRankImplicitModel` giving ``||L R^T||_*``).
    ``Trainer(penalties=[("nuclear", w)])`` passes the model.

    Args:
        A: a matrix, or a model (its ``A``; ``L R^T`` for a low-rank model).

    Returns:
        Scalar tensor, differentiable.

    Examples:
        >>> nuclear(torch.diag(torch.tensor([3.0, -2.0])))
        tensor(5.)
    """
    from ..compress.rank import nuclear_norm  # compress imports train: resolved at call time

    return nuclear_norm(A)


PENALTIES = {
    "l1": l1,
    "group_columns": group_columns,
    "feature_selection": feature_selection,
    "lipschitz": lipschitz_penalty,
    "sensitivity": sensitivity_penalty,
    "mu_lipschitz": mu_lipschitz_bound,
    "nuclear": nuclear,
}
