"""Level structure of a (block) triangular ``A`` and its cached solve plan (paper 000 Thm 2.8-2.9).

For a strictly (block) upper triangular ``A`` the equilibrium ``x = phi(A x + b)`` is one
back-substitution (Thm 2.8, blockwise Thm 2.9): block ``I`` depends on block ``J`` when
``A_IJ != 0``; grouping the blocks by the length of their longest dependency chain (the
*levels*) makes each level one matrix product ``x_I = phi_I(b_I + A_I. x)``.

:func:`block_levels` computes the levels of a pattern by frontier propagation (Kahn's
algorithm run in rounds: a block is ready in the round after its last dependency), fully
vectorised over a scipy CSR graph, with no per-row Python loop. :class:`TriangularPlan`
holds the levels and, for a sparse ``A``, the per-level row blocks of ``A`` (and, built on
the first adjoint solve, of ``A^T``) as int32 CSR tensors: contiguous levels (the usual
case for converted networks, whose states are stacked layer by layer, paper 002 §3) are
zero-copy views of ``A``. A :class:`PlanCache`, owned by the model that owns ``A``, keeps
the plan of its ``A`` tensor object, keyed on its storage, version and the activation blocks.
A dense ``A`` (trainable, e.g. under projected-gradient training) is re-validated on every
call in ``O(n^2)``: the plan is reused as long as the nonzero pattern of ``A`` is still
compatible with the cached levels (``A_ij != 0`` only where ``level(i) > level(j)``), so an
optimizer step that changes the pattern triggers a recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .._matrix import (
    block_pattern_graph,
    csr_int32,
    diagonal,
    entry_in,
    row_min_col,
    sparse_key,
    to_dense,
    transpose_csr,
)
from ..activations import Activation, ComponentwiseActivation
from ..errors import ConfigurationError, WellPosednessError
from .info import SolveInfo, finite_or_raise, row_inf_norm

__all__ = ["block_levels", "TriangularPlan", "PlanCache", "plan_for",
           "triangular_levels", "solve_levels", "solve_levels_adjoint",
           "levels_reference"]

def block_levels(A: Tensor, sizes: tuple[int, ...], allow_diagonal: bool,
                 G: sp.csr_array | None = None) -> np.ndarray:
    """Level of every block of an upper (block) triangular ``A`` (int64, length ``len(sizes)``).

    Raises :class:`ConfigurationError` on a nonzero below the block diagonal, or on the
    block diagonal (other than the diagonal itself when ``allow_diagonal``).

    Args:
        A: ``(n, n)`` upper (block) triangular matrix, dense or sparse.
        sizes: block sizes.
        allow_diagonal: accept a nonzero diagonal.
        G: the block pattern graph when already built, or ``None``.

    Returns:
        ``(len(sizes),)`` int64 array of levels.

    Raises:
        ConfigurationError: a nonzero below the block diagonal or, without ``allow_diagonal``,
            on it.

    Examples:
        >>> A = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
        >>> block_levels(A, (1, 1, 1), allow_diagonal=False).tolist()
        [2, 1, 0]
        >>> B = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        >>> block_levels(B, (1, 2), allow_diagonal=False).tolist()       # two blocks: {0}, {1, 2}
        [1, 0]
    """
    L = len(sizes)
    if G is None:
        G = block_pattern_graph(A, sizes)
    first = row_min_col(G)
    ar = np.arange(L)
    bad = np.flatnonzero(first < ar)
    if bad.size:
        I = int(bad[0])
        i, j = entry_in(A, sizes, I, int(first[I]))
        raise ConfigurationError(
            f"the triangular solver needs (block) upper-triangular A; A[{i}, {j}] "
            f"below the diagonal is nonzero. Use solver='anderson', or project A with "
            f"idlkit.wellposed.project_triangular")
    on_diag = np.flatnonzero(first == ar)
    if on_diag.size:
        # a nonzero diagonal is admissible for scalar blocks only (Remark 2.5); in a larger
        # block G_II != 0 may hide an off-diagonal entry of A_II
        if not (allow_diagonal and L == A.shape[0]):
            I = int(on_diag[0])
            i, j = entry_in(A, sizes, I, I)
            raise ConfigurationError(
                f"the triangular solver needs a zero diagonal (block) for this activation; "
                f"A[{i}, {j}] is nonzero. Only ReLU/LeakyReLU/identity admit a "
                f"nonzero diagonal (Remark 2.5).")
        G = sp.triu(G, k=1, format="csr")
    return _kahn_levels(G)


def _kahn_levels(G: sp.csr_array) -> np.ndarray:
    """Longest-path levels of the DAG ``G`` (``G_IJ != 0``: ``I`` depends on ``J``) by frontier
    propagation: round ``k`` finalises the blocks whose dependencies all have levels ``< k``."""
    L = G.shape[0]
    level = np.zeros(L, dtype=np.int64)
    if L == 0 or G.nnz == 0:
        return level
    remaining = np.diff(G.indptr).astype(np.int64)  # dependencies left, with multiplicity
    T = G.T.tocsr()  # row J lists the blocks depending on J
    tptr, tind = T.indptr.astype(np.int64), T.indices
    frontier = np.flatnonzero(remaining == 0)
    done, lvl = 0, 0
    while frontier.size:
        level[frontier] = lvl
        done += frontier.size
        starts = tptr[frontier]
        cnt = tptr[frontier + 1] - starts
        total = int(cnt.sum())
        if total == 0:
            break
        pos = np.repeat(starts - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)
        src = tind[pos]
        if total * 8 >= L:
            dec = np.bincount(src, minlength=L)
            remaining -= dec
            frontier = np.flatnonzero((remaining == 0) & (dec > 0))
        else:
            u, k = np.unique(src, return_counts=True)
            remaining[u] -= k
            frontier = u[remaining[u] == 0]
        lvl += 1
    if done < L:  # unreachable after the triangularity check; kept as a guard
        raise ConfigurationError("the dependency graph of A has a cycle: A is not (block) triangular")
    return level


def levels_reference(A: Tensor, sizes: tuple[int, ...]) -> np.ndarray:
    """Block levels by the plain per-block recursion (reference for tests; dense ``A``).

    Args:
        A: dense ``(n, n)`` matrix.
        sizes: block sizes.

    Returns:
        ``(len(sizes),)`` int64 array of levels.

    Examples:
        >>> A = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
        >>> levels_reference(A, (1, 1, 1)).tolist() == block_levels(A, (1, 1, 1), False).tolist()
        True
    """
    M = to_dense(A).detach().cpu().numpy()
    offs = np.concatenate(([0], np.cumsum(sizes)))
    L = len(sizes)
    level = np.zeros(L, dtype=np.int64)
    for I in range(L - 1, -1, -1):
        deps = [J for J in range(I + 1, L) if M[offs[I]:offs[I + 1], offs[J]:offs[J + 1]].any()]
        level[I] = 1 + max(level[deps]) if deps else 0
    return level


def level_sets(level: np.ndarray, sizes: tuple[int, ...], device: torch.device) -> list[Tensor]:
    """State indices of each level (blocks kept whole), in increasing level order."""
    if level.size == 0:
        return []
    state_level = np.repeat(level, sizes)
    order = np.argsort(state_level, kind="stable")
    bounds = np.cumsum(np.bincount(state_level))[:-1]
    return [torch.as_tensor(idx, dtype=torch.long, device=device) for idx in np.split(order, bounds)]


def _contiguous(idx: Tensor) -> slice | None:
    k = idx.numel()
    if k == 0:
        return slice(0, 0)
    s, e = int(idx[0]), int(idx[-1]) + 1
    if e - s == k and (k == 1 or bool((idx[1:] - idx[:-1] == 1).all())):
        return slice(s, e)
    return None


def _csr_rows(S: Tensor, idx: Tensor, sl: slice | None) -> Tensor:
    """Rows ``idx`` of a CSR tensor as a CSR tensor: a zero-copy view of the column indices
    and values for a contiguous range ``sl``, a gathered copy otherwise."""
    crow, col, val = S.crow_indices(), S.col_indices(), S.values()
    if sl is not None:
        c = crow[sl.start:sl.stop + 1]
        s, e = int(c[0]), int(c[-1])
        return torch.sparse_csr_tensor(c - c[0], col[s:e], val[s:e], (sl.stop - sl.start, S.shape[1]),
                                       check_invariants=False)
    starts = crow[idx].long()
    cnt = crow[idx + 1].long() - starts
    new_crow = torch.zeros(idx.numel() + 1, dtype=torch.long, device=crow.device)
    torch.cumsum(cnt, 0, out=new_crow[1:])
    total = int(new_crow[-1])
    gather = (torch.repeat_interleave(starts - new_crow[:-1], cnt)
              + torch.arange(total, dtype=torch.long, device=crow.device))
    return torch.sparse_csr_tensor(new_crow.to(crow.dtype), col[gather], val[gather],
                                   (idx.numel(), S.shape[1]), check_invariants=False)


@dataclass(eq=False)
class TriangularPlan:
    """Cached solve plan of one triangular ``A`` (paper 000 Thm 2.8-2.9).

    Attributes:
        sparse: ``A`` is sparse.
        key: what the plan was built for (layout, dtype, device, shape, storages and
            versions of a sparse ``A``; block sizes; whether a diagonal is allowed).
        levels: state indices of each level, in solve order.
        slices: per level, the contiguous range of its states (``None`` when scattered).
        homog: the closed form of Remark 2.5 applies (diagonal allowed).
        diag: ``diag(A)`` (homogeneous maps only).
        rows: sparse ``A``: per-level CSR row blocks ``A[level]``.
        rows_t: sparse ``A``: per-level CSR row blocks of ``A^T`` (built on first use).
        forbidden: dense ``A``: mask of the entries the levels require to be zero.

    Examples:
        >>> A = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
        >>> plan = plan_for(A, idlkit.get_activation("relu"))
        >>> [lv.tolist() for lv in plan.levels], plan.sparse
        ([[1], [0]], False)
    """

    key: tuple
    levels: list[Tensor]
    slices: list[slice | None]
    homog: bool
    sparse: bool
    diag: Tensor | None = None
    rows: list[Tensor] | None = None
    rows_t: list[Tensor] | None = None
    forbidden: Tensor | None = None
    _At: Tensor | None = field(default=None, repr=False)
    _acts: tuple | None = field(default=None, repr=False)

    def level_activations(self, act: Activation) -> list[Activation]:
        """``act`` restricted to each level's states (:meth:`Activation.restrict`), cached for the
        last activation object seen: a block map (a converted LSTM's products, pooling) is then
        applied to one level's rows only, never to the whole state.

        Args:
            act: the model's activation.

        Returns:
            One restricted activation per level.
        """
        cached = self._acts
        if cached is None or cached[0] is not act:
            cached = self._acts = (act, [act.restrict(idx) for idx in self.levels])
        return cached[1]

    def row_block(self, A: Tensor, k: int) -> Tensor:
        """Rows of level ``k`` of ``A``.

        Args:
            A: the ``(n, n)`` matrix the plan is for.
            k: the level.

        Returns:
            The rows of level ``k`` (CSR for a sparse ``A``).
        """
        if self.rows is not None:
            return self.rows[k]
        sl = self.slices[k]
        return A[sl] if sl is not None else A[self.levels[k]]

    def row_block_t(self, A: Tensor, k: int) -> Tensor:
        """Rows of level ``k`` of ``A^T``.

        Args:
            A: the ``(n, n)`` matrix the plan is for.
            k: the level.

        Returns:
            The rows of level ``k`` of ``A^T`` (CSR for a sparse ``A``).
        """
        if self.sparse:
            if self.rows_t is None:
                At = transpose_csr(csr_int32(A))
                self.rows_t = [_csr_rows(At, idx, sl)
                               for idx, sl in zip(self.levels, self.slices, strict=True)]
            return self.rows_t[k]
        sl = self.slices[k]
        return A[:, sl].t() if sl is not None else A[:, self.levels[k]].t()

    def compatible(self, A: Tensor) -> bool:
        """Dense ``A``: its nonzero pattern still fits the levels (``O(n^2)``).

        Args:
            A: a dense ``(n, n)`` matrix.

        Returns:
            ``True`` when the plan still applies.
        """
        assert self.forbidden is not None
        return not bool((A.ne(0) & self.forbidden).any())


def _is_homog(act: Activation) -> bool:
    base = getattr(act, "base", act)
    return bool(isinstance(base, ComponentwiseActivation) and base.positively_homogeneous
                and base.slope_min >= 0)


def build_plan(A: Tensor, act: Activation, key: tuple) -> TriangularPlan:
    """Levels (and per-level row blocks for a sparse ``A``) of a triangular ``A``."""
    homog = _is_homog(act)
    sizes = act.blocks(A.shape[0]).sizes
    level = block_levels(A, sizes, allow_diagonal=homog)
    levels = level_sets(level, sizes, A.device)
    slices = [_contiguous(idx) for idx in levels]
    sparse = A.layout != torch.strided
    plan = TriangularPlan(key=key, levels=levels, slices=slices, homog=homog, sparse=sparse)
    if sparse:
        S = csr_int32(A)
        plan.rows = [_csr_rows(S, idx, sl) for idx, sl in zip(levels, slices, strict=True)]
    else:
        lv = torch.as_tensor(np.repeat(level, sizes), device=A.device)
        forbidden = lv[:, None] <= lv[None, :]
        if homog:
            forbidden.fill_diagonal_(False)
        plan.forbidden = forbidden
    if homog:
        plan.diag = diagonal(A).clone()
    return plan


class PlanCache:
    """The cached :class:`TriangularPlan` of one ``A``, owned by the object that owns ``A``
    (an :class:`~idlkit.ImplicitModel` keeps one; there is no module-level state).

    It keeps the last plan it built and its key (storage, shape, dtype, and for a sparse
    ``A`` the versions of its index and value storages, which a detached view shares);
    :meth:`get` rebuilds the plan when the key changes or a dense ``A``'s pattern no
    longer fits the levels.

    Examples:
        >>> A = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
        >>> cache = PlanCache()
        >>> b = torch.ones(2, 3, dtype=torch.float64)
        >>> X, Z, info = solve_levels(A, b, idlkit.get_activation("relu"), 1e-9, cache)
        >>> X[:, 0].tolist(), info.method
        ([2.0, 1.0], 'triangular')
    """

    def __init__(self) -> None:
        self._plan: TriangularPlan | None = None

    def clear(self) -> None:
        """Forget the plan."""
        self._plan = None

    def get(self, A: Tensor, act: Activation) -> TriangularPlan:
        """The plan of ``A`` (built when missing or stale).

        Sparse ``A``: reused while its storages and versions are unchanged. Dense ``A``:
        reused while its storage is the same and its pattern fits the levels (checked on
        every call, ``O(n^2)``); the diagonal of a homogeneous map is re-read each call.

        Args:
            A: ``(n, n)`` triangular state matrix.
            act: the activation (its blocks and homogeneity).

        Returns:
            The :class:`TriangularPlan`.

        Raises:
            ConfigurationError: ``A`` is not (block) upper triangular.
        """
        homog = _is_homog(act)
        sizes = act.blocks(A.shape[0]).sizes
        key = _plan_key(A)
        if key is None:  # not cacheable
            return build_plan(A.detach(), act, ())
        key = key + (sizes, homog)
        plan = self._plan
        if plan is not None and plan.key == key:
            if not plan.sparse:
                Ad = A.detach()
                if not plan.compatible(Ad):
                    plan = self._plan = build_plan(Ad, act, key)
                elif homog:
                    plan.diag = torch.diagonal(Ad).clone()
            return plan
        plan = self._plan = build_plan(A.detach(), act, key)
        return plan


def _plan_key(A: Tensor) -> tuple | None:
    """What a plan is valid for (``None``: a COO/CSC ``A`` has no stable storage identity
    here, so its plan is not cached)."""
    if A.layout != torch.strided:
        return sparse_key(A) if A.layout == torch.sparse_csr else None
    return (A.layout, A.dtype, A.device, tuple(A.shape), A.data_ptr())


def plan_for(A: Tensor, act: Activation, cache: PlanCache | None = None) -> TriangularPlan:
    """The :class:`TriangularPlan` of ``A``: from ``cache`` when given (built there when
    missing or stale), else built afresh.

    Args:
        A: ``(n, n)`` triangular state matrix.
        act: the activation.
        cache: a :class:`PlanCache`, or ``None``.

    Returns:
        The :class:`TriangularPlan`.

    Raises:
        ConfigurationError: ``A`` is not (block) upper triangular.

    Examples:
        >>> A = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
        >>> plan = plan_for(A, idlkit.get_activation("relu"))
        >>> isinstance(plan, TriangularPlan), len(plan.levels)
        (True, 2)
    """
    if cache is None:
        return build_plan(A.detach(), act, _plan_key(A) or ())
    return cache.get(A, act)


def triangular_levels(A: Tensor, sizes: tuple[int, ...] | None = None,
                      allow_diagonal: bool = False) -> list[Tensor]:
    """Level sets of the dependency graph of an upper (block) triangular ``A`` (Thm 2.8/2.9).

    Block ``I`` depends on block ``J`` when ``A_IJ != 0`` and ``J != I``; its level is
    ``1 + max level(J)`` (0 without dependencies). Blocks of one level are
    independent given the lower levels, so ``triangular`` solves them with one
    matrix product. Computed by vectorised frontier propagation over the (sparse)
    pattern, with no per-row Python loop (:func:`idlkit._triangular.block_levels`).
    Raises :class:`ConfigurationError` when ``A`` has a nonzero entry below the (block)
    diagonal, or a nonzero diagonal (block) when ``allow_diagonal`` is false.

    Args:
        A: ``(n, n)`` upper (block) triangular matrix, dense or sparse.
        sizes: block sizes of the activation (``None``: single entries).
        allow_diagonal: accept a nonzero diagonal (the homogeneous case of Remark 2.5).

    Returns:
        Per level, the int64 tensor of its state indices, in solve order.

    Raises:
        ConfigurationError: a nonzero below the (block) diagonal, or on it without
            ``allow_diagonal``.

    Examples:
        >>> A = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
        >>> [lv.tolist() for lv in triangular_levels(A)]
        [[2], [1], [0]]
    """
    n = A.shape[0]
    if sizes is None:
        sizes = (1,) * n
    level = block_levels(A.detach(), tuple(sizes), allow_diagonal)
    return level_sets(level, tuple(sizes), A.device)


def _homog_diag_check(diag: Tensor, base: ComponentwiseActivation) -> None:
    bad = diag * base.slope_max >= 1
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise WellPosednessError(
            f"upper-triangular A with {base.name} is well-posed iff diag(A) < 1 (Remark 2.5, "
            f"Thm 2.8); A[{i}, {i}] = {float(diag[i]):.6g}. Fix: project the diagonal below 1.")


def solve_levels(A: Tensor, b: Tensor, act: Activation, tol: float,
                 cache: PlanCache | None = None) -> tuple[Tensor, Tensor, SolveInfo]:
    """Back-substitution by levels (Thm 2.8/2.9): ``x_I = phi_I(b_I + A_I. x)``, one product
    per level with the plan of ``A`` (from ``cache`` when given, see :class:`PlanCache`);
    ``Z`` is assembled level by level (no extra product). Column convention ``(n, m)``.

    Args:
        A: ``(n, n)`` triangular state matrix.
        b: ``(n, m)`` term ``B U^T + b``.
        act: the activation.
        tol: the tolerance reported in :class:`SolveInfo` (the solve is exact).
        cache: a :class:`PlanCache`, or ``None``.

    Returns:
        ``(X, Z, info)``: ``(n, m)`` states and pre-activations and a :class:`SolveInfo`.

    Raises:
        ConfigurationError: ``A`` is not (block) upper triangular.

    Examples:
        >>> A = torch.tensor([[0.0, -2.0], [0.0, 0.0]], dtype=torch.float64)
        >>> b = torch.tensor([[1.0, 5.0], [1.0, 2.0]], dtype=torch.float64)    # (n, m) = (2, 2)
        >>> X, Z, info = solve_levels(A, b, idlkit.get_activation("relu"), 1e-12)
        >>> X.tolist(), info.iterations                          # x_2 = relu(b_2), then x_1
        ([[0.0, 1.0], [1.0, 2.0]], 2)
    """
    plan = plan_for(A, act, cache)
    X = torch.zeros_like(b)
    Z = torch.empty_like(b)
    base = getattr(act, "base", act)
    acts = None if act.componentwise else plan.level_activations(act)
    diag = plan.diag
    if plan.homog:
        assert diag is not None
        _homog_diag_check(diag, base)
    for k, idx in enumerate(plan.levels):
        sl = plan.slices[k]
        sel = sl if sl is not None else idx
        C = plan.row_block(A, k) @ X
        C += b[sel]
        if plan.homog:
            # closed form of Remark 2.5: x_i = phi(c_i) / (1 - A_ii phi'(c_i))
            d = diag[sel][:, None]
            Xk = act(C) / (1 - d * act.derivative(C))
            X[sel] = Xk
            Z[sel] = C + d * Xk
        else:
            X[sel] = act(C) if acts is None else acts[k](C)
            Z[sel] = C
    r = row_inf_norm(act(Z).t() - X.t())
    finite_or_raise(r, "triangular", len(plan.levels))
    iters = torch.full((X.shape[1],), len(plan.levels), dtype=torch.long, device=X.device)
    resid = float(r.max()) if r.numel() else 0.0
    # exact up to rounding: converged by construction
    return X, Z, SolveInfo("triangular", len(plan.levels), resid, True, iters, r, tol)


def solve_levels_adjoint(A: Tensor, Z: Tensor, G: Tensor, act: Activation,
                         cache: PlanCache | None = None) -> Tensor:
    """Solve ``V = J(Z)^T (A^T V + G)`` for triangular A by levels in reverse order, with the
    cached per-level row blocks of ``A^T`` (built on the first adjoint solve).

    Args:
        A: ``(n, n)`` triangular state matrix.
        Z: ``(n, m)`` forward pre-activations.
        G: ``(n, m)`` incoming gradient.
        act: the activation.
        cache: a :class:`PlanCache`, or ``None``.

    Returns:
        ``(n, m)`` adjoint solution ``V``.

    Examples:
        >>> A = torch.tensor([[0.0, 0.5], [0.0, 0.0]], dtype=torch.float64)
        >>> Z = torch.ones(2, 3, dtype=torch.float64); G = torch.ones(2, 3, dtype=torch.float64)
        >>> V = solve_levels_adjoint(A, Z, G, idlkit.get_activation("relu"))
        >>> torch.allclose(V, torch.linalg.solve(torch.eye(2, dtype=torch.float64) - A.T, G))
        True
    """
    plan = plan_for(A, act, cache)
    V = torch.zeros_like(G)
    diag = plan.diag
    acts = None if act.componentwise else plan.level_activations(act)
    for k in range(len(plan.levels) - 1, -1, -1):
        idx, sl = plan.levels[k], plan.slices[k]
        sel = sl if sl is not None else idx
        C = plan.row_block_t(A, k) @ V
        C += G[sel]
        if plan.homog:
            assert diag is not None
            d = act.derivative(Z[sel])
            V[sel] = d * C / (1 - diag[sel][:, None] * d)
        else:
            V[sel] = (act if acts is None else acts[k]).vjp(Z[sel], C)
    return V

