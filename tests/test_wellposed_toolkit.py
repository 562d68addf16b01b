"""Rescaling, parametrizations, sparsity projection, the exact triangular criterion and the
BLIP condition (paper 000 §2.3-2.5; paper 002 Thm 2.4; paper 004), against independent
computations."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils import parametrize

import idlkit
from idlkit import wellposed as wp
from idlkit.activations import Blockwise, LeakyReLU, SoftMax
from idlkit.errors import ConfigurationError, ShapeError, WellPosednessError

F64 = torch.float64


def _model_with_pf(seed: int, n: int, lam: float, act="relu", bias=True):
    g = torch.Generator().manual_seed(seed)
    m = idlkit.ImplicitModel(4, n, 3, act, bias=bias, wellposedness=None, tol=1e-13,
                             max_iter=20000, dtype=F64)
    A = torch.randn(n, n, generator=g, dtype=F64)
    A *= lam / wp.pf_eigenvalue(A.abs())
    with torch.no_grad():
        m.A.copy_(A)
    return m


# ----------------------------------------------------------------------------- rescale


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 12), lam=st.floats(0.05, 0.97),
       method=st.sampled_from(["auto", "pf", "neumann"]),
       act=st.sampled_from(["relu", "identity", "leaky"]), bias=st.booleans())
def test_rescale_same_prediction_and_norm_below_one(seed, n, lam, method, act, bias):
    activation = LeakyReLU(0.2) if act == "leaky" else act
    m = _model_with_pf(seed, n, lam, activation, bias)
    try:
        r = wp.rescale(m, method)
    except WellPosednessError:
        assert method == "pf"  # a reducible |A| may have no positive PF eigenvector
        return
    assert wp.inf_norm(r.A) < 1
    if method == "pf":  # Collatz-Wielandt: the PF scaling attains lambda_pf exactly
        assert wp.inf_norm(r.A) == pytest.approx(wp.pf_eigenvalue(m.A.abs()), rel=1e-8)
    u = torch.randn(6, 4, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(r(u), m(u), rtol=0, atol=1e-10)


def test_rescale_strictly_triangular_uses_neumann_scaling():
    A = torch.triu(torch.randn(6, 6, dtype=F64) * 3, 1)  # nilpotent: lambda_pf = 0
    m = idlkit.ImplicitModel.from_matrices(A, torch.randn(6, 2, dtype=F64), torch.randn(1, 6, dtype=F64),
                                           torch.zeros(1, 2, dtype=F64), tol=1e-13)
    assert wp.inf_norm(A) > 1
    r = wp.rescale(m)
    w = np.linalg.solve(np.eye(6) - np.abs(A.numpy()), np.ones(6))
    assert wp.inf_norm(r.A) == pytest.approx(float((1 - 1 / w).max()), rel=1e-10)
    u = torch.randn(3, 2, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(r(u), m(u), rtol=0, atol=1e-10)


def test_rescale_errors():
    with pytest.raises(WellPosednessError, match="lambda_pf"):
        wp.rescale(_model_with_pf(0, 5, 1.2))
    with pytest.raises(ConfigurationError, match="homogeneous"):
        wp.rescale(_model_with_pf(0, 5, 0.5, act="tanh"))
    with pytest.raises(ConfigurationError):
        wp.rescale(_model_with_pf(0, 5, 0.5), method="bogus")


# ----------------------------------------------------------------------------- mu parametrization


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 10), gamma=st.floats(-2, 2),
       scale=st.floats(0.01, 100))
def test_mu_parametrization_always_in_the_set(seed, n, gamma, scale):
    T = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale
    A = wp.mu_parametrization(T, gamma)
    rows = [A[i, i].item() + sum(abs(A[i, j].item()) for j in range(n) if j != i) for i in range(n)]
    assert max(rows) <= gamma + 1e-12 * (1 + scale * n)
    # rows with T_ii >= 0 sit exactly on the boundary
    for i in range(n):
        if T[i, i] >= 0:
            assert rows[i] == pytest.approx(gamma, abs=1e-10 * (1 + scale * n))
    # right_inverse reproduces any A of the set (the module takes gamma < 1 only: well-posedness)
    if gamma < 1:
        P = wp.MuInfParametrization(gamma)
        torch.testing.assert_close(P(P.right_inverse(A)), A, rtol=0, atol=1e-10 * (1 + scale * n))


def test_mu_parametrization_trains_inside_the_set():
    torch.manual_seed(0)
    m = idlkit.ImplicitModel(5, 8, 2, "relu", wellposedness=None, dtype=F64, tol=1e-10,
                             max_iter=5000)
    with torch.no_grad():
        m.A.copy_(wp.mu_parametrization(torch.randn(8, 8, dtype=F64), 0.5))
    parametrize.register_parametrization(m, "A", wp.MuInfParametrization(0.5))
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    u, y = torch.randn(16, 5, dtype=F64), torch.randn(16, 2, dtype=F64)
    for _ in range(5):
        loss = ((m(u) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert wp.mu_inf(m.A) <= 0.5 + 1e-12
    with pytest.raises(WellPosednessError):
        wp.MuInfParametrization(0.5).right_inverse(torch.eye(3, dtype=F64))


def test_mu_parametrization_errors():
    with pytest.raises(ShapeError):
        wp.mu_parametrization(torch.ones(2, 3), 0.5)
    with pytest.raises(ConfigurationError):
        wp.mu_parametrization(torch.ones(2, 2), math.inf)


# ----------------------------------------------------------------------------- sparsity pattern


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 8))
def test_project_sparsity_is_the_closest_point(seed, n):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=F64)
    mask = torch.rand(n, n, generator=g) < 0.5
    P = wp.project_sparsity(A, mask)
    assert bool((P[~mask] == 0).all()) and torch.equal(P[mask], A[mask])
    # any other matrix with the pattern is farther from A
    Q = P + torch.randn(n, n, generator=g, dtype=F64) * mask
    assert ((Q - A) ** 2).sum() >= ((P - A) ** 2).sum()
    torch.testing.assert_close(wp.project_sparsity(A, mask.to(F64)), P)


def test_project_sparsity_errors():
    with pytest.raises(ShapeError):
        wp.project_sparsity(torch.ones(2, 2), torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ConfigurationError):
        wp.project_sparsity(torch.ones(2, 2), torch.full((2, 2), 0.5))


# ----------------------------------------------------------------------------- triangular criterion


def _scalar_unique_brute(a: float, phi) -> bool:
    """Count roots of g(x) = x - phi(a x + c) on a fine grid for several c."""
    # c covers -a/2 (sigmoid's critical point); roots stay within [-60, 60]
    xs = np.linspace(-100, 100, 400_001)
    cs = np.append(np.linspace(-3, 3, 13), -a / 2)
    for c in cs:
        g = xs - phi(a * xs + c)
        roots = int(np.sum(np.sign(g[:-1]) * np.sign(g[1:]) < 0) + np.sum(g == 0))
        if roots != 1:
            return False
    return True


PHIS = {
    "relu": lambda z: np.maximum(z, 0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
}


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("a", [-3.0, 0.0, 0.5, 0.95, 1.3, 3.0, 4.5])
def test_scalar_diagonal_block_rule_matches_root_counting(name, a):
    rep = wp.triangular_criterion(np.array([[a]]), name)
    assert rep.exact
    assert rep.wellposed == _scalar_unique_brute(a, PHIS[name])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 8))
def test_relu_upper_triangular_iff_diag_below_one(seed, n):
    rng = np.random.default_rng(seed)
    A = np.triu(rng.standard_normal((n, n)) * 2)
    A[np.diag_indices(n)] = rng.uniform(-3, 1.5, n)
    rep = wp.triangular_criterion(A, "relu")
    assert rep.triangular and rep.exact
    assert rep.wellposed == bool((np.diag(A) < 1).all())
    assert wp.check(A, "relu").holds["triangular"] == rep.wellposed


def test_block_triangular_with_certified_diagonal_blocks():
    rng = np.random.default_rng(1)
    A = np.zeros((7, 7))
    A[:3, :3] = rng.standard_normal((3, 3))
    A[:3, :3] *= 0.5 / np.abs(A[:3, :3]).sum(axis=1).max()
    A[3:, 3:] = rng.standard_normal((4, 4))
    A[3:, 3:] *= 0.8 / np.abs(A[3:, 3:]).sum(axis=1).max()
    A[:3, 3:] = rng.standard_normal((3, 4)) * 10  # large coupling: ||A||_inf >> 1
    rep = wp.triangular_criterion(A, "tanh")
    assert rep.components == ((0, 1, 2), (3, 4, 5, 6)) and rep.wellposed and not rep.exact
    assert wp.inf_norm(A) > 1 and wp.check(A, "tanh").holds["triangular"]
    A[3:, 3:] = np.abs(A[3:, 3:]) * 2 / np.abs(A[3:, 3:]).sum(axis=1, keepdims=True)
    # second diagonal block no longer certified: pf = mu_inf = ||.||_inf = 2
    assert wp.triangular_criterion(A, "tanh").failing == ((3, 4, 5, 6),)
    # a lower-triangular entry across the split closes a cycle: one irreducible block
    A[5, 1] = 1.0
    assert not wp.triangular_criterion(A, "tanh").triangular


def test_triangular_criterion_respects_blip_blocks():
    A = np.triu(np.ones((4, 4)), 1)
    assert wp.triangular_criterion(A, SoftMax(2)).components == ((0, 1), (2, 3))
    # diagonal blocks [[0,1],[0,0]]: SoftMax is 1/2-Lipschitz in l_inf, so certified
    assert wp.triangular_criterion(A, SoftMax(2)).wellposed
    A[0, 1] = A[2, 3] = 3.0  # now neither 0.5 * ||.||_inf nor the l1 PF bound is below 1
    assert wp.triangular_criterion(A, SoftMax(2)).failing == ((0, 1), (2, 3))
    B = np.zeros((4, 4))
    B[:2, 2:] = 5.0
    rep = wp.triangular_criterion(B, Blockwise([(2, SoftMax()), (2, "relu")]))
    assert rep.triangular and rep.wellposed


# ----------------------------------------------------------------------------- BLIP condition


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), L=st.integers(1, 4), bs=st.integers(1, 3))
def test_blip_condition_is_pf_of_gamma_n(seed, L, bs):
    rng = np.random.default_rng(seed)
    n = L * bs
    A = rng.standard_normal((n, n))
    act = SoftMax(bs)
    N = np.zeros((L, L))
    for i in range(L):
        for j in range(L):
            N[i, j] = np.abs(A[i * bs:(i + 1) * bs, j * bs:(j + 1) * bs]).sum(axis=0).max()  # 1->1
    val = wp.blip_condition(A, act)
    assert val == pytest.approx(np.abs(np.linalg.eigvals(N)).max(), rel=1e-9, abs=1e-12)
    assert val == pytest.approx(wp.check(A, act).pf, rel=1e-12)
    gam = tuple(rng.uniform(0.1, 2, L))
    np.testing.assert_allclose(wp.blip_norm_matrix(A, (bs,) * L, (1.0,) * L, gam),
                               np.asarray(gam)[:, None] * N, rtol=1e-12)
    with pytest.raises(ShapeError):
        wp.blip_norm_matrix(A, (bs,) * L, (1.0,) * L, gam + (1.0,))


# ----------------------------------------------------------------------------- degenerate inputs


def _cvx_inf_ball(A: np.ndarray, kappa: float) -> np.ndarray:
    import cvxpy as cp

    X = cp.Variable(A.shape)
    cp.Problem(cp.Minimize(cp.sum_squares(X - A)), [cp.sum(cp.abs(X), axis=1) <= kappa]).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return X.value


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6),
       kappa=st.sampled_from([1e-9, 1e-3, 0.5, 2.0]))
def test_project_inf_ball_with_ties_and_tiny_kappa(seed, n, kappa):
    """Entries from {-2,...,2}: many ties in the sort; kappa -> 0 shrinks to ~0."""
    rng = np.random.default_rng(seed)
    A = rng.integers(-2, 3, (n, n)).astype(np.float64)
    P = wp.project_inf_ball(torch.tensor(A), kappa).numpy()
    assert np.abs(P).sum(axis=1).max() <= kappa
    np.testing.assert_allclose(P, _cvx_inf_ball(A, kappa), atol=1e-6 * max(1.0, kappa))
    inside = np.abs(A).sum(axis=1) <= kappa
    np.testing.assert_array_equal(P[inside], A[inside])


def test_zero_matrix_everything_holds():
    Z = torch.zeros(5, 5, dtype=F64)
    assert torch.equal(wp.project_inf_ball(Z, 0.5), Z)
    assert torch.equal(wp.project_mu_set(Z, 0.5), Z)
    rep = wp.check(Z, "tanh")
    assert rep.wellposed and all(rep.holds.values())
    assert rep.pf == 0 and rep.inf_norm == 0 and rep.triangular
    assert wp.pf_eigenvalue(Z.abs()) == 0.0


def test_sparse_certificates_match_dense():
    rng = np.random.default_rng(0)
    n = 1200  # above the dense-eig size: the power iteration runs on the sparse matrix
    i, j = rng.integers(0, n, 6 * n), rng.integers(0, n, 6 * n)
    v = rng.standard_normal(6 * n) * 0.1
    T = torch.sparse_coo_tensor(torch.tensor(np.vstack([i, j])), torch.tensor(v), (n, n)).coalesce()
    D = T.to_dense()
    assert wp.inf_norm(T) == pytest.approx(wp.inf_norm(D), rel=1e-12)
    assert wp.mu_inf(T) == pytest.approx(wp.mu_inf(D), rel=1e-12)
    assert wp.mu_inf(T.to_sparse_csr()) == pytest.approx(wp.mu_inf(D), rel=1e-12)
    lam_true = float(np.abs(np.linalg.eigvals(D.abs().numpy())).max())
    lam = wp.pf_eigenvalue(T.abs())
    assert lam_true - 1e-12 <= lam <= lam_true * (1 + 1e-6) + 1e-9


def _threshold_reference(w: np.ndarray, r: float) -> float:
    c = np.sort(w)[::-1]
    cs = np.cumsum(c) - r
    j = np.arange(1, len(c) + 1)
    rho = j[c * j > cs].max()
    return cs[rho - 1] / rho


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_l1_threshold_every_path_matches_sorting(dtype, monkeypatch):
    """Rows barely outside (all entries survive), far outside (top-k), in between
    (Michelot) and, with Michelot cut short, the full sort: all give the sorted answer."""
    from idlkit.wellposed import _l1_threshold, _michelot

    rng = np.random.default_rng(0)
    n, r = 300, 0.95
    rows = [np.abs(rng.standard_normal(n)) + 0.01, np.abs(rng.standard_normal(n)) * 10,
            np.abs(rng.standard_normal(n))]
    rows[0] *= r * 1.0001 / rows[0].sum()   # barely outside: every entry survives
    rows[2] *= r * 1.05 / rows[2].sum()     # 5% outside: many, not all, survive
    W = np.stack(rows)
    ref = np.array([_threshold_reference(w, r) for w in W])
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    got = _l1_threshold(torch.tensor(W, dtype=dtype), r).double().numpy()
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    monkeypatch.setattr("idlkit.wellposed._michelot",
                        lambda W, radius, lam: _michelot(W, radius, lam, max_iter=1))
    got = _l1_threshold(torch.tensor(W, dtype=dtype), r).double().numpy()
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("gamma", [-1.0, 0.0, 0.7])
def test_project_mu_set_michelot_and_sort_paths_agree(gamma, monkeypatch):
    from idlkit.wellposed import _michelot

    rng = np.random.default_rng(1)
    A = torch.tensor(rng.standard_normal((40, 40)) * rng.uniform(0.01, 3, (40, 1)), dtype=F64)
    P = wp.project_mu_set(A, gamma)
    monkeypatch.setattr("idlkit.wellposed._michelot",
                        lambda W, radius, lam, offset=None: _michelot(W, radius, lam, max_iter=1,
                                                                       offset=offset))
    torch.testing.assert_close(wp.project_mu_set(A, gamma), P, rtol=0, atol=1e-12)
    assert wp.mu_inf(P) <= gamma


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 40), n=st.integers(1, 40),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_small_l1_threshold_numpy_path_matches_torch_sort(seed, m, n, dtype):
    """The threshold of small CPU inputs (numpy sort, float64 sums) equals the torch sort-based
    formula and solves sum_j (W_ij - lam_i)_+ = radius (the KKT equation of App. H)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.rand(m, n, generator=g, dtype=torch.float64).pow(3).mul(3).to(dtype)
    radius = 0.5 * float(W.sum(dim=1).min()) + 1e-3  # every row outside
    ref = wp._threshold_sorted(torch.sort(W, dim=1, descending=True).values, radius)[0]
    got = wp._l1_threshold(W, radius)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    kkt = (W.double() - got.double()[:, None]).clamp(min=0).sum(dim=1)
    scale = float(W.double().sum(dim=1).max())  # lam is rounded to the dtype: error ~ n ulp
    torch.testing.assert_close(kkt, torch.full_like(kkt, radius), rtol=tol, atol=tol * scale)
