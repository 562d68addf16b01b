"""Recurrent layers in exact implicit form: RNN, LSTM, GRU and their cells (paper 000 §3.5, §3.6).

A recurrent layer run on a sequence of fixed length ``T`` is a feed-forward network of ``T``
steps (§3.5, eq. 3.5: the "unrolled" form); each step's hidden state is a state block whose
pre-activation is an affine function of the step's input and of the previous step's blocks, so
``A`` stays strictly block triangular and the ``triangular`` solver is one sweep over the steps.
Gated units multiply two input-dependent quantities; §3.6 writes each such product as the
multiplicative map of §2.4, ``phi(a, b) = phi_1(a) phi_2(b)`` with bounded ``phi_1, phi_2``
(:class:`~idlkit.activations.Product`, one state *pair* per entry). Per step and layer:

**LSTM** (``i, f, g, o`` the gates' pre-activations ``W_i. x_t + b_i. + W_h. h_{t-1} + b_h.``)::

    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),    h_t = sigmoid(o) * tanh(c_t)

three Product blocks: ``(sigmoid, tanh)`` on ``(i, g)``; ``(sigmoid, identity on [-B, B])`` on
``(f, c_{t-1})``, where ``c_{t-1}`` is the affine sum of the previous step's products and ``B``
its certified bound (interval arithmetic on the blocks' ranges: ``|c_t| <= |c_{t-1}| + 1``; the
:func:`~idlkit.convert.products.identity_on` Hardtanh is exactly the identity there, so the model
stays exact); and ``(sigmoid, tanh)`` on ``(o, c_t)``. The gates need no states of their own (their
pre-activations enter the pairs directly), ``c_t`` is an expression, not a state, and a zero
``c_0`` drops the ``f * c_0`` block. ``proj_size > 0`` maps ``h_t`` by ``W_hr`` (affine).

**GRU** (``r, z`` gates, ``n`` the candidate)::

    n = tanh(W_in x + b_in + sigmoid(r) * (W_hn h + b_hn)),   h' = sigmoid(-z) * n + sigmoid(z) * h

(``1 - sigmoid(z) = sigmoid(-z)``): Product blocks ``(sigmoid, identity)`` on ``(r, W_hn h + b_hn)``,
``(sigmoid, tanh)`` on ``(-z, n)`` and ``(sigmoid, identity)`` on ``(z, h)``, and ``h'`` (their sum)
as an identity state block, so that the next step's four pre-activations read one ``H x H``
block of ``A`` each, not two. ``h'`` is a convex combination of ``n in (-1, 1)`` and ``h``, so
``|h_t| <= max(1, |h_0|)`` certifies the identity's interval (and the block's range).

**RNN**: one ``tanh``/``relu`` block per step (eq. 3.4).

Options: ``batch_first`` either way (a sequence-first tensor keeps its batch in dim 1, see
:func:`track_entries`), any ``num_layers``, ``bias``, ``bidirectional`` (the reverse direction is
the same recursion run from ``t = T - 1`` down; outputs concatenated as torch does), ``h0``/``c0``
omitted, constant, or computed from the input (bounded where multiplied, §2.4), outputs ``out``
(every step) and ``h_n``/``c_n``; the cells ``RNNCell``/``LSTMCell``/``GRUCell`` for one step, e.g.
in a Python loop over time unrolled by :class:`~idlkit.convert.concrete.ShapeTracer`. Refused with
a :class:`~idlkit.errors.ConversionError` naming the option: a ``PackedSequence``, dropout between
layers in training mode, an unbatched (2-D) input, a batch-first input to a sequence-first layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, fx, nn
from torch.nn.utils.rnn import PackedSequence

from ..activations import Identity, ReLU, Sigmoid, Tanh
from .expr import Affine
from .products import Factor, expr_range, identity_on

if TYPE_CHECKING:
    from .trace import Tracer, _Env

__all__ = ["convert_recurrent", "track_entries", "concat", "packed_refusal"]

_GATES = {"LSTM": "ifgo", "GRU": "rzn", "RNN_TANH": "h", "RNN_RELU": "h"}


# ---------------------------------------------------------------------- per-sample operands


@dataclass
class Term:
    """A per-sample vector of the unrolled recursion: its expression and its value.

    Attributes:
        expr: :class:`Affine` of per-sample shape ``(k,)`` (no terms: a constant).
        val: its value on the traced input, ``(batch, k)``.
        bound: a certified ``(lo, hi)`` for every entry and every input, when known better than
            interval arithmetic on ``expr`` (the GRU's convex combination).
    """

    expr: Affine
    val: Tensor
    bound: tuple[float, float] | None = None

    @property
    def constant(self) -> bool:
        return not self.expr.terms

    @property
    def zero(self) -> bool:
        return self.constant and not self.expr.const.any()

    def __add__(self, other: Term) -> Term:
        return Term(self.expr + other.expr, self.val + other.val)

    def neg(self) -> Term:
        return Term(self.expr.scale(-1.0), -self.val)

    def rows(self, lo: int, hi: int) -> Term:
        return Term(self.expr.gather(np.arange(lo, hi), (hi - lo,)), self.val[:, lo:hi], self.bound)


def _const_term(c: Tensor, batch: int) -> Term:
    """A per-sample constant ``c (k,)``."""
    c = c.detach()
    return Term(Affine((c.numel(),), {}, c.double().cpu().numpy().reshape(-1).copy()),
                c.reshape(1, -1).expand(batch, -1))


def concat(parts: list[Affine], shape: tuple[int, ...]) -> Affine:
    """Concatenate per-sample expressions (flattened, in order) into one of shape ``shape``:
    each source's term assembled once from the parts' entries shifted by their row offsets
    (linear in the total size, no pairwise sums).

    Args:
        parts: the expressions, in order.
        shape: the result's per-sample shape.

    Returns:
        The concatenated :class:`~idlkit.convert.expr.Affine`.

    Examples:
        >>> from idlkit.convert.expr import INPUT
        >>> a = Affine.source(INPUT, (2,)); b = Affine.source(INPUT, (2,)).scale(3.0)
        >>> c = concat([a, b], (4,))
        >>> c.shape, c.terms[INPUT].toarray().tolist()
        ((4,), [[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 3.0]])
    """
    total = sum(p.size for p in parts)
    assert total == math.prod(shape)
    entries: dict[int, list] = {}
    widths: dict[int, int] = {}
    off = 0
    for p in parts:
        for k, M in p.terms.items():
            coo = sp.coo_array(M)
            entries.setdefault(k, []).append((coo.row + off, coo.col, coo.data))
            widths[k] = M.shape[1]
        off += p.size
    terms = {}
    for k, es in entries.items():
        rows, cols, vals = (np.concatenate([e[i] for e in es]) for i in range(3))
        terms[k] = sp.csr_array((vals, (rows, cols)), shape=(total, widths[k]))
    const = np.concatenate([p.const for p in parts]) if parts else np.zeros(0)
    return Affine(tuple(shape), terms, const)


def _concat_terms(parts: list[Term]) -> Term:
    if len(parts) == 1:
        return parts[0]
    k = sum(p.val.shape[1] for p in parts)
    return Term(concat([p.expr for p in parts], (k,)), torch.cat([p.val for p in parts], dim=1))


# ---------------------------------------------------------------------- entry tracking with batch dims


class _Untrackable(Exception):
    """One attempt of :func:`track_entries` could not follow the entries (the reason)."""


def track_entries(tr: Tracer, node: fx.Node, env: _Env, fn: object = None) -> Affine | tuple:
    """Ops that only move entries (slicing, ``transpose``, ``unbind``, ``repeat``, ``cat`` with
    constants, ...), wherever the batch dimension is or goes: a sequence-first tensor
    ``(T, batch, H)`` or ``h_n (layers, batch, H)`` keeps its batch in dim 1 (``Affine.batch_dim``).

    The op runs on coded copies of its input expressions: entry ``j`` of sample ``s`` of the
    ``m``-th input holds ``1 + offset_m + j + s * total`` (float64, exact), floating constants
    hold zeros. In the result, a nonzero code that doubles when the codes double is an entry (its
    sample index locates the batch dimension, its ``j`` the source entry); an entry that does not
    change is a constant, whose value comes from a run on zero inputs with the real constants. A
    batch of 1 cannot show where the batch goes, so the codes use a batch of 2 (falling back to 1
    with the batch kept in place when the op insists on the real batch size). Refused when samples
    mix, an entry is neither moved nor constant, or the pattern differs across the batch.

    Returns an :class:`Affine` (its ``batch_dim`` where the batch went; shape markers only when
    ``tr`` does not build) or a tuple of them (``unbind``, ``split``, ``chunk``).

    Args:
        tr: the :class:`~idlkit.convert.trace.Tracer`.
        node: the op's graph node.
        env: the tracer's node values and expressions.
        fn: the function to run (``None``: the node's own target).

    Returns:
        The result's :class:`~idlkit.convert.expr.Affine` (a tuple of them for several outputs).

    Examples:
        >>> class Pick(torch.nn.Module):
        ...     def forward(self, x):
        ...         return torch.relu(torch.cat([x[:, 2:], x[:, :1]], dim=1))   # slices, cat: entries move
        >>> model = idlkit.convert.from_torch(Pick(), torch.zeros(1, 4))
        >>> u = torch.randn(5, 4)
        >>> model(u).shape, torch.allclose(model(u), Pick()(u))
        (torch.Size([5, 3]), True)
    """
    inputs = [a for a in node.all_input_nodes if isinstance(env.expr.get(a), Affine)]
    first: _Untrackable | None = None
    for nb in ([max(tr.batch, 2), 1] if tr.batch == 1 else [tr.batch]):
        try:
            return _track(tr, node, env, fn, inputs, nb)
        except _Untrackable as exc:
            first = first or exc
    assert first is not None
    raise tr._fail(node, str(first)) from first


def _track(tr: Tracer, node: fx.Node, env: _Env, fn: object, inputs: list[fx.Node], nb: int
           ) -> Affine | tuple:
    """One attempt of :func:`track_entries` with a coded batch of ``nb``."""
    offsets, total = {}, 0
    for a in inputs:
        offsets[a], total = total, total + env.expr[a].size
    if 2 * nb * max(total, 1) >= 2**52:
        raise _Untrackable("tensor too large for the entry tracking")

    def coded(a: fx.Node, scale: float) -> Tensor:
        e = env.expr[a]
        bd = e.batch_dim
        idx = (torch.arange(e.size, dtype=torch.float64) + 1 + offsets[a]).reshape(e.shape)
        full = idx.unsqueeze(bd).expand(*e.shape[:bd], nb, *e.shape[bd:])
        samp = (torch.arange(nb, dtype=torch.float64) * total).reshape(
            [nb if i == bd else 1 for i in range(len(e.shape) + 1)])
        return (full + samp) * scale

    def constant_free(n: fx.Node) -> object:
        v = env.val[n]
        if isinstance(v, Tensor) and v.is_floating_point():
            return torch.zeros(v.shape, dtype=torch.float64)  # constants: no entries
        return v

    def run(sub: object) -> object:
        if fn is not None:
            return fn(sub(node.args[0]))  # type: ignore[operator]
        args = fx.node.map_arg(node.args, sub)  # type: ignore[arg-type]
        kwargs = fx.node.map_arg(node.kwargs, sub)  # type: ignore[arg-type]
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "call_module":
            return tr.modules[node.target](*args, **kwargs)
        return node.target(*args, **kwargs)  # type: ignore[operator]

    try:
        r1 = run(lambda n: coded(n, 1.0) if n in offsets else constant_free(n))
        r2 = run(lambda n: coded(n, 2.0) if n in offsets else constant_free(n))
        r3 = run(lambda n: torch.zeros(env.val[n].shape, dtype=torch.float64) if n in offsets
                 else env.val[n])
    except Exception as exc:
        raise _Untrackable(f"could not follow the entries through it: {type(exc).__name__}: {exc}") from exc
    value = env.val[node]
    many = isinstance(value, tuple | list)
    vals = list(value) if many else [value]
    runs = [list(r) if isinstance(r, tuple | list) else [r] for r in (r1, r2, r3)]
    if any(len(r) != len(vals) for r in runs):
        raise _Untrackable("entry tracking changed the number of results")
    in_bds = {env.expr[a].batch_dim for a in inputs}
    results = [_tracked(tr, env, inputs, offsets, total, nb, in_bds, o1, o2, o3, v)
               for o1, o2, o3, v in zip(*runs, vals, strict=True)]
    return tuple(results) if many else results[0]


def _tracked(tr: Tracer, env: _Env, inputs: list[fx.Node], offsets: dict, total: int, nb: int,
             in_bds: set[int], o1: object, o2: object, o3: object, v: object) -> Affine:
    """The expression of one result of :func:`_track` from its three runs."""
    if not all(isinstance(o, Tensor) for o in (o1, o2, o3, v)):
        raise _Untrackable("expected tensor results")
    o1, o2, o3 = o1.double(), o2.double(), o3.double()  # type: ignore[union-attr]
    is_entry = (o1 != 0) & (o2 == 2 * o1)
    if not bool((is_entry | (o1 == o2)).all()):
        raise _Untrackable("it is not a rearrangement of entries (values are combined)")
    code = torch.where(is_entry, o1 - 1, torch.zeros_like(o1))
    sample, local = torch.div(code, total, rounding_mode="floor"), torch.remainder(code, total)
    d = _batch_dim(o1, is_entry, sample, nb, in_bds)
    if d is None:
        raise _Untrackable("the operation mixes samples of the batch (or drops the batch dimension)")
    shape = tuple(s for i, s in enumerate(o1.shape) if i != d)
    if tuple(v.shape) != shape[:d] + (tr.batch,) + shape[d:]:  # type: ignore[union-attr]
        raise _Untrackable("entry tracking changed the shape")
    ent, loc = is_entry.movedim(d, 0), local.movedim(d, 0)
    pattern = torch.where(ent, loc, -1)
    if not bool((pattern == pattern[:1]).all()):
        raise _Untrackable("the operation treats the samples of the batch differently")
    c3 = o3.movedim(d, 0)
    if not bool((c3 == c3[:1]).all()):
        raise _Untrackable("a constant tensor in it varies over the batch")
    if not tr.build:
        return Affine(shape, batch_dim=d)  # a shape marker
    idx = pattern[0].reshape(-1).long().numpy()
    const = torch.where(ent[0], 0.0, c3[0]).reshape(-1).numpy()
    result = Affine(shape)
    for a in inputs:
        lo, hi = offsets[a], offsets[a] + env.expr[a].size
        sel = np.where((idx >= lo) & (idx < hi), idx - lo, -1)
        if (sel >= 0).any():
            result = result + env.expr[a].gather(sel, shape)
    result = result.shift(const)
    result.batch_dim = d
    return result


def _batch_dim(o: Tensor, is_entry: Tensor, sample: Tensor, nb: int, input_bds: set[int]) -> int | None:
    """The dimension of ``o`` along which the sample index of every entry runs ``0, 1, ...``."""
    if nb == 1:  # a batch of 1: the batch dimension keeps its place when it can
        cands = [d for d in input_bds if d < o.dim() and o.shape[d] == 1]
        return cands[0] if len(input_bds) == 1 and cands else None
    if not bool(is_entry.any()):
        return None
    for d in range(o.dim()):
        if o.shape[d] != nb:
            continue
        pos = torch.arange(nb, dtype=o.dtype).reshape([nb if i == d else 1 for i in range(o.dim())])
        if bool(((sample == pos) | ~is_entry).all()):
            return d
    return None


# ---------------------------------------------------------------------- layers

_PACKED = ("a PackedSequence (variable-length sequences) is not supported: the implicit model unrolls "
           "one fixed length (paper 000 §3.5). Pad the batch to one length and pass the padded tensor")


def packed_refusal(f: object) -> str | None:
    """The reason for refusing ``f`` when it packs or unpacks a ``PackedSequence``, else ``None``.

    Args:
        f: a function or method called in the traced network.

    Returns:
        The reason, or ``None``.

    Examples:
        >>> packed_refusal(torch.nn.utils.rnn.pack_padded_sequence) is not None, packed_refusal(torch.tanh)
        (True, None)
    """
    name = getattr(f, "__name__", "").lstrip("_")
    return _PACKED if name in ("pack_padded_sequence", "pad_packed_sequence", "pack_sequence") else None



@dataclass
class _Dir:
    """Weights of one layer and direction, per gate: torch (values) and float64 CSR (expressions)."""

    W_i: list[Tensor]
    W_h: list[Tensor]
    b_i: list[Tensor | None]
    b_h: list[Tensor | None]
    S_i: list[sp.csr_array]
    S_h: list[sp.csr_array]
    W_r: Tensor | None = None  # LSTM projection
    S_r: sp.csr_array | None = None


def _weights(mod: nn.Module, suffix: str, gates: int) -> _Dir:
    def chunks(t: Tensor | None) -> list:
        return [None] * gates if t is None else list(t.detach().chunk(gates, 0))

    W_i = chunks(getattr(mod, f"weight_ih{suffix}"))
    W_h = chunks(getattr(mod, f"weight_hh{suffix}"))
    b_i = chunks(getattr(mod, f"bias_ih{suffix}", None) if mod.bias else None)
    b_h = chunks(getattr(mod, f"bias_hh{suffix}", None) if mod.bias else None)
    d = _Dir(W_i, W_h, b_i, b_h, [sp.csr_array(w.double().cpu().numpy()) for w in W_i],
             [sp.csr_array(w.double().cpu().numpy()) for w in W_h])
    W_r = getattr(mod, f"weight_hr{suffix}", None)
    if W_r is not None:
        d.W_r, d.S_r = W_r.detach(), sp.csr_array(W_r.detach().double().cpu().numpy())
    return d


def _np(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().double().cpu().numpy()


def _lin(x: Term, W: Tensor, S: sp.csr_array, b: Tensor | None) -> Term:
    """``W x + b``; with a bound ``lo <= x <= hi`` on ``x``, the interval image of the box as its bound."""
    val = x.val @ W.t()
    if b is not None:
        val = val + b
    out = Term(x.expr.linear(S, (W.shape[0],), _np(b)), val)
    if x.bound is not None:
        lo, hi = x.bound
        pos, neg = S.maximum(0), S.minimum(0)
        c = np.zeros(S.shape[0]) if b is None else _np(b)
        rlo = pos @ np.full(S.shape[1], lo) + neg @ np.full(S.shape[1], hi) + c
        rhi = pos @ np.full(S.shape[1], hi) + neg @ np.full(S.shape[1], lo) + c
        out.bound = (float(rlo.min()), float(rhi.max()))
    return out


class _Unroll:
    """Builds the blocks of one recurrent node (layer or cell) on a :class:`Tracer`."""

    def __init__(self, tr: Tracer, node: fx.Node, mode: str) -> None:
        self.tr, self.node, self.mode = tr, node, mode

    def pre(self, w: _Dir, g: int, x: Term, h: Term | None) -> Term:
        """Gate ``g``'s pre-activation ``W_ig x + b_ig + W_hg h + b_hg``."""
        z = _lin(x, w.W_i[g], w.S_i[g], w.b_i[g])
        if h is not None and not h.zero:
            z = z + _lin(h, w.W_h[g], w.S_h[g], w.b_h[g])
        elif w.b_h[g] is not None:
            z = z + _const_term(w.b_h[g], self.tr.batch)
        return z

    def interval(self, t: Term, what: str) -> tuple[float, float]:
        """A certified ``(lo, hi)`` holding every entry of ``t`` for every input: its own bound, or
        interval arithmetic on its expression over the blocks' ranges."""
        if t.bound is not None:
            return t.bound
        los, his = expr_range(t.expr, [(b.lo, b.hi) for b in self.tr.blocks])  # type: ignore[misc]
        if not (np.isfinite(los).all() and np.isfinite(his).all()):
            raise self.tr._fail(self.node, (
                f"{what} multiplies a gate (paper 000 §2.4, §3.6: both factors of a product must be "
                f"bounded), but it depends on the input without a bounded map in between. Pass the "
                f"initial state through a bounded map (tanh, sigmoid) or give a constant"))
        return float(los.min()), float(his.max())

    def bounded(self, t: Term, what: str) -> Factor:
        """The identity on ``t``'s certified interval (§2.4): exact wherever ``t`` can be."""
        lo, hi = self.interval(t, what)
        return Factor(identity_on(lo, hi), t.expr, t.val)

    def product(self, a: Factor, b: Factor, name: str) -> Term:
        """A :class:`~idlkit.activations.Product` block of ``a * b``; its first slots as a Term."""
        k = a.z.shape[1]
        expr = self.tr._product(self.node, f"{self.node.name}@{name}", a, b, (k,))
        return Term(expr, self.tr.blocks[-1].x[:, 0::2])

    def step(self, w: _Dir, x: Term, h: Term | None, c: Term | None, name: str
             ) -> tuple[Term, Term | None]:
        """One step of the recursion: ``(h_t, c_t)`` (``c_t`` for the LSTM only; ``None`` for a
        zero state)."""
        has_h = h is not None and not h.zero
        if self.mode == "LSTM":
            return self._lstm(w, x, h if has_h else None, c if c is not None and not c.zero else None, name)
        if self.mode == "GRU":
            return self._gru(w, x, h if has_h else None, name), None
        # Elman RNN (eq. 3.4): one block per step
        act = Tanh() if self.mode == "RNN_TANH" else ReLU()
        z = self.pre(w, 0, x, h)
        xv = act(z.val.t()).t()
        k = self.tr._new_block(self.node, f"{self.node.name}@{name}", act, z.expr, z.val, xv)
        return Term(Affine.source(k, (xv.shape[1],)), xv), None

    def _lstm(self, w: _Dir, x: Term, h: Term | None, c: Term | None, name: str) -> tuple[Term, Term]:
        """``c' = sigmoid(f) c + sigmoid(i) tanh(g)`` and ``h' = sigmoid(o) tanh(c')`` (§3.6)."""
        S, T = Sigmoid(), Tanh()
        zi, zf, zg, zo = (self.pre(w, g, x, h) for g in range(4))
        cell = self.product(Factor(S, zi.expr, zi.val), Factor(T, zg.expr, zg.val), f"{name}.ig")
        if c is not None:
            cell = cell + self.product(Factor(S, zf.expr, zf.val), self.bounded(c, "the cell state c"),
                                       f"{name}.fc")
        hh = self.product(Factor(S, zo.expr, zo.val), Factor(T, cell.expr, cell.val), f"{name}.h")
        if w.W_r is not None:  # proj_size > 0: h' = W_hr (o * tanh(c'))
            hh = _lin(hh, w.W_r, w.S_r, None)  # type: ignore[arg-type]
        return hh, cell

    def _gru(self, w: _Dir, x: Term, h: Term | None, name: str) -> Term:
        """``h' = sigmoid(-z) tanh(W_in x + b_in + sigmoid(r) (W_hn h + b_hn)) + sigmoid(z) h``."""
        S, T = Sigmoid(), Tanh()
        zr, zz = self.pre(w, 0, x, h), self.pre(w, 1, x, h)
        n = _lin(x, w.W_i[2], w.S_i[2], w.b_i[2])
        hn = _lin(h, w.W_h[2], w.S_h[2], w.b_h[2]) if h is not None else \
            _const_term(w.b_h[2], self.tr.batch) if w.b_h[2] is not None else None
        if hn is not None and not hn.zero:
            n = n + self.product(Factor(S, zr.expr, zr.val), self.bounded(hn, "W_hn h + b_hn"), f"{name}.r")
        zneg = zz.neg()
        out = self.product(Factor(S, zneg.expr, zneg.val), Factor(T, n.expr, n.val), f"{name}.a")
        if h is None:
            out.bound = (-1.0, 1.0)
            return out
        out = out + self.product(Factor(S, zz.expr, zz.val), self.bounded(h, "the hidden state h"),
                                 f"{name}.b")
        # a convex combination of tanh(.) in (-1, 1) and h (sigmoid(-z) + sigmoid(z) = 1)
        lo, hi = self.interval(h, "the hidden state h")
        bound = (min(-1.0, lo), max(1.0, hi))
        # h' (a sum of two products) as a state of its own: the next step's four products read it
        # through one H x H block of A each instead of two (half the nonzeros)
        k = self.tr._new_block(self.node, f"{self.node.name}@{name}.h", Identity(), out.expr, out.val,
                               out.val)
        blk = self.tr.blocks[k]
        blk.lo, blk.hi = np.maximum(blk.lo, bound[0]), np.minimum(blk.hi, bound[1])
        return Term(Affine.source(k, (out.val.shape[1],)), out.val, bound)


def _arg(node: fx.Node, args: tuple, kwargs: dict, i: int, name: str) -> tuple[object, object]:
    """Positional-or-keyword argument ``i``/``name`` of a call: (its fx structure, its value)."""
    if len(args) > i:
        return node.args[i], args[i]
    if name in kwargs:
        return node.kwargs[name], kwargs[name]
    return None, None


def _expr_of(env: _Env, a: object) -> object:
    if isinstance(a, fx.Node):
        return env.expr.get(a)
    if isinstance(a, tuple | list):
        return tuple(_expr_of(env, x) for x in a)
    return None


def _state(tr: Tracer, node: fx.Node, what: str, e: object, v: object, rows: int, width: int,
           seq: bool) -> list[Term | None]:
    """Initial states: ``rows`` Terms of width ``width`` (``None`` for zeros). ``seq``: the tensor
    is ``(rows, batch, width)`` as for ``nn.LSTM``'s ``h0``, else ``(batch, width)`` (cells)."""
    if v is None:
        return [None] * rows
    if not isinstance(v, Tensor):
        raise tr._fail(node, f"{what} must be a tensor, got {type(v).__name__}")
    full = (rows, tr.batch, width) if seq else (tr.batch, width)
    if tuple(v.shape) != full:
        raise tr._fail(node, f"{what} has shape {tuple(v.shape)}, expected {full} (batch {tr.batch}); an "
                             f"unbatched state is not supported")
    bd = 1 if seq else 0
    per = (rows, width) if seq else (width,)
    if isinstance(e, Affine):
        if e.batch_dim != bd or tuple(e.shape) != per:
            raise tr._fail(node, f"{what} computed from the input must keep the batch in dim {bd}")
        val = v.movedim(bd, 0).reshape(tr.batch, -1)
        full_t = Term(e, val)
    elif e is None:
        c = v.detach().movedim(bd, 0)
        if not bool((c == c[:1]).all()):
            raise tr._fail(node, f"{what} is a constant that varies over the batch (a random initial "
                                 f"state?); give one state for every sample, or compute it from the input")
        if not bool(c.any()):
            return [None] * rows
        full_t = _const_term(c[0].reshape(-1), tr.batch)
    else:
        raise tr._fail(node, f"{what} must be one tensor")
    return [full_t.rows(r * width, (r + 1) * width) for r in range(rows)]


def convert_recurrent(tr: Tracer, node: fx.Node, env: _Env, mod: nn.Module, args: tuple, kwargs: dict,
                      value: object) -> object:
    """Expressions of an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` call, ``(out, h_n)`` or
    ``(out, (h_n, c_n))``, or of a cell ``RNNCell``/``GRUCell`` (``h'``) or ``LSTMCell`` (``(h', c')``),
    making its state blocks on ``tr`` (module docstring).

    Args:
        tr: the :class:`~idlkit.convert.trace.Tracer` receiving the state blocks.
        node: the call's graph node.
        env: the tracer's node values and expressions.
        mod: the recurrent module.
        args: the call's positional arguments.
        kwargs: the call's keyword arguments.
        value: the call's output on the example input.

    Returns:
        The expressions, shaped like the module's output.

    Raises:
        ConversionError: an unsupported mode, a ``PackedSequence`` or an input not computed
            from the network's input.
        NeedsBuild: a values-only run that meets a product.

    Examples:
        >>> class Last(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__(); self.rnn = torch.nn.RNN(2, 3, batch_first=True)
        ...     def forward(self, s):
        ...         out, _ = self.rnn(s)                           # converted by convert_recurrent
        ...         return out[:, -1]
        >>> net = Last()
        >>> s = torch.randn(4, 5, 2)
        >>> model = idlkit.convert.from_torch(net, s)
        >>> model(s.flatten(1)).shape, torch.allclose(model(s.flatten(1)), net(s), atol=1e-5)
        (torch.Size([4, 3]), True)
    """
    from .trace import NeedsBuild

    if not tr.build:
        raise NeedsBuild  # products: the factors' intervals need the expressions
    kind = type(mod).__name__
    cell = isinstance(mod, nn.RNNCellBase)
    mode = ("LSTM" if isinstance(mod, nn.LSTMCell) else "GRU" if isinstance(mod, nn.GRUCell) else
            "RNN_" + mod.nonlinearity.upper()) if cell else mod.mode
    if mode not in _GATES:
        raise tr._fail(node, f"unsupported recurrent mode {mode!r}")
    inp_node, inp = _arg(node, args, kwargs, 0, "input")
    if isinstance(inp, PackedSequence):
        raise tr._fail(node, f"{kind} on {_PACKED}")
    e = env.expr.get(inp_node) if isinstance(inp_node, fx.Node) else None
    if not isinstance(e, Affine) or not isinstance(inp, Tensor):
        raise tr._fail(node, f"the input of {kind} must be a tensor computed from the network's input")
    gates = len(_GATES[mode])
    u = _Unroll(tr, node, mode)
    if cell:
        return _cell(tr, node, env, mod, mode, u, e, inp, args, kwargs, value, gates)

    # ------------------------------------------------------------------ nn.RNN / LSTM / GRU
    if mod.training and mod.dropout > 0 and mod.num_layers > 1:
        raise tr._fail(node, f"{kind}(dropout={mod.dropout}) between its {mod.num_layers} layers is "
                             f"random in training mode; call net.eval() (or set dropout=0)")
    if inp.dim() != 3:
        raise tr._fail(node, f"{kind} got a {inp.dim()}-d input {tuple(inp.shape)}; a batched "
                             f"sequence is 3-d (an unbatched 2-d sequence would mix the batch into time)")
    bf = bool(mod.batch_first)
    if e.batch_dim != (0 if bf else 1):
        if bf:
            raise tr._fail(node, f"{kind}(batch_first=True) got a sequence-first tensor (batch in dim "
                                 f"{e.batch_dim}); pass it batch-first or use batch_first=False")
        raise tr._fail(node, f"{kind}(batch_first=False) reads dim 0 of its input as time, but this input "
                             f"keeps the batch in dim 0 (the network's input is batch-first): pass "
                             f"x.transpose(0, 1), or use batch_first=True")
    T, F_in = e.shape
    L, D = mod.num_layers, 2 if mod.bidirectional else 1
    H = mod.hidden_size
    Hout = mod.proj_size if getattr(mod, "proj_size", 0) else H
    hx_node, hx = _arg(node, args, kwargs, 1, "hx")
    if mode == "LSTM" and hx is not None:
        if not (isinstance(hx, tuple | list) and len(hx) == 2):
            raise tr._fail(node, "nn.LSTM's hx must be a tuple (h0, c0)")
        hx_e = _expr_of(env, hx_node)
        if isinstance(hx_node, fx.Node) and isinstance(hx_e, tuple):
            h_e, c_e = hx_e
        elif isinstance(hx_node, tuple | list):
            h_e, c_e = _expr_of(env, hx_node[0]), _expr_of(env, hx_node[1])
        else:
            h_e, c_e = None, None
        h0 = _state(tr, node, "h0", h_e, hx[0], L * D, Hout, True)
        c0 = _state(tr, node, "c0", c_e, hx[1], L * D, H, True)
    else:
        h0 = _state(tr, node, "h0", _expr_of(env, hx_node), hx, L * D, Hout, True)
        c0 = [None] * (L * D)
    batch = tr.batch
    xv = inp.movedim(1, 0) if not bf else inp  # (batch, T, F)
    xs = [Term(e.gather(np.arange(t * F_in, (t + 1) * F_in), (F_in,)), xv[:, t]) for t in range(T)]
    h_n: list[Term] = []
    c_n: list[Term] = []
    for layer in range(L):
        per_dir = []
        for d in range(D):
            w = _weights(mod, f"_l{layer}" + ("_reverse" if d else ""), gates)
            h, c = h0[layer * D + d], c0[layer * D + d]
            hs: list[Term | None] = [None] * T
            for t in (range(T) if d == 0 else range(T - 1, -1, -1)):
                h, c = u.step(w, xs[t], h, c, f"l{layer}{'r' if d else ''}.t{t}")
                hs[t] = h
            per_dir.append(hs)
            h_n.append(h)  # type: ignore[arg-type]
            if mode == "LSTM":
                c_n.append(c)  # type: ignore[arg-type]
        xs = [_concat_terms([per_dir[d][t] for d in range(D)]) for t in range(T)]  # type: ignore[misc]
    out = concat([x.expr for x in xs], (T, D * Hout))
    out.batch_dim = 0 if bf else 1
    hn = concat([h.expr for h in h_n], (L * D, Hout))
    hn.batch_dim = 1
    _check(tr, node, torch.stack([x.val for x in xs], dim=1), value[0] if bf else value[0].movedim(1, 0),
           batch)
    if mode == "LSTM":
        cn = concat([c.expr for c in c_n], (L * D, H))
        cn.batch_dim = 1
        return (out, (hn, cn))
    return (out, hn)


def _cell(tr: Tracer, node: fx.Node, env: _Env, mod: nn.Module, mode: str, u: _Unroll, e: Affine,
          inp: Tensor, args: tuple, kwargs: dict, value: object, gates: int) -> object:
    kind = type(mod).__name__
    if inp.dim() != 2 or e.batch_dim != 0:
        raise tr._fail(node, f"{kind} needs a batch-first (batch, features) input, got shape "
                             f"{tuple(inp.shape)}" + (" with the batch in dim 1" if e.batch_dim else ""))
    H = mod.hidden_size
    hx_node, hx = _arg(node, args, kwargs, 1, "hx")
    if mode == "LSTM":
        if hx is None:
            h, c = None, None
        else:
            if not (isinstance(hx, tuple | list) and len(hx) == 2):
                raise tr._fail(node, "nn.LSTMCell's hx must be a tuple (h, c)")
            hx_e = _expr_of(env, hx_node)
            h_e, c_e = (hx_e if isinstance(hx_e, tuple) and len(hx_e) == 2 else (None, None))
            h = _state(tr, node, "h", h_e, hx[0], 1, H, False)[0]
            c = _state(tr, node, "c", c_e, hx[1], 1, H, False)[0]
    else:
        h = _state(tr, node, "h", _expr_of(env, hx_node), hx, 1, H, False)[0]
        c = None
    w = _weights(mod, "", gates)
    x = Term(e, inp)
    h2, c2 = u.step(w, x, h, c, "t")
    got = value[0] if mode == "LSTM" else value
    _check(tr, node, h2.val, got, tr.batch)  # type: ignore[arg-type]
    return (h2.expr, c2.expr) if mode == "LSTM" else h2.expr  # type: ignore[union-attr]


def _check(tr: Tracer, node: fx.Node, mine: Tensor, torch_value: Tensor, batch: int) -> None:
    """Guard: the unrolled recursion reproduces torch's own output on the traced input."""
    a = mine.reshape(batch, -1)
    b = torch_value.reshape(batch, -1).to(a.dtype)
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    tol = 1e-3 if a.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-7
    err = float((a - b).abs().max()) if a.numel() else 0.0
    if not err <= tol * scale:
        raise tr._fail(node, f"internal check failed: the unrolled recursion differs from torch's output "
                             f"by {err:.3g}; please report this network")
