"""The cached triangular solve plan (paper 000 Thm 2.8-2.9) and sparse analyses.

Checks that the vectorised level computation equals the plain recursion on random (block)
triangular patterns, dense and sparse; that the plan cached per ``A`` equals a fresh one
and is rebuilt when ``A`` changes (sparse: in-place edit of its values; dense: an
optimizer step of projected-gradient training); and that the certificates and the
analyses of :mod:`idlkit.wellposed` and :mod:`idlkit.compose` accept sparse ``A`` without
densifying it and agree with the dense evaluation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import idlkit as idl
from idlkit import wellposed as wp
from idlkit._matrix import as_matrix
from idlkit.activations import Blockwise, get_activation
from idlkit.errors import ConfigurationError
from idlkit.solve import PlanCache, SolveOptions, adjoint_fixed_point, fixed_point, triangular_levels
from idlkit.solve import triangular as tri
from idlkit.solve.api import solve_forward

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning",
                                        "ignore:Sparse invariant checks:UserWarning")


def random_block_triangular(rng: np.random.Generator, sizes: tuple[int, ...], density: float,
                            diagonal: bool = False) -> torch.Tensor:
    n = sum(sizes)
    blk = np.repeat(np.arange(len(sizes)), sizes)
    mask = (blk[:, None] < blk[None, :]) & (rng.random((n, n)) < density)
    A = np.where(mask, rng.standard_normal((n, n)), 0.0)
    if diagonal:
        A[np.diag_indices(n)] = np.where(rng.random(n) < 0.5, rng.uniform(-0.9, 0.9, n), 0.0)
    return torch.tensor(A)


def reference_level_sets(A: torch.Tensor, sizes: tuple[int, ...]) -> list[list[int]]:
    level = tri.levels_reference(A, sizes)
    state = np.repeat(level, sizes)
    return [np.flatnonzero(state == k).tolist() for k in range(int(level.max()) + 1)] if level.size else []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=12), st.floats(0.0, 0.6),
       st.integers(0, 2**31 - 1), st.booleans())
def test_levels_match_reference(sizes: list[int], density: float, seed: int, sparse: bool) -> None:
    sizes_t = tuple(sizes)
    A = random_block_triangular(np.random.default_rng(seed), sizes_t, density)
    M = A.to_sparse_csr() if sparse else A
    got = [idx.tolist() for idx in triangular_levels(M, sizes_t)]
    assert got == reference_level_sets(A, sizes_t)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.floats(0.0, 0.5), st.integers(0, 2**31 - 1))
def test_scalar_levels_with_diagonal_and_coo(n: int, density: float, seed: int) -> None:
    A = random_block_triangular(np.random.default_rng(seed), (1,) * n, density, diagonal=True)
    ref = reference_level_sets(A - torch.diag(torch.diagonal(A)), (1,) * n)
    for M in (A, A.to_sparse_csr(), A.to_sparse()):
        assert [i.tolist() for i in triangular_levels(M, allow_diagonal=True)] == ref
    if bool(torch.diagonal(A).ne(0).any()):
        with pytest.raises(ConfigurationError, match="zero diagonal"):
            triangular_levels(A.to_sparse_csr())


def test_levels_reject_lower_entries_sparse_and_dense() -> None:
    A = torch.zeros(5, 5, dtype=torch.float64)
    A[0, 3], A[3, 1] = 1.0, 2.0
    for M in (A, A.to_sparse_csr()):
        with pytest.raises(ConfigurationError, match=r"A\[3, 1\]"):
            triangular_levels(M)
    # within a block (sizes (2, 3)): entry (3, 4) is on the block diagonal
    B = torch.zeros(5, 5, dtype=torch.float64)
    B[3, 4] = 1.0
    with pytest.raises(ConfigurationError, match="zero diagonal"):
        triangular_levels(B.to_sparse_csr(), (2, 3))


def test_explicit_zeros_are_not_dependencies() -> None:
    A = torch.zeros(4, 4, dtype=torch.float64)
    A[0, 1], A[1, 2] = 1.0, 1.0
    S = A.to_sparse_csr()
    S.values()[1] = 0.0  # explicit zero at (1, 2)
    assert [i.tolist() for i in triangular_levels(S)] == [[1, 2, 3], [0]]


def sparse_model(seed: int = 0, n: int = 40) -> idl.ImplicitModel:
    rng = np.random.default_rng(seed)
    A = random_block_triangular(rng, (1,) * n, 0.15)
    B = torch.tensor(rng.standard_normal((n, 5)))
    C = torch.tensor(rng.standard_normal((3, n)))
    D = torch.tensor(rng.standard_normal((3, 5)))
    return idl.ImplicitModel.from_matrices(A.to_sparse_csr(), B, C, D, torch.randn(n, dtype=torch.float64),
                                           torch.randn(3, dtype=torch.float64), activation="tanh",
                                           wellposedness="triangular", solver="triangular")


def test_cached_plan_equals_fresh_and_is_reused() -> None:
    model = sparse_model()
    assert model.A.crow_indices().dtype == torch.int32
    u = torch.randn(7, 5, dtype=torch.float64)
    y1 = model(u)
    act = model.activation
    plan = tri.plan_for(model.A, act, model._plans)
    fresh = tri.build_plan(model.A, act, ())
    assert [i.tolist() for i in plan.levels] == [i.tolist() for i in fresh.levels]
    assert [i.tolist() for i in plan.levels] == [i.tolist() for i in triangular_levels(model.A)]
    for a, b in zip(plan.rows, fresh.rows, strict=True):
        torch.testing.assert_close(a.to_dense(), b.to_dense())
    assert tri.plan_for(model.A, act, model._plans) is plan  # cached
    torch.testing.assert_close(model(u), y1)
    # exact against a dense solve
    Ad = model.A.to_dense()
    Xd, _ = fixed_point(Ad, (model.B @ u.t()) + model.b[:, None], "tanh", method="triangular")
    torch.testing.assert_close(model.equilibrium(u), Xd.t(), rtol=0, atol=1e-12)


def test_sparse_plan_invalidated_by_value_edit() -> None:
    model = sparse_model(1)
    u = torch.randn(4, 5, dtype=torch.float64)
    model(u)
    plan = tri.plan_for(model.A, model.activation, model._plans)
    with torch.no_grad():
        model.A.values().mul_(0.5)  # in place: same storage, new version
    assert tri.plan_for(model.A, model.activation, model._plans) is not plan
    X = model.equilibrium(u)
    Xd, _ = fixed_point(model.A.to_dense(), (model.B @ u.t()) + model.b[:, None], "tanh",
                        method="triangular")
    torch.testing.assert_close(X, Xd.t(), rtol=0, atol=1e-12)


def test_adjoint_uses_cached_transpose_and_matches_dense() -> None:
    model = sparse_model(2)
    u = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    model(u).square().sum().backward()
    g_sparse = u.grad.clone()
    plan = tri.plan_for(model.A, model.activation, model._plans)
    assert plan.rows_t is not None
    dense = idl.ImplicitModel.from_matrices(model.A.to_dense(), model.B.detach(), model.C.detach(),
                                            model.D.detach(), model.b.detach(), model.d.detach(),
                                            activation="tanh", wellposedness="triangular",
                                            solver="triangular")
    u.grad = None
    dense(u).square().sum().backward()
    torch.testing.assert_close(g_sparse, u.grad, rtol=1e-10, atol=1e-12)


def test_dense_projected_training_invalidates_cache() -> None:
    """Projected-gradient training of a dense triangular model: after each step the cached
    plan must still give the exact equilibrium of the *current* A (compared with a fresh model)."""
    torch.manual_seed(0)
    n = 12
    model = idl.ImplicitModel(4, n, 2, wellposedness="triangular", solver="triangular",
                              dtype=torch.float64)
    with torch.no_grad():  # a sparse strictly upper pattern first: few levels
        model.A.zero_()
        model.A[0, 5] = model.A[3, 9] = 0.7
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    model.attach_projection(opt)
    u = torch.randn(9, 4, dtype=torch.float64)
    model(u)
    levels0 = len(tri.plan_for(model.A, model.activation, model._plans).levels)
    for _ in range(2):
        opt.zero_grad()
        model(u).square().sum().backward()
        opt.step()  # A's pattern fills the strict upper triangle
        fresh = idl.ImplicitModel.from_matrices(model.A.detach().clone(), model.B.detach(),
                                                model.C.detach(), model.D.detach(), model.b.detach(),
                                                model.d.detach(), wellposedness="triangular",
                                                solver="triangular")
        with torch.no_grad():
            torch.testing.assert_close(model(u), fresh(u), rtol=0, atol=1e-12)
            Xa, _ = fixed_point(model.A.detach(), model.B.detach() @ u.t() + model.b.detach()[:, None],
                                method="anderson", tol=1e-13)
            torch.testing.assert_close(model.equilibrium(u).t(), Xa, rtol=0, atol=1e-10)
    assert len(tri.plan_for(model.A, model.activation, model._plans).levels) > levels0
    # edits through .data (no version bump) are caught by the pattern check
    with torch.no_grad():
        model.A.data.zero_()
        model.A.data[0, n - 1] = 0.5
    plan = tri.plan_for(model.A, model.activation, model._plans)
    assert len(plan.levels) >= 2
    X = model.equilibrium(u)
    Xd, _ = fixed_point(model.A.detach().clone(), model.B.detach() @ u.t() + model.b.detach()[:, None],
                        method="triangular")
    torch.testing.assert_close(X.t(), Xd, rtol=0, atol=1e-12)


def test_dense_diagonal_relu_cache_rereads_diagonal() -> None:
    A = torch.triu(torch.randn(6, 6, dtype=torch.float64), 1)
    A.diagonal().copy_(torch.tensor([0.5, -0.3, 0.0, 0.2, 0.9, -2.0]))
    b = torch.randn(6, 3, dtype=torch.float64)
    act = get_activation("relu")
    cache, opts = PlanCache(), SolveOptions(tol=1e-9, max_iter=1)
    X1, _, _ = solve_forward(A, b, act, "triangular", opts, cache=cache)
    plan = tri.plan_for(A, act, cache)
    A.diagonal().mul_(0.5)
    X2, _, _ = solve_forward(A, b, act, "triangular", opts, cache=cache)
    assert tri.plan_for(A, act, cache) is plan  # same pattern: the plan is reused
    torch.testing.assert_close(X2, torch.relu(A @ X2 + b), rtol=0, atol=1e-12)
    assert not torch.allclose(X1, X2)


def test_blockwise_sparse_solve_and_adjoint() -> None:
    rng = np.random.default_rng(3)
    sizes = (2, 1, 3, 2)
    act = Blockwise([(2, "softmax"), (1, "tanh"), (3, "softmax"), (2, "relu")])
    A = random_block_triangular(rng, sizes, 0.7)
    b = torch.randn(8, 4, dtype=torch.float64)
    Xd, _ = fixed_point(A, b, act, method="triangular")
    Xs, _ = fixed_point(A.to_sparse_csr(), b, act, method="triangular")
    torch.testing.assert_close(Xs, Xd, rtol=0, atol=1e-12)
    Z = A @ Xd + b
    G = torch.randn(8, 4, dtype=torch.float64)
    Vd, _ = adjoint_fixed_point(A, Z, G, act, method="triangular")
    Vs, _ = adjoint_fixed_point(A.to_sparse_csr(), Z, G, act, method="triangular")
    torch.testing.assert_close(Vs, Vd, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- analyses


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_certificate_on_sparse_matches_dense(act: str) -> None:
    rng = np.random.default_rng(5)
    A = random_block_triangular(rng, (1,) * 30, 0.2) * 0.1
    dense, sparse = wp.check(A, act), wp.check(A.to_sparse_csr(), act)
    assert sparse.triangular and sparse.holds["triangular"] and sparse.pf == 0.0
    assert sparse.inf_norm == pytest.approx(dense.inf_norm, rel=1e-12)
    assert sparse.mu_inf == pytest.approx(dense.mu_inf, rel=1e-12)
    assert dense.pf == pytest.approx(0.0, abs=1e-12)
    # not triangular: a 2-cycle; pf by the sparse power iteration vs dense eigenvalues
    A[20, 3] = 0.05
    d, s = wp.check(A, act), wp.check(A.to_sparse_csr(), act)
    assert d.triangular == s.triangular and d.holds == s.holds
    assert s.pf == pytest.approx(d.pf, rel=1e-6, abs=1e-9)
    rep_d, rep_s = wp.triangular_criterion(A, act), wp.triangular_criterion(A.to_sparse_csr(), act)
    assert rep_d == rep_s


def test_sparse_analyses_never_densify(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object, **__: object) -> None:
        raise AssertionError("densified")

    A = random_block_triangular(np.random.default_rng(6), (1,) * 50, 0.1).to_sparse_csr()
    monkeypatch.setattr(torch.Tensor, "to_dense", boom)
    assert wp.is_upper_triangular(A, strict=True)
    assert wp.inf_norm(A) > 0 and np.isfinite(wp.mu_inf(A))
    assert wp.check(A, "relu").holds["triangular"]
    assert wp.triangular_criterion(A, "relu").wellposed
    assert wp.pf_eigenvalue(abs(as_matrix(A))) >= 0
    assert wp.blip_condition(A, "relu") == pytest.approx(0.0, abs=1e-9)
    S = wp.blip_norm_matrix(A, (1,) * 50, (np.inf,) * 50)
    assert S.nnz == A._nnz()


def dense_copy(m: idl.ImplicitModel) -> idl.ImplicitModel:
    mats = [getattr(m, k).detach() for k in "ABCD"]
    mats = [M.to_dense() if M.layout != torch.strided else M for M in mats]
    b, d = (None if v is None else v.detach() for v in (m.b, m.d))
    return idl.ImplicitModel.from_matrices(*mats, b, d, activation=m.activation,
                                           wellposedness=m.wellposedness, solver=m.settings.method)


def test_sparse_model_certificate() -> None:
    model = sparse_model(4)
    rep = model.certificate()
    assert rep.holds["triangular"] and rep.pf == 0.0
    assert rep.inf_norm == pytest.approx(wp.inf_norm(model.A.to_dense()), rel=1e-12)
    assert rep.mu_inf == pytest.approx(wp.mu_inf(model.A.to_dense()), rel=1e-12)


@pytest.mark.parametrize("op", ["cascade", "parallel", "concat", "feedback", "output_activation"])
def test_compose_with_sparse_models(op: str) -> None:
    from idlkit import compose

    m1, m2 = sparse_model(7, n=15), sparse_model(8, n=11)
    u = torch.randn(4, 5, dtype=torch.float64)
    if op == "cascade":
        m2 = idl.ImplicitModel.from_matrices(
            m2.A, m2.B.detach()[:, :3], m2.C.detach(), m2.D.detach()[:, :3], m2.b.detach(),
            m2.d.detach(), activation="tanh", wellposedness="triangular", solver="triangular")
        out, ref = compose.cascade(m1, m2), compose.cascade(dense_copy(m1), dense_copy(m2))
    elif op == "parallel":
        out, ref = (compose.parallel(m1, m2, (0.5, 2.0)),
                    compose.parallel(dense_copy(m1), dense_copy(m2), (0.5, 2.0)))
    elif op == "concat":
        out, ref = compose.concat(m1, m2), compose.concat(dense_copy(m1), dense_copy(m2))
    elif op == "feedback":
        f2 = idl.ImplicitModel.from_matrices(
            torch.zeros(2, 2, dtype=torch.float64).to_sparse_csr(), 0.01 * torch.randn(2, 3).double(),
            0.01 * torch.randn(5, 2).double(), torch.zeros(5, 3, dtype=torch.float64),
            activation="tanh", wellposedness="triangular", solver="triangular")
        m1s = idl.ImplicitModel.from_matrices(0.05 * m1.A, m1.B.detach(), m1.C.detach(), m1.D.detach(),
                                              activation="tanh")
        out, ref = compose.feedback(m1s, f2), compose.feedback(dense_copy(m1s), f2)
    else:
        out = compose.with_output_activation(m1, "softmax")
        ref = compose.with_output_activation(dense_copy(m1), "softmax")
    if op != "feedback":
        assert out.sparse
    assert out.settings.method == ref.settings.method
    with torch.no_grad():
        torch.testing.assert_close(out(u), ref(u), rtol=1e-9, atol=1e-10)


def test_resnet_block_scale_certificate_fast() -> None:
    """A converted CNN's sparse certificate is decided on the pattern (no densification)."""
    from torch import nn

    from idlkit.convert import from_torch

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 12 * 12, 5)).eval()
    x = torch.randn(2, 3, 12, 12)
    model = from_torch(net, x, sparse=True)
    rep = model.certificate()
    assert rep.holds["triangular"] and rep.pf == 0.0
    assert wp.check(model.A, model.activation).holds["triangular"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=0, atol=1e-5)
