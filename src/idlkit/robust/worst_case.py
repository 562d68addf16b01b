"""Worst-case losses over an input box (paper 000 §4.4).

With ``|y(u) - y(u0)| <= sigma_y`` (``sigma_y = S sigma_u``, Thm 4.3/4.4; the ``k``-sparse form
for ``U_card``):

* squared error: ``max_{|yh - yh0| <= sigma_y} ||y - yh||_2^2 = || |y - yh0| + sigma_y ||_2^2`` (exact
  over the output box);
* cross entropy ``L(y, yh) = log sum_i exp(yh_i) - y^T yh`` (``y >= 0``, ``1^T y = 1``):
  ``L_wc <= log sum_i exp(yh0_i + sigma_y,i) - y^T yh0 + y^T sigma_y`` (the refined bound of §4.4;
  log-sum-exp increases in every entry and ``y >= 0``).

Both are upper bounds of the loss for every input of the set (float64).

``bound="rho"``: the paper's first, simpler cross-entropy bound, from a single state radius
``||x - x0||_inf <= rho`` (§4.4 with eq. 4.3):
``L_wc <= log sum_i exp(yh0_i + rho ||c_i||_1) - y^T yh0 + rho ||C^T y||_1`` (each of the two terms
maximised on its own over the ball). The paper assumes ``D = 0``; with ``D`` the input term is
added the same way: ``+ s(|d_i| sigma_u)`` inside the exponentials and ``+ s(|D^T y| sigma_u)``
outside (``s`` the plain sum, or the sum of the ``k`` largest entries for ``U_card``). For the
squared error the same output radius ``rho ||c_i||_1 + s(|d_i| sigma_u)`` replaces ``sigma_y``.
``rho`` comes from eq. 4.3/4.4 (``rho_measure="inf"``, the paper's), paper 004's ``mu_inf``
form (``"mu"``, for monotone componentwise maps; covers ``||A||_inf >= 1``), the largest entry of
Thm 4.1/4.2's ``sigma_x`` (``"box"``), or the smallest applicable (``"best"``); the distance of the
computed nominal state to the exact one (from its residual, divided by the same contraction
margin, or Thm 4.1's error bound for ``"box"``) is added per sample. For one-hot targets and
``rho_measure`` in ``("inf", "box")`` it is never below the refined bound (``rho >= sigma_x``
componentwise and ``||C^T y||_1 = ||c_y||_1``); with soft targets the paper's ``||C^T y||_1``
term can be the smaller one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._validation import check_choice
from ..errors import ConfigurationError, InputError, ShapeError, WellPosednessError
from ._model import as_batch64, as_sigma, check_k, dense, float64_copy, model_data, top_k_sum

__all__ = ["WorstCaseLoss", "worst_case_loss", "LOSSES"]

LOSSES = ("squared_error", "cross_entropy")


@dataclass(frozen=True)
class WorstCaseLoss:
    """Per-sample nominal loss and its worst-case upper bound (float64).

    Attributes:
        nominal: ``(batch,)`` loss at ``u0``.
        bound: ``(batch,)`` upper bound over the set.
        sigma_y: ``(q,)`` output radius (the bound also adds the solver-error term ``y_err`` of
            :class:`~idlkit.robust.BoxBounds`).
        loss: the loss name.
        kind: ``"refined"`` (the box bound of §4.4) or ``"rho"`` (the single-radius bound).
        rho: ``(batch,)`` the state radius used by ``"rho"`` (solver error included), else ``None``.
    """

    nominal: Tensor
    bound: Tensor
    sigma_y: Tensor
    loss: str
    kind: str = "refined"
    rho: Tensor | None = None


def _targets(y: Tensor, batch: int, q: int, loss: str) -> Tensor:
    y = torch.as_tensor(y)
    if loss == "cross_entropy" and not y.is_floating_point():
        if y.dim() == 0 and batch == 1:  # one label for one sample (a 1-D input)
            y = y.reshape(1)
        if y.shape != (batch,):
            raise ShapeError(f"integer labels must have shape ({batch},), got {tuple(y.shape)}")
        if bool(((y < 0) | (y >= q)).any()):
            raise InputError(f"labels must lie in [0, {q}), got min {int(y.min())}, max {int(y.max())}")
        return torch.nn.functional.one_hot(y.long(), q).to(torch.float64)
    y = y.detach().to("cpu", torch.float64).reshape(-1, q) if y.numel() % q == 0 else y
    if y.shape != (batch, q):
        raise ShapeError(f"targets must have shape ({batch}, {q}), got {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise InputError("targets contain NaN or Inf")
    if loss == "cross_entropy" and (bool((y < 0).any()) or
                                    bool(((y.sum(1) - 1).abs() > 1e-9).any())):
        raise InputError("cross-entropy targets must be probability vectors (y >= 0, sum 1) or "
                         "integer labels")
    return y


def _rho(model: object, U: np.ndarray, sigma_u: object, k: int | None, measure: str
         ) -> tuple[Tensor, Tensor, Tensor]:
    """Nominal ``(x0, y0)`` (float64 copy of the model) and the per-sample state radius ``rho``
    (``(batch,)``, solver error included) of the measure (module docstring)."""
    from .bounds import residual_bound, solution_error, state_box_bound, state_linf_bound
    from .lipschitz import contraction

    Ut = torch.from_numpy(U)
    m64 = float64_copy(model)
    with torch.no_grad():
        x0 = m64.equilibrium(Ut)
        y0 = m64(Ut)
    d = model_data(model)
    if d.n == 0:
        return x0, y0, torch.zeros(U.shape[0], dtype=torch.float64)
    if measure == "best":
        found = []
        for m in ("inf", "mu", "box"):
            try:
                found.append(_rho(model, U, sigma_u, k, m)[2])
            except (WellPosednessError, ConfigurationError):
                pass
        if not found:
            raise WellPosednessError("no state radius applies for the rho bound: gamma ||A||_inf, "
                                     "gamma mu_inf(A) and lambda_pf(Gamma N(A)) are all >= 1")
        return x0, y0, torch.stack(found).min(dim=0).values
    if measure == "box":
        sx = state_box_bound(model, sigma_u, k).numpy()
        err = solution_error(model, Ut, x0)
        rho = (sx[None, :] + err).max(axis=1)
    else:
        base = state_linf_bound(model, sigma_u, k, measure)
        _, denom = contraction(d, measure)
        err = residual_bound(model, Ut, x0).max(axis=1) / denom
        rho = base + err
    rho = rho * (1 + 8 * np.finfo(np.float64).eps)
    return x0, y0, torch.from_numpy(np.ascontiguousarray(rho))


def _rho_bound(model: object, U: np.ndarray, Y: Tensor, sigma_u: object, k: int | None, loss: str,
               measure: str) -> WorstCaseLoss:
    d = model_data(model)
    _, y0, rho = _rho(model, U, sigma_u, k, measure)
    s = as_sigma(sigma_u, d.p)
    absC, absD = abs(d.C), abs(d.D)
    c1 = torch.from_numpy(np.asarray(absC.sum(axis=1)).reshape(-1))  # (q,) ||c_i||_1
    dsig = dense(absD) * s[None, :]                                   # (q, p) |d_ij| sigma_j
    dterm = dsig.sum(axis=1) if k is None else top_k_sum(dsig, k)
    radius = rho[:, None] * c1[None, :] + torch.from_numpy(np.asarray(dterm))[None, :]  # (batch, q)
    if loss == "squared_error":
        nominal = ((Y - y0) ** 2).sum(1)
        bound = (((Y - y0).abs() + radius) ** 2).sum(1)
    else:
        Cd, Dd = dense(d.C), dense(d.D)
        Yn = Y.numpy()
        cty = torch.from_numpy(np.abs(Yn @ Cd).sum(axis=1))             # ||C^T y||_1
        dty = np.abs(Yn @ Dd) * s[None, :]                               # |D^T y| sigma_u
        dty = torch.from_numpy(dty.sum(axis=1) if k is None else top_k_sum(dty, k))
        nominal = torch.logsumexp(y0, 1) - (Y * y0).sum(1)
        bound = torch.logsumexp(y0 + radius, 1) - (Y * y0).sum(1) + rho * cty + dty
    bound = bound * (1 + 1e-12) + 1e-300  # outward rounding
    sig_y = torch.from_numpy(np.asarray(dterm)) + float(rho.min()) * c1 if rho.numel() else c1 * 0
    return WorstCaseLoss(nominal, bound, sig_y, loss, kind="rho", rho=rho)


def worst_case_loss(model: object, u0: Tensor, y: Tensor, sigma_u: object,
                    loss: str = "squared_error", k: int | None = None, bound: str = "refined",
                    rho_measure: str = "inf") -> WorstCaseLoss:
    """Upper bound of ``max_{u in U} L(y, yhat(u))`` around each row of ``u0`` (§4.4).

    Args:
        model: an :class:`~idlkit.ImplicitModel`.
        u0: ``(batch, p)`` nominal inputs.
        y: ``(batch, q)`` targets (for cross entropy probability vectors or ``(batch,)`` integer
            labels).
        sigma_u: input radius (eq. 4.1).
        k: cardinality (eq. 4.2).
        loss: ``"squared_error"`` or ``"cross_entropy"``.
        bound: ``"refined"`` (the box bound, default) or ``"rho"`` (the single-radius bound of
            §4.4; module docstring).
        rho_measure: for ``"rho"``: ``"inf"`` (eq. 4.3, the paper's), ``"mu"``, ``"box"`` or
            ``"best"``.

    Examples:
        >>> model = idlkit.ImplicitModel(4, 8, 3, kappa=0.5, dtype=torch.float64)
        >>> u, y = torch.rand(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
        >>> r = worst_case_loss(model, u, y, 0.1, "cross_entropy", bound="rho")
        >>> bool((r.bound >= worst_case_loss(model, u, y, 0.1, "cross_entropy").bound).all())
        True
    """
    check_choice("loss", loss, LOSSES)
    check_choice("bound", bound, ("refined", "rho"))
    check_choice("rho_measure", rho_measure, ("inf", "mu", "box", "best"))
    from .bounds import box_bounds

    if bound == "rho":
        p, q = model.in_features, model.out_features  # type: ignore[attr-defined]
        U = as_batch64(u0, p, "u0")
        k = check_k(k, p)
        as_sigma(sigma_u, p)
        return _rho_bound(model, U, _targets(y, U.shape[0], q, loss), sigma_u, k, loss, rho_measure)

    p, q = model.in_features, model.out_features  # type: ignore[attr-defined]
    U = as_batch64(u0, p, "u0")
    bb = box_bounds(model, torch.from_numpy(U), sigma_u, k)
    Y = _targets(y, U.shape[0], q, loss)
    y0 = bb.y0
    sy = bb.sigma_y if bb.y_err is None else bb.sigma_y + bb.y_err  # (batch, q) with the solver error
    if loss == "squared_error":
        nominal = ((Y - y0) ** 2).sum(1)
        bound = (((Y - y0).abs() + sy) ** 2).sum(1)
    else:
        nominal = torch.logsumexp(y0, 1) - (Y * y0).sum(1)
        bound = torch.logsumexp(y0 + sy, 1) - (Y * y0).sum(1) + (Y * sy).sum(1)
    bound = bound * (1 + 1e-12) + 1e-300  # outward rounding
    return WorstCaseLoss(nominal, bound, bb.sigma_y, loss)
