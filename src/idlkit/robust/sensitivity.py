"""The sensitivity matrix and output box bounds (paper 000 §4.3, Thm 4.3-4.4, App. D).

``S = |C| (I - |A|)^-1 |B| + |D|`` (Thm 4.3, CONE maps) and the block form
``S = N(C) (I - Gamma N(A))^-1 Gamma N(B) + |D|`` (Thm 4.4, BLIP maps) satisfy
``|y(u) - y(u0)| <= S |u - u0|`` componentwise. A componentwise ``gamma``-Lipschitz map
gives ``|C| (I - gamma |A|)^-1 gamma |B| + |D|`` (Thm 4.4 with blocks of size 1; equal to
Thm 4.3's ``S`` for ``gamma = 1``).

``S`` is computed in float64 with one linear solve with ``min(p, q)`` right-hand sides
(the transposed system ``(I - M^T) W = N(C)^T`` when ``q <= p``), never an explicit inverse,
and certified against rounding (:mod:`idlkit.robust._linalg`). The differentiable dense
version used as a training penalty is :func:`idlkit.train.penalties.sensitivity_matrix`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._validation import check_choice
from ..errors import ConfigurationError
from ._linalg import SolveCertificate, solve_nonneg
from ._model import as_sigma, check_k, dense, model_data, norm_matrices, top_k_sum

__all__ = ["Sensitivity", "sensitivity", "sensitivity_matrix", "output_box_bound"]

FORMS = ("auto", "cone", "blip")


@dataclass(frozen=True)
class Sensitivity:
    """The sensitivity matrix with how it was certified.

    Attributes:
        S: ``(q, p)`` float64 tensor, ``|y(u) - y(u0)| <= S |u - u0|``.
        form: ``"cone"`` (Thm 4.3) or ``"blip"`` (Thm 4.4).
        certificate: the solve and the certified bound on ``lambda_pf(Gamma N(A))``.
    """

    S: Tensor
    form: str
    certificate: SolveCertificate


def sensitivity(model: object, form: str = "auto", method: str = "auto") -> Sensitivity:
    """Sensitivity matrix of Thm 4.3 (componentwise maps) or Thm 4.4 (BLIP maps), float64.

    Args:
        model: an :class:`~idlkit.ImplicitModel`.
        form: ``"auto"`` (by the activation), ``"cone"`` (requires a componentwise map) or
            ``"blip"`` (any map; for a componentwise one it equals ``"cone"``).
        method: ``"auto"``, ``"solve"`` or ``"iterate"`` (see :func:`idlkit.robust._linalg.solve_nonneg`).

    Raises:
        ConfigurationError: ``form="cone"`` with a non-componentwise activation.
        WellPosednessError: ``lambda_pf(Gamma N(A)) < 1`` cannot be certified.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> s = sensitivity(model)
        >>> s.S.shape, s.form, torch.allclose(s.S, sensitivity_matrix(model))
        (torch.Size([2, 3]), 'cone', True)
    """
    check_choice("form", form, FORMS)
    d = model_data(model)
    if form == "cone" and not d.componentwise:
        raise ConfigurationError(
            f"Thm 4.3 (form='cone') needs a componentwise (CONE) activation, got {d.activation!r}; "
            f"use form='blip' (Thm 4.4)")
    NA, NB, NC, absD = norm_matrices(d)
    what = "the sensitivity matrix (Thm 4.3/4.4)"
    if d.q <= d.p:  # (I - M^T) W = N(C)^T with q right-hand sides; S = W^T Gamma N(B)
        W, cert = solve_nonneg(NA, dense(NC).T.copy(), transpose=True, method=method, what=what)
        S = np.asarray((NB.T @ W).T) if d.n else np.zeros((d.q, d.p))
    else:  # (I - M) T = Gamma N(B) with p right-hand sides; S = N(C) T
        T, cert = solve_nonneg(NA, dense(NB), method=method, what=what)
        S = np.asarray(NC @ T) if d.n else np.zeros((d.q, d.p))
    # outward: products and sums of nonnegative terms (n + p of them at most), relative rounding
    S = (S + dense(absD)) * (1 + 4 * (d.n + d.p + 3) * np.finfo(np.float64).eps)
    return Sensitivity(torch.from_numpy(np.ascontiguousarray(S)),
                       "cone" if d.componentwise else "blip", cert)


def sensitivity_matrix(model: object, form: str = "auto", method: str = "auto") -> Tensor:
    """``S = |C| (I - |A|)^-1 |B| + |D|`` (Thm 4.3) or its block form (Thm 4.4), ``(q, p)`` float64.

    See :func:`sensitivity` for the arguments and errors.

    Args:
        model: an :class:`~idlkit.ImplicitModel`.
        form: ``"auto"``, ``"cone"`` or ``"blip"`` (see :func:`sensitivity`).
        method: ``"auto"``, ``"solve"`` or ``"iterate"``.

    Returns:
        ``(q, p)`` float64 tensor ``S``.

    Raises:
        ConfigurationError: ``form="cone"`` with a non-componentwise activation.
        WellPosednessError: ``lambda_pf(Gamma N(A)) < 1`` cannot be certified.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> S = sensitivity_matrix(model)
        >>> S.shape
        torch.Size([2, 3])
        >>> A, B, C, D = (t.detach().abs() for t in (model.A, model.B, model.C, model.D))
        >>> torch.allclose(S, C @ torch.linalg.solve(torch.eye(5, dtype=torch.float64) - A, B) + D)
        True
    """
    return sensitivity(model, form, method).S


def output_box_bound(model: object, sigma_u: object, k: int | None = None, method: str = "auto") -> Tensor:
    """``sigma_y`` with ``|y(u) - y(u0)| <= sigma_y`` on ``U_box`` (``S sigma_u``, eq. 4.10/4.11)
    or on ``U_card`` (``s_k`` of each row of ``S diag(sigma_u)``, the ``k`` largest terms), ``(q,)``.

    Args:
        model: an :class:`~idlkit.ImplicitModel`.
        sigma_u: input radius, scalar or ``(p,)``, ``>= 0`` (eq. 4.1).
        k: at most ``k`` inputs perturbed (eq. 4.2); ``None`` for the box set.
        method: ``"auto"``, ``"solve"`` or ``"iterate"`` (see :func:`sensitivity`).

    Returns:
        ``(q,)`` float64 tensor ``sigma_y``.

    Raises:
        InputError: a negative ``sigma_u`` or a ``k`` outside ``1..p``.
        ShapeError: ``sigma_u`` neither a scalar nor ``(p,)``.
        WellPosednessError: ``lambda_pf(Gamma N(A)) < 1`` cannot be certified.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> sy = output_box_bound(model, 0.1)
        >>> u0 = torch.zeros(1, 3, dtype=torch.float64)
        >>> u = u0 + 0.1 * (2 * torch.rand(256, 3, dtype=torch.float64) - 1)       # samples of the box
        >>> sy.shape, bool(((model(u) - model(u0)).abs() <= sy + 1e-9).all())
        (torch.Size([2]), True)
    """
    d = model_data(model)
    s = as_sigma(sigma_u, d.p)
    k = check_k(k, d.p)
    S = sensitivity_matrix(model, method=method).numpy()
    out = S @ s if k is None else top_k_sum(S * s[None, :], k)
    out = out * (1 + 2 * (d.p + 2) * np.finfo(np.float64).eps)  # outward rounding of the sums
    return torch.from_numpy(np.ascontiguousarray(out))
