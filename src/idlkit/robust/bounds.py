"""State bounds under box and cardinality-constrained inputs (paper 000 §4.1-4.2, App. D).

Input sets (eq. 4.1, 4.2): ``U_box = {u : |u - u0| <= sigma_u}`` and
``U_card = {u in U_box : Card(u - u0) <= k}``. For every ``u`` in the set the equilibrium
``x`` (of ``x = phi(A x + B u + b)``) stays close to the nominal ``x0``:

* :func:`state_linf_bound` -- ``||x - x0||_inf <= gamma || |B| sigma_u ||_inf / (1 - gamma ||A||_inf)``
  (eq. 4.3) and, for ``U_card``, ``delta = max_i s_k(sigma_u . |B|^T e_i)`` in the numerator (eq. 4.4);
* :func:`state_block_bound` -- ``eta(x - x0) <= (I - Gamma N(A))^-1 Gamma N(B) sigma_u`` (Thm 4.2);
* :func:`state_box_bound` -- ``|x - x0| <= sigma_x = (I - |A|)^-1 |B| sigma_u`` (Thm 4.1).

``gamma``/``Gamma``: the activation's Lipschitz constants. For a CONE map ``gamma = 1`` and
these are the paper's formulas; a ``gamma``-Lipschitz componentwise map (sigmoid: 1/4, a
leaky ReLU with slope > 1) gives the same proof with ``gamma`` in front (Thm 4.2 with blocks
of size 1), and the hypothesis becomes ``lambda_pf(gamma |A|) < 1``. For a BLIP map
:func:`state_box_bound` returns Thm 4.2's block bound on every entry of the block
(``|v_i| <= ||v||_p`` for every ``p``).

Cardinality refinement (derived here, tighter than eq. 4.4 and than applying ``s_k`` to
``|B| sigma_u``): with ``T = (I - Gamma N(A))^-1 Gamma N(B) >= 0`` (``(L, p)``),
``eta(x - x0) <= T |u - u0|``, and a nonnegative row ``t_i`` maximised over
``{|d| <= sigma_u, Card(d) <= k}`` gives ``s_k(t_i . sigma_u)``: the ``k`` largest entries of
each row of ``T diag(sigma_u)``.

Everything is computed in float64 on the CPU and certified against rounding
(:mod:`idlkit.robust._linalg`); results are float64 tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .. import wellposed as wp
from ..errors import WellPosednessError
from ._linalg import SolveCertificate, solve_nonneg
from ._model import (
    as_batch64,
    as_sigma,
    check_k,
    dense,
    float64_copy,
    model_data,
    norm_matrices,
    top_k_sum,
)

__all__ = [
    "state_linf_bound",
    "state_block_bound",
    "state_box_bound",
    "StateBound",
    "state_bound",
    "BoxBounds",
    "box_bounds",
]


@dataclass(frozen=True)
class StateBound:
    """A certified state bound (float64).

    Attributes:
        sigma_x: ``(n,)`` componentwise radius: ``|x - x0| <= sigma_x`` (Thm 4.1; Thm 4.2 per block).
        eta: ``(L,)`` radius of the block norms: ``eta(x - x0) <= eta`` (Thm 4.2; ``= sigma_x``
            for a componentwise map).
        k: cardinality of the input set (eq. 4.2), ``None`` for the box (eq. 4.1).
        certificate: how the linear system was solved, with the certified bound on
            ``lambda_pf(Gamma N(A))``.
    """

    sigma_x: Tensor
    eta: Tensor
    k: int | None
    certificate: SolveCertificate


def _expand(eta: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    return np.repeat(eta, np.asarray(sizes, dtype=np.int64), axis=0)


def state_bound(model: object, sigma_u: object, k: int | None = None, method: str = "auto") -> StateBound:
    """Block and componentwise state bounds of Thm 4.1/4.2 (with the cardinality refinement).

    Args:
        model: an :class:`~idlkit.ImplicitModel` (dense or sparse matrices).
        sigma_u: input radius, scalar or ``(p,)``, finite and ``>= 0`` (eq. 4.1).
        k: at most ``k`` inputs perturbed (eq. 4.2); ``None`` for the box set.
        method: ``"auto"``, ``"solve"`` (LU; sparse LU / triangular solve for a sparse ``A``)
            or ``"iterate"`` (the fixed-point iteration of §4.2).

    Raises:
        WellPosednessError: ``lambda_pf(Gamma N(A)) < 1`` cannot be certified.
    """
    d = model_data(model)
    s = as_sigma(sigma_u, d.p)
    k = check_k(k, d.p)
    NA, NB, _, _ = norm_matrices(d)
    what = "the state box bound (Thm 4.1/4.2)"
    if k is None:
        R = np.asarray(NB @ s).reshape(-1, 1)
        X, cert = solve_nonneg(NA, R, method=method, what=what)
        eta = X[:, 0]
    else:
        T, cert = solve_nonneg(NA, dense(NB), method=method, what=what)
        eta = top_k_sum(T * s[None, :], k) if T.shape[0] else np.zeros(0)
    sig = _expand(eta, d.blocks.sizes) if not d.componentwise else eta
    return StateBound(torch.from_numpy(np.ascontiguousarray(sig)), torch.from_numpy(eta.copy()), k, cert)


def state_box_bound(model: object, sigma_u: object, k: int | None = None, method: str = "auto") -> Tensor:
    """``sigma_x`` of Thm 4.1 (eq. 4.5): ``|x - x0| <= (I - |A|)^-1 |B| sigma_u``, ``(n,)`` float64.

    See :func:`state_bound` for the arguments, the BLIP case (Thm 4.2) and ``k`` (eq. 4.2).
    """
    return state_bound(model, sigma_u, k, method).sigma_x


def state_block_bound(model: object, sigma_u: object, k: int | None = None, method: str = "auto") -> Tensor:
    """``(I - Gamma N(A))^-1 Gamma N(B) sigma_u`` of Thm 4.2 (eq. 4.7): bound on the vector of
    block norms ``eta(x - x0)``, ``(L,)`` float64. See :func:`state_bound`."""
    return state_bound(model, sigma_u, k, method).eta


def state_linf_bound(model: object, sigma_u: object, k: int | None = None) -> float:
    """``||x - x0||_inf <= gamma ||B| sigma_u||_inf / (1 - gamma ||A||_inf)`` (eq. 4.3), float64.

    With ``k`` (eq. 4.2) the numerator is ``gamma delta``, ``delta = max_i s_k(sigma_u . |B|^T e_i)``
    (eq. 4.4). ``gamma`` is the activation's l_inf Lipschitz constant (1 for CONE maps).

    Raises:
        WellPosednessError: ``gamma ||A||_inf >= 1`` (the bound needs a contraction).
    """
    d = model_data(model)
    s = as_sigma(sigma_u, d.p)
    k = check_k(k, d.p)
    if d.n == 0:
        return 0.0
    gamma = float(d.activation.lipschitz_inf)
    a = gamma * wp.inf_norm(d.A)
    if not a < 1:
        raise WellPosednessError(
            f"eq. 4.3/4.4 needs gamma ||A||_inf < 1, got {a:.6g} (gamma = {gamma:g}); use "
            f"state_box_bound (needs only lambda_pf < 1) or rescale the model "
            f"(idlkit.wellposed.rescale)")
    absB = abs(d.B) if sp.issparse(d.B) else np.abs(d.B)
    if k is None:
        delta = float(np.asarray(absB @ s).max(initial=0.0))
    else:
        W = dense(absB) * s[None, :]
        delta = float(top_k_sum(W, k).max(initial=0.0))
    num = gamma * delta
    # outward rounding: the bound must not be an underestimate
    return float(np.nextafter(num / (1 - a) * (1 + 4 * (d.n + d.p) * np.finfo(float).eps), np.inf))


@dataclass(frozen=True)
class BoxBounds:
    """Certified bounds around nominal inputs ``u0`` (Thm 4.1-4.4), float64, batch-first.

    Attributes:
        x0: ``(batch, n)`` nominal states; ``y0``: ``(batch, q)`` nominal outputs.
        sigma_x: ``(n,)`` state radius; ``sigma_y``: ``(q,)`` output radius (``S sigma_u``).
        k: cardinality of the input set, ``None`` for the box.
    """

    x0: Tensor
    y0: Tensor
    sigma_x: Tensor
    sigma_y: Tensor
    k: int | None

    @property
    def x_lower(self) -> Tensor:
        return self.x0 - self.sigma_x

    @property
    def x_upper(self) -> Tensor:
        return self.x0 + self.sigma_x

    @property
    def y_lower(self) -> Tensor:
        return self.y0 - self.sigma_y

    @property
    def y_upper(self) -> Tensor:
        return self.y0 + self.sigma_y


def box_bounds(model: object, u0: Tensor, sigma_u: object, k: int | None = None,
               method: str = "auto") -> BoxBounds:
    """Intervals ``x0 +- sigma_x`` and ``y0 +- sigma_y`` containing every state and output for
    inputs in ``U_box`` or ``U_card`` around each row of ``u0`` (Thm 4.1-4.4).

    The nominal ``x0, y0`` are computed by the model in float64 (a copy; the model is not
    changed) with its own solver and tolerance: the bound is exact for the exact equilibrium.
    """
    from .sensitivity import output_box_bound

    p = model.in_features  # type: ignore[attr-defined]
    U = torch.from_numpy(as_batch64(u0, p, "u0"))
    sig_x = state_box_bound(model, sigma_u, k, method)
    sig_y = output_box_bound(model, sigma_u, k, method)
    m64 = float64_copy(model)
    with torch.no_grad():
        x0 = m64.equilibrium(U)
        y0 = m64(U)
    return BoxBounds(x0, y0, sig_x, sig_y, k)

