"""Well-posedness: norms, PF eigenvalue, projections (vs cvxpy), certificates."""

from __future__ import annotations

import itertools
import math
import signal
import time
import warnings

import cvxpy as cp
import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from idlkit import wellposed as wp
from idlkit.activations import BlockMax, Blockwise, LeakyReLU, SoftMax
from idlkit.errors import ConfigurationError, IdlError, ShapeError, WellPosednessError

seeds = st.integers(0, 2**31 - 1)


def _rand(seed: int, n: int, k: int | None = None, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n if k is None else k)) * scale
    # sprinkle exact zeros so that sign(0) and sparse rows are exercised
    A[rng.random(A.shape) < 0.15] = 0.0
    return A


# ----------------------------------------------------------------------------- reference solvers


def _cvx_row(a: np.ndarray, constraint) -> np.ndarray:
    """argmin ||x - a||_2^2 s.t. constraint(x), by Clarabel."""
    x = cp.Variable(a.shape[0])
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - a)), [constraint(x)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "solution may be inaccurate": checked below
        try:
            prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11,
                       tol_feas=1e-11)
        except cp.error.SolverError:
            pass
        if prob.status != cp.OPTIMAL:
            prob.solve(solver=cp.CLARABEL)
    assert prob.status == cp.OPTIMAL, prob.status
    return x.value


def _cvx_inf_ball(A: np.ndarray, kappa: float) -> np.ndarray:
    """Projection onto {||X||_inf <= kappa}: the problem separates over rows (one l1
    constraint per row); rows already inside are their own projection."""
    X = A.copy()
    for i, a in enumerate(A):
        if np.abs(a).sum() > kappa:
            X[i] = _cvx_row(a, lambda x: cp.norm(x, 1) <= kappa)
    return X


def _cvx_mu_set(A: np.ndarray, gamma: float) -> np.ndarray:
    """Projection onto {mu_inf(X) <= gamma}: one constraint per row,
    x_ii + sum_{j != i} |x_ij| <= gamma."""
    n = A.shape[0]
    X = A.copy()
    for i, a in enumerate(A):
        off = np.arange(n) != i
        if a[i] + np.abs(a[off]).sum() > gamma:
            X[i] = _cvx_row(a, lambda x, i=i, off=off: x[i] + cp.norm(x[off], 1) <= gamma
                            if n > 1 else x[i] <= gamma)
    return X


def _inf_norm_loop(A: np.ndarray) -> float:
    return max((sum(abs(x) for x in row) for row in A), default=0.0)


def _mu_inf_loop(A: np.ndarray) -> float:
    n = A.shape[0]
    return max(A[i, i] + sum(abs(A[i, j]) for j in range(n) if j != i) for i in range(n))


def _spectral_radius(M: np.ndarray) -> float:
    return float(np.abs(scipy.linalg.eigvals(M)).max()) if M.size else 0.0


# ----------------------------------------------------------------------------- norms


@given(seed=seeds, n=st.integers(1, 9), k=st.integers(1, 9))
def test_inf_norm_direct_formula(seed, n, k):
    A = _rand(seed, n, k)
    assert wp.inf_norm(torch.tensor(A)) == pytest.approx(_inf_norm_loop(A), rel=1e-13, abs=0)
    assert wp.inf_norm(A) == pytest.approx(_inf_norm_loop(A), rel=1e-13, abs=0)
    # float32 tensors are measured in float64
    A32 = torch.tensor(A, dtype=torch.float32)
    assert wp.inf_norm(A32) == pytest.approx(_inf_norm_loop(A32.double().numpy()), rel=1e-13)
    # sparse tensors too
    assert wp.inf_norm(torch.tensor(A).to_sparse()) == pytest.approx(_inf_norm_loop(A), rel=1e-13)


@given(seed=seeds, n=st.integers(1, 9), shift=st.floats(-5, 5))
def test_mu_inf_direct_formula(seed, n, shift):
    A = _rand(seed, n) + shift * np.eye(n)
    assert wp.mu_inf(torch.tensor(A)) == pytest.approx(_mu_inf_loop(A), rel=1e-12, abs=1e-14)
    assert wp.mu_inf(A) <= wp.inf_norm(A) + 1e-14


def test_mu_inf_rejects_non_square():
    with pytest.raises(ShapeError):
        wp.mu_inf(np.zeros((2, 3)))


# ----------------------------------------------------------------------------- PF eigenvalue


def _nonneg(seed: int, n: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    M = rng.random((n, n)) * (rng.random((n, n)) < 0.6)
    if kind == "reducible" and n >= 2:
        k = int(rng.integers(1, n))
        M[k:, :k] = 0.0  # block upper triangular: reducible
        perm = rng.permutation(n)
        M = M[np.ix_(perm, perm)]  # hide the structure behind a symmetric permutation
    elif kind == "nilpotent":
        M = np.triu(M, k=1)
    elif kind == "permutation":
        M = np.eye(n)[np.random.default_rng(seed).permutation(n)] * (1 + rng.random())
    elif kind == "diagonal":
        M = np.diag(rng.random(n))
    return M


@given(seed=seeds, n=st.integers(1, 12),
       kind=st.sampled_from(["general", "reducible", "nilpotent", "permutation", "diagonal"]))
def test_pf_eigenvalue_small_matches_eigvals(seed, n, kind):
    M = _nonneg(seed, n, kind)
    assert wp.pf_eigenvalue(M) == pytest.approx(_spectral_radius(M), rel=1e-9, abs=1e-12)
    assert wp.pf_eigenvalue(torch.tensor(M)) == pytest.approx(_spectral_radius(M), rel=1e-9,
                                                              abs=1e-12)


def test_pf_eigenvalue_rejects_negative_and_non_square():
    with pytest.raises(ConfigurationError):
        wp.pf_eigenvalue(np.array([[0.5, -0.1], [0.0, 0.2]]))
    with pytest.raises(ShapeError):
        wp.pf_eigenvalue(np.ones((2, 3)))
    assert wp.pf_eigenvalue(np.zeros((0, 0))) == 0.0


def _true_pf_sparse(M: np.ndarray) -> float:
    vals = scipy.sparse.linalg.eigs(scipy.sparse.csr_matrix(M), k=2, which="LM",
                                    return_eigenvectors=False)
    return float(np.abs(vals).max())


def _sparse_nonneg(seed: int, n: int = 1100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    M = rng.random((n, n)) * (rng.random((n, n)) < 0.01)
    M[np.arange(n), (np.arange(n) + 1) % n] += 0.5  # a Hamiltonian cycle: irreducible
    return M


def test_pf_eigenvalue_large_n_irreducible_is_tight_upper_bound():
    M = _sparse_nonneg(0)
    true = _true_pf_sparse(M)
    up = wp.pf_eigenvalue(M)
    assert up >= true * (1 - 1e-12)
    assert up <= true * (1 + 1e-6)


class _Timeout(Exception):
    pass


def _timed_with_limit(fn, seconds: float):
    def handler(signum, frame):
        raise _Timeout

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return out, time.perf_counter() - t0


def test_pf_eigenvalue_large_n_reducible_is_tight_upper_bound_and_stops():
    """A reducible matrix (a zero row, as any sparse random matrix may have).

    The Collatz-Wielandt lower bound ``min_i (Mv)_i / v_i`` is 0 forever here, so a
    stopping rule on ``upper - lower`` never fires and the loop runs to ``max_iter``
    although the upper bound converged as fast as for the irreducible matrix. The
    time is compared with that irreducible matrix of the same size, measured alike.
    """
    M_irr = _sparse_nonneg(1)
    M = M_irr.copy()
    M[17, :] = 0.0  # a zero row: reducible
    true = _true_pf_sparse(M)
    _, t_irr = _timed_with_limit(lambda: wp.pf_eigenvalue(M_irr), 60.0)
    limit = 15.0
    try:
        up, t_red = _timed_with_limit(lambda: wp.pf_eigenvalue(M), limit)
    except _Timeout:
        pytest.fail(f"pf_eigenvalue on a reducible 1100x1100 matrix still running after "
                    f"{limit:g} s (the irreducible one took {t_irr:.3f} s)")
    assert up >= true * (1 - 1e-12)
    assert up <= true * (1 + 1e-6)
    assert t_red <= 20 * t_irr + 0.25, (t_red, t_irr)


def test_pf_eigenvalue_large_n_bounded_iterations_still_upper_bound():
    rng = np.random.default_rng(2)
    n = 1100
    M = np.zeros((n, n))
    M[:600, :600] = rng.random((600, 600)) * (rng.random((600, 600)) < 0.01)
    M[600:, 600:] = rng.random((500, 500)) * (rng.random((500, 500)) < 0.02)
    M[:600, 600:] = rng.random((600, 500)) * (rng.random((600, 500)) < 0.01)
    true = _true_pf_sparse(M)
    up = wp.pf_eigenvalue(M, max_iter=300)
    assert up >= true * (1 - 1e-12)
    assert up <= true * (1 + 1e-4)


# ----------------------------------------------------------------------------- projections


inf_ball_cases = dict(seed=seeds, n=st.integers(1, 8), k=st.integers(1, 8),
                      kappa=st.floats(0.05, 3.0), scale=st.sampled_from([0.1, 0.5, 1.0, 3.0]))


@settings(max_examples=40)
@given(**inf_ball_cases)
def test_project_inf_ball_is_the_closest_point(seed, n, k, kappa, scale):
    A = _rand(seed, n, k, scale)
    P = wp.project_inf_ball(torch.tensor(A), kappa)
    assert P.dtype == torch.float64 and P.shape == A.shape
    Pn = P.numpy()
    X = _cvx_inf_ball(A, kappa)
    np.testing.assert_allclose(Pn, X, atol=1e-6, rtol=0)
    # feasible up to rounding
    assert np.abs(Pn).sum(axis=1).max() <= kappa * (1 + 1e-12)
    # optimality: no feasible point is closer (the cvxpy solution is within 1e-6)
    assert np.sum((Pn - A) ** 2) <= np.sum((X - A) ** 2) + 1e-7
    # rows already inside are returned unchanged, bit for bit
    inside = np.abs(A).sum(axis=1) <= kappa
    np.testing.assert_array_equal(Pn[inside], A[inside])
    # the input is not modified in place
    np.testing.assert_array_equal(A, _rand(seed, n, k, scale))


@settings(max_examples=200)
@given(**inf_ball_cases)
def test_project_inf_ball_is_exactly_feasible(seed, n, k, kappa, scale):
    """Feasible without tolerance: the exact (correctly rounded, math.fsum) row sums, and
    the library's own certificate (wellposed.inf_norm, numpy summation order), not only
    torch's summation order."""
    A = _rand(seed, n, k, scale)
    P = wp.project_inf_ball(torch.tensor(A), kappa)
    assert max(math.fsum(abs(x) for x in row) for row in P.numpy()) <= kappa
    assert wp.inf_norm(P) <= kappa
    assert float(P.abs().sum(dim=1).max()) <= kappa


@given(seed=seeds, n=st.integers(1, 12), kappa=st.floats(0.01, 1.0),
       scale=st.sampled_from([0.1, 1.0, 100.0]))
def test_project_inf_ball_feasible_in_float32_and_idempotent(seed, n, kappa, scale):
    A = torch.tensor(_rand(seed, n, None, scale), dtype=torch.float32)
    P = wp.project_inf_ball(A, kappa)
    assert P.dtype == torch.float32
    assert float(P.abs().sum(dim=1).max()) <= kappa
    P2 = wp.project_inf_ball(P, kappa)
    torch.testing.assert_close(P2, P, rtol=0, atol=1e-6 * kappa)


def test_project_inf_ball_rejects_bad_kappa():
    A = torch.ones(3, 3, dtype=torch.float64)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ConfigurationError):
            wp.project_inf_ball(A, bad)
    with pytest.raises(ShapeError):
        wp.project_inf_ball(torch.ones(3), 0.5)


mu_cases = dict(seed=seeds, n=st.integers(1, 8), gamma=st.floats(-2.0, 2.0),
                scale=st.sampled_from([0.1, 0.5, 1.0, 3.0]), shift=st.floats(-3.0, 3.0))


@settings(max_examples=40)
@given(**mu_cases)
def test_project_mu_set_is_the_closest_point(seed, n, gamma, scale, shift):
    A = _rand(seed, n, None, scale) + shift * np.eye(n)
    P = wp.project_mu_set(torch.tensor(A), gamma).numpy()
    assert _mu_inf_loop(P) <= gamma + 1e-12 * max(1.0, abs(gamma))  # feasible up to rounding
    X = _cvx_mu_set(A, gamma)
    np.testing.assert_allclose(P, X, atol=1e-6, rtol=0)
    assert np.sum((P - A) ** 2) <= np.sum((X - A) ** 2) + 1e-7
    # rows already in the set are unchanged
    r = np.array([A[i, i] + np.abs(np.delete(A[i], i)).sum() for i in range(n)])
    np.testing.assert_array_equal(P[r <= gamma], A[r <= gamma])


@settings(max_examples=200)
@given(**mu_cases)
def test_project_mu_set_is_exactly_feasible(seed, n, gamma, scale, shift):
    """As for the l_inf ball: the library's own mu_inf of the projection is <= gamma."""
    A = _rand(seed, n, None, scale) + shift * np.eye(n)
    P = wp.project_mu_set(torch.tensor(A), gamma)
    assert wp.mu_inf(P) <= gamma
    Pn = P.numpy()
    assert max(Pn[i, i] + math.fsum(abs(Pn[i, j]) for j in range(n) if j != i)
               for i in range(n)) <= gamma


def test_project_mu_set_errors():
    with pytest.raises(ShapeError):
        wp.project_mu_set(torch.ones(2, 3), 0.5)
    with pytest.raises(ConfigurationError):
        wp.project_mu_set(torch.ones(2, 2), math.nan)


def test_project_triangular():
    A = torch.arange(16.0).reshape(4, 4)
    torch.testing.assert_close(wp.project_triangular(A), torch.triu(A, 1))
    torch.testing.assert_close(wp.project_triangular(A, strict=False), torch.triu(A))


# ----------------------------------------------------------------------------- BLIP matrix


def _induced_norm_brute(M: np.ndarray, p_in: float, p_out: float) -> float:
    """||M||_{p_in -> p_out} by enumerating the extreme points (p_in in {1, inf})."""
    k = M.shape[1]
    if p_in == 1:
        pts = [s * e for e in np.eye(k) for s in (1.0, -1.0)]
    else:
        pts = [np.array(s) for s in itertools.product((1.0, -1.0), repeat=k)]
    return max(np.linalg.norm(M @ x, p_out) for x in pts)


@given(seed=seeds, bs=st.integers(1, 3))
def test_blip_norm_matrix_exact_pairs_and_upper_bounds(seed, bs):
    n = 3 * bs
    A = _rand(seed, n)
    sizes = (bs, bs, bs)
    for p_out, p_in in [(1.0, 1.0), (math.inf, math.inf), (math.inf, 1.0), (2.0, 1.0),
                        (1.0, math.inf), (2.0, math.inf)]:
        norms = (p_out, p_in, p_out)  # block 1 has norm p_in: check entries (0, 1), (2, 1)
        N = wp.blip_norm_matrix(A, sizes, norms)
        for i in (0, 2):
            blk = A[i * bs:(i + 1) * bs, bs:2 * bs]
            true = _induced_norm_brute(blk, p_in, p_out)
            if (p_in, p_out) == (math.inf, 1.0) or (p_in, p_out) == (math.inf, 2.0):
                assert N[i, 1] >= true - 1e-12  # documented upper bound
            else:
                assert N[i, 1] == pytest.approx(true, rel=1e-12, abs=1e-14)


# ----------------------------------------------------------------------------- check / require


@pytest.mark.parametrize("activation,gamma", [("relu", 1.0), ("tanh", 1.0), ("sigmoid", 0.25),
                                              (LeakyReLU(0.2), 1.0), ("identity", 1.0)])
@given(seed=seeds, n=st.integers(1, 7), target=st.floats(0.3, 2.0), shift=st.floats(-3, 0))
@settings(max_examples=15)
def test_check_report_fields(activation, gamma, seed, n, target, shift):
    A = _rand(seed, n)
    s = np.abs(A).sum(axis=1).max()
    A = A * (target / s if s else 1.0) + shift * np.eye(n)
    rep = wp.check(torch.tensor(A), activation)
    assert rep.dtype == "float64"
    for v in (rep.inf_norm, rep.gamma_inf, rep.pf, rep.mu_inf):
        assert type(v) is float
    assert rep.inf_norm == pytest.approx(_inf_norm_loop(A), rel=1e-12)
    assert rep.gamma_inf == gamma
    assert rep.pf == pytest.approx(_spectral_radius(gamma * np.abs(A)), rel=1e-9, abs=1e-12)
    assert rep.mu_inf == pytest.approx(_mu_inf_loop(A), rel=1e-12, abs=1e-14)
    assert rep.holds["inf"] == (gamma * rep.inf_norm < 1)
    assert rep.holds["pf"] == (rep.pf < 1)
    assert rep.holds["mu"] == (gamma * rep.mu_inf < 1)
    assert rep.margins["inf"] == pytest.approx(1 - gamma * rep.inf_norm)
    assert rep.margins["pf"] == pytest.approx(1 - rep.pf)
    assert rep.wellposed == any(rep.holds.values())
    if rep.triangular and n > 1 and A.any():  # Remark 2.6: reducible, i.e. block triangular
        reach = np.linalg.matrix_power(np.eye(n) + (A != 0), n - 1)  # up to a permutation
        assert (reach == 0).any()
    assert isinstance(str(rep), str) and "float64" in str(rep)


def test_check_declared_margin_uses_kappa():
    A = np.array([[0.2, 0.3], [-0.1, 0.4]])
    rep = wp.check(A, "relu", declared="inf", kappa=0.6)
    assert rep.declared == "inf" and rep.kappa == 0.6
    assert rep.margins["inf"] == pytest.approx(0.6 - 0.5)
    assert rep.holds["inf"] and rep.margin == pytest.approx(0.1)
    rep = wp.check(A, "relu", declared="inf", kappa=0.4)
    assert not rep.holds["inf"] and rep.margin == pytest.approx(-0.1)


def test_check_triangular_flag():
    U = np.triu(np.random.default_rng(0).standard_normal((5, 5)) * 3, 1)
    assert wp.check(U, "tanh").triangular
    Ud = U + np.diag([0.9, -5.0, 0.5, 0.0, 0.99])
    assert wp.check(Ud, "relu").triangular  # Remark 2.5: diag(A) < 1 with ReLU
    assert wp.check(Ud, LeakyReLU(0.1)).triangular
    # tanh: x = tanh(a x + c) is uniquely solvable for every c iff a <= 1 (Thm 2.8 blocks)
    assert wp.check(Ud, "tanh").triangular
    Ut = Ud.copy()
    Ut[0, 0] = 1.5
    assert not wp.check(Ut, "tanh").triangular
    Ud[2, 2] = 1.0
    assert not wp.check(Ud, "relu").triangular
    L = U.T  # lower triangular: a permutation of an upper one (Remark 2.6)
    assert wp.check(L, "relu").triangular
    C = U + U.T  # symmetric coupling: irreducible, no triangular structure
    assert not wp.check(C, "relu").triangular


def test_check_blip_softmax_pf_uses_block_norms():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((6, 6)) * 0.3
    rep = wp.check(A, SoftMax(2))
    N = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            N[i, j] = np.abs(A[2 * i:2 * i + 2, 2 * j:2 * j + 2]).sum(axis=0).max()  # 1 -> 1
    assert rep.gamma_inf == 0.5
    assert rep.pf == pytest.approx(_spectral_radius(N), rel=1e-9)
    assert math.isnan(rep.mu_inf)
    rep = wp.check(A, BlockMax(3))
    N = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            N[i, j] = np.abs(A[3 * i:3 * i + 3, 3 * j:3 * j + 3]).sum(axis=1).max()  # inf->inf
    assert rep.pf == pytest.approx(_spectral_radius(N), rel=1e-9)
    mixed = Blockwise([(2, "relu"), (4, SoftMax(2))])
    rep = wp.check(A, mixed)
    assert rep.gamma_inf == 1.0 and rep.pf >= 0


def test_require_raises_with_numbers():
    A = np.full((3, 3), 0.5)  # ||A||_inf = 1.5 = lambda_pf = mu_inf
    with pytest.raises(WellPosednessError) as exc:
        wp.require(A, "relu")
    assert "1.5" in str(exc.value)
    assert isinstance(exc.value, IdlError)
    with pytest.raises(WellPosednessError):
        wp.require(A, "relu", condition="inf")
    # a large negative diagonal: mu-well-posed but ||A||_inf > 1
    M = np.array([[-4.0, 0.5], [0.3, -3.0]])
    rep = wp.require(M, "relu", condition="mu")
    assert rep.mu_inf == pytest.approx(_mu_inf_loop(M))
    with pytest.raises(WellPosednessError):
        wp.require(M, "relu", condition="inf")
    with pytest.raises(WellPosednessError):
        wp.require(np.full((2, 2), 0.3), "relu", condition="inf", kappa=0.5)
    ok = wp.require(np.full((2, 2), 0.2), "relu", condition="inf", kappa=0.5)
    assert ok.holds["inf"]


def test_check_kappa():
    assert wp.check_kappa(0.5) == 0.5
    for bad in (0, 1, 1.5, -0.1, math.nan, "x", None):
        with pytest.raises(ConfigurationError):
            wp.check_kappa(bad)
