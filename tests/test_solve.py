"""Fixed-point solvers: agreement, residuals, triangular solves, SolveInfo, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.optimize
import torch
from _ref import picard_numpy, ref_block_max, ref_block_softmax, ref_phi, ref_phi_np
from hypothesis import given, settings
from hypothesis import strategies as st

from idlkit.activations import BlockMax, Blockwise, LeakyReLU, SoftMax
from idlkit.errors import (
    ConfigurationError,
    ConvergenceError,
    IdlError,
    NonFiniteError,
    ShapeError,
    WellPosednessError,
)
from idlkit.solve import ConvergenceWarning, SolveInfo, adjoint_fixed_point, fixed_point

seeds = st.integers(0, 2**31 - 1)
ITERATIVE = ["picard", "averaged", "anderson"]


def _blockwise():
    return Blockwise([(2, "tanh"), (2, SoftMax(2)), (2, BlockMax(2))])


def _blockwise_ref(z):
    return torch.cat([ref_phi("tanh")(z[0:2]), ref_block_softmax(z[2:4], 2),
                      ref_block_max(z[4:6], 2)])


# name -> (activation factory, torch reference, unit (n must be a multiple), max multiple,
#          l_inf Lipschitz constant of the map (from the math, not from the library))
ACTS = {
    "relu": (lambda: "relu", ref_phi("relu"), 1, 8, 1.0),
    "leaky_relu": (lambda: LeakyReLU(0.1), ref_phi("leaky_relu", 0.1), 1, 8, 1.0),
    "tanh": (lambda: "tanh", ref_phi("tanh"), 1, 8, 1.0),
    "sigmoid": (lambda: "sigmoid", ref_phi("sigmoid"), 1, 8, 0.25),
    "identity": (lambda: "identity", ref_phi("identity"), 1, 8, 1.0),
    "softmax": (lambda: SoftMax(2), lambda z: ref_block_softmax(z, 2), 2, 4, 0.5),
    "blockmax": (lambda: BlockMax(3), lambda z: ref_block_max(z, 3), 3, 2, 1.0),
    "blockwise": (_blockwise, _blockwise_ref, 6, 1, 1.0),
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(seed: int, *shape: int, scale: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    return (torch.randn(*shape, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype)


def _with_inf_norm(A: torch.Tensor, target: float) -> torch.Tensor:
    s = float(A.abs().sum(dim=1).max())
    return A * (target / s) if s > 0 else A


def _ref_residual(phi, A, X, b) -> float:
    return float((phi(A @ X + b) - X).abs().max())


# ----------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("name", sorted(ACTS))
@given(seed=seeds, k=st.integers(1, 8), m=st.integers(1, 4), norm=st.floats(0.05, 0.95),
       bscale=st.sampled_from([0.1, 1.0, 10.0]))
@settings(max_examples=12)
def test_all_methods_reach_the_same_fixed_point(name, seed, k, m, norm, bscale):
    factory, phi, unit, kmax, lip = ACTS[name]
    n = unit * min(k, kmax)
    A = _with_inf_norm(_rand(seed, n, n), norm)
    b = _rand(seed + 1, n, m, scale=bscale)
    tol = 1e-10
    L = lip * norm  # l_inf contraction factor of x -> phi(A x + b)
    sols = {}
    for method in ITERATIVE:
        X, info = fixed_point(A, b, factory(), method=method, tol=tol, max_iter=20_000)
        assert X.shape == (n, m) and X.dtype == torch.float64
        assert info.converged and info.method == method
        assert _ref_residual(phi, A, X, b) <= tol * (1 + 1e-6) + 1e-14
        sols[method] = X
    # independent numpy reference for the componentwise maps, torch Picard for block maps
    if unit == 1:
        Xref = torch.tensor(picard_numpy(ref_phi_np(name, 0.1), A.numpy(), b.numpy()))
    else:
        Xref = torch.zeros_like(b)
        for _ in range(100_000):
            Xn = phi(A @ Xref + b)
            if float((Xn - Xref).abs().max()) <= 1e-13:
                break
            Xref = Xn
        Xref = Xn
    # ||x - x*||_inf <= residual / (1 - L) for an l_inf contraction with factor L
    bound = (tol + 1e-13) / (1 - L) + 1e-12
    for method, X in sols.items():
        err = float((X - Xref).abs().max())
        assert err <= bound, (method, err, bound)


@pytest.mark.parametrize("method", ITERATIVE)
def test_float32_solve(method):
    A = _with_inf_norm(_rand(0, 6, 6), 0.8).float()
    b = _rand(1, 6, 3).float()
    X, info = fixed_point(A, b, "tanh", method=method, tol=1e-5)
    assert X.dtype == torch.float32 and info.converged
    X64, _ = fixed_point(A.double(), b.double(), "tanh", method=method, tol=1e-12)
    assert float((X.double() - X64).abs().max()) <= 1e-4


@pytest.mark.parametrize("method", ITERATIVE)
def test_sparse_matrix_gives_the_same_solution(method):
    A = _with_inf_norm(_rand(2, 8, 8) * (torch.rand(8, 8, generator=_gen(3)) < 0.4), 0.9)
    b = _rand(4, 8, 2)
    Xd, _ = fixed_point(A, b, "relu", method=method, tol=1e-11)
    Xs, _ = fixed_point(A.to_sparse(), b, "relu", method=method, tol=1e-11)
    torch.testing.assert_close(Xs, Xd, rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- triangular


def _block_strict_upper(seed: int, sizes: tuple[int, ...], scale: float) -> torch.Tensor:
    n = sum(sizes)
    blk = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    mask = blk[:, None] < blk[None, :]
    A = _rand(seed, n, n, scale=scale) * mask
    return A


@pytest.mark.parametrize("name", sorted(ACTS))
@given(seed=seeds, k=st.integers(1, 8), m=st.integers(1, 3),
       scale=st.sampled_from([0.3, 1.0, 3.0]))
@settings(max_examples=12)
def test_triangular_equals_picard_on_strictly_upper_A(name, seed, k, m, scale):
    """A (block) strictly upper-triangular A is nilpotent: Picard is exact after L steps,
    whatever ||A||_inf, so it is a valid reference."""
    factory, phi, unit, kmax, _ = ACTS[name]
    n = unit * min(k, kmax)
    if name == "softmax":
        sizes = (2,) * (n // 2)
    elif name == "blockmax":
        sizes = (3,) * (n // 3)
    elif name == "blockwise":
        sizes = (1, 1, 2, 2)
    else:
        sizes = (1,) * n
    A = _block_strict_upper(seed, sizes, scale)
    b = _rand(seed + 1, n, m)
    Xt, info = fixed_point(A, b, factory(), method="triangular")
    assert info.converged and info.method == "triangular"
    assert info.per_sample_iterations.shape == (m,)
    X = torch.zeros_like(b)
    for _ in range(len(sizes) + 1):  # exact after len(sizes) sweeps
        X = phi(A @ X + b)
    torch.testing.assert_close(Xt, X, rtol=1e-10, atol=1e-10)
    assert _ref_residual(phi, A, Xt, b) <= 1e-10 * (1 + float(X.abs().max()))
    Xp, _ = fixed_point(A, b, factory(), method="picard", tol=1e-12, max_iter=100)
    torch.testing.assert_close(Xt, Xp, rtol=1e-10, atol=1e-10)


def _scalar_root(phi_np, a: float, c: float) -> float:
    """Root of f(x) = phi(a x + c) - x (strictly decreasing when a * phi' < 1), by brentq."""
    def f(x):
        return float(phi_np(np.array(a * x + c))) - x

    lo, hi = -1.0, 1.0
    while f(lo) <= 0:
        lo *= 2
    while f(hi) >= 0:
        hi *= 2
    return scipy.optimize.brentq(f, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps,
                                 maxiter=500)


@pytest.mark.parametrize("name,slope", [("relu", 0.0), ("leaky_relu", 0.1),
                                        ("leaky_relu", 2.0), ("identity", 0.0)])
@given(seed=seeds, n=st.integers(1, 7), m=st.integers(1, 3))
@settings(max_examples=15)
def test_triangular_with_diagonal_closed_form(name, slope, seed, n, m):
    """Upper-triangular A with diag(A) * phi'_max < 1 (Remark 2.5), ||A||_inf may exceed 1:
    compared with scalar back-substitution by a bracketing root finder."""
    rng = np.random.default_rng(seed)
    smax = max(1.0, slope)
    A = np.triu(rng.standard_normal((n, n)) * 1.5, 1)
    diag = rng.uniform(-4.0, 1.0 / smax - 0.05, size=n)
    A[np.arange(n), np.arange(n)] = diag
    b = rng.standard_normal((n, m)) * 2
    phi_np = ref_phi_np(name, slope)
    Xref = np.zeros((n, m))
    for j in range(m):
        for i in range(n - 1, -1, -1):
            c = b[i, j] + A[i, i + 1:] @ Xref[i + 1:, j]
            Xref[i, j] = _scalar_root(phi_np, A[i, i], c)
    act = LeakyReLU(slope) if name == "leaky_relu" else name
    Xt, info = fixed_point(torch.tensor(A), torch.tensor(b), act, method="triangular")
    np.testing.assert_allclose(Xt.numpy(), Xref, rtol=1e-9, atol=1e-9)
    assert info.converged
    # when ||A||_inf < 1 Picard converges too, and agrees
    if np.abs(A).sum(axis=1).max() < 1:
        Xp, _ = fixed_point(torch.tensor(A), torch.tensor(b), act, method="picard", tol=1e-12,
                            max_iter=10_000)
        torch.testing.assert_close(Xt, Xp, rtol=1e-9, atol=1e-9)


def test_triangular_rejections():
    A = torch.triu(_rand(0, 4, 4), 1)
    b = _rand(1, 4, 2)
    with pytest.raises(ConfigurationError):  # nonzero below the diagonal
        fixed_point(A.t().contiguous(), b, "relu", method="triangular")
    Ad = A + torch.diag(torch.tensor([0.5, 0.2, 0.1, 0.3], dtype=torch.float64))
    with pytest.raises(ConfigurationError):  # diagonal with a smooth map
        fixed_point(Ad, b, "tanh", method="triangular")
    Ad[2, 2] = 1.0
    with pytest.raises(WellPosednessError) as exc:  # diag(A) >= 1 with ReLU (Remark 2.5)
        fixed_point(Ad, b, "relu", method="triangular")
    assert "A[2, 2]" in str(exc.value)
    # elementwise upper but not block upper for SoftMax blocks of 2
    with pytest.raises(ConfigurationError):
        fixed_point(A, b, SoftMax(2), method="triangular")


# ----------------------------------------------------------------------------- mu-well-posed


def _mu_matrix(seed: int, n: int, gamma: float, scale: float) -> torch.Tensor:
    """A = T - diag(|T| 1) + gamma I (paper 004): mu_inf(A) <= gamma, ||A||_inf large."""
    T = _rand(seed, n, n, scale=scale)
    return T - torch.diag(T.abs().sum(dim=1)) + gamma * torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "tanh", "sigmoid", "identity"])
@pytest.mark.parametrize("method", ["averaged", "anderson"])
def test_mu_wellposed_with_large_inf_norm(name, method):
    factory, phi = ACTS[name][0], ACTS[name][1]
    n, m = 6, 3
    A = _mu_matrix(7, n, 0.5, 2.0)
    mu = max(float(A[i, i]) + float(A[i].abs().sum() - A[i, i].abs()) for i in range(n))
    assert mu < 1 and float(A.abs().sum(dim=1).max()) > 5
    b = _rand(8, n, m, scale=3.0)
    X, info = fixed_point(A, b, factory(), method=method, tol=1e-10, max_iter=20_000)
    assert info.converged
    assert _ref_residual(phi, A, X, b) <= 1e-10 * (1 + 1e-6)
    if name == "identity":
        Xe = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - A, b)
        torch.testing.assert_close(X, Xe, rtol=0, atol=1e-8)


def test_mu_wellposed_methods_agree():
    A = _mu_matrix(11, 5, 0.3, 1.5)
    b = _rand(12, 5, 4)
    Xa, _ = fixed_point(A, b, "tanh", method="averaged", tol=1e-11, max_iter=50_000)
    Xn, _ = fixed_point(A, b, "tanh", method="anderson", tol=1e-11, max_iter=50_000)
    torch.testing.assert_close(Xa, Xn, rtol=0, atol=1e-8)


# ----------------------------------------------------------------------------- SolveInfo


@pytest.mark.parametrize("method", ITERATIVE)
@given(seed=seeds, n=st.integers(1, 8), m=st.integers(1, 5))
@settings(max_examples=10)
def test_solve_info_fields(method, seed, n, m):
    A = _with_inf_norm(_rand(seed, n, n), 0.9)
    b = _rand(seed + 1, n, m)
    X, info = fixed_point(A, b, "tanh", method=method, tol=1e-9)
    assert isinstance(info, SolveInfo)
    assert info.tol == 1e-9 and info.method == method
    assert info.per_sample_iterations.shape == (m,)
    assert info.per_sample_iterations.dtype == torch.int64
    assert info.per_sample_residual.shape == (m,)
    per_col = (torch.tanh(A @ X + b) - X).abs().amax(dim=0)
    assert info.residual == pytest.approx(float(per_col.max()), rel=1e-9, abs=1e-15)
    torch.testing.assert_close(info.per_sample_residual, per_col, rtol=1e-9, atol=1e-15)
    assert info.converged == (info.residual <= info.tol)
    assert int(info.per_sample_iterations.max()) <= info.iterations
    assert int(info.per_sample_iterations.min()) >= 0
    assert str(info).startswith("SolveInfo(")


def test_picard_per_sample_iterations_match_independent_count():
    n, m, tol = 6, 5, 1e-8
    A = _with_inf_norm(_rand(0, n, n), 0.9)
    b = _rand(1, n, m) * torch.tensor([1e-3, 0.1, 1.0, 10.0, 100.0], dtype=torch.float64)
    _, info = fixed_point(A, b, "tanh", method="picard", tol=tol, max_iter=1000, per_sample=True)
    assert info.per_sample
    X = torch.zeros_like(b)
    first = [-1] * m
    for it in range(1000):
        r = (torch.tanh(A @ X + b) - X).abs().amax(dim=0)
        for j in range(m):
            if first[j] < 0 and float(r[j]) <= tol:
                first[j] = it
        if min(first) >= 0:
            break
        X = torch.tanh(A @ X + b)
    got = info.per_sample_iterations.tolist()
    assert all(abs(g - f) <= 1 for g, f in zip(got, first, strict=True)), (got, first)
    assert info.iterations == max(first) or abs(info.iterations - max(first)) <= 1


# ----------------------------------------------------------------------------- warm start


@pytest.mark.parametrize("method", ITERATIVE)
def test_warm_start_reduces_iterations(method):
    A = _with_inf_norm(_rand(5, 8, 8), 0.95)
    b = _rand(6, 8, 4, scale=3.0)
    X, cold = fixed_point(A, b, "tanh", method=method, tol=1e-10, max_iter=5000)
    x0 = X + 1e-7 * _rand(7, 8, 4)
    X2, warm = fixed_point(A, b, "tanh", method=method, tol=1e-10, max_iter=5000, x0=x0)
    assert warm.iterations < cold.iterations
    torch.testing.assert_close(X2, X, rtol=0, atol=1e-8)
    # starting at the solution: zero iterations
    _, exact = fixed_point(A, b, "tanh", method=method, tol=1e-10, x0=X)
    assert exact.iterations == 0
    with pytest.raises(ShapeError):
        fixed_point(A, b, "tanh", method=method, x0=X[:, :2])


# ----------------------------------------------------------------------------- depth adaptability


@pytest.mark.parametrize("act", ["relu", "identity", LeakyReLU(0.2)], ids=str)
def test_depth_adaptability_smaller_inputs_need_fewer_iterations(act):
    """ReLU/LeakyReLU/identity are positively homogeneous: scaling b by 2^k scales every
    Picard iterate and residual exactly by 2^k, so iteration counts are monotone in k."""
    n = 8
    A = _with_inf_norm(_rand(9, n, n), 0.9)
    b0 = _rand(10, n, 1)
    scales = [0.0] + [2.0 ** k for k in range(-6, 7)]
    b = torch.cat([s * b0 for s in scales], dim=1)
    _, info = fixed_point(A, b, act, method="picard", tol=1e-9, max_iter=5000, per_sample=True)
    it = info.per_sample_iterations.tolist()
    assert it[0] == 0  # the b = 0 column is solved by the initial x = 0
    assert all(x <= y for x, y in zip(it, it[1:], strict=False)), it
    assert it[-1] > it[1]
    for method in ("anderson", "averaged"):
        _, info = fixed_point(A, b, act, method=method, tol=1e-9, max_iter=5000,
                              per_sample=True)
        assert int(info.per_sample_iterations[0]) == 0


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize("method", ITERATIVE)
def test_nonconvergence_raises_with_residual(method):
    A = _with_inf_norm(_rand(13, 10, 10), 0.99)
    b = _rand(14, 10, 3, scale=5.0)
    with pytest.raises(ConvergenceError) as exc:
        fixed_point(A, b, "tanh", method=method, tol=1e-12, max_iter=2)
    info = exc.value.info
    assert isinstance(info, SolveInfo) and not info.converged
    assert info.iterations == 2
    assert f"{info.residual:.3g}" in str(exc.value)
    assert info.residual > 1e-12
    assert isinstance(exc.value, IdlError) and isinstance(exc.value, RuntimeError)


@pytest.mark.parametrize("method", ITERATIVE)
def test_nonconvergence_warn_and_ignore(method):
    A = _with_inf_norm(_rand(13, 10, 10), 0.99)
    b = _rand(14, 10, 3, scale=5.0)
    with pytest.warns(ConvergenceWarning) as rec:
        X, info = fixed_point(A, b, "tanh", method=method, tol=1e-12, max_iter=2,
                              on_nonconvergence="warn")
    assert f"{info.residual:.3g}" in str(rec[0].message)
    assert not info.converged
    assert info.residual == pytest.approx(float((torch.tanh(A @ X + b) - X).abs().max()),
                                          rel=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = fixed_point(A, b, "tanh", method=method, tol=1e-12, max_iter=2,
                              on_nonconvergence="ignore")
    assert not info.converged


@pytest.mark.parametrize("method", ITERATIVE + ["triangular"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_b_raises(method, bad):
    A = torch.triu(_rand(0, 4, 4), 1) * 0.2
    b = _rand(1, 4, 3)
    b[2, 1] = bad
    with pytest.raises(NonFiniteError):
        fixed_point(A, b, "relu", method=method)


@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_divergent_problem_raises_not_a_number(method, dtype):
    """x = relu(2x + b) with b > 0 has no solution: the solve must fail loudly."""
    n = 4
    A = 2.0 * torch.eye(n, dtype=dtype) + 0.1 * torch.ones(n, n, dtype=dtype)
    b = torch.ones(n, 2, dtype=dtype)
    with pytest.raises((NonFiniteError, ConvergenceError)):
        fixed_point(A, b, "relu", method=method, max_iter=3000)


def test_bad_settings_raise_configuration_error():
    A = torch.zeros(3, 3, dtype=torch.float64)
    b = torch.zeros(3, 1, dtype=torch.float64)
    for kw in [dict(method="newton"), dict(tol=0.0), dict(tol=-1.0), dict(tol=math.nan),
               dict(max_iter=0), dict(max_iter=2.5), dict(on_nonconvergence="shout"),
               dict(alpha=1.5), dict(alpha=0.0), dict(anderson_m=0)]:
        with pytest.raises(ConfigurationError):
            fixed_point(A, b, "relu", **kw)
    with pytest.raises(ConfigurationError):
        fixed_point(A, b, "swishy")


def test_bad_shapes_raise_shape_error():
    with pytest.raises(ShapeError):
        fixed_point(torch.zeros(3, 4), torch.zeros(3, 1))
    with pytest.raises(ShapeError):
        fixed_point(torch.zeros(3, 3), torch.zeros(4, 1))
    with pytest.raises(ShapeError):
        fixed_point(torch.zeros(3, 3), torch.zeros(3))


# ----------------------------------------------------------------------------- adjoint


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "tanh", "sigmoid", "identity"])
@pytest.mark.parametrize("method", ITERATIVE)
def test_adjoint_solve_matches_dense_linear_solve(name, method):
    """V = Psi o (A^T V + G) (eq. G.4) column by column: (I - diag(psi) A^T) v = psi o g."""
    factory, phi = ACTS[name][0], ACTS[name][1]
    n, m = 7, 3
    A = _with_inf_norm(_rand(20, n, n), 0.9)
    Z = _rand(21, n, m, scale=2.0)
    G = _rand(22, n, m)
    V, info = adjoint_fixed_point(A, Z, G, factory(), method=method, tol=1e-12,
                                  max_iter=10_000)
    assert info.converged
    Zg = Z.clone().requires_grad_(True)
    (psi,) = torch.autograd.grad(phi(Zg).sum(), Zg)  # derivative by autograd of the reference
    I = torch.eye(n, dtype=torch.float64)
    for j in range(m):
        v = torch.linalg.solve(I - psi[:, j, None] * A.t(), psi[:, j] * G[:, j])
        torch.testing.assert_close(V[:, j], v, rtol=0, atol=1e-9)


def test_adjoint_triangular_matches_dense():
    n, m = 6, 2
    A = torch.triu(_rand(30, n, n), 1) * 2 + torch.diag(torch.linspace(-2, 0.8, n,
                                                                      dtype=torch.float64))
    Z = _rand(31, n, m)
    G = _rand(32, n, m)
    V, _ = adjoint_fixed_point(A, Z, G, "relu", method="triangular")
    psi = (Z > 0).double()
    I = torch.eye(n, dtype=torch.float64)
    for j in range(m):
        v = torch.linalg.solve(I - psi[:, j, None] * A.t(), psi[:, j] * G[:, j])
        torch.testing.assert_close(V[:, j], v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ITERATIVE)
def test_empty_batch_returns_at_once(method):
    A = torch.full((4, 4), 0.1, dtype=torch.float64)
    X, info = fixed_point(A, torch.zeros(4, 0, dtype=torch.float64), method=method)
    assert X.shape == (4, 0) and info.converged and info.iterations == 0
    V, info = adjoint_fixed_point(A, torch.zeros(4, 0, dtype=torch.float64),
                                  torch.zeros(4, 0, dtype=torch.float64), method=method)
    assert V.shape == (4, 0) and info.converged


@settings(max_examples=20, deadline=None)
@given(seed=seeds, n=st.integers(1, 30), m=st.integers(1, 20))
def test_anderson_takes_plain_steps_while_they_halve_the_residual(seed, n, m):
    """With ||A||_inf <= 0.3 and a 1-Lipschitz phi, each Picard step cuts the residual by
    0.3 < 1/2: Anderson's plain phase never ends and it is Picard, step for step."""
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(n, n, generator=g, dtype=torch.float64) * 2 - 1
    A *= 0.3 / A.abs().sum(dim=1, keepdim=True)
    b = torch.randn(n, m, generator=g, dtype=torch.float64)
    Xa, ia = fixed_point(A, b, "tanh", method="anderson", tol=1e-12)
    Xp, ip = fixed_point(A, b, "tanh", method="picard", tol=1e-12)
    assert ia.iterations == ip.iterations
    assert torch.equal(ia.per_sample_iterations, ip.per_sample_iterations)
    assert torch.equal(Xa, Xp)


def test_anderson_accelerates_a_slow_contraction():
    """kappa = 0.99: plain steps stop halving the residual at once; Anderson takes over and
    needs several times fewer iterations than Picard, to the same fixed point."""
    g = torch.Generator().manual_seed(0)
    A = torch.rand(60, 60, generator=g, dtype=torch.float64)
    A *= 0.99 / A.sum(dim=1, keepdim=True)
    b = torch.randn(60, 8, generator=g, dtype=torch.float64)
    Xa, ia = fixed_point(A, b, method="anderson", tol=1e-10, max_iter=5000)
    Xp, ip = fixed_point(A, b, method="picard", tol=1e-10, max_iter=5000)
    assert ia.iterations * 5 < ip.iterations
    assert torch.allclose(Xa, Xp, atol=1e-7)


@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("max_iter", [62, 63, 64, 127, 128])
def test_budget_at_the_residual_history_fold(method, max_iter):
    """The per-sample residual history is folded every 64 iterations; a solve that ends on
    a fold (here by its budget) reports its iterations like any other."""
    g = torch.Generator().manual_seed(3)
    A = torch.rand(3, 3, generator=g, dtype=torch.float64)
    A *= 0.97 / A.sum(dim=1, keepdim=True)  # slow: far from the fixed point after 128 steps
    b = torch.randn(3, 4, generator=g, dtype=torch.float64)
    X, info = fixed_point(A, b, "identity", method="picard" if method == "anderson" else method,
                          tol=1e-300, max_iter=max_iter,
                          on_nonconvergence="ignore")
    assert not info.converged and info.iterations == max_iter
    assert torch.equal(info.per_sample_iterations, torch.full((4,), max_iter))
    # first hits before a fold survive it: a budget past the last sample's convergence
    # reports the same per-sample iterations as an unlimited one
    _, free = fixed_point(A, b, "identity", method=method, tol=1e-6, max_iter=10_000)
    _, capped = fixed_point(A, b, "identity", method=method, tol=1e-6,
                            max_iter=max(max_iter, free.iterations))
    assert torch.equal(capped.per_sample_iterations, free.per_sample_iterations)
