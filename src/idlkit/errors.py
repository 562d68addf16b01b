"""Typed errors of idlkit.

Every error raised on purpose by the library subclasses :class:`IdlError`, so a
caller can catch the whole family at once. Messages name the measured value and
the fix. ``ShapeError`` and ``ActivationError``/``SolverError`` also subclass
``ValueError`` so that code written against plain Python conventions still works.
"""

from __future__ import annotations

__all__ = [
    "IdlError",
    "ShapeError",
    "InputError",
    "WellPosednessError",
    "ConvergenceError",
    "ConfigurationError",
    "ConversionError",
    "NonFiniteError",
    "InfeasibleError",
    "SolverError",
]


class IdlError(Exception):
    """Base class of every error raised by idlkit."""


class ConfigurationError(IdlError, ValueError):
    """An argument is outside its admissible set (unknown name, kappa outside (0, 1), ...)."""


class ShapeError(IdlError, ValueError):
    """A tensor does not have the shape the operation expects."""


class InputError(IdlError, ValueError):
    """An input tensor has an invalid dtype or value."""


class NonFiniteError(InputError):
    """NaN or Inf found in an input or appearing in an iterate."""


class WellPosednessError(IdlError):
    """The model matrix A does not satisfy the declared well-posedness condition."""


class ConvergenceError(IdlError, RuntimeError):
    """A fixed-point solve did not reach its tolerance within ``max_iter`` iterations."""

    def __init__(self, message: str, info: object | None = None) -> None:
        super().__init__(message)
        self.info = info


class ConversionError(IdlError):
    """A network could not be converted into an exactly equivalent implicit model."""


class SolverError(IdlError, RuntimeError):
    """An optimization solver (LP, MILP, SDP) did not return an optimal solution.

    ``status`` holds the solver's own status (code and message), so that no bound is ever
    reported from a non-optimal solve.
    """

    def __init__(self, message: str, status: object | None = None) -> None:
        super().__init__(message)
        self.status = status


class InfeasibleError(SolverError):
    """A constrained problem has no solution (e.g. SIM's exact state matching, paper 002 eq. 8,
    on states that no row with ``||a||_1 <= kappa`` reproduces): relax the objective."""

