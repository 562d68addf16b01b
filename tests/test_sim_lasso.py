"""Tests of idlkit.sim.lasso: constrained LASSO P(kappa) by bisection on the LASSO path (thesis Alg. 1-2).

References are cvxpy + Clarabel solves of the same problem at tight tolerances.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

cp = pytest.importorskip("cvxpy")

from idlkit.errors import ConfigurationError, IdlError, NonFiniteError, ShapeError  # noqa: E402
from idlkit.sim.lasso import (  # noqa: E402
    constrained_lasso,
    constrained_lasso_rows,
    gram,
    lasso_cd,
)


def _ref(F: np.ndarray, z: np.ndarray, kappa: float, mask: np.ndarray) -> tuple[float, np.ndarray]:
    w = cp.Variable(F.shape[1])
    cons = [cp.norm1(w[np.flatnonzero(mask)]) <= kappa] if mask.any() else []
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(z - F @ w)), cons)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 'may be inaccurate' at these tight tolerances
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    # our own KKT check is the certificate; the reference only has to be close
    assert prob.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)
    return float(prob.value), np.asarray(w.value)


def _check_kkt(G, c, w, lam, kappa, mask, tol=1e-7):
    """KKT of P(kappa) (Lemma 2): stationarity, primal/dual feasibility, complementary slackness."""
    r = c - G @ w
    scale = max(np.max(np.abs(c)), lam, 1.0)
    l1 = np.sum(np.abs(w[mask]))
    assert l1 <= kappa + 1e-8
    assert lam >= 0.0
    assert abs(lam * (kappa - l1)) <= tol * scale * max(kappa, 1.0)
    free = ~mask
    assert np.all(np.abs(r[free]) <= tol * scale)
    nz = mask & (w != 0)
    assert np.all(np.abs(r[nz] - lam * np.sign(w[nz])) <= tol * scale)
    zero = mask & (w == 0)
    assert np.all(np.abs(r[zero]) <= lam + tol * scale)


def _problem(seed: int, m: int, n: int, free_frac: float = 0.0):
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((m, n))
    z = F @ (rng.standard_normal(n) * (rng.random(n) < 0.5)) + 0.1 * rng.standard_normal(m)
    mask = rng.random(n) >= free_frac
    return F, z, mask


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kappa", [0.05, 0.7, 3.0])
def test_matches_cvxpy_random(seed: int, kappa: float) -> None:
    rng = np.random.default_rng(100 + seed)
    m, n = int(rng.integers(15, 60)), int(rng.integers(5, 35))
    F, z, mask = _problem(seed, m, n, free_frac=0.3 if seed % 2 else 0.0)
    G, c = gram(F), F.T @ z
    res = constrained_lasso(G, c, kappa, mask, zz=float(z @ z))
    ref, _ = _ref(F, z, kappa, mask)
    assert res.status in ("optimal", "inactive")
    assert abs(res.objective - 0.5 * np.sum((z - F @ res.w) ** 2)) <= 1e-9 * max(1.0, abs(ref))
    assert abs(res.objective - ref) <= 1e-6 * max(abs(ref), 1e-12)
    assert res.l1 <= kappa + 1e-8
    _check_kkt(G, c, res.w, res.lam, kappa, mask)
    assert res.kkt <= 1e-8


def test_singular_gram_underdetermined() -> None:
    F, z, mask = _problem(3, 8, 20)  # m < n: G has rank 8
    G, c = gram(F), F.T @ z
    for kappa in (0.1, 1.0):
        res = constrained_lasso(G, c, kappa, mask, zz=float(z @ z))
        ref, _ = _ref(F, z, kappa, mask)
        assert abs(res.objective - ref) <= 1e-6 * abs(ref) + 1e-10
        _check_kkt(G, c, res.w, res.lam, kappa, mask)


def test_singular_gram_duplicate_and_zero_columns() -> None:
    F, z, mask = _problem(4, 30, 10)
    F = np.column_stack([F, F[:, 0], np.zeros(30)])  # duplicate column and a zero column
    mask = np.ones(12, dtype=bool)
    G, c = gram(F), F.T @ z
    res = constrained_lasso(G, c, 0.5, mask, zz=float(z @ z))
    ref, _ = _ref(F, z, 0.5, mask)
    assert abs(res.objective - ref) <= 1e-6 * abs(ref)
    assert res.w[-1] == 0.0
    _check_kkt(G, c, res.w, res.lam, 0.5, mask)


def test_ill_conditioned() -> None:
    rng = np.random.default_rng(7)
    F = rng.standard_normal((40, 15)) @ np.diag(np.logspace(0, -4, 15))
    z = rng.standard_normal(40)
    mask = np.ones(15, dtype=bool)
    G, c = gram(F), F.T @ z
    res = constrained_lasso(G, c, 2.0, mask, zz=float(z @ z))
    ref, _ = _ref(F, z, 2.0, mask)
    assert abs(res.objective - ref) <= 1e-6 * abs(ref)
    assert res.l1 <= 2.0 + 1e-8


def test_large_kappa_is_least_squares() -> None:
    F, z, mask = _problem(5, 50, 10)
    G, c = gram(F), F.T @ z
    res = constrained_lasso(G, c, 1e6, mask)
    w_ls = np.linalg.lstsq(F, z, rcond=None)[0]
    assert res.status == "inactive" and res.lam == 0.0 and res.bisections == 0
    np.testing.assert_allclose(res.w, w_ls, rtol=1e-9, atol=1e-10)


def test_tiny_kappa() -> None:
    F, z, mask = _problem(6, 40, 12)
    G, c = gram(F), F.T @ z
    kappa = 1e-7
    res = constrained_lasso(G, c, kappa, mask, zz=float(z @ z))
    ref, _ = _ref(F, z, kappa, mask)
    assert res.status == "optimal"
    assert abs(res.l1 - kappa) <= 1e-12
    assert abs(res.objective - ref) <= 1e-6 * abs(ref)
    assert res.lam <= np.max(np.abs(c)) + 1e-12
    _check_kkt(G, c, res.w, res.lam, kappa, mask)


def test_unpenalised_coordinates() -> None:
    F, z, _ = _problem(8, 50, 14)
    mask = np.arange(14) < 9  # last 5 coordinates (the "B" part) are free
    G, c = gram(F), F.T @ z
    res = constrained_lasso(G, c, 0.2, mask, zz=float(z @ z))
    ref, _ = _ref(F, z, 0.2, mask)
    assert abs(res.objective - ref) <= 1e-6 * abs(ref)
    assert np.max(np.abs((c - G @ res.w)[~mask])) <= 1e-9 * np.max(np.abs(c))
    # the free part is not shrunk: a huge budget is not needed to use it
    assert np.sum(np.abs(res.w[~mask])) > 0.2
    # no penalised coordinate at all: plain least squares
    res0 = constrained_lasso(G, c, 0.2, np.zeros(14, dtype=bool))
    np.testing.assert_allclose(res0.w, np.linalg.lstsq(F, z, rcond=None)[0], rtol=1e-9, atol=1e-10)


def test_lasso_cd_kkt_and_warm_start() -> None:
    F, z, mask = _problem(9, 60, 30)
    G, c = gram(F), F.T @ z
    lam = 0.1 * np.max(np.abs(c))
    cold = lasso_cd(G, c, lam, mask=mask)
    assert cold.converged
    r = c - G @ cold.w
    nz = cold.w != 0
    assert np.max(np.abs(r[nz] - lam * np.sign(cold.w[nz]))) <= 1e-8 * np.max(np.abs(c))
    assert np.all(np.abs(r[~nz]) <= lam * (1 + 1e-8))
    near = lasso_cd(G, c, 0.95 * lam, mask=mask)
    warm = lasso_cd(G, c, lam, w0=near.w, mask=mask)
    assert warm.iterations < cold.iterations
    np.testing.assert_allclose(warm.w, cold.w, atol=1e-8)


def test_warm_start_reduces_iterations() -> None:
    tot_warm = tot_cold = 0
    for seed in range(4):
        F, z, mask = _problem(20 + seed, 80, 40)
        G, c = gram(F), F.T @ z
        kappa = 0.3 * np.sum(np.abs(np.linalg.lstsq(F, z, rcond=None)[0]))
        warm = constrained_lasso(G, c, kappa, mask, warm_start=True, zz=float(z @ z))
        cold = constrained_lasso(G, c, kappa, mask, warm_start=False, zz=float(z @ z))
        assert abs(warm.objective - cold.objective) <= 1e-9 * abs(cold.objective)
        tot_warm += warm.iterations
        tot_cold += cold.iterations
    assert tot_warm < tot_cold


def test_rows_match_single_and_warm_start_rows() -> None:
    rng = np.random.default_rng(11)
    F = rng.standard_normal((60, 25))
    base = rng.standard_normal(60)
    Z = base + 0.05 * rng.standard_normal((12, 60))  # neighbouring rows, as in Alg. 2
    mask = np.arange(25) < 18
    G = gram(F)
    C = Z @ F
    zz = np.sum(Z**2, axis=1)
    out = constrained_lasso_rows(G, C, 0.4, mask, zz=zz)
    cold = constrained_lasso_rows(G, C, 0.4, mask, zz=zz, warm_start_rows=False)
    assert out.W.shape == (12, 25)
    for i in range(12):
        single = constrained_lasso(G, C[i], 0.4, mask, zz=float(zz[i]))
        assert abs(out.objective[i] - single.objective) <= 1e-9 * abs(single.objective)
        np.testing.assert_allclose(out.objective[i], 0.5 * np.sum((Z[i] - F @ out.W[i]) ** 2), rtol=1e-9)
        _check_kkt(G, C[i], out.W[i], out.lam[i], 0.4, mask)
    assert all(s == "optimal" for s in out.status)
    assert out.iterations.sum() <= cold.iterations.sum()
    # a few rows against cvxpy
    for i in (0, 5):
        ref, _ = _ref(F, Z[i], 0.4, mask)
        assert abs(out.objective[i] - ref) <= 1e-6 * abs(ref)
    # per-row kappa
    kap = np.linspace(0.1, 1.0, 12)
    per = constrained_lasso_rows(G, C, kap, mask)
    assert np.all(per.l1 <= kap + 1e-8)


def test_bad_input() -> None:
    F, z, mask = _problem(1, 20, 6)
    G, c = gram(F), F.T @ z
    for kappa in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigurationError):
            constrained_lasso(G, c, kappa, mask)
    with pytest.raises(ShapeError):
        constrained_lasso(G, c[:5], 1.0, mask)
    with pytest.raises(ShapeError):
        constrained_lasso(G[:5], c, 1.0, mask)
    with pytest.raises(ShapeError):
        constrained_lasso(G, c, 1.0, mask[:5])
    with pytest.raises(ConfigurationError):
        constrained_lasso(G, c, 1.0, mask.astype(int))
    G_bad = G.copy()
    G_bad[0, 1] += 1.0
    with pytest.raises(ShapeError):
        constrained_lasso(G_bad, c, 1.0, mask)
    c_nan = c.copy()
    c_nan[2] = np.nan
    with pytest.raises(NonFiniteError):
        constrained_lasso(G, c_nan, 1.0, mask)
    G_nan = G.copy()
    G_nan[1, 1] = np.inf
    with pytest.raises(NonFiniteError):
        lasso_cd(G_nan, c, 0.1)
    with pytest.raises(ConfigurationError):
        lasso_cd(G, c, -0.1)
    with pytest.raises(ShapeError):
        constrained_lasso_rows(G, np.zeros((3, 5)), 1.0, mask)
    with pytest.raises(ShapeError):
        constrained_lasso_rows(G, np.zeros((3, 6)), np.ones(2), mask)
    with pytest.raises(NonFiniteError):
        gram(np.array([[1.0, np.nan]]))
    with pytest.raises(IdlError):
        constrained_lasso(G, c, 1.0, mask, max_bisect=0)


# ----------------------------------------------------------------------------------------------
# degenerate designs: singular G, free coordinates spanning the samples, duplicate / zero columns


def _assert_matches_ref(F, z, kappa, mask, res, rel=1e-8):
    """Objective within ``rel`` of cvxpy (absolute ``rel * ||z||^2`` when the optimum is ~0)."""
    G, c = gram(F), F.T @ z
    ref, _ = _ref(F, z, kappa, mask)
    true = 0.5 * float(np.sum((z - F @ res.w) ** 2))
    assert res.status in ("optimal", "inactive"), res.status
    assert abs(true - ref) <= rel * max(abs(ref), float(z @ z)), (true, ref)
    assert abs(res.objective - true) <= 1e-9 * max(1.0, float(z @ z))
    assert res.l1 <= kappa * (1 + 1e-12)
    assert res.kkt <= 1e-8
    if res.status == "inactive":
        assert res.lam == 0.0
        np.testing.assert_allclose(c - G @ res.w, 0.0, atol=1e-8 * max(1.0, np.max(np.abs(c))))
    else:
        assert res.lam > 0.0 and abs(res.l1 - kappa) <= 1e-9 * kappa
    _check_kkt(G, c, res.w, res.lam, kappa, mask)


@pytest.mark.parametrize("n_free", [30, 20])  # more free coordinates than samples, and exactly m
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kappa", [0.05, 1.0])
def test_free_coordinates_span_samples(n_free: int, seed: int, kappa: float) -> None:
    # regression: the free part fits z exactly, so w_S = 0 is optimal and the constraint inactive;
    # the solver used to compare only G^+ c (which spreads weight onto S) with kappa, bisect on
    # [0, lam_max ~ 1e-14] and return "approximate" with a much worse objective.
    rng = np.random.default_rng(seed)
    m, n_con = 20, 10
    F = rng.standard_normal((m, n_con + n_free))
    z = rng.standard_normal(m)
    mask = np.arange(n_con + n_free) < n_con
    G, c = gram(F), F.T @ z
    res = constrained_lasso(G, c, kappa, mask, zz=float(z @ z))
    _assert_matches_ref(F, z, kappa, mask, res)
    assert res.status == "inactive"
    assert 0.5 * np.sum((z - F @ res.w) ** 2) <= 1e-10 * float(z @ z)
    # same through the row solver (Alg. 2), with rows that share the degenerate F
    Z = z + 0.1 * rng.standard_normal((4, m))
    out = constrained_lasso_rows(G, Z @ F, kappa, mask, zz=np.sum(Z**2, axis=1))
    assert out.status == ("inactive",) * 4
    assert np.all(out.lam == 0.0) and np.all(out.l1 <= kappa)
    np.testing.assert_allclose(out.objective, 0.0, atol=1e-10 * float(np.max(np.sum(Z**2, axis=1))))


@pytest.mark.parametrize("seed", range(4))
def test_free_coordinates_one_short_of_spanning(seed: int) -> None:
    # m - 1 free coordinates: the reduced problem on S has rank 1, so G^+ c can violate a budget
    # that another least-squares solution meets (g(0+) < kappa < ||(G^+ c)_S||_1: inactive,
    # found by the lam = 0 end of the exact step), while a small budget is binding.
    rng = np.random.default_rng(50 + seed)
    m, n_con = 20, 10
    F = rng.standard_normal((m, n_con + m - 1))
    z = rng.standard_normal(m)
    mask = np.arange(F.shape[1]) < n_con
    G, c = gram(F), F.T @ z
    l1_pinv = float(np.sum(np.abs((np.linalg.pinv(G) @ c)[mask])))
    big = constrained_lasso(G, c, 0.9 * l1_pinv, mask, zz=float(z @ z))
    _assert_matches_ref(F, z, 0.9 * l1_pinv, mask, big)
    assert big.status == "inactive"
    small = constrained_lasso(G, c, 0.02, mask, zz=float(z @ z))
    _assert_matches_ref(F, z, 0.02, mask, small)
    assert small.status == "optimal"


def _degenerate(kind: str, seed: int):
    rng = np.random.default_rng(1000 + seed)
    m = int(rng.integers(10, 30))
    Fs = rng.standard_normal((m, int(rng.integers(2, 12))))
    Fu = rng.standard_normal((m, int(rng.integers(0, 8))))
    if kind == "dup_constrained":  # duplicate and scaled copy inside S
        Fs = np.column_stack([Fs, Fs[:, 0], -2.0 * Fs[:, 0]])
    elif kind == "dup_free":  # rank-deficient free block
        Fu = np.column_stack([Fu, Fs[:, 1], Fs[:, 1]])
    elif kind == "dup_across":  # a constrained column copied into the free block
        Fu = np.column_stack([Fu, Fs[:, 0]])
    elif kind == "zero_columns":
        Fs = np.column_stack([Fs, np.zeros(m)])
        Fu = np.column_stack([Fu, np.zeros(m)])
    elif kind == "free_span":
        Fu = rng.standard_normal((m, m + int(rng.integers(0, 5))))
    elif kind == "underdetermined":  # more unknowns than samples, free part not spanning
        Fs = rng.standard_normal((m, m))
        Fu = rng.standard_normal((m, int(rng.integers(0, m // 2))))
    F = np.column_stack([Fs, Fu])
    mask = np.arange(F.shape[1]) < Fs.shape[1]
    perm = rng.permutation(F.shape[1])
    z = F @ (rng.standard_normal(F.shape[1]) * (rng.random(F.shape[1]) < 0.5)) + 0.1 * rng.standard_normal(m)
    return F[:, perm], z, mask[perm]


@pytest.mark.parametrize(
    "kind", ["dup_constrained", "dup_free", "dup_across", "zero_columns", "free_span", "underdetermined"]
)
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("frac", [1e-3, 0.3, 0.9, 2.0])
def test_degenerate_designs_match_cvxpy(kind: str, seed: int, frac: float) -> None:
    F, z, mask = _degenerate(kind, seed)
    G, c = gram(F), F.T @ z
    # budgets relative to the l1 size of the minimum-norm least-squares solution on S
    kappa = frac * float(np.sum(np.abs(np.linalg.lstsq(F, z, rcond=None)[0][mask]))) + 1e-9
    res = constrained_lasso(G, c, kappa, mask, zz=float(z @ z))
    _assert_matches_ref(F, z, kappa, mask, res)
    zero_cols = np.flatnonzero(~F.any(axis=0))
    assert np.all(res.w[zero_cols] == 0.0)
    if frac >= 1.0:
        assert res.status == "inactive"
