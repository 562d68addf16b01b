"""The alternating block scheme of paper 000 §7.1: a projected-gradient block update of
the state parameters (A, B, b), then the output parameters (C, D, d) by least squares.

Given the states ``X`` (fixed once (A, B, b) are), the prediction ``y = C x + D u + d``
is linear in (C, D, d), so the squared-error minimiser is a linear least-squares
problem in the features ``(x, u, 1)`` (solved here in float64, with optional ridge).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._validation import check_positive
from ..errors import ShapeError
from .trainer import Trainer, TrainResult, _as_tensors

__all__ = ["fit_output_layer", "alternating_fit", "AlternatingResult"]


@dataclass(frozen=True)
class AlternatingResult:
    """Training RMSE after each block, and the gradient phase's history.

    Attributes:
        rmse_after_state_block: training RMSE after the gradient phase on ``(A, B, b)``.
        rmse_after_output_block: training RMSE after the least-squares fit of ``(C, D, d)``.
        state_block: the gradient phase's :class:`~idlkit.train.TrainResult`.
    """

    rmse_after_state_block: float
    rmse_after_output_block: float
    state_block: TrainResult


@contextlib.contextmanager
def _only(model: nn.Module, names: tuple[str, ...]) -> Iterator[None]:
    """Train only the parameters ``names`` inside the block; restore afterwards."""
    saved = {k: p.requires_grad for k, p in model.named_parameters()}
    try:
        for k, p in model.named_parameters():
            p.requires_grad_(k in names)
        yield
    finally:
        for k, p in model.named_parameters():
            p.requires_grad_(saved[k])


def fit_output_layer(model: nn.Module, U: Tensor, Y: Tensor, ridge: float = 0.0) -> float:
    """Set (C, D, d) to the least-squares fit of ``Y`` on ``(x(u), u, 1)``; returns the RMSE.

    ``min ||Y - X C^T - U D^T - 1 d^T||_F^2 + ridge ||(C, D)||_F^2``, solved in float64
    (the states are computed by the model's solver; ``d`` is fitted only with a bias).

    Args:
        model: an :class:`~idlkit.ImplicitModel`; its ``C``, ``D`` (``d``) are overwritten.
        U: ``(m, p)`` inputs.
        Y: ``(m, q)`` targets.
        ridge: ridge weight, ``>= 0``.

    Returns:
        The training RMSE after the fit, a float.

    Raises:
        ShapeError: ``U`` and ``Y`` disagree in rows or ``Y`` has another width than ``q``.
        InputError: a negative ``ridge``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = idlkit.ImplicitModel(3, 5, 2, bias=True, kappa=0.5, dtype=torch.float64)
        >>> U = torch.randn(20, 3, generator=g, dtype=torch.float64)
        >>> Y = torch.randn(20, 2, generator=g, dtype=torch.float64)
        >>> rmse = fit_output_layer(model, U, Y)
        >>> X = model.equilibrium(U).detach()
        >>> F = torch.cat([X, U, torch.ones(20, 1, dtype=torch.float64)], dim=1)   # (x(u), u, 1)
        >>> W = torch.linalg.lstsq(F, Y).solution                                    # least squares
        >>> ref = float(((F @ W - Y) ** 2).mean().sqrt())
        >>> abs(rmse - ref) < 1e-8, model(U).shape
        (True, torch.Size([20, 2]))
        >>> bool(torch.allclose(model(U), F @ W, atol=1e-8))   # the fitted C, D, d predict F W
        True
    """
    ridge = check_positive("ridge", ridge, allow_zero=True, example=0.0)
    Y = Y.reshape(-1, 1) if Y.dim() == 1 else Y
    if Y.shape != (U.shape[0], model.out_features):
        raise ShapeError(f"targets must have shape ({U.shape[0]}, {model.out_features}), got "
                         f"{tuple(Y.shape)}")
    with torch.no_grad():
        U = U.to(model.A.dtype)
        X = model.equilibrium(U)
        cols = [X, U] + ([torch.ones_like(U[:, :1])] if model.d is not None else [])
        F = torch.cat(cols, dim=1).to(torch.float64)
        T = Y.to(torch.float64)
        if ridge > 0:
            k = F.shape[1]
            reg = torch.eye(k, dtype=torch.float64) * ridge ** 0.5
            if model.d is not None:
                reg[-1, -1] = 0.0  # the intercept is not penalised
            W = torch.linalg.lstsq(torch.cat([F, reg]), torch.cat([T, T.new_zeros(k, T.shape[1])])
                                   ).solution
        else:
            W = torch.linalg.lstsq(F, T, driver="gelsd").solution
        n, p = model.hidden, model.in_features
        model.C.copy_(W[:n].t().to(model.C.dtype))
        model.D.copy_(W[n:n + p].t().to(model.D.dtype))
        if model.d is not None:
            model.d.copy_(W[n + p].to(model.d.dtype))
        return float(((F @ W - T) ** 2).mean().sqrt())


def alternating_fit(model: nn.Module, train_data: object, state_trainer: Trainer,
                    ridge: float = 0.0) -> AlternatingResult:
    """Paper 000 §7.1: ``state_trainer`` updates (A, B, b) only (projected gradient with the
    implicit gradients of App. G, squared error), then (C, D, d) by least squares.

    Args:
        model: an :class:`~idlkit.ImplicitModel`, trained in place.
        train_data: ``(U, Y)`` with ``U (m, p)`` and ``Y (m, q)``.
        state_trainer: the :class:`Trainer` of the (A, B, b) block.
        ridge: ridge weight of the output least squares, ``>= 0``.

    Returns:
        :class:`AlternatingResult` with the RMSE after each block.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5)
        >>> U = torch.randn(32, 3); Y = torch.randn(32, 2)
        >>> res = alternating_fit(model, (U, Y), Trainer(loss="squared_error", epochs=2, batch_size=16))
        >>> len(res.state_block.history), res.rmse_after_output_block <= res.rmse_after_state_block + 1e-6
        (2, True)
    """
    U, Y = _as_tensors(train_data, "train_data")
    U = U.to(model.A.dtype)
    Y = (Y.reshape(-1, 1) if Y.dim() == 1 else Y).to(model.A.dtype)
    with _only(model, ("A", "B", "b")):
        res = state_trainer.fit(model, (U, Y))
    with torch.no_grad():
        rmse1 = float(((model(U) - Y) ** 2).mean().sqrt())
    rmse2 = fit_output_layer(model, U, Y, ridge)
    return AlternatingResult(rmse1, rmse2, res)
