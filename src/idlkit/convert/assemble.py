"""Exact implicit form of a standard network: ``from_torch`` and ``states`` (paper 000 §3).

The state blocks made by :class:`~idlkit.convert.trace.Tracer` in forward order
``x_1, ..., x_L`` are stacked *last layer on top*, ``x = (x_L; ...; x_1)`` (paper 002 §3,
paper 000 eq. 3.3). Block ``k``'s pre-activation ``z_k = sum_{j<k} M_kj x_j + M_ku u +
c_k`` gives row block ``k`` of ``[A B b]``; the output expression gives ``[C D d]``.
Since a block depends only on earlier blocks, which sit *below* it, ``A`` is strictly
block upper triangular: the model is well-posed for any weights (Thm 2.8/2.9) and the
``triangular`` solver computes the state in one backward block substitution, level by
level, which is the network's forward pass (§3.2).

Blocks that nothing reads (neither the output nor a later block's pre-activation: a gate
absorbed into a product, which re-computes it from its pre-activation, or an unused
branch) are left out, by :func:`from_torch` and :func:`states` alike (:meth:`Tracer.live`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from .._validation import check_bool
from ..activations import stack_activations
from ..errors import ConversionError, ShapeError
from ..model import ImplicitModel
from .expr import INPUT, Affine
from .trace import NeedsBuild, StateBlock, Tracer

__all__ = ["from_torch", "states", "SPARSE_AUTO_THRESHOLD"]

SPARSE_AUTO_THRESHOLD = 1024  # sparse="auto": sparse matrices from this state size on (the dense
# certificate of a larger A costs an iterative PF eigenvalue)


def _offsets(blocks: list[StateBlock], live: list[int]) -> dict[int, int]:
    """Row offset of each live block (creation order) in the stacked state ``(x_L; ...; x_1)``."""
    offs, pos = {}, 0
    for k in reversed(live):
        offs[k] = pos
        pos += blocks[k].size
    return offs


class _CSRBuilder:
    """Row blocks appended top to bottom into preallocated CSR arrays (target dtype values,
    int32 indices when they fit): memory ~ (value size + 4) bytes per nonzero, one copy.

    Each row block is the horizontal concatenation of the sparse terms of one expression
    (disjoint column ranges, so no duplicates), built by scipy block-locally in float64
    and cast as it is copied in.
    """

    def __init__(self, rows: int, cols: int, nnz_bound: int, dtype: torch.dtype) -> None:
        self.shape = (rows, cols)
        idx = np.int32 if max(rows, cols, nnz_bound) < 2**31 else np.int64
        self.indptr = np.zeros(rows + 1, dtype=idx)
        self.indices = np.empty(nnz_bound, dtype=idx)
        self.data = np.empty(nnz_bound, dtype=torch.empty(0, dtype=dtype).numpy().dtype)
        self.row = self.nnz = 0

    def append(self, pieces: list[tuple[int, sp.csr_array]], height: int) -> None:
        """Rows ``[row, row + height)``: ``pieces`` are ``(column offset, CSR)``."""
        pieces = sorted((off, M) for off, M in pieces if M.nnz)
        r0 = self.row
        if pieces:
            parts, pos = [], 0
            for off, M in pieces:
                if off > pos:
                    parts.append(sp.csr_array((height, off - pos)))
                parts.append(sp.csr_array(M))
                pos = off + M.shape[1]
            if pos < self.shape[1]:
                parts.append(sp.csr_array((height, self.shape[1] - pos)))
            R = sp.csr_array(sp.hstack(parts, format="csr")) if len(parts) > 1 else parts[0]
            if R.data.size and not R.data.all():
                R = R.copy()
                R.eliminate_zeros()
            if not R.has_sorted_indices:
                R.sort_indices()
            k = R.nnz
            self.indices[self.nnz:self.nnz + k] = R.indices
            self.data[self.nnz:self.nnz + k] = R.data
            self.indptr[r0 + 1:r0 + height + 1] = R.indptr[1:] + self.nnz
            self.nnz += k
        else:
            self.indptr[r0 + 1:r0 + height + 1] = self.nnz
        self.row += height

    def tensor(self, sparse: bool) -> Tensor:
        assert self.row == self.shape[0]
        indices, data = self.indices[:self.nnz], self.data[:self.nnz]
        if not sparse:
            M = sp.csr_array((data, indices, self.indptr), shape=self.shape)
            return torch.from_numpy(M.toarray())
        return torch.sparse_csr_tensor(torch.from_numpy(self.indptr), torch.from_numpy(indices),
                                       torch.from_numpy(data), self.shape, check_invariants=False)


def _terms(expr: Affine, offs: dict[int, int]) -> tuple[list, list]:
    """``(column offset, CSR)`` pieces of an expression's state terms, and its input terms."""
    state = [(offs[k], M) for k, M in expr.terms.items() if k != INPUT]
    inp = [(0, M) for k, M in expr.terms.items() if k == INPUT]
    return state, inp


def _net_dtype(net: nn.Module, example: Tensor) -> torch.dtype:
    if not example.is_floating_point():
        raise ConversionError(f"example_input must be a floating tensor (the model's dtype), got "
                              f"{example.dtype}; convert it with example_input.float() or .double()")
    for t in list(net.parameters()) + list(net.buffers()):
        if t.is_floating_point() and t.dtype != example.dtype:
            raise ConversionError(f"example_input has dtype {example.dtype} but the network holds "
                                  f"{t.dtype} tensors; convert one of them (net.to({example.dtype}))")
    return example.dtype


def from_torch(net: nn.Module, example_input: Tensor, *, sparse: bool | str = "auto",
               **solver_kwargs: object) -> ImplicitModel:
    """Exactly equivalent :class:`~idlkit.ImplicitModel` of a standard network (paper 000 §3).

    Args:
        net: a ``torch.nn.Module`` traceable by ``torch.fx`` (no data-dependent control
            flow), in eval mode where it has batch norm or dropout. Supported:

            * affine layers: ``Linear``, ``Conv1d``/``Conv2d`` (any stride, padding, dilation,
              groups, bias; zero padding mode), ``AvgPool2d``, ``AdaptiveAvgPool2d``,
              ``BatchNorm1d/2d`` (eval, §3.1), ``Dropout`` (eval), ``Flatten`` and
              reshapes/transposes/slicing/zero padding/cat, means and sums over per-sample
              dims, sums of branches (residual blocks, §3.4), products with constants;
            * ``MaxPool2d`` (BLIP max over blocks, §3.3);
            * ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (any ``batch_first``, layers, bias,
              bidirectional, LSTM projection, h0/c0 omitted, constant or computed from the
              input) and their cells, unrolled over the example's sequence length with the
              gates as Product blocks (§3.5-3.6, :mod:`idlkit.convert.recurrent`);
            * activations, as modules (in-place variants too), ``F.*``, ``torch.*`` and tensor
              methods: ReLU, LeakyReLU, Tanh, Sigmoid, GELU (``approximate`` 'none'/'tanh'),
              SiLU, Mish, Hardswish, ELU, CELU, SELU, Softplus, Softsign, Hardtanh, ReLU6,
              Hardsigmoid, LogSigmoid, Tanhshrink, Softshrink, RReLU (eval: LeakyReLU of the
              mean slope), PReLU (one slope >= 0), ``clamp``/``Threshold(t, t)`` (shifted
              ReLU), Softmax and Softmin over any per-sample dim (see
              :mod:`idlkit.convert.nonlinear`);
            * products of two input-dependent tensors whose factors are both bounded
              (§2.4, §3.6): elementwise (broadcast), ``@``/``matmul``/``bmm``, ``F.glu``,
              and attention with bounded queries, keys and values
              (:class:`idlkit.baselines.BoundedAttention`,
              ``F.scaled_dot_product_attention`` with ``is_causal`` or a constant mask).

            Refused, with the reason: discontinuous maps (``Hardshrink``, ``Threshold(t, v)``
            with ``v != t``), ``LogSoftmax``, products with an unbounded factor (standard
            dot-product attention, ``nn.MultiheadAttention``, transformer layers: not
            Lipschitz, §2.4), and anything that mixes the samples of a batch. Nested
            ``nn.Sequential`` and custom modules are traced through, specialised to the
            example's shapes, so Python loops such as ``for t in range(x.size(1))`` unroll.
        example_input: a batch-first input ``(batch, *dims)``; fixes every shape (and the
            RNN's sequence length). Its dtype is the model's (float32 or float64).
        sparse: ``True`` stores ``A, B, C, D`` as torch CSR tensors (frozen buffers, see
            :meth:`ImplicitModel.from_matrices`), ``False`` dense, ``"auto"`` sparse when the
            state has at least :data:`SPARSE_AUTO_THRESHOLD` entries.
        **solver_kwargs: passed on (default ``solver="triangular"``).

    Returns:
        A model with ``wellposedness="triangular"`` and the ``triangular`` solver: ``A`` is
        strictly block upper triangular with the state stacked last layer on top,
        ``x = (x_L; ...; x_1)`` (paper 002 §3), so ``model(u)`` is one backward block
        substitution. Its input is the flattened ``example_input[0]`` (``model`` accepts
        ``(batch, *dims)`` too); its output the flattened network output. A product is a
        :class:`~idlkit.activations.Product` pair of states; blocks nothing reads (a gate
        whose pre-activation the product reads directly) are not states.

    Raises:
        ConversionError: an unsupported layer or function, a training-mode batch norm or
            dropout, dynamic control flow (on tensor values), a ``PackedSequence``, an
            unbounded factor of a product, or a shape mismatch; the message names the
            node, the module and the reason. Nothing is returned half-converted.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GELU(), torch.nn.Linear(4, 2))
        >>> model = from_torch(net.double(), torch.randn(5, 3, dtype=torch.float64))
        >>> model.hidden, model.activation
        (4, GELU(approximate='none'))
    """
    if not isinstance(net, nn.Module):
        raise ConversionError(f"from_torch expects a torch.nn.Module, got {type(net).__name__}")
    if sparse != "auto":
        sparse = check_bool("sparse", sparse)
    if not isinstance(example_input, Tensor) or example_input.dim() < 1 or example_input.shape[0] == 0:
        raise ShapeError(f"example_input must be a non-empty batch (batch >= 1, *dims), got "
                         f"{getattr(example_input, 'shape', type(example_input).__name__)}; pass e.g. "
                         f"one real input with a leading batch dimension")
    dtype = _net_dtype(net, example_input)
    with torch.no_grad():
        tr = Tracer(net, example_input, build=True).run()
    blocks, out = tr.blocks, tr.output
    assert out is not None
    live = tr.live()
    n = sum(blocks[k].size for k in live)
    p = int(np.prod(example_input.shape[1:]))
    q = out.size
    offs = _offsets(blocks, live)
    use_sparse = (n >= SPARSE_AUTO_THRESHOLD) if sparse == "auto" else bool(sparse)
    # assemble [A B b] row block by row block, top (last layer) first, straight into CSR
    # arrays of the target dtype, freeing each block's expression once it is copied
    order = live[::-1]
    nnz_a = sum(M.nnz for k in order for key, M in blocks[k].pre.terms.items() if key != INPUT)
    nnz_b = sum(M.nnz for k in order for key, M in blocks[k].pre.terms.items() if key == INPUT)
    Ab, Bb = _CSRBuilder(n, n, nnz_a, dtype), _CSRBuilder(n, p, nnz_b, dtype)
    b = np.zeros(n)
    for k in order:
        blk = blocks[k]
        assert blk.pre is not None
        state, inp = _terms(blk.pre, offs)
        Ab.append(state, blk.size)
        Bb.append(inp, blk.size)
        b[offs[k]:offs[k] + blk.size] = blk.pre.const
        blk.pre = None  # free the expression as soon as it is placed
        del state, inp
    A, B = Ab.tensor(use_sparse), Bb.tensor(use_sparse)
    del Ab, Bb
    state, inp = _terms(out, offs)
    Cb = _CSRBuilder(q, n, sum(M.nnz for _, M in state), dtype)
    Db = _CSRBuilder(q, p, sum(M.nnz for _, M in inp), dtype)
    Cb.append(state, q)
    Db.append(inp, q)
    C, D = Cb.tensor(use_sparse), Db.tensor(use_sparse)
    act = stack_activations([(blocks[k].size, blocks[k].act) for k in order])
    kwargs = {"solver": "triangular", **solver_kwargs}
    bt = torch.from_numpy(b).to(dtype)
    dt = torch.from_numpy(np.asarray(out.const, dtype=np.float64)).to(dtype)
    return ImplicitModel.from_matrices(A, B, C, D, bt, dt, activation=act,
                                       wellposedness="triangular", **kwargs)


def states(net: nn.Module, u: Tensor) -> tuple[Tensor, Tensor]:
    """Pre- and post-activation state stacks ``(Z, X)`` of ``net`` on ``u`` (paper 002 §3).

    Both are batch-first ``(batch, n)`` with the blocks in the order of
    :func:`from_torch`'s state, last layer on top: ``X[:, :n_L]`` is the last layer's
    post-activation state and ``X = phi(Z)`` blockwise. For ``m = from_torch(net, u)``,
    ``X`` equals ``m.equilibrium(u)`` and ``Z = X A^T + U B^T + b`` (up to rounding), so
    SIM and the converter agree on what the state is. The values are computed from the
    network's own intermediate tensors (max pooling: the window copies of its input;
    ``nn.RNN``: each layer's hidden states; a product: the pairs of factor pre-activations
    and the products, see :class:`~idlkit.activations.Product`). Blocks nothing reads are
    left out here as in :func:`from_torch`.

    Args:
        net: the torch network (as for :func:`from_torch`).
        u: ``(batch, ...)`` example inputs.

    Returns:
        ``(Z, X)``: ``(batch, n)`` pre- and post-activation states.

    Raises:
        ConversionError: a network :func:`from_torch` cannot convert.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> u = torch.randn(5, 4)
        >>> Z, X = states(net, u)
        >>> Z.shape, X.shape                                     # (batch, n): one state per hidden unit
        (torch.Size([5, 6]), torch.Size([5, 6]))
        >>> torch.allclose(X, torch.relu(net[0](u)))
        True
    """
    _net_dtype(net, u)
    with torch.no_grad():
        try:
            tr = Tracer(net, u, build=False).run()
        except NeedsBuild:  # products: the factors' maps are chosen from the expressions
            tr = Tracer(net, u, build=True).run()
    blocks = [tr.blocks[k] for k in tr.live()[::-1]]
    if not blocks:
        empty = u.new_zeros(u.shape[0], 0)
        return empty, empty
    Z = torch.cat([blk.z for blk in blocks], dim=1)
    X = torch.cat([blk.x for blk in blocks], dim=1)
    return Z, X
