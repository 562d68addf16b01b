"""Empirical Lipschitz lower bound: the largest ``||f(u) - f(v)|| / ||u - v||`` found by gradient
ascent over input pairs (paper 004's "Lipschitz constant" comparisons; the "empirical Lipschitz"
column of LBEN, Revay, Wang & Manchester 2020).

Every ratio found is a certified *lower* bound of the true Lipschitz constant, so it can never
exceed a valid certificate (:func:`idlkit.robust.lipschitz_bound`, :meth:`idlkit.baselines.MON.
lipschitz_inf`): putting the two side by side measures how tight the certificate is, and a ratio
above a certificate would disprove it.

Search (ours): each pair starts at a data point ``u`` (rows of ``U``, drawn with ``generator``)
and ``v = u + delta`` with ``||delta|| = r`` on a radius drawn log-uniformly in ``radius`` (small
radii probe the local gradient norm, large ones the global behaviour). Then ``steps`` ascent steps
on ``log |f(u + delta) - f(u)|_j`` with ``||delta|| <= r`` move both points (the radius is held by
the projection, so the numerator is maximised over the ball). In l_inf the constant
splits over output rows, ``sup ||df||_inf / ||du||_inf = max_j sup |df_j| / ||du||_inf``, so pair
``k`` ascends on row ``j = k mod q`` (a random rotation): a max over rows would trap pairs on a
locally largest row. Its step is signed, ``step_size * r`` per coordinate, with ``delta`` clipped
to the box ``[-r, r]`` (whose vertices are where a locally linear ``f`` attains the ratio). In
l2 (no such split) the objective is the whole norm, the step the normalised gradient and
``delta`` is projected onto the ball of radius ``r``. The ratio recorded is always the full
``||f(u) - f(v)|| / ||u - v||``, and the best of every pair over all steps is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_positive
from ..errors import ConfigurationError, NonFiniteError, ShapeError

__all__ = ["EmpiricalLipschitz", "empirical_lipschitz"]

NORMS = ("inf", "2")


@dataclass(frozen=True)
class EmpiricalLipschitz:
    """Result of :func:`empirical_lipschitz`.

    Attributes:
        value: the largest ratio ``||f(u) - f(v)|| / ||u - v||`` found (a lower bound of the
            Lipschitz constant in ``norm``).
        u: ``(p,)`` first input of the pair that attains it.
        v: ``(p,)`` second input of that pair.
        norm: ``"inf"`` or ``"2"`` (the same norm on inputs and outputs).
        trials: ratios evaluated (``pairs * (steps + 1)``).
        per_pair: ``(pairs,)`` best ratio of each pair.
    """

    value: float
    u: Tensor
    v: Tensor
    norm: str
    trials: int
    per_pair: Tensor


def _norm(x: Tensor, norm: str) -> Tensor:
    return x.abs().amax(dim=1) if norm == "inf" else x.norm(dim=1)


def _project(delta: Tensor, r: Tensor, norm: str) -> Tensor:
    if norm == "inf":
        return torch.maximum(torch.minimum(delta, r), -r)
    scale = torch.clamp(r[:, 0] / delta.norm(dim=1).clamp_min(1e-300), max=1.0)
    return delta * scale[:, None]


def _step(g: Tensor, norm: str) -> Tensor:
    if norm == "inf":
        return g.sign()
    return g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)


def empirical_lipschitz(model: nn.Module, U: Tensor, *, norm: str = "inf", pairs: int | None = None,
                        steps: int = 50, radius: tuple[float, float] = (1e-3, 1.0),
                        step_size: float = 0.2, generator: torch.Generator | None = None
                        ) -> EmpiricalLipschitz:
    """Largest ``||f(u) - f(v)|| / ||u - v||`` found by gradient ascent from pairs near ``U``.

    Works for any module mapping ``(batch, p)`` to ``(batch, q)`` (an
    :class:`~idlkit.ImplicitModel`, :class:`~idlkit.baselines.MON`, :class:`~idlkit.baselines.MLP`,
    ...); gradients come from its own backward (implicit for equilibrium models). See the module
    docstring for the search.

    Args:
        model: the function ``f``.
        U: ``(N, p)`` data the pairs start from (the model's dtype).
        norm: ``"inf"`` (l_inf on inputs and outputs, paper 004's bound) or ``"2"``.
        pairs: number of pairs (default ``min(N, 256)``); rows of ``U`` drawn with replacement
            when ``pairs > N``.
        steps: ascent steps per pair (0: the random starting pairs only).
        radius: ``(r_min, r_max)``, the range of ``||u - v||`` at the start (log-uniform).
        step_size: step per iteration as a fraction of the pair's radius.
        generator: random source of the starting pairs (reproducible runs).

    Returns:
        :class:`EmpiricalLipschitz` (``value`` and its pair ``u, v``).

    Examples:
        >>> f = torch.nn.Linear(3, 2, bias=False, dtype=torch.float64)
        >>> with torch.no_grad(): _ = f.weight.copy_(torch.tensor([[1., -2., 0.5], [0., 1., 1.]]))
        >>> g = torch.Generator().manual_seed(0)
        >>> U = torch.randn(64, 3, dtype=torch.float64, generator=g)
        >>> round(empirical_lipschitz(f, U, steps=10, generator=g).value, 9)   # ||W||_inf
        3.5
    """
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(U, Tensor) or not U.is_floating_point() or U.dim() != 2 or U.shape[0] == 0:
        raise ShapeError(f"U must be a non-empty floating tensor of shape (N, p), got "
                         f"{getattr(U, 'shape', type(U).__name__)} {getattr(U, 'dtype', '')}")
    if not bool(torch.isfinite(U).all()):
        raise NonFiniteError("U contains NaN or Inf; clean the data first")
    check_choice("norm", norm, NORMS)
    pairs = min(U.shape[0], 256) if pairs is None else check_int("pairs", pairs, 1)
    steps = check_int("steps", steps, 0)
    step_size = float(check_positive("step_size", step_size))
    if (len(radius) != 2 or not all(math.isfinite(float(r)) and float(r) > 0 for r in radius)
            or float(radius[0]) > float(radius[1])):
        raise ConfigurationError(f"radius must be (r_min, r_max) with 0 < r_min <= r_max, got "
                                 f"{radius!r}")
    dev, dt = U.device, U.dtype
    idx = (torch.randperm(U.shape[0], generator=generator)[:pairs] if pairs <= U.shape[0]
           else torch.randint(U.shape[0], (pairs,), generator=generator))
    u = U.detach()[idx.to(dev)].clone()
    lo, hi = math.log(float(radius[0])), math.log(float(radius[1]))
    r = torch.exp(lo + (hi - lo) * torch.rand(pairs, 1, generator=generator, dtype=dt)).to(dev)
    if norm == "inf":
        delta = r * (2 * torch.randint(0, 2, u.shape, generator=generator).to(dt).to(dev) - 1)
    else:
        g = torch.randn(u.shape, generator=generator, dtype=dt).to(dev)
        delta = r * g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)
    best = torch.zeros(pairs, dtype=dt, device=dev)
    offset = int(torch.randint(1 << 16, (1,), generator=generator))
    best_u, best_v = u.clone(), u + delta
    trials = 0
    was_training = model.training
    model.eval()
    try:
        for it in range(steps + 1):
            with torch.enable_grad():
                uu = u.clone().requires_grad_(it < steps)
                dd = delta.clone().requires_grad_(it < steps)
                out = model(torch.cat([uu, uu + dd]))
                if out.dim() != 2 or out.shape[0] != 2 * pairs:
                    raise ShapeError(f"model must map (batch, p) to (batch, q); got output "
                                     f"{tuple(out.shape)} for input {(2 * pairs, u.shape[1])}")
                diff = out[:pairs] - out[pairs:]
                num, den = _norm(diff, norm), _norm(dd, norm)
                ratio = num / den.clamp_min(1e-300)
                if it < steps:
                    if norm == "inf":  # pair k ascends on output row k mod q (see module doc)
                        rows = (torch.arange(pairs, device=dev) + offset) % diff.shape[1]
                        num = diff.gather(1, rows[:, None])[:, 0].abs()
                    obj = torch.log(num.clamp_min(1e-300)).sum()  # ||delta|| <= r: projection
                    gu, gd = torch.autograd.grad(obj, (uu, dd))
            trials += pairs
            with torch.no_grad():
                ratio = torch.where(den > 0, ratio, torch.zeros_like(ratio)).detach()
                if not bool(torch.isfinite(ratio).all()):
                    raise NonFiniteError("the model returned NaN/Inf on the search pairs")
                better = ratio > best
                best = torch.where(better, ratio, best)
                best_u = torch.where(better[:, None], u, best_u)
                best_v = torch.where(better[:, None], u + delta, best_v)
                if it < steps:
                    u = u + step_size * r * _step(gu, norm)
                    delta = _project(delta + step_size * r * _step(gd, norm), r, norm)
    finally:
        model.train(was_training)
    k = int(best.argmax())
    return EmpiricalLipschitz(value=float(best[k]), u=best_u[k].detach().clone(),
                              v=best_v[k].detach().clone(), norm=norm, trials=trials,
                              per_pair=best.detach().clone())
