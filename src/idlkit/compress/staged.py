"""Staged implicit models: explicit levels around a smaller fixed point (paper 000 §5.2, (c)-(d)).

Cases (c) and (d) of paper 000 §5.2 ("Dimension reduction via row- and column-sparsity"):
write the state as ``x = (x_1, x_2)``. When the rows of ``A`` of ``x_2`` are zero,
``x_2 = phi(B_2 u + b_2)`` is computed in closed form *before* the fixed point, which then runs
on ``x_1`` only: ``x_1 = phi(A_11 x_1 + [B_1, A_12] [u; x_2] + b_1)``. When the columns of
``A`` of ``x_2`` are zero, nothing in the fixed point reads ``x_2``; it is computed in one step
*after* ``x_1``: ``x_2 = phi(A_21 x_1 + B_2 u + b_2)``.

Both rules are iterated here (:func:`stage_partition`), on the BLIP blocks of the activation
(a SoftMax / BlockMax / Product block moves as a whole; a :class:`~idlkit.activations.Blockwise`
map mixes maps):

* **pre levels** (topological order): level 1 is the blocks whose rows of ``A`` are zero;
  level ``k`` the blocks whose rows of ``A``, restricted to the states not in levels
  ``1..k-1``, are zero. Level ``k`` reads only ``u`` and the earlier levels:
  ``x_(k) = phi(A_(k),<k x_<k + B_(k) u + b_(k))``. A converted feed-forward network (strictly
  upper-triangular ``A``) is explicit level by level, one level per layer.
* **core**: the states left once nothing more can be peeled from either side; an
  :class:`~idlkit.ImplicitModel` on ``x_1`` with input ``[u; x_pre]`` (its ``B`` is
  ``[B_1, A_1,pre]``), its ``C`` the output columns of ``x_1`` and its ``D``
  ``[D, C_pre]``: ``core([u; x_pre]) = C_1 x_1 + D u + C_pre x_pre + d``.
* **post levels** (peeled from the other side, computed in reverse): first the blocks of the
  non-pre states that no non-pre state reads (their columns of ``A`` over those states are
  zero), then those read only by the ones already peeled, ...; each is computed in one step
  from ``u``, the pre levels, the core and the post levels computed before it.

Then ``y = C x + D u + d`` over all parts (the core's output plus ``C_post x_post``).

Exactness. Every state is computed by the same equation ``x_i = phi_i(A_i x + B_i u + b_i)``
as in the original; the peeling only orders the equations so that each explicit level reads
states already known (every nonzero ``A_ij`` has ``j`` computed before ``i``, or ``i, j`` both
in the core). So for every ``u`` the staged states solve the original equation and, where it
has a unique solution (any well-posed model), they are *the* solution: the outputs agree to
rounding and the core solver's tolerance.

Well-posedness. The core's ``A`` is the principal submatrix of ``A`` on the core's blocks
(kept in their order), so ``||A_11||_inf <= ||A||_inf``, ``mu_inf(A_11) <= mu_inf(A)`` (every
row's ``a_ii + sum_{j != i} |a_ij|`` only loses terms) and ``lambda_pf(|A_11|) <=
lambda_pf(|A|)`` (Perron-Frobenius monotonicity of a principal submatrix of a nonnegative
matrix); strict block triangularity is kept. The core carries the original's declaration
and ``kappa`` and re-checks it. The explicit levels need no condition.

Gradients. The explicit levels are plain torch operations and the core is an
:class:`~idlkit.ImplicitModel` (implicit differentiation), so ``torch.autograd`` gives the
gradients of the original model for the input and for every surviving parameter (each entry
of the original ``A, B, C, D, b, d`` lives in exactly one part; :meth:`StagedImplicitModel.to_implicit`
is the inverse map).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from .._matrix import as_matrix, from_scipy_csr, is_sparse, store_sparse
from ..activations import Activation
from ..errors import ConfigurationError
from ..model import ImplicitModel, batch_input, output_map

__all__ = ["Staging", "StagedImplicitModel", "stage_partition"]

Matrix = np.ndarray | sp.csr_array


@dataclass(frozen=True)
class Staging:
    """The split of a model's states into explicit levels and an implicit core.

    Indices are those of the model's states (``0 .. n-1``), each level and the core sorted.

    Attributes:
        pre: the pre levels in computation order: level ``k`` reads only ``u`` and the levels
            before it (rows of ``A`` over the states not yet computed are zero, case (c)
            iterated).
        core: the states that need the fixed-point iteration (the ``x_1`` of §5.2).
        post: the post levels in computation order: each reads ``u``, the pre levels, the
            core and the post levels before it, and no core state reads it (case (d) iterated).
    """

    pre: tuple[tuple[int, ...], ...]
    core: tuple[int, ...]
    post: tuple[tuple[int, ...], ...]

    @property
    def n_pre(self) -> int:
        return sum(len(lv) for lv in self.pre)

    @property
    def n_core(self) -> int:
        return len(self.core)

    @property
    def n_post(self) -> int:
        return sum(len(lv) for lv in self.post)

    @property
    def order(self) -> tuple[int, ...]:
        """All states in computation order: pre levels, core, post levels."""
        return tuple(i for lv in self.pre for i in lv) + self.core + tuple(
            i for lv in self.post for i in lv)


# ---------------------------------------------------------------------------- partition


def _block_graph(A: Tensor, act: Activation) -> tuple[sp.csr_array, np.ndarray, np.ndarray]:
    """0/1 CSR graph ``G[I, J] = 1`` when block ``I`` reads block ``J`` (a nonzero of ``A`` in
    rows of ``I``, columns of ``J``), and the blocks' starts and sizes."""
    n = A.shape[0]
    sizes = np.asarray(act.blocks(n).sizes, dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64) if sizes.size else sizes
    M = as_matrix(A.detach())
    P = sp.csr_array(M) if not sp.issparse(M) else sp.csr_array(M, copy=True)
    P.data = (P.data != 0).astype(np.float64)
    P.eliminate_zeros()
    block_of = np.repeat(np.arange(sizes.size), sizes)
    Mb = sp.csr_array((np.ones(n), (np.arange(n), block_of)), shape=(n, sizes.size))
    G = sp.csr_array(Mb.T @ P @ Mb)
    G.data = np.ones_like(G.data)
    return G, starts, sizes


def _peel(G: sp.csr_array, alive: np.ndarray) -> list[np.ndarray]:
    """Kahn levels of the blocks ``alive`` with no edge ``G[I, J]`` to a live ``J`` left:
    level 1 has none, level ``k`` only edges to levels ``< k``. Blocks on a cycle (a self
    loop included) or reading one are never peeled. O(blocks + edges)."""
    GT = sp.csr_array(G.T)
    count = np.asarray(G @ alive.astype(np.float64)).ravel().astype(np.int64)
    left = alive.copy()
    frontier = np.flatnonzero(left & (count == 0))
    levels = []
    while frontier.size:
        levels.append(frontier)
        left[frontier] = False
        starts, ends = GT.indptr[frontier], GT.indptr[frontier + 1]
        readers = np.concatenate([GT.indices[s:e] for s, e in zip(starts, ends, strict=True)])
        np.subtract.at(count, readers, 1)
        cand = np.unique(readers)
        frontier = cand[left[cand] & (count[cand] == 0)]
    return levels


def stage_partition(A: Tensor, activation: Activation) -> Staging:
    """The :class:`Staging` of a model with state matrix ``A`` (``(n, n)``, dense or sparse)
    and ``activation`` (its BLIP blocks move whole); see the module docstring.

    Args:
        A: ``(n, n)`` state matrix, dense or sparse.
        activation: the model's :class:`~idlkit.activations.Activation`.

    Returns:
        The :class:`Staging`.

    Examples:
        >>> A = torch.tensor([[0., 0., 0.], [.5, 0., .3], [0., .2, .1]])
        >>> stage_partition(A, idl.activations.ReLU())
        Staging(pre=((0,),), core=(1, 2), post=())
    """
    G, starts, sizes = _block_graph(A, activation)
    L = sizes.size

    def states(blocks: np.ndarray) -> tuple[int, ...]:
        blocks = np.sort(blocks)
        return tuple(int(i) for s, z in zip(starts[blocks], sizes[blocks], strict=True)
                     for i in range(s, s + z))

    alive = np.ones(L, dtype=bool)
    pre = _peel(G, alive)
    for lv in pre:
        alive[lv] = False
    post = _peel(sp.csr_array(G.T), alive)  # nobody alive reads them
    for lv in post:
        alive[lv] = False
    return Staging(pre=tuple(states(lv) for lv in pre), core=states(np.flatnonzero(alive)),
                   post=tuple(states(lv) for lv in reversed(post)))


# ---------------------------------------------------------------------------- helpers


def _slice(M: Tensor, rows: np.ndarray | None, cols: np.ndarray | None) -> Matrix:
    """``M[rows][:, cols]`` as float64 numpy / scipy CSR (exact: values only widen)."""
    S = as_matrix(M.detach())
    if rows is not None:
        S = S[rows] if sp.issparse(S) else S[rows, :]
    if cols is not None:
        S = S[:, cols]
    return S


def _hstack(parts: list[Matrix], sparse: bool) -> Matrix:
    if sparse:
        return sp.csr_array(sp.hstack([sp.csr_array(P) for P in parts], format="csr"))
    return np.hstack([P.toarray() if sp.issparse(P) else np.asarray(P) for P in parts])


def _tensor(M: Matrix, sparse: bool, dtype: torch.dtype, device: torch.device) -> Tensor:
    if sparse:
        return from_scipy_csr(sp.csr_array(M), dtype, device)
    dense = M.toarray() if sp.issparse(M) else np.ascontiguousarray(M)
    return torch.from_numpy(dense).to(dtype=dtype, device=device)


def _register(module: nn.Module, name: str, M: Tensor | None, requires_grad: bool = True) -> None:
    """A sparse matrix as a frozen CSR buffer, a dense one as a parameter (as
    :meth:`ImplicitModel.from_matrices` stores them)."""
    if M is None:
        module.register_parameter(name, None)
    elif is_sparse(M):
        module.register_buffer(name, store_sparse(M))
    else:
        module.register_parameter(name, nn.Parameter(M.clone(), requires_grad=requires_grad))


def _restrict(act: Activation, idx: tuple[int, ...], n: int) -> Activation:
    if len(idx) == n:
        return act
    return act.restrict(torch.as_tensor(idx, dtype=torch.long))


class _Level(nn.Module):
    """One explicit level: ``x = phi(A x_prev + B u + b)`` (batch-first)."""

    def __init__(self, A: Tensor, B: Tensor, b: Tensor | None, activation: Activation,
                 grads: dict[str, bool]) -> None:
        super().__init__()
        _register(self, "A", A, grads["A"])
        _register(self, "B", B, grads["B"])
        _register(self, "b", b, grads["b"])
        self.activation = activation

    @property
    def size(self) -> int:
        return self.B.shape[0]

    def forward(self, X: Tensor, U: Tensor) -> Tensor:
        Z = output_map(X, U, self.A, self.B, self.b)
        return self.activation(Z.t()).t()


# ---------------------------------------------------------------------------- the model


class StagedImplicitModel(nn.Module):
    """An :class:`~idlkit.ImplicitModel` with its explicit states taken out of the fixed point.

    Built by :meth:`from_implicit` (or ``prune_states(model)``, whose default ``split=True``
    returns one); the states are split by :func:`stage_partition` into explicit pre levels,
    an implicit :attr:`core` and explicit post levels (paper 000 §5.2 cases (c), (d),
    iterated; see the module docstring). ``model(u)``, :meth:`equilibrium` and the gradients
    are those of the original model; :meth:`to_implicit` rebuilds it.

    Attributes:
        in_features: ``p``, the input size.
        out_features: ``q``, the output size.
        hidden: ``n``, all states (explicit and implicit).
        staging: the :class:`Staging` (indices of the original's states).
        pre: ``nn.ModuleList`` of the explicit levels before the core, in computation order;
            level ``k`` holds ``A`` (its rows, columns: the states computed before it, in
            computation order), ``B``, ``b`` and its activation.
        post: ``nn.ModuleList`` of the explicit levels after the core, in the same form.
        core: the :class:`~idlkit.ImplicitModel` on the core states, input ``[u; x_pre]``
            (``B = [B_1, A_1,pre]``, ``C = C_1``, ``D = [D, C_pre]``, ``d``), with the
            original's well-posedness declaration, ``kappa`` and solver settings.
        C_post: ``C`` on the post states (``(q, n_post)``).
        activation: the original activation (on all ``n`` states, original order).

    Sparse matrices stay sparse (frozen CSR buffers); dense ones are parameters that keep
    the original's ``requires_grad``. A sparse ``A`` and a dense ``B`` make the core's ``B``
    dense (likewise ``C``, ``D`` for its ``D``).

    Args:
        model: the original :class:`~idlkit.ImplicitModel`.
        staging: its :class:`Staging` (from :func:`stage_partition`).

    Raises:
        ConfigurationError: ``model`` is not an :class:`~idlkit.ImplicitModel`.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> model = idl.convert.from_torch(net, torch.randn(1, 4))
        >>> staged = StagedImplicitModel.from_implicit(model)
        >>> staged.n_pre, staged.n_core, staged.n_post
        (8, 0, 0)
    """

    def __init__(self, model: ImplicitModel, staging: Staging) -> None:
        super().__init__()
        n, p = model.hidden, model.in_features
        self.in_features, self.out_features, self.hidden = p, model.out_features, n
        self.staging = staging
        self.activation = model.activation
        self._layouts = {k: is_sparse(getattr(model, k)) for k in ("A", "B", "C", "D")}
        self._bias = model.b is not None
        dtype, device = model.A.dtype, model.A.device
        grads = {k: bool(getattr(model, k) is not None and getattr(model, k).requires_grad)
                 for k in ("A", "B", "C", "D", "b", "d")}
        perm = np.asarray(staging.order, dtype=np.int64)
        self.register_buffer("_perm", torch.as_tensor(perm, dtype=torch.long, device=device),
                             persistent=False)
        inv = np.empty(n, dtype=np.int64)
        inv[perm] = np.arange(n)
        self.register_buffer("_inv", torch.as_tensor(inv, dtype=torch.long, device=device),
                             persistent=False)
        bias = None if model.b is None else model.b.detach()

        def level(idx: tuple[int, ...], prev: np.ndarray) -> _Level:
            rows = np.asarray(idx, dtype=np.int64)
            A = _tensor(_slice(model.A, rows, prev), self._layouts["A"], dtype, device)
            B = _tensor(_slice(model.B, rows, None), self._layouts["B"], dtype, device)
            return _Level(A, B, None if bias is None else bias[rows].clone(),
                          _restrict(model.activation, idx, n), grads)

        done: list[int] = []
        self.pre = nn.ModuleList()
        for idx in staging.pre:
            self.pre.append(level(idx, np.asarray(done, dtype=np.int64)))
            done += idx
        pre = np.asarray(done, dtype=np.int64)
        core = np.asarray(staging.core, dtype=np.int64)
        sA, sB, sC, sD = (self._layouts[k] for k in "ABCD")
        Bc = _hstack([_slice(model.B, core, None), _slice(model.A, core, pre)], sA and sB)
        Dc = _hstack([_slice(model.D, None, None), _slice(model.C, None, pre)], sC and sD)
        core_model = ImplicitModel.from_matrices(
            _tensor(_slice(model.A, core, core), sA, dtype, device),
            _tensor(Bc, sA and sB, dtype, device),
            _tensor(_slice(model.C, None, core), sC, dtype, device),
            _tensor(Dc, sC and sD, dtype, device),
            None if bias is None else bias[core].clone(),
            None if model.d is None else model.d.detach().clone(),
            activation=_restrict(model.activation, staging.core, n) if core.size else "identity",
            wellposedness=model.wellposedness, kappa=model.kappa, **model.settings.config())
        core_model.settings = model.settings
        for k in ("A", "C", "b", "d"):
            t = getattr(core_model, k)
            if isinstance(t, nn.Parameter):
                t.requires_grad_(grads[k])
        for k, (g1, g2) in (("B", (grads["B"], grads["A"])), ("D", (grads["D"], grads["C"]))):
            t = getattr(core_model, k)
            if isinstance(t, nn.Parameter):
                t.requires_grad_(g1 or g2)
        self.core = core_model
        done += list(staging.core)
        self.post = nn.ModuleList()
        for idx in staging.post:
            self.post.append(level(idx, np.asarray(done, dtype=np.int64)))
            done += idx
        post = np.asarray([i for lv in staging.post for i in lv], dtype=np.int64)
        _register(self, "C_post", _tensor(_slice(model.C, None, post), sC, dtype, device),
                  grads["C"])
        self.train(model.training)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_implicit(cls, model: ImplicitModel) -> StagedImplicitModel:
        """Split ``model`` by :func:`stage_partition`; same outputs, states and gradients.

        Args:
            model: the :class:`~idlkit.ImplicitModel` to split.

        Returns:
            The :class:`StagedImplicitModel`.

        Raises:
            ConfigurationError: ``model`` is not an :class:`~idlkit.ImplicitModel`.
        """
        if not isinstance(model, ImplicitModel):
            raise ConfigurationError(f"StagedImplicitModel.from_implicit needs an idlkit.ImplicitModel, "
                                     f"got {type(model).__name__}; convert a torch network with "
                                     f"idlkit.convert.from_torch first")
        return cls(model, stage_partition(model.A, model.activation))

    # ------------------------------------------------------------------ sizes

    @property
    def n_pre(self) -> int:
        return self.staging.n_pre

    @property
    def n_core(self) -> int:
        return self.staging.n_core

    @property
    def n_post(self) -> int:
        return self.staging.n_post

    @property
    def sizes(self) -> dict[str, int]:
        """``{"pre", "core", "post"}`` state counts and the level counts ``pre_levels``,
        ``post_levels``."""
        return {"pre": self.n_pre, "core": self.n_core, "post": self.n_post,
                "pre_levels": len(self.pre), "post_levels": len(self.post)}

    @property
    def wellposedness(self) -> str | None:
        return self.core.wellposedness

    @property
    def kappa(self) -> float:
        return self.core.kappa

    @property
    def dtype(self) -> torch.dtype:
        return self.core.A.dtype

    # ------------------------------------------------------------------ forward

    def _parts(self, U: Tensor, x0: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(y, X)`` with ``X`` in computation order, batch-first."""
        xs: list[Tensor] = []
        empty = U.new_zeros(U.shape[0], 0)
        for lv in self.pre:
            xs.append(lv(torch.cat(xs, dim=1) if xs else empty, U))
        Xpre = torch.cat(xs, dim=1) if xs else empty
        x0c = None
        if x0 is not None and self.n_core:
            x0 = x0.reshape(1, -1) if x0.dim() == 1 else x0
            x0c = x0[:, self._perm[self.n_pre:self.n_pre + self.n_core]]
        Uc = torch.cat([U, Xpre], dim=1) if self.n_pre else U
        Y, Xc = self.core.forward_with_state(Uc, x0c)
        xs.append(Xc)
        start = len(xs)
        for lv in self.post:
            xs.append(lv(torch.cat(xs, dim=1), U))
        if self.n_post:
            Xpost = torch.cat(xs[start:], dim=1)
            C = self.C_post
            Y = Y + ((C @ Xpost.t()).t() if is_sparse(C) else Xpost @ C.t())
        return Y, torch.cat(xs, dim=1)

    def _as_batch(self, u: Tensor) -> tuple[Tensor, bool]:
        return batch_input(u, self.in_features, self.dtype, self.core.A.device)

    def forward_with_state(self, u: Tensor, x0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(y, x)``: the prediction and the full state in the original order.

        ``x0`` (``(batch, n)``, original order) warm-starts the core's solve.

        Args:
            u: ``(batch, p)`` or ``(p,)`` inputs.
            x0: ``(batch, n)`` warm start in the original order, or ``None``.

        Returns:
            ``(y, x)``: ``(batch, q)`` predictions and ``(batch, n)`` states.
        """
        U, squeeze = self._as_batch(u)
        Y, X = self._parts(U, x0)
        X = X[:, self._inv]
        return (Y.squeeze(0), X.squeeze(0)) if squeeze else (Y, X)

    def forward(self, u: Tensor, x0: Tensor | None = None) -> Tensor:
        """Prediction ``y = C x + D u + d``, shape ``(batch, q)`` (``(q,)`` for a 1-D input).

        Args:
            u: ``(batch, p)`` or ``(p,)`` inputs.
            x0: ``(batch, n)`` warm start in the original order, or ``None``.

        Returns:
            ``(batch, q)`` predictions (``(q,)`` for a 1-D input).
        """
        U, squeeze = self._as_batch(u)
        Y = self._parts(U, x0)[0]
        return Y.squeeze(0) if squeeze else Y

    def equilibrium(self, u: Tensor, x0: Tensor | None = None) -> Tensor:
        """The state solving ``x = phi(A x + B u + b)`` in the *original* order, ``(batch, n)``.

        Args:
            u: ``(batch, p)`` or ``(p,)`` inputs.
            x0: ``(batch, n)`` warm start in the original order, or ``None``.

        Returns:
            ``(batch, n)`` states in the original order.
        """
        return self.forward_with_state(u, x0)[1]

    @property
    def last_solve(self) -> object:
        """The core's last forward :class:`~idlkit.solve.SolveInfo`."""
        return self.core.last_solve

    def certificate(self) -> object:
        """The core's :class:`~idlkit.wellposed.WellPosedness` (the explicit levels need none)."""
        return self.core.certificate()

    # ------------------------------------------------------------------ back to one model

    def matrices(self) -> dict[str, Matrix | np.ndarray | None]:
        """The original ``A, B, C, D`` (float64 numpy / scipy CSR, original order) and ``b, d``
        (float64 numpy or ``None``), reassembled from the parts."""
        n, p, q = self.hidden, self.in_features, self.out_features
        perm = self._perm.cpu().numpy()
        order = {"A": ([], [], []), "B": ([], [], []), "C": ([], [], [])}
        b = np.zeros(n)

        def put(name: str, M: Tensor | Matrix, rows: np.ndarray, cols: np.ndarray) -> None:
            S = sp.coo_array(as_matrix(M.detach()) if isinstance(M, Tensor) else M)
            order[name][0].append(rows[S.row])
            order[name][1].append(cols[S.col])
            order[name][2].append(S.data)

        ar_p = np.arange(p)

        def levels(mods: nn.ModuleList, pos: int) -> int:
            for lv in mods:
                rows = perm[pos:pos + lv.size]
                put("A", lv.A, rows, perm[:pos])
                put("B", lv.B, rows, ar_p)
                if lv.b is not None:
                    b[rows] = lv.b.detach().cpu().double().numpy()
                pos += lv.size
            return pos

        npre = levels(self.pre, 0)
        core_rows = perm[npre:npre + self.n_core]
        Bc = as_matrix(self.core.B.detach())
        put("A", self.core.A, core_rows, core_rows)
        put("B", Bc[:, :p], core_rows, ar_p)
        put("A", Bc[:, p:], core_rows, perm[:npre])
        if self.core.b is not None:
            b[core_rows] = self.core.b.detach().cpu().double().numpy()
        Dc = as_matrix(self.core.D.detach())
        ar_q = np.arange(q)
        put("C", self.core.C, ar_q, core_rows)
        put("C", Dc[:, p:], ar_q, perm[:npre])
        pos = levels(self.post, npre + self.n_core)
        put("C", self.C_post, ar_q, perm[pos - self.n_post:pos])
        shapes = {"A": (n, n), "B": (n, p), "C": (q, n)}
        out: dict[str, Matrix | np.ndarray | None] = {}
        for k, (r, c, v) in order.items():
            M = sp.csr_array(sp.coo_array((np.concatenate(v) if v else np.zeros(0),
                                           (np.concatenate(r) if r else np.zeros(0, int),
                                            np.concatenate(c) if c else np.zeros(0, int))),
                                          shape=shapes[k]))
            out[k] = M if self._layouts[k] else M.toarray()
        D = Dc[:, :p]
        out["D"] = sp.csr_array(D) if self._layouts["D"] else (D.toarray() if sp.issparse(D) else D)
        out["b"] = b if self._bias else None
        out["d"] = None if self.core.d is None else self.core.d.detach().cpu().double().numpy()
        return out

    def to_implicit(self) -> ImplicitModel:
        """The single equivalent :class:`~idlkit.ImplicitModel` (original state order,
        layouts, activation, declaration and solver settings), for the certificates and
        the robustness functions. Detached: a new model holding copies of the values."""
        mats = self.matrices()
        dtype, device = self.dtype, self.core.A.device
        T = {k: _tensor(mats[k], self._layouts[k], dtype, device) for k in "ABCD"}
        b, d = (None if mats[k] is None else torch.from_numpy(mats[k]).to(dtype=dtype, device=device)
                for k in ("b", "d"))
        model = ImplicitModel.from_matrices(T["A"], T["B"], T["C"], T["D"], b, d,
                                            activation=self.activation,
                                            wellposedness=self.core.wellposedness,
                                            kappa=self.core.kappa, **self.core.settings.config())
        model.settings = self.core.settings
        return model.train(self.training)

    def config(self) -> dict:
        """JSON-serialisable description (:mod:`idlkit.io` stores the rebuilt implicit model and
        re-stages it on load: the partition is a function of ``A``'s pattern)."""
        return {"staging": {"pre": [list(lv) for lv in self.staging.pre],
                            "core": list(self.staging.core),
                            "post": [list(lv) for lv in self.staging.post]}}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, hidden={self.hidden}, "
                f"out_features={self.out_features}, pre={self.n_pre} in {len(self.pre)} level(s), "
                f"core={self.n_core}, post={self.n_post} in {len(self.post)} level(s)")

