"""Products of input-dependent tensors in the traced network (paper 000 §2.4, §3.6).

:class:`MultiplicativeOps` is the part of :class:`~idlkit.convert.trace.Tracer` that converts
every operation made of products ``X[i] * Y[j]`` of two tensors computed from the input:

* the elementwise product ``a * b`` (broadcasting as torch does);
* the matrix product ``torch.matmul`` / ``@`` / ``torch.bmm`` / ``torch.mm``: each output entry
  is ``sum_k X[..., i, k] Y[..., k, j]``;
* ``F.glu``: ``a * sigmoid(b)`` on the two halves of the input;
* ``F.scaled_dot_product_attention``: ``softmax(q k^T * scale + mask) v``, with ``is_causal`` and
  constant masks (a ``-inf`` or ``False`` entry leaves that key out of the query's softmax).

All of them are a *contraction*: a list of pairs ``(X[ia_p], Y[ib_p])`` and an output row
``rows_p`` for each, the output being ``out[r] = sum_{p: rows_p = r} X[ia_p] Y[ib_p]``. With
both operands input-dependent the pairs become one :class:`~idlkit.activations.Product` state
block (its factors chosen by :func:`~idlkit.convert.products.product_factor`: both must be
bounded, §2.4) followed by a summing linear map; with one operand constant the contraction is
linear and folds into the expressions. The index arrays are built by numpy/torch broadcasting,
never entry by entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, fx

from ..activations import ComponentwiseActivation, Identity, Sigmoid, SoftMax
from ..errors import ConversionError
from .expr import Affine
from .products import Factor, NeedsBuild, expr_range, matmul_pairs, pair_up, product_factor, selection_source

if TYPE_CHECKING:
    from ..activations import Activation
    from .trace import StateBlock, _Env

__all__ = ["MultiplicativeOps", "Operand"]

_ADVICE = ("Pass it through a bounded map first (tanh, sigmoid, softsign, hardtanh), as LSTM/GRU "
           "gates and the tanh-bounded attention of §3.6 do (idlkit.baselines.BoundedAttention)")


@dataclass
class Operand:
    """One side of a contraction: its expression (``None`` for a constant) and its flat values,
    ``(batch, size)`` for an input-dependent tensor, ``(1, size)`` for a per-sample constant.

    Attributes:
        expr: the operand's :class:`~idlkit.convert.expr.Affine`, or ``None`` for a constant.
        flat: its values, ``(batch, size)`` or ``(1, size)``.

    Examples:
        >>> op = Operand(None, torch.ones(1, 3))                   # a per-sample constant
        >>> op.constant, op.flat.shape
        (True, torch.Size([1, 3]))
    """

    expr: Affine | None
    flat: Tensor

    @property
    def constant(self) -> bool:
        return self.expr is None


class MultiplicativeOps:
    """Products of input-dependent tensors (mixed into :class:`~idlkit.convert.trace.Tracer`).

    Examples:
        >>> class Gate(torch.nn.Module):
        ...     def forward(self, x):
        ...         return torch.tanh(x) * torch.sigmoid(x)          # a product of two states
        >>> from idlkit.convert.trace import Tracer
        >>> issubclass(Tracer, MultiplicativeOps)
        True
        >>> model = idlkit.convert.from_torch(Gate(), torch.zeros(1, 3))
        >>> u = torch.randn(4, 3)
        >>> model(u).shape, torch.allclose(model(u), Gate()(u), atol=1e-5)
        (torch.Size([4, 3]), True)
    """

    build: bool
    batch: int
    blocks: list[StateBlock]

    if TYPE_CHECKING:
        def _fail(self, node: fx.Node, reason: str) -> ConversionError: ...

        def _in(self, node: fx.Node, env: _Env, i: int = 0) -> Affine: ...

        def _new_block(self, node: fx.Node | None, name: str, act: Activation, pre: Affine | None,
                       z: Tensor, x: Tensor) -> int: ...

    # ------------------------------------------------------------------ building blocks

    def _ranges(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(b.lo, b.hi) for b in self.blocks]  # type: ignore[misc]

    def _factor(self, node: fx.Node, e: Affine, value: Tensor, which: str,
                what: str = "the product of two input-dependent tensors") -> Factor:
        """A product's factor: the output of a bounded componentwise block (its map and
        pre-activation, so that block needs no state of its own), or an expression bounded for
        every input (the identity on its interval). ``what`` names the operation and ``which``
        the factor in the refusal message (``"first"``/``"second"`` read as "the first factor")."""
        if which in ("first", "second"):
            which = f"the {which} factor"
        if not self.build:
            raise NeedsBuild
        z = value.reshape(value.shape[0], -1)
        src = selection_source(e)
        if src is not None:
            k, cols = src
            blk = self.blocks[k]
            if isinstance(blk.act, ComponentwiseActivation) and math.isfinite(blk.act.bound):
                assert blk.pre is not None
                return Factor(blk.act, blk.pre.gather(cols, (cols.size,)), blk.z[:, cols])
        lo, hi = expr_range(e, self._ranges())
        f = product_factor(Identity(), e, z, lo, hi)
        if isinstance(f, str):
            raise self._fail(node, f"{what} needs both factors bounded (paper 000 §2.4: a product of "
                                   f"unbounded maps is not Lipschitz, so no well-posed implicit model, "
                                   f"certificate or bound would hold), but {which} {f}. {_ADVICE}")
        return f

    def _product_block(self, name: str, a: Factor, b: Factor) -> int:
        """New :class:`~idlkit.activations.Product` block of the pairs ``(a_i, b_i)``; its index.
        Pair ``i`` is read from state ``2 i`` of the block."""
        act, pre, z = pair_up(a, b, self.build)
        x = act(z.t()).t()
        return self._new_block(None, name, act, pre, z, x)

    def _product(self, node: fx.Node, name: str, a: Factor, b: Factor, shape: tuple[int, ...]) -> Affine:
        """New Product block of ``a * b`` (entrywise); its expression of shape ``shape``."""
        k = self._product_block(name, a, b)
        n = a.z.shape[1]
        return Affine.source(k, (2 * n,)).gather(2 * np.arange(n), shape)

    def _contract(self, node: fx.Node, name: str, a: Operand, b: Operand, ia: np.ndarray,
                  ib: np.ndarray, rows: np.ndarray, out_shape: tuple[int, ...], what: str,
                  names: tuple[str, str] = ("the first factor", "the second factor")) -> Affine | None:
        """``out[r] = sum_{p: rows[p] = r} a[ia[p]] b[ib[p]]`` (per sample), ``out`` of shape
        ``out_shape``: a Product block and a summing map when both operands depend on the input,
        a linear map when one is constant (when not building: the input-dependent operand's
        marker, of which only the dependence matters)."""
        n_out = math.prod(out_shape)
        if a.constant and b.constant:  # pragma: no cover - a node of constants is not converted
            raise self._fail(node, "internal: a contraction of two constants")
        if a.constant or b.constant:
            e, idx, c, cidx = ((b.expr, ib, a.flat, ia) if a.constant else (a.expr, ia, b.flat, ib))
            assert e is not None
            if not self.build:
                return e
            coef = c[0].detach().double().cpu().numpy()[cidx]
            M = sp.csr_array((coef, (rows, idx)), shape=(n_out, e.size))  # duplicates are summed
            return e.linear(M, out_shape)
        assert a.expr is not None and b.expr is not None
        if not self.build:
            raise NeedsBuild
        fa = self._factor(node, a.expr.gather(ia, (ia.size,)), a.flat[:, ia], names[0], what)
        fb = self._factor(node, b.expr.gather(ib, (ib.size,)), b.flat[:, ib], names[1], what)
        k = self._product_block(name, fa, fb)
        P = ia.size
        S = sp.csr_array((np.ones(P), (rows, 2 * np.arange(P))), shape=(n_out, 2 * P))
        return Affine.source(k, (2 * P,)).linear(S, out_shape)

    def _constant_operand(self, node: fx.Node, value: object, full_dim: int | None, what: str) -> Tensor:
        """A constant operand per sample: a constant whose shape reaches the batch dimension
        (``full_dim`` dims, broadcasting from the right) must be the same for every sample, and
        loses that dimension; more dims than that would broadcast the batch elsewhere."""
        c = torch.as_tensor(value)
        if full_dim is not None and c.dim() >= full_dim:
            if c.dim() > full_dim or (c.shape[0] != 1 and not bool((c == c[:1]).all())):
                raise self._fail(node, f"{what}: a constant of shape {tuple(c.shape)} differs between "
                                       f"the samples of the batch (dim 0)")
            c = c[0]
        return c

    def _operand(self, node: fx.Node, env: _Env, arg: object, value: object, full_dim: int | None,
                 what: str) -> tuple[Operand, tuple[int, ...]]:
        """An argument as an :class:`Operand`, with its per-sample shape."""
        e = env.expr.get(arg) if isinstance(arg, fx.Node) else None
        if isinstance(e, Affine):
            if e.batch_dim != 0:
                raise self._fail(node, "only h_n[layer] of an nn.RNN may be used (its batch is dim 1)")
            assert isinstance(value, Tensor)
            return Operand(e, value.reshape(self.batch, -1)), e.shape
        if e is not None:
            raise self._fail(node, f"{what}: unsupported operand")
        c = self._constant_operand(node, value, full_dim, what)
        return Operand(None, c.reshape(1, -1)), tuple(c.shape)

    # ------------------------------------------------------------------ elementwise product

    def _multiply(self, node: fx.Node, env: _Env, args: tuple, value: Tensor, divide: bool = False
                  ) -> Affine | None:
        """``a * b`` (or ``a / c`` for a constant tensor ``c``) with torch broadcasting; one side
        may be a constant tensor (a linear map)."""
        shape = tuple(value.shape[1:])
        if value.dim() == 0 or value.shape[0] != self.batch:
            raise self._fail(node, "the product is not batch-first")
        nd = value.dim()
        ops, shapes = [], []
        for i in (0, 1):
            v = args[i]
            if isinstance(v, Tensor) and v.dim() != nd and isinstance(env.expr.get(node.args[i]), Affine):
                raise self._fail(node, f"multiplying tensors of shapes {_shape(args[0])} and "
                                       f"{_shape(args[1])} broadcasts the batch dimension of one "
                                       f"against another dimension: it mixes samples")
            op, s = self._operand(node, env, node.args[i], v, nd, "multiplication")
            if divide and i == 1:
                assert op.constant
                op = Operand(None, 1.0 / op.flat)
            ops.append(op)
            shapes.append(s)
        idx = []
        for s in shapes:
            base = torch.arange(math.prod(s)).reshape(s)
            idx.append(torch.broadcast_to(base, shape).reshape(-1).numpy())
        rows = np.arange(math.prod(shape))
        return self._contract(node, node.name, ops[0], ops[1], idx[0], idx[1], rows, shape,
                              "the product of two input-dependent tensors")

    # ------------------------------------------------------------------ matrix product

    def _matmul(self, node: fx.Node, env: _Env, args: tuple, value: Tensor) -> Affine | None:
        """``torch.matmul(a, b)`` (``@``, ``bmm``, ``mm``) with torch's broadcasting of the leading
        dimensions; the batch dimension of every input-dependent operand must stay dim 0 of the
        result (an operation that contracts or broadcasts it against another dimension mixes
        samples and is refused)."""
        a, b = node.args[0], node.args[1]
        va, vb = args[0], args[1]
        dep = [isinstance(env.expr.get(x), Affine) if isinstance(x, fx.Node) else False for x in (a, b)]
        da, db = va.dim(), vb.dim()

        def mixes() -> ConversionError:
            return self._fail(node, f"the matrix product of shapes {tuple(va.shape)} @ {tuple(vb.shape)} "
                                    f"mixes the samples of the batch (dim 0 of an input-dependent operand "
                                    f"must stay the batch dim of the result: use (batch, ..., n, k) @ "
                                    f"(batch, ..., k, m) with the same number of dims, or a constant "
                                    f"right factor)")

        if dep[0] and dep[1]:
            if da != db or da < 3:
                raise mixes()
            full = None
        else:
            d_dep, d_c = (da, db) if dep[0] else (db, da)
            if d_dep < 2 or (dep[1] and d_dep < 3) or (dep[0] and d_dep == 2 and d_c > 2) or d_c > d_dep:
                raise mixes()
            full = d_dep if d_dep >= 3 else None
        opa, sa = self._operand(node, env, a, va, full, "matmul")
        opb, sb = self._operand(node, env, b, vb, full, "matmul")
        try:
            ia, ib, out_shape = matmul_pairs(sa, sb)
        except ValueError as exc:
            raise self._fail(node, str(exc)) from exc
        if out_shape != tuple(value.shape[1:]):
            raise mixes()
        k = ia.shape[1]
        rows = np.repeat(np.arange(ia.shape[0]), k)
        return self._contract(node, node.name, opa, opb, ia.ravel(), ib.ravel(), rows, out_shape,
                              "the matrix product of two input-dependent tensors (as the scores q k^T "
                              "of dot-product attention)")

    # ------------------------------------------------------------------ GLU

    def _glu(self, node: fx.Node, env: _Env, dim: object, inp: Tensor, value: Tensor) -> Affine | None:
        """``glu(x, dim) = a * sigmoid(b)``, ``(a, b)`` the halves of ``x`` along ``dim``: a product
        whose first factor ``a`` is unbounded unless it is provably bounded (§2.4)."""
        e = self._in(node, env)
        nd = inp.dim()
        d = int(dim) % nd  # type: ignore[call-overload]
        if d == 0:
            raise self._fail(node, "GLU over the batch dimension mixes samples")
        if not self.build:
            raise NeedsBuild
        ax, h = d - 1, inp.shape[d] // 2
        idx = torch.arange(e.size).reshape(e.shape)
        ia = idx.narrow(ax, 0, h).reshape(-1).numpy()
        ib = idx.narrow(ax, h, h).reshape(-1).numpy()
        flat = inp.reshape(self.batch, -1)
        fa = self._factor(node, e.gather(ia, (ia.size,)), flat[:, ia], "its first half a",
                          "GLU, a * sigmoid(b),")
        fb = Factor(Sigmoid(), e.gather(ib, (ib.size,)), flat[:, ib])
        return self._product(node, node.name, fa, fb, tuple(value.shape[1:]))

    # ------------------------------------------------------------------ attention

    def _sdpa(self, node: fx.Node, env: _Env, get: object, value: Tensor) -> Affine | None:
        """``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)`` as
        ``softmax(q k^T * scale + mask) v`` (§3.6): the scores are a contraction of ``q`` and
        ``k`` (a Product block when both depend on the input, so both must be bounded, §2.4),
        each query's softmax runs over its allowed keys only (a ``SoftMax(c)`` block per number
        ``c`` of allowed keys: exact for ``is_causal`` and for ``-inf``/``False`` mask entries),
        and the output contracts the softmax weights (in ``[0, 1]``) with ``v``."""
        assert callable(get)
        if float(get("dropout_p", 0.0)):
            raise self._fail(node, "scaled_dot_product_attention with dropout_p > 0 is random (even in "
                                   "eval mode); pass dropout_p=0.0 outside training")
        if get("enable_gqa", False):
            raise self._fail(node, "scaled_dot_product_attention(enable_gqa=True) is not supported")
        if not self.build:
            raise NeedsBuild
        names = ("query", "key", "value")
        arg_nodes = [node.args[i] if i < len(node.args) else node.kwargs.get(n) for i, n in enumerate(names)]
        vals = [get(n) for n in names]
        nd = vals[0].dim()
        if any(v.dim() != nd for v in vals) or nd < 3:
            raise self._fail(node, f"scaled_dot_product_attention expects q, k, v of shapes (batch, ..., "
                                   f"T, E) with the same number of dims, got "
                                   f"{[tuple(v.shape) for v in vals]}")
        ops, shapes = [], []
        for n, v in zip(arg_nodes, vals, strict=True):
            op, shape = self._operand(node, env, n, v, nd, "scaled_dot_product_attention")
            ops.append(op)
            shapes.append(shape)
        (*Lq, Tq, E), (*Lk, Tk, Ek), (*Lv, Tv, Ev) = shapes
        if Ek != E or Tv != Tk:
            raise self._fail(node, f"q, k, v shapes {shapes} do not match")
        lead = tuple(torch.broadcast_shapes(tuple(Lq), tuple(Lk), tuple(Lv)))
        nL = math.prod(lead)
        scale = get("scale")
        scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
        allowed, bias = self._attention_mask(node, env, get, lead, Tq, Tk, nd)
        allowed, bias = allowed.reshape(nL, Tq, Tk), bias.reshape(nL, Tq, Tk)
        counts = allowed.sum(axis=-1).reshape(-1)  # allowed keys of each query row (l, i)
        if (counts == 0).any():
            raise self._fail(node, "a query with every key masked out (torch returns NaN there)")
        la, ia_, ja = np.nonzero(allowed)
        bias_s = bias[allowed]
        n_s = la.size
        row = la * Tq + ia_  # the query row of each allowed score entry (C order: rows contiguous)

        def table(shape: tuple[int, ...], t: int, width: int) -> np.ndarray:
            base = torch.arange(math.prod(shape)).reshape(shape)
            return torch.broadcast_to(base, lead + (t, width)).reshape(nL * t, width).numpy()

        IQ, IK, IV = table(shapes[0], Tq, E), table(shapes[1], Tk, E), table(shapes[2], Tk, Ev)
        # scores s = scale * <q[l, i], k[l, j]> + bias, one entry per allowed (l, i, j)
        qi, ki = IQ[row].ravel(), IK[la * Tk + ja].ravel()
        s_rows = np.repeat(np.arange(n_s), E)
        z_s = (ops[0].flat[:, qi] * ops[1].flat[:, ki]).reshape(-1, n_s, E).sum(-1) * scale + \
            torch.from_numpy(bias_s).to(ops[0].flat.dtype)
        if ops[0].constant and ops[1].constant:
            s_expr = None
        else:
            s_expr = self._contract(node, f"{node.name}.scores", ops[0], ops[1], qi, ki, s_rows, (n_s,),
                                    "scaled_dot_product_attention's scores q k^T",
                                    ("the queries q", "the keys k"))
            assert s_expr is not None
            s_expr = s_expr.scale(scale).shift(bias_s)
        # softmax over each query's allowed keys: one SoftMax(c) block per count c
        w_flat = torch.empty(z_s.shape, dtype=z_s.dtype)
        w_expr: Affine | None = None
        for c in np.unique(counts):
            pos = np.nonzero(counts[row] == c)[0]
            z = z_s[:, pos]
            x = torch.softmax(z.reshape(z.shape[0], -1, int(c)), dim=-1).reshape(z.shape)
            w_flat[:, pos] = x
            if s_expr is None:
                continue
            k = self._new_block(node, f"{node.name}.softmax{c}", SoftMax(int(c)),
                                s_expr.gather(pos, (pos.size,)), z, x)
            P = sp.csr_array((np.ones(pos.size), (pos, np.arange(pos.size))), shape=(n_s, pos.size))
            part = Affine.source(k, (pos.size,)).linear(P, (n_s,))
            w_expr = part if w_expr is None else w_expr + part
        weights = Operand(w_expr, w_flat if w_expr is not None else w_flat[:1])
        # out[l, i, e] = sum_{j allowed} w[l, i, j] v[l, j, e]
        wi = np.repeat(np.arange(n_s), Ev)
        vi = IV[la * Tk + ja].ravel()
        o_rows = (row[:, None] * Ev + np.arange(Ev)).ravel()
        if weights.constant and ops[2].constant:  # pragma: no cover - no input dependence at all
            raise self._fail(node, "scaled_dot_product_attention does not depend on the input")
        return self._contract(node, f"{node.name}.out", weights, ops[2], wi, vi, o_rows,
                              tuple(value.shape[1:]), "the attention output softmax(.) v",
                              ("the attention weights", "the values v"))

    def _attention_mask(self, node: fx.Node, env: _Env, get: object, lead: tuple[int, ...], Tq: int,
                        Tk: int, nd: int) -> tuple[np.ndarray, np.ndarray]:
        """``(allowed, bias)``, both ``(*lead, Tq, Tk)``: which keys each query attends to and the
        additive constant on its scores (``is_causal``: the lower triangle, as torch)."""
        assert callable(get)
        shape = lead + (Tq, Tk)
        mask, causal = get("attn_mask"), get("is_causal", False)
        bias = np.zeros(shape)
        if causal:
            if mask is not None:
                raise self._fail(node, "attn_mask and is_causal together (torch refuses them too)")
            return np.broadcast_to(np.tril(np.ones((Tq, Tk), dtype=bool)), shape).copy(), bias
        if mask is None:
            return np.ones(shape, dtype=bool), bias
        m_node = node.kwargs.get("attn_mask", node.args[3] if len(node.args) > 3 else None)
        if isinstance(m_node, fx.Node) and env.expr.get(m_node) is not None:
            raise self._fail(node, "an attn_mask computed from the input is not supported (use a "
                                   "constant mask or is_causal)")
        mt = self._constant_operand(node, mask, nd, "attn_mask")
        try:
            mt = torch.broadcast_to(mt, shape)
        except RuntimeError as exc:
            raise self._fail(node, f"attn_mask of shape {tuple(mask.shape)} does not broadcast to the "
                                   f"scores {shape}") from exc
        if mt.dtype == torch.bool:
            return mt.numpy().copy(), bias
        b = mt.detach().double().cpu().numpy().copy()
        if np.isnan(b).any() or np.isposinf(b).any():
            raise self._fail(node, "attn_mask holds NaN or +inf")
        allowed = np.isfinite(b)
        return allowed, np.where(allowed, b, 0.0)


def _shape(v: object) -> tuple[int, ...]:
    return tuple(v.shape) if isinstance(v, Tensor) else ()
