"""idlkit._matrix: each helper against an independent dense numpy / scipy computation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from idlkit import _matrix as mx
from idlkit.errors import ShapeError

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
warnings.filterwarnings("ignore", message=".*Sparse invariant checks are implicitly disabled.*")


def _torch_csr(M: np.ndarray, int32: bool = False) -> torch.Tensor:
    S = sp.csr_array(M)
    idx = torch.int32 if int32 else torch.int64
    return torch.sparse_csr_tensor(torch.from_numpy(S.indptr).to(idx), torch.from_numpy(S.indices).to(idx),
                                   torch.from_numpy(S.data), S.shape)


def _unsorted_csr(M: np.ndarray, rng: np.random.Generator, dup: bool) -> torch.Tensor:
    """A torch CSR tensor of ``M`` whose column indices are shuffled within rows (and, with
    ``dup``, each nonzero split into two duplicate entries summing to it)."""
    n, m = M.shape
    crow, cols, vals = [0], [], []
    for i in range(n):
        js = np.flatnonzero(M[i])
        rng.shuffle(js)
        for j in js:
            if dup:
                cols += [j, j]
                vals += [M[i, j] / 2, M[i, j] / 2]
            else:
                cols.append(j)
                vals.append(M[i, j])
        crow.append(len(cols))
    return torch.sparse_csr_tensor(torch.tensor(crow), torch.tensor(cols, dtype=torch.int64),
                                   torch.tensor(vals, dtype=torch.float64), (n, m))


@st.composite
def sparse_patterns(draw, max_n: int = 12, square: bool = True):
    n = draw(st.integers(0, max_n))
    m = n if square else draw(st.integers(0, max_n))
    density = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    M = np.where(rng.random((n, m)) < density, rng.standard_normal((n, m)), 0.0)
    return M, seed


@st.composite
def partitions(draw, n: int):
    sizes, left = [], n
    while left:
        s = draw(st.integers(1, left))
        sizes.append(s)
        left -= s
    return tuple(sizes)


def _reference_block_graph(M: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    offs = np.concatenate(([0], np.cumsum(sizes))).astype(int)
    L = len(sizes)
    return np.array([[M[offs[i]:offs[i + 1], offs[j]:offs[j + 1]].any() for j in range(L)]
                     for i in range(L)], dtype=bool).reshape(L, L)


# ----------------------------------------------------------------------------- is_sparse / dense


def test_is_sparse():
    D = torch.eye(3)
    assert not mx.is_sparse(D) and not mx.is_sparse(None) and not mx.is_sparse(np.eye(2))
    for S in (D.to_sparse(), D.to_sparse_csr(), D.to_sparse_csc(), sp.csr_array(np.eye(2)),
              sp.coo_matrix(np.eye(2))):
        assert mx.is_sparse(S)


def test_to_dense_and_as_dense_array():
    rng = np.random.default_rng(0)
    M = np.where(rng.random((5, 4)) < 0.4, rng.standard_normal((5, 4)), 0.0).astype(np.float32)
    T = torch.from_numpy(M)
    assert mx.to_dense(T) is T
    for S in (T.to_sparse(), T.to_sparse_csr(), T.to_sparse_csc()):
        np.testing.assert_array_equal(mx.to_dense(S).numpy(), M)
        out = mx.as_dense_array(S)
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, M.astype(np.float64))
    assert mx.as_dense_array(T, dtype=None).dtype == np.float32
    np.testing.assert_array_equal(mx.as_dense_array(sp.csr_array(M)), M)
    a = mx.as_dense_array(T)
    a[0, 0] = 99.0  # a copy of a tensor
    assert T[0, 0] != 99.0
    M64 = M.astype(np.float64)
    assert mx.as_dense_array(M64) is M64  # a float64 array as is
    bf = mx.as_dense_array(T.to(torch.bfloat16))  # a dtype numpy lacks
    assert bf.dtype == np.float64


# ----------------------------------------------------------------------------- as_matrix


@settings(max_examples=60, deadline=None)
@given(sparse_patterns(square=False), st.booleans(), st.booleans())
def test_as_matrix_matches_dense(pat, shuffled, dup):
    M, seed = pat
    ref = M.astype(np.float64)
    inputs = [torch.from_numpy(M), _torch_csr(M), _torch_csr(M, int32=True),
              torch.from_numpy(M).to_sparse(), torch.from_numpy(M).to_sparse_csc(), sp.csr_array(M),
              sp.coo_array(M), M]
    if shuffled and M.size:
        inputs.append(_unsorted_csr(M, np.random.default_rng(seed), dup))
    for A in inputs:
        out = mx.as_matrix(A)
        assert out.shape == M.shape and out.dtype == np.float64
        if mx.is_sparse(A):
            assert sp.issparse(out) and out.format == "csr"
            assert out.has_canonical_format
            np.testing.assert_allclose(out.toarray(), ref, rtol=0, atol=1e-15)
        else:
            assert isinstance(out, np.ndarray)
            np.testing.assert_array_equal(out, ref)


def test_as_matrix_keeps_dtype_and_never_writes_the_input():
    T = torch.tensor([[0.0, 2.0], [3.0, 0.0]], dtype=torch.float32)
    S = T.to_sparse_csr()
    out = mx.as_matrix(S, dtype=None)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.toarray(), T.numpy())
    out64 = mx.as_matrix(S)
    out64.data[:] = 7.0  # the values were cast: a copy
    assert S.values().tolist() == [2.0, 3.0]
    # an unsorted tensor is fixed on private copies
    U = _unsorted_csr(np.array([[1.0, 2.0, 3.0]]), np.random.default_rng(1), dup=False)
    before = U.col_indices().clone()
    mx.as_matrix(U)
    assert torch.equal(U.col_indices(), before)


def test_from_scipy_csr_round_trip():
    rng = np.random.default_rng(3)
    M = np.where(rng.random((6, 5)) < 0.3, rng.standard_normal((6, 5)), 0.0)
    S = sp.coo_array(M)
    S = sp.coo_array((np.concatenate([S.data / 2, S.data / 2]),
                      (np.concatenate([S.row, S.row]), np.concatenate([S.col, S.col]))), shape=M.shape)
    T = mx.from_scipy_csr(S, torch.float32)
    assert T.layout == torch.sparse_csr and T.dtype == torch.float32
    np.testing.assert_allclose(T.to_dense().numpy(), M, rtol=1e-6)
    assert mx.sorted_csr(T.crow_indices().numpy(), T.col_indices().numpy())


def test_nonzero_indices_drop_explicit_zeros():
    M = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 3.0]])
    want = np.nonzero(M)
    for A in (torch.from_numpy(M), torch.from_numpy(M).to_sparse_csr(), sp.csr_array(M)):
        r, c = mx.nonzero_indices(A)
        np.testing.assert_array_equal(r, want[0])
        np.testing.assert_array_equal(c, want[1])
    # an explicit zero stored in a CSR tensor is not a nonzero
    Z = torch.sparse_csr_tensor(torch.tensor([0, 2, 3]), torch.tensor([0, 1, 2]),
                                torch.tensor([0.0, 1.0, 3.0]), (2, 3))
    r, c = mx.nonzero_indices(Z)
    assert list(zip(r.tolist(), c.tolist(), strict=True)) == [(0, 1), (1, 2)]


# ----------------------------------------------------------------------------- int32 CSR, keys


def test_csr_int32_and_store_sparse():
    M = torch.tensor([[0.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    for S in (M.to_sparse(), M.to_sparse_csr(), M.to_sparse_csc()):
        C = mx.csr_int32(S)
        assert C.layout == torch.sparse_csr and C.crow_indices().dtype == torch.int32
        assert torch.equal(C.to_dense(), M)
        assert mx.csr_int32(C) is C
    U = _unsorted_csr(np.array([[1.0, 0.0, 2.0, 3.0], [0.0, 4.0, 0.0, 5.0]]),
                      np.random.default_rng(5), dup=True)
    St = mx.store_sparse(U)
    assert St.crow_indices().dtype == torch.int32
    assert mx.sorted_csr(St.crow_indices().numpy(), St.col_indices().numpy())
    torch.testing.assert_close(St.to_dense(), U.to_dense())
    # a canonical CSR input keeps its values storage (no COO round trip)
    C = M.to_sparse_csr()
    assert mx.store_sparse(C).values().data_ptr() == C.values().data_ptr()


def test_sparse_key_tracks_in_place_changes():
    S = torch.eye(3).to_sparse_csr()
    k0 = mx.sparse_key(S)
    assert mx.sparse_key(S) == k0
    S.values().mul_(2.0)
    assert mx.sparse_key(S) != k0
    assert mx.sparse_key(torch.eye(3).to_sparse_csr()) != mx.sparse_key(S)


# ----------------------------------------------------------------------------- sorted_csr


def _sorted_reference(crow: np.ndarray, col: np.ndarray) -> bool:
    return all(bool(np.all(np.diff(col[crow[i]:crow[i + 1]]) > 0)) for i in range(len(crow) - 1))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), max_size=6), max_size=8), st.integers(1, 7))
def test_sorted_csr_matches_rowwise_reference(rows, chunk):
    crow = np.concatenate(([0], np.cumsum([len(r) for r in rows]))).astype(np.int64)
    col = np.array([c for r in rows for c in r], dtype=np.int64)
    assert mx.sorted_csr(crow, col, chunk=chunk) == _sorted_reference(crow, col)
    assert mx.sorted_csr(crow, col) == _sorted_reference(crow, col)


# ----------------------------------------------------------------------------- block graph


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_block_pattern_graph_matches_reference(data):
    M, seed = data.draw(sparse_patterns())
    n = M.shape[0]
    sizes = data.draw(partitions(n))
    ref = _reference_block_graph(M, sizes)
    inputs = [torch.from_numpy(M), _torch_csr(M), _torch_csr(M, int32=True), sp.csr_array(M), M,
              torch.from_numpy(M).to_sparse()]
    if M.any():
        inputs.append(_unsorted_csr(M, np.random.default_rng(seed), dup=True))
    for A in inputs:
        G = mx.block_pattern_graph(A, sizes)
        assert G.shape == (len(sizes), len(sizes))
        np.testing.assert_array_equal(G.toarray() != 0, ref)
        assert set(np.unique(G.data).tolist()) <= {1}
    np.testing.assert_array_equal(mx.block_pattern_graph(sp.csr_array(M)).toarray() != 0, M != 0)


def test_block_pattern_graph_drops_explicit_zeros_and_survives_many_duplicates():
    Z = torch.sparse_csr_tensor(torch.tensor([0, 2, 2]), torch.tensor([0, 1]), torch.tensor([0.0, 1.0]),
                                (2, 2))
    assert mx.block_pattern_graph(Z).toarray().tolist() == [[0, 1], [0, 0]]
    # a dense 16 x 16 block has 256 entries: a pattern summed in int8 would wrap to 0
    G = mx.block_pattern_graph(torch.ones(32, 32).to_sparse_csr(), (16, 16))
    assert G.toarray().tolist() == [[1, 1], [1, 1]]
    assert (G.diagonal() != 0).all()


def test_block_pattern_graph_rejects_bad_shapes():
    with pytest.raises(ShapeError, match="square"):
        mx.block_pattern_graph(torch.zeros(2, 3))
    with pytest.raises(ShapeError, match="partition"):
        mx.block_pattern_graph(torch.zeros(3, 3), (1, 1))


@settings(max_examples=60, deadline=None)
@given(sparse_patterns())
def test_row_min_col_matches_reference(pat):
    M, _ = pat
    n = M.shape[0]
    G = mx.block_pattern_graph(sp.csr_array(M))
    want = [int(np.flatnonzero(M[i])[0]) if M[i].any() else n for i in range(n)]
    assert mx.row_min_col(G).tolist() == want


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_entry_in_finds_a_nonzero_of_the_block(data):
    M, _ = data.draw(sparse_patterns())
    n = M.shape[0]
    if n == 0:
        return
    sizes = data.draw(partitions(n))
    offs = np.concatenate(([0], np.cumsum(sizes))).astype(int)
    I = data.draw(st.integers(0, len(sizes) - 1))
    J = data.draw(st.integers(0, len(sizes) - 1))
    blk = M[offs[I]:offs[I + 1], offs[J]:offs[J + 1]]
    for A in (torch.from_numpy(M), _torch_csr(M)):
        i, j = mx.entry_in(A, sizes, I, J)
        assert offs[I] <= i < offs[I + 1] and offs[J] <= j < offs[J + 1]
        if blk.any():
            nz = np.argwhere(blk != 0)[0]
            assert (i, j) == (offs[I] + nz[0], offs[J] + nz[1])  # the first in row-major order
        else:
            assert (i, j) == (offs[I], offs[J])


# ----------------------------------------------------------------------------- transpose, diagonal


@settings(max_examples=60, deadline=None)
@given(sparse_patterns(square=False), st.booleans())
def test_transpose_csr_matches_dense(pat, int32):
    M, _ = pat
    T = mx.transpose_csr(_torch_csr(M, int32=int32))
    assert T.layout == torch.sparse_csr and tuple(T.shape) == M.T.shape
    assert T.crow_indices().dtype == torch.int32
    np.testing.assert_array_equal(T.to_dense().numpy(), M.T)
    assert mx.sorted_csr(T.crow_indices().numpy(), T.col_indices().numpy())


@settings(max_examples=60, deadline=None)
@given(sparse_patterns())
def test_diagonal_matches_dense(pat):
    M, _ = pat
    want = np.diag(M)
    np.testing.assert_array_equal(mx.diagonal(torch.from_numpy(M)).numpy(), want)
    for S in (_torch_csr(M), torch.from_numpy(M).to_sparse()):
        d = mx.diagonal(S)
        assert d.dtype == torch.float64 and d.shape == (M.shape[0],)
        np.testing.assert_array_equal(d.numpy(), want)


def test_diagonal_sums_duplicates():
    U = _unsorted_csr(np.diag([1.0, 2.0, 3.0]) + np.triu(np.ones((3, 3)), 1),
                      np.random.default_rng(0), dup=True)
    np.testing.assert_allclose(mx.diagonal(U).numpy(), [1.0, 2.0, 3.0])
