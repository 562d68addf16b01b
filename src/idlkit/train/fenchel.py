"""Fenchel-divergence relaxation and block-coordinate descent (paper 001 §4; paper 000 §6.1, §6.3).

Convention. Internally everything is in the papers' *column* convention: ``U`` is ``(p, m)``,
``X, P`` are ``(n, m)``, ``Y`` is ``(q, m)`` (one column per sample), so that the formulas
read as in paper 001 (``Z = A X + B U``). The public inputs are batch-first, as elsewhere in
idlkit (``U``: ``(m, p)``); the states returned in :class:`FenchelBCDResult` are batch-first
``(m, n)`` again. Computations run in float64.

Fenchel divergences (paper 001 eqs. 7-8, re-derived). For a componentwise activation
``phi = (g*)'`` with ``g`` convex, the Fenchel-Young gap ``F(x, z) = g(x) + g*(z) - x z`` is
``>= 0``, ``= 0`` iff ``x = phi(z)``, convex in each argument separately, and
``dF/dz = phi(z) - x``, ``dF/dx = g'(x) - z``.

* ReLU: ``g*(z) = 1/2 relu(z)^2``, ``g(x) = 1/2 x^2`` on ``x >= 0`` (``+inf`` otherwise):
  eq. 7, ``F = 1/2 x^2 + 1/2 relu(z)^2 - x z`` (the paper's text writes the domain as
  "``U >= 0``": it is ``X >= 0``).
* tanh: ``g*(z) = log cosh z``, ``g(x) = 1/2 [(1 + x) log(1 + x) + (1 - x) log(1 - x)]`` on
  ``|x| <= 1``. Expanding, ``g(x) = 1/2 [x log((1 + x)/(1 - x)) + log(1 - x^2)]``, which is
  the first part of eq. 8; but eq. 8 as printed puts ``log cosh Z`` *inside* the factor 1/2,
  which is not a Fenchel-Young gap and is unbounded below (``x = 0.9``, ``z -> inf`` gives
  ``-0.4 z``). We use ``F = g(x) + log cosh z - x z`` (1/2 applies to ``g`` only).

The relaxed training problem (eq. 11, eq. 10 for scalar ``lam``)::

    min  L(Y, C P + D U + d 1^T) + lam^T F(P, A X + B U + b 1^T) 1 + mu/2 ||X - P||_F^2
         + P(A, B, C, D)
    s.t. ||A||_inf <= kappa (or A strictly upper triangular, eq. 6), structural masks,
         optional l1 balls ||B||_1 <= beta_B, ||(C, D)||_1 <= beta_CD (eqs. 12-13)

with ``L`` the *sum* over samples of ``1/2 ||y - y_hat||^2`` or of the soft-max cross
entropy (eq. 4) and ``P`` = ``l1 (||B||_1 + ||C||_1 + ||D||_1)`` (eq. 5) or the
feature-selection group penalty ``w sum_j ||(B; D) e_j||_2`` (paper 000 eq. 5.1, alpha = 2),
plus an optional ridge ``r/2 ||(C, D)||_F^2``. Biases ``b, d`` (when the model has them) are
free, unpenalised columns.

Block-coordinate descent (§4.2), one sweep = the blocks in ``order``:

* ``CD``: ``min_{C,D,d} L(Y, C P + D U + d)`` (+ penalty) — problem 12. Squared error with
  no l1 term: exact (masked, ridge) least squares; otherwise accelerated proximal gradient
  with the exact Lipschitz constant (``sigma_max(V)^2``, ``/2`` for the cross entropy).
* ``AB``: ``min_{A,B,b} lam^T F(P, A X + B U + b) 1`` s.t. the well-posedness set — problem
  13, row-decomposable: accelerated proximal gradient, with per-row steps
  ``1 / (lam_i sigma_max([X; U; 1])^2)`` when the penalty is row-separable, and the exact
  row-wise l1-ball projection of :func:`idlkit.wellposed.project_inf_ball`.
* with the group penalty, which couples B and D, the two model blocks are one joint
  proximal-gradient block ``ABCD`` (group-lasso proximal operator :func:`group_lasso_prox`).
* rank sparsity (paper 001 §6.3). ``nuclear=w`` adds ``w ||A||_*`` to the penalty; the ``AB``
  step's proximal map on ``A`` is then the singular-value soft threshold
  (:func:`idlkit.compress.singular_value_threshold`, as in :func:`idlkit.compress.rank_step`)
  followed by the rescaling ``A <- A radius / ||A||_inf`` when it leaves the ball (which keeps
  the rank, where the row-wise projection would raise it). That composition is not the exact
  proximal map of ``w ||.||_* +`` the ball's indicator, so the block is a *feasible descent*
  method: the safeguarded FISTA rejects a step that would increase the objective.
  ``rank=k`` keeps ``A = L R^T`` (``L, R``: ``(n, k)``): the ``A`` update "is not jointly
  convex in ``A = L R^T`` but may be addressed by alternating over the factors" (§6.3), so the
  ``AB`` block becomes two convex blocks of the same objective, ``L`` (with ``B, b``; ``R``
  fixed: regressors ``[R^T X; U; 1]``) and ``R`` (``L, B, b`` fixed; ``Z = L R^T X + B U + b``,
  gradient ``X G^T L``, step ``1 / (max(lam) ||L||_2^2 ||X||_2^2)``). Well-posedness of the
  low-rank class: ``||L R^T||_inf <= ||L||_inf ||R||_1`` and ``lambda_pf(|R|^T |L|) =
  lambda_pf(|L| |R|^T) <= || |L| |R|^T ||_inf <= ||L||_inf ||R||_1`` (``||R||_1``: the largest
  column l1 norm), so the constraint ``||L||_inf ||R||_1 <= radius = kappa / gamma`` certifies
  both the dense ``||A||_inf`` set and the :class:`~idlkit.compress.LowRankImplicitModel`
  certificate ``gamma lambda_pf(|R|^T |L|) <= kappa``. With the other factor fixed it is an
  l1-ball per row of ``L`` (radius ``radius / ||R||_1``) or per column of ``R`` (radius
  ``radius / ||L||_inf``): convex, with the exact projection of
  :func:`idlkit.wellposed.project_inf_ball`, and the current factor is feasible, so each step is
  a projected-gradient descent step that never increases the objective. After the pair the
  factors are rebalanced (``L t, R / t`` with ``||L||_inf = ||R||_1``: ``A`` is unchanged).
  ``rank(A) <= k`` holds exactly in the factors (:attr:`FenchelBCDResult.L`, ``.R``).
* ``X``: problem 14, strictly convex and column-separable: damped Newton per column
  (Hessian ``A^T diag(lam phi'(Z)) A + mu I``) with Armijo backtracking; or the paper's
  fixed-point iteration ``X = P - mu^-1 A^T diag(lam) (phi(A X + B U) - P)`` (``x_solver=
  "fixed_point"``), used only when it contracts: its Lipschitz constant in l2 is at most
  ``max(lam) ||A||_2^2 / mu``. The paper states the condition as ``||A|| <= sqrt(mu/lam)`` and
  then "``mu < lam kappa^2``": the inequality is reversed (``mu >= lam kappa^2`` is what the
  bound needs), and the norm must be the spectral one (or ``||A||_1 ||A||_inf``), not
  ``||A||_inf`` alone. Not used by default.
* ``P``: problem 15, strictly convex and column-separable. ReLU: minimise over ``P >= 0``
  by accelerated projected gradient (the paper's "closed form" via
  ``P0 = (lam Z + mu X)/(lam + mu)`` ignores the constraint ``P >= 0``; the unconstrained
  least-squares solution is used as the starting point). tanh: damped Newton keeping
  ``|P| < 1`` (``g`` is a barrier: the minimiser is interior).

Every block is a descent step on the relaxed objective (exact solve or a monotone
safeguarded method, and a column or block whose update would increase the objective is left
unchanged), so the objective is non-increasing over blocks and sweeps.

Stationarity (Theorem 2). After each sweep the first-order stationarity measure of every
block is reported: the norm of the unit-step proximal-gradient residual
``||Theta - prox_h(Theta - grad_Theta f)||_F`` (for unconstrained smooth blocks, ``||grad||``;
for ``P >= 0``, ``||P - max(P - grad, 0)||``). It is 0 exactly at a stationary point of the
relaxed problem; BCD stops when the root sum of squares falls below ``tol`` (absolute: the
objective is a sum over samples). Theorem 2 asks ``lam > 0``, ``mu > 0``, a closed convex
penalty, a differentiable bounded-below loss and a differentiable divergence; the settings
that break them are refused with :class:`~idlkit.errors.ConfigurationError`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import wellposed as wp
from .._fista import scalar_fista as _fista_blocks
from .._validation import check_choice, check_int, check_kappa, check_positive
from ..activations import ReLU, Tanh
from ..errors import ConfigurationError, InputError, NonFiniteError, ShapeError
from .trainer import _as_tensors

__all__ = [
    "FENCHEL_ACTIVATIONS",
    "FENCHEL_LOSSES",
    "fenchel_divergence",
    "group_lasso_prox",
    "relaxed_objective",
    "fenchel_bcd",
    "FenchelSweep",
    "FenchelBCDResult",
    "layered_bcd",
    "LayeredBCDResult",
]

FENCHEL_ACTIVATIONS = ("relu", "tanh")
FENCHEL_LOSSES = ("squared_error", "cross_entropy")
_BLOCKS = ("CD", "AB", "X", "P")
_F64 = torch.float64


# ----------------------------------------------------------------------------- divergences


def _activation_name(activation: object) -> str:
    """``"relu"`` or ``"tanh"`` from a name or an Activation; anything else is refused."""
    if isinstance(activation, ReLU):
        return "relu"
    if isinstance(activation, Tanh):
        return "tanh"
    if isinstance(activation, str) and activation.lower() in FENCHEL_ACTIVATIONS:
        return activation.lower()
    raise ConfigurationError(
        f"no Fenchel divergence for activation {activation!r}: supported activations are "
        f"{list(FENCHEL_ACTIVATIONS)} (Theorem 2 needs a differentiable divergence); build the model "
        f"with activation='relu' or 'tanh'")


def _phi(z: Tensor, act: str) -> Tensor:
    return torch.relu(z) if act == "relu" else torch.tanh(z)


def _dphi(z: Tensor, act: str) -> Tensor:
    if act == "relu":
        return (z > 0).to(z.dtype)
    t = torch.tanh(z)
    return 1 - t * t


def _conj(z: Tensor, act: str) -> Tensor:
    """``g*(z)``: ``1/2 relu(z)^2`` or ``log cosh z`` (computed stably)."""
    if act == "relu":
        r = torch.relu(z)
        return 0.5 * r * r
    a = z.abs()
    return a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)


def _g(x: Tensor, act: str) -> Tensor:
    """``g(x)``, ``+inf`` outside the domain (``x >= 0``, resp. ``|x| <= 1``)."""
    inf = torch.full_like(x, math.inf)
    if act == "relu":
        return torch.where(x >= 0, 0.5 * x * x, inf)
    inside = x.abs() <= 1
    xc = x.clamp(-1, 1)
    val = 0.5 * (torch.special.xlogy(1 + xc, 1 + xc) + torch.special.xlogy(1 - xc, 1 - xc))
    return torch.where(inside, val, inf)


def _dg(x: Tensor, act: str) -> Tensor:
    """``g'(x)`` on the interior of the domain: ``x``, resp. ``atanh x``."""
    return x if act == "relu" else torch.atanh(x)


def fenchel_divergence(X: Tensor, Z: Tensor, activation: object = "relu",
                       reduction: str = "none") -> Tensor:
    """Fenchel divergence ``F(X, Z) = g(X) + g*(Z) - X Z`` elementwise (paper 001 eqs. 7-8).

    ReLU: ``1/2 X^2 + 1/2 relu(Z)^2 - X Z`` on ``X >= 0``; tanh: ``1/2[(1+X)log(1+X) +
    (1-X)log(1-X)] + log cosh Z - X Z`` on ``|X| <= 1`` (eq. 8 re-derived; see the module
    docstring). ``+inf`` outside the domain. ``F >= 0`` with equality iff ``X = phi(Z)``;
    ``dF/dZ = phi(Z) - X``. ``reduction``: ``"none"`` (elementwise) or ``"sum"``.

    Args:
        X: states, any shape.
        Z: pre-activations, ``X``'s shape.
        activation: ``"relu"`` or ``"tanh"``.
        reduction: ``"none"`` (elementwise) or ``"sum"``.

    Returns:
        Tensor of ``X``'s shape (a scalar for ``"sum"``), ``+inf`` outside the domain.

    Raises:
        ShapeError: ``X`` and ``Z`` of different shapes.
        InputError: ``X`` or ``Z`` not a tensor.
        ConfigurationError: an activation other than ReLU or tanh, or an unknown ``reduction``.

    Examples:
        >>> X = torch.tensor([[0.0, 1.0]]); Z = torch.tensor([[-1.0, 1.0]])
        >>> fenchel_divergence(X, Z, "relu")           # zero where X = relu(Z)
        tensor([[0., 0.]])
        >>> bool((fenchel_divergence(torch.rand(3, 4), torch.randn(3, 4)) >= 0).all())
        True
    """
    act = _activation_name(activation)
    if not isinstance(X, Tensor) or not isinstance(Z, Tensor):
        raise InputError("fenchel_divergence expects two tensors")
    if X.shape != Z.shape:
        raise ShapeError(f"X and Z must have the same shape, got {tuple(X.shape)} and {tuple(Z.shape)}")
    check_choice("reduction", reduction, ("none", "sum"))
    F = _g(X, act) + _conj(Z, act) - X * Z
    return F.sum() if reduction == "sum" else F


# ----------------------------------------------------------------------------- proximal maps


def group_lasso_prox(N: Tensor, threshold: float | Tensor) -> Tensor:
    """Proximal operator of ``t sum_j ||N e_j||_2`` (columns; paper 000 eq. 5.1, alpha = 2).

    Block soft thresholding: column ``v`` becomes ``v max(0, 1 - t / ||v||_2)``.

    Args:
        N: ``(k, p)`` matrix whose columns are shrunk.
        threshold: ``t >= 0``, scalar or ``(p,)`` per column.

    Returns:
        Tensor of ``N``'s shape.

    Examples:
        >>> N = torch.tensor([[3.0, 0.1], [4.0, 0.1]])     # column norms 5 and 0.14
        >>> group_lasso_prox(N, 1.0)                      # shrinks column 0 by 1/5, zeroes column 1
        tensor([[2.4000, 0.0000],
                [3.2000, 0.0000]])
    """
    norms = torch.linalg.vector_norm(N, dim=0, keepdim=True)
    scale = torch.clamp(1 - threshold / torch.clamp(norms, min=1e-300), min=0)
    return N * scale


def _soft(M: Tensor, t: float | Tensor) -> Tensor:
    return M - torch.clamp(M, -t, t) if not isinstance(t, float) or t > 0 else M


def _l1_ball(M: Tensor, radius: float | None) -> Tensor:
    """Exact projection onto ``{sum |M_kl| <= radius}`` (one row of :func:`wp.project_inf_ball`)."""
    if radius is None or M.numel() == 0:
        return M
    return wp.project_inf_ball(M.reshape(1, -1), radius).reshape(M.shape)


# ----------------------------------------------------------------------------- the problem


@dataclass(frozen=True)
class _Problem:
    """Data and settings of the relaxed problem (column convention, float64)."""

    U: Tensor  # (p, m)
    Y: Tensor  # (q, m): targets, or class probabilities for the cross entropy
    act: str
    loss: str
    lam: Tensor  # (n, 1)
    mu: float
    radius: float | None  # ||A||_inf bound (None: triangular only)
    masks: dict[str, Tensor]  # 0/1 patterns of A, B, C, D
    bias: bool
    l1: float
    group: float
    ridge: float
    ball_B: float | None
    ball_CD: float | None
    rank: int | None = None  # A = L R^T with (n, rank) factors (§6.3)
    nuclear: float = 0.0  # weight of ||A||_* (§6.3)

    @property
    def n(self) -> int:
        return self.lam.shape[0]

    @property
    def p(self) -> int:
        return self.U.shape[0]

    def W(self, X: Tensor) -> Tensor:
        """Regressors of the state equation, ``[X; U; 1]``."""
        parts = [X, self.U] + ([torch.ones_like(self.U[:1])] if self.bias else [])
        return torch.cat(parts, dim=0)

    def V(self, P: Tensor) -> Tensor:
        """Regressors of the output equation, ``[P; U; 1]``."""
        return self.W(P)


def _split(T: Tensor, n: int, p: int) -> tuple[Tensor, Tensor, Tensor | None]:
    return T[:, :n], T[:, n:n + p], (T[:, n + p:] if T.shape[1] > n + p else None)


def _loss(pb: _Problem, Yhat: Tensor) -> Tensor:
    """Per-column loss ``(m,)``."""
    if pb.loss == "squared_error":
        return 0.5 * ((Yhat - pb.Y) ** 2).sum(dim=0)
    return torch.logsumexp(Yhat, dim=0) - (pb.Y * Yhat).sum(dim=0)


def _dloss(pb: _Problem, Yhat: Tensor) -> Tensor:
    if pb.loss == "squared_error":
        return Yhat - pb.Y
    return torch.softmax(Yhat, dim=0) - pb.Y


def _loss_curvature(pb: _Problem) -> float:
    """Bound of the loss Hessian in ``y_hat``: 1, or 1/2 for the soft-max cross entropy."""
    return 1.0 if pb.loss == "squared_error" else 0.5


def _penalty(pb: _Problem, TAB: Tensor, TCD: Tensor) -> float:
    n, p = pb.n, pb.p
    _, B, _ = _split(TAB, n, p)
    C, D, _ = _split(TCD, n, p)
    val = 0.0
    if pb.l1:
        val += pb.l1 * float(B.abs().sum() + C.abs().sum() + D.abs().sum())
    if pb.group:
        val += pb.group * float(torch.linalg.vector_norm(torch.cat([B, D]), dim=0).sum())
    if pb.ridge:
        val += 0.5 * pb.ridge * float((C * C).sum() + (D * D).sum())
    if pb.nuclear:
        val += pb.nuclear * float(torch.linalg.matrix_norm(TAB[:, :n], ord="nuc"))
    return val


def _divergence_cols(pb: _Problem, P: Tensor, Z: Tensor) -> Tensor:
    """``sum_i lam_i F(P_ij, Z_ij)`` per column ``(m,)``."""
    return (pb.lam * (_g(P, pb.act) + _conj(Z, pb.act) - P * Z)).sum(dim=0)


def _objective(pb: _Problem, TAB: Tensor, TCD: Tensor, X: Tensor, P: Tensor) -> float:
    """The relaxed objective (eq. 10/11) at the given point."""
    Z = TAB @ pb.W(X)
    Yhat = TCD @ pb.V(P)
    return float(_loss(pb, Yhat).sum() + _divergence_cols(pb, P, Z).sum()
                 + 0.5 * pb.mu * ((X - P) ** 2).sum()) + _penalty(pb, TAB, TCD)


# ----------------------------------------------------------------------------- generic solvers


def _newton_columns(V0: Tensor, fun: Callable[[Tensor], Tensor], grad: Callable[[Tensor], Tensor],
                    hess: Callable[[Tensor], Tensor], max_iter: int, tol: float) -> Tensor:
    """Damped Newton on a sum of independent strictly convex column problems.

    ``fun(V)`` gives the per-column values ``(m,)`` (``+inf`` outside the domain),
    ``grad(V)`` ``(n, m)``, ``hess(V)`` ``(m, n, n)``. Armijo backtracking per column;
    columns whose line search fails keep their value (no increase).
    """
    V = V0.clone()
    fV = fun(V)
    live = torch.ones_like(fV, dtype=torch.bool)  # columns still being optimised
    for _ in range(max_iter):
        g = grad(V)
        H = hess(V)
        d = -torch.linalg.solve(H, g.t().unsqueeze(-1)).squeeze(-1).t()
        slope = (g * d).sum(dim=0)  # -(Newton decrement)^2 < 0 unless converged
        live &= -slope > 2 * tol
        if not bool(live.any()):
            break
        step = torch.ones_like(fV)
        accepted = ~live
        for _ls in range(60):
            cand = V + step * d
            fc = fun(cand)
            ok = (fc <= fV + 1e-4 * step * slope) & ~accepted
            fV = torch.where(ok, fc, fV)
            V = torch.where(ok, cand, V)
            accepted |= ok
            if bool(accepted.all()):
                break
            step = torch.where(accepted, step, step * 0.5)
        live &= accepted  # a failed line search means the column is at rounding level: freeze it
    return V


# ----------------------------------------------------------------------------- blocks


def _prox_B(pb: _Problem, B: Tensor, step: Tensor | float) -> Tensor:
    return _l1_ball(_soft(B, pb.l1 * step) * pb.masks["B"], pb.ball_B)


def _prox_AB(pb: _Problem, T: Tensor, step: Tensor | float) -> Tensor:
    n, p = pb.n, pb.p
    A, B, b = _split(T, n, p)
    A = A * pb.masks["A"]
    if pb.nuclear:
        A = _nuclear_prox(pb, A, pb.nuclear * float(step))
    elif pb.radius is not None:
        A = wp.project_inf_ball(A, pb.radius)
    B = _prox_B(pb, B, step)
    return torch.cat([A, B] + ([b] if b is not None else []), dim=1)


def _nuclear_prox(pb: _Problem, A: Tensor, threshold: float) -> Tensor:
    """Singular-value soft threshold, then back into ``||A||_inf <= radius`` by rescaling (which
    keeps the rank; module docstring)."""
    from ..compress.rank import singular_value_threshold  # compress imports train

    A = singular_value_threshold(A, threshold).to(A.dtype)
    if pb.radius is not None and A.numel():
        v = float(A.abs().sum(dim=1).max())
        if v > pb.radius:
            A = A * (pb.radius / v)
    return A


def _prox_CD(pb: _Problem, T: Tensor, step: Tensor | float) -> Tensor:
    n, p = pb.n, pb.p
    C, D, d = _split(T, n, p)
    C = _soft(C, pb.l1 * step) * pb.masks["C"]
    D = _soft(D, pb.l1 * step) * pb.masks["D"]
    if pb.ball_CD is not None:
        CD = _l1_ball(torch.cat([C, D], dim=1), pb.ball_CD)
        C, D = CD[:, :n], CD[:, n:]
    return torch.cat([C, D] + ([d] if d is not None else []), dim=1)


def _prox_joint(pb: _Problem, TAB: Tensor, TCD: Tensor, step: float) -> tuple[Tensor, Tensor]:
    """Prox of the group penalty on the columns of ``(B; D)`` plus the constraints of A, C, D."""
    n, p = pb.n, pb.p
    TAB = _prox_AB(pb, TAB, 0.0)
    TCD = _prox_CD(pb, TCD, 0.0)
    _, B, _ = _split(TAB, n, p)
    _, D, _ = _split(TCD, n, p)
    BD = group_lasso_prox(torch.cat([B, D]), pb.group * step)
    TAB = TAB.clone()
    TCD = TCD.clone()
    TAB[:, n:n + p] = BD[:n]
    TCD[:, n:n + p] = BD[n:]
    return TAB, TCD


def _grad_AB(pb: _Problem, TAB: Tensor, W: Tensor, P: Tensor) -> Tensor:
    Z = TAB @ W
    return (pb.lam * (_phi(Z, pb.act) - P)) @ W.t()


def _grad_CD(pb: _Problem, TCD: Tensor, V: Tensor) -> Tensor:
    G = _dloss(pb, TCD @ V) @ V.t()
    if pb.ridge:
        G = G + pb.ridge * _ridge_mask(pb, TCD) * TCD
    return G


def _ridge_mask(pb: _Problem, TCD: Tensor) -> Tensor:
    m = torch.ones_like(TCD)
    m[:, pb.n + pb.p:] = 0  # the intercept d is not penalised
    return m


def _sigma2(M: Tensor) -> float:
    return float(torch.linalg.matrix_norm(M, ord=2)) ** 2 if M.numel() else 0.0


def _row_separable(pb: _Problem) -> bool:
    return pb.group == 0 and pb.ball_B is None and pb.nuclear == 0


def _step_AB(pb: _Problem, TAB: Tensor, X: Tensor, P: Tensor, it: int, tol: float) -> Tensor:
    """Problem 13 by accelerated proximal gradient (rows decouple)."""
    W = pb.W(X)
    s2 = max(_sigma2(W), 1e-300)
    steps: Tensor | float = 1 / (pb.lam * s2) if _row_separable(pb) else 1 / (float(pb.lam.max()) * s2)

    def obj(v: list[Tensor]) -> float:
        return float(_divergence_cols(pb, P, v[0] @ W).sum()) + _penalty(pb, v[0], _zero_cd(pb))

    out = _fista_blocks([TAB], obj, lambda v: [_grad_AB(pb, v[0], W, P)],
                 lambda v, s: [_prox_AB(pb, v[0], s[0])], [steps], it, tol)
    return out[0]


# ----------------------------------------------------------------------------- rank-k A = L R^T (§6.3)


def _row_l1(L: Tensor) -> float:
    """``||L||_inf``: the largest row l1 norm."""
    return float(L.abs().sum(dim=1).max()) if L.numel() else 0.0


def _col_l1(R: Tensor) -> float:
    """``||R||_1``: the largest column l1 norm."""
    return float(R.abs().sum(dim=0).max()) if R.numel() else 0.0


def _balance(pb: _Problem, L: Tensor, R: Tensor) -> tuple[Tensor, Tensor]:
    """``(L t, R / t)`` with ``||L||_inf = ||R||_1`` (same ``L R^T``), both scaled down together
    when ``||L||_inf ||R||_1`` exceeds the radius (with a margin of 1e-12 for rounding)."""
    a, c = _row_l1(L), _col_l1(R)
    if a == 0 or c == 0:
        return L, R
    t = math.sqrt(c / a)
    L, R = L * t, R / t
    limit = None if pb.radius is None else pb.radius * (1 - 1e-12)
    if limit is not None and a * c > limit:
        f = math.sqrt(limit / (a * c))
        L, R = L * f, R * f
    return L, R


def _init_factors(pb: _Problem, A: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Balanced factors of the truncated SVD of ``A`` (singular values floored at ``1e-3 s_1``,
    or 1e-3 for ``A = 0``, so that neither factor starts at the saddle ``L = R = 0``), feasible."""
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    top = float(S[0]) if S.numel() and float(S[0]) > 0 else 1.0
    s = torch.clamp(S[:k], min=1e-3 * top).sqrt()
    return _balance(pb, U[:, :k] * s, Vh[:k].t() * s)


def _step_L(pb: _Problem, TAB: Tensor, L: Tensor, R: Tensor, X: Tensor, P: Tensor, it: int,
            tol: float) -> tuple[Tensor, Tensor]:
    """``(L, B, b)`` with ``R`` fixed: problem 13 with regressors ``[R^T X; U; 1]`` and the rows
    of ``L`` in the l1 ball of radius ``radius / ||R||_1`` (convex; rows decouple)."""
    n, p, k = pb.n, pb.p, L.shape[1]
    _, B, b = _split(TAB, n, p)
    W = pb.W(R.t() @ X)
    c = _col_l1(R)
    radius = None if pb.radius is None or c == 0 else pb.radius / c
    s2 = max(_sigma2(W), 1e-300)
    steps: Tensor | float = 1 / (pb.lam * s2) if _row_separable(pb) else 1 / (float(pb.lam.max()) * s2)

    def obj(v: list[Tensor]) -> float:
        return float(_divergence_cols(pb, P, v[0] @ W).sum()) + pb.l1 * float(v[0][:, k:k + p].abs().sum())

    def prox(v: list[Tensor], st: list[Tensor | float]) -> list[Tensor]:
        T = v[0]
        Lp = T[:, :k] if radius is None else wp.project_inf_ball(T[:, :k], radius)
        return [torch.cat([Lp, _prox_B(pb, T[:, k:k + p], st[0]), T[:, k + p:]], dim=1)]

    T0 = torch.cat([L, B] + ([b] if b is not None else []), dim=1)
    T = _fista_blocks([T0], obj, lambda v: [_grad_AB(pb, v[0], W, P)], prox, [steps], it, tol)[0]
    L = T[:, :k]
    return torch.cat([L @ R.t(), T[:, k:]], dim=1), L


def _step_R(pb: _Problem, TAB: Tensor, L: Tensor, R: Tensor, X: Tensor, P: Tensor, it: int,
            tol: float) -> tuple[Tensor, Tensor]:
    """``R`` with ``L, B, b`` fixed: ``Z = L R^T X + B U + b`` is linear in ``R``, the gradient
    of the divergence is ``X G^T L`` (``G = lam (phi(Z) - P)``); the columns of ``R`` stay in the
    l1 ball of radius ``radius / ||L||_inf`` (convex)."""
    n, p = pb.n, pb.p
    _, B, b = _split(TAB, n, p)
    Z0 = B @ pb.U + (b if b is not None else 0.0)
    a = _row_l1(L)
    radius = None if pb.radius is None or a == 0 else pb.radius / a
    step = 1 / max(float(pb.lam.max()) * _sigma2(L) * _sigma2(X), 1e-300)

    def z(Rv: Tensor) -> Tensor:
        return L @ (Rv.t() @ X) + Z0

    def grad(v: list[Tensor]) -> list[Tensor]:
        G = pb.lam * (_phi(z(v[0]), pb.act) - P)
        return [X @ (G.t() @ L)]

    def prox(v: list[Tensor], _s: list[Tensor | float]) -> list[Tensor]:
        return [v[0] if radius is None else wp.project_inf_ball(v[0].t(), radius).t()]

    R = _fista_blocks([R], lambda v: float(_divergence_cols(pb, P, z(v[0])).sum()), grad, prox,
                      [step], it, tol)[0]
    return torch.cat([L @ R.t(), TAB[:, n:]], dim=1), R


def _stationarity_factors(pb: _Problem, TAB: Tensor, L: Tensor, R: Tensor, X: Tensor,
                          P: Tensor) -> dict[str, float]:
    """Unit-step projected-gradient residuals of the ``L`` (with ``B, b``) and ``R`` blocks."""
    n, p, k = pb.n, pb.p, L.shape[1]
    W = pb.W(R.t() @ X)
    TL = torch.cat([L, TAB[:, n:]], dim=1)
    GL = _grad_AB(pb, TL, W, P)
    c, a = _col_l1(R), _row_l1(L)
    rl = None if pb.radius is None or c == 0 else pb.radius / c
    rr = None if pb.radius is None or a == 0 else pb.radius / a
    V = TL - GL
    Lp = V[:, :k] if rl is None else wp.project_inf_ball(V[:, :k], rl)
    new = torch.cat([Lp, _prox_B(pb, V[:, k:k + p], 1.0), V[:, k + p:]], dim=1)
    G = pb.lam * (_phi(L @ (R.t() @ X) + TAB[:, n:] @ W[k:], pb.act) - P)
    VR = R - X @ (G.t() @ L)
    Rp = VR if rr is None else wp.project_inf_ball(VR.t(), rr).t()
    return {"L": float(torch.linalg.norm(TL - new)), "R": float(torch.linalg.norm(R - Rp))}


def _zero_cd(pb: _Problem) -> Tensor:
    return torch.zeros(pb.Y.shape[0], pb.n + pb.p, dtype=_F64, device=pb.U.device)


def _zero_ab(pb: _Problem) -> Tensor:
    return torch.zeros(pb.n, pb.n + pb.p, dtype=_F64, device=pb.U.device)


def _lstsq_CD(pb: _Problem, V: Tensor) -> Tensor:
    """Exact (masked, ridge) least squares of ``Y`` on ``V = [P; U; 1]``, one output row at a time."""
    n, p = pb.n, pb.p
    q, k = pb.Y.shape[0], V.shape[0]
    mask = torch.ones(q, k, dtype=_F64)
    mask[:, :n] = pb.masks["C"]
    mask[:, n:n + p] = pb.masks["D"]
    T = torch.zeros(q, k, dtype=_F64)
    for i in range(q):
        cols = mask[i].nonzero().squeeze(1)
        if cols.numel() == 0:
            continue
        F = V[cols].t()
        y = pb.Y[i][:, None]
        if pb.ridge:
            pen = (cols < n + p).to(_F64) * math.sqrt(pb.ridge)
            F = torch.cat([F, torch.diag(pen)])
            y = torch.cat([y, y.new_zeros(cols.numel(), 1)])
        T[i, cols] = torch.linalg.lstsq(F, y, driver="gelsd").solution[:, 0]
    return T


def _cd_closed_form(pb: _Problem) -> bool:
    return pb.loss == "squared_error" and pb.l1 == 0 and pb.ball_CD is None and pb.group == 0


def _step_CD(pb: _Problem, TCD: Tensor, P: Tensor, it: int, tol: float) -> Tensor:
    """Problem 12: exact least squares, or accelerated proximal gradient."""
    V = pb.V(P)
    if _cd_closed_form(pb):
        return _lstsq_CD(pb, V)
    L = _loss_curvature(pb) * _sigma2(V) + pb.ridge

    def obj(v: list[Tensor]) -> float:
        return float(_loss(pb, v[0] @ V).sum()) + _penalty(pb, _zero_ab(pb), v[0])

    return _fista_blocks([TCD], obj, lambda v: [_grad_CD(pb, v[0], V)],
                  lambda v, s: [_prox_CD(pb, v[0], s[0])], [1 / max(L, 1e-300)], it, tol)[0]


def _step_joint(pb: _Problem, TAB: Tensor, TCD: Tensor, X: Tensor, P: Tensor, it: int,
                tol: float) -> tuple[Tensor, Tensor]:
    """(A, B, C, D) jointly: the group penalty couples B and D."""
    W, V = pb.W(X), pb.V(P)
    L = max(float(pb.lam.max()) * _sigma2(W), _loss_curvature(pb) * _sigma2(V) + pb.ridge, 1e-300)

    def obj(v: list[Tensor]) -> float:
        return (float(_divergence_cols(pb, P, v[0] @ W).sum() + _loss(pb, v[1] @ V).sum())
                + _penalty(pb, v[0], v[1]))

    def prox(v: list[Tensor], s: list[Tensor | float]) -> list[Tensor]:
        return list(_prox_joint(pb, v[0], v[1], float(s[0])))

    out = _fista_blocks([TAB, TCD], obj, lambda v: [_grad_AB(pb, v[0], W, P), _grad_CD(pb, v[1], V)],
                 prox, [1 / L, 1 / L], it, tol)
    return out[0], out[1]


def _x_parts(pb: _Problem, TAB: Tensor, P: Tensor) -> tuple[Tensor, Tensor]:
    n, p = pb.n, pb.p
    A, B, b = _split(TAB, n, p)
    R = B @ pb.U + (b if b is not None else 0)
    return A, R


def _step_X(pb: _Problem, TAB: Tensor, X: Tensor, P: Tensor, it: int, tol: float,
            solver: str) -> Tensor:
    """Problem 14: ``min_X lam^T F(P, A X + R) 1 + mu/2 ||X - P||^2``, column by column."""
    A, R = _x_parts(pb, TAB, P)
    lam, mu, act = pb.lam, pb.mu, pb.act

    def fun(V: Tensor) -> Tensor:
        Z = A @ V + R
        return (lam * (_conj(Z, act) - P * Z)).sum(dim=0) + 0.5 * mu * ((V - P) ** 2).sum(dim=0)

    def grad(V: Tensor) -> Tensor:
        return A.t() @ (lam * (_phi(A @ V + R, act) - P)) + mu * (V - P)

    if solver == "fixed_point":
        contraction = float(lam.max()) * _sigma2(A) / mu
        if contraction < 1:
            V = X.clone()
            for _ in range(it):
                V_new = P - A.t() @ (lam * (_phi(A @ V + R, act) - P)) / mu
                done = float((V_new - V).abs().max()) <= tol * (1 + float(V.abs().max()))
                V = V_new
                if done:
                    break
            return torch.where(fun(V) <= fun(X), V, X)
        # no contraction: fall back to Newton (the paper's iteration need not converge)

    def hess(V: Tensor) -> Tensor:
        w = lam * _dphi(A @ V + R, act)  # (n, m)
        H = torch.einsum("ia,im,ib->mab", A, w, A)
        return H + mu * torch.eye(A.shape[0], dtype=_F64)

    V = _newton_columns(X, fun, grad, hess, it, tol)
    return torch.where(fun(V) <= fun(X), V, X)


def _step_P(pb: _Problem, TAB: Tensor, TCD: Tensor, X: Tensor, P: Tensor, it: int,
            tol: float) -> Tensor:
    """Problem 15: ``min_P L(Y, C P + D U + d) + lam^T F(P, Z) 1 + mu/2 ||X - P||^2``."""
    n, p = pb.n, pb.p
    Z = TAB @ pb.W(X)
    C, D, d = _split(TCD, n, p)
    S = D @ pb.U + (d if d is not None else 0)
    lam, mu, act = pb.lam, pb.mu, pb.act

    def fun(V: Tensor) -> Tensor:
        return (_loss(pb, C @ V + S) + (lam * (_g(V, act) - V * Z)).sum(dim=0)
                + 0.5 * mu * ((X - V) ** 2).sum(dim=0))

    def grad(V: Tensor) -> Tensor:
        return C.t() @ _dloss(pb, C @ V + S) + lam * (_dg(V, act) - Z) + mu * (V - X)

    if act == "relu":
        V0 = P
        if pb.loss == "squared_error":
            # unconstrained minimiser (P0 of §4.2 and a least-squares solve), then clipped
            Lam = (lam + mu).squeeze(1)
            P0 = (lam * Z + mu * X) / (lam + mu)
            H = C.t() @ C + torch.diag(Lam)
            V0 = torch.relu(torch.linalg.solve(H, C.t() @ (pb.Y - S) + Lam[:, None] * P0))
            V0 = torch.where(fun(V0) <= fun(P), V0, P)
        L = _loss_curvature(pb) * _sigma2(C) + float(lam.max()) + mu
        out = _fista_blocks([V0], lambda v: float(fun(v[0]).sum()), lambda v: [grad(v[0])],
                     lambda v, s: [torch.relu(v[0])], [1 / L], it, tol)[0]
        return torch.where(fun(out) <= fun(P), out, P)

    def hess(V: Tensor) -> Tensor:
        Yhat = C @ V + S
        if pb.loss == "squared_error":
            HL = (C.t() @ C).expand(V.shape[1], n, n)
        else:
            s = torch.softmax(Yhat, dim=0)
            HL = torch.einsum("ia,im,ib->mab", C, s, C) - torch.einsum("ia,im,jm,jb->mab", C, s, s, C)
        diag = (lam / (1 - V * V) + mu).t()  # (m, n)
        return HL + torch.diag_embed(diag)

    out = _newton_columns(P, fun, grad, hess, it, tol)
    return torch.where(fun(out) <= fun(P), out, P)


# ----------------------------------------------------------------------------- stationarity


def _stationarity(pb: _Problem, TAB: Tensor, TCD: Tensor, X: Tensor, P: Tensor) -> dict[str, float]:
    """Unit-step proximal-gradient residual of every block (0 iff stationary, Theorem 2)."""
    W, V = pb.W(X), pb.V(P)
    gAB, gCD = _grad_AB(pb, TAB, W, P), _grad_CD(pb, TCD, V)
    out: dict[str, float] = {}
    if pb.group:
        nAB, nCD = _prox_joint(pb, TAB - gAB, TCD - gCD, 1.0)
        out["ABCD"] = math.sqrt(float(((TAB - nAB) ** 2).sum() + ((TCD - nCD) ** 2).sum()))
    else:
        out["AB"] = float(torch.linalg.norm(TAB - _prox_AB(pb, TAB - gAB, 1.0)))
        out["CD"] = float(torch.linalg.norm(TCD - _prox_CD(pb, TCD - gCD, 1.0)))
    A, R = _x_parts(pb, TAB, P)
    Z = A @ X + R
    out["X"] = float(torch.linalg.norm(A.t() @ (pb.lam * (_phi(Z, pb.act) - P)) + pb.mu * (X - P)))
    n, p = pb.n, pb.p
    C, D, d = _split(TCD, n, p)
    Yhat = C @ P + D @ pb.U + (d if d is not None else 0)
    gP = C.t() @ _dloss(pb, Yhat) + pb.lam * (_dg(P, pb.act) - Z) + pb.mu * (P - X)
    if pb.act == "relu":
        out["P"] = float(torch.linalg.norm(P - torch.relu(P - gP)))
    else:
        out["P"] = float(torch.linalg.norm(gP))
    return out


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class FenchelSweep:
    """One BCD sweep: the relaxed objective after each block, the stationarity measures.

    Attributes:
        sweep: 1-based sweep index.
        objective: relaxed objective at the end of the sweep.
        blocks: ``(block name, objective after it)`` in the order applied.
        stationarity: per-block proximal-gradient residual at the end of the sweep.
        stationarity_total: their root sum of squares.
    """

    sweep: int
    objective: float
    blocks: tuple[tuple[str, float], ...]
    stationarity: dict[str, float]
    stationarity_total: float


@dataclass(frozen=True)
class FenchelBCDResult:
    """Outcome of :func:`fenchel_bcd`.

    Attributes:
        objectives: relaxed objective at the start (index 0) and after every sweep.
        sweeps: the per-sweep records.
        converged: the stationarity measure fell below ``tol``.
        seconds: wall time.
        X: final states, batch-first ``(m, n)``.
        P: final proxies of the states, batch-first ``(m, n)``.
        L: with ``rank=k``, the float64 factor ``(n, k)`` of ``A = L R^T`` (the model holds
            their product in its dtype), ``||L||_inf ||R||_1 <= kappa / gamma``; else None.
        R: with ``rank=k``, the float64 factor ``(n, k)``; else None.
    """

    objectives: tuple[float, ...]
    sweeps: tuple[FenchelSweep, ...]
    converged: bool
    seconds: float
    X: Tensor
    P: Tensor
    L: Tensor | None = None
    R: Tensor | None = None

    @property
    def stationarity(self) -> float:
        return self.sweeps[-1].stationarity_total if self.sweeps else math.nan


# ----------------------------------------------------------------------------- validation


def _lam_vector(lam: object, n: int) -> Tensor:
    if isinstance(lam, int | float) and not isinstance(lam, bool):
        check_positive("lam", lam, example=1.0, why="the relaxation weight of Theorem 2")
        return torch.full((n, 1), float(lam), dtype=_F64)
    try:
        v = torch.as_tensor(lam, dtype=_F64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"lam must be a number or a length-{n} vector, got {lam!r}") from exc
    if v.numel() != n:
        raise ShapeError(f"lam has {v.numel()} entries, the model has n = {n} states")
    if not bool(torch.isfinite(v).all()) or bool((v <= 0).any()):
        bad = float(v[~(torch.isfinite(v) & (v > 0))][0])
        raise ConfigurationError(f"every entry of lam must be finite and > 0 (Theorem 2), found {bad}; "
                                 f"use small positive weights instead of zeros")
    return v[:, None]


def _targets(Y: Tensor, m: int, q: int, loss: str) -> Tensor:
    """Targets in column convention ``(q, m)`` float64 (class probabilities for the cross entropy)."""
    if loss == "cross_entropy" and Y.dim() == 1 and not Y.is_floating_point():
        if Y.numel() and (int(Y.min()) < 0 or int(Y.max()) >= q):
            raise InputError(f"labels must lie in [0, {q}), found {int(Y.min())}..{int(Y.max())}")
        return torch.nn.functional.one_hot(Y.long(), q).to(_F64).t()
    if not Y.is_floating_point():
        raise InputError(f"targets must be floating for loss={loss!r}, got dtype {Y.dtype}")
    Y = Y.reshape(-1, 1) if Y.dim() == 1 and q == 1 else Y
    if Y.dim() != 2 or Y.shape != (m, q):
        raise ShapeError(f"targets must have shape ({m}, {q}), got {tuple(Y.shape)}")
    return Y.to(_F64).t()


def _masks(masks: Mapping[str, Tensor] | None, shapes: dict[str, tuple[int, int]],
           triangular: bool) -> dict[str, Tensor]:
    out = {k: torch.ones(s, dtype=_F64) for k, s in shapes.items()}
    for k, M in (masks or {}).items():
        if k not in shapes:
            raise ConfigurationError(f"mask key {k!r} unknown; masks apply to {sorted(shapes)}")
        M = torch.as_tensor(M)
        if tuple(M.shape) != shapes[k]:
            raise ShapeError(f"mask for {k} has shape {tuple(M.shape)}, expected {shapes[k]}")
        out[k] = (M != 0).to(_F64)
    if triangular:
        out["A"] = out["A"] * torch.triu(torch.ones(shapes["A"], dtype=_F64), diagonal=1)
    return out


# ----------------------------------------------------------------------------- the driver


def relaxed_objective(model: nn.Module, U: Tensor, Y: Tensor, X: Tensor, P: Tensor, *, lam: object,
                      mu: float, loss: str = "squared_error", l1: float = 0.0, group: float = 0.0,
                      ridge: float = 0.0) -> float:
    """The relaxed objective of eq. 10/11 at the model's ``A, B, C, D`` (and ``b, d``).

    ``U`` ``(m, p)``, ``Y`` ``(m, q)`` (or labels for the cross entropy), ``X, P`` ``(m, n)``
    batch-first. ``+inf`` when ``P`` is outside the divergence's domain. Constraints are
    not checked (they are indicator terms, 0 on the feasible set).

    Args:
        model: an :class:`~idlkit.ImplicitModel` (its ``A, B, C, D``, ``b, d``).
        U: ``(m, p)`` inputs.
        Y: ``(m, q)`` targets (labels for the cross entropy).
        X: ``(m, n)`` state variables.
        P: ``(m, n)`` pre-activation variables.
        lam: relaxation weight, scalar (eq. 10) or one per state (eq. 11).
        mu: coupling weight of ``mu/2 ||X - P||^2``.
        loss: ``"squared_error"`` or ``"cross_entropy"``.
        l1: weight of ``||B||_1 + ||C||_1 + ||D||_1`` (eq. 5).
        group: weight of the feature-selection penalty.
        ridge: weight of ``ridge/2 ||(C, D)||_F^2``.

    Returns:
        The objective as a float (``+inf`` outside the divergence's domain).

    Examples:
        >>> model = idlkit.ImplicitModel(3, 4, 2, kappa=0.5, dtype=torch.float64)
        >>> U = torch.randn(6, 3, dtype=torch.float64); Y = torch.randn(6, 2, dtype=torch.float64)
        >>> X = model.equilibrium(U).detach()                  # (m, n): the model's own states
        >>> obj = relaxed_objective(model, U, Y, X, X, lam=1.0, mu=1.0)   # P = X
        >>> Yhat = model(U).detach()
        >>> abs(obj - float(0.5 * ((Yhat - Y) ** 2).sum())) < 1e-8   # F(X, AX + BU + b) = 0, X - P = 0
        True
    """
    pb = _problem(model, U, Y, lam, mu, loss, None, None, {}, l1, group, ridge, None, None)
    TAB, TCD = _thetas(model)
    return _objective(pb, TAB, TCD, X.to(_F64).t(), P.to(_F64).t())


def _thetas(model: nn.Module) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        ab = [model.A, model.B] + ([model.b[:, None]] if model.b is not None else [])
        cd = [model.C, model.D] + ([model.d[:, None]] if model.d is not None else [])
        return torch.cat(ab, 1).to(_F64).clone(), torch.cat(cd, 1).to(_F64).clone()


def _problem(model: nn.Module, U: Tensor, Y: Tensor, lam: object, mu: object, loss: str,
             radius: float | None, triangular: bool | None, masks: Mapping[str, Tensor] | None,
             l1: float, group: float, ridge: float, ball_B: float | None,
             ball_CD: float | None) -> _Problem:
    act = _activation_name(model.activation)
    if loss not in FENCHEL_LOSSES:
        raise ConfigurationError(f"unknown loss {loss!r}; choose one of {list(FENCHEL_LOSSES)}")
    n, p, q = model.hidden, model.in_features, model.out_features
    if n == 0:
        raise ConfigurationError("the model has no state (hidden = 0): nothing to relax; fit D directly")
    if not isinstance(U, Tensor) or not U.is_floating_point():
        raise InputError(f"inputs must be a floating tensor, got {getattr(U, 'dtype', type(U))}")
    if U.dim() != 2 or U.shape[1] != p:
        raise ShapeError(f"inputs must have shape (m, {p}), got {tuple(U.shape)}")
    if not bool(torch.isfinite(U).all()):
        raise NonFiniteError("inputs contain NaN or Inf")
    if Y.is_floating_point() and not bool(torch.isfinite(Y).all()):
        raise NonFiniteError("targets contain NaN or Inf")
    m = U.shape[0]
    shapes = {"A": (n, n), "B": (n, p), "C": (q, n), "D": (q, p)}
    return _Problem(
        U=U.to(_F64).t(), Y=_targets(Y, m, q, loss), act=act, loss=loss, lam=_lam_vector(lam, n),
        mu=check_positive("mu", mu, example=1.0, why="the coupling of X and P, eq. 10"),
        radius=radius, masks=_masks(masks, shapes, bool(triangular)), bias=model.b is not None,
        l1=check_positive("l1", l1, allow_zero=True), group=check_positive("group", group, allow_zero=True),
        ridge=check_positive("ridge", ridge, allow_zero=True),
        ball_B=None if ball_B is None else check_positive("ball_B", ball_B, why="or None for no l1 ball"),
        ball_CD=None if ball_CD is None else check_positive("ball_CD", ball_CD, why="or None for no l1 ball"))


def _wellposed_set(model: nn.Module, kappa: float | None, triangular: bool | None
                   ) -> tuple[float | None, bool]:
    """``(radius of ||A||_inf, triangular)`` from the arguments and the model's declared set."""
    declared = getattr(model, "wellposedness", None)
    tri = declared == "triangular" if triangular is None else bool(triangular)
    if declared == "triangular" and not tri:
        raise ConfigurationError("the model declares wellposedness='triangular': pass triangular=True "
                                 "(or leave it None)")
    if kappa is None:
        if tri:
            return None, True
        kappa = float(model.kappa)
    kappa = check_kappa(kappa, example=0.5, why="||A||_inf <= kappa < 1 makes A well-posed, "
                        "and Theorem 2 needs a well-posed A")
    if declared == "inf" and kappa > model.kappa:
        raise ConfigurationError(f"kappa = {kappa} exceeds the model's declared kappa = {model.kappa}: "
                                 f"the learned A would violate it; pass kappa <= {model.kappa}")
    return float(kappa) / model.activation.lipschitz_inf, tri


def fenchel_bcd(model: nn.Module, train_data: object, *, lam: float | Sequence[float] | Tensor,
                mu: float, kappa: float | None = None, iterations: int = 10,
                loss: str = "squared_error", triangular: bool | None = None,
                masks: Mapping[str, Tensor] | None = None, l1: float = 0.0, group: float = 0.0,
                ridge: float = 0.0, ball_B: float | None = None, ball_CD: float | None = None,
                order: Sequence[str] = _BLOCKS, tol: float = 1e-6, inner_iterations: int = 200,
                inner_tol: float = 1e-10, x_solver: str = "newton",
                callback: Callable[[FenchelSweep], None] | None = None, rank: int | None = None,
                nuclear: float = 0.0) -> FenchelBCDResult:
    """Block-coordinate descent on the Fenchel relaxation (paper 001 eqs. 10-15, Theorem 2).

    Args:
        model: an :class:`~idlkit.ImplicitModel` with ReLU or tanh activation; its ``A, B,
            C, D`` (``b, d``) are the starting point and receive the result.
        train_data: ``(U, Y)``, ``U`` ``(m, p)``, ``Y`` ``(m, q)`` (labels ``(m,)`` or
            probabilities for the cross entropy).
        lam: relaxation weight ``> 0``, scalar (eq. 10) or one per state (eq. 11).
        mu: coupling ``mu/2 ||X - P||^2``, ``> 0``.
        kappa: ``||A||_inf <= kappa < 1``; default: the model's kappa (none for a
            triangular model).
        iterations: maximum number of sweeps.
        loss: ``"squared_error"`` (``1/2 ||.||_F^2``) or ``"cross_entropy"`` (eq. 4), summed
            over samples.
        triangular: restrict A to strictly upper triangular (eq. 6); default: the model's
            declared ``wellposedness == "triangular"``.
        masks: 0/1 patterns (keys ``A, B, C, D``) of the allowed nonzeros (structure, e.g.
            ``D = 0`` in eq. 6).
        l1: weight of ``||B||_1 + ||C||_1 + ||D||_1`` (eq. 5).
        group: weight of the feature-selection penalty ``sum_j ||(B; D) e_j||_2`` (paper 000
            eq. 5.1); makes the model step one joint (A, B, C, D) block.
        ridge: ``ridge/2 ||(C, D)||_F^2``.
        ball_B: l1-ball radius ``||B||_1 <= ball_B`` (eq. 12).
        ball_CD: l1-ball radius ``||(C, D)||_1 <= ball_CD`` (eq. 13).
        order: the blocks of a sweep, a permutation of ``("CD", "AB", "X", "P")``.
        tol: stop when the stationarity measure (Theorem 2) falls below it.
        inner_iterations: iteration limit of each block's solver.
        inner_tol: tolerance of each block's solver.
        x_solver: ``"newton"`` or ``"fixed_point"`` (the paper's iteration; Newton is used
            when it does not contract).
        callback: called with each :class:`FenchelSweep`.
        rank: keep ``A = L R^T`` with ``(n, rank)`` factors, ``1 <= rank <= n`` (paper 001
            §6.3): the ``AB`` block becomes the blocks ``"L"`` (with ``B, b``) and ``"R"``,
            alternating convex steps under ``||L||_inf ||R||_1 <= kappa / gamma`` (module
            docstring); the factors start from the truncated SVD of the model's ``A``. Not with
            ``triangular``, a mask on ``A``, ``group`` or ``nuclear``.
        nuclear: weight ``>= 0`` of the rank-sparsity penalty ``||A||_*`` (§6.3); its ``A``
            step is the singular-value soft threshold. Not with ``triangular`` or a mask on A.

    Raises:
        ConfigurationError: bad settings (unknown loss, ``rank`` outside ``[1, n]``, a
            negative weight, incompatible options, ...).

    Examples:
        >>> model = idlkit.ImplicitModel(3, 6, 1, wellposedness="inf", kappa=0.5, dtype=torch.float64)
        >>> U = torch.randn(50, 3, dtype=torch.float64); Y = U[:, :1].clone()
        >>> res = fenchel_bcd(model, (U, Y), lam=1.0, mu=1.0, iterations=3, rank=2)
        >>> torch.linalg.matrix_rank(res.L @ res.R.T).item() <= 2
        True
    """
    t0 = time.perf_counter()
    check_int("iterations", iterations, 0)
    check_choice("x_solver", x_solver, ("newton", "fixed_point"))
    if sorted(order) != sorted(_BLOCKS):
        raise ConfigurationError(f"order must be a permutation of {list(_BLOCKS)}, got {list(order)!r}")
    if group and (l1 or ball_B is not None or ball_CD is not None):
        raise ConfigurationError("group (feature selection) cannot be combined with l1, ball_B or "
                                 "ball_CD: their joint proximal map is not implemented; use one")
    radius, tri = _wellposed_set(model, kappa, triangular)
    check_positive("mu", mu, example=1.0, why="the coupling of X and P, eq. 10")
    _lam_vector(lam, model.hidden)
    U, Y = _as_tensors(train_data, "train_data")
    if not U.is_floating_point():
        raise InputError(f"inputs must be a floating tensor, got dtype {U.dtype}")
    if U.dim() != 2:
        U = U.reshape(U.shape[0], -1)
    pb = _problem(model, U, Y, lam, mu, loss, radius, tri, masks, l1, group, ridge, ball_B, ball_CD)
    pb = _rank_settings(pb, rank, nuclear)

    TAB, TCD = _thetas(model)
    # start from a feasible point: the projections are no-ops for a model that satisfies them
    if group:
        TAB, TCD = _prox_joint(pb, TAB, TCD, 0.0)
    else:
        TAB, TCD = _prox_AB(pb, TAB, 0.0), _prox_CD(pb, TCD, 0.0)
    L = R = None
    if pb.rank is not None:
        L, R = _init_factors(pb, TAB[:, :pb.n], pb.rank)
        TAB = torch.cat([L @ R.t(), TAB[:, pb.n:]], dim=1)
    with torch.no_grad():
        _write(model, pb, TAB, TCD)
        X = model.equilibrium(U.to(model.A.dtype)).to(_F64).t()
    # into the divergence's domain (the solver's rounding can leave -1e-17 or |x| = 1)
    X = X.clamp(-1 + 1e-12, 1 - 1e-12) if pb.act == "tanh" else X.clamp(min=0)
    P = X.clone()
    objectives = [_objective(pb, TAB, TCD, X, P)]
    sweeps: list[FenchelSweep] = []
    converged = False
    it, itol = inner_iterations, inner_tol
    for k in range(1, iterations + 1):
        blocks: list[tuple[str, float]] = []
        done_model = False
        for name in order:
            if name in ("AB", "CD") and pb.group:
                if done_model:
                    continue
                TAB, TCD = _step_joint(pb, TAB, TCD, X, P, it, itol)
                done_model, name = True, "ABCD"
            elif name == "AB" and L is not None and R is not None:
                TAB, L = _step_L(pb, TAB, L, R, X, P, it, itol)
                blocks.append(("L", _objective(pb, TAB, TCD, X, P)))
                TAB, R = _step_R(pb, TAB, L, R, X, P, it, itol)
                L, R = _balance(pb, L, R)
                TAB = torch.cat([L @ R.t(), TAB[:, pb.n:]], dim=1)
                name = "R"
            elif name == "AB":
                TAB = _step_AB(pb, TAB, X, P, it, itol)
            elif name == "CD":
                TCD = _step_CD(pb, TCD, P, it, itol)
            elif name == "X":
                X = _step_X(pb, TAB, X, P, it, itol, x_solver)
            else:
                P = _step_P(pb, TAB, TCD, X, P, it, itol)
            blocks.append((name, _objective(pb, TAB, TCD, X, P)))
        stat = _stationarity(pb, TAB, TCD, X, P)
        if L is not None and R is not None:
            del stat["AB"]
            stat.update(_stationarity_factors(pb, TAB, L, R, X, P))
        total = math.sqrt(sum(v * v for v in stat.values()))
        rec = FenchelSweep(k, blocks[-1][1], tuple(blocks), stat, total)
        sweeps.append(rec)
        objectives.append(rec.objective)
        if callback is not None:
            callback(rec)
        if total <= tol:
            converged = True
            break
    _write(model, pb, TAB, TCD)
    return FenchelBCDResult(tuple(objectives), tuple(sweeps), converged, time.perf_counter() - t0,
                            X.t().contiguous(), P.t().contiguous(), L, R)


def _rank_settings(pb: _Problem, rank: object, nuclear: object) -> _Problem:
    """``pb`` with the rank-sparsity options (§6.3) validated."""
    nuclear = check_positive("nuclear", nuclear, allow_zero=True, example=1e-3,
                             why="the weight of the nuclear norm of A")
    a_masked = bool((pb.masks["A"] == 0).any())
    if rank is not None:
        rank = check_int("rank", rank, 1)
        if rank > pb.n:
            raise ConfigurationError(f"rank = {rank} exceeds the state size n = {pb.n}; pass 1 <= rank "
                                     f"<= {pb.n} (rank = n is the unconstrained A)")
        if a_masked or pb.group or nuclear:
            raise ConfigurationError("rank=k keeps A = L R^T: it cannot be combined with a triangular "
                                     "or masked A, group or nuclear (their A steps are not factored); "
                                     "drop one of them")
    if nuclear and a_masked:
        raise ConfigurationError("nuclear: the singular-value threshold of A does not keep a triangular "
                                 "or masked pattern; use nuclear without triangular/masks['A']")
    return dataclasses.replace(pb, rank=rank, nuclear=float(nuclear))


def _write(model: nn.Module, pb: _Problem, TAB: Tensor, TCD: Tensor) -> None:
    """Copy the parameters into the model (its dtype), keeping ``A`` inside its set."""
    n, p = pb.n, pb.p
    A, B, b = _split(TAB, n, p)
    C, D, d = _split(TCD, n, p)
    with torch.no_grad():
        A = A.to(model.A.dtype)
        if pb.radius is not None:
            A = wp.project_inf_ball(A, pb.radius)  # rounding to a lower precision
        model.A.copy_(A)
        model.B.copy_(B)
        model.C.copy_(C)
        model.D.copy_(D)
        if b is not None:
            model.b.copy_(b[:, 0])
            model.d.copy_(d[:, 0])


# ----------------------------------------------------------------------------- layered (eq. 9) BCD


@dataclass(frozen=True)
class LayeredBCDResult:
    """Outcome of :func:`layered_bcd`.

    Attributes:
        weights: the learned ``W_1, ..., W_{L+1}`` (float64, ``(out, in)`` as in ``y = W x``).
        states: the final relaxed states ``X_1, ..., X_L``, batch-first ``(m, n_l)``.
        objectives: the objective of eq. 9 at the start (index 0) and after every sweep.
        block_objectives: per sweep, ``(block name, objective after it)`` in the order applied.
        seconds: wall time.
    """

    weights: tuple[Tensor, ...]
    states: tuple[Tensor, ...]
    objectives: tuple[float, ...]
    block_objectives: tuple[tuple[tuple[str, float], ...], ...]
    seconds: float


def _layer_lams(lam: object, eps: object, L: int) -> list[float]:
    """``lam_l`` of the hidden layers ``l = 1..L``: given, or ``eps^(L+1-l)`` (§4.1, §7.1)."""
    if lam is not None:
        vals = [float(v) for v in (lam if isinstance(lam, Sequence) else [lam] * L)]
        if len(vals) != L:
            raise ShapeError(f"lam has {len(vals)} entries, the network has L = {L} hidden layers")
        for v in vals:
            check_positive("every lam_l", v, why="the relaxation weights must be positive, Theorem 2")
        return vals
    e = check_positive("eps", eps, example=1e-3, why="paper 001 §7.1")
    return [e ** (L + 1 - l) for l in range(1, L + 1)]


def _layered_objective(Ws: list[Tensor], U: Tensor, Y: Tensor, Xs: list[Tensor], lams: list[float],
                       act: str) -> float:
    """Eq. 9 for a feedforward net (column convention): ``1/2 ||Y - W_{L+1} X_L||^2 +
    sum_l lam_l f(X_l, W_l X_{l-1})``, ``X_0 = U``."""
    val = 0.5 * float(((Y - Ws[-1] @ Xs[-1]) ** 2).sum())
    prev = U
    for W, X, lam_l in zip(Ws[:-1], Xs, lams, strict=True):
        Z = W @ prev
        val += lam_l * float((_g(X, act) + _conj(Z, act) - X * Z).sum())
        prev = X
    return val


def _glm_rows(W: Tensor, Xin: Tensor, Xout: Tensor, act: str, it: int, tol: float) -> Tensor:
    """The W-step ``min_W f(Xout, W Xin) = sum g*(W Xin) - <Xout, W Xin> + const``.

    Row-separable generalised linear model (for tanh a logistic-like loss): damped Newton per
    row with Hessian ``Xin diag(phi'(w^T Xin)) Xin^T``, shifted by ``1e-10`` times its mean
    diagonal so that a rank-deficient ``Xin`` (e.g. a singular input covariance) still gives
    a descent direction; Armijo backtracking keeps every row monotone.
    """
    n_in = Xin.shape[0]
    eye = torch.eye(n_in, dtype=_F64)

    def fun(V: Tensor) -> Tensor:  # V = W^T: one column per row of W
        Z = V.t() @ Xin
        return (_conj(Z, act) - Xout * Z).sum(dim=1)

    def grad(V: Tensor) -> Tensor:
        return Xin @ (_phi(V.t() @ Xin, act) - Xout).t()

    def hess(V: Tensor) -> Tensor:
        w = _dphi(V.t() @ Xin, act)  # (n_out, m)
        H = torch.einsum("am,km,bm->kab", Xin, w, Xin)
        shift = 1e-10 * H.diagonal(dim1=1, dim2=2).mean(dim=1).clamp(min=1e-300)
        return H + shift[:, None, None] * eye

    V0 = W.t().contiguous()
    V = _newton_columns(V0, fun, grad, hess, it, tol)
    return torch.where(fun(V) <= fun(V0), V, V0).t().contiguous()


def _layer_x_step(X: Tensor, Z: Tensor, lam_l: float, act: str, Wnext: Tensor, target: Tensor,
                  lam_next: float | None, it: int, tol: float) -> Tensor:
    """The X_l-step of eq. 9: ``min_X lam_l f(X, Z) + top(X)``, column-separable, strictly convex.

    ``top`` is ``1/2 ||target - Wnext X||^2`` for the last hidden layer (``lam_next`` None,
    ``target = Y``) and ``lam_next f(target, Wnext X)`` otherwise (``target = X_{l+1}``): ``X``
    is the first argument of its own divergence (convex through ``g``) and inside the second
    argument of the next one (convex through ``g*``). Damped Newton per column, staying
    inside the domain ``|X| < 1`` (``g`` is a barrier).
    """
    def fun(V: Tensor) -> Tensor:
        own = lam_l * (_g(V, act) - V * Z).sum(dim=0)
        if lam_next is None:
            return own + 0.5 * ((target - Wnext @ V) ** 2).sum(dim=0)
        Zn = Wnext @ V
        return own + lam_next * (_conj(Zn, act) - target * Zn).sum(dim=0)

    def grad(V: Tensor) -> Tensor:
        own = lam_l * (_dg(V, act) - Z)
        if lam_next is None:
            return own + Wnext.t() @ (Wnext @ V - target)
        return own + lam_next * Wnext.t() @ (_phi(Wnext @ V, act) - target)

    def hess(V: Tensor) -> Tensor:
        own = torch.diag_embed((lam_l / (1 - V * V)).t())
        if lam_next is None:
            return own + (Wnext.t() @ Wnext).expand(V.shape[1], -1, -1)
        w = lam_next * _dphi(Wnext @ V, act)
        return own + torch.einsum("ia,im,ib->mab", Wnext, w, Wnext)

    V = _newton_columns(X, fun, grad, hess, it, tol)
    return torch.where(fun(V) <= fun(X), V, X)


def layered_bcd(weights: Sequence[Tensor], train_data: object, *, eps: float | None = None,
                lam: float | Sequence[float] | None = None, iterations: int = 5,
                activation: object = "tanh", inner_iterations: int = 50, inner_tol: float = 1e-12,
                callback: Callable[[int, float, tuple[Tensor, ...]], None] | None = None
                ) -> LayeredBCDResult:
    """BCD on the direct (proxy-free) relaxation, eq. 9, of a feedforward network (paper 001 §7.1).

    The network ``y = W_{L+1} phi(W_L ... phi(W_1 u))`` (no biases) is fitted through

        ``min  1/2 ||Y - W_{L+1} X_L||_F^2 + sum_{l=1..L} lam_l f(X_l, W_l X_{l-1})``,  ``X_0 = U``,

    i.e. eq. 9 with the feedforward structure of eq. 6 (strictly upper triangular A) and one
    state block per layer, with ``lam_l = eps^(L+1-l)`` (the "scaled" weights of eq. 11:
    ``eps`` for the last hidden layer, ``eps^L`` for the first) unless ``lam`` is given.
    Unlike :func:`fenchel_bcd` (eq. 10/11) there is no proxy ``P``: each layer's state enters
    its own divergence and the next one directly, which is jointly convex in one layer's
    state (the divergence is biconvex and the layers do not overlap), but not in all states
    at once. One sweep is the paper's order ``W_{L+1}, X_L, W_L, X_{L-1}, ..., X_1, W_1``:
    ``W_{L+1}`` by least squares (closed form); each ``X_l`` and each ``W_l`` by damped Newton
    to optimality (column-, resp. row-separable strictly convex problems). Every block is
    an exact minimisation (or a safeguarded monotone step), so the objective is
    non-increasing. The states start at the forward pass of the initial weights.

    Args:
        weights: initial ``W_1, ..., W_{L+1}`` (``W_l`` of shape ``(n_l, n_{l-1})``), ``L >= 1``.
        train_data: ``(U, Y)``, ``U`` ``(m, n_0)``, ``Y`` ``(m, n_{L+1})``.
        eps: the hyper-parameter of §4.1 (``lam_l = eps^(L+1-l)``); or give ``lam``.
        lam: the per-layer weights ``lam_1..lam_L`` (scalar: the same for every layer).
        iterations: number of sweeps.
        activation: ``"tanh"`` (the X-steps use the barrier ``g`` of the tanh divergence, eq.
            8; the ReLU divergence has the constraint ``X >= 0`` and is not supported here:
            use :func:`fenchel_bcd`).
        inner_iterations: Newton iteration limit per block.
        inner_tol: Newton tolerance per block.
        callback: called with ``(sweep, objective, weights)`` after each sweep.

    Examples:
        >>> W = [0.5 * torch.randn(4, 3, dtype=torch.float64), 0.5 * torch.randn(2, 4, dtype=torch.float64)]
        >>> U = torch.randn(10, 3, dtype=torch.float64); Y = torch.randn(10, 2, dtype=torch.float64)
        >>> res = layered_bcd(W, (U, Y), eps=0.5, iterations=3)
        >>> [w.shape for w in res.weights], len(res.objectives)
        ([torch.Size([4, 3]), torch.Size([2, 4])], 4)
        >>> res.objectives[-1] <= res.objectives[0] + 1e-9
        True
    """
    t0 = time.perf_counter()
    act = _activation_name(activation)
    if act != "tanh":
        raise ConfigurationError("layered_bcd supports activation='tanh' only (its X-steps are "
                                 "unconstrained Newton solves); for ReLU use fenchel_bcd")
    check_int("iterations", iterations, 0)
    Ws = [torch.as_tensor(W).detach().to(_F64).clone() for W in weights]
    if len(Ws) < 2 or any(W.dim() != 2 for W in Ws):
        raise ShapeError("weights must be at least two matrices W_1, ..., W_{L+1}")
    for a, b in zip(Ws[:-1], Ws[1:], strict=True):
        if b.shape[1] != a.shape[0]:
            raise ShapeError(f"weights do not chain: {tuple(a.shape)} then {tuple(b.shape)}")
    L = len(Ws) - 1
    lams = _layer_lams(lam, eps, L)
    U, Y = _as_tensors(train_data, "train_data")
    if not U.is_floating_point() or not Y.is_floating_point():
        raise InputError("inputs and targets must be floating tensors")
    U = U.reshape(U.shape[0], -1).to(_F64).t()
    Y = (Y.reshape(-1, 1) if Y.dim() == 1 else Y).to(_F64).t()
    if U.shape[0] != Ws[0].shape[1] or Y.shape[0] != Ws[-1].shape[0]:
        raise ShapeError(f"data ({U.shape[0]} inputs, {Y.shape[0]} outputs) do not match the weights "
                         f"({Ws[0].shape[1]} inputs, {Ws[-1].shape[0]} outputs)")
    Xs: list[Tensor] = []
    prev = U
    for W in Ws[:-1]:
        prev = _phi(W @ prev, act).clamp(-1 + 1e-12, 1 - 1e-12)
        Xs.append(prev)
    objectives = [_layered_objective(Ws, U, Y, Xs, lams, act)]
    history: list[tuple[tuple[str, float], ...]] = []
    it, itol = inner_iterations, inner_tol
    for k in range(1, iterations + 1):
        blocks: list[tuple[str, float]] = []
        Ws[-1] = torch.linalg.lstsq(Xs[-1].t(), Y.t(), driver="gelsd").solution.t().contiguous()
        blocks.append((f"W{L + 1}", _layered_objective(Ws, U, Y, Xs, lams, act)))
        for l in range(L, 0, -1):  # noqa: E741 - the layer index of the paper
            below = Xs[l - 2] if l >= 2 else U
            if l == L:
                Xs[l - 1] = _layer_x_step(Xs[l - 1], Ws[l - 1] @ below, lams[l - 1], act, Ws[l], Y, None,
                                          it, itol)
            else:
                Xs[l - 1] = _layer_x_step(Xs[l - 1], Ws[l - 1] @ below, lams[l - 1], act, Ws[l], Xs[l],
                                          lams[l], it, itol)
            blocks.append((f"X{l}", _layered_objective(Ws, U, Y, Xs, lams, act)))
            Ws[l - 1] = _glm_rows(Ws[l - 1], below, Xs[l - 1], act, it, itol)
            blocks.append((f"W{l}", _layered_objective(Ws, U, Y, Xs, lams, act)))
        history.append(tuple(blocks))
        objectives.append(blocks[-1][1])
        if callback is not None:
            callback(k, objectives[-1], tuple(W.clone() for W in Ws))
    return LayeredBCDResult(tuple(Ws), tuple(X.t().contiguous() for X in Xs), tuple(objectives),
                            tuple(history), time.perf_counter() - t0)
