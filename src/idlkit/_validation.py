"""Input checks shared by the rooms of idlkit (in the spirit of scikit-learn's ``utils/validation``).

Every check returns the validated value in its plain Python form (``float``, ``int``) and
raises :class:`~idlkit.errors.ConfigurationError` (or the error type a caller passes) whose
message names the argument, the bad value (and its type when the type is wrong) and the
fix, e.g. ``kappa must be a finite number in (0, 1), got 1.5; pass kappa in (0, 1), e.g.
kappa=0.95``. Booleans are never numbers here; numpy scalars (and 0-d numpy arrays and
torch tensors of a real dtype) are accepted; NaN and infinities are rejected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigurationError

__all__ = [
    "all_finite",
    "check_int",
    "check_scalar",
    "check_kappa",
    "check_positive",
    "check_tol",
    "check_probability",
    "check_choice",
]


def all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite (no NaN or Inf).

    A sum propagates NaN and Inf, so a finite sum proves the claim in one reduction
    (``isfinite(t).all()`` builds a boolean tensor first: 10-20x slower on a batch of
    images). Only a non-finite sum, which a huge finite ``t`` may also give by overflow,
    is settled entry by entry.
    """
    if t.numel() == 0 or not t.is_floating_point():
        return True
    t = t.detach()
    if math.isfinite(float(t.sum())):  # one reduction and one read (no boolean tensor)
        return True
    return bool(torch.isfinite(t).all())


def _unwrap(value: object) -> object:
    """A 0-d numpy array or one-element 0-d torch tensor as its Python/numpy scalar."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value[()]
    if isinstance(value, Tensor) and value.dim() == 0 and not value.dtype.is_complex:
        return value.item()
    return value


def _fmt(x: float) -> str:
    return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"


def _interval(low: float | None, high: float | None, low_inclusive: bool,
              high_inclusive: bool) -> str:
    """``in (0, 1]``, ``> 0``, ``>= 1``, ``<= 5`` or ``""`` (unbounded)."""
    if low is not None and high is not None:
        return (f"in {'[' if low_inclusive else '('}{_fmt(low)}, "
                f"{_fmt(high)}{']' if high_inclusive else ')'}")
    if low is not None:
        return f"{'>=' if low_inclusive else '>'} {_fmt(low)}"
    if high is not None:
        return f"{'<=' if high_inclusive else '<'} {_fmt(high)}"
    return ""


def _example(kind: type, low: float | None, high: float | None, low_inclusive: bool,
             high_inclusive: bool) -> float | int:
    """A value inside the interval, for the message's "e.g.": an endpoint when included,
    else a point strictly inside."""
    if kind is int:
        if low is not None:
            return int(math.floor(low)) + (0 if low_inclusive and low == int(low) else 1)
        if high is not None:
            return int(math.ceil(high)) - (0 if high_inclusive and high == int(high) else 1)
        return 1
    if low is not None and high is not None:
        if high_inclusive:
            return high
        if low_inclusive:
            return low
        return low + 0.95 * (high - low) if (low, high) == (0.0, 1.0) else (low + high) / 2
    if low is not None:
        return low if low_inclusive and low != 0 else (low + 1.0 if low >= 0 else low / 2)
    if high is not None:
        return high if high_inclusive else high - 1.0
    return 1.0


def check_scalar(name: str, value: object, *, kind: type = float, low: float | None = None,
                 high: float | None = None, low_inclusive: bool = True,
                 high_inclusive: bool = True, allow_none: bool = False,
                 example: object = None, why: str | None = None,
                 error: type[Exception] = ConfigurationError) -> float | int | None:
    """``value`` validated as a finite real (``kind=float``) or an integer (``kind=int``) in
    the interval given by ``low``/``high`` (``None``: unbounded; ``*_inclusive`` says whether
    the endpoint is allowed), returned as a Python ``float``/``int`` (``None`` passes when
    ``allow_none``).

    Booleans are rejected, numpy scalars accepted (``kind=int`` takes integers only, never
    ``2.0``); NaN and infinities are rejected. The error (``ConfigurationError`` unless
    ``error`` says otherwise) names ``name``, the value (and its type when the type is
    wrong) and the fix, with ``example`` (default: a value inside the interval) and the
    reason ``why`` the bound exists, when given.

    Examples:
        >>> check_scalar("tol", np.float32(1e-3), low=0, low_inclusive=False)
        0.0010000000474974513
    """
    if value is None and allow_none:
        return None
    if kind not in (int, float):
        raise TypeError(f"check_scalar: kind must be int or float, got {kind!r}")
    interval = _interval(low, high, low_inclusive, high_inclusive)
    what = ("an integer" if kind is int else "a finite number") + (f" {interval}" if interval else "")
    if allow_none:
        what += " or None"
    ex = example if example is not None else _example(kind, low, high, low_inclusive, high_inclusive)
    fix = f"pass {name} {interval}, e.g. {name}={ex!r}" if interval else f"pass e.g. {name}={ex!r}"
    tail = f" ({why})" if why else ""
    v = _unwrap(value)
    ok_type = isinstance(v, Integral) if kind is int else isinstance(v, Real)
    if isinstance(v, bool | np.bool_) or not ok_type:
        raise error(f"{name} must be {what}, got {value!r} of type {type(value).__name__}; "
                    f"{fix}{tail}")
    out = int(v) if kind is int else float(v)  # type: ignore[arg-type]
    if not math.isfinite(out):
        raise error(f"{name} must be {what}, got {value!r}; {fix}{tail}")
    too_low = low is not None and (out < low if low_inclusive else out <= low)
    too_high = high is not None and (out > high if high_inclusive else out >= high)
    if too_low or too_high:
        raise error(f"{name} must be {what}, got {value!r}; {fix}{tail}")
    return out


def check_int(name: str, value: object, minimum: int, *, maximum: int | None = None,
              allow_none: bool = False) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (numpy integers accepted, bool and
    floats rejected), else a :class:`~idlkit.errors.ConfigurationError` naming the argument,
    the value (and its type) and the fix. ``None`` passes when ``allow_none``."""
    return check_scalar(name, value, kind=int, low=minimum, high=maximum,  # type: ignore[return-value]
                        allow_none=allow_none)


def check_kappa(value: object, name: str = "kappa", *, high: float | None = 1.0,
                high_inclusive: bool = False, example: float | None = None,
                why: str | None = None) -> float:
    """A contraction factor or l1 budget ``kappa``: a finite number in ``(0, high)``
    (``(0, high]`` with ``high_inclusive``; ``(0, inf)`` with ``high=None``).

    The variants idlkit uses: ``(0, 1)`` for a model's well-posedness margin
    (``wellposed.check_kappa``), ``(0, 1]`` for SIM's bound ``||A||_inf <= kappa`` (paper
    002: ``kappa = 1`` is the boundary, still well-posed after the rescaling), and
    ``(0, inf)`` for a radius or an l1 budget (``project_inf_ball``, the lasso solvers).

    Examples:
        >>> check_kappa(0.5), check_kappa(1, high_inclusive=True), check_kappa(3.0, high=None)
        (0.5, 1.0, 3.0)
    """
    if example is None:
        example = 0.95 if high is not None else 1.0
    return check_scalar(name, value, low=0.0, low_inclusive=False, high=high,  # type: ignore[return-value]
                        high_inclusive=high_inclusive, example=example, why=why)


def check_positive(name: str, value: object, *, kind: type = float, allow_zero: bool = False,
                   allow_none: bool = False, example: object = None, why: str | None = None,
                   error: type[Exception] = ConfigurationError) -> float | int:
    """``value`` as a finite number ``> 0`` (``>= 0`` with ``allow_zero``); see
    :func:`check_scalar`."""
    return check_scalar(name, value, kind=kind, low=0, low_inclusive=allow_zero,  # type: ignore[return-value]
                        allow_none=allow_none, example=example, why=why, error=error)


def check_tol(value: object, name: str = "tol", *, allow_zero: bool = True,
              example: float = 1e-6) -> float:
    """A tolerance: a finite float ``>= 0`` (``> 0`` unless ``allow_zero``)."""
    return check_scalar(name, value, low=0.0, low_inclusive=allow_zero,  # type: ignore[return-value]
                        example=example)


def check_probability(name: str, value: object, *, low_inclusive: bool = True,
                      high_inclusive: bool = True, example: float | None = None) -> float:
    """A probability or fraction: a finite float in ``[0, 1]`` (endpoints as asked)."""
    return check_scalar(name, value, low=0.0, high=1.0, low_inclusive=low_inclusive,  # type: ignore[return-value]
                        high_inclusive=high_inclusive, example=example)


def check_choice(name: str, value: object, choices: Iterable[object], *,
                 error: type[Exception] = ConfigurationError) -> object:
    """``value`` when it is one of the registered ``choices`` (compared with ``==``), else an
    error naming the argument, the value and the registered choices.

    Examples:
        >>> check_choice("method", "pf", ("auto", "pf", "neumann"))
        'pf'
    """
    options = list(choices)
    try:
        found = value in options
    except (TypeError, ValueError, RuntimeError):  # e.g. an array compared with a choice
        found = any(value is c for c in options)
    if not found:
        raise error(f"{name} must be one of {options}, got {value!r}; pass e.g. "
                    f"{name}={options[0]!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``value`` as a bool; a truthy string such as ``"no"`` is refused, not taken as True."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise ConfigurationError(f"{name} must be True or False, got {value!r} ({type(value).__name__}); "
                             f"pass a bool")


def check_float_dtype(name: str, value: object, *, allow_none: bool = True) -> torch.dtype | None:
    """A floating torch dtype (or None): integer and complex dtypes, strings and numpy dtypes
    are refused with the fix."""
    if value is None and allow_none:
        return None
    if isinstance(value, torch.dtype) and value.is_floating_point:
        return value
    raise ConfigurationError(f"{name} must be a floating torch dtype such as torch.float32 or "
                             f"torch.float64, got {value!r}")


def check_float_tensor(name: str, value: object) -> Tensor:
    """A floating, finite tensor (matrices given to a model): integer dtypes and NaN/Inf refused."""
    from .errors import InputError, NonFiniteError

    if not isinstance(value, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(value).__name__}; wrap it with "
                         f"torch.as_tensor(..., dtype=torch.float64)")
    if not value.is_floating_point():
        raise InputError(f"{name} has dtype {value.dtype}; pass a floating tensor ({name}.double() "
                         f"or {name}.float())")
    vals = value.values() if value.layout != torch.strided else value
    if vals.numel() and not bool(torch.isfinite(vals).all()):
        raise NonFiniteError(f"{name} contains NaN or Inf entries; repair them before building a model")
    return value


def check_allocation(what: str, elements: int, dtype: torch.dtype | None) -> None:
    """Refuse an allocation larger than the machine's physical memory (a typed error instead of
    a MemoryError or an allocator crash)."""
    import os

    itemsize = torch.empty((), dtype=dtype or torch.get_default_dtype()).element_size()
    need = elements * itemsize
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return
    if need > total:
        raise ConfigurationError(f"{what} needs {need / 2**30:.1f} GiB, more than this machine's "
                                 f"{total / 2**30:.1f} GiB of memory; use a smaller size or a sparse "
                                 f"or low-rank model")
