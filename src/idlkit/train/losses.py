"""Losses of the training problem (paper 000 §6, eq. 6.2), batch-first.

Both take the prediction ``Y_hat`` of shape ``(batch, q)``; ``reduction`` is
``"mean"`` (over the batch, the default, as torch's losses), ``"sum"`` (the papers'
sums over data points) or ``"none"`` (one value per sample).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_choice
from ..errors import InputError, ShapeError

__all__ = ["squared_error", "cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def _check(Y_hat: Tensor, reduction: str) -> None:
    check_choice("reduction", reduction, _REDUCTIONS)
    if not isinstance(Y_hat, Tensor) or Y_hat.dim() != 2:
        raise ShapeError(f"predictions must be a (batch, q) tensor, got "
                         f"{tuple(getattr(Y_hat, 'shape', ())) or type(Y_hat).__name__}")


def squared_error(Y_hat: Tensor, Y: Tensor, reduction: str = "mean") -> Tensor:
    """``L(Y, Y_hat) = 1/2 ||Y - Y_hat||_F^2`` (paper 000 §6), per sample ``1/2 ||y - y_hat||_2^2``.

    Args:
        Y_hat: ``(batch, q)`` predictions.
        Y: ``(batch, q)`` targets.
        reduction: ``"mean"`` (over the batch), ``"sum"`` or ``"none"`` (``(batch,)``).

    Returns:
        A scalar tensor (``(batch,)`` for ``"none"``).

    Raises:
        ShapeError: ``Y`` and ``Y_hat`` of different shapes.

    Examples:
        >>> Y_hat, Y = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
        >>> squared_error(Y_hat, Y, reduction="none")    # 1/2 ||y - y_hat||^2 per sample
        tensor([2., 1.])
        >>> squared_error(Y_hat, Y)
        tensor(1.5000)
    """
    _check(Y_hat, reduction)
    Y = Y.reshape(Y_hat.shape) if Y.dim() == 1 and Y_hat.shape[1] == 1 else Y
    if Y.shape != Y_hat.shape:
        raise ShapeError(f"targets have shape {tuple(Y.shape)}, predictions {tuple(Y_hat.shape)}")
    return _reduce(0.5 * ((Y_hat - Y) ** 2).sum(dim=1), reduction)


def cross_entropy(Y_hat: Tensor, Y: Tensor, reduction: str = "mean") -> Tensor:
    """Soft-max cross entropy (eq. 6.2): ``log(1^T exp(y_hat)) - y^T y_hat`` per sample.

    ``Y`` holds integer class labels ``(batch,)`` in ``[0, q)`` or probability rows
    ``(batch, q)`` (nonnegative, summing to 1), as in the paper. Computed stably with
    ``logsumexp``.

    Args:
        Y_hat: ``(batch, q)`` logits.
        Y: ``(batch,)`` integer labels in ``[0, q)`` or ``(batch, q)`` probability rows.
        reduction: ``"mean"`` (over the batch), ``"sum"`` or ``"none"`` (``(batch,)``).

    Returns:
        A scalar tensor (``(batch,)`` for ``"none"``).

    Raises:
        ShapeError: ``Y`` of a shape other than ``(batch,)`` or ``(batch, q)``.
        InputError: labels out of range or rows that are not probabilities.

    Examples:
        >>> Y_hat = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
        >>> Y = torch.tensor([0, 2])
        >>> cross_entropy(Y_hat, Y, reduction="none").shape
        torch.Size([2])
        >>> torch.allclose(cross_entropy(Y_hat, Y), torch.nn.functional.cross_entropy(Y_hat, Y))
        True
    """
    _check(Y_hat, reduction)
    q = Y_hat.shape[1]
    if Y.dim() == 1 and not Y.is_floating_point():
        if Y.shape[0] != Y_hat.shape[0]:
            raise ShapeError(f"{Y.shape[0]} labels for {Y_hat.shape[0]} predictions")
        if Y.numel():
            lo, hi = torch.aminmax(Y)
            if int(lo) < 0 or int(hi) >= q:
                bad = int(Y[(Y < 0) | (Y >= q)][0])
                raise InputError(f"label {bad} is out of range for {q} classes (labels must lie "
                                 f"in [0, {q - 1}])")
        # the same formula, lse - y_hat[label], as one fused kernel with a fused backward
        return torch.nn.functional.cross_entropy(Y_hat, Y.long(), reduction=reduction)
    lse = torch.logsumexp(Y_hat, dim=1)
    if Y.shape != Y_hat.shape:
        raise ShapeError(f"targets must be labels (batch,) or probabilities {tuple(Y_hat.shape)}, "
                         f"got {tuple(Y.shape)}")
    if bool((Y < 0).any()) or not torch.allclose(Y.sum(dim=1), torch.ones_like(Y[:, 0]),
                                                 atol=1e-6, rtol=0):
        raise InputError("probability targets must be nonnegative rows summing to 1")
    return _reduce(lse * Y.sum(dim=1) - (Y * Y_hat).sum(dim=1), reduction)
