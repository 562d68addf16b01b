"""Multiplicative units in exact implicit form (paper 000 §2.4, §3.6).

A product of two input-dependent tensors is not affine, so it becomes a state block of the
:class:`~idlkit.activations.Product` map: each entry ``phi_1(a) phi_2(b)`` is one pair of states
whose pre-activations are ``(a, b)``. §2.4 asks both factors to be bounded; each factor is:

* the output of a bounded componentwise activation block (an LSTM gate ``sigmoid(z)``, a
  ``tanh``-bounded query): the pair uses that map and its pre-activation ``z`` directly, so the
  gate needs no state of its own; or
* any other affine expression of the states whose values are provably confined to an interval
  ``[lo, hi]`` for *every* input (an LSTM cell state, a softmax weight, a sum of products): the
  pair uses ``Hardtanh(lo', hi')`` with ``[lo', hi']`` slightly wider than ``[lo, hi]``, which is
  the identity on every value the factor can take, so the model stays exact.

The intervals come from :func:`block_ranges` (the interval image of each block's
pre-activation bounds, at least the map's own ``value_range``) and :func:`expr_range`
(interval arithmetic on an :class:`~idlkit.convert.expr.Affine` expression). A factor that
depends on the raw input, or on an unbounded state, has no such interval: the product is
refused with a :class:`~idlkit.errors.ConversionError` that says why (§2.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from ..activations import Activation, ComponentwiseActivation, Hardtanh, Product
from .expr import INPUT, Affine

__all__ = ["Factor", "NeedsBuild", "block_ranges", "expr_range", "selection_source", "product_factor",
           "identity_on", "pair_up", "matmul_pairs", "MARGIN_REL", "MARGIN_ABS"]

MARGIN_REL = 1e-6   # a Hardtanh stand-in for the identity is widened by this (relative) ...
MARGIN_ABS = 1e-9   # ... and absolute margin, so float rounding never makes it clip


class NeedsBuild(Exception):
    """Raised by a value-only trace (``build=False``) that meets a product: the choice of each
    factor's map needs the expressions, so :func:`~idlkit.convert.states` traces again with them."""


@dataclass
class Factor:
    """One factor of a product: ``act(pre)``, with the pre-activation's value on the example.

    Attributes:
        act: a bounded componentwise map.
        pre: the pre-activation expression, per-sample shape ``(k,)`` (``None`` when not building).
        z: the pre-activation on the traced input, ``(batch, k)``.

    Examples:
        >>> f = Factor(idlkit.get_activation("sigmoid"), None, torch.zeros(2, 3))   # sigmoid(z), z = 0
        >>> f.act.name, f.z.shape
        ('sigmoid', torch.Size([2, 3]))
    """

    act: ComponentwiseActivation
    pre: Affine | None
    z: Tensor


def block_ranges(act: Activation, pre_lo: np.ndarray, pre_hi: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Interval ``[lo, hi]`` of each state ``x = act(z)`` of a block, given ``pre_lo <= z <=
    pre_hi`` (``+-inf`` allowed): the map's interval image when every bound of the block is finite
    (a blockwise map needs its whole box), else the map's ``value_range`` for the whole block; never
    wider than ``value_range``.

    Args:
        act: the block's activation.
        pre_lo: lower bounds of the pre-activations ``z`` (``-inf`` allowed).
        pre_hi: upper bounds of ``z`` (``+inf`` allowed).

    Returns:
        ``(lo, hi)``, one bound per state of the block.

    Examples:
        >>> tanh = idlkit.get_activation("tanh")
        >>> lo, hi = block_ranges(tanh, np.array([-1.0, 0.0]), np.array([1.0, 2.0]))
        >>> np.round(lo, 4).tolist(), np.round(hi, 4).tolist()          # tanh of the box
        ([-0.7616, 0.0], [0.7616, 0.964])
        >>> [v.tolist() for v in block_ranges(tanh, np.array([0.0]), np.array([np.inf]))]   # the map's range
        [[-1.0], [1.0]]
    """
    n = pre_lo.size
    vlo, vhi = act.value_range
    lo, hi = np.full(n, vlo, dtype=np.float64), np.full(n, vhi, dtype=np.float64)
    if n and np.isfinite(pre_lo).all() and np.isfinite(pre_hi).all():
        a, b = act.interval(torch.from_numpy(pre_lo[:, None]), torch.from_numpy(pre_hi[:, None]))
        a, b = a.numpy()[:, 0], b.numpy()[:, 0]
        a = np.where(np.isnan(a), vlo, a)
        b = np.where(np.isnan(b), vhi, b)
        lo, hi = np.maximum(lo, a), np.minimum(hi, b)
    return lo, hi


def expr_range(expr: Affine, ranges: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Interval of every entry of ``expr`` when each state block ``j`` lies in ``ranges[j]``
    and the input is unrestricted (center/radius interval arithmetic; ``+-inf`` where an input
    term or an unbounded state enters).

    Args:
        expr: the :class:`~idlkit.convert.expr.Affine` expression.
        ranges: ``(lo, hi)`` of every state block, by block index.

    Returns:
        ``(lo, hi)``, one bound per entry of ``expr``.

    Examples:
        >>> e = Affine.source(0, (2,)).linear(np.array([[1.0, -1.0]]), (1,))   # v = s_1 - s_2
        >>> lo, hi = expr_range(e, [(np.array([0.0, 0.0]), np.array([1.0, 2.0]))])   # s in [0, 1] x [0, 2]
        >>> lo.tolist(), hi.tolist()
        ([-2.0], [1.0])
    """
    lo = expr.const.astype(np.float64).copy()
    hi = lo.copy()
    for key, M in expr.terms.items():
        M = sp.csr_array(M)
        if M.nnz == 0:
            continue
        if key == INPUT:
            rows = np.diff(M.indptr) > 0
            lo[rows], hi[rows] = -np.inf, np.inf
            continue
        slo, shi = ranges[key]
        pos, neg = M.maximum(0), M.minimum(0)
        with np.errstate(invalid="ignore"):
            add_lo = _mul(pos, slo) + _mul(neg, shi)
            add_hi = _mul(pos, shi) + _mul(neg, slo)
        lo, hi = lo + add_lo, hi + add_hi
    return np.where(np.isnan(lo), -np.inf, lo), np.where(np.isnan(hi), np.inf, hi)


def _mul(M: sp.csr_array, v: np.ndarray) -> np.ndarray:
    """``M @ v`` for a nonnegative or nonpositive sparse ``M`` and ``v`` with infinities
    (``0 * inf`` counts as 0: a zero coefficient does not read the entry)."""
    out = np.zeros(M.shape[0])
    coo = sp.coo_array(M)
    if coo.nnz:
        np.add.at(out, coo.row, coo.data * v[coo.col])
    return out


def selection_source(expr: Affine) -> tuple[int, np.ndarray] | None:
    """``(block, columns)`` when ``expr`` just picks entries of one state block (coefficient 1,
    one entry per row, no constant), else ``None``.

    Args:
        expr: the :class:`~idlkit.convert.expr.Affine` expression.

    Returns:
        ``(block, columns)`` or ``None``.

    Examples:
        >>> e = Affine.source(0, (3,)).gather(np.array([2, 0]), (2,))      # picks s[2], s[0] of block 0
        >>> key, cols = selection_source(e)
        >>> key, cols.tolist(), selection_source(e.scale(2.0))
        (0, [2, 0], None)
    """
    if len(expr.terms) != 1 or expr.const.any():
        return None
    (key, M), = expr.terms.items()
    if key == INPUT:
        return None
    M = sp.csr_array(M)
    if M.nnz != M.shape[0] or not (np.diff(M.indptr) == 1).all() or not (M.data == 1).all():
        return None
    return key, M.indices.astype(np.int64)


def identity_on(lo: float, hi: float) -> Hardtanh:
    """``Hardtanh`` equal to the identity on ``[lo, hi]``, widened so rounding never clips.

    Args:
        lo: lower end of the interval.
        hi: upper end of the interval.

    Returns:
        The :class:`~idlkit.activations.Hardtanh`.

    Examples:
        >>> phi = identity_on(-1.0, 2.0)
        >>> phi(torch.tensor([-1.0, 0.5, 2.0])).tolist(), phi.min_val < -1.0 and phi.max_val > 2.0
        ([-1.0, 0.5, 2.0], True)
    """
    width = max(abs(lo), abs(hi))
    pad = MARGIN_REL * width + MARGIN_ABS
    return Hardtanh(lo - pad, hi + pad)


def product_factor(act: Activation, pre: Affine | None, z: Tensor, lo: np.ndarray | None,
                   hi: np.ndarray | None) -> Factor | str:
    """A factor from a bounded componentwise ``act`` with pre-activation ``pre`` (value ``z``), or,
    with ``act`` the identity and an interval ``[lo, hi]``, the identity on it. Returns a reason
    (a string) when the factor is unbounded.

    Args:
        act: a bounded componentwise activation, or the identity.
        pre: the pre-activation expression, or ``None`` (a constant).
        z: ``(batch, k)`` pre-activation values.
        lo: lower bounds for the identity case, or ``None``.
        hi: upper bounds for the identity case, or ``None``.

    Returns:
        The :class:`Factor`, or a string saying why the factor is unbounded.

    Examples:
        >>> f = product_factor(idlkit.get_activation("tanh"), None, torch.zeros(2, 3), None, None)
        >>> type(f).__name__, f.z.shape
        ('Factor', torch.Size([2, 3]))
        >>> relu = idlkit.get_activation("relu")
        >>> isinstance(product_factor(relu, None, torch.zeros(2, 3), None, None), str)   # unbounded: a reason
        True
    """
    if isinstance(act, ComponentwiseActivation) and np.isfinite(act.bound):
        return Factor(act, pre, z)
    if lo is None or hi is None:
        return "is not known to be bounded"
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return ("depends on the input (or on an unbounded state) without a bounded map in "
                "between, so its values are not bounded")
    return Factor(identity_on(float(lo.min()), float(hi.max())), pre, z)


def pair_up(a: Factor, b: Factor, build: bool) -> tuple[Product, Affine | None, Tensor]:
    """The :class:`Product` block of ``a * b``: its map, its pre-activation (the pre-activations
    of ``a`` and ``b`` interleaved, pair ``i`` = rows ``2i, 2i + 1``) and its value ``(batch, 2k)``.

    Args:
        a: the first factor.
        b: the second factor, of ``a``'s size.
        build: also build the pre-activation expression (else values only).

    Returns:
        ``(product, pre, value)``: the :class:`~idlkit.activations.Product` map, its
        pre-activation expression (``None`` without ``build``) and its ``(batch, 2k)`` value.

    Examples:
        >>> a = Factor(idlkit.get_activation("tanh"), None, torch.ones(2, 3))
        >>> b = Factor(idlkit.get_activation("sigmoid"), None, torch.zeros(2, 3))
        >>> phi, pre, z = pair_up(a, b, build=False)                  # tanh(z_a) sigmoid(z_b) per pair
        >>> type(phi).__name__, pre, z.shape
        ('Product', None, torch.Size([2, 6]))
        >>> torch.allclose(phi(z.T).T[:, 0::2], torch.tanh(torch.ones(2, 3)) * 0.5)
        True
    """
    k = a.z.shape[1]
    z = torch.stack((a.z, b.z), dim=2).reshape(a.z.shape[0], 2 * k)
    pre = None
    if build:
        assert a.pre is not None and b.pre is not None
        even = np.arange(k) * 2
        Pa = sp.csr_array((np.ones(k), (even, np.arange(k))), shape=(2 * k, k))
        Pb = sp.csr_array((np.ones(k), (even + 1, np.arange(k))), shape=(2 * k, k))
        pre = a.pre.linear(Pa, (2 * k,)) + b.pre.linear(Pb, (2 * k,))
    return Product(a.act, b.act), pre, z


def matmul_pairs(sa: tuple[int, ...], sb: tuple[int, ...]
                 ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """The pairs of ``torch.matmul(a, b)`` on per-sample shapes ``sa``, ``sb``: ``(IA, IB,
    out_shape)`` with ``IA, IB`` of shape ``(out_size, K)`` such that output entry ``r`` (C order of
    ``out_shape``) is ``sum_k a.flat[IA[r, k]] * b.flat[IB[r, k]]``. Follows torch: a 1-d ``a`` is a
    row (``b``: a column) and that dimension is dropped from the result; the leading dimensions
    broadcast. Built by broadcasting index tensors (no loop over entries).

    Args:
        sa: per-sample shape of ``a``.
        sb: per-sample shape of ``b``.

    Returns:
        ``(IA, IB, out_shape)``.

    Raises:
        ValueError: shapes ``torch.matmul`` would refuse.

    Examples:
        >>> IA, IB, shape = matmul_pairs((2, 3), (3,))
        >>> shape, IA[1].tolist(), IB[1].tolist()
        ((2,), [3, 4, 5], [0, 1, 2])
    """
    a = torch.arange(math.prod(sa)).reshape(sa)
    b = torch.arange(math.prod(sb)).reshape(sb)
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError(f"matmul of shapes {sa} and {sb}: both need at least one dimension")
    row, col = a.dim() == 1, b.dim() == 1
    a = a[None] if row else a
    b = b[:, None] if col else b
    (n, k), (k2, m) = a.shape[-2:], b.shape[-2:]
    if k != k2:
        raise ValueError(f"matmul of shapes {sa} and {sb}: inner dimensions {k} and {k2} differ")
    try:
        lead = tuple(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    except RuntimeError as exc:
        raise ValueError(f"matmul of shapes {sa} and {sb}: leading dimensions do not broadcast") from exc
    IA = a.expand(*lead, n, k).unsqueeze(-2).expand(*lead, n, m, k)
    IB = b.expand(*lead, k, m).transpose(-1, -2).unsqueeze(-3).expand(*lead, n, m, k)
    shape = lead + (() if row else (n,)) + (() if col else (m,))
    return IA.reshape(-1, k).numpy(), IB.reshape(-1, k).numpy(), shape
