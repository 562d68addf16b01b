"""The adjoint map with a CSR ``A`` (pre-transposed CSR product, solve/maps.py) against the dense
``A`` and against finite differences of the implicit model."""

from __future__ import annotations

import warnings

import pytest
import torch

import idlkit
from idlkit.solve.maps import AdjointMap

F64 = torch.float64


def _sparse_A(seed: int, n: int, density: float, kappa: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = (torch.rand(n, n, generator=g, dtype=F64) * 2 - 1) * (torch.rand(n, n, generator=g) < density)
    s = A.abs().sum(1, keepdim=True)
    return torch.where(s > 0, A * kappa / s.clamp(min=1e-300), A)


def _csr(A: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return A.to_sparse_csr()


@pytest.mark.parametrize("rows", [None, [0, 2]])
def test_adjoint_map_csr_equals_dense(rows: list[int] | None) -> None:
    g = torch.Generator().manual_seed(1)
    A = _sparse_A(0, 12, 0.3, 0.9)
    Z, G, V = (torch.randn(3, 12, generator=g, dtype=F64) for _ in range(3))
    act = idlkit.activations.ReLU()
    dense, sparse = AdjointMap(A, Z, G, act), AdjointMap(_csr(A), Z, G, act)
    assert sparse.AT is not None and sparse.AT.layout == torch.sparse_csr
    if rows is not None:
        idx = torch.tensor(rows)
        dense, sparse, V = dense.restrict(idx), sparse.restrict(idx), V[idx]
    (Fd, Wd), (Fs, Ws) = dense(V), sparse(V)
    # reference written out: W = V A + G^T rows, F = relu'(Z) * W
    Wref = V @ A + (G if rows is None else G[torch.tensor(rows)])
    torch.testing.assert_close(Ws, Wref, rtol=0, atol=1e-13)
    torch.testing.assert_close(Fs, Fd, rtol=0, atol=1e-13)
    torch.testing.assert_close(Wd, Wref, rtol=0, atol=1e-13)


def test_csr_model_gradients_match_dense_and_finite_differences() -> None:
    g = torch.Generator().manual_seed(2)
    n, p, q = 15, 4, 3
    A = _sparse_A(3, n, 0.25, 0.8)
    B, C, D = (torch.randn(*s, generator=g, dtype=F64) for s in ((n, p), (q, n), (q, p)))
    kw = {"activation": "tanh", "wellposedness": "inf", "kappa": 0.8, "tol": 1e-13,
          "backward_tol": 1e-13, "backward_stop": "absolute"}
    sparse = idlkit.ImplicitModel.from_matrices(_csr(A), B, C, D, **kw)
    dense = idlkit.ImplicitModel.from_matrices(A, B, C, D, **kw)
    u = torch.randn(5, p, generator=g, dtype=F64)
    grads = {}
    for name, m in (("sparse", sparse), ("dense", dense)):
        x = u.clone().requires_grad_(True)
        m(x).pow(2).sum().backward()
        grads[name] = (x.grad, m.B.grad, m.C.grad)
    for a, b in zip(grads["sparse"], grads["dense"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    x = u[:2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: sparse(v), (x,), eps=1e-6, atol=1e-6)
