"""The solver registry: one immutable mapping from a name to a :class:`Solver` object.

A solver carries everything the rest of the library asks of it: its forward iteration
(``forward``: ``X = phi(A X + b)``), its adjoint (``adjoint``: ``V = J(Z)^T (A^T V + G)``,
paper 000 eq. G.3-G.4), the iteration on any batch-first map (``iterate``, used by the
low-rank latent solves), its default step (``default_step``) and the solver its adjoint
uses by default (``adjoint_default``). Nothing else in the library branches on a
solver's name: adding a solver is a new :class:`Solver` subclass and one entry of
:data:`SOLVERS`, in this file.

Registered (paper 000 §2.2, App. G; paper 004):

* ``picard``: ``x <- phi(A x + b)`` (eq. 2.4); a contraction in l_inf when
  ``||A||_inf < 1`` (Thm 2.2, Remark 2.4).
* ``averaged``: ``x <- (1 - alpha) x + alpha phi(A x + b)`` (paper 004). For a
  monotone componentwise ``phi`` with ``0 <= phi' <= 1`` the Jacobian of the step is
  ``(1 - alpha) I + alpha D A`` with ``D = diag(d)``, ``d in [0, 1]``; if
  ``alpha <= 1 / (1 + max_i (-A_ii)_+)`` its diagonal is nonnegative and its l_inf norm
  is ``max_i 1 - alpha (1 - d_i r_i) <= 1 - alpha (1 - mu_inf(A)_+)`` with ``r_i`` the
  row measure. The default ``alpha = 1 / (1 + max_i (-A_ii)_+)`` is the largest such step
  (derived here; the slides say "small enough alpha").
* ``anderson``: type-II Anderson acceleration with memory ``m`` per sample and a
  safeguard (:mod:`idlkit.solve.anderson`), entered from plain steps when they slow down.
* ``triangular``: exact back-substitution by levels for (block) strictly upper
  triangular ``A`` (Thm 2.8/2.9, :mod:`idlkit.solve.triangular`); for upper-triangular
  ``A`` with ``diag(A) < 1`` and a piecewise-linear positively homogeneous map the closed
  form of Remark 2.5.

The iterative solvers choose between the *lean* loop (:mod:`idlkit.solve.lean`: the
whole batch, one global residual) and the *tracked* one (:mod:`idlkit.solve.tracked`:
per-sample depths, retirement of converged samples) by ``SolveOptions.per_sample``;
``None`` picks the tracked loop only where retiring samples pays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from ..activations import Activation
from ..errors import ConfigurationError
from ..wellposed import inf_norm
from .anderson import anderson
from .info import SolveInfo
from .lean import anderson_lean, iterate_lean
from .maps import AdjointMap, FixedPointMap, ForwardMap
from .tracked import iterate_tracked, retirement_pays
from .triangular import PlanCache, solve_levels, solve_levels_adjoint

__all__ = ["Solver", "SolveOptions", "SOLVERS", "get_solver", "default_alpha"]

# residual checks between host reads on an accelerator (each read synchronises the device)
DEVICE_CHECK_EVERY = 8


@dataclass(frozen=True)
class SolveOptions:
    """The settings of one solve (forward or adjoint), as a solver receives them.

    Attributes:
        tol: absolute l_inf residual to stop at.
        max_iter: iteration budget.
        alpha: step of ``averaged`` and of Anderson's fallback (``None``: the solver's
            :meth:`Solver.default_step`).
        anderson_m: Anderson memory.
        beta: Anderson mixing (``None``: the step).
        on_nonconvergence: ``"raise"``, ``"warn"`` or ``"ignore"``.
        per_sample: track each sample's depth and retire converged samples (``True``),
            iterate the batch as one block (``False``), or decide by the problem size
            (``None``: tracked only where retirement pays, see
            :func:`idlkit.solve.tracked.retirement_pays`).
        check_every: iterations between host reads of the residual in lean loops
            (``None``: predicted from the contraction rate, at least 1 on the CPU and
            :data:`DEVICE_CHECK_EVERY` on an accelerator, see :mod:`idlkit.solve.lean`).

    Examples:
        >>> opts = SolveOptions(tol=1e-8, max_iter=100)
        >>> opts.tol, opts.on_nonconvergence
        (1e-08, 'raise')
    """

    tol: float = 1e-6
    max_iter: int = 500
    alpha: float | None = None
    anderson_m: int = 5
    beta: float | None = None
    on_nonconvergence: str = "raise"
    per_sample: bool | None = None
    check_every: int | None = None

    def lean(self, batch: int, n: int, device: str = "cpu") -> bool:
        """Whether a solve of ``batch`` samples of size ``n`` on ``device`` (a type: ``"cpu"``,
        ``"cuda"``, ...) takes the lean loop: as ``per_sample`` says, else where retiring
        samples cannot pay, and always on an accelerator (where the tracked loop would read
        the residual on the host every step).

        Args:
            batch: number of samples.
            n: size of each sample's unknown.
            device: the device type (``"cpu"``, ``"cuda"``, ...).

        Returns:
            ``True`` for the lean loop.
        """
        if self.per_sample is not None:
            return not self.per_sample
        return device != "cpu" or not retirement_pays(batch, n)

    def min_gap(self, X: Tensor) -> int:
        """Fewest iterations between residual reads of a lean solve on ``X``'s device (a read
        synchronises an accelerator; on the CPU it costs nothing).

        Args:
            X: an iterate on the solve's device.

        Returns:
            The gap, an int ``>= 1``.
        """
        return 1 if X.device.type == "cpu" else DEVICE_CHECK_EVERY


def default_alpha(A: Tensor) -> float:
    """Largest averaged step with a certified contraction (module doc): 1 / (1 + max(-A_ii)_+).

    Args:
        A: ``(n, n)`` state matrix.

    Returns:
        The step, a float in ``(0, 1]``.

    Examples:
        >>> default_alpha(torch.tensor([[-1.0, 0.0], [0.0, 0.5]]))
        0.5
        >>> default_alpha(0.5 * torch.eye(2))
        1.0
    """
    d = torch.diagonal(A.to_dense() if A.layout != torch.strided else A).detach()
    neg = float(torch.clamp(-d, min=0).max()) if d.numel() else 0.0
    return 1.0 / (1.0 + neg)


class Solver:
    """A fixed-point solver of the registry (see the module doc).

    Subclasses set :attr:`name`, :attr:`description`, :attr:`iterative`,
    :attr:`adjoint_default` and :attr:`map_step`, and implement :meth:`iterate` (iterative solvers) or
    :meth:`forward` and :meth:`adjoint` (direct ones).

    Examples:
        >>> s = get_solver("anderson")
        >>> isinstance(s, Solver), s.name
        (True, 'anderson')
    """

    name: str = ""
    description: str = ""
    iterative: bool = True
    adjoint_default: str = "anderson"
    map_step: float = 1.0  # default step on a map given without its matrix (low-rank latent map)

    def __repr__(self) -> str:
        return f"<solver {self.name!r}: {self.description}>"

    def default_step(self, A: Tensor) -> float:
        """The step (``alpha``) used when the caller gives none.

        Args:
            A: ``(n, n)`` state matrix.

        Returns:
            The step, a float.
        """
        return 1.0

    def iterate(self, F: FixedPointMap, X: Tensor, step: float, opts: SolveOptions,
                first: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, SolveInfo]:
        """Solve ``X = F(X)`` from the batch-first start ``X (m, d)``; ``first``: ``F(X)``
        when known. Returns ``(X, aux, info)`` in column convention ``(d, m)``.

        Args:
            F: the :class:`~idlkit.solve.maps.FixedPointMap`.
            X: ``(m, d)`` batch-first start.
            step: the averaging step ``alpha``.
            opts: the :class:`SolveOptions`.
            first: ``(X, F(X))`` when already known, or ``None``.

        Returns:
            ``(X, aux, info)``, ``X`` and ``aux`` ``(d, m)``, ``info`` a :class:`SolveInfo`.

        Raises:
            ConfigurationError: a solver that does not iterate on a general map.
        """
        raise ConfigurationError(
            f"solver {self.name!r} solves structured systems only (it has no iteration on a "
            f"general map); choose one of {iterative_names()}")

    def forward(self, A: Tensor, b: Tensor, act: Activation, x0: Tensor | None,
                opts: SolveOptions, cache: PlanCache | None = None
                ) -> tuple[Tensor, Tensor, SolveInfo]:
        """``X = phi(A X + b)`` for ``b (n, m)``; returns ``(X, Z = A X + b, info)``, column
        convention, no autograd graph. ``x0 (n, m)``: warm start (default zeros).

        Args:
            A: ``(n, n)`` state matrix (dense or sparse).
            b: ``(n, m)`` term ``B U^T + b``.
            act: the activation ``phi``.
            x0: ``(n, m)`` warm start, or ``None`` (zeros).
            opts: the :class:`SolveOptions`.
            cache: triangular plan cache, or ``None``.

        Returns:
            ``(X, Z, info)``: ``(n, m)`` states and pre-activations and a :class:`SolveInfo`.
        """
        X = b.new_zeros(b.shape[1], b.shape[0]) if x0 is None else x0.t().contiguous()
        F = ForwardMap(A, b.t().contiguous(), act)
        step = opts.alpha if opts.alpha is not None else self.default_step(A)
        return self.iterate(F, X, step, opts, F.at_zero() if x0 is None else None)

    def adjoint(self, A: Tensor, Z: Tensor, G: Tensor, act: Activation, x0: Tensor | None,
                opts: SolveOptions, cache: PlanCache | None = None) -> tuple[Tensor, SolveInfo]:
        """The adjoint equilibrium ``V = J(Z)^T (A^T V + G)`` (eq. G.3), column convention.

        Args:
            A: ``(n, n)`` state matrix.
            Z: ``(n, m)`` forward pre-activations.
            G: ``(n, m)`` incoming gradient.
            act: the activation ``phi``.
            x0: ``(n, m)`` warm start, or ``None``.
            opts: the :class:`SolveOptions`.
            cache: triangular plan cache, or ``None``.

        Returns:
            ``(V, info)``: the ``(n, m)`` adjoint solution and a :class:`SolveInfo`.
        """
        X = G.new_zeros(G.shape[1], G.shape[0]) if x0 is None else x0.t().contiguous()
        F = AdjointMap(A, Z.t().contiguous(), G.t().contiguous(), act)
        step = opts.alpha if opts.alpha is not None else self.default_step(A)
        V, _, info = self.iterate(F, X, step, opts, F.at_zero() if x0 is None else None)
        return V, info


class Picard(Solver):
    name = "picard"
    description = "x <- phi(A x + b) (paper 000 eq. 2.4)"

    def iterate(self, F: FixedPointMap, X: Tensor, step: float, opts: SolveOptions,
                first: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, SolveInfo]:
        return _simple(F, X, 1.0, self.name, opts, first)


class Averaged(Solver):
    name = "averaged"
    description = "x <- (1 - alpha) x + alpha phi(A x + b) (paper 004)"
    map_step = 0.5

    def default_step(self, A: Tensor) -> float:
        return default_alpha(A)

    def iterate(self, F: FixedPointMap, X: Tensor, step: float, opts: SolveOptions,
                first: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, SolveInfo]:
        return _simple(F, X, step, self.name, opts, first)


class Anderson(Solver):
    name = "anderson"
    description = "type-II Anderson acceleration with safeguards, from plain steps"

    def default_step(self, A: Tensor) -> float:
        return 1.0 if inf_norm(A) < 1 else default_alpha(A)

    def iterate(self, F: FixedPointMap, X: Tensor, step: float, opts: SolveOptions,
                first: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, SolveInfo]:
        beta = step if opts.beta is None else opts.beta
        if opts.lean(X.shape[0], X.shape[1], X.device.type):
            return anderson_lean(F, X, step, opts.tol, opts.max_iter, opts.anderson_m, beta,
                                 opts.on_nonconvergence, first, opts.check_every, opts.min_gap(X))
        return anderson(F, X, step, opts.tol, opts.max_iter, opts.anderson_m, beta,
                        opts.on_nonconvergence, first)


class Triangular(Solver):
    name = "triangular"
    description = "exact back-substitution by levels, (block) triangular A (Thm 2.8/2.9)"
    iterative = False
    adjoint_default = "triangular"

    def forward(self, A: Tensor, b: Tensor, act: Activation, x0: Tensor | None,
                opts: SolveOptions, cache: PlanCache | None = None
                ) -> tuple[Tensor, Tensor, SolveInfo]:
        return solve_levels(A, b, act, opts.tol, cache)

    def adjoint(self, A: Tensor, Z: Tensor, G: Tensor, act: Activation, x0: Tensor | None,
                opts: SolveOptions, cache: PlanCache | None = None) -> tuple[Tensor, SolveInfo]:
        V = solve_levels_adjoint(A, Z, G, act, cache)
        m = V.shape[1]
        info = SolveInfo(self.name, 0, 0.0, True, torch.zeros(m, dtype=torch.long, device=V.device),
                         V.new_zeros(m), opts.tol)
        return V, info


def _simple(F: FixedPointMap, X: Tensor, alpha: float, method: str, opts: SolveOptions,
            first: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, SolveInfo]:
    if opts.lean(X.shape[0], X.shape[1], X.device.type):
        return iterate_lean(F, X, alpha, opts.tol, opts.max_iter, method, opts.on_nonconvergence,
                            first, opts.check_every, opts.min_gap(X))
    return iterate_tracked(F, X, alpha, opts.tol, opts.max_iter, method, opts.on_nonconvergence,
                           first)


SOLVERS: Mapping[str, Solver] = MappingProxyType(
    {s.name: s for s in (Picard(), Averaged(), Anderson(), Triangular())})


def iterative_names() -> list[str]:
    """Names of the registered solvers that iterate on a general map."""
    return [k for k, s in SOLVERS.items() if s.iterative]


def get_solver(name: object, *, role: str = "solver", iterative: bool = False) -> Solver:
    """The registered solver ``name``; :class:`ConfigurationError` naming the registered
    choices otherwise (``iterative``: only solvers that iterate on a general map).

    Args:
        name: the solver's registered name.
        role: the argument's name used in the error message.
        iterative: accept only solvers that iterate on a general map.

    Returns:
        The :class:`Solver`.

    Raises:
        ConfigurationError: an unregistered (or, with ``iterative``, non-iterative) ``name``.

    Examples:
        >>> get_solver("picard").name
        'picard'
        >>> get_solver("newton")
        Traceback (most recent call last):
            ...
        idlkit.errors.ConfigurationError: unknown solver 'newton'; registered choices: ['picard', ...
    """
    choices = iterative_names() if iterative else list(SOLVERS)
    solver = SOLVERS.get(name) if isinstance(name, str) else None
    if solver is None or (iterative and not solver.iterative):
        hint = (f" ({name!r} solves structured systems only, not this map)"
                if isinstance(name, str) and name in SOLVERS else "")
        raise ConfigurationError(f"unknown {role} {name!r}{hint}; registered choices: {choices}")
    return solver
