"""Certified accuracy: the fraction of samples whose prediction no input in the perturbation set
can change (paper 001 §5, paper 000 §4).

A sample ``(u0, y)`` is certified when the certified output bounds over ``{u : |u - u0| <=
sigma_u}`` (eq. 4.1; eq. 4.2 with ``k``) of :func:`idlkit.robust.output_bounds` separate the true
class from every other: ``lower_y > max_{j != y} upper_j``. Then for every ``u`` in the set
``y_y(u) >= lower_y > upper_j >= y_j(u)``, so ``argmax y(u) = y`` (no tie is possible): sound for
any sound bound method. It compares intervals of the outputs, not bounds on the margins
``y_y - y_j`` themselves, so it certifies no more than a margin-specification method would
(a tighter one is the LP / CROWN bound of each ``y_y - y_j``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._validation import check_int
from ..errors import ShapeError
from .certify import BOUND_METHODS, output_bounds

__all__ = ["CertifiedAccuracy", "certified_accuracy"]


@dataclass(frozen=True)
class CertifiedAccuracy:
    """Result of :func:`certified_accuracy`.

    Attributes:
        accuracy: clean accuracy (prediction at ``u0``).
        certified: fraction of samples certified (each is also correct).
        certified_mask: ``(m,)`` which samples are certified.
        correct_mask: ``(m,)`` which samples are correct.
        method: the bound method used (as :func:`output_bounds` reports it).
    """

    accuracy: float
    certified: float
    certified_mask: Tensor
    correct_mask: Tensor
    method: str


def certified_accuracy(model: object, U: Tensor, Y: Tensor, sigma_u: object, *, method: str = "box",
                       k: int | None = None, clip: tuple[float, float] | None = None,
                       batch_size: int = 256, **bound_kwargs: object) -> CertifiedAccuracy:
    """Certified accuracy of ``model`` on ``(U, Y)`` under ``|u - u0| <= sigma_u`` (module
    docstring); ``method`` is any of :data:`~idlkit.robust.certify.BOUND_METHODS` (``"box"``
    (Thm 4.1-4.4), ``"lp"``, ``"ibp"``, ``"crown"``, ``"alpha-crown"``, ``"best"``), the inputs
    are bounded in batches of ``batch_size``.

    Args:
        model: an :class:`~idlkit.ImplicitModel` (or a model a bound method accepts).
        U: ``(batch, p)`` nominal inputs.
        Y: ``(batch,)`` integer labels.
        sigma_u: input radius, scalar or ``(p,)``, ``>= 0`` (eq. 4.1).
        method: the bound: one of :data:`~idlkit.robust.certify.BOUND_METHODS`; default ``"box"``.
        k: at most ``k`` inputs perturbed (eq. 4.2); ``None`` for the box set.
        clip: valid input range ``(lo, hi)`` intersected with the set; ``None`` for none.
        batch_size: rows bounded at a time (memory), ``>= 1``.
        **bound_kwargs: passed to the bound method (e.g. ``time_budget`` of :func:`output_bounds`).

    Returns:
        :class:`CertifiedAccuracy` with the certified and the clean accuracy.

    Raises:
        ShapeError: ``U`` and ``Y`` disagree in batch size, or ``Y`` is not ``(batch,)``.
        ConfigurationError: an unknown ``method`` or a keyword the method does not take.
        InputError: ``batch_size < 1`` or a negative ``sigma_u``.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> model = idlkit.convert.from_torch(net, torch.zeros(1, 4))
        >>> U = torch.randn(16, 4); Y = model(U).argmax(1)
        >>> r = certified_accuracy(model, U, Y, 0.0, method="ibp")
        >>> r.accuracy, r.certified >= 0.9
        (1.0, True)
    """
    if not isinstance(U, Tensor) or not isinstance(Y, Tensor):
        raise ShapeError(f"U and Y must be tensors, got {type(U).__name__} and {type(Y).__name__}")
    if Y.dim() != 1 or U.shape[0] != Y.shape[0] or Y.is_floating_point():
        raise ShapeError(f"Y must be (m,) integer class labels matching U's {U.shape[0]} samples; got "
                         f"{tuple(Y.shape)} {Y.dtype}")
    check_int("batch_size", batch_size, 1)
    q = int(model.C.shape[0])  # type: ignore[attr-defined]
    if Y.numel() and (int(Y.min()) < 0 or int(Y.max()) >= q):
        raise ShapeError(f"labels must lie in [0, {q}) (the model has {q} outputs); got {int(Y.min())} .. "
                         f"{int(Y.max())}")
    if method not in BOUND_METHODS:
        from ..errors import ConfigurationError

        raise ConfigurationError(f"method must be one of {list(BOUND_METHODS)}, got {method!r}")
    certified, correct, used = [], [], method
    for start in range(0, U.shape[0], batch_size):
        u0, y = U[start:start + batch_size], Y[start:start + batch_size].long()
        ob = output_bounds(model, u0, sigma_u, k, method=method, clip=clip, **bound_kwargs)  # type: ignore[arg-type]
        used = ob.method
        lo_y = ob.lower.gather(1, y[:, None])[:, 0]
        others = ob.upper.clone()
        others.scatter_(1, y[:, None], float("-inf"))
        certified.append(lo_y > others.max(dim=1).values)
        with torch.no_grad():
            pred = model(u0.to(model.A.dtype)).argmax(1)  # type: ignore[attr-defined, operator]
        correct.append(pred.cpu() == y.cpu())
    cm = torch.cat(certified) if certified else torch.zeros(0, dtype=torch.bool)
    ok = torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)
    m = max(int(Y.numel()), 1)
    return CertifiedAccuracy(accuracy=float(ok.sum()) / m, certified=float(cm.sum()) / m, certified_mask=cm,
                             correct_mask=ok, method=used)
