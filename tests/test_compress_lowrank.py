"""Rank compression (idlkit.compress.rank): low_rank by truncated SVD and by Gramian-weighted
("balanced") truncation, RankReport, the Thm 5.1 state bound, nuclear_norm and rank_step.

References are computed independently here: numpy SVDs, Gramians by the Kronecker form of the
Stein equation, PF eigenvalues by scipy.linalg.eigvals, equilibria of the dense model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import idlkit
from idlkit.compress import RankReport, low_rank, nuclear_norm, rank_step
from idlkit.compress.lowrank import LowRankImplicitModel
from idlkit.errors import ConfigurationError, NonFiniteError, ShapeError, WellPosednessError

F64 = torch.float64
GAMMA = {"relu": 1.0, "tanh": 1.0, "sigmoid": 0.25, "identity": 1.0}
SOLVE = {"tol": 1e-13, "max_iter": 20_000}


def _rho(M: np.ndarray) -> float:
    return float(np.abs(scipy.linalg.eigvals(M)).max())


def _model(seed: int, n: int = 8, p: int = 3, q: int = 2, nuc: float | None = 0.8,
           pf: float | None = None, act: str = "relu", B=None, C=None) -> idlkit.ImplicitModel:
    """Dense model with a random A scaled to nuclear norm ``nuc`` (so that every SVD split of
    every rank has lambda_pf(|R|^T |L|) <= ||A||_* < kappa) or to lambda_pf(gamma |A|) = ``pf``."""
    g = np.random.default_rng(seed)
    A = g.standard_normal((n, n))
    if nuc is not None:
        A *= nuc / np.linalg.svd(A, compute_uv=False).sum()
    else:
        A *= pf / (GAMMA[act] * _rho(np.abs(A)))
    B = g.standard_normal((n, p)) if B is None else B
    C = g.standard_normal((q, n)) / math.sqrt(n) if C is None else C
    t = lambda M: torch.as_tensor(M, dtype=F64)  # noqa: E731
    return idlkit.ImplicitModel.from_matrices(
        t(A), t(B), t(C), t(g.standard_normal((q, p))), t(g.standard_normal(n)),
        t(g.standard_normal(q)), activation=act, wellposedness="pf", kappa=0.95, **SOLVE)


def _inputs(seed: int, p: int = 3, m: int = 16, scale: float = 1.0) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed + 1000).standard_normal((m, p)) * scale,
                           dtype=F64)


def _A(m) -> np.ndarray:
    return m.A.detach().numpy() if isinstance(m, idlkit.ImplicitModel) else m.dense_matrix().numpy()


def _gramian_weights(A: np.ndarray, B: np.ndarray, C: np.ndarray, gamma: float = 1.0,
                     ridge: float = 1e-8):
    """Independent: P, Q from vec(P) = (I - A (x) A)^-1 vec(B B^T) for the linearisation with
    slope gamma (A, B -> gamma A, gamma B), symmetric roots by scipy."""
    n = A.shape[0]
    A, B = gamma * A, gamma * B
    K = np.eye(n * n) - np.kron(A, A)
    P = np.linalg.solve(K, (B @ B.T).reshape(-1)).reshape(n, n)
    Q = np.linalg.solve(np.eye(n * n) - np.kron(A.T, A.T), (C.T @ C).reshape(-1)).reshape(n, n)
    roots = []
    for W in (Q, P):
        W = (W + W.T) / 2
        W = W + ridge * np.trace(W) / n * np.eye(n)
        roots.append(np.real(scipy.linalg.sqrtm(W)))
    return roots  # S_o, S_c


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("method", ["svd", "balanced"])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_full_rank_is_exact(method, act):
    m = _model(0, act=act)
    u = _inputs(0)
    small, rep = low_rank(m, m.hidden, method, repair=False, **SOLVE)
    assert isinstance(small, LowRankImplicitModel) and isinstance(rep, RankReport)
    assert small.rank == m.hidden and not rep.repaired and rep.rescaled == 1.0
    assert rep.relative_error < 1e-13
    np.testing.assert_allclose(small.dense_matrix().numpy(), _A(m), atol=1e-14)
    with torch.no_grad():
        np.testing.assert_allclose(small(u).numpy(), m(u).numpy(), atol=1e-10, rtol=0)
        np.testing.assert_allclose(small.equilibrium(u).numpy(), m.equilibrium(u).numpy(),
                                   atol=1e-10, rtol=0)


def test_exact_when_A_has_low_rank():
    g = np.random.default_rng(3)
    base = _model(3)
    A = g.standard_normal((8, 2)) @ g.standard_normal((2, 8))
    A *= 0.8 / np.linalg.svd(A, compute_uv=False).sum()
    with torch.no_grad():
        base.A.copy_(torch.as_tensor(A))
    small, rep = low_rank(base, 2, "svd", repair=False, **SOLVE)
    assert rep.relative_error < 1e-13
    u = _inputs(3)
    with torch.no_grad():
        np.testing.assert_allclose(small(u).numpy(), base(u).numpy(), atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- error vs rank


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_svd_error_decreases_with_rank_and_matches_eckart_young(seed):
    m = _model(seed, n=10)
    s = np.linalg.svd(_A(m), compute_uv=False)
    errs = []
    for k in range(1, 11):
        small, rep = low_rank(m, k, "svd", repair=False)
        assert not rep.repaired
        ref = (s[k] / s[0]) if k < 10 else 0.0
        assert rep.relative_error == pytest.approx(ref, abs=1e-12)
        np.testing.assert_allclose(rep.singular_values, s, rtol=1e-12, atol=1e-15)
        # the factors really have that error (independent of the report)
        E = _A(m) - small.dense_matrix().numpy()
        assert np.linalg.norm(E, 2) / s[0] == pytest.approx(ref, abs=1e-12)
        errs.append(rep.relative_error)
    assert all(a >= b - 1e-15 for a, b in zip(errs, errs[1:], strict=False))
    assert errs[-1] < 1e-13


@pytest.mark.parametrize("seed", [0, 1])
def test_balanced_weighted_error_decreases_with_rank(seed):
    m = _model(seed, n=8)
    S_o, S_c = _gramian_weights(_A(m), m.B.detach().numpy(), m.C.detach().numpy(),
                                float(m.activation.lipschitz))
    ws = np.linalg.svd(S_o @ _A(m) @ S_c, compute_uv=False)
    prev = math.inf
    for k in range(1, 9):
        small, rep = low_rank(m, k, "balanced")
        X = small.dense_matrix().numpy() / rep.rescaled ** 2  # the truncation before any repair
        werr = np.linalg.norm(S_o @ (_A(m) - X) @ S_c, 2)
        np.testing.assert_allclose(rep.weighted_singular_values, ws, rtol=1e-6, atol=1e-12 * ws[0])
        if k < 8:
            assert werr == pytest.approx(ws[k], rel=1e-6, abs=1e-12 * ws[0])
            assert rep.weighted_error == pytest.approx(werr, rel=1e-6, abs=1e-12 * ws[0])
        assert werr <= prev * (1 + 1e-9) + 1e-15
        prev = werr


# ----------------------------------------------------------------------------- balanced vs svd


def _weighted_errors(m, k):
    S_o, S_c = _gramian_weights(_A(m), m.B.detach().numpy(), m.C.detach().numpy(),
                                float(m.activation.lipschitz))
    out = {}
    for method in ("svd", "balanced"):
        small, rep = low_rank(m, k, method)
        X = small.dense_matrix().numpy() / rep.rescaled ** 2
        out[method] = np.linalg.norm(S_o @ (_A(m) - X) @ S_c, 2)
    return out


def test_balanced_beats_svd_where_weighting_matters():
    # inputs excite only states 0-1, the output reads only states 0-1; A's largest singular
    # directions live on states 4-7 (invisible to the input-output map): svd keeps those,
    # balanced keeps the block the inputs and outputs see.
    n = 8
    g = np.random.default_rng(7)
    B = np.zeros((n, 2))
    B[0, 0] = B[1, 1] = 1.0
    C = np.zeros((1, n))
    C[0, :2] = 1.0
    m = _model(7, n=n, p=2, q=1, B=B, C=C)
    A = 0.02 * g.standard_normal((n, n))
    A[4:, 4:] += 0.3 * np.eye(4)[::-1]
    A[:2, :2] += np.array([[0.1, 0.05], [0.0, 0.1]])
    with torch.no_grad():
        m.A.copy_(torch.as_tensor(A))
    e = _weighted_errors(m, 2)
    assert e["balanced"] < 0.5 * e["svd"]
    # and the outputs of a linear (identity) version agree better
    lin = idlkit.ImplicitModel.from_matrices(m.A.detach(), m.B.detach(), m.C.detach(), m.D.detach(),
                                             m.b.detach(), m.d.detach(), activation="identity",
                                             wellposedness="pf", **SOLVE)
    u = _inputs(7, p=2, m=64)
    errs = {}
    with torch.no_grad():
        y = lin(u)
        for method in ("svd", "balanced"):
            small, _ = low_rank(lin, 2, method, **SOLVE)
            errs[method] = float((small(u) - y).abs().max())
    assert errs["balanced"] < errs["svd"]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 5))
def test_balanced_never_worse_in_its_weighted_norm(seed, k):
    m = _model(seed, n=6, nuc=None, pf=0.9)
    e = _weighted_errors(m, k)
    assert e["balanced"] <= e["svd"] * (1 + 1e-7) + 1e-14


# ----------------------------------------------------------------------------- certificate


@pytest.mark.parametrize("method", ["svd", "balanced"])
def test_certificate_and_repair(method):
    m = _model(0, nuc=None, pf=0.9)  # dense-certified, but the SVD split of rank 5 is not
    with pytest.raises(WellPosednessError, match=r"rank-5.*repair=True"):
        low_rank(m, 5, method, repair=False)
    small, rep = low_rank(m, 5, method)
    assert rep.repaired and rep.split == "sqrt"
    L, R = small.L.detach().numpy(), small.R.detach().numpy()
    value = _rho(np.abs(R).T @ np.abs(L))  # gamma = 1
    assert rep.certificate == pytest.approx(value, rel=1e-10)
    assert rep.certificate <= rep.kappa * (1 + 1e-12) and rep.certificate_before > rep.kappa
    assert rep.rescaled == pytest.approx(math.sqrt(rep.kappa / rep.certificate_before))
    if method == "svd":
        assert small.approximation.rescaled == rep.rescaled
        assert small.approximation.pf == rep.certificate_before
    else:
        assert small.approximation is None
    # the repaired model is the truncation scaled by rescaled^2
    if method == "svd":
        U, s, Vt = np.linalg.svd(_A(m))
        X = (U[:, :5] * s[:5]) @ Vt[:5]
        np.testing.assert_allclose(small.dense_matrix().numpy(), rep.rescaled ** 2 * X, atol=1e-13)
        assert rep.truncation_error == pytest.approx(s[5] / s[0], rel=1e-10)
        E = _A(m) - rep.rescaled ** 2 * X
        assert rep.relative_error == pytest.approx(np.linalg.norm(E, 2) / s[0], rel=1e-10)
    assert small.wellposedness == "pf" and small.certificate(dense=False).holds
    with torch.no_grad():
        small(_inputs(0))  # the declared check passes on forward


@pytest.mark.parametrize("method", ["svd", "balanced"])
def test_full_rank_uses_the_exact_identity_split_when_the_svd_split_fails(method):
    m = _model(0, nuc=None, pf=0.9)
    small, rep = low_rank(m, 8, method, repair=False, **SOLVE)
    assert rep.split == "identity" and not rep.repaired
    np.testing.assert_allclose(small.L.detach().numpy(), _A(m), atol=0)
    assert rep.certificate == pytest.approx(0.9, rel=1e-10)  # the dense PF value
    u = _inputs(0)
    with torch.no_grad():
        np.testing.assert_allclose(small(u).numpy(), m(u).numpy(), atol=1e-10, rtol=0)
    # when even the dense value exceeds kappa, full rank is repaired by rescaling
    with pytest.raises(WellPosednessError, match="rank-8"):
        low_rank(m, 8, method, repair=False, kappa=0.8)
    small2, rep2 = low_rank(m, 8, method, kappa=0.8)
    assert rep2.repaired and rep2.certificate <= 0.8 * (1 + 1e-12)


@pytest.mark.parametrize("method", ["svd", "balanced"])
def test_certificate_holds_without_repair_when_reported(method):
    m = _model(5, nuc=None, pf=0.9, act="sigmoid")
    for k in (1, 3, 6):
        small, rep = low_rank(m, k, method, kappa=0.9)
        L, R = small.L.detach().numpy(), small.R.detach().numpy()
        assert 0.25 * _rho(np.abs(R).T @ np.abs(L)) <= 0.9 * (1 + 1e-12)
        assert rep.repaired == (rep.certificate_before > 0.9 * (1 + 1e-12))


# ----------------------------------------------------------------------------- Thm 5.1


def _check_bound(m, k, method, u):
    small, rep = low_rank(m, k, method, u=u, **SOLVE)
    if rep.state_bound is None:
        assert rep.state_bound_note and "Thm 5.1" in rep.state_bound_note
        return None
    with torch.no_grad():
        diff = (small.equilibrium(u) - m.equilibrium(u)).abs().numpy()
    bound = rep.state_bound.numpy()
    assert bound.shape == diff.shape
    assert (diff <= bound + 1e-9).all(), float((diff - bound).max())
    return diff, bound


@pytest.mark.parametrize("method", ["svd", "balanced"])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "identity"])
def test_thm51_bound_holds(method, act):
    m = _model(11, act=act, nuc=0.6)
    got = 0
    for k in (1, 3, 5, 8):
        for scale in (0.1, 1.0, 10.0):
            r = _check_bound(m, k, method, _inputs(k, scale=scale, m=32))
            got += r is not None
    assert got >= 6  # the theorem applied in most cases: the test is not vacuous


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 6),
       method=st.sampled_from(["svd", "balanced"]), act=st.sampled_from(["relu", "tanh"]),
       scale=st.sampled_from([0.5, 3.0, 30.0]))
def test_thm51_bound_never_violated(seed, k, method, act, scale):
    m = _model(seed, n=6, act=act, nuc=0.5)
    _check_bound(m, k, method, _inputs(seed, scale=scale, m=24))


def test_thm51_bound_is_zero_at_full_rank_and_absent_without_u():
    m = _model(2)
    _, rep = low_rank(m, 8, u=_inputs(2))
    assert rep.max_state_bound < 1e-12
    _, rep2 = low_rank(m, 4)
    assert rep2.state_bound is None and rep2.state_bound_note is None
    assert "rank-4" in str(rep2)


# ----------------------------------------------------------------------------- errors


def test_typed_errors():
    m = _model(0)
    with pytest.raises(ConfigurationError, match="rank"):
        low_rank(m, 0)
    with pytest.raises(ConfigurationError, match=r"hidden = 8"):
        low_rank(m, 9)
    with pytest.raises(ConfigurationError, match="rank"):
        low_rank(m, 2.0)
    with pytest.raises(ConfigurationError, match="method"):
        low_rank(m, 2, "pca")
    with pytest.raises(ConfigurationError, match="ImplicitModel"):
        low_rank(torch.nn.Linear(3, 2), 1)
    with pytest.raises(ConfigurationError, match="ImplicitModel"):
        rank_step(torch.nn.Linear(3, 2), 0.1)
    bad = _model(0)
    with torch.no_grad():
        bad.A[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):
        low_rank(bad, 2)
    with pytest.raises(NonFiniteError):
        rank_step(bad, 0.1)
    with pytest.raises(NonFiniteError):
        nuclear_norm(bad.A)
    with pytest.raises(ConfigurationError, match="lam"):
        rank_step(m, -1.0)
    with pytest.raises(ConfigurationError, match="lam"):
        rank_step(m, float("nan"))
    with pytest.raises(ShapeError):
        nuclear_norm(torch.zeros(2, 2, 2))


def test_balanced_needs_a_stable_A():
    A = torch.diag(torch.tensor([1.05, 0.1, 0.1], dtype=F64))
    m = idlkit.ImplicitModel.from_matrices(A, torch.ones(3, 1, dtype=F64), torch.ones(1, 3, dtype=F64),
                                           torch.zeros(1, 1, dtype=F64), activation="relu",
                                           wellposedness=None)
    with pytest.raises(ConfigurationError, match=r"rho\(gamma A\) = 1.05.*method='svd'"):
        low_rank(m, 1, "balanced")


# ----------------------------------------------------------------------------- training


def test_nuclear_norm_value_and_gradient():
    g = np.random.default_rng(0)
    A = torch.tensor(g.standard_normal((6, 6)), dtype=F64, requires_grad=True)
    val = nuclear_norm(A)
    U, s, Vt = np.linalg.svd(A.detach().numpy())
    assert float(val) == pytest.approx(s.sum(), rel=1e-12)
    val.backward()
    np.testing.assert_allclose(A.grad.numpy(), U @ Vt, atol=1e-10)
    m = _model(0)
    assert float(nuclear_norm(m)) == pytest.approx(0.8, rel=1e-12)


@pytest.mark.parametrize("kind", ["inf", "pf", "mu"])
def test_rank_step_lowers_rank_and_keeps_certificate(kind):
    g = np.random.default_rng(1)
    n = 10
    A = g.standard_normal((n, n))
    A *= 0.9 / np.abs(A).sum(axis=1).max()  # ||A||_inf = 0.9: inside every set below
    m = idlkit.ImplicitModel.from_matrices(torch.as_tensor(A), torch.ones(n, 2, dtype=F64),
                                           torch.ones(1, n, dtype=F64), torch.zeros(1, 2, dtype=F64),
                                           activation="relu", wellposedness=kind, kappa=0.95)
    s = np.linalg.svd(A, compute_uv=False)
    lam = float(s[4])  # singular values 5..10 are <= lam
    new_rank = rank_step(m, lam)
    expected = int((s > lam * (1 + 1e-12)).sum())
    assert new_rank == expected == 4
    A1 = m.A.detach().numpy()
    assert np.linalg.matrix_rank(A1, tol=1e-10 * s[0]) == 4
    s1 = np.linalg.svd(A1, compute_uv=False)
    shrunk = np.maximum(s - lam, 0)
    c = s1[0] / shrunk[0]  # at most one rescaling back into the set
    assert c <= 1 + 1e-12
    np.testing.assert_allclose(s1, c * shrunk, atol=1e-12)
    if kind == "inf":
        assert np.abs(A1).sum(axis=1).max() <= 0.95 * (1 + 1e-12)
    elif kind == "pf":
        assert _rho(np.abs(A1)) <= 0.95 * (1 + 1e-12)
    else:
        mu = max(A1[i, i] + np.abs(np.delete(A1[i], i)).sum() for i in range(n))
        assert mu <= 0.95 * (1 + 1e-12)
    cert = m.certificate()
    assert cert.holds[kind] if kind in cert.holds else True
    with torch.no_grad():
        m(torch.ones(3, 2, dtype=F64))  # the declared check passes


def _mu(A: np.ndarray) -> float:
    return max(A[i, i] + np.abs(np.delete(A[i], i)).sum() for i in range(len(A)))


# matrices on the boundary of their set whose soft-thresholding leaves it (found by a search:
# shrinking singular values lowers ||A||_2 but can raise lambda_pf(|A|) and mu_inf(A))
LEAVES = {
    "pf": (np.array([[0.22432181, 1.95498208, 0.0], [-0.35263458, 0.0, 0.64659154],
                     [0.0, 0.0, -0.67929003]]), 0.023819157549817),
    "mu": (np.array([[-10.75128065, 7.75179242, 0.0, 0.0],
                     [0.0, -11.79083587, -4.0326012, 6.76252874],
                     [-0.22814591, -1.68465723, -12.56142742, 0.0],
                     [4.55476096, 0.0, 0.0, -3.60476096]]), 13.272418142004417),
}


@pytest.mark.parametrize("kind", ["pf", "mu"])
def test_rank_step_rescales_when_thresholding_leaves_the_set(kind):
    value = (lambda M: _rho(np.abs(M))) if kind == "pf" else _mu
    A, lam = LEAVES[kind]
    A = A * 0.95 / value(A)
    n = A.shape[0]
    U, s, Vt = np.linalg.svd(A)
    T = (U * np.maximum(s - lam, 0)) @ Vt
    assert value(T) > 0.95 * (1 + 1e-6)  # plain thresholding leaves the set
    m = idlkit.ImplicitModel.from_matrices(torch.as_tensor(A), torch.ones(n, 1, dtype=F64),
                                           torch.ones(1, n, dtype=F64), torch.zeros(1, 1, dtype=F64),
                                           wellposedness=kind, kappa=0.95)
    r = rank_step(m, lam)
    A1 = m.A.detach().numpy()
    assert r == int((s > lam).sum()) == np.linalg.matrix_rank(A1, tol=1e-10 * s[0])
    assert value(A1) <= 0.95 * (1 + 1e-12)
    assert value(A1) == pytest.approx(0.95, rel=1e-9)  # rescaled onto the boundary, not further
    np.testing.assert_allclose(A1, T * 0.95 / value(T), rtol=1e-9, atol=1e-12)


def test_rank_step_zero_and_full_threshold():
    m = _model(0)
    A0 = _A(m).copy()
    assert rank_step(m, 0.0) == 8
    np.testing.assert_allclose(_A(m), A0, atol=1e-14)
    assert rank_step(m, 1e9) == 0
    assert np.abs(_A(m)).max() == 0.0


def test_rank_step_on_a_low_rank_model():
    g = np.random.default_rng(9)
    n, k = 10, 6
    L, R = g.standard_normal((n, k)), g.standard_normal((n, k))
    c = math.sqrt(0.9 / _rho(np.abs(R).T @ np.abs(L)))
    t = lambda M: torch.as_tensor(M, dtype=F64)  # noqa: E731
    m = LowRankImplicitModel.from_factors(t(L * c), t(R * c), t(g.standard_normal((n, 2))),
                                          t(g.standard_normal((1, n))), t(np.zeros((1, 2))),
                                          kappa=0.95, **SOLVE)
    X = m.dense_matrix().numpy()
    s = np.linalg.svd(X, compute_uv=False)[:k]
    lam = float(s[2])
    assert float(nuclear_norm(m)) == pytest.approx(s.sum(), rel=1e-12)
    assert rank_step(m, lam) == 2
    X1 = m.dense_matrix().numpy()
    s1 = np.linalg.svd(X1, compute_uv=False)
    assert np.linalg.matrix_rank(X1, tol=1e-10 * s[0]) == 2
    shrunk = np.maximum(s - lam, 0)
    np.testing.assert_allclose(s1[:k], s1[0] / shrunk[0] * shrunk, atol=1e-12)
    assert s1[0] <= shrunk[0] * (1 + 1e-12)
    L1, R1 = m.L.detach().numpy(), m.R.detach().numpy()
    assert _rho(np.abs(R1).T @ np.abs(L1)) <= 0.95 * (1 + 1e-12)
    assert m.L.shape == (n, k)
    with torch.no_grad():
        m(torch.ones(3, 2, dtype=F64))
    assert rank_step(m, 1e9) == 0


def test_sparse_model_is_factorised_densely():
    m = _model(4)
    A = m.A.detach().clone()
    A[A.abs() < 0.02] = 0
    sp = idlkit.ImplicitModel.from_matrices(A.to_sparse_csr(), m.B.detach(), m.C.detach(),
                                            m.D.detach(), m.b.detach(), m.d.detach(),
                                            wellposedness="inf", **SOLVE)
    dense = idlkit.ImplicitModel.from_matrices(A, m.B.detach(), m.C.detach(), m.D.detach(),
                                               m.b.detach(), m.d.detach(), wellposedness="inf", **SOLVE)
    for method in ("svd", "balanced"):
        a, ra = low_rank(sp, 3, method)
        b, rb = low_rank(dense, 3, method)
        np.testing.assert_allclose(a.dense_matrix().numpy(), b.dense_matrix().numpy(), atol=1e-12)
        assert ra.relative_error == pytest.approx(rb.relative_error, rel=1e-10)
    with pytest.raises(ConfigurationError, match="dense"):
        rank_step(sp, 0.1)
