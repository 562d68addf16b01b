"""Adversarial training: projected-gradient training on attacked inputs (issue 17's baseline for the
robust training of paper 001 §5).

Robust training asks for ``min_theta E max_{|u' - u|_inf <= epsilon} L(y(u'; theta), y)`` (the
worst-case loss of paper 000 §4.4 over the box (4.1)). The certified methods of paper 001 §5
(:func:`idlkit.train.robust_fit`, methods ``"counterpart"``, ``"lp"``, ``"recourse"``) minimise a
convex *upper* bound of the inner maximum; adversarial training (Goodfellow et al. 2015, Madry et
al. 2018) minimises a *lower* bound: the loss at the point an attack of
:mod:`idlkit.robust.attacks` finds. It certifies nothing, but it is the empirical baseline every
certified method is compared with.

Each mini-batch of :class:`~idlkit.train.Trainer` (projected gradient, problem 6.4: ``A`` is
projected back onto the model's well-posedness set after every step) has a fraction ``mix`` of
its samples replaced by their adversarial inputs (the attack run against the current weights),
so the expected objective is ``(1 - mix) L(u) + mix L(u_adv)``: ``mix = 0.5`` is Goodfellow et
al.'s equal weighting, ``mix = 1`` Madry et al.'s pure min-max.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_positive, check_probability
from ..errors import ConfigurationError, InputError, ShapeError
from .trainer import Trainer, TrainResult

__all__ = ["adversarial_fit", "ADVERSARIAL_ATTACKS"]

#: attacks :func:`adversarial_fit` trains on (names of :data:`idlkit.robust.ATTACKS`).
ADVERSARIAL_ATTACKS = ("fgsm", "pgd", "lp")

_FIT_OPTIONS = ("val_data", "checkpoint", "resume")


def _attacker(attack: str, epsilon: float, steps: int, clip: tuple[float, float] | None,
              generator: torch.Generator) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    from ..robust import Budget, fgsm_attack, lp_margin_attack, pgd_attack

    budget = Budget(epsilon=epsilon, clip=clip)

    def run(model: nn.Module, U: Tensor, Y: Tensor) -> Tensor:
        if attack == "pgd":
            return pgd_attack(model, U, Y, budget, steps=steps, generator=generator).u_adv
        if attack == "fgsm":
            return fgsm_attack(model, U, Y, budget).u_adv
        return lp_margin_attack(model, U, Y, budget).u_adv

    return run


def adversarial_fit(model: nn.Module, U: Tensor, Y: Tensor, epsilon: float, *, attack: str = "pgd",
                    steps: int = 10, epochs: int = 10, lr: float = 1e-3, batch_size: int = 128,
                    mix: float = 0.5, generator: torch.Generator | None = None,
                    clip: tuple[float, float] | None = None, **trainer_options: object) -> TrainResult:
    """Train ``model`` in place on ``(U, Y)`` with adversarial inputs (module docstring).

    Args:
        model: a classifier (:class:`~idlkit.ImplicitModel` or any ``nn.Module`` the attacks take).
        U: inputs ``(m, p)``.
        Y: integer class labels ``(m,)``.
        epsilon: l_inf radius of the attack, ``>= 0`` (``0``: standard training on the clean data).
        attack: ``"pgd"`` (:func:`~idlkit.robust.pgd_attack` with ``steps`` steps from a random start),
            ``"fgsm"`` (:func:`~idlkit.robust.fgsm_attack`) or ``"lp"``
            (:func:`~idlkit.robust.lp_margin_attack`: ``q - 1`` LPs of Thm 4.5 per attacked sample,
            ReLU models only; seconds per batch even for small models, so meant for tiny ones).
        steps: PGD steps (ignored by the other attacks).
        epochs: as :class:`~idlkit.train.Trainer`.
        lr: as :class:`~idlkit.train.Trainer`.
        batch_size: as :class:`~idlkit.train.Trainer`.
        mix: fraction of every mini-batch replaced by its adversarial inputs, in ``[0, 1]``.
        generator: the PGD random starts (default: a generator seeded with the Trainer's ``seed``,
            so a run is reproducible without global seeding).
        clip: the valid input range ``(lo, hi)`` the attacked inputs stay in (e.g. ``(0, 1)`` for
            images), as :class:`~idlkit.robust.Budget`.
        trainer_options: further :class:`~idlkit.train.Trainer` settings (``optimizer``,
            ``penalties``, ``schedule``, ``seed``, ``dtype``, ``project``, ``log``, ...); ``val_data``,
            ``checkpoint`` and ``resume`` go to :meth:`~idlkit.train.Trainer.fit`.

    Returns: the :class:`~idlkit.train.TrainResult` of the run (``train_loss`` is the objective on
    the mixed batches). The model keeps its declared well-posedness (projected after every step).

    Examples:
        >>> model = idlkit.ImplicitModel(64, 20, 10)
        >>> U = torch.rand(256, 64); Y = torch.randint(0, 10, (256,))
        >>> r = adversarial_fit(model, U, Y, 0.05, steps=3, epochs=1, clip=(0.0, 1.0))
        >>> len(r.history), model.certificate().holds["inf"]
        (1, True)
    """
    epsilon = check_positive("epsilon", epsilon, allow_zero=True, example=0.1,
                             why="the l_inf radius of the attack")
    check_choice("attack", attack, ADVERSARIAL_ATTACKS)
    steps = check_int("steps", steps, 1)
    mix = check_probability("mix", mix, example=0.5)
    if "transform" in trainer_options:
        raise ConfigurationError("adversarial_fit sets the Trainer's transform itself (the attack); "
                                 "do not pass transform")
    if not isinstance(U, Tensor) or not isinstance(Y, Tensor):
        raise InputError(f"U and Y must be torch tensors, got {type(U).__name__} and {type(Y).__name__}")
    if Y.dim() != 1 or Y.is_floating_point() or Y.dtype == torch.bool:
        raise InputError(f"Y must hold integer class labels of shape (m,), got {Y.dtype} {tuple(Y.shape)}: "
                         f"adversarial training attacks a classifier")
    if U.dim() != 2 or U.shape[0] != Y.shape[0]:
        raise ShapeError(f"U must be (m, p) with one row per label ({Y.shape[0]}), got {tuple(U.shape)}")
    fit_kw = {k: trainer_options.pop(k) for k in _FIT_OPTIONS if k in trainer_options}

    def transform(m: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
        k = int(round(mix * xb.shape[0]))
        if k == 0 or epsilon == 0:
            return xb
        # the batch is already in random order (Trainer's permutation): attack its first k samples
        adv = run(m, xb[:k], yb[:k]).to(xb.dtype)
        return torch.cat([adv, xb[k:]])

    trainer = Trainer(epochs=epochs, lr=lr, batch_size=batch_size, transform=transform,
                      **trainer_options)  # type: ignore[arg-type]
    if generator is None:
        generator = torch.Generator().manual_seed(trainer.seed)
    run = _attacker(attack, epsilon, steps, clip, generator)
    return trainer.fit(model, (U, Y), **fit_kw)  # type: ignore[arg-type]
