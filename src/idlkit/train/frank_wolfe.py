"""Frank-Wolfe (conditional gradient) training of sparse implicit models (paper 000 §6.2).

The paper (end of §6.2) proposes conditional gradients to obtain sparse model matrices:
each step only solves a linear problem ``max_A Tr G^T A : ||A||_inf <= kappa`` over the
well-posedness set, "solvable in closed form", and adds few nonzeros to the model. The
formulas below are re-derived here (the text of the paper available to us garbles them),
with the sign convention of a minimisation: the linear minimisation oracle (LMO) is
``S = argmin_{S in K} <G, S>`` for the gradient ``G`` of the loss.

Constraint set (a product of convex sets, one per updated block)::

    K = {||A||_inf <= kappa / gamma_inf} x {||B||_1 <= beta_B} x {||C||_1 <= beta_C}
        x {||D||_1 <= beta_D}

with ``||A||_inf`` the max row sum of ``|A|`` (the well-posedness condition of problem 6.4;
``gamma_inf`` is the activation's l_inf Lipschitz constant, 1 for ReLU) and ``||M||_1`` the
*elementwise* l1 norm ``sum_kl |M_kl|``. Both LMOs are closed form:

* ``{||A||_inf <= r}`` is the product over rows of l1 balls of radius ``r``; a linear
  function over an l1 ball is minimised at a vertex ``-r sign(g_j*) e_j*`` with
  ``j* = argmax_j |g_j|``, so ``S`` has one nonzero per row (:func:`lmo_inf_ball`);
* the elementwise l1 ball of radius ``beta`` has the vertices ``+-beta E_kl``; the
  minimiser is ``-beta sign(G_kl) E_kl`` at the largest ``|G_kl|`` (:func:`lmo_l1_ball`).

A step ``M <- (1 - gamma_t) M + gamma_t S`` (a convex combination of two points of ``K``)
keeps every iterate feasible, hence the model well-posed throughout, and adds at most one
nonzero per row of ``A`` and one nonzero to each of ``B, C, D``: after ``t`` steps a row of
``A`` has at most ``nnz_0 + t`` nonzeros (at most ``t`` with the default first step
``gamma_0 = 1``, which replaces the initial point by a vertex).

The Frank-Wolfe duality gap ``g_t = sum_blocks <G_M, M - S_M> >= 0`` is reported at every
step. For a convex objective it bounds ``f(M_t) - f*``; the training loss of an implicit
model is *not* convex in ``(A, B)`` (nor jointly in ``(A, C)``), so here it is only a
first-order stationarity measure: ``g = 0`` iff ``M`` satisfies the first-order optimality
condition ``<grad f(M), M' - M> >= 0`` for all ``M'`` in ``K``.

The biases ``b, d`` are not part of the constraint set and are left unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .. import wellposed as wp
from .._validation import check_choice, check_int, check_positive
from ..errors import ConfigurationError, NonFiniteError, ShapeError, WellPosednessError
from .trainer import LOSSES, _as_tensors

__all__ = ["frank_wolfe", "lmo_inf_ball", "lmo_l1_ball", "FWRecord", "FWResult", "fw_gap"]

_L1_BLOCKS = ("B", "C", "D")
_STEP_SIZES = ("default", "line_search")
_ON_INFEASIBLE = ("project", "raise")


# ----------------------------------------------------------------------------- oracles


def _check_radius(radius: float, name: str = "radius") -> float:
    return check_positive(name, radius, allow_zero=True)


def _check_matrix(G: Tensor, name: str) -> None:
    if not isinstance(G, Tensor) or G.dim() != 2:
        raise ShapeError(f"{name} expects a 2-D gradient tensor, got {getattr(G, 'shape', type(G))}")
    if not bool(torch.isfinite(G).all()):
        raise NonFiniteError(f"{name}: the gradient contains NaN or Inf")


def lmo_inf_ball(G: Tensor, radius: float) -> Tensor:
    """``argmin_S <G, S> : ||S||_inf <= radius`` (max row sum of ``|S|``), closed form.

    The set is the product of the row l1 balls ``{||s_i||_1 <= radius}``, so the problem
    separates over rows; ``min_{||s||_1 <= r} g^T s = -r ||g||_inf`` is attained at
    ``s = -r sign(g_j*) e_j*`` with ``j* = argmax_j |g_j|`` (the first one on ties). Rows
    with ``g_i = 0`` give a zero row (any point is optimal; zero keeps ``S`` sparsest).
    Returns a tensor like ``G`` with at most one nonzero per row; the optimal value is
    ``<G, S> = -radius * sum_i max_j |G_ij|``.

    Args:
        G: ``(n, m)`` gradient.
        radius: the ball's radius ``r >= 0``.

    Returns:
        ``S``, like ``G``, with at most one nonzero per row.

    Examples:
        >>> G = torch.tensor([[1.0, -3.0], [2.0, 0.5]])
        >>> S = lmo_inf_ball(G, 1.0)
        >>> S, float((G * S).sum())              # each row puts its radius on its largest |G_ij|
        (tensor([[ 0.,  1.],
                [-1.,  0.]]), -5.0)
    """
    _check_matrix(G, "lmo_inf_ball")
    r = _check_radius(radius)
    S = torch.zeros_like(G)
    if G.numel() == 0:
        return S
    j = G.abs().argmax(dim=1, keepdim=True)
    S.scatter_(1, j, -r * torch.sign(G.gather(1, j)))
    return S


def lmo_l1_ball(G: Tensor, radius: float) -> Tensor:
    """``argmin_S <G, S> : sum_kl |S_kl| <= radius`` (elementwise l1 ball), closed form.

    A linear function over the l1 ball is minimised at a vertex ``+-radius E_kl``: the best
    is ``-radius sign(G_kl) E_kl`` at the largest ``|G_kl|`` (the first in row-major order
    on ties), with value ``-radius max_kl |G_kl|``. ``G = 0`` gives ``S = 0``.

    Args:
        G: gradient, any shape.
        radius: the ball's radius ``r >= 0``.

    Returns:
        ``S``, like ``G``, with at most one nonzero.

    Examples:
        >>> G = torch.tensor([[1.0, -3.0], [2.0, 0.5]])
        >>> lmo_l1_ball(G, 2.0)                  # the whole radius on the largest |G_kl|
        tensor([[0., 2.],
                [0., 0.]])
    """
    _check_matrix(G, "lmo_l1_ball")
    r = _check_radius(radius)
    S = torch.zeros_like(G)
    if G.numel() == 0:
        return S
    k = int(G.abs().argmax())
    S.view(-1)[k] = -r * torch.sign(G.reshape(-1)[k])
    return S


def fw_gap(grads: dict[str, Tensor], params: dict[str, Tensor], vertices: dict[str, Tensor]) -> float:
    """The Frank-Wolfe gap ``sum_blocks <G_M, M - S_M>`` (float64); ``>= 0`` when each ``S_M`` is
    the LMO of ``G_M`` over a set that contains ``M``.

    Args:
        grads: ``name -> G_M`` gradients of the blocks.
        params: ``name -> M`` current values.
        vertices: ``name -> S_M`` the LMO's answers.

    Returns:
        The gap as a float.

    Examples:
        >>> G = {"A": torch.tensor([[1.0, -3.0], [2.0, 0.5]])}
        >>> M = {"A": torch.zeros(2, 2)}
        >>> S = {"A": lmo_inf_ball(G["A"], 1.0)}
        >>> fw_gap(G, M, S)                      # <G, M - S> = 3 + 2
        5.0
    """
    return float(sum(float((grads[k].double() * (params[k].double() - vertices[k].double())).sum())
                     for k in grads))


# ----------------------------------------------------------------------------- feasibility


def _project_block(M: Tensor, radius: float, rowwise: bool) -> Tensor:
    """Exact Euclidean projection onto ``{||M||_inf <= r}`` (``rowwise``) or the elementwise l1
    ball (one flattened row), via :func:`idlkit.wellposed.project_inf_ball`."""
    if radius == 0:
        return torch.zeros_like(M)
    if rowwise:
        return wp.project_inf_ball(M, radius)
    return wp.project_inf_ball(M.reshape(1, -1), radius).reshape(M.shape)


def _norm(M: Tensor, rowwise: bool) -> float:
    if M.numel() == 0:
        return 0.0
    absM = M.detach().abs().double()
    return float(absM.sum(dim=1).max()) if rowwise else float(absM.sum())


def _shrink_rounding(M: Tensor, radius: float, rowwise: bool) -> None:
    """In place: rows (or the whole block) that rounding left above ``radius`` by a few ulps are
    scaled back inside (a scaling keeps the sparsity pattern)."""
    if M.numel() == 0:
        return
    sums = M.abs().sum(dim=1, dtype=torch.float64) if rowwise else M.abs().sum(dtype=torch.float64)
    over = sums > radius
    if not bool(over.any()):
        return
    target = radius * (1 - 8 * torch.finfo(M.dtype).eps)
    factor = torch.where(over, target / sums, torch.ones_like(sums)).to(M.dtype)
    M.mul_(factor[:, None] if rowwise else factor)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class FWRecord:
    """One Frank-Wolfe step ``t`` (0-based), measured at the iterate ``M_t`` *before* the update:
    the (mini-batch) loss, the duality gap ``<grad, M_t - S_t>`` summed over the updated blocks,
    the step ``gamma_t`` taken, and ``nnz(A_t)`` in total and in its fullest row.

    Attributes:
        step: the step ``t``, 0-based.
        loss: the (mini-batch) loss at ``M_t``.
        gap: the duality gap ``<grad, M_t - S_t>`` over the updated blocks.
        gamma: the step ``gamma_t`` taken.
        nnz_A: number of nonzeros of ``A_t``.
        max_row_nnz_A: nonzeros of the fullest row of ``A_t``.
    """

    step: int
    loss: float
    gap: float
    gamma: float
    nnz_A: int
    max_row_nnz_A: int


@dataclass(frozen=True)
class FWResult:
    """History of :func:`frank_wolfe`; ``final_loss`` is the mean loss on the whole training data
    after the last step and ``nnz`` the number of nonzeros of each matrix at the end.

    Attributes:
        history: one :class:`FWRecord` per step.
        final_loss: mean loss on the whole training data after the last step.
        nnz: number of nonzeros of each matrix at the end, by name.
        seconds: wall time of the run.
    """

    history: tuple[FWRecord, ...]
    final_loss: float
    nnz: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


# ----------------------------------------------------------------------------- training


def _loss_value(model: nn.Module, loss_fn: Callable[..., Tensor], X: Tensor, y: Tensor,
                chunk: int = 4096) -> float:
    """Mean loss over ``(X, y)`` without gradients (by chunks)."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, X.shape[0], chunk):
            yb = y[i:i + chunk]
            total += float(loss_fn(model(X[i:i + chunk]), yb)) * yb.shape[0]
    return total / X.shape[0]


def frank_wolfe(model: nn.Module, train_data: object, *,
                loss: str | Callable[..., Tensor] = "cross_entropy", steps: int = 100,
                kappa: float | None = None, radii: dict[str, float] | None = None,
                update_A: bool = True, batch_size: int | None = None, step_size: str = "default",
                t0: int = 0, on_infeasible: str = "project", seed: int = 0,
                log: Callable[[FWRecord], object] | None = None) -> FWResult:
    """Train ``model`` (an :class:`~idlkit.ImplicitModel`) in place by Frank-Wolfe steps (§6.2).

    Each step takes a batch (the whole data when ``batch_size is None``), computes the implicit
    gradient of the mean loss with autograd (``model(u)``, then ``torch.autograd.grad``: the
    adjoint equilibrium solve of App. G), calls the closed-form LMO of each updated block
    (:func:`lmo_inf_ball` for ``A``, :func:`lmo_l1_ball` for ``B, C, D``) and updates
    ``M <- (1 - gamma_t) M + gamma_t S`` in place.

    Args:
        model: implicit model with parameters ``A, B, C, D`` (and ``kappa``, ``activation``).
        train_data: ``(X, y)`` (arrays or tensors) or a ``TensorDataset`` of two tensors.
        loss: ``"cross_entropy"``, ``"squared_error"`` or ``f(y_hat, y) -> mean loss``.
        steps: number of Frank-Wolfe steps (>= 0).
        kappa: the bound of ``gamma_inf ||A||_inf <= kappa`` (default ``model.kappa``); must lie
            in (0, 1) and not exceed ``model.kappa`` when the model enforces a condition.
        radii: l1 radii of the blocks ``"B"``, ``"C"``, ``"D"`` to update (>= 0); blocks not
            named are not updated (nor are the biases).
        update_A: update ``A`` over ``{||A||_inf <= kappa / gamma_inf}``.
        batch_size: mini-batch size (stochastic FW), ``None`` for the full batch. Batches run
            through seeded random permutations of the data (``seed``; nothing global is seeded).
        step_size: ``"default"``: ``gamma_t = 2 / (t + t0 + 2)``; ``"line_search"``: Armijo
            backtracking ``gamma = 1, 1/2, 1/4, ...`` (at most 30 halvings) until the loss on the
            step's batch satisfies ``f(M + gamma (S - M)) <= f(M) - 1e-4 gamma g_t`` (the FW
            direction has directional derivative ``-g_t``); ``gamma = 0`` if none does.
        t0: offset of the default step; ``t0 = 0`` makes ``gamma_0 = 1`` (the first step
            replaces ``M`` by a vertex), ``t0 > 0`` keeps part of the initial point.
        on_infeasible: a starting point outside ``K``: ``"project"`` (default) replaces each
            block by its exact Euclidean projection (:func:`idlkit.wellposed.project_inf_ball`,
            rows of ``A`` / flattened ``B, C, D``); ``"raise"`` raises
            :class:`~idlkit.errors.WellPosednessError` (for ``A``) or
            :class:`~idlkit.errors.ConfigurationError` (a radius smaller than ``||M||_1``).
        seed: seed of the batch order.
        log: ``f(FWRecord)`` called after every step.

    Returns:
        :class:`FWResult` with one :class:`FWRecord` per step.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5)
        >>> U = torch.randn(32, 3); Y = torch.randint(0, 2, (32,))
        >>> res = frank_wolfe(model, (U, Y), steps=5)
        >>> len(res.history), idlkit.wellposed.inf_norm(model.A) <= 0.5 + 1e-6
        (5, True)
    """
    if isinstance(loss, str) and loss not in LOSSES:
        raise ConfigurationError(f"unknown loss {loss!r}; choose one of {list(LOSSES)} or pass a "
                                 f"callable")
    loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
    check_int("steps", steps, 0)
    check_int("batch_size", batch_size, 1, allow_none=True)
    check_choice("step_size", step_size, _STEP_SIZES)
    check_choice("on_infeasible", on_infeasible, _ON_INFEASIBLE)
    check_int("t0", t0, 0)
    for k in ("A", "B", "C", "D"):
        if not isinstance(getattr(model, k, None), Tensor):
            raise ConfigurationError(f"frank_wolfe needs a model with parameters A, B, C, D; "
                                     f"{type(model).__name__} has no {k}")
    radii = dict(radii or {})
    for k, r in radii.items():
        if k not in _L1_BLOCKS:
            raise ConfigurationError(f"radii keys must be among {list(_L1_BLOCKS)} (A is bounded by "
                                     f"kappa), got {k!r}")
        radii[k] = _check_radius(r, f"radius of {k}")

    sets: dict[str, tuple[float, bool]] = {}  # block -> (radius, rowwise)
    kind = getattr(model, "wellposedness", None)
    if update_A:
        if kind == "triangular":
            raise ConfigurationError("the Frank-Wolfe vertices of the inf ball are not triangular: "
                                     "use a model with wellposedness='inf' (or update_A=False)")
        model_kappa = float(getattr(model, "kappa", 0.95))
        kappa = wp.check_kappa(model_kappa if kappa is None else kappa)
        if kind is not None and kappa > model_kappa:
            raise ConfigurationError(f"kappa = {kappa:g} exceeds the model's kappa = {model_kappa:g}: "
                                     f"its well-posedness check would reject the iterates")
        gamma_inf = float(getattr(getattr(model, "activation", None), "lipschitz_inf", 1.0))
        sets["A"] = (kappa / gamma_inf, True)
    for k in _L1_BLOCKS:
        if k in radii:
            sets[k] = (radii[k], False)
    params = {k: getattr(model, k) for k in sets}
    for k, P in params.items():
        if not P.requires_grad:
            raise ConfigurationError(f"parameter {k} does not require gradients")

    # ---- data
    X, y = _as_tensors(train_data, "train_data")
    dtype = model.A.dtype
    X = X.to(dtype)
    if y.is_floating_point():
        y = y.to(dtype)
    m = X.shape[0]
    bs = m if batch_size is None else min(batch_size, m)

    # ---- feasible start
    with torch.no_grad():
        for k, (r, rowwise) in sets.items():
            P = params[k]
            value = _norm(P, rowwise)
            if value <= r * (1 + 1e-12):
                _shrink_rounding(P, r, rowwise)
                continue
            if on_infeasible == "raise":
                if k == "A":
                    raise WellPosednessError(
                        f"the initial A has ||A||_inf = {value:.6g} > kappa / gamma_inf = {r:.6g}; "
                        f"project it (model.project_(), or on_infeasible='project')")
                raise ConfigurationError(f"the initial {k} has ||{k}||_1 = {value:.6g} > radius {r:g}; "
                                         f"raise the radius or use on_infeasible='project'")
            P.copy_(_project_block(P, r, rowwise))
            _shrink_rounding(P, r, rowwise)

    # ---- iterations
    gen = torch.Generator().manual_seed(int(seed))
    perm, pos = torch.arange(m), m
    history: list[FWRecord] = []
    t_start = time.perf_counter()
    names = list(params)
    for t in range(steps):
        if bs == m:
            Xb, yb = X, y
        else:
            if pos + bs > m:
                perm, pos = torch.randperm(m, generator=gen), 0
            idx = perm[pos:pos + bs]
            pos += bs
            Xb, yb = X[idx], y[idx]
        value = loss_fn(model(Xb), yb)
        if not bool(torch.isfinite(value)):
            raise NonFiniteError(f"the loss became {float(value)} at Frank-Wolfe step {t}")
        grads = dict(zip(names, torch.autograd.grad(value, [params[k] for k in names], allow_unused=True,
                                                    materialize_grads=True), strict=True))
        f0 = float(value.detach())
        with torch.no_grad():
            S = {k: (lmo_inf_ball if sets[k][1] else lmo_l1_ball)(grads[k], sets[k][0]) for k in names}
            gap = fw_gap(grads, {k: params[k].detach() for k in names}, S)
            A = model.A.detach()
            nnz_rows = (A != 0).sum(dim=1) if A.numel() else torch.zeros(1, dtype=torch.long)
            nnz_A, max_row = int(nnz_rows.sum()), int(nnz_rows.max())
            if step_size == "default":
                gamma = 2.0 / (t + t0 + 2)
                for k in names:
                    params[k].mul_(1 - gamma).add_(S[k], alpha=gamma)
            else:
                start = {k: params[k].detach().clone() for k in names}
                gamma = 1.0
                for _ in range(31):
                    for k in names:
                        params[k].copy_(start[k]).mul_(1 - gamma).add_(S[k], alpha=gamma)
                        _shrink_rounding(params[k], *sets[k])
                    trial = float(loss_fn(model(Xb), yb))
                    if math.isfinite(trial) and trial <= f0 - 1e-4 * gamma * gap:
                        break
                    gamma /= 2
                else:
                    gamma = 0.0
                    for k in names:
                        params[k].copy_(start[k])
            for k in names:
                _shrink_rounding(params[k], *sets[k])
        rec = FWRecord(t, f0, gap, gamma, nnz_A, max_row)
        history.append(rec)
        if log is not None:
            log(rec)
    final = _loss_value(model, loss_fn, X, y)
    nnz = {k: int((getattr(model, k).detach() != 0).sum()) for k in ("A", "B", "C", "D")}
    return FWResult(tuple(history), final, nnz, time.perf_counter() - t_start)
