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

from .._validation import check_choice
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
    "solution_error",
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

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> sb = state_bound(model, 0.1)
        >>> sb.sigma_x.shape, torch.allclose(sb.sigma_x, state_box_bound(model, 0.1))
        (torch.Size([5]), True)
    """
    d = model_data(model)
    s = as_sigma(sigma_u, d.p)
    k = check_k(k, d.p)
    NA, NB, _, _ = norm_matrices(d)
    what = "the state box bound (Thm 4.1/4.2)"
    up = 1 + 2 * (d.p + 2) * np.finfo(np.float64).eps  # outward: rounding of sums of p terms >= 0
    if k is None:
        R = np.asarray(NB @ s).reshape(-1, 1) * up
        X, cert = solve_nonneg(NA, R, method=method, what=what)
        eta = X[:, 0]
    else:
        T, cert = solve_nonneg(NA, dense(NB), method=method, what=what)
        eta = top_k_sum(T * s[None, :], k) * up if T.shape[0] else np.zeros(0)
    sig = _expand(eta, d.blocks.sizes) if not d.componentwise else eta
    return StateBound(torch.from_numpy(np.ascontiguousarray(sig)), torch.from_numpy(eta.copy()), k, cert)


def state_box_bound(model: object, sigma_u: object, k: int | None = None, method: str = "auto") -> Tensor:
    """``sigma_x`` of Thm 4.1 (eq. 4.5): ``|x - x0| <= (I - |A|)^-1 |B| sigma_u``, ``(n,)`` float64.

    See :func:`state_bound` for the arguments, the BLIP case (Thm 4.2) and ``k`` (eq. 4.2).

    Args:
        model: an :class:`~idlkit.ImplicitModel` (dense or sparse matrices).
        sigma_u: input radius, scalar or ``(p,)``, finite and ``>= 0`` (eq. 4.1).
        k: at most ``k`` inputs perturbed (eq. 4.2); ``None`` for the box set.
        method: ``"auto"``, ``"solve"`` or ``"iterate"`` (see :func:`state_bound`).

    Returns:
        ``(n,)`` float64 tensor ``sigma_x``.

    Raises:
        WellPosednessError: ``lambda_pf(Gamma N(A)) < 1`` cannot be certified.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> sx = state_box_bound(model, 0.1)
        >>> sx.shape
        torch.Size([5])
        >>> A, B = model.A.detach().abs(), model.B.detach().abs()
        >>> ref = torch.linalg.solve(torch.eye(5, dtype=A.dtype) - A, 0.1 * B.sum(1))  # (I - |A|)^-1 |B| 0.1
        >>> torch.allclose(sx, ref)
        True
    """
    return state_bound(model, sigma_u, k, method).sigma_x


def state_block_bound(model: object, sigma_u: object, k: int | None = None, method: str = "auto") -> Tensor:
    """``(I - Gamma N(A))^-1 Gamma N(B) sigma_u`` of Thm 4.2 (eq. 4.7): bound on the vector of
    block norms ``eta(x - x0)``, ``(L,)`` float64. See :func:`state_bound`.

    Args:
        model: an :class:`~idlkit.ImplicitModel` (dense or sparse matrices).
        sigma_u: input radius, scalar or ``(p,)``, finite and ``>= 0`` (eq. 4.1).
        k: at most ``k`` inputs perturbed (eq. 4.2); ``None`` for the box set.
        method: ``"auto"``, ``"solve"`` or ``"iterate"`` (see :func:`state_bound`).

    Returns:
        ``(L,)`` float64 tensor, one bound per activation block.

    Raises:
        WellPosednessError: ``lambda_pf(Gamma N(A)) < 1`` cannot be certified.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> state_block_bound(model, 0.1).shape              # one entry per block (ReLU: per state)
        torch.Size([5])
    """
    return state_bound(model, sigma_u, k, method).eta


def state_linf_bound(model: object, sigma_u: object, k: int | None = None, measure: str = "inf"
                     ) -> float:
    """``||x - x0||_inf <= gamma ||B| sigma_u||_inf / (1 - gamma ||A||_inf)`` (eq. 4.3), float64.

    With ``k`` (eq. 4.2) the numerator is ``gamma delta``, ``delta = max_i s_k(sigma_u . |B|^T e_i)``
    (eq. 4.4). ``gamma`` is the activation's l_inf Lipschitz constant (1 for CONE maps).
    ``measure="mu"`` replaces ``||A||_inf`` by ``mu_inf(A)_+`` (paper 004's input-to-state bound,
    for monotone componentwise maps with ``0 <= phi' <= gamma``; the derivation of
    :func:`~idlkit.robust.lipschitz.state_lipschitz_bound` with ``|(B du)_i| <= delta``), which
    also covers ``||A||_inf >= 1 > gamma mu_inf(A)``.

    Raises:
        WellPosednessError: ``gamma ||A||_inf >= 1`` (``gamma mu_inf(A) >= 1`` for ``"mu"``): the
            bound needs a contraction.
        ConfigurationError: ``"mu"`` with a non-monotone or block activation.

    Args:
        model: an :class:`~idlkit.ImplicitModel` (dense or sparse matrices).
        sigma_u: input radius, scalar or ``(p,)``, finite and ``>= 0`` (eq. 4.1).
        k: at most ``k`` inputs perturbed (eq. 4.2); ``None`` for the box set.
        measure: ``"inf"`` (``||A||_inf``, eq. 4.3) or ``"mu"`` (``mu_inf(A)_+``, paper 004).

    Returns:
        The bound, a Python float.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> b = state_linf_bound(model, 0.1)
        >>> b >= float(state_box_bound(model, 0.1).max())     # the box bound is never looser
        True
    """
    from .lipschitz import contraction

    check_choice("measure", measure, ("inf", "mu"))
    d = model_data(model)
    s = as_sigma(sigma_u, d.p)
    k = check_k(k, d.p)
    if d.n == 0:
        return 0.0
    try:
        gamma, denom = contraction(d, measure)
    except WellPosednessError as exc:
        raise WellPosednessError(f"{exc}; state_box_bound needs only lambda_pf < 1") from None
    absB = abs(d.B) if sp.issparse(d.B) else np.abs(d.B)
    if k is None:
        delta = float(np.asarray(absB @ s).max(initial=0.0))
    else:
        W = dense(absB) * s[None, :]
        delta = float(top_k_sum(W, k).max(initial=0.0))
    num = gamma * delta
    # outward rounding: the bound must not be an underestimate
    return float(np.nextafter(num / denom * (1 + 4 * (d.n + d.p) * np.finfo(float).eps), np.inf))


@dataclass(frozen=True)
class BoxBounds:
    """Certified bounds around nominal inputs ``u0`` (Thm 4.1-4.4), float64, batch-first.

    Attributes:
        x0: ``(batch, n)`` nominal states (as computed by the model's solver in float64).
        y0: ``(batch, q)`` nominal outputs (as computed by the model's solver in float64).
        sigma_x: ``(n,)`` state radius.
        sigma_y: ``(q,)`` output radius (``S sigma_u``).
        k: cardinality of the input set, ``None`` for the box.
        x_err: ``(batch, n)`` bound on the solver's error ``|x0 - x*(u0)|`` (see
            :func:`box_bounds`); the bounds ``x_lower``/``x_upper`` include it.
        y_err: ``(batch, q)`` its image ``N(C) x_err``; ``y_lower``/``y_upper`` include it.
    """

    x0: Tensor
    y0: Tensor
    sigma_x: Tensor
    sigma_y: Tensor
    k: int | None
    x_err: Tensor | None = None
    y_err: Tensor | None = None

    def _ex(self) -> Tensor | float:
        return 0.0 if self.x_err is None else self.x_err

    def _ey(self) -> Tensor | float:
        return 0.0 if self.y_err is None else self.y_err

    @property
    def x_lower(self) -> Tensor:
        return self.x0 - self.sigma_x - self._ex()

    @property
    def x_upper(self) -> Tensor:
        return self.x0 + self.sigma_x + self._ex()

    @property
    def y_lower(self) -> Tensor:
        return self.y0 - self.sigma_y - self._ey()

    @property
    def y_upper(self) -> Tensor:
        return self.y0 + self.sigma_y + self._ey()


def solution_error(model: object, U: Tensor, X0: Tensor, method: str = "auto", blocks: bool = False
                   ) -> np.ndarray:
    """``(batch, n)`` bound on ``|x0 - x*|``: the distance of computed equilibria ``X0`` (float64)
    to the exact ones at the inputs ``U``, from their residuals (``blocks``: the ``(batch, L)``
    bound on the block norms ``eta(x0 - x*)`` instead; the same for a componentwise map).

    With ``r = x0 - phi(A x0 + B u + b)`` and ``e = x* - x0``:
    ``e = phi(A x* + B u + b) - phi(A x0 + B u + b) - r``, so per block
    ``eta(e) <= Gamma N(A) eta(e) + eta(r)`` and ``eta(e) <= (I - Gamma N(A))^-1 eta(r)`` (the proof
    of Thm 4.1/4.2 with ``r`` as the input term). ``eta(r)`` is taken as the block ``l1`` norms
    (an upper bound of every block norm), ``|r|`` for a componentwise map, plus the rounding of
    its own float64 evaluation (``4 (n + p + 2) eps`` times the magnitudes of ``A x0 + B u + b``
    times ``gamma``, and ``16 eps`` of the values). Certified like every solve here.

    Args:
        model: an :class:`~idlkit.ImplicitModel`.
        U: ``(batch, p)`` float64 inputs.
        X0: ``(batch, n)`` float64 computed equilibria at ``U``.
        method: ``"auto"``, ``"solve"`` or ``"iterate"`` (see :func:`state_bound`).
        blocks: return the ``(batch, L)`` bound on the block norms instead.

    Returns:
        ``(batch, n)`` (or ``(batch, L)``) float64 NumPy array.

    Raises:
        WellPosednessError: ``lambda_pf(Gamma N(A)) < 1`` cannot be certified.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> U = torch.randn(4, 3, dtype=torch.float64)
        >>> X0 = model.equilibrium(U).detach()
        >>> err = solution_error(model, U, X0)
        >>> err.shape, bool((err >= 0).all()), bool((err < 1e-4).all())
        ((4, 5), True, True)
    """
    d = model_data(model)
    if d.n == 0:
        return np.zeros((U.shape[0], 0))
    r = residual_bound(model, U, X0)
    sizes = np.asarray(d.blocks.sizes, dtype=np.int64)
    if not d.componentwise:
        r = np.add.reduceat(r, np.concatenate(([0], np.cumsum(sizes)[:-1])), axis=1)
    NA = norm_matrices(d)[0]
    E, _ = solve_nonneg(NA, np.ascontiguousarray(r.T), method=method,
                        what="the solver-error bound of the nominal states")
    E = E.T
    return E if d.componentwise or blocks else np.repeat(E, sizes, axis=1)


def residual_bound(model: object, U: Tensor, X0: Tensor) -> np.ndarray:
    """``(batch, n)`` upper bound on ``|x0 - phi(A x0 + B u + b)|`` at computed states ``X0``
    (float64), including the rounding of its own evaluation (see :func:`solution_error`)."""
    d = model_data(model)
    if d.n == 0:
        return np.zeros((U.shape[0], 0))
    b = getattr(model, "b", None)
    bias = np.zeros(d.n) if b is None else b.detach().to("cpu", torch.float64).numpy()
    Xn, Un = X0.numpy(), U.numpy()
    Z = np.asarray(d.A @ Xn.T).T + np.asarray(d.B @ Un.T).T + bias
    with torch.no_grad():
        PZ = d.activation(torch.from_numpy(np.ascontiguousarray(Z.T))).numpy().T  # (n, m) convention
    r = np.abs(Xn - PZ)
    absA = abs(d.A) if sp.issparse(d.A) else np.abs(d.A)
    absB = abs(d.B) if sp.issparse(d.B) else np.abs(d.B)
    mag = np.asarray(absA @ np.abs(Xn).T).T + np.asarray(absB @ np.abs(Un).T).T + np.abs(bias)
    gam = np.repeat(np.asarray(d.blocks.gammas, dtype=np.float64), np.asarray(d.blocks.sizes))
    eps = np.finfo(np.float64).eps
    return r + 4 * (d.n + d.p + 2) * eps * gam * mag + 16 * eps * (np.abs(Xn) + np.abs(PZ) + 1e-300)


def box_bounds(model: object, u0: Tensor, sigma_u: object, k: int | None = None,
               method: str = "auto") -> BoxBounds:
    """Intervals ``x0 +- sigma_x`` and ``y0 +- sigma_y`` containing every state and output for
    inputs in ``U_box`` or ``U_card`` around each row of ``u0`` (Thm 4.1-4.4).

    The nominal ``x0, y0`` are computed by the model in float64 (a copy; the model is not
    changed) with its own solver and tolerance. Their error is bounded from the residual
    (:func:`solution_error`; about the solver's tolerance for an iterative solver, ~1e-16 for a
    triangular one) and added to the radii (``x_err``, ``y_err = N(C) x_err``), so the intervals
    contain the exact states and outputs, not only those of the exact nominal equilibrium.
    Sparse models stay sparse.

    Args:
        model: an :class:`~idlkit.ImplicitModel` (dense or sparse matrices).
        u0: ``(batch, p)`` or ``(p,)`` nominal inputs.
        sigma_u: input radius, scalar or ``(p,)``, finite and ``>= 0`` (eq. 4.1).
        k: at most ``k`` inputs perturbed (eq. 4.2); ``None`` for the box set.
        method: ``"auto"``, ``"solve"`` or ``"iterate"`` (see :func:`state_bound`).

    Returns:
        :class:`BoxBounds`, ``(batch, n)`` state and ``(batch, q)`` output intervals, float64.

    Raises:
        ShapeError: ``u0`` or ``sigma_u`` of the wrong shape.
        InputError: a negative ``sigma_u`` or a bad ``k``.
        NonFiniteError: NaN/Inf in ``u0`` or ``sigma_u``.
        WellPosednessError: ``lambda_pf(Gamma N(A)) < 1`` cannot be certified.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 8, 2, activation="relu", dtype=torch.float64, kappa=0.5)
        >>> bb = box_bounds(model, torch.zeros(4, 3, dtype=torch.float64), 0.1)
        >>> bb.x_lower.shape
        torch.Size([4, 8])
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
    d = model_data(model)
    eta = solution_error(model, U, x0, method, blocks=True)
    ex = eta if d.componentwise else np.repeat(eta, np.asarray(d.blocks.sizes, dtype=np.int64), axis=1)
    NC = norm_matrices(d)[2]
    ey = np.asarray(NC @ eta.T).T if d.n else np.zeros((U.shape[0], d.q))
    ey = ey * (1 + 4 * (d.n + 2) * np.finfo(np.float64).eps)
    t = torch.from_numpy
    return BoxBounds(x0, y0, sig_x, sig_y, k, t(np.ascontiguousarray(ex)), t(np.ascontiguousarray(ey)))
