"""Frozen per-model solver settings and their validation (the edge of :mod:`idlkit.solve`).

A model keeps one :class:`SolverSettings`; it hands :class:`~idlkit.solve.registry.SolveOptions`
to the registry's solvers. The adjoint's stopping rule is part of it:

* ``backward_stop="relative"`` (default): the adjoint solve stops when its l_inf residual is
  at most ``backward_tol * ||dL/dx||_inf``, relative to the incoming gradient, whose scale
  depends on the loss (``1 / batch`` for a mean) — the same relative accuracy whatever the
  loss's scale;
* ``backward_stop="absolute"``: at ``backward_tol`` itself, as torchidl's ``grad_tol`` (for
  comparisons at equal tolerance; with a batch-mean loss this is a much looser rule).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

from torch import Tensor

from .._validation import check_choice, check_int, check_positive, check_scalar, check_tol
from ..errors import ConfigurationError
from .info import ON_NONCONVERGENCE
from .registry import SolveOptions, get_solver

__all__ = ["SolverSettings", "BACKWARD_STOP", "check_solve_args"]

BACKWARD_STOP = ("relative", "absolute")


def check_solve_args(method: object, tol: object, max_iter: object, on_nonconvergence: object,
                     alpha: object = None, anderson_m: object = 5, beta: object = None,
                     per_sample: object = None, check_every: object = None,
                     *, role: str = "solver", prefix: str = "") -> None:
    """Raise :class:`ConfigurationError` for an invalid solve setting, naming the value and
    the registered choices or the valid range (``prefix``: ``"backward_"`` in messages).

    Args:
        method: the solver's name.
        tol: tolerance, ``> 0``.
        max_iter: iteration budget, ``>= 1``.
        on_nonconvergence: ``"raise"``, ``"warn"`` or ``"ignore"``.
        alpha: averaged step in ``(0, 1]``, or ``None``.
        anderson_m: Anderson memory, ``>= 1``.
        beta: Anderson mixing, or ``None``.
        per_sample: ``True``, ``False`` or ``None``.
        check_every: residual reads every this many iterations, or ``None``.
        role: the argument's name for ``method`` in messages.
        prefix: prefix of the names in messages (``"backward_"``).

    Raises:
        ConfigurationError: an invalid setting, naming the value and the valid choices.

    Examples:
        >>> check_solve_args("anderson", 1e-6, 500, "raise")        # valid: returns None
        >>> check_solve_args("anderson", -1.0, 500, "raise")
        Traceback (most recent call last):
            ...
        idlkit.errors.ConfigurationError: tol must be a finite number > 0, got -1.0; pass tol > 0, ...
    """
    get_solver(method, role=role)
    check_tol(tol, prefix + "tol", allow_zero=False)
    check_int(prefix + "max_iter", max_iter, 1)
    check_choice("on_nonconvergence", on_nonconvergence, ON_NONCONVERGENCE)
    check_scalar("alpha", alpha, low=0.0, low_inclusive=False, high=1.0, allow_none=True,
                 why="the averaging step")
    check_int("anderson_m", anderson_m, 1)
    check_positive("beta", beta, allow_none=True)
    if per_sample is not None and not isinstance(per_sample, bool):
        raise ConfigurationError(f"per_sample must be True, False or None, got {per_sample!r}; "
                                 f"pass per_sample=None (by problem size)")
    check_int("check_every", check_every, 1, allow_none=True)


@dataclass(frozen=True)
class SolverSettings:
    """Forward and backward solver settings of a model (see :func:`idlkit.solve.fixed_point`).

    Attributes:
        method: forward solver, a name of :data:`idlkit.solve.SOLVERS`.
        tol: forward stopping rule (absolute l_inf residual).
        max_iter: forward iteration budget.
        alpha: the step (averaged iteration, Anderson's fallback).
        anderson_m: Anderson memory.
        beta: Anderson mixing.
        on_nonconvergence: ``"raise"``, ``"warn"`` or ``"ignore"``.
        backward_method: adjoint solver (``None``: the forward solver's ``adjoint_default``).
        backward_tol: adjoint stopping rule (default: the forward's).
        backward_max_iter: adjoint iteration budget (default: the forward's).
        backward_stop: ``"relative"`` or ``"absolute"`` (module doc).
        per_sample: per-sample depths and retirement (``True``), lean whole-batch solves
            (``False``), or by problem size (``None``, default).
        check_every: iterations between residual reads of lean solves (``None``: predicted
            from the contraction rate, see :mod:`idlkit.solve.lean`).

    Examples:
        >>> s = SolverSettings(method="picard", tol=1e-8)
        >>> s.method, s.tol, s.backward_method
        ('picard', 1e-08, None)
        >>> idlkit.ImplicitModel(3, 4, 2, solver="picard").settings.method
        'picard'
    """

    method: str = "anderson"
    tol: float = 1e-6
    max_iter: int = 500
    alpha: float | None = None
    anderson_m: int = 5
    beta: float | None = None
    on_nonconvergence: str = "raise"
    backward_method: str | None = None
    backward_tol: float | None = None
    backward_max_iter: int | None = None
    backward_stop: str = "relative"
    per_sample: bool | None = None
    check_every: int | None = None

    @property
    def adjoint_method(self) -> str:
        """The adjoint solver's name."""
        if self.backward_method is not None:
            return self.backward_method
        return get_solver(self.method).adjoint_default

    def validate(self) -> SolverSettings:
        """Raise :class:`~idlkit.errors.ConfigurationError` for an invalid forward or backward
        setting (unregistered solver, tol <= 0, max_iter < 1, ...); returns ``self``."""
        check_solve_args(self.method, self.tol, self.max_iter, self.on_nonconvergence,
                         self.alpha, self.anderson_m, self.beta, self.per_sample, self.check_every)
        b = self.backward_options
        check_solve_args(self.adjoint_method, b.tol, b.max_iter, self.on_nonconvergence,
                         role="backward_solver", prefix="backward_")
        check_choice("backward_stop", self.backward_stop, BACKWARD_STOP)
        return self

    def replace(self, **changes: object) -> SolverSettings:
        """A validated copy with ``changes``."""
        return replace(self, **changes).validate()  # type: ignore[arg-type]

    def config(self) -> dict:
        """The constructor's solver arguments, JSON-serialisable (for :mod:`idlkit.io`)."""
        return {"solver": self.method, "tol": self.tol, "max_iter": self.max_iter,
                "backward_solver": self.backward_method, "backward_tol": self.backward_tol,
                "backward_max_iter": self.backward_max_iter, "alpha": self.alpha,
                "anderson_m": self.anderson_m, "on_nonconvergence": self.on_nonconvergence,
                "backward_stop": self.backward_stop, "per_sample": self.per_sample,
                "check_every": self.check_every}

    @cached_property
    def forward_options(self) -> SolveOptions:
        """:class:`SolveOptions` of the forward solve."""
        return SolveOptions(self.tol, self.max_iter, self.alpha, self.anderson_m, self.beta,
                            self.on_nonconvergence, self.per_sample, self.check_every)

    @cached_property
    def backward_options(self) -> SolveOptions:
        """:class:`SolveOptions` of the adjoint solve (``tol`` before the stopping rule)."""
        return SolveOptions(self.tol if self.backward_tol is None else self.backward_tol,
                            self.max_iter if self.backward_max_iter is None
                            else self.backward_max_iter,
                            self.alpha, self.anderson_m, self.beta, self.on_nonconvergence,
                            self.per_sample, self.check_every)

    def adjoint_options(self, G: Tensor) -> SolveOptions:
        """:attr:`backward_options` with the absolute tolerance of an adjoint solve whose
        incoming gradient is ``G`` (the loss's gradient with respect to the state), under
        :attr:`backward_stop` (module doc): ``backward_tol * ||G||_inf`` for ``"relative"``
        (``backward_tol`` itself when ``G = 0``), ``backward_tol`` for ``"absolute"``.

        Args:
            G: ``(n, m)`` incoming gradient.

        Returns:
            The adjoint's :class:`~idlkit.solve.registry.SolveOptions`.
        """
        opts = self.backward_options
        if self.backward_stop != "relative" or G.numel() == 0:
            return opts
        scale = float(G.abs().max())
        return replace(opts, tol=opts.tol * scale) if scale > 0 else opts
