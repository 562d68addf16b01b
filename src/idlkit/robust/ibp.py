"""Interval bound propagation (IBP) through a triangular implicit model (paper 003 ch. 4, Fig. 4.3).

A converted feed-forward network (:func:`idlkit.convert.from_torch`) has a strictly (block)
triangular ``A`` up to a permutation: its activation blocks form levels, each depending on
earlier levels only (paper 000 Thm 2.8-2.9). IBP propagates the input box
``[u0 - sigma_u, u0 + sigma_u]`` through the levels: ``z = A x + B u + b`` in center/radius form
(``z_c = A x_c + B u_c + b``, ``z_r = |A| x_r + |B| u_r``), then ``x = phi(z)`` through the
activation's interval image :meth:`~idlkit.activations.Activation.interval`. Every map of
:mod:`idlkit.activations` has one, so IBP needs no monotonicity: monotone maps give
``[phi(z_lo), phi(z_hi)]``; the valley maps (GELU, SiLU, Mish, Hardswish, ELU with
``alpha < 0``) take their minimum ``phi(z*)`` when ``z*`` is in the box; SoftMax the exact
per-entry extremes; BlockMax the max of the bounds; :class:`~idlkit.activations.Product` (an
LSTM/GRU gate pair, §2.4) the interval product of its factors' images; ``Centered`` and
``Blockwise`` maps compose these. A sweep over all states is one Jacobi step of the interval map;
``depth`` sweeps (the number of levels) give the exact layer-by-layer IBP of the network.

**Rounding.** The intervals must contain the states the model computes in float64, whatever the
order of its sums. Every sweep therefore widens ``z`` outward by ``2 (n + p + 4) eps`` times
``|A| |x|_max + |B| |u|_max + |b|`` (the rounding of both our products and the model's, which
also covers the center/radius split and the ``phi(0)`` shift of §3.1), and the image of the
activation by ``16 eps`` times the size of its values and arguments (the evaluation error of the
maps here, a few ulps in their inputs; block sizes and product factor bounds enter as factors).
The widening is ~1e-15 relative: negligible next to any input box.

This is the baseline that the implicit box bound (Thm 4.1/4.2) is compared with in the thesis
(Fig. 4.3): see :func:`compare_bounds`. Float64 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .._matrix import block_pattern_graph
from ..activations import Activation, Blockwise, Centered, Product
from ..errors import ConfigurationError, NonFiniteError
from ._model import as_batch64, as_sigma, check_k, dense, model_data, top_k_sum

__all__ = ["IntervalBounds", "interval_bounds", "BoundComparison", "compare_bounds"]

_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class IntervalBounds:
    """IBP intervals, batch-first float64: ``x_lower <= x <= x_upper``, ``y_lower <= y <= y_upper``.

    Attributes:
        x_lower: ``(batch, n)`` lower state bounds.
        x_upper: ``(batch, n)`` upper state bounds.
        y_lower: ``(batch, q)`` lower output bounds.
        y_upper: ``(batch, q)`` upper output bounds.
        sweeps: number of level sweeps (the depth of the level structure of ``A``).
    """

    x_lower: Tensor
    x_upper: Tensor
    y_lower: Tensor
    y_upper: Tensor
    sweeps: int


def block_levels(A: object, sizes: tuple[int, ...]) -> np.ndarray:
    """Level of each activation block of ``A`` (``(L,)`` int64): 0 for blocks that depend on no state,
    else 1 + the largest level of the blocks they depend on (longest chain, Thm 2.8-2.9).

    Raises :class:`ConfigurationError` when the graph has a cycle (``A`` is not strictly block
    triangular under any permutation of whole blocks)."""
    G = block_pattern_graph(A, sizes)
    L = G.shape[0]
    if L == 0:
        return np.zeros(0, dtype=np.int64)
    if G.diagonal().any():
        I = int(np.flatnonzero(G.diagonal())[0])
        raise ConfigurationError(
            f"IBP needs a strictly (block) triangular A (a converted feed-forward network, paper 000 "
            f"Thm 2.8-2.9); the diagonal block {I} of A is nonzero, so the states have no finite sweep "
            f"order. Use state_box_bound / output_box_bound (Thm 4.1-4.4), which hold for any "
            f"well-posed model")
    nz = np.flatnonzero(np.diff(G.indptr))
    level = np.zeros(L, dtype=np.int64)
    for _ in range(L + 1):  # longest-path levels by relaxation: stable after depth rounds on a DAG
        new = np.zeros(L, dtype=np.int64)
        if nz.size:
            new[nz] = np.maximum.reduceat(level[G.indices], G.indptr[nz]) + 1
        if np.array_equal(new, level):
            return level
        level = new
    raise ConfigurationError(
        "IBP needs a strictly (block) triangular A (a converted feed-forward network, paper 000 "
        "Thm 2.8-2.9); the dependency graph of A has a cycle, so the states have no finite sweep "
        "order. Use state_box_bound / output_box_bound (Thm 4.1-4.4), which hold for any "
        "well-posed model")


def _depth(A: object, sizes: tuple[int, ...]) -> int:
    """Number of levels of the block dependency graph of ``A`` (see :func:`block_levels`)."""
    level = block_levels(A, sizes)
    return int(level.max()) + 1 if level.size else 0


def _factor_scale(act: Activation) -> float:
    """``max(1, c_1, c_2)`` over the :class:`Product` blocks of ``act`` (their factors' bounds):
    the rounding of a factor is multiplied by the other factor."""
    base = act.base if isinstance(act, Centered) else act
    segs = [a for _, a in base.segments] if isinstance(base, Blockwise) else [base]
    scale = 1.0
    for a in segs:
        a = a.base if isinstance(a, Centered) else a
        if isinstance(a, Product):
            scale = max(scale, a.first.bound, a.second.bound)
    return scale


def _abs(M: np.ndarray | sp.csr_array) -> np.ndarray | sp.csr_array:
    return abs(M) if sp.issparse(M) else np.abs(M)


def _radius(absM: np.ndarray | sp.csr_array, s: np.ndarray, k: int | None) -> np.ndarray:
    """``|M| sigma`` (box) or the ``k`` largest terms of each row of ``|M| diag(sigma)`` (eq. 4.2)."""
    if k is None:
        return np.asarray(absM @ s)
    if sp.issparse(absM):
        W = sp.csr_array(absM @ sp.diags_array(s))
        out = np.zeros(W.shape[0])
        for i in range(W.shape[0]):  # row by row: top-k of the stored entries (the rest are 0)
            v = W.data[W.indptr[i]:W.indptr[i + 1]]
            out[i] = np.sort(v)[-k:].sum() if v.size else 0.0
        return out
    return top_k_sum(dense(absM) * s[None, :], k) if absM.shape[0] else np.zeros(0)


def interval_bounds(model: object, u0: Tensor, sigma_u: object, k: int | None = None) -> IntervalBounds:
    """IBP intervals of the states and outputs for inputs in ``[u0 - sigma_u, u0 + sigma_u]``.

    Works for every activation of :mod:`idlkit.activations` (each has an interval image), monotone
    or not, componentwise or blockwise, centred (``phi(0) != 0``) or not, and for the
    :class:`~idlkit.activations.Product` blocks of converted LSTM/GRU cells.

    Args:
        model: an :class:`~idlkit.ImplicitModel` whose ``A`` is strictly (block) triangular up to a
            permutation of whole activation blocks (e.g. from :func:`idlkit.convert.from_torch`),
            dense or sparse.
        u0: ``(batch, p)`` nominal inputs.
        sigma_u: scalar or ``(p,)`` radius.
        k: at most ``k`` inputs perturbed (the cardinality set, eq. 4.2); ``None`` for the box.
            Only the terms ``B u`` and ``D u`` see ``k``: the radius of row ``i`` is ``s_k`` of
            ``|B_i| . sigma_u`` (its ``k`` largest terms, exact for that row over eq. 4.2); the
            propagation through the states is IBP's as for the box.

    Returns:
        :class:`IntervalBounds` with ``(batch, n)`` state and ``(batch, q)`` output bounds that
        contain the model's float64 states and outputs for every input of the box.

    Raises:
        ConfigurationError: ``A`` has a cycle (IBP has no finite sweep order; use
            :func:`~idlkit.robust.state_box_bound`).
        NonFiniteError: the intervals overflowed (inputs or weights too large).

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
        >>> model = idlkit.convert.from_torch(net, torch.zeros(1, 4, dtype=torch.float64))
        >>> ib = interval_bounds(model, torch.zeros(3, 4, dtype=torch.float64), 0.1)
        >>> ib.y_lower.shape, ib.sweeps
        (torch.Size([3, 2]), 1)
    """
    d = model_data(model)
    s = as_sigma(sigma_u, d.p)
    k = check_k(k, d.p)
    U = as_batch64(u0, d.p, "u0").T  # (p, m)
    m = U.shape[1]
    act = d.activation
    depth = _depth(model.A, d.blocks.sizes) if d.n else 0  # type: ignore[attr-defined]
    b = getattr(model, "b", None)
    bias = np.zeros((d.n, 1)) if b is None else b.detach().to("cpu", torch.float64).numpy()[:, None]
    absA, absB = _abs(d.A), _abs(d.B)
    uabs = np.abs(U) + s[:, None]
    zc0 = np.asarray(d.B @ U) + bias
    zr0 = _radius(absB, s, k)[:, None]
    mag0 = np.asarray(absB @ uabs) + np.abs(bias)
    # rounding: z of (n + p + 1)-term sums, ours and the model's; the phi(0) shift adds |A phi(0)|
    rho_z = 2 * (d.n + d.p + 4) * _EPS
    phi0 = np.abs(act(torch.zeros(d.n, 1, dtype=torch.float64)).numpy()) if d.n else np.zeros((0, 1))
    width = max(d.blocks.sizes, default=1) * _factor_scale(act)
    xl, xu = np.zeros((d.n, m)), np.zeros((d.n, m))
    for _ in range(depth):
        xc, xr = (xl + xu) / 2, (xu - xl) / 2
        xabs = np.maximum(np.abs(xl), np.abs(xu))
        zc = np.asarray(d.A @ xc) + zc0
        zr = np.asarray(absA @ xr) + zr0
        pad = rho_z * (np.asarray(absA @ (xabs + 2 * phi0)) + mag0)
        zl, zu = zc - zr - pad, zc + zr + pad
        lo, hi = act.interval(torch.from_numpy(zl), torch.from_numpy(zu))
        xl, xu = lo.numpy(), hi.numpy()
        if np.isnan(xl).any() or np.isnan(xu).any():
            raise NonFiniteError("IBP intervals became NaN (an overflow of z = A x + B u + b); scale the "
                                 "inputs or weights down")
        # evaluation error of the maps: a few ulps of their values and arguments
        scale = width * (1 + np.maximum(np.abs(zl), np.abs(zu)).max(axis=0, keepdims=True)) + phi0.max()
        xpad = 16 * _EPS * (np.maximum(np.abs(xl), np.abs(xu)) + scale)
        xl, xu = xl - xpad, xu + xpad
    xc, xr = (xl + xu) / 2, (xu - xl) / 2
    xabs = np.maximum(np.abs(xl), np.abs(xu))
    dvec = getattr(model, "d", None)
    dd = np.zeros((d.q, 1)) if dvec is None else dvec.detach().to("cpu", torch.float64).numpy()[:, None]
    absC, absD = _abs(d.C), _abs(d.D)
    yc = np.asarray(d.C @ xc) + np.asarray(d.D @ U) + dd
    yr = np.asarray(absC @ xr) + _radius(absD, s, k)[:, None]
    yr = yr + rho_z * (np.asarray(absC @ xabs) + np.asarray(absD @ uabs) + np.abs(dd))
    if np.isnan(yc).any() or np.isnan(yr).any():
        raise NonFiniteError("IBP output intervals are NaN (an overflow of the state intervals); scale "
                             "the inputs or weights down")
    t = lambda M: torch.from_numpy(np.ascontiguousarray(M.T))  # noqa: E731
    return IntervalBounds(t(xl), t(xu), t(yc - yr), t(yc + yr), depth)


@dataclass(frozen=True)
class BoundComparison:
    """Mean interval widths of IBP and of the implicit box bound (Thm 4.1/4.3), per sample.

    Attributes:
        ibp_state_width: ``(batch,)`` mean of ``x_upper - x_lower`` over states, by IBP.
        box_state_width: ``(batch,)`` the same for the implicit box bound.
        ibp_output_width: ``(batch,)`` mean of ``y_upper - y_lower`` over outputs, by IBP.
        box_output_width: ``(batch,)`` the same for the implicit box bound.
    """

    ibp_state_width: Tensor
    box_state_width: Tensor
    ibp_output_width: Tensor
    box_output_width: Tensor

    @property
    def box_tighter_fraction(self) -> float:
        """Fraction of samples whose box output interval is narrower than IBP's."""
        return float((self.box_output_width < self.ibp_output_width).double().mean())


def compare_bounds(model: object, u0: Tensor, sigma_u: object, k: int | None = None) -> BoundComparison:
    """IBP vs the implicit box bound on the same input set (paper 003 Fig. 4.3): the box (4.1), or
    with ``k`` the cardinality set (4.2).

    Both hold for every activation; IBP needs a triangular ``A`` (see :func:`interval_bounds`).

    Args:
        model: an :class:`~idlkit.ImplicitModel` with a (block) triangular ``A``.
        u0: ``(batch, p)`` nominal inputs.
        sigma_u: input radius, scalar or ``(p,)``, ``>= 0`` (eq. 4.1).
        k: at most ``k`` inputs perturbed (eq. 4.2); ``None`` for the box set.

    Returns:
        :class:`BoundComparison` of the two bounds' widths.

    Raises:
        ConfigurationError: ``A`` is not triangular (IBP does not apply).
        WellPosednessError: the implicit box bound cannot be certified.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).double()
        >>> model = idlkit.convert.from_torch(net, torch.zeros(1, 3, dtype=torch.float64))
        >>> cmp = compare_bounds(model, torch.zeros(2, 3, dtype=torch.float64), 0.1)
        >>> cmp.ibp_output_width.shape, bool((cmp.ibp_output_width <= cmp.box_output_width + 1e-9).all())
        (torch.Size([2]), True)
    """
    from .bounds import state_box_bound
    from .sensitivity import output_box_bound

    ib = interval_bounds(model, u0, sigma_u, k)
    sx = state_box_bound(model, sigma_u, k)
    sy = output_box_bound(model, sigma_u, k)
    m = ib.x_lower.shape[0]
    return BoundComparison((ib.x_upper - ib.x_lower).mean(1), (2 * sx).mean().expand(m).clone(),
                           (ib.y_upper - ib.y_lower).mean(1), (2 * sy).mean().expand(m).clone())
