"""Interval bound propagation (IBP) through a triangular implicit model (paper 003 ch. 4, Fig. 4.3).

A converted feed-forward network (:func:`idlkit.convert.from_torch`) has a strictly (block)
upper-triangular ``A``: its states form levels, each depending on earlier levels only
(paper 000 Thm 2.8-2.9). IBP propagates the input box ``[u0 - sigma_u, u0 + sigma_u]`` level by
level: ``z = A x + B u + b`` in center/radius form (``z_c = A x_c + B u_c + b``,
``z_r = |A| x_r + |B| u_r``), then ``x = phi(z)`` through the monotone activation
(``[phi(z_lo), phi(z_hi)]``; a block max takes the max of the bounds). A level-by-level sweep
equals the Jacobi iteration of this interval map started anywhere, stopped when it no longer
changes (at most ``depth + 1`` sweeps; the exact layer-by-layer IBP of the network).

This is the baseline that the implicit box bound (Thm 4.1) is compared with in the thesis
(Fig. 4.3): see :func:`compare_bounds`. Float64 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .. import wellposed as wp
from ..activations import BlockMax, Blockwise, ComponentwiseActivation
from ..errors import ConfigurationError
from ._model import as_batch64, as_sigma, base_activation, model_data

__all__ = ["IntervalBounds", "interval_bounds", "BoundComparison", "compare_bounds"]


@dataclass(frozen=True)
class IntervalBounds:
    """IBP intervals, batch-first float64: ``x_lower <= x <= x_upper``, ``y_lower <= y <= y_upper``.

    Attributes:
        sweeps: number of level sweeps until the intervals were stable.
    """

    x_lower: Tensor
    x_upper: Tensor
    y_lower: Tensor
    y_upper: Tensor
    sweeps: int


def _segments(act: object, n: int) -> list[tuple[int, int, object]]:
    act = base_activation(act)  # type: ignore[arg-type]
    segs = act.segments if isinstance(act, Blockwise) else ((n, act),)
    out, s = [], 0
    for size, a in segs:
        a = base_activation(a)
        if isinstance(a, ComponentwiseActivation):
            if not a.monotone:
                raise ConfigurationError(f"IBP needs monotone activations, got {a!r}")
        elif not isinstance(a, BlockMax):
            raise ConfigurationError(f"IBP supports monotone componentwise maps and BlockMax, got "
                                     f"{a!r}")
        out.append((s, s + size, a))
        s += size
    return out


def _apply(segs: list, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monotone image of the box ``[lo, hi]`` (rows: states, columns: samples)."""
    xl, xu = np.empty_like(lo), np.empty_like(hi)
    for s, e, a in segs:
        if isinstance(a, BlockMax):
            n_ = e - s
            bs = a._size(n_)
            for src, dst in ((lo, xl), (hi, xu)):
                blk = src[s:e].reshape(n_ // bs, bs, -1)
                out = np.zeros_like(blk)
                out[:, 0] = blk.max(axis=1)
                dst[s:e] = out.reshape(n_, -1)
        else:
            xl[s:e] = a(torch.from_numpy(lo[s:e])).numpy()
            xu[s:e] = a(torch.from_numpy(hi[s:e])).numpy()
    return xl, xu


def interval_bounds(model: object, u0: Tensor, sigma_u: object) -> IntervalBounds:
    """IBP intervals of the states and outputs for inputs in ``[u0 - sigma_u, u0 + sigma_u]``.

    Args:
        model: an :class:`~idlkit.ImplicitModel` with strictly (block) upper-triangular ``A`` up to
            the level order (e.g. from :func:`idlkit.convert.from_torch`), dense or sparse.
        u0: ``(batch, p)`` nominal inputs; ``sigma_u``: scalar or ``(p,)`` radius.

    Raises:
        ConfigurationError: ``A`` is not triangular (IBP has no finite sweep order), or an
            activation that is not monotone.
    """
    d = model_data(model)
    s = as_sigma(sigma_u, d.p)
    U = as_batch64(u0, d.p, "u0").T  # (p, m)
    segs = _segments(d.activation, d.n)
    if d.n and not wp.check(model.A, d.activation).triangular:  # type: ignore[attr-defined]
        raise ConfigurationError("IBP needs a triangular model (a converted feed-forward network); "
                                 "A is not strictly (block) triangular: use state_box_bound")
    b = getattr(model, "b", None)
    bias = np.zeros((d.n, 1)) if b is None else b.detach().to("cpu", torch.float64).numpy()[:, None]
    absA = abs(d.A) if sp.issparse(d.A) else np.abs(d.A)
    absB = abs(d.B) if sp.issparse(d.B) else np.abs(d.B)
    zc0 = np.asarray(d.B @ U) + bias
    zr0 = np.asarray(absB @ s)[:, None] * np.ones((1, U.shape[1]))
    xl, xu = _apply(segs, zc0 - zr0, zc0 + zr0) if d.n else (np.zeros((0, U.shape[1])),) * 2
    sweeps = 1
    for it in range(1, d.n + 2):
        sweeps = it
        xc, xr = (xl + xu) / 2, (xu - xl) / 2
        zc = np.asarray(d.A @ xc) + zc0
        zr = np.asarray(absA @ xr) + zr0
        nl, nu = _apply(segs, zc - zr, zc + zr)
        if np.array_equal(nl, xl) and np.array_equal(nu, xu):
            break
        xl, xu = nl, nu
    # the center/radius form loses a few ulps: widen outward by the rounding of the products
    eps = (d.n + d.p + 4) * np.finfo(np.float64).eps
    pad = eps * (np.abs(xl) + np.abs(xu) + 1e-300)
    xl, xu = xl - pad, xu + pad
    xc, xr = (xl + xu) / 2, (xu - xl) / 2
    dvec = getattr(model, "d", None)
    dd = np.zeros((d.q, 1)) if dvec is None else dvec.detach().to("cpu", torch.float64).numpy()[:, None]
    absC = abs(d.C) if sp.issparse(d.C) else np.abs(d.C)
    absD = abs(d.D) if sp.issparse(d.D) else np.abs(d.D)
    yc = np.asarray(d.C @ xc) + np.asarray(d.D @ U) + dd
    yr = np.asarray(absC @ xr) + np.asarray(absD @ s)[:, None]
    yr = yr + eps * (np.abs(yc) + yr)
    t = lambda M: torch.from_numpy(np.ascontiguousarray(M.T))  # noqa: E731
    return IntervalBounds(t(xl), t(xu), t(yc - yr), t(yc + yr), sweeps)


@dataclass(frozen=True)
class BoundComparison:
    """Mean interval widths of IBP and of the implicit box bound (Thm 4.1/4.3), per sample.

    Attributes:
        ibp_state_width, box_state_width: ``(batch,)`` mean of ``x_upper - x_lower`` over states.
        ibp_output_width, box_output_width: ``(batch,)`` the same for the outputs.
    """

    ibp_state_width: Tensor
    box_state_width: Tensor
    ibp_output_width: Tensor
    box_output_width: Tensor

    @property
    def box_tighter_fraction(self) -> float:
        """Fraction of samples whose box output interval is narrower than IBP's."""
        return float((self.box_output_width < self.ibp_output_width).double().mean())


def compare_bounds(model: object, u0: Tensor, sigma_u: object) -> BoundComparison:
    """IBP vs the implicit box bound on the same input box (paper 003 Fig. 4.3)."""
    from .bounds import state_box_bound
    from .sensitivity import output_box_bound

    ib = interval_bounds(model, u0, sigma_u)
    sx = state_box_bound(model, sigma_u)
    sy = output_box_bound(model, sigma_u)
    m = ib.x_lower.shape[0]
    return BoundComparison((ib.x_upper - ib.x_lower).mean(1), (2 * sx).mean().expand(m).clone(),
                           (ib.y_upper - ib.y_lower).mean(1), (2 * sy).mean().expand(m).clone())
