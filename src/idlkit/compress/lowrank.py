"""Low-rank implicit models, ``A = L R^T`` (paper 000 §5.3, "Rank sparsity").

With ``L, R`` of shape ``(n, k)``, ``k << n``, the state equation

    x = phi(L R^T x + B u + b)                                              (1)

is equivalent to the ``k``-dimensional fixed point in the latent ``z = R^T x``

    z = G(z) := R^T phi(L z + c),   c = B u + b,   and then   x = phi(L z + c).   (2)

Equivalence (derived here): if ``x`` solves (1), ``z = R^T x`` solves (2) and
``x = phi(L z + c)``; conversely if ``z`` solves (2), ``x = phi(L z + c)`` has
``R^T x = G(z) = z``, so ``x = phi(L R^T x + c)`` solves (1). The map between the
two solution sets is a bijection, so one system is well-posed iff the other is.
One iteration of (2) costs ``O(k n)`` per sample instead of the ``O(n^2)`` of (1).
The prediction is ``y = C phi(L z + c) + D u + d``.

Note on the source text: the PDF extraction of §5.3 prints the fixed point as
``z = R^dagger phi(L z + B u)``; with ``z := R^T x`` (as the same paragraph
defines it) the correct operator is the transpose ``R^T``, re-derived above.

Well-posedness (the claim of §5.3, proved here; the paper only states it). Let
``phi`` act componentwise with ``|phi(a) - phi(b)| <= gamma |a - b|`` entrywise
(CONE maps: ``gamma = 1``; the sigmoid: ``gamma = 1/4``) and let
``M = gamma |R|^T |L|`` (``k x k``, nonnegative). For all ``z, z'``

    |G(z) - G(z')| = |R^T (phi(L z + c) - phi(L z' + c))|
                   <= |R|^T gamma |L (z - z')| <= M |z - z'|     (componentwise).   (3)

If ``rho = lambda_pf(M) < 1`` then ``(I - M)^{-1} = sum_t M^t >= 0`` exists; put
``w = (I - M)^{-1} 1 >= 1 > 0``. Then ``M w = w - 1 <= (1 - 1/||w||_inf) w``, and
in the weighted norm ``||v||_w = max_i |v_i| / w_i`` (3) gives

    ||G(z) - G(z')||_w <= (1 - 1 / ||(I - M)^{-1} 1||_inf) ||z - z'||_w,

a contraction: (2) has a unique solution for every ``c`` and the Picard
iteration converges to it (Banach), at the asymptotic rate ``rho``. Hence the
condition ``lambda_pf(gamma |R|^T |L|) < 1`` of §5.3. The adjoint map below has
the Jacobian ``L^T diag(phi') R``, with ``|L^T diag(phi') R| <= M^T``, and
``lambda_pf(M^T) = rho``: the same certificate makes the adjoint iteration
contract.

Relation to the dense certificate (Thm 2.2): ``|L R^T| <= |L| |R|^T`` entrywise,
the PF eigenvalue is monotone on nonnegative matrices, and ``X Y``, ``Y X`` share
their nonzero eigenvalues, so

    lambda_pf(gamma |L R^T|) <= lambda_pf(gamma |L| |R|^T) = lambda_pf(gamma |R|^T |L|).

The low-rank certificate implies the dense one and can be strictly more
conservative (``n = k = 2``, ``L = [[1, 1], [0, 0]]``, ``R = [[1, -1], [0, 0]]``:
``A = 0`` yet ``lambda_pf(|R|^T |L|) = 2``); it also depends on the factorisation (``L T``,
``R T^{-T}`` give the same ``A``), though not on positive diagonal rescalings
``L D``, ``R D^{-1}`` (a similarity of ``|R|^T |L|``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .. import wellposed as wp
from .._validation import all_finite, check_bool, check_float_dtype, check_int
from ..activations import Activation, get_activation
from ..errors import ConfigurationError, NonFiniteError, ShapeError, WellPosednessError
from ..function import SolveRecord
from ..model import ImplicitBase, ImplicitModel, batch_input, copy_matrices_, output_map
from ..solve import SolveInfo, SolveOptions, SolverSettings
from ..solve.registry import get_solver, iterative_names

__all__ = ["LowRankImplicitModel", "LowRankCertificate", "LowRankApproximation",
           "LowRankFunction", "LOWRANK_SOLVERS"]

LOWRANK_SOLVERS = tuple(iterative_names())  # the registry's solvers of a general map
LOWRANK_WELLPOSEDNESS = ("pf", None)
_RTOL = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-12}


# ----------------------------------------------------------------------------- latent solver


class _LatentMap:
    """``G(Z) = phi(Z L^T + C) R`` on batch-first rows ``Z (m, k)``, ``C (m, n)``.

    Follows the protocol of the solvers of :mod:`idlkit.solve` (``restrict`` and
    ``__call__ -> (G(Z), aux)``); ``aux`` must have ``Z``'s shape, so it is ``G(Z)``
    itself (the pre-activation ``(m, n)`` is recomputed once after the solve).
    """

    def __init__(self, L: Tensor, R: Tensor, CT: Tensor, act: Activation) -> None:
        self.L, self.R, self.CT, self.act = L, R, CT, act

    def restrict(self, rows: Tensor) -> _LatentMap:
        return _LatentMap(self.L, self.R, self.CT[rows], self.act)

    def __call__(self, Z: Tensor) -> tuple[Tensor, Tensor]:
        P = torch.addmm(self.CT, Z, self.L.t())          # (m, n): L z + c
        GZ = self.act(P.t()).t() @ self.R                # (m, k): R^T phi(L z + c)
        return GZ, GZ


class _LatentAdjointMap:
    """``F(W) = (Dphi o (W R^T)) L + G_z`` on rows: the adjoint ``w = L^T D R w + g``."""

    def __init__(self, L: Tensor, R: Tensor, Dp: Tensor, GT: Tensor) -> None:
        self.L, self.R, self.Dp, self.GT = L, R, Dp, GT

    def restrict(self, rows: Tensor) -> _LatentAdjointMap:
        return _LatentAdjointMap(self.L, self.R, self.Dp[rows], self.GT[rows])

    def __call__(self, W: Tensor) -> tuple[Tensor, Tensor]:
        S = self.Dp * (W @ self.R.t())                   # (m, n)
        FW = torch.addmm(self.GT, S, self.L)             # (m, k)
        return FW, FW


def _run(F: _LatentMap | _LatentAdjointMap, X0: Tensor, method: str, opts: SolveOptions
         ) -> tuple[Tensor, SolveInfo]:
    """Solve ``X = F(X)`` batch-first with the registry's solver; returns ``(X (m, k), info)``.

    Step sizes: under the certificate the Picard map contracts (module doc), so the
    fallback step of Anderson is the plain step unless ``alpha`` is given: the solver's
    ``map_step`` (1 for picard and anderson, 0.5 for averaged).
    """
    solver = get_solver(method, iterative=True)
    step = float(opts.alpha) if opts.alpha is not None else solver.map_step
    X, _, info = solver.iterate(F, X0, step, opts)
    return X.t(), info  # the solvers return column convention (k, m)


def _derivative(act: Activation, P: Tensor) -> Tensor:
    """``phi'(P)`` entrywise (componentwise maps), batch-first."""
    Pt = P.t()
    return act.vjp(Pt, torch.ones_like(Pt)).t()


class LowRankFunction(torch.autograd.Function):
    """Latent equilibrium ``Z = phi(Z L^T + C) R`` (batch-first) with an implicit backward.

    Forward: the ``k``-dimensional fixed point (2) of the module doc, by the
    solvers of :mod:`idlkit.solve`, without an autograd graph.

    Backward (implicit function theorem, derived here). Per sample, with
    ``P = L z + c``, ``h = phi(P)``, ``D = diag(phi'(P))`` and the incoming
    gradient ``g = dLoss/dz``, the adjoint ``w`` solves the linear fixed point

        w = (dG/dz)^T w + g = L^T D R w + g,                                    (4)

    (batch-first ``W = (Dphi o (W R^T)) L + G``), and with ``s = D R w``
    (``= dLoss/dP``):

        dLoss/dR = h w^T,   dLoss/dL = s z^T,   dLoss/dc = s

    summed over the batch (``H^T W``, ``S^T Z``, ``S``). The adjoint solve stops at
    ``backward_tol * ||G||_inf``, as :class:`idlkit.function.ImplicitFunction` does.
    Saved for backward: ``L, R, C, Z`` (``O(n k + m n)``), independent of the
    number of iterations.

    Examples:
        >>> model = LowRankImplicitModel(3, 8, 2, rank=2)
        >>> u = torch.randn(4, 3, requires_grad=True)
        >>> model(u).sum().backward()                            # backward through LowRankFunction
        >>> u.grad.shape
        torch.Size([4, 3])
    """

    @staticmethod
    def forward(ctx, L: Tensor, R: Tensor, CT: Tensor, act: Activation,  # type: ignore[override]
                settings: SolverSettings, z0: Tensor | None, record: SolveRecord) -> Tensor:
        """The latent fixed point (2), batch-first, without an autograd graph.

        Args:
            L: ``(n, k)`` left factor.
            R: ``(n, k)`` right factor.
            CT: ``(batch, n)`` input term ``U B^T + b``.
            act: the componentwise activation ``phi``.
            settings: the model's solver settings.
            z0: ``(batch, k)`` warm start, or ``None``.
            record: the :class:`~idlkit.function.SolveRecord` that receives the solve report.

        Returns:
            ``(batch, k)`` latent states ``Z``.
        """
        with torch.no_grad():
            Ld, Rd, Cd = L.detach(), R.detach(), CT.detach().contiguous()
            X0 = Cd.new_zeros(Cd.shape[0], Ld.shape[1]) if z0 is None else z0.detach().clone()
            Z, info = _run(_LatentMap(Ld, Rd, Cd, act), X0, settings.method,
                           settings.forward_options)
        record.forward = info
        ctx.act, ctx.settings, ctx.record = act, settings, record
        ctx.save_for_backward(Ld, Rd, Cd, Z)
        return Z

    @staticmethod
    @once_differentiable
    def backward(ctx, gZ: Tensor):  # type: ignore[override]
        """Implicit backward (4): gradients for ``L``, ``R`` and ``CT``.

        Args:
            gZ: ``(batch, k)`` incoming gradient ``dLoss/dZ``.

        Returns:
            ``(dL, dR, dCT, None, None, None, None)``.

        Raises:
            NonFiniteError: NaN/Inf in ``gZ``.
        """
        L, R, CT, Z = ctx.saved_tensors
        s = ctx.settings
        gZ = gZ.contiguous()
        if not all_finite(gZ):
            raise NonFiniteError("the incoming gradient contains NaN/Inf (check the loss)")
        opts = s.adjoint_options(gZ)
        P = torch.addmm(CT, Z, L.t())
        Dp = _derivative(ctx.act, P)
        W, info = _run(_LatentAdjointMap(L, R, Dp, gZ), torch.zeros_like(gZ), s.adjoint_method,
                       opts)
        ctx.record.backward = info
        S = Dp * (W @ R.t())
        need = ctx.needs_input_grad
        gL = S.t() @ Z if need[0] else None
        gR = ctx.act(P.t()) @ W if need[1] else None  # phi(P)^T W, (n, k)
        gC = S if need[2] else None
        return gL, gR, gC, None, None, None, None


# ----------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class LowRankCertificate:
    """Float64 well-posedness report of a low-rank model.

    Attributes:
        rank: ``k``.
        gamma: componentwise Lipschitz constant of the activation.
        pf: ``lambda_pf(gamma |R|^T |L|)``, the certificate of §5.3 (sufficient when < 1).
        holds: ``pf < 1``.
        declared: the model's declared condition (``"pf"`` or ``None``).
        kappa: the bound of the declared condition.
        declared_holds: ``pf <= kappa`` (up to float64 rounding) when declared.
        dense: :func:`idlkit.wellposed.check` of ``A = L R^T`` (``||A||_inf``,
            ``lambda_pf(gamma |A|) <= pf``, ``mu_inf``, ...), or ``None`` when skipped.
        dtype: always ``"float64"``.
    """

    rank: int
    gamma: float
    pf: float
    holds: bool
    declared: str | None
    kappa: float
    declared_holds: bool | None
    dense: wp.WellPosedness | None
    dtype: str = "float64"

    @property
    def margin(self) -> float:
        """``kappa - pf`` when a condition is declared, else ``1 - pf``."""
        return (self.kappa if self.declared is not None else 1.0) - self.pf

    @property
    def wellposed(self) -> bool:
        """The low-rank certificate or one of the dense ones holds."""
        return self.holds or (self.dense is not None and self.dense.wellposed)

    def __str__(self) -> str:
        lines = [
            f"low-rank well-posedness certificate (float64, rank {self.rank}): "
            f"{'HOLDS' if self.wellposed else 'NOT CERTIFIED'}",
            f"  lambda_pf(gamma |R|^T |L|) = {self.pf:.6g}   (gamma={self.gamma:g}, "
            f"{'< 1' if self.holds else '>= 1'})",
        ]
        if self.declared is not None:
            lines.append(f"  declared: {self.declared} with kappa={self.kappa:g}: "
                         f"{'holds' if self.declared_holds else 'VIOLATED'} "
                         f"(margin {self.margin:+.4g})")
        if self.dense is not None:
            lines.append("  dense A = L R^T:")
            lines += ["  " + ln for ln in str(self.dense).splitlines()]
        return "\n".join(lines)


@dataclass(frozen=True)
class LowRankApproximation:
    """What :meth:`LowRankImplicitModel.from_dense` did to ``A``.

    Attributes:
        rank: ``k`` kept.
        singular_values: all singular values of ``A`` (float64, decreasing).
        spectral_error: ``||A - L R^T||_2 = sigma_{k+1}`` (0 when ``k >= n``).
        relative_spectral_error: ``sigma_{k+1} / sigma_1`` (0 for ``A = 0``).
        exact: ``rank(A) <= k`` numerically (``sigma_{k+1} <= n eps sigma_1``), so
            ``L R^T = A`` up to rounding.
        pf: ``lambda_pf(gamma |R|^T |L|)`` of the factors (before any rescaling).
        rescaled: the factor applied to ``L`` and ``R`` each by ``project=True``
            (1.0 when nothing was done; the model then differs from the truncation).

    Examples:
        >>> dense = idlkit.ImplicitModel(3, 6, 2, kappa=0.5)
        >>> low = LowRankImplicitModel.from_dense(dense, rank=2, wellposedness=None)
        >>> ap = low.approximation
        >>> ap.rank, len(ap.singular_values), ap.exact                 # a random A has rank 6 > 2
        (2, 6, False)
        >>> s = torch.linalg.svdvals(dense.A.detach().double())
        >>> abs(ap.spectral_error - float(s[2])) < 1e-6                # sigma_3 (Eckart-Young)
        True
    """

    rank: int
    singular_values: tuple[float, ...]
    spectral_error: float
    relative_spectral_error: float
    exact: bool
    pf: float
    rescaled: float = 1.0


# ----------------------------------------------------------------------------- model


class LowRankImplicitModel(ImplicitBase):
    """Implicit model ``y = C x + D u + d``, ``x = phi(L R^T x + B u + b)``, solved in rank ``k``.

    The state is obtained from the latent fixed point ``z = R^T phi(L z + B u + b)``
    (module doc), ``O(k n)`` per iteration and sample; gradients are implicit
    (:class:`LowRankFunction`).

    Args:
        backward_stop: as for :class:`~idlkit.ImplicitModel`.
        per_sample: as for :class:`~idlkit.ImplicitModel`.
        check_every: as for :class:`~idlkit.ImplicitModel`.
        in_features: input size ``p``.
        hidden: state size ``n`` (>= 1).
        out_features: output size ``q``.
        rank: ``k``, with ``1 <= k <= n``.
        activation: a componentwise map (``"relu"``, ``"leaky_relu"``, ``"tanh"``,
            ``"sigmoid"``, ``"identity"`` or a componentwise
            :class:`~idlkit.activations.Activation`); block maps are rejected (the
            certificate of §5.3 is for CONE maps).
        bias: learn ``b`` (``(n,)``) and ``d`` (``(q,)``).
        wellposedness: ``"pf"`` (enforce ``lambda_pf(gamma |R|^T |L|) <= kappa``, checked on
            every forward, restored by :meth:`project_`) or ``None`` (unchecked).
        kappa: the bound, in (0, 1).
        solver: ``"picard"``, ``"averaged"`` or ``"anderson"`` (on the latent system).
        tol: stopping rule: l_inf residual ``||G(z) - z||_inf`` of the *latent* iterate
            (the state error is then at most ``||L||_inf gamma`` times the latent error).
        max_iter: iteration budget (forward, and backward unless ``backward_max_iter``).
        backward_solver: as for :class:`~idlkit.ImplicitModel`.
        backward_tol: as for :class:`~idlkit.ImplicitModel`.
        backward_max_iter: as for :class:`~idlkit.ImplicitModel`.
        alpha: as for :class:`~idlkit.ImplicitModel` (default: 1 for Anderson's fallback
            step, 0.5 for ``averaged``).
        anderson_m: as for :class:`~idlkit.ImplicitModel`.
        on_nonconvergence: as for :class:`~idlkit.ImplicitModel`.
        device: as for :class:`~idlkit.ImplicitModel`.
        dtype: as for :class:`~idlkit.ImplicitModel`.

    Attributes:
        L: ``(n, k)`` left factor of ``A = L R^T`` (parameter).
        R: ``(n, k)`` right factor of ``A = L R^T`` (parameter).
        B: ``(n, p)`` input matrix (parameter).
        C: ``(q, n)`` output matrix (parameter).
        D: ``(q, p)`` feed-through matrix (parameter).
        b: ``(n,)`` state bias, ``None`` without bias.
        d: ``(q,)`` output bias, ``None`` without bias.
        last_solve: :class:`~idlkit.solve.SolveInfo` of the last latent forward solve.
        last_backward_solve: :class:`~idlkit.solve.SolveInfo` of the last latent adjoint solve.
        approximation: :class:`LowRankApproximation` when built by :meth:`from_dense`.

    Examples:
        >>> model = LowRankImplicitModel(in_features=3, hidden=8, out_features=2, rank=2)
        >>> u = torch.randn(4, 3)
        >>> model(u).shape, model.L.shape, model.R.shape        # A = L R^T of rank 2
        (torch.Size([4, 2]), torch.Size([8, 2]), torch.Size([8, 2]))
        >>> torch.linalg.matrix_rank(model.L @ model.R.T).item(), model.certificate().holds
        (2, True)
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, rank: int,
                 activation: str | Activation = "relu", bias: bool = True,
                 wellposedness: str | None = "pf", kappa: float = 0.95,
                 solver: str = "anderson", tol: float = 1e-6, max_iter: int = 500, *,
                 backward_solver: str | None = None, backward_tol: float | None = None,
                 backward_max_iter: int | None = None, alpha: float | None = None,
                 anderson_m: int = 5, on_nonconvergence: str = "raise",
                 backward_stop: str = "relative", per_sample: bool | None = None,
                 check_every: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None
                 ) -> None:
        super().__init__()
        in_features = check_int("in_features", in_features, 1)
        hidden = check_int("hidden", hidden, 1)
        out_features = check_int("out_features", out_features, 1)
        rank = check_int("rank", rank, 1)
        bias = check_bool("bias", bias)
        dtype = check_float_dtype("dtype", dtype)
        if rank > hidden:
            raise ConfigurationError(f"rank must satisfy 1 <= rank <= hidden = {hidden}, got "
                                     f"{rank}; use ImplicitModel for a full-rank A")
        if wellposedness not in LOWRANK_WELLPOSEDNESS:
            raise ConfigurationError(f"wellposedness must be one of {list(LOWRANK_WELLPOSEDNESS)} "
                                     f"for a low-rank model, got {wellposedness!r}")
        self.kappa = wp.check_kappa(kappa)
        act = get_activation(activation)
        if not act.componentwise or not hasattr(act, "lipschitz"):
            raise ConfigurationError(
                f"LowRankImplicitModel needs a componentwise activation (the PF certificate "
                f"lambda_pf(gamma |R|^T |L|) < 1 of paper 000 §5.3 is for CONE maps), got "
                f"{act!r}; use ImplicitModel for block maps")
        self.activation = act
        self.gamma = float(act.lipschitz)  # type: ignore[attr-defined]
        self.wellposedness = wellposedness
        self._init_solver(solver=solver, tol=tol, max_iter=max_iter, alpha=alpha,
                          anderson_m=anderson_m, on_nonconvergence=on_nonconvergence,
                          backward_solver=backward_solver, backward_tol=backward_tol,
                          backward_max_iter=backward_max_iter, backward_stop=backward_stop,
                          per_sample=per_sample, check_every=check_every)
        self.in_features, self.hidden, self.out_features, self.rank = (
            in_features, hidden, out_features, rank)
        def empty(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, device=device, dtype=dtype))

        self.L, self.R = empty(hidden, rank), empty(hidden, rank)
        self.B, self.C = empty(hidden, in_features), empty(out_features, hidden)
        self.D = empty(out_features, in_features)
        if bias:
            self.b, self.d = empty(hidden), empty(out_features)
        else:
            self.register_parameter("b", None)
            self.register_parameter("d", None)
        self._wp_cache: tuple[tuple, float] | None = None
        self.approximation: LowRankApproximation | None = None
        self.reset_parameters()

    # ------------------------------------------------------------------ set-up

    def _validate_settings(self) -> None:
        """Every setting as for :class:`~idlkit.ImplicitModel`, and both solvers must iterate
        on a general map (the latent map ``R^T phi(L z + c)`` is not triangular)."""
        s = self.settings
        s.validate()
        get_solver(s.method, role="solver for a low-rank model", iterative=True)
        get_solver(s.adjoint_method, role="backward_solver for a low-rank model", iterative=True)

    def reset_parameters(self) -> None:
        """``B, C, D`` and biases as :class:`torch.nn.Linear`; ``L, R`` uniform in
        ``+-n^{-1/2}``, then rescaled onto the certificate when ``wellposedness="pf"``
        (or when it is ``None`` and the certificate fails: the solver must converge)."""
        with torch.no_grad():
            n, p = self.hidden, self.in_features
            for W, fan_in in ((self.B, p), (self.C, n), (self.D, p)):
                bound = 1.0 / math.sqrt(fan_in)
                W.uniform_(-bound, bound)
            for F in (self.L, self.R):
                F.uniform_(-1.0 / math.sqrt(n), 1.0 / math.sqrt(n))
            if self.b is not None:
                self.b.uniform_(-1.0 / math.sqrt(p), 1.0 / math.sqrt(p))
                self.d.uniform_(-1.0 / math.sqrt(n), 1.0 / math.sqrt(n))
            self.project_()

    @classmethod
    def from_factors(cls, L: Tensor, R: Tensor, B: Tensor, C: Tensor, D: Tensor,
                     b: Tensor | None = None, d: Tensor | None = None, *,
                     activation: str | Activation = "relu", wellposedness: str | None = "pf",
                     kappa: float = 0.95, **solver_kwargs: object) -> LowRankImplicitModel:
        """Model holding copies of the given matrices (dtype and device of ``L``).

        Shapes: ``L, R (n, k)``, ``B (n, p)``, ``C (q, n)``, ``D (q, p)``, ``b (n,)``,
        ``d (q,)``; with one bias given the other is zero. The declared ``wellposedness``
        must already hold (else :class:`WellPosednessError`; nothing is rescaled silently).

        Args:
            L: ``(n, k)`` left factor.
            R: ``(n, k)`` right factor (``A = L R^T``).
            B: ``(n, p)`` input matrix.
            C: ``(q, n)`` output matrix.
            D: ``(q, p)`` feed-through matrix.
            b: ``(n,)`` state bias, or ``None``.
            d: ``(q,)`` output bias, or ``None``.
            activation: a componentwise map, as in the constructor.
            wellposedness: ``"pf"`` (must already hold) or ``None``.
            kappa: bound of the condition, in (0, 1).
            **solver_kwargs: the constructor's solver settings (``solver``, ``tol``, ...).

        Returns:
            A new :class:`LowRankImplicitModel`.

        Raises:
            ShapeError: factors or matrices of inconsistent shapes.
            WellPosednessError: the declared ``"pf"`` certificate fails.
        """
        mats = {"L": L, "R": R, "B": B, "C": C, "D": D}
        for name, M in mats.items():
            if not isinstance(M, Tensor) or M.dim() != 2:
                raise ShapeError(f"{name} must be a 2-D tensor, got "
                                 f"{getattr(M, 'shape', type(M))}")
        n, k = L.shape
        p, q = B.shape[1], C.shape[0]
        expected = {"L": (n, k), "R": (n, k), "B": (n, p), "C": (q, n), "D": (q, p)}
        for name, M in mats.items():
            if tuple(M.shape) != expected[name]:
                raise ShapeError(f"{name} has shape {tuple(M.shape)}, expected {expected[name]} "
                                 f"for n={n}, k={k}, p={p}, q={q}")
        for name, v, size in (("b", b, n), ("d", d, q)):
            if v is not None and (not isinstance(v, Tensor) or tuple(v.shape) != (size,)):
                raise ShapeError(f"{name} has shape {tuple(getattr(v, 'shape', ()))}, expected "
                                 f"({size},)")
        bias = b is not None or d is not None
        model = cls(p, n, q, k, activation=activation, bias=bias, wellposedness=wellposedness,
                    kappa=kappa, dtype=L.dtype, device=L.device, **solver_kwargs)  # type: ignore[arg-type]
        copy_matrices_(model, mats, b, d)
        model._check_wellposed()
        return model

    @classmethod
    def from_dense(cls, model: nn.Module, rank: int, *, wellposedness: str | None = "pf",
                   kappa: float | None = None, project: bool = False,
                   **solver_kwargs: object) -> LowRankImplicitModel:
        """Low-rank model from an :class:`~idlkit.ImplicitModel` by truncated SVD of ``A``.

        ``A = U S V^T`` (float64), ``L = U_k S_k^{1/2}``, ``R = V_k S_k^{1/2}`` (the
        balanced split), so ``L R^T = A_k``, the best rank-``k`` approximation in the
        spectral and Frobenius norms (Eckart-Young). This is **exact** (up to rounding)
        when ``rank(A) <= k``; otherwise it is an approximation with
        ``||A - L R^T||_2 = sigma_{k+1}``, and the outputs differ (paper 000 §5.4, Thm
        5.1 bounds the state error). The result's ``approximation`` attribute
        (:class:`LowRankApproximation`) reports the spectral error and the certificate.

        Well-posedness: the factorised certificate ``lambda_pf(gamma |R|^T |L|)`` is
        checked (it may fail even when ``A`` satisfies a dense condition: it is more
        conservative, see the module doc). With ``wellposedness="pf"`` a value above
        ``kappa`` raises :class:`WellPosednessError` naming it, unless ``project=True``,
        which rescales ``L`` and ``R`` onto ``kappa`` (recorded in
        ``approximation.rescaled``; the model then no longer matches the dense one).

        Args:
            model: the dense model (componentwise activation, ``hidden >= 1``).
            rank: ``k`` in ``[1, hidden]``.
            wellposedness: declared condition of the result (``"pf"`` or ``None``).
            kappa: its bound (default: the dense model's ``kappa``).
            project: rescale onto the certificate instead of raising.
            solver_kwargs: solver settings (default: the dense model's ``solver``, ``tol``,
                ``max_iter``, ``on_nonconvergence``, ``anderson_m``; a ``triangular``
                dense solver becomes ``anderson``).
        """

        if not isinstance(model, ImplicitModel):
            raise ConfigurationError(f"from_dense expects an idlkit.ImplicitModel, got "
                                     f"{type(model).__name__}")
        if model.hidden == 0:
            raise ConfigurationError("from_dense needs a model with hidden >= 1 (hidden = 0 "
                                     "is a static affine map with no A to factorise)")
        rank = check_int("rank", rank, 1)
        n = model.hidden
        if rank > n:
            raise ConfigurationError(f"rank must satisfy 1 <= rank <= hidden = {n}, got {rank}")
        if wellposedness not in LOWRANK_WELLPOSEDNESS:
            raise ConfigurationError(f"wellposedness must be one of {list(LOWRANK_WELLPOSEDNESS)}"
                                     f", got {wellposedness!r}")
        kappa = model.kappa if kappa is None else wp.check_kappa(kappa)
        s = model.settings
        kw: dict[str, object] = s.config()
        kw.pop("alpha")  # a step chosen for A, not for the latent map
        if not get_solver(s.method).iterative:
            kw["solver"] = "anderson"
        if s.backward_method is not None and not get_solver(s.backward_method).iterative:
            kw["backward_solver"] = None
        kw.update(solver_kwargs)
        dense = lambda M: M.detach().to_dense() if M.layout != torch.strided else M.detach()  # noqa: E731
        A = dense(model.A)  # a sparse (CSR) model is factorised densely: L, R are dense anyway
        if not all_finite(A):
            raise NonFiniteError("the model's A has NaN/Inf entries: it has no SVD; repair A or load an "
                                 "earlier checkpoint")
        U, S, Vh = torch.linalg.svd(A.to(torch.float64), full_matrices=False)
        sq = S[:rank].sqrt()
        L64, R64 = U[:, :rank] * sq, Vh[:rank].t() * sq
        sv = tuple(float(x) for x in S)
        err = sv[rank] if rank < n else 0.0
        rel = err / sv[0] if sv[0] > 0 else 0.0
        exact = err <= n * float(np.finfo(np.float64).eps) * max(sv[0], 1e-300) or err == 0.0
        gamma = float(getattr(model.activation, "lipschitz", math.nan))
        pf = _pf_factors(L64, R64, gamma) if not math.isnan(gamma) else math.inf
        bias = model.b is not None
        # build unchecked, then check (and maybe rescale) with the numbers at hand
        out = cls.from_factors(
            L64.to(A.dtype), R64.to(A.dtype), dense(model.B), dense(model.C),
            dense(model.D), model.b.detach() if bias else None,
            model.d.detach() if bias else None, activation=model.activation,
            wellposedness=None, kappa=kappa, **kw)
        scale = 1.0
        if wellposedness == "pf":
            out.wellposedness = "pf"
            value = out._pf_value()
            if value > kappa * (1 + _RTOL.get(out.L.dtype, 1e-5)):
                if not project:
                    raise WellPosednessError(
                        f"rank-{rank} truncated SVD of A violates the low-rank certificate: "
                        f"lambda_pf(gamma |R|^T |L|) = {value:.6g} > kappa = {kappa:g} "
                        f"(relative spectral error {rel:.3g}). The factorised condition is "
                        f"more conservative than the dense one; pass project=True to rescale "
                        f"L, R (changes the model), wellposedness=None to skip the check, or a "
                        f"larger kappa")
                scale = math.sqrt(kappa / value)
                out.project_()
        out.approximation = LowRankApproximation(rank, sv, err, rel, exact, pf, scale)
        return out

    # ------------------------------------------------------------------ well-posedness

    def _pf_value(self) -> float:
        """``lambda_pf(gamma |R|^T |L|)`` in float64 (cached under a fingerprint of L, R)."""
        Ld, Rd = self.L.detach(), self.R.detach()
        key = (Ld.dtype, Ld.device, tuple(Ld.shape), float(Ld.sum()), float((Ld * Ld).sum()),
               float(Rd.sum()), float((Rd * Rd).sum()))
        if self._wp_cache is not None and self._wp_cache[0] == key:
            return self._wp_cache[1]
        value = _pf_factors(Ld, Rd, self.gamma)
        self._wp_cache = (key, value)
        return value

    def project_(self, kappa: float | None = None) -> LowRankImplicitModel:
        """Rescale ``L, R`` in place so that ``lambda_pf(gamma |R|^T |L|) <= kappa``.

        When the value ``v`` exceeds ``kappa`` (default: the model's), both factors
        are multiplied by ``sqrt(kappa / v)``: ``|R|^T |L|`` scales by ``kappa / v``.
        The PF set is not convex, so this is a rescaling, not a Euclidean projection
        (as :meth:`idlkit.ImplicitModel.project_` with ``"pf"``). With
        ``wellposedness=None`` and no ``kappa`` given, nothing is done unless the
        certificate fails (``v >= 1``), in which case the model's ``kappa`` is used.

        Args:
            kappa: the bound in (0, 1); None: the model's.

        Returns:
            The model itself (rescaled in place).

        Raises:
            ConfigurationError: a ``kappa`` outside (0, 1).
        """
        target = self.kappa if kappa is None else wp.check_kappa(kappa)
        with torch.no_grad():
            value = self._pf_value()
            if self.wellposedness is None and kappa is None and value < 1:
                return self
            if value > target:
                f = math.sqrt(target / value)
                self.L.mul_(f)
                self.R.mul_(f)
        return self

    def _check_wellposed(self) -> None:
        if self.wellposedness is None:
            return
        value = self._pf_value()
        slack = 1 + _RTOL.get(self.L.dtype, 1e-5)
        if not value <= self.kappa * slack:
            raise WellPosednessError(
                f"low-rank model violates wellposedness='pf': lambda_pf(gamma |R|^T |L|) = "
                f"{value:.6g} > kappa = {self.kappa:g} (gamma = {self.gamma:g}). Fix: call "
                f"model.project_() after the optimizer step (or model.attach_projection(opt))")

    def certificate(self, dense: bool = True) -> LowRankCertificate:
        """Float64 report: ``lambda_pf(gamma |R|^T |L|)`` and (``dense=True``) the dense
        certificates of ``A = L R^T`` by :func:`idlkit.wellposed.check` (``O(n^2)`` memory;
        exact eigenvalues for ``n <= 1024``, ``O(n^3)``; a power iteration above).

        Args:
            dense: also evaluate the dense certificates of ``A = L R^T``.

        Returns:
            :class:`LowRankCertificate`.
        """
        value = self._pf_value()
        declared_holds = None
        if self.wellposedness is not None:
            declared_holds = value <= self.kappa * (1 + _RTOL.get(self.L.dtype, 1e-5))
        rep = None
        if dense:
            rep = wp.check(self.dense_matrix(), self.activation,
                           declared=self.wellposedness, kappa=self.kappa)
        return LowRankCertificate(rank=self.rank, gamma=self.gamma, pf=value, holds=value < 1,
                                  declared=self.wellposedness, kappa=self.kappa,
                                  declared_holds=declared_holds, dense=rep)

    # ------------------------------------------------------------------ conversions

    def dense_matrix(self) -> Tensor:
        """``A = L R^T`` (``(n, n)``, the parameters' dtype, detached)."""
        return (self.L @ self.R.t()).detach()

    def to_dense(self, wellposedness: str | None = "same", **solver_kwargs: object):
        """:class:`~idlkit.ImplicitModel` with ``A = L R^T`` and copies of ``B, C, D, b, d``.

        Same outputs up to the solvers' tolerances. ``wellposedness`` (default: ``"pf"``
        when this model declares it, else ``None``) is declared on the dense model;
        ``lambda_pf(gamma |L R^T|) <= lambda_pf(gamma |R|^T |L|)`` (module doc), so
        ``"pf"`` holds whenever this model's certificate does (above ``n = 1024`` the
        dense PF value is a power-iteration upper bound, and ``wellposedness=None``
        avoids a spurious failure at the boundary). Solver settings are copied unless
        overridden by ``solver_kwargs``; the dense ``tol`` is on the state residual.

        Args:
            wellposedness: the condition declared on the dense model; ``"same"``: ``"pf"`` when this
                model declares it, else ``None``.
            **solver_kwargs: solver settings overriding the copied ones.

        Returns:
            An :class:`~idlkit.ImplicitModel` with ``(n, n)`` ``A = L R^T``.
        """

        if wellposedness == "same":
            wellposedness = self.wellposedness
        s = self.settings
        kw: dict[str, object] = s.config()
        kw.update(solver_kwargs)
        bias = self.b is not None
        return ImplicitModel.from_matrices(
            self.dense_matrix(), self.B.detach(), self.C.detach(), self.D.detach(),
            self.b.detach() if bias else None, self.d.detach() if bias else None,
            activation=self.activation, wellposedness=wellposedness, kappa=self.kappa, **kw)

    # ------------------------------------------------------------------ forward

    def _as_batch(self, u: Tensor) -> tuple[Tensor, bool]:
        return batch_input(u, self.in_features, self.L.dtype, self.L.device)

    def _pre(self, U: Tensor) -> Tensor:
        """``c = B u + b`` batch-first ``(m, n)``."""
        if self.b is not None:
            return torch.addmm(self.b, U, self.B.t())
        return U @ self.B.t()

    def _latent(self, U: Tensor, z0: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(Z (m, k), c (m, n))`` with autograd through :class:`LowRankFunction`."""
        self._check_wellposed()
        if not all_finite(U):
            raise NonFiniteError("input u contains NaN or Inf")
        CT = self._pre(U)
        if not all_finite(CT):
            raise NonFiniteError("B u + b contains NaN/Inf; check the parameters B, b")
        if z0 is not None:
            z0 = z0.reshape(1, -1) if z0.dim() == 1 else z0
            if tuple(z0.shape) != (U.shape[0], self.rank):
                raise ShapeError(f"warm start z0 must have shape ({U.shape[0]}, {self.rank}), "
                                 f"got {tuple(z0.shape)}")
            z0 = z0.to(CT.dtype)
        record = SolveRecord()
        Z = LowRankFunction.apply(self.L, self.R, CT, self.activation, self.settings, z0, record)
        self._record = record
        return Z, CT

    def _state(self, U: Tensor, z0: Tensor | None) -> Tensor:
        Z, CT = self._latent(U, z0)
        P = torch.addmm(CT, Z, self.L.t())
        return self.activation(P.t()).t()

    def latent(self, u: Tensor, z0: Tensor | None = None) -> Tensor:
        """The latent fixed point ``z = R^T x``, shape ``(batch, k)`` (differentiable).

        Args:
            u: ``(batch, p)`` or ``(p,)`` inputs.
            z0: ``(batch, k)`` warm start, or ``None``.

        Returns:
            ``(batch, k)`` latent states.
        """
        U, squeeze = self._as_batch(u)
        Z, _ = self._latent(U, z0)
        return Z.squeeze(0) if squeeze else Z

    def latent_step(self, z: Tensor, u: Tensor) -> Tensor:
        """One application of the latent map ``G(z) = R^T phi(L z + B u + b)``, batch-first.

        ``z``: ``(batch, k)``; ``u`` as for :meth:`forward`. The fixed point is :meth:`latent`.

        Args:
            z: ``(batch, k)`` latent states.
            u: ``(batch, p)`` or ``(p,)`` inputs.

        Returns:
            ``(batch, k)`` tensor ``G(z)``.

        Raises:
            ShapeError: ``z`` not ``(batch, k)``.
        """
        U, squeeze = self._as_batch(u)
        z = z.reshape(1, -1) if z.dim() == 1 else z
        if tuple(z.shape) != (U.shape[0], self.rank):
            raise ShapeError(f"z must have shape ({U.shape[0]}, {self.rank}), got "
                             f"{tuple(z.shape)}")
        P = torch.addmm(self._pre(U), z, self.L.t())
        out = self.activation(P.t()).t() @ self.R
        return out.squeeze(0) if squeeze else out

    def equilibrium(self, u: Tensor, z0: Tensor | None = None) -> Tensor:
        """The state ``x = phi(L R^T x + B u + b)``, shape ``(batch, n)`` (``(n,)`` for 1-D ``u``).

        ``z0`` (``(batch, k)``) warm-starts the latent solver.

        Args:
            u: ``(batch, p)`` or ``(p,)`` inputs.
            z0: ``(batch, k)`` warm start of the latent solver, or ``None``.

        Returns:
            ``(batch, n)`` states (``(n,)`` for a 1-D input).
        """
        U, squeeze = self._as_batch(u)
        X = self._state(U, z0)
        return X.squeeze(0) if squeeze else X

    def forward(self, u: Tensor, z0: Tensor | None = None) -> Tensor:
        """Prediction ``y = C x + D u + d``, shape ``(batch, q)`` (``(q,)`` for a 1-D input).

        Args:
            u: ``(batch, p)`` or ``(p,)`` inputs.
            z0: ``(batch, k)`` warm start of the latent solver, or ``None``.

        Returns:
            ``(batch, q)`` predictions (``(q,)`` for a 1-D input).
        """
        U, squeeze = self._as_batch(u)
        Y = output_map(self._state(U, z0), U, self.C, self.D, self.d)
        return Y.squeeze(0) if squeeze else Y

    # ------------------------------------------------------------------ reports

    def config(self) -> dict:
        """JSON-serialisable constructor arguments (used by :mod:`idlkit.io`)."""
        return {
            "in_features": self.in_features, "hidden": self.hidden,
            "out_features": self.out_features, "rank": self.rank,
            "activation": self.activation.config(), "bias": self.b is not None,
            "wellposedness": self.wellposedness, "kappa": self.kappa, **self.settings.config(),
        }

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, hidden={self.hidden}, "
                f"out_features={self.out_features}, rank={self.rank}, "
                f"activation={self.activation!r}, bias={self.b is not None}, "
                f"wellposedness={self.wellposedness!r}, kappa={self.kappa:g}, "
                f"solver={self.settings.method!r}, tol={self.settings.tol:g}")


def _pf_factors(L: Tensor, R: Tensor, gamma: float) -> float:
    """``lambda_pf(gamma |R|^T |L|)`` in float64 (``k x k``, exact eigenvalues for k <= 1024)."""
    La = L.detach().to("cpu", torch.float64).abs().numpy()
    Ra = R.detach().to("cpu", torch.float64).abs().numpy()
    return float(gamma) * wp.pf_eigenvalue(Ra.T @ La)
