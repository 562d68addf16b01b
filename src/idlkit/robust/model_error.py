"""State error of a perturbed model matrix (paper 000 §5.4, Thm 5.1, App. F).

For ``|A - A0| <= E`` (``E >= 0``), with ``x0`` and ``x`` the equilibria of ``A0`` and ``A`` for the
same input and a componentwise ``gamma``-Lipschitz map (CONE: ``gamma = 1``; monotone or not, e.g.
GELU with ``gamma = 1.129``; a ``Blockwise`` of such maps has one ``gamma_i`` per state, ``Gamma``):

    |x - x0| <= (I - Gamma (|A0| + E))^-1 Gamma E |x0|,   if lambda_pf(Gamma (|A0| + E)) < 1.

Rederived (the printed statement and App. F are garbled): ``|x - x0| <= gamma |A (x - x0) +
(A - A0) x0| <= gamma (|A0| + E) |x - x0| + gamma E |x0|``, and ``(I - M)^-1 >= 0``. The paper
writes ``|A0 + E|`` and ``x0``; the bound needs ``|A0| + E`` (``|A| <= |A0| + E``, while
``|A0 + E|`` can be smaller than ``|A|``) and ``|x0|`` (``x0`` may have negative entries, e.g. tanh).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .._matrix import as_dense_array, as_matrix, from_scipy_csr
from ..errors import ConfigurationError, InputError, NonFiniteError, ShapeError
from ._linalg import solve_nonneg
from ._model import as_batch64, float64_copy, model_data

__all__ = ["model_error_bound", "perturbation_bound"]


def perturbation_bound(model: object, A: Tensor) -> Tensor:
    """``E = |A - A0|`` for a perturbed matrix ``A`` of the model's ``A0``, float64.

    Dense unless both matrices are sparse: then ``E`` is a sparse CSR tensor with the union of
    their patterns (neither matrix is densified), which :func:`model_error_bound` takes as is.

    Args:
        model: the nominal model (matrix ``A0``, ``(n, n)``).
        A: the perturbed ``(n, n)`` matrix, dense or sparse.

    Returns:
        ``(n, n)`` float64 tensor ``|A - A0|`` (sparse CSR when both are sparse).

    Raises:
        ShapeError: ``A`` is not ``(n, n)``.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> A = model.A.detach() + 0.01
        >>> E = perturbation_bound(model, A)
        >>> E.shape, round(float(E.max()), 6)
        (torch.Size([5, 5]), 0.01)
    """
    M0, M1 = as_matrix(model.A), as_matrix(A)  # type: ignore[attr-defined]
    if M1.shape != M0.shape:
        raise ShapeError(f"perturbed A has shape {M1.shape}, the model's is {M0.shape}")
    if sp.issparse(M0) and sp.issparse(M1):
        return from_scipy_csr(sp.csr_array(abs(M1 - M0)), torch.float64)
    return torch.from_numpy(np.abs(as_dense_array(M1) - as_dense_array(M0)))


def model_error_bound(model: object, E: Tensor | float, u: Tensor, method: str = "auto") -> Tensor:
    """Bound ``(batch, n)`` on ``|x(A) - x(A0)|`` over every ``A`` with ``|A - A0| <= E`` (Thm 5.1).

    Args:
        method: ``"auto"``, ``"solve"`` or ``"iterate"`` (see :func:`~idlkit.robust.bounds.state_bound`).
        model: the nominal model (matrix ``A0``; componentwise activation).
        E: ``(n, n)`` nonnegative entrywise error bound (dense or sparse), or a scalar (every entry).
        u: ``(batch, p)`` inputs.

    Raises:
        ConfigurationError: a non-componentwise activation (Thm 5.1 is for CONE maps).
        WellPosednessError: ``lambda_pf(gamma (|A0| + E)) < 1`` cannot be certified.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> u = torch.randn(4, 3, dtype=torch.float64)
        >>> E = torch.full((5, 5), 1e-3, dtype=torch.float64)
        >>> bound = model_error_bound(model, E, u)
        >>> A, B, C, D, b = (t.detach() for t in (model.A, model.B, model.C, model.D, model.b))
        >>> other = idlkit.ImplicitModel.from_matrices(A + E, B, C, D, b=b, wellposedness=None)
        >>> bound.shape, bool(((other.equilibrium(u) - model.equilibrium(u)).abs() <= bound + 1e-9).all())
        (torch.Size([4, 5]), True)
    """
    d = model_data(model)
    if not d.componentwise:
        raise ConfigurationError(
            f"Thm 5.1 needs a componentwise activation (|phi(z) - phi(z')| <= gamma |z - z'| entry by "
            f"entry), got {d.activation!r}, whose blocks (SoftMax, BlockMax, Product) mix entries. "
            f"Alternatives: bound each perturbed model with state_box_bound (Thm 4.2), or use a "
            f"componentwise map")
    n = d.n
    if isinstance(E, int | float):
        if not np.isfinite(E) or E < 0:
            raise InputError(f"E must be a finite number >= 0, got {E!r}")
        Em = np.full((n, n), float(E))
    else:
        Em = as_matrix(E)
        if Em.shape != (n, n):
            raise ShapeError(f"E must have shape ({n}, {n}), got {Em.shape}")
        vals = Em.data if sp.issparse(Em) else Em
        if not np.isfinite(vals).all():
            raise NonFiniteError("E contains NaN or Inf")
        if vals.size and vals.min() < 0:
            raise InputError(f"E must be >= 0 (an entrywise error bound), min entry {vals.min():.6g}")
    gamma = np.asarray(d.blocks.gammas, dtype=np.float64)  # one per state (componentwise)
    absA = abs(d.A) if sp.issparse(d.A) else np.abs(d.A)
    if sp.issparse(absA) or sp.issparse(Em):
        M = sp.csr_array(sp.diags_array(gamma) @ (sp.csr_array(absA) + sp.csr_array(Em)))
    else:
        M = gamma[:, None] * (absA + Em)
    U = torch.from_numpy(as_batch64(u, d.p))
    m64 = float64_copy(model)
    with torch.no_grad():
        X0 = m64.equilibrium(U).numpy()
    R = gamma[:, None] * np.asarray(Em @ np.abs(X0).T)
    X, _ = solve_nonneg(M, R, method=method, what="the model-error bound (Thm 5.1)")
    return torch.from_numpy(np.ascontiguousarray(X.T))
