"""Worst-case losses over an input box (paper 000 §4.4).

With ``|y(u) - y(u0)| <= sigma_y`` (``sigma_y = S sigma_u``, Thm 4.3/4.4; the ``k``-sparse form
for ``U_card``):

* squared error: ``max_{|yh - yh0| <= sigma_y} ||y - yh||_2^2 = || |y - yh0| + sigma_y ||_2^2`` (exact
  over the output box);
* cross entropy ``L(y, yh) = log sum_i exp(yh_i) - y^T yh`` (``y >= 0``, ``1^T y = 1``):
  ``L_wc <= log sum_i exp(yh0_i + sigma_y,i) - y^T yh0 + y^T sigma_y`` (the refined bound of §4.4;
  log-sum-exp increases in every entry and ``y >= 0``).

Both are upper bounds of the loss for every input of the set (float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._validation import check_choice
from ..errors import InputError, ShapeError
from ._model import as_batch64

__all__ = ["WorstCaseLoss", "worst_case_loss", "LOSSES"]

LOSSES = ("squared_error", "cross_entropy")


@dataclass(frozen=True)
class WorstCaseLoss:
    """Per-sample nominal loss and its worst-case upper bound (float64).

    Attributes:
        nominal: ``(batch,)`` loss at ``u0``; ``bound``: ``(batch,)`` upper bound over the set.
        sigma_y: ``(q,)`` output radius (the bound also adds the solver-error term ``y_err`` of
            :class:`~idlkit.robust.BoxBounds`); ``loss``: the loss name.
    """

    nominal: Tensor
    bound: Tensor
    sigma_y: Tensor
    loss: str


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


def worst_case_loss(model: object, u0: Tensor, y: Tensor, sigma_u: object,
                    loss: str = "squared_error", k: int | None = None) -> WorstCaseLoss:
    """Upper bound of ``max_{u in U} L(y, yhat(u))`` around each row of ``u0`` (§4.4).

    Args:
        u0: ``(batch, p)`` nominal inputs; ``y``: ``(batch, q)`` targets (for cross entropy
            probability vectors or ``(batch,)`` integer labels).
        sigma_u: input radius (eq. 4.1); ``k``: cardinality (eq. 4.2).
        loss: ``"squared_error"`` or ``"cross_entropy"``.
    """
    check_choice("loss", loss, LOSSES)
    from .bounds import box_bounds

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
