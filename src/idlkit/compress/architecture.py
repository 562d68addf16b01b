"""Architecture optimisation: drive a model to fewer states, then remove them (paper 001 §6.4,
paper 000 §5.1-5.2).

A state ``i`` is unused once its column of ``N = (A; C)`` is zero (§5.2 case (b)); the group
penalty ``sum_i ||N e_i||_2`` (paper 000 §5, :func:`idlkit.train.group_columns`) favours
exactly that. :func:`shrink` trains with it by proximal gradient: after every optimizer step the
columns are shrunk by the group soft threshold (the prox of ``step * weight * ||.||_2``,
``N e_i <- (1 - step weight / ||N e_i||)_+ N e_i``), so whole columns reach exact zeros instead
of hovering near them; the well-posedness projection follows (a row-wise l1-ball projection
keeps zeros at zero). :func:`~idlkit.compress.prune_states` then removes the unused states and
whatever only fed them, exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validation import check_int, check_scalar
from ..errors import ConfigurationError
from ..model import ImplicitModel
from .prune import PruneReport, _check_model, prune_states

__all__ = ["ShrinkReport", "shrink", "column_group_prox_"]


@dataclass(frozen=True)
class ShrinkReport:
    """What :func:`shrink` did.

    Attributes:
        n_before: state size before training.
        n_after: state size after the removal.
        zero_columns: states whose column of ``(A; C)`` the training drove to zero.
        final_loss: the training loss of the last epoch.
        prune: the :class:`PruneReport` of the removal.
        bound: with ``u``, the certified :class:`~idlkit.compress.CompressionBound` of the trained
            model against the model as it was given (the smaller model's outputs equal the
            trained one's), else None.
    """

    n_before: int
    n_after: int
    zero_columns: int
    final_loss: float
    prune: PruneReport
    bound: object | None = None


def column_group_prox_(model: ImplicitModel, threshold: float) -> int:
    """In place: ``N e_i <- (1 - threshold / ||N e_i||_2)_+ N e_i`` for the columns of
    ``N = (A; C)``; returns the number of zero columns afterwards.

    Args:
        model: the :class:`~idlkit.ImplicitModel` whose ``A`` and ``C`` are shrunk in place.
        threshold: the prox threshold ``t >= 0`` (step size times the group-lasso weight).

    Returns:
        The number of zero columns of ``(A; C)`` afterwards.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 4, 2)
        >>> with torch.no_grad():
        ...     _ = model.A.zero_(); _ = model.C.fill_(0.01)       # tiny columns of N = (A; C)
        >>> column_group_prox_(model, 0.1)                       # columns set to zero
        4
        >>> model.C.detach().abs().max().item()
        0.0
    """
    with torch.no_grad():
        A, C = model.A, model.C
        norms = torch.sqrt((A * A).sum(0) + (C * C).sum(0))
        scale = torch.clamp(1.0 - threshold / torch.clamp(norms, min=torch.finfo(norms.dtype).tiny), min=0.0)
        A.mul_(scale[None, :])
        C.mul_(scale[None, :])
        return int(((norms * scale) == 0).sum())


def shrink(model: ImplicitModel, data: tuple[Tensor, Tensor], *, weight: float = 1e-3, epochs: int = 10,
           lr: float = 1e-3, batch_size: int = 64, loss: str = "cross_entropy", seed: int = 0,
           u: Tensor | None = None) -> tuple[ImplicitModel, ShrinkReport]:
    """Train ``model`` in place with the state-group penalty by proximal Adam steps, then remove
    the states it switched off (module docstring). Returns ``(smaller model, report)``.

    Args:
        model: a dense :class:`~idlkit.ImplicitModel` (trained or not).
        data: ``(X, y)`` for :class:`~idlkit.train.Trainer`.
        weight: the penalty weight against the mean loss; each step's group threshold is
            ``lr * weight`` (with Adam's normalised steps, ``weight`` of order 1 starts removing
            states); larger gives fewer states.
        epochs: passes over the data.
        lr: Adam's step size.
        batch_size: mini-batch size.
        loss: the training loss (``"cross_entropy"`` or ``"squared_error"``).
        seed: seed of the mini-batch order.
        u: inputs ``(batch, p)``: the report then carries the certified bound on how far the
            outputs moved from the model as given.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 6, 2)
        >>> U = torch.randn(32, 3); Y = torch.randint(0, 2, (32,))
        >>> small, rep = shrink(model, (U, Y), weight=0.5, epochs=2, lr=0.05)
        >>> rep.n_before, small.hidden == rep.n_after, small(U).shape
        (6, True, torch.Size([32, 2]))
    """
    from ..train import Trainer

    model = _check_model(model, "shrink")
    if model.sparse:
        raise ConfigurationError("shrink trains dense parameters; the model's matrices are sparse (frozen "
                                 "CSR buffers): use prune_states on it directly, or a dense model")
    w = float(check_scalar("weight", weight, low=0.0, example=1e-3))
    step = float(check_scalar("lr", lr, low=0.0, low_inclusive=False, example=1e-3))
    check_int("epochs", epochs, 1)
    n_before = model.hidden
    original = copy.deepcopy(model) if u is not None else None

    def optimizer(params: object) -> torch.optim.Optimizer:
        opt = torch.optim.Adam(params, lr=step)  # type: ignore[arg-type]
        opt.register_step_post_hook(lambda *_: column_group_prox_(model, step * w))
        return opt

    result = Trainer(optimizer=optimizer, lr=step, epochs=epochs, batch_size=batch_size, loss=loss, seed=seed,
                     project=True).fit(model, data)
    zero = column_group_prox_(model, 0.0)
    bound = None
    if original is not None:
        from .magnitude import compression_bound

        bound = compression_bound(original, model, u)
    small, rep = prune_states(model, split=False)
    last = result.history[-1].train_loss if result.history else float("nan")
    return small, ShrinkReport(n_before=n_before, n_after=small.hidden, zero_columns=zero,
                               final_loss=float(last), prune=rep, bound=bound)
