"""mu_1 / mu_2 (paper 004) and the l_1, sigma_max and diagonal-scaling LMI certificates (paper 001
§3.1-3.2): measures against the limit definition, every certificate against fixed points computed
from several starts by two solvers, the LMI's S re-checked by independent eigenvalues."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from _ref import ref_block_softmax, ref_phi_np

import idlkit.wellposed as wp
from idlkit.activations import LeakyReLU, SoftMax
from idlkit.errors import ConfigurationError, NonFiniteError, ShapeError
from idlkit.solve import fixed_point

# ----------------------------------------------------------------------------- measures


def _norm1(M: np.ndarray) -> float:
    return max(sum(abs(M[i, j]) for i in range(M.shape[0])) for j in range(M.shape[1]))


def _norm_inf(M: np.ndarray) -> float:
    return max(sum(abs(M[i, j]) for j in range(M.shape[1])) for i in range(M.shape[0]))


def _norm2(M: np.ndarray) -> float:
    return float(np.sqrt(np.linalg.eigvalsh(M.T @ M)[-1]))


def _limit(norm, A: np.ndarray, h: float = 1e-7) -> float:
    """Definition of the matrix measure: ``(||I + h A|| - 1) / h`` for small ``h``."""
    return (norm(np.eye(A.shape[0]) + h * A) - 1) / h


@pytest.mark.parametrize("seed", range(8))
def test_measures_match_their_limit_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    A = rng.standard_normal((n, n)) * rng.uniform(0.1, 3) + np.diag(rng.uniform(-3, 1, n))
    for fn, norm in ((wp.mu_1, _norm1), (wp.mu_inf, _norm_inf), (wp.mu_2, _norm2)):
        assert fn(A) == pytest.approx(_limit(norm, A), abs=2e-5 * (1 + np.abs(A).sum()))
    # torch, sparse and the report give the same numbers
    assert wp.mu_1(torch.as_tensor(A)) == wp.mu_1(A) == pytest.approx(wp.mu_1(sp.csr_array(A)))
    assert wp.mu_2(sp.csr_array(A)) == pytest.approx(wp.mu_2(A), abs=1e-12)
    rep = wp.check(A, "relu")
    assert (rep.mu_1, rep.mu_2) == (wp.mu_1(A), wp.mu_2(A))
    assert "mu_1" in str(rep) and "mu_2" in str(rep)
    # Re(lambda) <= mu <= ||A|| for every measure (paper 004, "norm/spectrum")
    re = np.linalg.eigvals(A).real.max()
    for mu, nrm in ((rep.mu_1, _norm1(A)), (rep.mu_inf, _norm_inf(A)), (rep.mu_2, _norm2(A))):
        assert re - 1e-9 <= mu <= nrm + 1e-9


def test_large_sparse_mu2_uses_lanczos_and_check_skips_it() -> None:
    rng = np.random.default_rng(0)
    n = 1100
    A = sp.random_array((n, n), density=3 / n, random_state=rng, format="csr") * 0.2
    A = sp.csr_array(A - sp.diags_array(np.full(n, 0.5)))
    dense = A.toarray()
    assert wp.mu_2(A) == pytest.approx(np.linalg.eigvalsh((dense + dense.T) / 2)[-1], abs=1e-6)
    rep = wp.check(A, "relu", lmi=True)
    assert math.isnan(rep.mu_2) and "mu_2" in rep.skipped and "lmi" in rep.skipped
    assert rep.mu_1 == pytest.approx(_limit(_norm1, dense), abs=1e-4)
    assert rep.l1 == pytest.approx(np.abs(dense).sum(axis=0).max())
    # above n = 1024: the certified bound sqrt(||A||_1 ||A||_inf) >= sigma_max
    assert rep.sigma_max >= np.linalg.norm(dense, 2)
    assert rep.sigma_max == pytest.approx(math.sqrt(rep.l1 * rep.inf_norm), rel=1e-9)


# ----------------------------------------------------------------------------- certificates


def _solve_all_ways(A: np.ndarray, act: str, Bm: np.ndarray, seed: int) -> list[np.ndarray]:
    """Fixed points of ``x = phi(A x + b)`` for the columns of ``Bm``: plain numpy Picard from
    three starts, and idlkit's Anderson solver."""
    phi = ref_phi_np(act)
    rng = np.random.default_rng(seed)
    out = []
    for X in (np.zeros_like(Bm), rng.standard_normal(Bm.shape) * 10, rng.uniform(-50, 50, Bm.shape)):
        for _ in range(20_000):
            Xn = phi(A @ X + Bm)
            if np.abs(Xn - X).max() <= 1e-13:
                break
            X = Xn
        else:
            raise AssertionError("Picard did not converge under a certificate that promises it")
        out.append(Xn)
    X, _ = fixed_point(torch.as_tensor(A), torch.as_tensor(Bm), act, tol=1e-13, max_iter=20_000)
    out.append(X.numpy())
    return out


def _l1_case(rng: np.random.Generator, n: int) -> np.ndarray:
    """Columns summing below 1, one heavy row (||A||_inf > 1)."""
    A = rng.standard_normal((n, n)) * 0.05
    A[0] = rng.choice([-1, 1], n) * rng.uniform(0.5, 0.8, n)
    return A / max(1.0, np.abs(A).sum(axis=0).max() / 0.97)


def _sigma_case(rng: np.random.Generator, n: int) -> np.ndarray:
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return 0.97 * Q  # sigma_max = 0.97, ||Q||_inf and lambda_pf(|Q|) above 1 in general


def _lmi_case(rng: np.random.Generator, n: int) -> np.ndarray:
    D = np.exp(rng.uniform(-2, 2, n))
    return D[:, None] * _sigma_case(rng, n) / D[None, :] * 0.95


@pytest.mark.parametrize("cond,make", [("l1", _l1_case), ("sigma_max", _sigma_case),
                                       ("lmi", _lmi_case)])
@pytest.mark.parametrize("act", ["relu", "tanh", "leaky_relu"])
@pytest.mark.parametrize("seed", range(3))
def test_each_certificate_gives_one_fixed_point(cond: str, make, act: str, seed: int) -> None:
    rng = np.random.default_rng(100 * seed + len(cond))
    n = 6
    A = make(rng, n)
    rep = wp.check(A, act, lmi=cond == "lmi")
    assert rep.holds[cond], str(rep)
    assert not rep.holds["inf"]  # the new certificate is the one that matters here
    Bm = rng.standard_normal((n, 60)) * 3
    sols = _solve_all_ways(A, act, Bm, seed)
    for X in sols[1:]:
        np.testing.assert_allclose(X, sols[0], atol=1e-9)
    # the independent value of each condition
    if cond == "l1":
        assert rep.l1 == pytest.approx(_norm1(A), rel=1e-12)
    if cond == "sigma_max":
        assert rep.sigma_max == pytest.approx(np.linalg.svd(A, compute_uv=False)[0], rel=1e-12)


def test_sigmoid_gamma_scales_every_condition() -> None:
    rng = np.random.default_rng(1)
    A = _sigma_case(rng, 5) * 3.5  # sigma_max 3.4: times sigmoid's 1/4 = 0.85
    rep = wp.check(A, "sigmoid", lmi=True)
    assert rep.sigma_max == pytest.approx(0.25 * np.linalg.svd(A, compute_uv=False)[0], rel=1e-12)
    assert rep.l1 == pytest.approx(0.25 * _norm1(A))
    assert rep.holds["sigma_max"] and rep.holds["lmi"]
    sols = _solve_all_ways(A, "sigmoid", rng.standard_normal((5, 40)), 1)
    for X in sols[1:]:
        np.testing.assert_allclose(X, sols[0], atol=1e-9)


def test_softmax_blocks_l1_and_l2_constants() -> None:
    """SoftMax is 1-Lipschitz in l_1 per block: the l_1 constants are 1, the l_2 ones sqrt(m)."""
    act = SoftMax(3)
    np.testing.assert_allclose(wp.lipschitz_weights(act, 6, 1.0), np.ones(6))
    np.testing.assert_allclose(wp.lipschitz_weights(act, 6, 2.0), np.full(6, 3 ** 0.5))
    np.testing.assert_allclose(wp.lipschitz_weights(LeakyReLU(2.0), 4, 2.0), np.full(4, 2.0))
    rng = np.random.default_rng(4)
    A = rng.standard_normal((6, 6))
    A = A / np.abs(A).sum(axis=0).max() * 0.9
    A[0] *= 1.6  # a heavy row: ||A||_inf x 1/2 above 1 in general, the l_1 condition intact
    A = A / max(1.0, np.abs(A).sum(axis=0).max() / 0.95)
    rep = wp.check(A, act)
    assert rep.holds["l1"] and rep.l1 == pytest.approx(_norm1(A))
    # the fixed point of the block softmax map is unique: Picard from far-apart starts agrees
    At = torch.as_tensor(A)
    Bm = torch.as_tensor(rng.standard_normal((6, 30)) * 5)
    sols = []
    for scale in (0.0, 20.0, -40.0):
        X = torch.full_like(Bm, scale)
        for _ in range(5000):
            X = ref_block_softmax(At @ X + Bm, 3)
        sols.append(X)
    for X in sols[1:]:
        torch.testing.assert_close(X, sols[0], atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- the LMI


def _recheck(A: np.ndarray, s: np.ndarray, gamma: float = 1.0) -> tuple[float, float]:
    """Independent float64 re-check: ``min eig(S - M^T S M)`` and ``sigma_max(D M D^-1)``."""
    M = gamma * A
    S = np.diag(s)
    lam = np.linalg.eigvalsh(S - M.T @ S @ M)[0]
    d = np.sqrt(s)
    return float(lam), float(np.linalg.svd(np.diag(d) @ M @ np.diag(1 / d), compute_uv=False)[0])


@pytest.mark.parametrize("seed", range(4))
def test_lmi_feasible_when_sigma_max_or_pf_below_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 8))
    for A in (_sigma_case(rng, n) * rng.uniform(0.5, 1.0),         # sigma_max < 1 (S = I works)
              rng.choice([-1, 1], (n, n)) * rng.uniform(0, 1, (n, n))):
        if np.abs(np.linalg.eigvals(np.abs(A))).max() >= 1:     # scale to lambda_pf(|A|) = 0.95
            A = A * 0.95 / np.abs(np.linalg.eigvals(np.abs(A))).max()
        res = wp.diagonal_lmi(A)
        assert res.holds, res
        lam, fac = _recheck(A, res.scaling)
        assert lam > 0 and lam == pytest.approx(res.min_eig, abs=1e-9)
        assert fac == pytest.approx(res.factor, rel=1e-9) and fac < 1
        assert res.scaling.max() == 1.0 and res.scaling.min() > 0
        assert not res.scaling.flags.writeable


def test_lmi_certifies_what_inf_pf_and_sigma_max_do_not() -> None:
    # D R D^-1 with R = [[0.5, 0.55], [-0.55, 0.5]] (a scaled rotation, sigma_max 0.74) and
    # D = diag(1, 10): A = [[0.5, 0.055], [-5.5, 0.5]], ||A||_inf = mu_inf = 6.0,
    # lambda_pf(|A|) = 0.5 + sqrt(0.055 * 5.5) = 1.05, sigma_max 5.5; S = D^-2 brings back R
    R = np.array([[0.5, 0.55], [-0.55, 0.5]])
    A = np.diag([1.0, 10.0]) @ R @ np.diag([1.0, 0.1])
    rep = wp.check(A, "relu", lmi=True)
    for k in ("inf", "pf", "mu", "l1", "sigma_max", "triangular"):
        assert not rep.holds[k], k
    assert rep.holds["lmi"] and rep.wellposed and rep.margins["lmi"] == pytest.approx(1 - rep.lmi)
    lam, fac = _recheck(A, rep.lmi_scaling)
    assert lam > 0 and fac < 1 and fac == pytest.approx(rep.lmi, rel=1e-9)
    # the solver's S need not be diag(1, 1/100), but it must undo most of the 10x scale
    assert rep.lmi_scaling[1] / rep.lmi_scaling[0] < 0.2
    sols = _solve_all_ways(A, "relu", np.random.default_rng(0).standard_normal((2, 50)) * 4, 0)
    for X in sols[1:]:
        np.testing.assert_allclose(X, sols[0], atol=1e-9)
    assert "LMI factor" in str(rep)


def test_lmi_refuses_spectral_radius_at_least_one() -> None:
    # upper triangular with a negative diagonal: well-posed for ReLU (triangular criterion and
    # mu_inf < 0), but no norm makes x -> relu(A x + b) a contraction (|eigenvalue| 3 > 1)
    A = np.array([[-2.0, 0.5, 0.0], [0.0, -3.0, 1.0], [0.0, 0.0, -0.5]])
    rep = wp.check(A, "relu", lmi=True)
    assert rep.holds["triangular"] and rep.holds["mu"]
    assert not rep.holds["lmi"] and rep.lmi >= 1
    assert rep.wellposed  # by the other certificates
    C = np.array([[0.0, 2.0], [2.0, 0.0]])  # eigenvalue 2
    assert not wp.diagonal_lmi(C).holds


def test_lmi_off_by_default_skipped_when_sparse_or_large() -> None:
    A = np.eye(3) * 0.5
    rep = wp.check(A, "relu")
    assert "lmi" not in rep.holds and math.isnan(rep.lmi) and rep.lmi_scaling is None
    rep = wp.check(sp.csr_array(A), "relu", lmi=True)
    assert "lmi" not in rep.holds and "sparse" in rep.skipped["lmi"]
    rep = wp.check(np.eye(5) * 0.5, "relu", lmi=True, lmi_max_n=4)
    assert "lmi" not in rep.holds and "lmi_max_n" in rep.skipped["lmi"]
    assert "skipped" in str(rep)
    assert wp.check(np.zeros((0, 0)), "relu", lmi=True).wellposed


def test_bad_input_typed_errors() -> None:
    A = np.eye(3) * 0.5
    with pytest.raises(ConfigurationError, match="solver"):
        wp.diagonal_lmi(A, solver="NO_SUCH_SOLVER")
    with pytest.raises(ConfigurationError, match="sparse"):
        wp.diagonal_lmi(sp.csr_array(A))
    with pytest.raises(ConfigurationError, match="max_n"):
        wp.diagonal_lmi(np.eye(5), max_n=4)
    with pytest.raises(ConfigurationError, match="lmi"):
        wp.check(A, "relu", lmi="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="lmi_max_n"):
        wp.check(A, "relu", lmi_max_n=0)
    with pytest.raises(ConfigurationError):
        wp.check(A, "no_such_activation")
    for fn in (wp.mu_1, wp.mu_2, wp.l1_condition, wp.sigma_max_condition):
        with pytest.raises(ShapeError):
            fn(np.ones((2, 3)))
        with pytest.raises(NonFiniteError):
            fn(np.array([[np.nan]]))
