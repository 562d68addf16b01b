"""Dense/sparse matrix plumbing shared by the rooms of idlkit: one home for each conversion.

Model matrices come as dense torch tensors (trainable), torch sparse tensors (frozen int32
CSR buffers of converted or SIM-fitted models, see DESIGN.md "Conventions"), scipy sparse
arrays or numpy arrays. The helpers here convert between them without densifying a sparse
matrix, and compute the block dependency pattern that the triangular solver (paper 000
Thm 2.8-2.9) and the triangular well-posedness criterion share.

Every function is small and pure: it never modifies its input. Where a result shares
memory with the input (a scipy view of a torch CSR tensor's index arrays), the docstring
says so; treat such results as read-only.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .errors import ShapeError

__all__ = [
    "is_sparse",
    "to_dense",
    "as_dense_array",
    "as_matrix",
    "from_scipy_csr",
    "nonzero_indices",
    "csr_int32",
    "sparse_key",
    "sorted_csr",
    "store_sparse",
    "block_pattern_graph",
    "row_min_col",
    "entry_in",
    "transpose_csr",
    "diagonal",
]

INT32_MAX = 2**31 - 1

Matrix = np.ndarray | sp.csr_array


def is_sparse(M: object) -> bool:
    """Whether ``M`` is a sparse matrix: a torch sparse tensor (COO, CSR, CSC, ...) or a scipy
    sparse array/matrix. ``None``, dense tensors and numpy arrays are not.

    Examples:
        >>> is_sparse(torch.eye(2).to_sparse_csr()), is_sparse(torch.eye(2)), is_sparse(None)
        (True, False, False)
    """
    if isinstance(M, Tensor):
        return M.layout != torch.strided
    return sp.issparse(M)


def count_nonzero(t: Tensor | None) -> int:
    """Nonzero entries of a dense or sparse tensor (the stored values of a sparse one that are
    nonzero); ``0`` for ``None`` (a missing bias).

    Examples:
        >>> count_nonzero(torch.tensor([[0.0, 2.0], [0.0, -1.0]])), count_nonzero(None)
        (2, 0)
        >>> count_nonzero(torch.tensor([[0.0, 2.0], [0.0, -1.0]]).to_sparse_csr())
        2
    """
    if t is None:
        return 0
    if is_sparse(t):
        return int(torch.count_nonzero(t.values()))
    return int(torch.count_nonzero(t.detach()))


def to_dense(M: Tensor) -> Tensor:
    """``M`` as a strided torch tensor, same dtype and device: a dense ``M`` is returned as is
    (no copy), a sparse one is densified (``M.to_dense()``). For small matrices and
    reference computations only: model code keeps sparse matrices sparse.
    """
    return M.to_dense() if M.layout != torch.strided else M


def _np(t: Tensor) -> np.ndarray:
    """A detached CPU numpy view (a copy for a non-CPU tensor)."""
    return t.detach().cpu().numpy()


def _numpy_dtype(dtype: np.dtype | type | None) -> np.dtype | None:
    return None if dtype is None else np.dtype(dtype)


def _cpu_numpy(A: Tensor, dtype: np.dtype | type | None) -> np.ndarray:
    """A dense torch tensor as a numpy array on the CPU: a copy cast to ``dtype`` (in torch,
    so that dtypes numpy lacks such as bfloat16 convert too), or a view when ``dtype`` is
    None and ``A`` lives on the CPU."""
    A = A.detach()
    if dtype is None:
        return A.cpu().numpy()
    tdt = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
    return A.to("cpu", tdt, copy=True).numpy()


def as_dense_array(A: Tensor | np.ndarray | sp.sparray, dtype: np.dtype | type | None = np.float64
                   ) -> np.ndarray:
    """A dense numpy array (``dtype``, float64 by default; ``None`` keeps the input's) of a dense
    or sparse torch tensor, scipy sparse matrix or array-like, on the CPU. Densifies: for
    small matrices, references and dense-only algorithms. A copy, except for a numpy array
    already of ``dtype``, returned as is (``np.asarray``).

    Examples:
        >>> as_dense_array(torch.eye(2, dtype=torch.float32).to_sparse_csr()).dtype
        dtype('float64')
    """
    if isinstance(A, Tensor):
        D = to_dense(A.detach())
        return _cpu_numpy(D, dtype) if dtype is not None else D.cpu().numpy().copy()
    if sp.issparse(A):
        return A.toarray() if dtype is None else A.toarray().astype(dtype, copy=False)
    return np.asarray(A, dtype=_numpy_dtype(dtype))


def _csr_parts(A: Tensor | sp.sparray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr, indices, data)`` of a sparse ``A`` (torch or scipy) in canonical CSR form:
    column indices strictly increasing in every row (sorted, duplicates summed). A canonical
    torch CSR tensor on the CPU, or a canonical scipy CSR, is read without a copy (the arrays
    share its memory); anything else is converted once."""
    if isinstance(A, Tensor):
        T = A.detach()
        if T.layout == torch.sparse_csr:
            T = T.cpu()
            crow, col = _np(T.crow_indices()), _np(T.col_indices())
            if sorted_csr(crow, col):
                return crow, col, _np(T.values())
        coo = _coalesced_coo(T).cpu()
        i, j = _np(coo.indices())
        M = sp.csr_array((_np(coo.values()), (i, j)), shape=tuple(A.shape))
        return M.indptr, M.indices, M.data
    M = sp.csr_array(A)
    if not M.has_canonical_format:  # unsorted or duplicates: fix on private copies
        M = M.copy()
        M.sum_duplicates()
    return M.indptr, M.indices, M.data


def as_matrix(A: object, dtype: np.dtype | type | None = np.float64) -> Matrix:
    """A CPU matrix for numpy/scipy algorithms: a ``scipy.sparse.csr_array`` in canonical form
    for sparse input (torch sparse of any layout, or scipy sparse), else a dense numpy array.
    Values are cast to ``dtype`` (float64 by default, ``None`` keeps the input's). Sparse
    input is never densified.

    A canonical torch CSR tensor is read directly: its index arrays are shared (treat the
    result as read-only), its values cast (a copy unless ``dtype`` is theirs); no COO round
    trip. Shapes are kept: ``(rows, cols)`` in, ``(rows, cols)`` out.

    Examples:
        >>> as_matrix(torch.eye(3).to_sparse_csr()).format, as_matrix(torch.eye(3)).dtype
        ('csr', dtype('float64'))
    """
    if is_sparse(A):
        indptr, indices, data = _csr_parts(A)  # type: ignore[arg-type]
        if dtype is not None:
            data = data.astype(dtype, copy=False)
        return sp.csr_array((data, indices, indptr), shape=tuple(A.shape))  # type: ignore[attr-defined]
    if isinstance(A, Tensor):
        return _cpu_numpy(A, dtype)
    return np.asarray(A, dtype=_numpy_dtype(dtype))


def from_scipy_csr(S: sp.sparray, dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
    """A scipy sparse matrix as a torch CSR tensor of ``dtype`` on ``device`` (int64 indices,
    duplicates summed, column indices sorted)."""
    S = sp.csr_array(S, copy=True)
    S.sum_duplicates()
    return torch.sparse_csr_tensor(torch.from_numpy(S.indptr.astype(np.int64)),
                                   torch.from_numpy(S.indices.astype(np.int64)),
                                   torch.from_numpy(S.data).to(dtype), S.shape,
                                   check_invariants=False).to(device)


def _pattern(A: object) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Nonzero pattern of a dense or sparse matrix: ``(rows, cols, indptr)`` with ``rows`` None
    when ``indptr`` (CSR row pointers of the canonical CSR form) gives them, and ``indptr``
    None after explicit zeros were dropped. Explicit zeros of a sparse input are dropped."""
    if not is_sparse(A):
        rows, cols = np.nonzero(A.detach().cpu().numpy() if isinstance(A, Tensor) else np.asarray(A))
        return rows, cols, None
    indptr, cols, vals = _csr_parts(A)  # type: ignore[arg-type]
    if vals.size and not vals.all():
        keep = vals != 0
        rows = np.repeat(np.arange(len(indptr) - 1, dtype=cols.dtype), np.diff(indptr))[keep]
        return rows, cols[keep], None
    return None, cols, indptr


def nonzero_indices(A: object) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices ``(rows, cols)`` of the nonzeros of a dense or sparse matrix, in
    row-major order (explicit zeros of a sparse matrix dropped; never densified)."""
    rows, cols, indptr = _pattern(A)
    if rows is None:
        assert indptr is not None
        rows = np.repeat(np.arange(len(indptr) - 1, dtype=cols.dtype), np.diff(indptr))
    return rows, cols


def sparse_key(A: Tensor) -> tuple:
    """Identity of a torch sparse CSR tensor's contents: storages, sizes and versions.

    Equal keys mean the same index and value storages, unmodified in place since (the key
    of a cache entry built for ``A``).
    """
    crow, col, val = A.crow_indices(), A.col_indices(), A.values()
    return (A.layout, A.dtype, A.device, tuple(A.shape), int(val.numel()),
            crow.data_ptr(), col.data_ptr(), val.data_ptr(),
            crow._version, col._version, val._version)


def csr_int32(A: Tensor) -> Tensor:
    """``A`` (a torch sparse tensor) as a torch CSR tensor with int32 indices when they fit
    (torch's CPU sparse-dense product is ~3x faster with int32 indices).

    A non-CSR input is coalesced and sorted on the way; a CSR input is taken as it is
    (see :func:`store_sparse` for the checked version). Same shape, dtype and device; the
    values are shared. An int32 CSR input, or one too large for int32, is returned as is.
    """
    if A.layout != torch.sparse_csr:
        A = A.to_sparse_coo().coalesce().to_sparse_csr()
    if A.crow_indices().dtype == torch.int32 or max(A.shape + (A._nnz(),)) > INT32_MAX:
        return A
    return torch.sparse_csr_tensor(A.crow_indices().to(torch.int32), A.col_indices().to(torch.int32),
                                   A.values(), tuple(A.shape), check_invariants=False)


def sorted_csr(crow: np.ndarray, col: np.ndarray, chunk: int = 1 << 22) -> bool:
    """Whether the column indices ``col`` of the CSR row pointers ``crow`` are strictly
    increasing within every row (sorted, no duplicates): the canonical CSR form. Checked in
    chunks of ``chunk`` nonzeros, so the temporaries stay bounded (``O(chunk)`` memory)."""
    nnz = col.size
    rows = np.searchsorted(crow, np.arange(0, nnz, chunk), side="right") - 1 if nnz else []
    for s0, r in zip(range(0, nnz, chunk), rows, strict=True):
        e0 = min(s0 + chunk + 1, nnz)
        c = col[s0:e0]
        ok = np.diff(c) > 0
        # positions where a new row starts inside this chunk are exempt
        lo, hi = int(r), int(np.searchsorted(crow, e0, side="left"))
        starts = crow[lo + 1:hi + 1]
        starts = starts[(starts > s0) & (starts < e0)] - s0 - 1
        ok[starts] = True
        if not bool(ok.all()):
            return False
    return True


def _coalesced_coo(M: Tensor) -> Tensor:
    """A torch sparse matrix as a coalesced COO tensor (duplicates summed, row-major order).

    torch's CSR -> COO conversion flags its result as coalesced even when the CSR tensor has
    unsorted or duplicate column indices, which makes ``.coalesce()`` a no-op; the COO tensor
    is therefore rebuilt from the CSR indices, unflagged, before coalescing."""
    if M.layout == torch.sparse_csr:
        crow = M.crow_indices()
        rows = torch.repeat_interleave(torch.arange(M.shape[0], device=M.device), crow[1:] - crow[:-1])
        idx = torch.stack((rows, M.col_indices().to(rows.dtype)))
        return torch.sparse_coo_tensor(idx, M.values(), tuple(M.shape)).coalesce()
    return M.to_sparse_coo().coalesce()


def store_sparse(M: Tensor) -> Tensor:
    """A torch sparse matrix as a canonical CSR tensor (sorted, duplicate-free column indices)
    with int32 indices when they fit: the form model buffers are stored in. A CSR input that
    is already canonical is taken as is (no COO round trip: memory stays ~8 bytes per
    nonzero); anything else is coalesced (duplicates summed)."""
    if M.layout == torch.sparse_csr and sorted_csr(M.crow_indices().cpu().numpy(),
                                                   M.col_indices().cpu().numpy()):
        return csr_int32(M)
    return csr_int32(_coalesced_coo(M).to_sparse_csr())


def block_pattern_graph(A: object, sizes: tuple[int, ...] | None = None) -> sp.csr_array:
    """Block dependency graph of a square ``A`` for the block partition ``sizes``.

    ``G`` is ``L x L`` (``L = len(sizes)``; ``sizes=None`` means scalar blocks, ``L = n``)
    with ``G_IJ != 0`` iff block ``A_IJ`` holds a nonzero entry, i.e. the states of block
    ``I`` depend on those of block ``J`` (paper 000 Thm 2.8-2.9). Dense or sparse input
    (torch, scipy, numpy); explicit zeros of a sparse ``A`` are dropped and ``A`` is never
    densified. ``G`` holds int8 ones in canonical CSR form, except for scalar blocks of a
    canonical CSR ``A`` without explicit zeros, whose index arrays ``G`` shares (read-only).

    Raises:
        ShapeError: ``A`` is not square, or ``sizes`` does not cover its ``n`` states.

    Examples:
        >>> block_pattern_graph(torch.tensor([[0., 1., 2.], [0., 0., 3.], [0., 0., 0.]]), (1, 2)).toarray()
        array([[0, 1],
               [0, 1]], dtype=int8)
    """
    shape = tuple(A.shape)  # type: ignore[attr-defined]
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ShapeError(f"A must be a square (n, n) matrix, got shape {shape}")
    n = shape[0]
    sizes = (1,) * n if sizes is None else tuple(int(s) for s in sizes)
    if sum(sizes) != n or any(s < 1 for s in sizes):
        raise ShapeError(f"partition {sizes} does not cover a state of size {n}")
    L = len(sizes)
    rows, cols, indptr = _pattern(A)
    if L == n and indptr is not None:
        return sp.csr_array((np.ones(cols.size, np.int8), cols, indptr), shape=(n, n))
    if rows is None:
        assert indptr is not None
        rows = np.repeat(np.arange(n, dtype=cols.dtype), np.diff(indptr))
    if L != n:
        blk = np.repeat(np.arange(L, dtype=np.int64), sizes)
        rows, cols = blk[rows], blk[cols]
    G = sp.coo_array((np.ones(rows.size, np.int8), (rows, cols)), shape=(L, L)).tocsr()
    G.sum_duplicates()
    G.data.fill(1)  # duplicates summed in int8 may wrap: the pattern is what counts
    return G


def row_min_col(G: sp.csr_array) -> np.ndarray:
    """Smallest column index of each row of a CSR pattern ``G`` (``(L,)`` int64; ``L`` =
    ``G.shape[0]`` for an empty row). Reads the structure only, not the values."""
    L = G.shape[0]
    out = np.full(L, L, dtype=np.int64)
    nz = np.flatnonzero(np.diff(G.indptr))
    if nz.size:
        out[nz] = np.minimum.reduceat(G.indices, G.indptr[nz])
    return out


def entry_in(A: Tensor, sizes: tuple[int, ...], I: int, J: int) -> tuple[int, int]:
    """A nonzero ``(i, j)`` of the torch matrix ``A`` (dense or sparse) in block ``(I, J)`` of
    the partition ``sizes``, the first in row-major order; the block's top-left corner when
    the block is zero. For error messages that name an offending entry."""
    offs = np.concatenate(([0], np.cumsum(sizes)))
    r0, r1, c0, c1 = int(offs[I]), int(offs[I + 1]), int(offs[J]), int(offs[J + 1])
    if A.layout == torch.strided:
        nz = np.argwhere(_np(A[r0:r1, c0:c1]) != 0)
        return (r0 + int(nz[0][0]), c0 + int(nz[0][1])) if len(nz) else (r0, c0)
    S = csr_int32(A.detach())
    crow = _np(S.crow_indices())
    s, e = int(crow[r0]), int(crow[r1])
    cols, vals = _np(S.col_indices())[s:e], _np(S.values())[s:e]
    rows = np.repeat(np.arange(r0, r1), np.diff(crow[r0:r1 + 1]))
    hit = np.flatnonzero((cols >= c0) & (cols < c1) & (vals != 0))
    if hit.size:
        return int(rows[hit[0]]), int(cols[hit[0]])
    return r0, c0


def transpose_csr(S: Tensor) -> Tensor:
    """``S^T`` of a torch CSR tensor ``S (rows, cols)`` as a CSR tensor ``(cols, rows)`` with
    sorted column indices, int32 when they fit. On the CPU through scipy (a linear counting
    sort); on other devices through torch's COO path."""
    if S.device.type != "cpu":
        return csr_int32(S.t().to_sparse_coo().coalesce().to_sparse_csr())
    M = sp.csr_array((_np(S.values()), _np(S.col_indices()), _np(S.crow_indices())), shape=tuple(S.shape))
    T = M.T.tocsr()  # csc -> csr: counting sort, indices sorted
    idx_dtype = torch.int32 if max(S.shape + (S._nnz(),)) <= INT32_MAX else torch.int64
    return torch.sparse_csr_tensor(torch.from_numpy(T.indptr).to(idx_dtype),
                                   torch.from_numpy(T.indices).to(idx_dtype),
                                   torch.from_numpy(T.data), T.shape, check_invariants=False)


def diagonal(A: Tensor) -> Tensor:
    """``diag(A)`` ``(n,)`` of a square dense or sparse torch matrix, same dtype and device,
    without densifying (duplicate entries of a sparse ``A`` are summed). A view for a dense
    ``A``, a new tensor for a sparse one."""
    if A.layout == torch.strided:
        return torch.diagonal(A)
    S = csr_int32(A)
    n = A.shape[0]
    crow, col, val = S.crow_indices().long(), S.col_indices().long(), S.values()
    rows = torch.repeat_interleave(torch.arange(n, device=A.device), crow[1:] - crow[:-1])
    on = rows == col
    d = torch.zeros(n, dtype=A.dtype, device=A.device)
    return d.index_put_((rows[on],), val[on], accumulate=True)
